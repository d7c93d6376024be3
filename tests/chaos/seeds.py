"""One seed, one schedule of its kind: ``once`` schedules (``schedule``) or daemon ones (``daemon_schedule``).

``schedule.mode_of`` decides the kind from the seed alone, so a seed always replays as the same kind.
"""

from __future__ import annotations

from tests.chaos import daemon_schedule
from tests.chaos import schedule as sched


def generate(seed: int) -> sched.Schedule:
    """The schedule of ``seed`` (pure: the same seed always gives the same schedule)."""
    if sched.mode_of(seed) in sched.DAEMON_MODES:
        return daemon_schedule.generate(seed)
    return sched.generate(seed)
