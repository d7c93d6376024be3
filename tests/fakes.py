"""Small fakes shared by tests that must never wait for real time."""

from __future__ import annotations


class FakeTime:
    """An injected clock whose sleep advances it, so no real time passes."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
