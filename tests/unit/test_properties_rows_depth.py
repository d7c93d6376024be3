"""Property tests: row building never raises on any nesting depth the decoder accepts, in any field."""

from __future__ import annotations

import functools
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync_worker import identity, models, rows

_DEVICE = '{"id":"0012","kind":"imei"}'
_TS = '"timestamp":"2024-05-01T10:00:00Z"'
_FIELDS: dict[str, str] = {
    # Where the nested value goes; {v} is replaced by it.
    "message": '{"deviceIds":[DEV],"message":{v},TS}',
    "timestamp": '{"deviceIds":[DEV],"message":"m","timestamp":{v}}',
    "deviceIds": '{"deviceIds":{v},"message":"m",TS}',
    "device_entry": '{"deviceIds":[{v}],"message":"m",TS}',
    "device_id": '{"deviceIds":[{"id":{v},"kind":"imei"}],"message":"m",TS}',
    "device_kind": '{"deviceIds":[{"id":"1","kind":{v}}],"message":"m",TS}',
    "device_extra": '{"deviceIds":[{"id":"1","kind":"imei","x":{v}}],"message":"m",TS}',
    "extra_field": '{"deviceIds":[DEV],"message":"m",TS,"x":{v}}',
    "whole_message": "{v}",
}


@functools.cache
def decoder_limit() -> int:
    """The deepest nesting json.loads (the client's decoder) accepts here, found by bisection."""
    low, high = 1, 100_000
    while low < high:
        mid = (low + high + 1) // 2
        try:
            json.loads("[" * mid + "]" * mid)
            low = mid
        except RecursionError:
            high = mid - 1
    return low


def _nested(depth: int, leaf: str, shape: str) -> str:
    opener, closer = ('{"k":', "}") if shape == "object" else ("[", "]")
    return opener * depth + leaf + closer * depth


def _with_stack(frames: int, fn: Any) -> Any:
    # Row building runs deep in a worker thread's stack; prove it does not depend on a shallow one.
    return fn() if frames == 0 else _with_stack(frames - 1, fn)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    field=st.sampled_from(sorted(_FIELDS)),
    fraction=st.floats(min_value=0.0, max_value=1.0),
    shape=st.sampled_from(["array", "object"]),
    leaf=st.sampled_from(['"x"', "1", "null", '"a\\u0000b"', "NaN", '"\\ud800"']),
)
def test_rows_never_raise_on_any_depth_the_decoder_accepts(
    field: str, fraction: float, shape: str, leaf: str
) -> None:
    """Every depth from 1 to the decoder's limit, in every field: a row that keeps the exact original."""
    # Deepest first in the range: the outer envelope and the field add a few levels of their own.
    depth = max(1, round(fraction * decoder_limit()))
    template = _FIELDS[field].replace("DEV", _DEVICE).replace("TS", _TS)
    text = template.replace("{v}", _nested(depth, leaf, shape))
    body = '{"hasMoreData":false,"messages":[' + text + "]}"
    try:
        wire = json.loads(body)
    except RecursionError:
        return  # beyond the decoder: the client quarantines the block, rows never see it
    page = models.SMSMessagesQueryResult.from_wire(wire)
    built = _with_stack(100, lambda: rows.build_rows("0252012345-00001", page.messages))
    [row] = built
    assert len(row.message_key) == 64
    # raw_json is the exact original, in the worker's compact spelling.
    assert row.raw_json == identity.dump_raw(wire["messages"][0])
    if identity.nesting_depth(wire["messages"][0]) > identity.MAX_NESTING:
        assert not row.raw_is_jsonb and row.raw_kept == row.raw_json
        assert any("nested more than" in p for p in row.problems)
    # The same message twice in a block gets the same key basis (occurrences 0 and 1), never an error.
    twice = rows.build_rows("0252012345-00001", page.messages * 2)
    assert [r.occurrence for r in twice] == [0, 1]
    assert twice[0].message_key == row.message_key


def test_decoder_limit_is_deep() -> None:
    """The property above really reaches past the depths that broke row building (500-940 levels)."""
    assert decoder_limit() > 940
