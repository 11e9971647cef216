"""The loop on its own: the flush tick on a fake clock (on the grid, one catch-up
after an overrun, never a burst), and a stop request that wakes it."""

from __future__ import annotations

import threading
import time

import pytest
from support.clock import FakeClock

from wsnet._loop import Loop


class SlowTicks:
    """Ticks that take the given durations on the fake clock."""

    def __init__(self, clock: FakeClock, durations: list[float]) -> None:
        self.clock = clock
        self.durations = durations
        self.started: list[float] = []

    def tick(self) -> None:
        self.started.append(round(self.clock.now, 6))
        self.clock.now += self.durations.pop(0) if self.durations else 0.001


def run_ticks(
    durations: list[float], count: int, *, lateness: list[float] | None = None,
    stalls: list[float] | None = None,
) -> list[float]:
    """Tick start times; ``stalls``: how long past each deadline the loop
    wakes (a turn that blocked); ``lateness`` collects what the loop reports."""
    clock = FakeClock()
    ticks = SlowTicks(clock, durations)
    loop = Loop(flush_interval=0.05, tick=ticks.tick, clock=clock)
    if lateness is not None:
        loop.on_tick_late = lambda late: lateness.append(round(late, 6))
    try:
        loop.arm_tick()
        for _ in range(count):
            when = loop.timers.next_deadline()
            assert when is not None
            stall = stalls.pop(0) if stalls else 0.0
            clock.now = max(clock.now, when + stall)  # sleeps until the deadline
            loop.timers.run_due(clock.now, on_error=lambda exc: pytest.fail(repr(exc)))
    finally:
        loop.close()
    return ticks.started


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


def test_each_tick_reports_how_late_it_ran() -> None:
    # On time; the 0.10 tick runs 300 ms late (a blocked turn) and takes 80 ms;
    # the catch-up for 0.45 runs at once (0.48, 30 ms late); back on the grid.
    late: list[float] = []
    started = run_ticks([0.001, 0.08], 4, lateness=late, stalls=[0.0, 0.3])
    assert started == [0.05, 0.4, 0.48, 0.5]
    assert late == [0.0, 0.3, 0.03, 0.0]


def test_a_stop_request_from_another_thread_wakes_the_sleeping_loop() -> None:
    # The only timer is an hour away: nothing but the wake-up pipe ends select().
    loop = Loop(flush_interval=3600, tick=lambda: None, clock=time.monotonic)
    heard: list[str] = []
    loop.on_stop_request = lambda: heard.append(threading.current_thread().name)
    loop.call_later(30, lambda: heard.append("deadline"))  # bounds the test if broken
    asker = threading.Thread(target=loop.request_stop, name="asker")
    try:
        asker.start()
        loop.run(until=lambda: bool(heard), serve=lambda ch, mask: None, broken=lambda ch: None)
    finally:
        asker.join(5)
        loop.close()
    assert heard == [threading.main_thread().name]  # handled on the loop, not by the asker
