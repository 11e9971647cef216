"""The chat's durable store on the standard library's ``sqlite3``.

One file, in WAL mode: a tick's messages are one transaction, appended to the
log (``synchronous=NORMAL``: safe against the process dying at any moment; with
``fsync``, ``FULL``: against power loss too). Checkpoints, which copy the log
into the file and wait for the disk, run on a thread of their own with its own
connection (SQLite lets them run beside the writer), so that the loop's commits
never wait for them; no message passes through that thread. The file is marked as ours
(``application_id``, ``user_version``) and checked before anything is written,
so a foreign or corrupt file is refused untouched. A lock file held with
``flock`` keeps a second server off the same file (the kernel drops it if the
process dies); other readers, such as an online backup, are welcome.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from wsnet.chat.store import SavedRoom, StoreError

__all__ = ["SqliteStore", "StoreOpenError"]

log = logging.getLogger("wsnet")

#: "wsnc" in the database header: this file is a wsnet chat store.
APPLICATION_ID = 0x77736E63
SCHEMA_VERSION = 1
#: After a checkpoint the WAL file is cut back to this size (bytes), so a burst
#: does not leave a large log behind.
WAL_SIZE_LIMIT = 4 << 20
#: Seconds between checkpoints on the checkpoint thread.
CHECKPOINT_INTERVAL = 1.0
#: WAL pages after which a commit checkpoints by itself: only a backstop, in
#: case the thread falls behind (8 MiB of log).
AUTOCHECKPOINT_PAGES = 2048
#: Free pages given back to the file system per pruning pass.
VACUUM_PAGES = 1024

_SCHEMA = (
    "CREATE TABLE rooms (name TEXT PRIMARY KEY, epoch TEXT NOT NULL, seq INTEGER NOT NULL)"
    " WITHOUT ROWID",
    # A rowid table: events are larger than a WITHOUT ROWID table likes (about a
    # twentieth of a page), and inserts into it measured 2.5x faster here.
    "CREATE TABLE messages (room TEXT NOT NULL, seq INTEGER NOT NULL, event BLOB NOT NULL,"
    " key TEXT, PRIMARY KEY (room, seq))",
)


class StoreOpenError(Exception):
    """The file cannot be used as a store; the message names it and says why."""


class SqliteStore:
    """A chat store in one SQLite file (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = False,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
    ) -> None:
        self.path = Path(path)
        self._lock_fd = _lock(self.path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            os.close(self._lock_fd)
            raise StoreOpenError(f"{self.path}: cannot open: {exc}") from exc
        try:
            self._prepare(fsync)
        except (sqlite3.Error, StoreOpenError) as exc:
            self._db.close()
            os.close(self._lock_fd)
            if isinstance(exc, StoreOpenError):
                raise
            raise StoreOpenError(f"{self.path}: {exc}") from exc
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_every, args=(checkpoint_interval,),
            name="wsnet-checkpoint", daemon=True,
        )
        self._checkpointer.start()

    def _prepare(self, fsync: bool) -> None:
        db = self._db
        # Reads only, until the file is known to be ours (or empty).
        app = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app == 0 and tables == 0:
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only before the first table
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        elif app != APPLICATION_ID:
            raise StoreOpenError(f"{self.path}: not a wsnet chat store (another program's file?)")
        elif version != SCHEMA_VERSION:
            raise StoreOpenError(
                f"{self.path}: store format {version}; this wsnet reads format {SCHEMA_VERSION}",
            )
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreOpenError(f"{self.path}: cannot use WAL mode (got {mode!r})")
        db.execute(f"PRAGMA synchronous = {'FULL' if fsync else 'NORMAL'}")
        db.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        db.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")

    def _checkpoint_every(self, interval: float) -> None:
        """The checkpoint thread: copy the log into the file now and then."""
        try:
            db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            log.warning("store: no checkpoint thread (%s); commits checkpoint instead", exc)
            return
        try:
            while not self._stop.wait(interval):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:
                    log.debug("store: checkpoint failed: %s", exc)
        finally:
            db.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The connection itself, for tests and tools (PRAGMAs)."""
        return self._db

    def load(self) -> list[SavedRoom]:
        """Every room with the messages it keeps. A corrupt page surfaces here,
        at start, as ``StoreOpenError``."""
        try:
            rooms = {
                name: SavedRoom(name, epoch, seq, [])
                for name, epoch, seq in self._db.execute("SELECT name, epoch, seq FROM rooms")
            }
            query = "SELECT room, seq, event, key FROM messages ORDER BY room, seq"
            for room, seq, event, key in self._db.execute(query):
                saved = rooms.get(room)
                if saved is not None:
                    saved.messages.append((seq, bytes(event), key))
        except sqlite3.Error as exc:
            raise StoreOpenError(f"{self.path}: cannot read: {exc}") from exc
        # A room's seq is its newest message's, or its row's if that is newer.
        return [
            saved._replace(seq=max(saved.seq, saved.messages[-1][0] if saved.messages else 0))
            for saved in rooms.values()
        ]

    def write(
        self,
        fresh: Iterable[tuple[str, str, int]],
        messages: Iterable[tuple[str, int, bytes, str | None]],
    ) -> None:
        db = self._db
        rooms = list(fresh)
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                if rooms:
                    db.executemany("DELETE FROM messages WHERE room = ?",
                                   ((name,) for name, _, _ in rooms))
                    db.executemany(
                        "INSERT INTO rooms VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE"
                        " SET epoch = excluded.epoch, seq = excluded.seq",
                        rooms,
                    )
                db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?)", messages)
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    def prune(self, rooms: Iterable[tuple[str, int, int]], forget: Iterable[str]) -> None:
        db = self._db
        kept = list(rooms)
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("UPDATE rooms SET seq = ? WHERE name = ?",
                               ((seq, name) for name, _, seq in kept))
                db.executemany("DELETE FROM messages WHERE room = ? AND seq < ?",
                               ((name, first) for name, first, _ in kept))
                gone = [(name,) for name in forget]
                db.executemany("DELETE FROM messages WHERE room = ?", gone)
                db.executemany("DELETE FROM rooms WHERE name = ?", gone)
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
            db.execute(f"PRAGMA incremental_vacuum({VACUUM_PAGES})").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    def close(self) -> None:
        self._stop.set()
        self._checkpointer.join(10)
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error:
            pass  # the WAL is replayed at the next open
        self._db.close()
        os.close(self._lock_fd)


def _rollback(db: sqlite3.Connection) -> None:
    try:
        db.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # SQLite rolled back already (it does on SQLITE_FULL and I/O errors)


def _lock(path: Path) -> int:
    """Hold ``PATH.lock`` for as long as the store is open: one server per file."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreOpenError(f"{lock_path}: cannot create the lock file: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise StoreOpenError(
            f"{path}: in use by another wsnet (pid {holder}); one server per store file",
        ) from exc
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd
