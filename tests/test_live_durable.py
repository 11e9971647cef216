"""The durable default over real sockets: a chat whose server is killed
(SIGKILL) again and again loses nothing any client saw and repeats nothing.

Clients are the ``websockets`` library, behaving as the page does: on a lost
connection they reconnect with ``since``/``epoch`` and resend, with the same
``cid``, every message whose echo they had not seen."""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websockets
from support.chat import recv_json, ws_connect
from support.procs import python_env
from support.rawclient import http_get
from support.servers import ServerProcess, start_server

pytestmark = pytest.mark.live

ROOM = "crash"
KILLS = 10
#: Between two messages of one client: 20 msg/s, under the default rate limit.
SEND_EVERY = 0.05


class PageLikeClient:
    """One user: sends numbered messages, keeps a log by seq, and on every
    reconnect resumes and resends what was not acknowledged."""

    def __init__(self, name: str, url: Callable[[], str]) -> None:
        self.name = name
        self.url = url
        self.log: dict[int, str] = {}
        self.repeats: list[int] = []
        self.gaps: list[dict[str, Any]] = []
        self.epochs: list[str] = []
        self.unacked: dict[str, str] = {}
        self.acked: set[str] = set()
        self.sending = True
        self.stopped = False
        self.sent = 0
        self.resent = 0

    @property
    def last(self) -> int:
        return max(self.log, default=0)

    def _query(self) -> str:
        query = f"?name={self.name}&room={ROOM}"
        if self.epochs:
            query += f"&since={self.last}&epoch={self.epochs[-1]}"
        return query

    def _take(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "presence" and event.get("room") == ROOM:
            if not self.epochs or self.epochs[-1] != event["epoch"]:
                self.epochs.append(event["epoch"])
        elif kind == "gap":
            self.gaps.append(event)
        elif kind == "message" and event["room"] == ROOM:
            seq = event["seq"]
            if seq in self.log:
                self.repeats.append(seq)
            self.log[seq] = event["text"]
            cid = event.get("cid")
            if event["from"] == self.name and cid in self.unacked:
                del self.unacked[cid]
                self.acked.add(cid)

    async def run(self) -> None:
        while not self.stopped:
            try:
                async with ws_connect(self.url() + self._query(), open_timeout=2) as ws:
                    self.resent += len(self.unacked)
                    for cid, text in list(self.unacked.items()):  # the page's resend
                        await ws.send(json.dumps({"type": "message", "room": ROOM,
                                                  "text": text, "cid": cid}))
                    await asyncio.gather(self._receive(ws), self._send(ws))
            except (OSError, TimeoutError, websockets.ConnectionClosed,
                    websockets.InvalidHandshake):
                await asyncio.sleep(0.05)

    async def _receive(self, ws: Any) -> None:
        while not self.stopped:
            try:
                events = await recv_json(ws, timeout=0.5)
            except TimeoutError:
                continue
            for event in events:
                self._take(event)
        await ws.close()

    async def _send(self, ws: Any) -> None:
        while not self.stopped:
            if self.sending:
                self.sent += 1
                cid = f"{self.name}-{self.sent}"
                text = f"{self.name} says {self.sent}"
                self.unacked[cid] = text
                await ws.send(json.dumps({"type": "message", "room": ROOM,
                                          "text": text, "cid": cid}))
            await asyncio.sleep(SEND_EVERY)


def reached(client: PageLikeClient, seq: int) -> Callable[[], bool]:
    return lambda: client.last >= seq


async def wait_until(what: str, done: Callable[[], bool], timeout: float) -> None:
    end = time.monotonic() + timeout
    while not done():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def test_sigkill_at_random_moments_loses_and_repeats_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    rng = random.Random(20261206)
    starts = [0]

    def start() -> ServerProcess:
        starts[0] += 1
        args = ["--data-dir", str(data_dir)]
        return start_server(args, tmp_path / f"server-{starts[0]}.stderr")

    server = start()
    clients = [PageLikeClient(n, lambda: server.url) for n in ("ann", "bob", "cat")]

    async def scenario() -> None:
        nonlocal server
        tasks = [asyncio.create_task(c.run()) for c in clients]
        try:
            for _ in range(KILLS):
                # A random moment: after a random number of further messages.
                target = clients[0].last + rng.randint(3, 40)
                await wait_until("messages before the kill", reached(clients[0], target), 20)
                server.process.send_signal(signal.SIGKILL)
                server.process.wait(10)
                server = await asyncio.to_thread(start)
            for client in clients:
                client.sending = False
            await wait_until(
                "every resend acknowledged and every log complete",
                lambda: all(not c.unacked for c in clients)
                and len({c.last for c in clients}) == 1
                and all(len(c.log) == c.last for c in clients),
                30,
            )
        finally:
            for client in clients:
                client.stopped = True
            await asyncio.wait_for(asyncio.gather(*tasks), 10)

    try:
        asyncio.run(asyncio.wait_for(scenario(), 240))
    finally:
        server.terminate_and_wait()
    final = clients[0].log
    assert len(final) >= KILLS * 3
    # Kills landed while messages were in flight (each client resent some):
    # the resend path, not only the quiet one, was tested.
    assert sum(c.resent for c in clients) > 0
    for client in clients:
        assert client.repeats == [], f"{client.name} got seqs twice: {client.repeats[:10]}"
        assert client.gaps == [], f"{client.name} was told of gaps: {client.gaps[:3]}"
        assert len(client.epochs) == 1, f"{client.name} saw the epoch change: {client.epochs}"
        assert client.log == final  # one seq -> one text, for everyone
        assert sorted(client.log) == list(range(1, len(final) + 1))
        mine = [text for text in final.values() if text.startswith(f"{client.name} says ")]
        # Everything acknowledged is there exactly once; nothing is there twice.
        assert len(mine) == len(set(mine)) == len(client.acked)
    # The file holds every message, numbered on: the room row's seq may lag the
    # newest message until the next pruning pass (a room's seq is the larger).
    db = sqlite3.connect(data_dir / "chat.sqlite3")
    (row,) = db.execute("SELECT seq FROM rooms WHERE name = ?", (ROOM,)).fetchone()
    (newest,) = db.execute("SELECT max(seq) FROM messages WHERE room = ?", (ROOM,)).fetchone()
    assert max(row, newest) == len(final)


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m wsnet`` that must exit by itself (bounded), run in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "wsnet", "--host", "127.0.0.1", "--port", "0", *args],
        cwd=cwd, env=python_env(), capture_output=True, text=True, timeout=30, check=False,
    )


def test_a_corrupt_store_file_stops_the_start_with_status_2(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    path.write_bytes(b"\x00garbage" * 1000)
    before = path.read_bytes()
    proc = _run("--store", f"sqlite:{path}", cwd=tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if "store" in line]
    assert len(lines) == 1 and str(path) in lines[0] and "not a database" in lines[0]
    assert path.read_bytes() == before


def test_a_second_server_on_the_same_store_refuses_to_start(
    tmp_path: Path,
) -> None:
    first = start_server(["--data-dir", str(tmp_path / "d")], tmp_path / "first.stderr")
    try:
        proc = _run("--data-dir", str(tmp_path / "d"), cwd=tmp_path)
        assert proc.returncode == 2
        assert f"in use by another wsnet (pid {first.pid})" in proc.stderr
        assert first.alive()
    finally:
        first.terminate_and_wait()


def test_the_default_store_is_made_in_the_data_dir_and_reported(tmp_path: Path) -> None:
    server = start_server(["--data-dir", str(tmp_path / "new" / "dir")], tmp_path / "s.stderr")
    try:
        assert (tmp_path / "new" / "dir" / "chat.sqlite3").is_file()
        assert json.loads(http_get(server.port, "/healthz").body)["store"] == "ok"

        async def one_message() -> None:
            async with ws_connect(server.url + "?name=ann&room=dev") as ws:
                await recv_json(ws)
                await ws.send(json.dumps({"type": "message", "text": "hi"}))
                await recv_json(ws)

        asyncio.run(asyncio.wait_for(one_message(), 10))
        metrics = http_get(server.port, "/metrics").body.decode()
        count = re.search(r"^wsnet_chat_store_commit_seconds_count (\d+)", metrics, re.M)
        assert count is not None and int(count.group(1)) >= 1
        assert "wsnet_chat_store_healthy 1" in metrics
    finally:
        server.terminate_and_wait()
    assert "chat store: " in server.stderr_text()


def test_memory_store_writes_no_file(tmp_path: Path) -> None:
    server = start_server(["--store", "memory", "--data-dir", str(tmp_path / "d")],
                          tmp_path / "s.stderr")
    try:
        assert not (tmp_path / "d").exists()
    finally:
        server.terminate_and_wait()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--store", "postgres:x"], "expected sqlite:PATH or memory"),
        (["--app", "echo", "--store", "memory"], "--store applies to the chat app"),
        (["--redis", "redis://127.0.0.1:1/0", "--store", "memory"], "single-node engine"),
    ],
)
def test_store_options_are_checked(tmp_path: Path, args: list[str], message: str) -> None:
    proc = _run(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
