"""The chaos machine: seeded fault schedules run against the real worker, checked against its promises.

Every broken promise so far was found by someone who thought of its case. This package looks for the
next case without being told: a seed becomes a schedule of faults (API, login, process, database,
operator), the schedule is run against the real worker and a real Postgres, and the invariants
(``invariants``) are checked after every pass. A failing seed prints the command that replays it
and a schedule shrunk to the events that still break the promise. ``python -m tests.chaos --help``.
"""
