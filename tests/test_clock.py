"""Timers (a heap with lazy cancellation) and the drift-free tick grid, on a
fake clock: every ``now`` is passed in."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsnet._clock import Timer, Timers, next_tick


def recorder() -> tuple[list[str], Callable[[str], Callable[[], None]]]:
    fired: list[str] = []

    def make(name: str) -> Callable[[], None]:
        return lambda: fired.append(name)

    return fired, make


def run_due(timers: Timers, now: float) -> list[Timer]:
    due = timers.pop_due(now)
    for timer in due:
        timer.callback()
    return due


def test_fires_in_deadline_order_ties_by_insertion() -> None:
    timers = Timers()
    fired, make = recorder()
    for name, when in [("c", 3.0), ("a1", 1.0), ("b", 2.0), ("a2", 1.0), ("a3", 1.0)]:
        timers.call_at(when, make(name))
    assert len(timers) == 5
    assert timers.next_deadline() == 1.0
    run_due(timers, 0.5)
    assert fired == []
    run_due(timers, 2.0)
    assert fired == ["a1", "a2", "a3", "b"]
    assert len(timers) == 1
    assert timers.next_deadline() == 3.0
    run_due(timers, 10.0)
    assert fired == ["a1", "a2", "a3", "b", "c"]
    assert timers.next_deadline() is None
    assert len(timers) == 0


def test_due_exactly_at_now() -> None:
    timers = Timers()
    timer = timers.call_at(5.0, lambda: None)
    assert timers.pop_due(math.nextafter(5.0, 0.0)) == []
    assert timers.pop_due(5.0) == [timer]


def test_cancel_is_lazy_and_idempotent() -> None:
    timers = Timers()
    fired, make = recorder()
    first = timers.call_at(1.0, make("first"))
    second = timers.call_at(2.0, make("second"))
    timers.cancel(first)
    timers.cancel(first)
    timers.cancel(None)
    assert len(timers) == 1
    assert timers.next_deadline() == 2.0  # the dead head is skipped
    assert len(timers) == 1
    run_due(timers, 5.0)
    assert fired == ["second"]
    # Cancelling a timer that already fired changes nothing.
    timers.cancel(second)
    assert len(timers) == 0
    third = timers.call_at(6.0, make("third"))
    assert len(timers) == 1
    assert timers.pop_due(6.0) == [third]


def test_cancelled_timers_are_skipped_by_pop_due() -> None:
    timers = Timers()
    fired, make = recorder()
    keep = [timers.call_at(float(i), make(f"t{i}")) for i in range(10)]
    for timer in keep[::2]:
        timers.cancel(timer)
    assert len(timers) == 5
    run_due(timers, 100.0)
    assert fired == ["t1", "t3", "t5", "t7", "t9"]
    assert len(timers) == 0
    assert timers.next_deadline() is None


def test_pop_due_does_not_run_timers_scheduled_during_the_pop() -> None:
    timers = Timers()
    fired: list[str] = []

    def rearm() -> None:
        fired.append("rearm")
        timers.call_at(1.0, rearm)  # already due: must wait for the next turn

    def also_now() -> None:
        fired.append("other")
        timers.call_at(0.0, lambda: fired.append("past"))

    timers.call_at(1.0, rearm)
    timers.call_at(1.0, also_now)
    due = run_due(timers, 1.0)
    assert len(due) == 2
    assert fired == ["rearm", "other"]
    assert len(timers) == 2
    run_due(timers, 1.0)
    assert fired == ["rearm", "other", "past", "rearm"]


def test_cancel_from_inside_a_callback() -> None:
    timers = Timers()
    fired, make = recorder()
    later = timers.call_at(2.0, make("later"))
    timers.call_at(1.0, lambda: timers.cancel(later))
    run_due(timers, 1.0)
    run_due(timers, 3.0)
    assert fired == []
    assert len(timers) == 0


def test_compaction_keeps_live_timers() -> None:
    timers = Timers()
    fired: list[int] = []

    def record(i: int) -> Callable[[], None]:
        return lambda: fired.append(i)

    all_timers = [timers.call_at(float(i % 37), record(i)) for i in range(1000)]
    live = set(range(0, 1000, 10))
    for i, timer in enumerate(all_timers):
        if i not in live:
            timers.cancel(timer)
    assert len(timers) == len(live)
    # Dead entries do not pile up: the heap is rebuilt once they dominate.
    assert len(timers._heap) < 2 * len(live) + 66
    run_due(timers, 100.0)
    assert sorted(fired) == sorted(live)
    expected_order = sorted(live, key=lambda i: (i % 37, i))
    assert fired == expected_order
    assert len(timers) == 0


def test_cancel_after_compaction_of_fired_timers() -> None:
    timers = Timers()
    fired_timers = [timers.call_at(0.0, lambda: None) for _ in range(100)]
    assert len(timers.pop_due(0.0)) == 100
    keep = [timers.call_at(1.0, lambda: None) for _ in range(100)]
    for timer in fired_timers:
        timers.cancel(timer)  # already fired: no effect on the count
    assert len(timers) == 100
    assert timers.pop_due(1.0) == keep


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(0, 50)),
            st.tuples(st.just("cancel"), st.integers(0, 10_000)),
            st.tuples(st.just("pop"), st.integers(0, 50)),
        ),
        max_size=300,
    ),
)
def test_timers_match_a_simple_model(ops: list[tuple[str, int]]) -> None:
    """Against a list model: the same timers fire, in the same order."""
    timers = Timers()
    model: list[tuple[float, int, Timer]] = []  # live timers: (when, seq, timer)
    handles: list[Timer] = []
    seq = 0
    for op, arg in ops:
        if op == "add":
            seq += 1
            timer = timers.call_at(float(arg), lambda: None)
            handles.append(timer)
            model.append((float(arg), seq, timer))
        elif op == "cancel" and handles:
            timer = handles[arg % len(handles)]
            timers.cancel(timer)
            model = [entry for entry in model if entry[2] is not timer]
        elif op == "pop":
            now = float(arg)
            due = sorted(e for e in model if e[0] <= now)
            model = [e for e in model if e[0] > now]
            assert timers.pop_due(now) == [e[2] for e in due]
        assert len(timers) == len(model)
        expected_next = min((e[0] for e in model), default=None)
        assert timers.next_deadline() == expected_next


def test_cancel_keeps_the_count_when_the_heap_drops_the_timer() -> None:
    timers = Timers()
    timer = timers.call_at(1.0, lambda: None)
    timers.call_at(2.0, lambda: None)
    timers.cancel(timer)
    assert timers.next_deadline() == 2.0
    assert len(timers) == 1


# ----------------------------------------------------------------------------
# next_tick
# ----------------------------------------------------------------------------


def test_next_tick_examples() -> None:
    assert next_tick(0.0, 1.0, 0.0) == 1.0
    assert next_tick(0.0, 1.0, 0.5) == 1.0
    assert next_tick(0.0, 1.0, 1.0) == 2.0  # strictly after now
    assert next_tick(10.0, 0.25, 12.6) == 12.75
    # A turn that ran 3.4 periods late skips the missed ticks.
    assert next_tick(100.0, 2.0, 100.0 + 2.0 * 3.4) == 108.0


def test_ticks_do_not_drift_with_late_turns() -> None:
    origin, period = 1000.0, 0.05
    now = origin
    ticks = []
    for lateness in [0.001, 0.013, 0.049, 0.002, 0.12, 0.0301] * 20:
        tick = next_tick(origin, period, now)
        ticks.append(tick)
        now = tick + lateness  # the loop wakes up late; the grid does not move
    for tick in ticks:
        k = round((tick - origin) / period)
        assert math.isclose(tick, origin + k * period, rel_tol=0, abs_tol=1e-9)
    assert ticks == sorted(set(ticks))


@settings(max_examples=300)
@given(
    origin=st.floats(0.0, 1e6, allow_nan=False),
    period=st.floats(0.001, 60.0, allow_nan=False),
    elapsed=st.floats(0.0, 1e5, allow_nan=False),
)
def test_next_tick_properties(origin: float, period: float, elapsed: float) -> None:
    now = origin + elapsed
    tick = next_tick(origin, period, now)
    # On the grid (no drift), never in the past, and less than a period ahead:
    # missed ticks are skipped, not fired in a burst. (Strictly after ``now`` is
    # checked separately below: it fails on exact grid points.)
    assert tick >= now
    assert tick - now <= period * (1 + 1e-9) + 1e-6
    k = (tick - origin) / period
    assert abs(k - round(k)) < 1e-6 * max(1.0, k)
    # Asking again from any point before that tick gives the same tick.
    midway = now + (tick - now) / 2
    if now < midway < tick:
        assert next_tick(origin, period, midway) == tick


def test_next_tick_strictly_after_now_between_grid_points() -> None:
    for k in range(1, 2000):
        now = 1000.0 + k * 0.05 + 0.01
        assert next_tick(1000.0, 0.05, now) > now


@pytest.mark.parametrize(
    ("origin", "period", "now"),
    [
        (1000.0, 0.05, 1000.05),
        (1000.0, 0.05, 1001.4),
        (255.0, 1.8099714086944951, 256.8099714086945),
    ],
)
def test_next_tick_strictly_after_now_on_grid_points(
    origin: float, period: float, now: float,
) -> None:
    assert next_tick(origin, period, now) > now


def test_rearming_at_the_tick_time_advances() -> None:
    origin, period = 1000.0, 0.05
    now = origin
    ticks = []
    for _ in range(40):
        now = next_tick(origin, period, now)  # the tick fires exactly on time
        ticks.append(now)
    assert ticks == sorted(set(ticks))
    assert math.isclose(ticks[-1], origin + 40 * period)
