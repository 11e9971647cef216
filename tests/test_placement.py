"""Room affinity's policy (``wsnet._placement``), without sockets: which worker
owns a key, when a connection is handed to it, and the load board's file."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsnet._placement import OVER_MEAN, SLACK, STALE_AFTER, LoadBoard, choose, owner

NOW = 1000.0


def fresh(*held: int) -> list[tuple[int, float]]:
    return [(h, NOW) for h in held]


def key_owned_by(slot: int, workers: int) -> str:
    return next(k for i in range(1000) if owner(k := f"room{i}", workers) == slot)


def test_the_owner_is_crc32_over_the_slots_the_same_in_every_process() -> None:
    # crc32, not hash(): Python salts str hashes per process.
    assert owner("lobby", 6) == zlib.crc32(b"lobby") % 6 + 1
    assert owner("lobby", 1) == 1


@given(st.text(max_size=40), st.integers(min_value=1, max_value=64))
def test_every_key_has_one_owner_among_the_slots(key: str, workers: int) -> None:
    assert 1 <= owner(key, workers) <= workers


def test_a_key_another_worker_owns_goes_to_it() -> None:
    key = key_owned_by(2, 3)
    assert choose(key, 1, fresh(10, 10, 10), NOW) == 2


def test_a_key_this_worker_owns_stays() -> None:
    key = key_owned_by(1, 3)
    assert choose(key, 1, fresh(10, 10, 10), NOW) is None


def test_an_owner_over_its_share_gets_nothing_more() -> None:
    key = key_owned_by(2, 2)
    # Mean of (0, h) is h / 2: the owner may hold up to mean * OVER_MEAN + SLACK.
    at_limit = 10_000
    loads = fresh(0, at_limit)
    mean = at_limit / 2
    assert at_limit > mean * OVER_MEAN + SLACK  # one huge room (the lobby) spills
    assert choose(key, 1, loads, NOW) is None
    assert choose(key, 1, fresh(1000, 1000 + SLACK), NOW) == 2  # within its share


def test_a_silent_owner_gets_nothing_and_does_not_count_in_the_mean() -> None:
    key = key_owned_by(2, 3)
    stale = [(10, NOW), (10, NOW - STALE_AFTER - 0.01), (10, NOW)]
    assert choose(key, 1, stale, NOW) is None
    gone = [(10, NOW), (0, 0.0), (10, NOW)]  # a worker that left writes time 0
    assert choose(key, 1, gone, NOW) is None
    # A stale third slot holding many does not raise the mean for the owner.
    key3 = key_owned_by(3, 3)
    loads = [(0, NOW), (10_000, NOW - 5.0), (200, NOW)]
    assert choose(key3, 1, loads, NOW) is None  # mean of live (0, 200) is 100


def test_the_board_round_trips_between_two_mappings(tmp_path: Path) -> None:
    path = str(tmp_path / "placement")
    LoadBoard.create(path, 3)
    one, three = LoadBoard(path, 3, 1), LoadBoard(path, 3, 3)
    try:
        assert one.read() == [(0, 0.0)] * 3  # every slot gone until written
        one.write(17, NOW)
        three.write(5, NOW + 1)
        assert three.read() == [(17, NOW), (0, 0.0), (5, NOW + 1)]
        one.leave()
        assert three.read()[0] == (0, 0.0)
    finally:
        one.close()
        three.close()


def test_a_board_slot_outside_the_node_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "placement")
    LoadBoard.create(path, 2)
    with pytest.raises(ValueError, match="slot 3"):
        LoadBoard(path, 2, 3)
