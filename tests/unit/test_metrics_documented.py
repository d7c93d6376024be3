"""docs/operations.md lists the label values the worker really exports, and every known retry
reason exists at 0 from the start."""

from __future__ import annotations

import re
from pathlib import Path

import requests

from sync_worker import answers, errors, metrics, retry

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _row(metric: str) -> str:
    (row,) = [line for line in DOC.read_text().splitlines() if line.startswith(f"| `{metric}` |")]
    return row


def _exported(m: metrics.Metrics, name: str, label: str) -> set[str]:
    return {
        sample.labels[label]
        for family in m.registry.collect()
        for sample in family.samples
        if sample.name == name
    }


def test_documented_run_outcomes_are_the_exported_ones() -> None:
    """The outcomes operations.md lists for runs_total (the parenthesis after "finished account
    runs") are exactly those a worker exports for a configured account: `quarantined` included,
    `skipped_locked` (no finished run) not."""
    listed = re.search(r"finished account runs \(([^)]*)\)", _row("thingspace_sync_runs_total"))
    assert listed is not None
    documented = set(re.findall(r"`([a-z_]+)`", listed.group(1)))
    m = metrics.Metrics()
    m.account_configured("0252012345-00001")
    assert documented == _exported(m, "thingspace_sync_runs_total", "outcome")
    assert documented == set(metrics.RUN_OUTCOMES)


def test_documented_retry_reasons_exist_at_zero_from_the_start() -> None:
    """Every retry reason operations.md names has a series at 0 on a fresh registry for every
    retried operation (a send is never retried), so increase() sees the first retry."""
    listed = re.search(r"known reasons \(([^)]*)\)", _row("thingspace_sync_api_retries_total"))
    assert listed is not None
    documented = set(re.findall(r"`([a-z0-9_]+)`", listed.group(1)))
    assert documented == set(metrics.API_RETRY_REASONS)
    m = metrics.Metrics(one_pass=True)
    for operation in metrics.RETRIED_OPERATIONS:
        for reason in metrics.API_RETRY_REASONS:
            labels = {"operation": operation, "reason": reason}
            assert m.registry.get_sample_value("thingspace_sync_api_retries_total", labels) == 0
    assert "send_sms_to_device" not in metrics.RETRIED_OPERATIONS


def _response(status: int) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = b"{}"
    return response


def test_known_retry_reasons_are_what_retried_errors_report() -> None:
    """Each known reason is the label retry.describe gives an error the client retries (a
    transient error), so the zero series are the ones a retry increments."""
    reasons = set()
    for status in (408, 429, 500, 502, 503, 504):
        error = answers.error_from_response(_response(status), "list_devices_sms_messages")
        assert isinstance(error, errors.ApiTransientError)
        reasons.add(retry.describe(error))
    reasons.add(retry.describe(errors.ApiTransientError("no answer", operation="oauth_token")))
    block = errors.MalformedBlockError("cut", body=b"{", problem="cut", next_token=None, request_next=None)
    reasons.add(retry.describe(errors.UnreadableAnswerError("unreadable", block=block, status=200)))
    assert reasons == set(metrics.API_RETRY_REASONS)
