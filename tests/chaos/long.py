"""Long mode (``python -m tests.chaos --minutes N``, ``make chaos MINUTES=60``): the schedules, seed after
seed until the time is up, and beside them a long-lived daemon and receiver (``soak.Soak`` under its
slow schedule) for I5.

A schedule's worker lives for one pass, seconds at most: its memory, files, threads and
connections say nothing about a leak. I5 needs processes that live the whole run, so long mode
runs one ``sync-worker run`` and one ``sync-worker receive`` beside the schedules for the same
minutes, samples them, and judges them at the end (``resources.judge``), together with their own
I1 (acknowledged or pushed with a 2xx, stored exactly once), I2 and I3.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from pathlib import Path

from tests.chaos import soak, soak_report


class Beside:
    """A soak on a thread of its own for ``minutes``, started and joined around the schedules."""

    def __init__(
        self, admin_url: str, template: str, minutes: float, out_dir: Path, say: Callable[[str], None]
    ) -> None:
        self.config = soak.SoakConfig(
            minutes=minutes, seed=1, sample_seconds=10.0, receiver_restarts=2, out_dir=out_dir, label="long"
        )
        self._admin_url = admin_url
        self._template = template
        self._say = say
        self.result: soak_report.SoakResult | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-long-beside", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            the_soak = soak.Soak(self._admin_url, self._template, self.config)
            try:
                the_soak.start()
                self._say(
                    f"long: beside the schedules, daemon pid {the_soak.daemon.pid} and receiver pid "
                    f"{the_soak.receiver.pid} for {self.config.minutes:g} min (logs in {the_soak.logdir})"
                )
                the_soak.run(self.config.minutes * 60, self._stop)
                self.result = the_soak.finish()
            finally:
                the_soak.close()
        except Exception:  # reported as a failure of the run, never swallowed
            self.error = traceback.format_exc(limit=8)

    def finish(self) -> bool:
        """Wait for the soak, print its figures and verdicts; True when it kept I1-I3 and I5."""
        self._thread.join()
        if self.error is not None:
            self._say("long: the daemon + receiver beside the schedules FAILED to run:\n" + self.error)
            return False
        assert self.result is not None  # _run ended without an error
        for line in self.result.lines():
            self._say(f"long: {line}")
        for path in self.result.files:
            self._say(f"long: wrote {path}")
        flat = all(v.flat for v in self.result.verdicts)
        judged = all(v.judged for v in self.result.verdicts)
        verdict = (
            "kept: every figure flat"
            if flat
            else ("BROKEN" if judged else "not judged: the run was too short")
        )
        self._say(f"long: I5 {verdict}")
        return not self.result.failed

    def stop(self) -> None:
        self._stop.set()
