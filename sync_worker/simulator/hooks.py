"""``Hooks``: the public way for a harness to watch the simulator or change what it answers.

Every field is a callable or ``None`` and may be set or cleared while the simulator runs. Hooks run
on the request's server thread; they must not block for long (a harness may kill a worker from one,
which is the point of ``drop``).

* ``drop(request) -> bool``: asked first, before faults and processing; True closes the connection
  unanswered and unprocessed (nothing acknowledged; counted as fault ``"dropped"``).
* ``rewrite(request, answer) -> Answer | None``: sees every processed answer (not a fault reply)
  before it is written; a returned ``Answer`` is sent instead. A replaced answer is not a delivery:
  a final block it stood for stays queued, like any answer the client could not have read.
* ``answered(request, status)``: after an answer (processed or a fault reply) is on the socket.
* ``final_block(account, messages)``: a final (200) history block was written out completely;
  under ``final_ack="on_delivery"`` ``messages`` were just dequeued, under ``"on_next_get"`` they
  stay queued until the next GET without ``next``.
* ``issued(kind, token)``: a bearer (``kind="bearer"``) or session (``"session"``) token was issued;
  for leak checks that must know every credential-like value the simulator handed out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """A routed request: its kind (``PATH_KINDS``), account (history/callbacks), query and body."""

    kind: str
    account: str | None
    query: str
    body: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """What the simulator is about to write: status, body and headers (``Content-Length`` is added)."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]

    def with_header(self, name: str, value: str) -> Answer:
        """This answer with every ``name`` header replaced by one ``name: value``."""
        kept = tuple((n, v) for n, v in self.headers if n.lower() != name.lower())
        return dataclasses.replace(self, headers=(*kept, (name, value)))


@dataclasses.dataclass
class Hooks:
    """See the module docstring for when each hook runs and what it may do."""

    drop: Callable[[Request], bool] | None = None
    rewrite: Callable[[Request, Answer], Answer | None] | None = None
    answered: Callable[[Request, int], None] | None = None
    final_block: Callable[[str, list[Any]], None] | None = None
    issued: Callable[[str, str], None] | None = None
