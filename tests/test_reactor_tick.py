"""The flush tick on a fake clock: on the grid, one catch-up after an overrun,
never a burst."""

from __future__ import annotations

import socket

import pytest

from wsnet._channel import Channel
from wsnet._reactor import Reactor


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SlowTicks:
    """A protocol whose ticks take the given durations on the fake clock."""

    def __init__(self, clock: FakeClock, durations: list[float]) -> None:
        self.clock = clock
        self.durations = durations
        self.started: list[float] = []

    def connection_made(self, sock: socket.socket, peer: tuple[str, int]) -> Channel:
        raise AssertionError

    def data_received(self, ch: Channel, data: bytes) -> None: ...
    def eof_received(self, ch: Channel) -> None: ...
    def connection_lost(self, ch: Channel, exc: OSError | None) -> None: ...

    def tick(self) -> None:
        self.started.append(round(self.clock.now, 6))
        self.clock.now += self.durations.pop(0) if self.durations else 0.001


def run_ticks(durations: list[float], count: int) -> list[float]:
    clock = FakeClock()
    protocol = SlowTicks(clock, durations)
    reactor = Reactor(protocol, flush_interval=0.05, high_water=1024, clock=clock)
    try:
        reactor._arm_tick()
        for _ in range(count):
            when = reactor.timers.next_deadline()
            assert when is not None
            clock.now = max(clock.now, when)  # the loop sleeps until the deadline
            reactor.timers.run_due(clock.now, on_error=lambda exc: pytest.fail(repr(exc)))
    finally:
        reactor.close_all()
    return protocol.started


def test_ticks_stay_on_the_grid() -> None:
    assert run_ticks([], 4) == [0.05, 0.1, 0.15, 0.2]


def test_an_overrun_is_followed_by_one_catch_up_tick_at_once() -> None:
    # The 0.05 tick takes 80 ms: 0.10 was missed and runs at once (0.13), then
    # the grid resumes at 0.15.
    assert run_ticks([0.08], 3) == [0.05, 0.13, 0.15]


def test_a_long_overrun_skips_older_missed_ticks() -> None:
    # The 0.05 tick takes 170 ms (to 0.22): 0.10 and 0.15 are skipped, 0.20 runs
    # at once, then 0.25 on the grid. No burst of three ticks.
    assert run_ticks([0.17], 3) == [0.05, 0.22, 0.25]
