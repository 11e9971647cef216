"""Connections' timeouts (``wsnet._deadlines``) on their own: due in order,
re-arming and cancelling leave stale entries that never fire, the queues stay
bounded, and arming creates nothing the cyclic collector tracks (the reason
the module exists)."""

from __future__ import annotations

import gc
from collections.abc import Callable
from functools import partial

from hypothesis import given
from hypothesis import strategies as st

from wsnet._clock import Timers
from wsnet._deadlines import Deadlines


class Item:
    __slots__ = ("name", "deadline")

    def __init__(self, name: str) -> None:
        self.name = name
        self.deadline: float | None = None

    def __repr__(self) -> str:
        return self.name


def test_items_fall_due_in_order_of_their_deadlines() -> None:
    d: Deadlines[Item] = Deadlines()
    a, b, c = Item("a"), Item("b"), Item("c")
    d.arm(a, 0.0, 10.0)
    d.arm(b, 1.0, 2.0)
    d.arm(c, 2.0, 10.0)
    assert d.next_due() == 3.0
    assert d.pop_due(2.9) == []
    assert d.pop_due(3.0) == [b] and b.deadline is None
    assert d.next_due() == 10.0
    assert d.pop_due(20.0) == [a, c]
    assert d.next_due() is None and len(d) == 0


def test_a_rearmed_or_cancelled_item_fires_once_at_its_last_deadline() -> None:
    d: Deadlines[Item] = Deadlines()
    a, b = Item("a"), Item("b")
    d.arm(a, 0.0, 5.0)
    d.arm(a, 1.0, 5.0)  # re-armed: due at 6, not 5
    d.arm(b, 0.0, 5.0)
    d.cancel(b)
    assert d.next_due() == 6.0  # the stale fronts were dropped
    assert d.pop_due(5.5) == []
    assert d.pop_due(6.0) == [a]
    assert d.pop_due(100.0) == []


def test_an_item_armed_by_its_own_action_waits_for_the_next_sweep() -> None:
    d: Deadlines[Item] = Deadlines()
    a = Item("a")
    d.arm(a, 0.0, 0.0)
    for item in d.pop_due(0.0):
        d.arm(item, 0.0, 0.0)  # an action arming again for "now"
    assert a.deadline == 0.0 and d.pop_due(0.0) == [a]


@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from([0.0, 0.5, 2.0, 5.0]),
                          st.booleans()), max_size=60))
def test_what_falls_due_matches_a_plain_model(ops: list[tuple[int, float, bool]]) -> None:
    """Arm or cancel one of five items per step, the clock moving 0.25 s a step
    and sweeping: each item fires exactly when its last deadline passes."""
    d: Deadlines[Item] = Deadlines()
    items = [Item(str(i)) for i in range(5)]
    model: dict[int, float] = {}
    now = 0.0
    for index, delay, cancel in ops:
        now += 0.25
        fired = {int(item.name) for item in d.pop_due(now)}
        assert fired == {i for i, due in model.items() if due <= now}
        model = {i: due for i, due in model.items() if due > now}
        if cancel:
            d.cancel(items[index])
            model.pop(index, None)
        else:
            model[index] = d.arm(items[index], now, delay)
        assert d.next_due() == (min(model.values()) if model else None)
        assert len(d) <= len(ops)


def tracked_objects_made_by(arm_all: Callable[[], object]) -> int:
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        arm_all()
        return len(gc.get_objects()) - before
    finally:
        gc.enable()


def test_arming_allocates_nothing_the_collector_tracks() -> None:
    d: Deadlines[Item] = Deadlines()
    items = [Item(f"i{k}") for k in range(10_000)]
    d.arm(items[0], 0.0, 20.0)  # the delay's queue exists: steady state
    made = tracked_objects_made_by(lambda: [d.arm(item, 0.001 * k, 20.0)
                                            for k, item in enumerate(items)])
    assert made < 10, made
    assert len(d.pop_due(100.0)) == 10_000
    # What it replaced: a heap Timer per connection, with its callback.
    timers = Timers()
    made = tracked_objects_made_by(lambda: [timers.call_at(20.0, partial(print, item))
                                            for item in items])
    assert made >= 30_000, made
