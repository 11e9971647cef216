"""Out of descriptors: the server pauses accepting, logs once, and serves again
as soon as descriptors free up (issue: reactor survives EMFILE)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

pytestmark = pytest.mark.live

FD_LIMIT = 48


# The server process lowers its own descriptor limit, then runs ``python -m wsnet``.
LAUNCH = (
    "import resource, runpy, sys;"
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({FD_LIMIT}, {FD_LIMIT}));"
    "sys.argv[0] = 'wsnet';"
    "runpy.run_module('wsnet', run_name='__main__')"
)


def _wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_server_survives_emfile(tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, "--port", "0", "--max-connections", "1000"],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert "listening on ws://" in line, line
        port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))

        # More idle TCP connections than the server has descriptors for.
        hogs = []
        for _ in range(FD_LIMIT + 16):
            hogs.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        _wait_for(lambda: b"accept failed" in log.read_bytes(), 10, "the EMFILE warning")
        assert proc.poll() is None, "server died on EMFILE"

        for sock in hogs:
            sock.close()

        async def chat() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
            async with connect(f"ws://127.0.0.1:{port}/?name=after") as ws:
                welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
                await ws.send("still here")
                batch = json.loads(await asyncio.wait_for(ws.recv(), 10))
                return welcome, batch

        welcome, batch = asyncio.run(asyncio.wait_for(chat(), 30))
        # The welcome frame: the welcome, then the lobby's presence (alone there).
        assert [e["type"] for e in welcome] == ["welcome", "presence"], welcome
        assert welcome[1]["members"] == [{"id": welcome[0]["id"], "name": "after"}], welcome
        assert len(batch) == 1, batch
        assert batch[0]["type"] == "message" and batch[0]["text"] == "still here"
        assert proc.poll() is None
        # One warning per episode, not one per failed accept.
        assert log.read_bytes().count(b"accept failed") <= 3
        assert b"Traceback" not in log.read_bytes()
    finally:
        proc.terminate()
        proc.wait(10)
