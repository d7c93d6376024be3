"""The history queue, one per account.

* A block holds at most ``block_size`` messages from the head of the queue. While more remain after
  it: 202, ``hasMoreData: true`` and ``Location: /sms/{aname}/history?next={token}`` (relative to
  ``/api/m2m/v1``); the token is 20 random letters/digits. Otherwise 200, ``hasMoreData: false``, no
  ``Location``.
* ``GET ...?next=T`` acknowledges (dequeues) the block T came with and returns the block after it.
  A GET without ``next`` returns the oldest unacknowledged block again (with the same token while
  that block is unchanged).
* An unknown token, or a replay of a token whose follow-up block was itself acknowledged since, ->
  400 ``UnifiedWebService.REQUEST_FAILED.InvalidNextToken``.
* ``token_mode="reusable"``: replaying a used token (a retry after a lost response) acknowledges
  nothing more and returns the block that follows again. ``"single_use"``: the second use of a token
  -> the ``InvalidNextToken`` error.
* ``final_ack="on_delivery"``: the final (200) block is dequeued once its response has been written
  completely to the socket. ``"on_next_get"``: it stays queued; the next GET *without* ``next``
  first dequeues it (the client has had its chance to persist it) and then serves what follows. In
  both modes a final block whose response was not written (a fault, a dropped connection) stays
  queued, so the simulator never loses a message; the real platform may be harsher.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

from sync_worker.simulator import counters, settings, wire


@dataclasses.dataclass(slots=True)
class Block:
    token: str
    first: int
    last: int
    acked: bool = False
    # What using this token returned: (first seq, last seq, token or None); None before use.
    follow: tuple[int, int, str | None] | None = None


@dataclasses.dataclass(slots=True)
class HistoryReply:
    status: int
    body: bytes
    location: str | None = None
    after_write: Callable[[], None] | None = None
    error: bool = False


class AccountQueue:
    """One account's queue; all state behind one lock."""

    def __init__(self, name: str, on_final: Callable[[str, list[Any]], None] | None = None) -> None:
        self.name = name
        # Told (account, messages) once a final block is written out, outside the lock.
        self.on_final = on_final
        self.lock = threading.Lock()
        self.items: collections.deque[tuple[int, bytes, Any]] = collections.deque()
        self.next_seq = 0
        self.acknowledged: list[Any] = []
        self.blocks: dict[str, Block] = {}
        self.issued: list[str] = []
        self.ack_counts: dict[str, int] = {}
        self.head: Block | None = None
        self.pending_final: int | None = None
        self.location_prefix = "/sms/" + urllib.parse.quote(name, safe="") + "/history?next="

    def add(self, messages: Iterable[Any]) -> None:
        blobs = [(m, wire.dumps(m)) for m in messages]
        with self.lock:
            for message, blob in blobs:
                self.items.append((self.next_seq, blob, message))
                self.next_seq += 1

    def take_all(self) -> list[Any]:
        """Remove every queued message (push mode takes them) and return them in order.

        Tokens issued before acknowledge nothing more, like after a ``requeue``.
        """
        with self.lock:
            taken = [item[2] for item in self.items]
            self.items.clear()
            self.head = None
            self.pending_final = None
            return taken

    def _dequeue_through(self, last: int) -> int:
        n = 0
        while self.items and self.items[0][0] <= last:
            self.acknowledged.append(self.items.popleft()[2])
            n += 1
        return n

    def requeue(self, n: int) -> list[Any]:
        """Move the last ``n`` acknowledged messages back to the head of the queue; return them.

        A final block handed out under ``on_next_get`` (still queued, pending) stays ahead of them, so
        the next GET without ``next`` still dequeues it first. Every message is renumbered, so the
        block at the head gets a new token and tokens issued before acknowledge nothing more.
        """
        with self.lock:
            n = max(0, min(n, len(self.acknowledged)))
            back = self.acknowledged[len(self.acknowledged) - n :]
            del self.acknowledged[len(self.acknowledged) - n :]
            queued = list(self.items)
            pending = self.pending_final
            handed = [item for item in queued if pending is not None and item[0] <= pending]
            order = [(blob, m) for _, blob, m in handed]
            order += [(wire.dumps(m), m) for m in back]
            order += [(blob, m) for _, blob, m in queued[len(handed) :]]
            self.items.clear()
            self.head = None
            first = self.next_seq
            for blob, message in order:
                self.items.append((self.next_seq, blob, message))
                self.next_seq += 1
            self.pending_final = first + len(handed) - 1 if handed else None
            return back

    def _serve_head(self, cfg: settings.SimConfig, stats: counters.Stats) -> HistoryReply:
        size = max(1, cfg.block_size)
        block = list(itertools.islice(self.items, size))
        blobs = b",".join(item[1] for item in block)
        if len(self.items) > len(block):
            first, last = block[0][0], block[-1][0]
            head = self.head
            if head is None or head.acked or (head.first, head.last) != (first, last):
                head = Block(wire.new_token(), first, last)
                self.blocks[head.token] = head
                self.issued.append(head.token)
                self.head = head
            body = b'{"hasMoreData":true,"messages":[' + blobs + b"]}"
            return HistoryReply(202, body, self.location_prefix + head.token)
        body = b'{"hasMoreData":false,"messages":[' + blobs + b"]}"
        reply = HistoryReply(200, body)
        if block:
            last = block[-1][0]
            if cfg.final_ack == "on_delivery":
                reply.after_write = lambda: self._final_delivered(last, stats)
            else:
                reply.after_write = lambda: self._final_pending(last)
        return reply

    def _final_delivered(self, last: int, stats: counters.Stats) -> None:
        with self.lock:
            before = len(self.acknowledged)
            n = self._dequeue_through(last)
            block = self.acknowledged[before:]
        if n:
            stats.bump("final_dequeues")
        if block and self.on_final is not None:
            self.on_final(self.name, block)

    def _final_pending(self, last: int) -> None:
        with self.lock:
            block = [item[2] for item in self.items if item[0] <= last]
            self.pending_final = last if self.pending_final is None else max(last, self.pending_final)
        if block and self.on_final is not None:
            self.on_final(self.name, block)

    def get(self, token: str | None, cfg: settings.SimConfig, stats: counters.Stats) -> HistoryReply:
        with self.lock:
            if token is None:
                if self.pending_final is not None:
                    if self._dequeue_through(self.pending_final):
                        stats.bump("final_dequeues")
                    self.pending_final = None
                return self._serve_head(cfg, stats)
            block = self.blocks.get(token)
            if block is None:
                return _invalid_token()
            if block.acked:
                if cfg.token_mode == "single_use":  # noqa: S105  # a token mode name, not a password
                    return _invalid_token()
                follow = block.follow
                if follow is not None and follow[2] is not None:
                    nxt = self.blocks.get(follow[2])
                    if nxt is not None and nxt.acked:
                        return _invalid_token()
                stats.bump("replays")
                return self._serve_head(cfg, stats)
            self._dequeue_through(block.last)
            block.acked = True
            self.ack_counts[token] = self.ack_counts.get(token, 0) + 1
            stats.bump("acks")
            reply = self._serve_head(cfg, stats)
            served = self.head if reply.location is not None else None
            if served is not None:
                block.follow = (served.first, served.last, served.token)
            else:
                block.follow = (-1, -1, None)
            return reply


def _invalid_token() -> HistoryReply:
    return HistoryReply(
        400,
        wire.m2m_error(wire.CODE_INVALID_NEXT_TOKEN, "The next token is invalid or has expired."),
        error=True,
    )
