"""Behind a real reverse proxy: Debian's nginx, started here on a free port with
the shipped ``contrib/nginx.conf`` in front of a live ``python -m wsnet
--forwarded-allow-ips 127.0.0.1``. Clients come from several loopback source
addresses (127.0.0.2, 127.0.0.3, ...), so that the real client can be told
from the proxy. ``TrustedProxies`` itself is tested without sockets in
tests/test_forwarded.py."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from support.chat import run
from support.procs import REPO, free_port
from support.servers import ServerFactory, ServerProcess
from websockets.typing import Origin

pytestmark = pytest.mark.live

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CONTRIB = REPO / "contrib" / "nginx.conf"


class Nginx:
    """nginx in the foreground with the shipped server block, proxying to ``upstream``."""

    def __init__(self, workdir: Path, upstream: int) -> None:
        self.port = free_port()
        block = CONTRIB.read_text()
        assert "listen 80;" in block and "127.0.0.1:8080" in block, "contrib/nginx.conf changed"
        block = block.replace("listen 80;", f"listen 127.0.0.1:{self.port};")
        block = block.replace("127.0.0.1:8080", f"127.0.0.1:{upstream}")
        temp = "\n".join(f"  {kind}_temp_path {workdir}/{kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(
            f"worker_processes 1;\nerror_log {workdir}/error.log warn;\n"
            f"pid {workdir}/nginx.pid;\nuser root;\n"
            "events { worker_connections 512; }\n"
            f"http {{\n  access_log off;\n{temp}\n{block}\n}}\n",
        )
        self.workdir = workdir
        self.process = subprocess.Popen(
            [NGINX, "-p", str(workdir), "-c", str(self.conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while not self._answers():
            if self.process.poll() is not None:
                stderr = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"nginx exited: {stderr}{self.error_log()}")
            assert time.monotonic() < deadline, "nginx did not listen"
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def error_log(self) -> str:
        path = self.workdir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def proxied(server_factory: ServerFactory, tmp_path: Path) -> Iterator[tuple[ServerProcess, Nginx]]:
    server = server_factory("--forwarded-allow-ips", "127.0.0.1", "--max-connections-per-ip", "2",
                            "--allowed-origin", "self")
    nginx = Nginx(tmp_path / "nginx", server.port)
    try:
        yield server, nginx
    finally:
        nginx.stop()


async def open_from(port: int, source: str, **headers: str) -> Any:
    """A websockets client from ``source`` (a loopback address), or the status
    of its refused upgrade."""
    try:
        ws = await websockets.connect(
            f"ws://127.0.0.1:{port}/?name=u{source.rsplit('.', 1)[1]}",
            local_addr=(source, 0), additional_headers=headers, open_timeout=5,
        )
    except websockets.InvalidStatus as exc:
        return exc.response.status_code
    await ws.recv()  # the welcome
    return ws


def test_chat_works_through_nginx_and_the_limit_is_the_real_clients(
    proxied: tuple[ServerProcess, Nginx],
) -> None:
    server, nginx = proxied

    async def scenario() -> None:
        first = [await open_from(nginx.port, "127.0.0.2") for _ in range(2)]
        await first[0].send("through the proxy")
        while "through the proxy" not in await asyncio.wait_for(first[1].recv(), 5):
            pass  # presence first; the message within the deadline
        # A third from 127.0.0.2 is over its limit, though nginx is one peer for all;
        # a spoofed X-Forwarded-For does not make it someone else (nginx appends).
        assert await open_from(nginx.port, "127.0.0.2") == 429
        assert await open_from(nginx.port, "127.0.0.2", **{"X-Forwarded-For": "9.9.9.9"}) == 429
        others = [await open_from(nginx.port, "127.0.0.3") for _ in range(2)]
        assert all(not isinstance(o, int) for o in others)  # another client, its own limit
        for ws in first + others:
            await ws.close()

    run(scenario())
    deadline = time.monotonic() + 5
    while "127.0.0.3:" not in server.stderr_text():
        assert time.monotonic() < deadline, server.stderr_text()
        time.sleep(0.05)
    access = [line for line in server.stderr_text().splitlines() if "wsnet.access" in line]
    assert any(" 127.0.0.2:" in line and "websocket" in line for line in access), access
    assert not any(" 127.0.0.1:" in line and "websocket" in line for line in access), access


def test_headers_from_an_untrusted_peer_change_nothing(
    proxied: tuple[ServerProcess, Nginx],
) -> None:
    server, _ = proxied

    async def scenario() -> None:
        # Straight to wsnet from 127.0.0.4, claiming to be others: still 127.0.0.4.
        spoofs = ["1.1.1.1", "2.2.2.2", "3.3.3.3"]
        got = [await open_from(server.port, "127.0.0.4", **{"X-Forwarded-For": s,
                                                            "Forwarded": f"for={s}"})
               for s in spoofs]
        assert got[2] == 429 and not isinstance(got[0], int) and not isinstance(got[1], int)
        for ws in got[:2]:
            await ws.close()

    run(scenario())


def test_the_forwarded_scheme_is_the_one_origin_self_means(
    proxied: tuple[ServerProcess, Nginx],
) -> None:
    _, nginx = proxied
    origin = f"http://127.0.0.1:{nginx.port}"

    async def scenario() -> None:
        ok = await websockets.connect(f"ws://127.0.0.1:{nginx.port}/?name=o", origin=Origin(origin),
                                      open_timeout=5)
        await ok.close()
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"ws://127.0.0.1:{nginx.port}/?name=o",
                                     origin=Origin("https://elsewhere.example"),
                                     open_timeout=5)
        assert refused.value.response.status_code == 403

    run(scenario())


def test_x_forwarded_proto_counts_from_the_proxy_only(
    proxied: tuple[ServerProcess, Nginx],
) -> None:
    server, _ = proxied
    origin = f"https://127.0.0.1:{server.port}"  # as if TLS ended at the proxy

    async def attempt(source: str) -> int | None:
        try:
            ws = await websockets.connect(
                f"ws://127.0.0.1:{server.port}/?name=p", origin=Origin(origin),
                local_addr=(source, 0), open_timeout=5,
                additional_headers={"X-Forwarded-Proto": "https"},
            )
        except websockets.InvalidStatus as exc:
            return exc.response.status_code
        await ws.close()
        return None

    async def scenario() -> None:
        assert await attempt("127.0.0.1") is None  # the trusted proxy: https it is
        assert await attempt("127.0.0.5") == 403  # anyone else: plain http, wrong origin

    run(scenario())
