"""What the bench process substitutes in the worker it measures: rows built beforehand, logging
to a null sink. Shared by ``bench.scenarios`` and ``bench.history_measure`` (neither imports the
other for it, so bench/ has no import cycle).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any
from unittest import mock


def quiet_production_logging() -> None:
    """The worker's own JSON logging at INFO, written to a null sink.

    The formatting cost stays in the measurement (production pays it too);
    only the terminal output is discarded.
    """
    from sync_worker import logs

    logs.configure(fmt="json", level="INFO", stream=open(os.devnull, "w"))  # noqa: SIM115  # logging writes to it until the process exits


@contextlib.contextmanager
def prebuilt_rows(pages: list[Any], built: list[list[Any]]) -> Iterator[None]:
    """Make ``store.commit_block`` reuse rows built earlier, so timing it measures the write alone.

    Substituting ``rows.build_rows`` (bench process only) keeps the measured
    code exactly ``store.commit_block`` whatever that function does next.
    """
    from sync_worker import rows

    ready = {id(p.messages): b for p, b in zip(pages, built, strict=True)}
    real = rows.build_rows

    def lookup(account: str, messages: Any) -> list[Any]:
        found = ready.get(id(messages))
        return found if found is not None else real(account, messages)

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(rows, "build_rows", lookup))
        # Issue 14 on, commit_block takes the block's columns (rows.build_block): those are
        # substituted too (the trees compared by bench.history_store may predate it).
        real_block = getattr(rows, "build_block", None)
        if real_block is not None:
            blocks = {id(p.messages): rows.Block.from_rows(b) for p, b in zip(pages, built, strict=True)}

            def lookup_block(account: str, messages: Any) -> Any:
                found = blocks.get(id(messages))
                return found if found is not None else real_block(account, messages)

            stack.enter_context(mock.patch.object(rows, "build_block", lookup_block))
        yield
