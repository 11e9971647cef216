"""Live-server fixtures: the real ``python -m wsnet`` in a subprocess, an in-process
``Server`` on a background thread, and a small raw-socket WebSocket client.

Everything here talks to 127.0.0.1 only, and every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from wsproto.frame_protocol import FrameProtocol

import wsnet

REPO = Path(__file__).resolve().parent.parent
LISTEN_PREFIX = "wsnet "
STARTUP_DEADLINE = 15.0
#: SIGTERM gives clients shutdown_grace (5 s) to answer; then we kill.
STOP_DEADLINE = 10.0

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ----------------------------------------------------------------------------
# The server as a subprocess
# ----------------------------------------------------------------------------


@dataclass
class ServerProcess:
    """A running ``python -m wsnet``; stderr goes to ``stderr_path``."""

    process: subprocess.Popen[bytes]
    port: int
    stderr_path: Path
    listening_line: str

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_kib(self) -> int:
        """Resident set size from /proc (VmRSS), in KiB."""
        return _proc_status_kib(self.pid, "VmRSS")

    def terminate_and_wait(self, deadline: float = STOP_DEADLINE) -> int:
        """SIGTERM, wait up to ``deadline`` seconds, SIGKILL after that."""
        proc = self.process
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=deadline)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=deadline)
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode


def _proc_status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{key} not in /proc/{pid}/status")


def _read_line_with_deadline(proc: subprocess.Popen[bytes], deadline: float) -> str:
    """The first stdout line, or an AssertionError once the deadline passes."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"server did not announce itself in time; got {buf!r}")
            if not sel.select(remaining):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(
                    f"server exited before listening (rc={proc.wait(5)}); stdout {buf!r}",
                )
            buf += chunk
    return buf.split(b"\n", 1)[0].decode()


def launch(args: list[str], stderr_path: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m wsnet ARGS`` without waiting for anything."""
    with stderr_path.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "wsnet", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=REPO,
            env=_server_env(),
        )


def start_server(args: list[str], stderr_path: Path) -> ServerProcess:
    """Start the server on an ephemeral port and wait for its listening line."""
    proc = launch(["--host", "127.0.0.1", "--port", "0", *args], stderr_path)
    try:
        line = _read_line_with_deadline(proc, time.monotonic() + STARTUP_DEADLINE)
        assert line.startswith(LISTEN_PREFIX) and " listening on ws://127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1].rstrip("/"))
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    return ServerProcess(proc, port, stderr_path, line)


ServerFactory = Callable[..., ServerProcess]


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    """``server_factory(*cli_args)`` starts a server; all are stopped at teardown."""
    started: list[ServerProcess] = []

    def factory(*args: str) -> ServerProcess:
        server = start_server(list(args), tmp_path / f"server-{len(started)}.stderr")
        started.append(server)
        return server

    yield factory
    for server in started:
        server.terminate_and_wait()


@pytest.fixture
def chat_server(server_factory: ServerFactory) -> ServerProcess:
    """The chat app with its default 50 ms tick."""
    return server_factory()


@pytest.fixture
def echo_server(server_factory: ServerFactory) -> ServerProcess:
    return server_factory("--app", "echo")


# ----------------------------------------------------------------------------
# The server in this process, on a background thread
# ----------------------------------------------------------------------------


@dataclass
class ThreadedServer:
    server: wsnet.Server
    thread: threading.Thread
    port: int
    errors: list[BaseException] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"


@pytest.fixture
def inprocess_server() -> Iterator[Callable[..., ThreadedServer]]:
    """``inprocess_server(handler, **config_fields)``: a ``wsnet.Server`` serving on a
    daemon thread; stopped (and joined, bounded) at teardown."""
    running: list[ThreadedServer] = []

    def factory(handler: wsnet.Handler, **fields: object) -> ThreadedServer:
        config = wsnet.Config(host="127.0.0.1", port=0).replace(**fields)
        server = wsnet.Server(handler, config)
        _host, port = server.listen()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                server.serve_forever(install_signal_handlers=False)
            except BaseException as exc:
                errors.append(exc)
                raise

        thread = threading.Thread(target=run, name=f"wsnet-{port}", daemon=True)
        thread.start()
        entry = ThreadedServer(server, thread, port, errors)
        running.append(entry)
        return entry

    yield factory
    for entry in running:
        entry.server.stop()
        entry.thread.join(STOP_DEADLINE)
        assert not entry.thread.is_alive(), "in-process server did not stop"
        assert not entry.errors, entry.errors


# ----------------------------------------------------------------------------
# The independent peer: the websockets package
# ----------------------------------------------------------------------------


def ws_connect(url: str, **options: object) -> connect:
    """``websockets`` asyncio client with bounded timeouts, no proxy and no
    client-side keepalive (tests that need pings say so)."""
    settings: dict[str, object] = {
        "proxy": None,
        "open_timeout": 5,
        "close_timeout": 2,
        "ping_interval": None,
    }
    settings.update(options)
    return connect(url, **settings)  # type: ignore[arg-type]


def run(coro: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
    """Run one async scenario on a fresh loop, bounded as a whole."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


WELCOME_FRAME_EVENTS = {"presence", "gap", "message", "error"}


async def welcome(ws: ClientConnection) -> dict[str, object]:
    """The first frame of a chat connection: the welcome event, then only what
    belongs to it (URL errors, the default room's presence and replay)."""
    events = await recv_json(ws)
    assert events[0]["type"] == "welcome", events
    assert {e["type"] for e in events[1:]} <= WELCOME_FRAME_EVENTS, events
    return events[0]


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> list[dict[str, object]]:
    """The next frame from the chat server, which must be a JSON array of events."""
    raw = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(raw, str), f"chat frames are text, got {raw!r:.80}"
    events = json.loads(raw)
    assert isinstance(events, list), f"a chat frame is a JSON array, got {raw:.80}"
    assert all(isinstance(e, dict) and "type" in e for e in events), raw[:200]
    return events


# ----------------------------------------------------------------------------
# A raw-socket WebSocket client
# ----------------------------------------------------------------------------


@dataclass
class Frame:
    fin: bool
    rsv1: bool
    rsv2: bool
    rsv3: bool
    opcode: int
    masked: bool
    payload: bytes

    @property
    def close_code(self) -> int | None:
        assert self.opcode == OP_CLOSE
        if len(self.payload) >= 2:
            return int(struct.unpack("!H", self.payload[:2])[0])
        return None


def parse_frame(buf: bytes | bytearray | memoryview) -> tuple[Frame, int] | None:
    """One frame from the start of ``buf`` and its length, or None if incomplete."""
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    n = b1 & 0x7F
    pos = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n = struct.unpack("!H", buf[2:4])[0]
        pos = 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n = struct.unpack("!Q", buf[2:10])[0]
        pos = 10
    masked = bool(b1 & 0x80)
    key = b""
    if masked:
        if len(buf) < pos + 4:
            return None
        key = bytes(buf[pos : pos + 4])
        pos += 4
    if len(buf) < pos + n:
        return None
    payload = bytes(buf[pos : pos + n])
    if masked:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    frame = Frame(
        fin=bool(b0 & 0x80),
        rsv1=bool(b0 & 0x40),
        rsv2=bool(b0 & 0x20),
        rsv3=bool(b0 & 0x10),
        opcode=b0 & 0x0F,
        masked=masked,
        payload=payload,
    )
    return frame, pos + n


def parse_frames(data: bytes) -> tuple[list[Frame], bytes]:
    """Every complete frame in ``data``, and the incomplete rest."""
    frames: list[Frame] = []
    pos = 0
    while True:
        parsed = parse_frame(memoryview(data)[pos:])
        if parsed is None:
            return frames, data[pos:]
        frame, used = parsed
        frames.append(frame)
        pos += used


def inflate_message(payload: bytes) -> bytes:
    """permessage-deflate decode of one whole message (RFC 7692 §7.2.2)."""
    inflater = zlib.decompressobj(-15)
    return inflater.decompress(payload + b"\x00\x00\xff\xff") + inflater.flush()


class ConnectionEnded(Exception):
    """The peer closed (or reset) the TCP connection."""


def expected_accept(key: str) -> str:
    """RFC 6455 §4.2.2: base64(SHA-1(key + GUID)), computed independently."""
    digest = hashlib.sha1((key + WS_GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def upgrade_request(
    port: int,
    path: str = "/",
    *,
    key: str | None = None,
    extensions: str | None = None,
    version: str = "13",
    method: str = "GET",
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> tuple[bytes, str]:
    """An upgrade request and the key it carries."""
    key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        f"Sec-WebSocket-Version: {version}",
    ]
    if extensions is not None:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    lines.extend(f"{k}: {v}" for k, v in extra_headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), key


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_http_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, status, *_ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1", lines[0]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(status), headers


class RawClient:
    """A blocking socket with a receive buffer; every read has a deadline."""

    def __init__(
        self,
        port: int,
        *,
        rcvbuf: int | None = None,
        timeout: float = 5.0,
        sock: socket.socket | None = None,
    ) -> None:
        """Connect to 127.0.0.1:port, or wrap ``sock`` (already connected)."""
        self.port = port
        self.timeout = timeout
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if rcvbuf is not None:
                # Before connect, so the window scale is negotiated for it.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(timeout)
            sock.connect(("127.0.0.1", port))
        self.sock = sock
        self.buf = b""
        self.eof = False
        #: wsproto as the client-side encoder of valid, masked frames.
        self.encoder = FrameProtocol(client=True, extensions=[])

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- bytes ---------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        """Read once more; raise ConnectionEnded at EOF, TimeoutError at deadline."""
        if self.eof:
            raise ConnectionEnded
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data before the deadline")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(256 * 1024)
        except TimeoutError:
            raise TimeoutError("no data before the deadline") from None
        except ConnectionResetError:
            self.eof = True
            raise ConnectionEnded from None
        if not chunk:
            self.eof = True
            raise ConnectionEnded
        self.buf += chunk

    def read_until_eof(self, timeout: float | None = None) -> bytes:
        """Everything until the peer closes; TimeoutError if it does not."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with contextlib.suppress(ConnectionEnded):
            while True:
                self._fill(deadline)
        data, self.buf = self.buf, b""
        return data

    def wait_eof(self, timeout: float) -> bool:
        """Did the peer close within ``timeout`` (data read meanwhile is kept)?"""
        try:
            self.read_until_eof(timeout)
        except TimeoutError:
            return False
        return True

    # -- HTTP ------------------------------------------------------------------

    def read_http_head(self, timeout: float | None = None) -> tuple[int, dict[str, str]]:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        return parse_http_head(head)

    def handshake(
        self,
        path: str = "/",
        *,
        extensions: str | None = None,
        eager: bytes = b"",
    ) -> dict[str, str]:
        """Upgrade (with ``eager`` bytes in the same write); assert 101."""
        request, key = upgrade_request(self.port, path, extensions=extensions)
        self.send(request + eager)
        status, headers = self.read_http_head()
        assert status == 101, (status, headers, self.buf)
        assert headers["sec-websocket-accept"] == expected_accept(key)
        return headers

    # -- frames ----------------------------------------------------------------

    def recv_frame(self, timeout: float | None = None) -> Frame:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            parsed = parse_frame(self.buf)
            if parsed is not None:
                frame, used = parsed
                self.buf = self.buf[used:]
                assert not frame.masked, "server frames must not be masked"
                return frame
            self._fill(deadline)

    def recv_data_frame(self, timeout: float | None = None) -> Frame:
        """The next text/binary/close frame, skipping pings and pongs."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            frame = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if frame.opcode not in (OP_PING, OP_PONG):
                return frame

    def recv_close(self, timeout: float | None = None) -> Frame:
        """Frames until a close frame; fails if the connection ends without one."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            frame = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if frame.opcode == OP_CLOSE:
                return frame

    def send_text(self, text: str) -> None:
        self.send(bytes(self.encoder.send_data(text, fin=True)))


def http_get(
    port: int, path: str, *, method: str = "GET", timeout: float = 5.0,
) -> HttpResponse:
    """One plain HTTP request; reads until the server closes."""
    with RawClient(port, timeout=timeout) as client:
        client.send(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode(),
        )
        return read_response(client, timeout)


def read_response(client: RawClient, timeout: float = 5.0) -> HttpResponse:
    data = client.read_until_eof(timeout)
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data[:200]!r}"
    status, headers = parse_http_head(head)
    if "content-length" in headers:
        assert len(body) == int(headers["content-length"]), (len(body), headers)
    return HttpResponse(status, headers, body)


RawClientFactory = Callable[..., RawClient]


@pytest.fixture
def raw_client() -> Iterator[RawClientFactory]:
    """``raw_client(port, rcvbuf=None)`` opens a RawClient closed at teardown."""
    opened: list[RawClient] = []

    def factory(port: int, **kwargs: float | int | None) -> RawClient:
        client = RawClient(port, **kwargs)  # type: ignore[arg-type]
        opened.append(client)
        return client

    yield factory
    for client in opened:
        client.close()


# ----------------------------------------------------------------------------
# A real Redis: redis-server on a free port, per test
# ----------------------------------------------------------------------------

REDIS_DEADLINE = 10.0


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the kernel's pick, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_ping(port: int, timeout: float = 1.0) -> bool:
    """Does a Redis on 127.0.0.1:port answer PING with +PONG (raw RESP)?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = b""
            while b"\r\n" not in reply:
                chunk = sock.recv(64)
                if not chunk:
                    return False
                reply += chunk
    except OSError:
        return False
    return reply.startswith(b"+PONG\r\n")


class RedisServer:
    """A ``redis-server`` subprocess on 127.0.0.1: no persistence, its log in
    ``log_path``. ``stop``/``kill`` and ``start`` again (same port) make an outage."""

    def __init__(self, executable: str, workdir: Path, port: int) -> None:
        self.executable = executable
        self.workdir = workdir
        self.port = port
        self.log_path = workdir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, deadline: float = REDIS_DEADLINE) -> None:
        """Start (again) on ``self.port``; return once it answers PING."""
        assert not self.alive(), "redis-server is already running"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    self.executable,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(self.workdir),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        end = time.monotonic() + deadline
        while not redis_ping(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.process.returncode} on port "
                    f"{self.port}:\n{self.log_text()[-2000:]}",
                )
            if time.monotonic() > end:
                self.kill()
                raise AssertionError(f"redis-server did not answer PING within {deadline} s")
            time.sleep(0.02)

    def stop(self, deadline: float = STOP_DEADLINE) -> None:
        """SIGTERM and wait (SIGKILL past the deadline)."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=deadline)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=deadline)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: the abrupt outage."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=STOP_DEADLINE)
        self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh ``redis-server`` for this test (``.url``, ``.port``, ``.stop()``,
    ``.start()``, ``.kill()``); stopped at teardown. Missing redis-server fails the
    test: ``make unit`` installs it."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.fail("redis-server is not installed: run `make unit` (as root), which "
                    "installs Debian's redis-server", pytrace=False)
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server: RedisServer | None = None
    for _attempt in range(3):  # the free port may be taken before redis binds it
        server = RedisServer(executable, workdir, free_port())
        try:
            server.start()
        except RuntimeError:
            continue
        break
    else:
        assert server is not None
        pytest.fail(f"redis-server did not start:\n{server.log_text()[-2000:]}")
    try:
        yield server
    finally:
        server.stop()
