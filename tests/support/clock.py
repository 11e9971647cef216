"""A clock that moves only when the test says so, for code that takes a
``clock: Callable[[], float]`` (``Chat``, ``Reactor``): time-dependent behaviour
then repeats exactly."""

from __future__ import annotations


class FakeClock:
    """Call it for the time; set ``now`` or ``advance`` it to move time."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now
