"""Room history on its own: consecutive entries, three budgets, one ledger."""

from __future__ import annotations

from wsnet.chat.history import History, Ledger


def filled(ledger: Ledger, sizes: list[int], first: int = 1) -> History:
    history = History(ledger)
    for seq, size in enumerate(sizes, first):
        history.append(seq, b"x" * size)
        history.trim()
    return history


def test_the_entry_limit_drops_the_oldest() -> None:
    ledger = Ledger(entries=3, room_bytes=1000, total_bytes=10_000)
    history = filled(ledger, [10] * 5)
    assert [seq for seq, _ in history] == [3, 4, 5]
    assert history.bytes == ledger.total == 30
    assert history.first_seq(default=99) == 3


def test_the_byte_limit_drops_the_oldest_until_it_fits() -> None:
    ledger = Ledger(entries=100, room_bytes=250, total_bytes=10_000)
    history = filled(ledger, [100, 100, 100])
    assert [seq for seq, _ in history] == [2, 3]
    assert history.bytes == 200


def test_over_the_total_a_room_keeps_only_its_newest() -> None:
    ledger = Ledger(entries=100, room_bytes=1000, total_bytes=500)
    other = filled(ledger, [400])
    writer = filled(ledger, [50, 50, 50])
    assert ledger.total == other.bytes + writer.bytes
    # The third push went over the total: the oldest went until it fit again.
    assert [seq for seq, _ in writer] == [2, 3]
    assert ledger.total == 500 and not ledger.over
    big = filled(ledger, [300], first=9)
    assert ledger.over and len(big) == 1  # never below its newest entry
    assert len(other) == 1  # trim touches only the room it is called on


def test_clear_gives_the_bytes_back_to_the_ledger() -> None:
    ledger = Ledger(entries=100, room_bytes=1000, total_bytes=10_000)
    a, b = filled(ledger, [10, 20]), filled(ledger, [5])
    a.clear()
    assert (len(a), a.bytes, ledger.total) == (0, 0, 5)
    assert a.first_seq(default=7) == 7
    b.clear()
    assert ledger.total == 0


def test_after_is_the_tail_past_a_seq() -> None:
    ledger = Ledger(entries=3, room_bytes=1000, total_bytes=10_000)
    history = filled(ledger, [1, 2, 3, 4, 5], first=11)  # keeps 13, 14, 15
    assert [len(d) for d in history.after(13)] == [4, 5]
    assert [len(d) for d in history.after(0)] == [3, 4, 5]  # older than kept: all
    assert list(history.after(15)) == []
    assert list(History(ledger).after(0)) == []
