"""I5's parts: the least-squares slope, the flatness verdict, the kernel's count of connections."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from tests.chaos import resources


def _series(
    role: str, pid: int, values: list[float], step: float = 10.0, start: float = 0.0
) -> list[resources.Sample]:
    return [
        resources.Sample(
            t=start + i * step, role=role, pid=pid, rss_mib=v, open_files=9, threads=10, db_connections=2
        )
        for i, v in enumerate(values)
    ]


def test_the_slope_of_a_straight_line_is_its_rise_per_second() -> None:
    """Least squares recovers the growth of an exact line, and calls a constant flat."""
    assert abs(resources.slope([(t, 3.0 + 0.5 * t) for t in range(50)]) - 0.5) < 1e-9
    assert resources.slope([(t, 7.0) for t in range(50)]) == 0.0
    assert resources.slope([(1.0, 1.0)]) == 0.0


def test_a_flat_process_with_noise_is_flat() -> None:
    """An hour of memory that wobbles by a MiB around 50 MiB passes every figure."""
    values = [50.0 + (0.9 if i % 3 == 0 else -0.4) for i in range(360)]
    verdicts = resources.judge(_series("daemon", 7, values), "daemon", 0.0, 3600.0)
    assert [v.figure for v in verdicts] == list(resources.FIGURES)
    assert all(v.judged and v.flat for v in verdicts), [v.line() for v in verdicts]


def test_a_leak_of_a_few_mib_an_hour_is_not_flat() -> None:
    """Memory that keeps growing 12 MiB an hour fails the slope limit although it never doubles."""
    values = [50.0 + 12.0 * (i * 10.0) / 3600 for i in range(360)]
    rss = next(
        v
        for v in resources.judge(_series("daemon", 7, values), "daemon", 0.0, 3600.0)
        if v.figure == "rss_mib"
    )
    assert rss.judged and not rss.flat
    assert 11.5 < rss.slope_per_hour < 12.5


def test_a_new_high_after_warm_up_is_not_flat_even_with_a_small_slope() -> None:
    """One jump of 20 MiB in the second half breaks the bound, whatever the slope says."""
    values = [50.0] * 300 + [70.0] * 5 + [50.0] * 55
    rss = next(
        v
        for v in resources.judge(_series("daemon", 7, values), "daemon", 0.0, 3600.0)
        if v.figure == "rss_mib"
    )
    assert not rss.flat
    assert rss.window_max == 70.0


def test_a_window_too_short_is_not_judged_and_not_flat() -> None:
    """A two-minute run cannot show a leak: reported as not judged, which fails I5."""
    verdicts = resources.judge(_series("daemon", 7, [50.0] * 12), "daemon", 0.0, 120.0)
    assert all(not v.judged and not v.flat for v in verdicts)


def test_only_the_last_process_of_a_role_is_judged() -> None:
    """A restarted receiver starts again from nothing: its first life's figures do not count."""
    first = _series("receiver", 1, [90.0] * 50)
    second = _series("receiver", 2, [40.0] * 310, start=500.0)
    verdicts = resources.judge(first + second, "receiver", 0.0, 3600.0)
    rss = next(v for v in verdicts if v.figure == "rss_mib")
    assert rss.flat and rss.warm_max == 40.0


def test_connections_are_counted_from_the_kernel_per_process_and_port() -> None:
    """This process's two established connections to a listening port are counted, another port's not."""
    with socket.create_server(("127.0.0.1", 0)) as server, socket.create_server(("127.0.0.1", 0)) as other:
        port = server.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        stray = socket.create_connection(("127.0.0.1", other.getsockname()[1]))
        accepted = [server.accept()[0] for _ in range(2)]
        try:
            assert resources.connections_to(os.getpid(), port) == 2
            found = resources.sample(os.getpid(), "me", 0.0, port)
            assert found is not None and found.db_connections == 2
            assert found.open_files >= 5 and found.threads >= 1 and found.rss_mib > 1
        finally:
            for s in [*clients, stray, *accepted]:
                s.close()


def test_a_process_that_is_gone_gives_no_sample() -> None:
    """A pid without /proc entry (exited) is skipped, not counted as zeros."""
    pid = 2**22 + 12345
    assert not Path(f"/proc/{pid}").exists()
    assert resources.sample(pid, "gone", 0.0, None) is None
