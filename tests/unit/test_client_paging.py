"""ThingSpaceClient's paging against the in-memory API: redirects, the Location token, the lazy
iterator that acknowledges nothing not yet settled."""

from __future__ import annotations

from typing import Any

import pytest

from sync_worker import errors
from tests.unit import client_fake

# The shared fixtures (tests/unit/client_fake.py), registered for this module.
clock = client_fake.clock
fake = client_fake.fake
make = client_fake.make


def test_202_location_gives_next_and_request_next_is_kept(fake: client_fake.FakeApi, make: Any) -> None:
    """A 202 page carries the Location token as next, and remembers the token it was asked with."""
    fake.api.append(
        client_fake.reply(
            202, client_fake.history(100, True), Location=f"/sms/{client_fake.ACCOUNT}/history?next=Tok2"
        )
    )
    page = make().sms.list_devices_sms_messages(client_fake.ACCOUNT, "Tok1")
    assert (page.status, page.next, page.request_next, page.has_more_data) == (202, "Tok2", "Tok1", True)
    assert fake.paths("/history") == [f"/api/m2m/v1/sms/{client_fake.ACCOUNT}/history?next=Tok1"]


def test_202_without_location_is_unsafe(fake: client_fake.FakeApi, make: Any) -> None:
    """A 202 with no Location cannot be paged: UnsafeLocationError."""
    fake.api.append(client_fake.reply(202, client_fake.history(1, True)))
    with pytest.raises(errors.UnsafeLocationError):
        make().sms.list_devices_sms_messages(client_fake.ACCOUNT)


@pytest.mark.parametrize(
    ("status", "body", "token"),
    [
        (202, client_fake.history(1, False), "Tok2"),
        (202, client_fake.history(0, True), "Tok2"),
        (200, client_fake.history(1, True), None),
    ],
    ids=["202_has_more_false", "202_no_messages", "200_has_more_true"],
)
def test_status_has_more_data_disagreement_is_unreadable(
    fake: client_fake.FakeApi, make: Any, status: int, body: dict[str, Any], token: str | None
) -> None:
    """Status, hasMoreData and message count disagreeing: retried, then a MalformedBlockError; never paged."""
    fake.api.extend(
        [client_fake.reply(status, body, Location=f"/sms/{client_fake.ACCOUNT}/history?next=Tok2")]
        * client_fake.ATTEMPTS
    )
    with pytest.raises(errors.MalformedBlockError) as info:
        make().sms.list_devices_sms_messages(client_fake.ACCOUNT, "Tok1")
    assert (info.value.status, info.value.next_token) == (status, token)
    assert (
        fake.paths("/history")
        == [f"/api/m2m/v1/sms/{client_fake.ACCOUNT}/history?next=Tok1"] * client_fake.ATTEMPTS
    )


def test_unknown_top_level_member_is_read_past_and_counted(fake: client_fake.FakeApi, make: Any) -> None:
    """An extra top-level member does not make the block unreadable; the observer counts it by name."""
    seen: list[str] = []

    class Obs:
        def on_request(self, operation: str, status: int | None, seconds: float) -> None:
            pass

        def on_retry(self, operation: str, reason: str, wait: float) -> None:
            pass

        def on_unknown_member(self, member: str) -> None:
            seen.append(member)

    body = {**client_fake.history(2, True), "requestId": "r1"}
    fake.api.extend(
        [client_fake.reply(202, body, Location=f"/sms/{client_fake.ACCOUNT}/history?next=Tok2")] * 2
    )
    c = make(observer=Obs())
    page = c.sms.list_devices_sms_messages(client_fake.ACCOUNT)
    c.sms.list_devices_sms_messages(client_fake.ACCOUNT)
    assert len(page.messages) == 2 and page.next == "Tok2"
    assert seen == ["requestId", "requestId"]


def test_iterator_sends_no_next_token_for_a_block_not_settled(fake: client_fake.FakeApi, make: Any) -> None:
    """Asking for block N+1 before block N was committed or quarantined: refused, nothing acknowledged."""
    fake.api.extend(
        [
            client_fake.reply(202, client_fake.history(2, True), Location="/sms/a/history?next=t1"),
            client_fake.reply(200, client_fake.history(1)),
        ]
    )
    blocks = make().sms.iter_history_blocks(client_fake.ACCOUNT)
    first = next(blocks)
    with pytest.raises(errors.AcknowledgementRefusedError):
        next(blocks)
    assert first.ticket is not None and first.ticket.settled is None
    assert len(fake.paths("/history")) == 1


def test_iterator_is_lazy_and_stops_after_final(fake: client_fake.FakeApi, make: Any) -> None:
    """Block N+1 is requested only when asked for; iteration ends after the 200 block."""
    fake.api.extend(
        [
            client_fake.reply(202, client_fake.history(2, True), Location="/sms/a/history?next=t1"),
            client_fake.reply(202, client_fake.history(2, True), Location="/sms/a/history?next=t2"),
            client_fake.reply(200, client_fake.history(1)),
        ]
    )
    blocks = make().sms.iter_history_blocks(client_fake.ACCOUNT)
    first = next(blocks)
    assert first.next == "t1" and len(fake.paths("/history")) == 1
    assert first.ticket is not None
    first.ticket.committed(len(first.messages))  # what store.commit_block does once committed
    rest = []
    for page in blocks:
        assert page.ticket is not None
        page.ticket.committed(len(page.messages))
        rest.append(page)
    assert [p.request_next for p in rest] == ["t1", "t2"]
    assert rest[-1].is_final
    assert fake.paths("/history")[1:] == [
        f"/api/m2m/v1/sms/{client_fake.ACCOUNT}/history?next=t1",
        f"/api/m2m/v1/sms/{client_fake.ACCOUNT}/history?next=t2",
    ]
