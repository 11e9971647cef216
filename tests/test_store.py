"""The durable store without sockets: ``SqliteStore`` on a real file, and
``Chat`` on it through restarts, resends, retention and write failures."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.clock import FakeClock
from support.harness import Event, Harness, epochs

from wsnet.chat.sqlite import SqliteStore, StoreOpenError
from wsnet.chat.store import PRUNE_INTERVAL


def messages(events: list[Event], room: str = "lobby") -> list[Event]:
    return [e for e in events if e["type"] == "message" and e["room"] == room]


def say(h: Harness, peer: str, text: str, cid: str | None = None, room: str = "lobby") -> None:
    command: dict[str, Any] = {"type": "message", "room": room, "text": text}
    if cid is not None:
        command["cid"] = cid
    h.send(peer, command)


# -- SqliteStore itself -----------------------------------------------------------


def test_written_rows_come_back_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    store = SqliteStore(path)
    store.write([("dev", "e1", 0)], [("dev", 1, b"one", "k1"), ("dev", 2, b"two", None)])
    store.write([("ops", "e2", 0)], [])
    store.close()
    again = SqliteStore(path)
    try:
        saved = {room.name: room for room in again.load()}
    finally:
        again.close()
    assert saved["dev"].epoch == "e1" and saved["dev"].seq == 2
    assert saved["dev"].messages == [(1, b"one", "k1"), (2, b"two", None)]
    assert saved["ops"].messages == [] and saved["ops"].seq == 0


def test_prune_deletes_below_the_kept_seq_and_forgotten_rooms(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s")
    try:
        rows = [("a", seq, b"x", None) for seq in range(1, 11)]
        store.write([("a", "e", 0), ("b", "e", 0)], [*rows, ("b", 1, b"y", None)])
        store.prune([("a", 8, 10)], ["b"])
        saved = {room.name: room for room in store.load()}
    finally:
        store.close()
    assert [seq for seq, _, _ in saved["a"].messages] == [8, 9, 10]
    assert saved["a"].seq == 10 and "b" not in saved


def test_a_room_made_anew_loses_its_old_incarnation(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s")
    try:
        store.write([("a", "old", 0)], [("a", 1, b"1", None), ("a", 2, b"2", None)])
        store.write([("a", "new", 0)], [("a", 1, b"fresh", None)])
        [saved] = store.load()
    finally:
        store.close()
    assert saved.epoch == "new" and saved.messages == [(1, b"fresh", None)]


@pytest.mark.parametrize(("fsync", "level"), [(False, 1), (True, 2)])
def test_fsync_chooses_how_far_a_commit_waits(tmp_path: Path, fsync: bool, level: int) -> None:
    store = SqliteStore(tmp_path / "s", fsync=fsync)
    try:
        db = store.connection
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA synchronous").fetchone() == (level,)  # NORMAL, FULL
    finally:
        store.close()


def test_a_second_server_on_one_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    first = SqliteStore(path)
    try:
        with pytest.raises(StoreOpenError, match="in use by another wsnet"):
            SqliteStore(path)
    finally:
        first.close()
    SqliteStore(path).close()  # free again once the first is closed


def test_a_foreign_sqlite_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE notes (text TEXT)")
    other.commit()
    other.close()
    before = path.read_bytes()
    with pytest.raises(StoreOpenError, match="not a wsnet chat store"):
        SqliteStore(path)
    assert path.read_bytes() == before
    assert not path.with_name("other.db-wal").exists()


def test_a_corrupt_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    path.write_bytes(b"this is not a database, just bytes\n" * 200)
    before = path.read_bytes()
    with pytest.raises(StoreOpenError, match="not a database"):
        SqliteStore(path)
    assert path.read_bytes() == before


def test_a_newer_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(StoreOpenError, match="store format 99"):
        SqliteStore(path)


# -- Chat on a store -------------------------------------------------------------------


class Node:
    """A chat process on one store file that can be stopped and started again."""

    def __init__(self, path: Path, **chat_settings: Any) -> None:
        self.path = path
        self.clock = FakeClock(1_000_000.0)
        self.epochs = epochs()
        self.settings = chat_settings
        self.store = SqliteStore(path)
        self.h = self._harness()

    def _harness(self) -> Harness:
        return Harness(store=self.store, clock=self.clock, new_epochs=self.epochs,
                       **self.settings)

    def restart(self) -> None:
        self.h.chat.close()
        self.store = SqliteStore(self.path)
        self.h = self._harness()


def test_a_restart_keeps_epoch_and_numbering_and_resume_has_no_reset(tmp_path: Path) -> None:
    node = Node(tmp_path / "s")
    node.h.connect("ann")
    for i in range(3):
        say(node.h, "ann", f"m{i}")
    got = messages(node.h.tick()["ann"])
    assert [m["seq"] for m in got] == [1, 2, 3]
    node.restart()
    welcome = node.h.connect("ann", since=1, epoch="e1")
    assert "gap" not in [e["type"] for e in welcome]
    assert [(m["seq"], m["text"]) for m in messages(welcome)] == [(2, "m1"), (3, "m2")]
    snapshot = next(e for e in welcome if e["type"] == "presence")
    assert snapshot["epoch"] == "e1" and snapshot["seq"] == 3
    say(node.h, "ann", "after")
    assert [m["seq"] for m in messages(node.h.tick()["ann"])] == [4]


def test_a_resend_by_cid_gets_the_first_answer_before_and_after_a_restart(
    tmp_path: Path,
) -> None:
    node = Node(tmp_path / "s")
    node.h.connect("ann")
    node.h.connect("bob")
    say(node.h, "ann", "hello", cid="c-1")
    first = messages(node.h.tick()["ann"])
    say(node.h, "ann", "hello", cid="c-1")  # the echo was lost: resent
    again = node.h.tick()
    assert messages(again["ann"]) == first  # same seq, same ts
    assert "bob" not in again  # nobody else hears it twice
    node.restart()
    node.h.connect("ann")
    node.h.connect("bob")
    node.h.tick()
    say(node.h, "ann", "hello", cid="c-1")
    after = node.h.tick()
    assert messages(after["ann"]) == first and "bob" not in after
    say(node.h, "ann", "hello", cid="c-2")  # a new cid is a new message
    assert [m["seq"] for m in messages(node.h.tick()["bob"])] == [2]


def test_a_full_disk_refuses_the_ticks_messages_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    node = Node(tmp_path / "s")
    node.h.connect("ann")
    node.h.connect("bob")
    node.h.tick()
    db = node.store.connection
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")
    big = "x" * 4000  # five of them need more pages than the file may have
    with caplog.at_level(logging.WARNING, logger="wsnet"):
        for i in range(5):
            say(node.h, "ann", big, cid=f"a{i}")
        got = node.h.tick()
        assert not messages(got.get("bob", []))  # nobody saw what was not kept
        assert not messages(got["ann"])
        errors = [(e["error"], e["cid"]) for e in got["ann"] if e["type"] == "error"]
        assert errors == [("unavailable", f"a{i}") for i in range(5)]
        for i in range(5):
            say(node.h, "ann", big, cid=f"b{i}")  # still full: refused, no new log line
        assert [e["type"] for e in node.h.tick()["ann"]] == ["error"] * 5
        db.execute("PRAGMA max_page_count = 1073741823")
        say(node.h, "ann", "ok now", cid="c")
        got = node.h.tick()
    assert [m["seq"] for m in messages(got["bob"])] == [1]  # no hole in the numbering
    lines = [r.getMessage() for r in caplog.records if "store" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "cannot write" in lines[0] and "writing again" in lines[1]
    node.restart()
    welcome = node.h.connect("cat", since=0, epoch="e1")
    assert [m["text"] for m in messages(welcome)] == ["ok now"]


def test_a_read_only_store_refuses_and_recovers(tmp_path: Path) -> None:
    node = Node(tmp_path / "s")
    node.h.connect("ann")
    node.h.tick()
    node.store.connection.execute("PRAGMA query_only = 1")
    say(node.h, "ann", "lost?", cid="r1")
    got = node.h.tick()["ann"]
    assert [(e["type"], e.get("cid")) for e in got] == [("error", "r1")]
    node.store.connection.execute("PRAGMA query_only = 0")
    say(node.h, "ann", "lost?", cid="r1")  # the page resends it: now it is kept
    assert [m["seq"] for m in messages(node.h.tick()["ann"])] == [1]


def test_a_welcome_replay_never_shows_an_uncommitted_message(tmp_path: Path) -> None:
    node = Node(tmp_path / "s")
    node.h.connect("ann")
    node.h.tick()
    say(node.h, "ann", "fresh")  # accepted this tick, not yet committed
    welcome = node.h.connect("bob", since=0, epoch="e1")  # its frame leaves at once
    assert [m["text"] for m in messages(welcome)] == ["fresh"]
    # What the welcome showed is on disk already.
    rows = sqlite3.connect(node.path).execute("SELECT count(*) FROM messages").fetchone()
    assert rows == (1,)


def test_retention_keeps_the_file_within_the_history_limits(tmp_path: Path) -> None:
    node = Node(tmp_path / "s", history=10)
    node.h.connect("ann")
    for i in range(200):
        say(node.h, "ann", f"m{i}")
        node.h.tick()
        if i % 50 == 49:
            node.clock.advance(PRUNE_INTERVAL)
    node.h.tick()
    rows = sqlite3.connect(node.path).execute("SELECT count(*) FROM messages").fetchone()
    assert rows == (10,)


def test_the_file_does_not_grow_with_traffic_past_its_limits(tmp_path: Path) -> None:
    node = Node(tmp_path / "s", history=10)
    node.h.connect("ann")
    sizes = []
    for i in range(3000):  # 12 MB of messages through a history of 40 KB
        say(node.h, "ann", f"{i}:" + "z" * 4000)
        node.h.tick()
        if i % 100 == 99:
            node.clock.advance(PRUNE_INTERVAL)
            sizes.append(node.path.stat().st_size)
    wal = node.path.with_name(node.path.name + "-wal").stat().st_size
    assert max(sizes) < 1 << 20, sizes  # the file: history and some free pages
    assert wal <= (8 << 20) + (1 << 20), wal  # the log: checkpointed by 8 MiB at most
    node.restart()
    assert len(node.h.chat.rooms["lobby"].history) == 10


@pytest.mark.parametrize("pruned", [False, True])
def test_numbering_survives_a_restart_even_with_no_history(tmp_path: Path, pruned: bool) -> None:
    node = Node(tmp_path / "s", history=0)
    node.h.connect("ann")
    for i in range(3):
        say(node.h, "ann", f"m{i}")
    node.h.tick()
    if pruned:  # the rows went; the room's row keeps the seq
        node.clock.advance(PRUNE_INTERVAL)
        node.h.tick()
        rows = sqlite3.connect(node.path).execute("SELECT count(*) FROM messages").fetchone()
        assert rows == (0,)
    node.restart()
    node.h.connect("ann")
    say(node.h, "ann", "next")
    assert [m["seq"] for m in messages(node.h.tick()["ann"])] == [4]


def test_an_expired_room_is_deleted_from_the_file(tmp_path: Path) -> None:
    node = Node(tmp_path / "s", room_ttl=60)
    node.h.connect("ann", room="old")
    say(node.h, "ann", "bye", room="old")
    node.h.tick()
    node.h.drop("ann")
    node.clock.advance(61)
    node.h.tick()  # expires the room
    node.clock.advance(PRUNE_INTERVAL)
    node.h.tick()  # prunes it
    db = sqlite3.connect(node.path)
    assert db.execute("SELECT count(*) FROM rooms WHERE name = 'old'").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM messages").fetchone() == (0,)


# -- against the in-memory model ------------------------------------------------------------

ROOMS = ["a", "b", "c"]
step = st.one_of(
    st.tuples(st.just("say"), st.sampled_from(ROOMS), st.integers(0, 4000)),
    st.tuples(st.just("restart"), st.just(""), st.just(0)),
    st.tuples(st.just("prune"), st.just(""), st.just(0)),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(step, max_size=40))
def test_any_run_of_publishes_restarts_and_pruning_matches_memory(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, str, int]],
) -> None:
    # Small enough that each limit bites: 12 entries, 64 KiB per room, 100 KiB in all.
    limits: dict[str, Any] = {
        "history": 12, "history_bytes": 64 * 1024, "history_total_bytes": 100 * 1024,
    }
    node = Node(tmp_path_factory.mktemp("model") / "s", **limits)
    model = Harness(clock=node.clock, new_epochs=epochs(), **limits)

    def join_all(*harnesses: Harness) -> None:
        for h in harnesses:
            h.connect("ann", room=None)
            for room in ROOMS:
                h.send("ann", {"type": "join", "room": room})
            h.tick()

    # The model never restarts: a restart must change nothing it can tell.
    join_all(node.h, model)
    for i, (kind, room, size) in enumerate(steps):
        if kind == "say":
            for h in (node.h, model):
                say(h, "ann", f"{i}:" + "y" * size, room=room)
                h.tick()
        elif kind == "restart":
            node.restart()
            join_all(node.h)
        else:
            node.clock.advance(PRUNE_INTERVAL)
            node.h.tick()
    node.clock.advance(PRUNE_INTERVAL)
    node.h.tick()  # a last pass: the file holds what history holds, no more
    held = sum(len(room.history) for room in model.chat.rooms.values())
    rows = sqlite3.connect(node.path).execute("SELECT count(*) FROM messages").fetchone()
    assert rows == (held,)
    node.restart()
    for name, expected in model.chat.rooms.items():
        got = node.h.chat.rooms[name]
        assert (got.epoch, got.seq) == (expected.epoch, expected.seq)
        assert list(got.history) == list(expected.history)
    node.h.chat.close()
