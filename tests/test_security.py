"""Security features end to end: TLS on the reactor, the Origin allowlist, the
``on_upgrade`` authentication hook, signed chat tokens, and log/response hygiene.

Certificates are minted per test with ``trustme`` into ``tmp_path``. Servers run
either as the real ``python -m wsnet`` (CLI options, environment, exit codes) or
in this process (custom handlers, short timers). Every socket is on 127.0.0.1 and
every wait has a deadline.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import queue
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st
from support.chat import recv_json, run, welcome, ws_connect
from support.procs import REPO, python_env, read_line
from support.rawclient import RawClient
from support.servers import STARTUP_DEADLINE, ServerFactory, ServerProcess, ThreadedServer, launch
from support.wire import OP_CLOSE, HttpResponse, parse_http_head, upgrade_request
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidHandshake, InvalidStatus

import wsnet
from wsnet.chat import ChatApp
from wsnet.cli import SECRET_ENV
from wsnet.logs import SafeFormatter
from wsnet.tokens import TokenError, make_token, verify_token

pytestmark = pytest.mark.timeout(60)

Event = dict[str, Any]
InProcessFactory = Callable[..., ThreadedServer]

SECRET = b"correct horse battery staple"
LISTEN_WSS = re.compile(r"wsnet chat listening on wss://127\.0\.0\.1:(\d+)/")


#: Events about who is in a room: other clients arriving, leaving or renamed.
PRESENCE_EVENTS = {"join", "leave", "presence", "nick"}


async def next_message(ws: ClientConnection, timeout: float = 5.0) -> Event:
    """The next ``message`` event (chat frames hold one or more events); presence
    events (others joining or leaving) may come first, nothing else may."""
    deadline = time.monotonic() + timeout
    messages: list[Event] = []
    while not messages:
        events = await recv_json(ws, max(0.01, deadline - time.monotonic()))
        assert all(e["type"] in {"message", *PRESENCE_EVENTS} for e in events), events
        messages = [e for e in events if e["type"] == "message"]
    assert len(messages) == 1, messages
    return messages[0]


def attempt_upgrade(
    port: int, path: str = "/", headers: tuple[tuple[str, str], ...] = (),
) -> HttpResponse:
    """Send one upgrade request; return the 101 head, or the whole refusal."""
    with RawClient(port) as client:
        request = upgrade_request(port, path, extra_headers=headers)
        client.send(request)
        status, head = client.read_http_head()
        if status == 101:
            return HttpResponse(101, head, b"")
        body = client.read_until_eof()
    if "content-length" in head:
        assert len(body) == int(head["content-length"]), (head, body)
    return HttpResponse(status, head, body)


def plain_get(port: int, target: str) -> HttpResponse:
    with RawClient(port) as client:
        client.send(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            .encode(),
        )
        data = client.read_until_eof()
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, data[:200]
    status, headers = parse_http_head(head)
    return HttpResponse(status, headers, body)


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m wsnet ARGS`` that must exit on its own (bounded)."""
    return subprocess.run(
        [sys.executable, "-m", "wsnet", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=20,
        check=False,
    )


def env_without_secret() -> dict[str, str]:
    env = python_env()
    env.pop(SECRET_ENV, None)
    return env


# ----------------------------------------------------------------------------
# TLS material and helpers
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca: trustme.CA
    certfile: Path
    keyfile: Path
    #: The key of another certificate from the same CA: does not match certfile.
    other_keyfile: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context with normal verification that trusts only our CA."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(context)
        return context


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    other = ca.issue_cert("127.0.0.1")
    certfile = tmp_path / "server.crt"
    keyfile = tmp_path / "server.key"
    other_keyfile = tmp_path / "other.key"
    certfile.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(keyfile))
    other.private_key_pem.write_to_path(str(other_keyfile))
    return TlsFiles(ca, certfile, keyfile, other_keyfile)


TlsServerFactory = Callable[..., ServerProcess]


@pytest.fixture
def tls_server_factory(tmp_path: Path) -> Iterator[TlsServerFactory]:
    """``factory(*cli_args)``: ``python -m wsnet`` announcing a ``wss://`` URL."""
    started: list[ServerProcess] = []

    def factory(*args: str) -> ServerProcess:
        stderr_path = tmp_path / f"tls-server-{len(started)}.stderr"
        proc = launch(["--host", "127.0.0.1", "--port", "0", *args], stderr_path)
        try:
            line = read_line(proc, time.monotonic() + STARTUP_DEADLINE)
            match = LISTEN_WSS.fullmatch(line.strip())
            assert match is not None, f"expected a wss:// URL, got {line!r}"
        except BaseException:
            proc.kill()
            proc.wait(5)
            raise
        server = ServerProcess(proc, int(match[1]), stderr_path, line)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.terminate_and_wait()


def https_get(url: str, context: ssl.SSLContext) -> tuple[int, str, bytes]:
    """GET over https with urllib (no proxies), bounded."""
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context),
    )
    with opener.open(url, timeout=5) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


def wait_closed(sock: socket.socket, deadline: float) -> float:
    """Read and drop until the peer closes (FIN or RST); when it did (monotonic)."""
    for _ in range(100_000):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return time.monotonic()
        if not chunk:
            return time.monotonic()
    raise AssertionError("the server did not close the connection before the deadline")


def still_open(sock: socket.socket) -> bool:
    """Has the peer not closed yet? (Non-blocking peek; keeps any data.)"""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.setblocking(True)


def stalled_client_hello(port: int, context: ssl.SSLContext) -> socket.socket:
    """Connect, send a real ClientHello, read the server's first flight, and then
    say nothing more: a client stopped in the middle of the TLS handshake."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16", "a TLS handshake record"
    sock.sendall(hello)
    reply = b""
    deadline = time.monotonic() + 5
    for _ in range(1000):
        if len(reply) >= 5:
            break
        remaining = deadline - time.monotonic()
        assert remaining > 0, "no ServerHello before the deadline"
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        assert chunk, "the server closed instead of answering the ClientHello"
        reply += chunk
    assert reply[0] == 0x16, f"the server's first flight is a handshake record: {reply[:16]!r}"
    return sock


async def chat_pair(url: str, context: ssl.SSLContext, text: str) -> tuple[str, str]:
    """Two clients over wss: both welcomed, and a message from one reaches both.
    Returns the negotiated TLS versions."""
    async with (
        ws_connect(url + "?name=ann", ssl=context) as ann,
        ws_connect(url + "?name=bob", ssl=context) as bob,
    ):
        assert (await welcome(ann))["name"] == "ann"
        assert (await welcome(bob))["name"] == "bob"
        await ann.send(text)
        for ws in (ann, bob):
            event = await next_message(ws)
            assert event["from"] == "ann" and event["text"] == text, event
        versions = []
        for ws in (ann, bob):
            ssl_object = ws.transport.get_extra_info("ssl_object")
            assert ssl_object is not None, "not a TLS connection"
            versions.append(ssl_object.version())
        return versions[0], versions[1]


# ----------------------------------------------------------------------------
# 1. TLS
# ----------------------------------------------------------------------------


@pytest.mark.live
def test_tls_cli_serves_wss_chat_and_https_healthz(
    tls_files: TlsFiles, tls_server_factory: TlsServerFactory,
) -> None:
    server = tls_server_factory(
        "--certfile", str(tls_files.certfile), "--keyfile", str(tls_files.keyfile),
    )
    assert "wss://" in server.listening_line and "ws://127" not in server.listening_line
    url = f"wss://127.0.0.1:{server.port}/"
    context = tls_files.client_context()

    versions = run(chat_pair(url, context, "hello over tls"))
    assert set(versions) <= {"TLSv1.2", "TLSv1.3"}, versions

    status, content_type, body = https_get(f"https://127.0.0.1:{server.port}/healthz", context)
    assert status == 200
    assert content_type.startswith("application/json"), content_type
    health = json.loads(body)
    assert health["status"] == "ok" and health["app"] == "chat", health

    # The certificate really is the one we minted: a client that does not trust
    # our CA refuses it.
    untrusting = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        untrusting.wrap_socket(raw, server_hostname="127.0.0.1")
    assert server.alive()


@pytest.mark.live
def test_tls_plain_client_on_tls_port_fails_cleanly(
    tls_files: TlsFiles, tls_server_factory: TlsServerFactory,
) -> None:
    server = tls_server_factory(
        "--certfile", str(tls_files.certfile), "--keyfile", str(tls_files.keyfile),
    )

    async def plain_websocket() -> None:
        async with ws_connect(f"ws://127.0.0.1:{server.port}/", open_timeout=8):
            pass

    # The server's handshake timeout is 10 s: a prompt failure means the server
    # refused the plaintext at once rather than waiting it out.
    start = time.monotonic()
    with pytest.raises((InvalidHandshake, OSError, EOFError)) as failure:
        run(plain_websocket())
    assert not isinstance(failure.value, TimeoutError), failure.value
    assert time.monotonic() - start < 5.0

    # Byte level: a plaintext request gets no HTTP answer, just the end of the
    # connection (perhaps after a TLS alert), promptly.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        start = time.monotonic()
        raw.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
        raw.settimeout(5)
        try:
            first = raw.recv(65536)
        except ConnectionResetError:
            first = b""
        assert not first.startswith(b"HTTP/"), first
        closed_at = wait_closed(raw, start + 5) if first else time.monotonic()
        assert closed_at - start < 5.0

    # ... and the server keeps serving TLS clients.
    assert server.alive()
    context = tls_files.client_context()
    run(chat_pair(f"wss://127.0.0.1:{server.port}/", context, "still here"))
    status, _ctype, _body = https_get(f"https://127.0.0.1:{server.port}/healthz", context)
    assert status == 200


def test_tls_handshake_timeout_drops_stalled_clients_without_stalling_the_loop(
    tls_files: TlsFiles, inprocess_server: InProcessFactory,
) -> None:
    timeout = 3.0
    server = inprocess_server(
        ChatApp(),
        certfile=str(tls_files.certfile),
        keyfile=str(tls_files.keyfile),
        handshake_timeout=timeout,
        flush_interval=0.01,
    )
    assert server.server.url.startswith("wss://")
    context = tls_files.client_context()

    start = time.monotonic()
    silent = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    midway = stalled_client_hello(server.port, context)
    try:
        # While both handshakes hang, a normal client connects and chats.
        run(chat_pair(f"wss://127.0.0.1:{server.port}/", context, "the loop is free"))
        chatted = time.monotonic()
        assert chatted - start < timeout, "the chat had to wait for the stalled handshakes"
        assert still_open(silent) and still_open(midway), "dropped before the timeout"

        deadline = start + timeout + 10
        silent_closed = wait_closed(silent, deadline) - start
        midway_closed = wait_closed(midway, deadline) - start
    finally:
        silent.close()
        midway.close()
    for elapsed in (silent_closed, midway_closed):
        assert timeout - 0.05 <= elapsed < timeout + 5.0, elapsed

    # The timer did not take the server down with it.
    run(chat_pair(f"wss://127.0.0.1:{server.port}/", context, "after the timeout"))


def _tls11_context(files: TlsFiles, maximum: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    files.ca.configure_trust(context)
    # Security level 0 lets the local OpenSSL offer old protocol versions at all,
    # so that the refusal, where it can happen, is the server's.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = maximum
    return context


def test_tls_1_1_client_cannot_complete_a_handshake(
    tls_files: TlsFiles, inprocess_server: InProcessFactory,
) -> None:
    server = inprocess_server(
        ChatApp(), certfile=str(tls_files.certfile), keyfile=str(tls_files.keyfile),
    )
    old = _tls11_context(tls_files, ssl.TLSVersion.TLSv1_1)
    # An SSLError (the server's protocol_version alert, or the local library
    # refusing to offer TLS 1.1 at all) or the connection ending.
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        pytest.raises((ssl.SSLError, ConnectionError)),
    ):
        old.wrap_socket(raw, server_hostname="127.0.0.1")

    # Control: the same client allowed TLS 1.2 gets through, so the failure above
    # was about the protocol version and nothing else.
    modern = _tls11_context(tls_files, ssl.TLSVersion.TLSv1_2)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        modern.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() == "TLSv1.2"
        tls.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
        data = b""
        deadline = time.monotonic() + 5
        for _ in range(1000):
            tls.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = tls.recv(65536)
            except ssl.SSLEOFError:  # the server ends with a FIN, no close_notify
                chunk = b""
            data += chunk
            if not chunk or b"\r\n\r\n" in data:
                break
        assert data.startswith(b"HTTP/1.1 200 "), data[:100]


@pytest.mark.live
@pytest.mark.parametrize("case", ["mismatched_key", "missing_cert", "missing_key", "key_as_cert"])
def test_tls_bad_certificate_files_exit_2_with_one_line(
    case: str, tls_files: TlsFiles, tmp_path: Path,
) -> None:
    certfile, keyfile = tls_files.certfile, tls_files.keyfile
    if case == "mismatched_key":
        keyfile = tls_files.other_keyfile
    elif case == "missing_cert":
        certfile = tmp_path / "absent.crt"
    elif case == "missing_key":
        keyfile = tmp_path / "absent.key"
    else:
        certfile = tls_files.keyfile
    result = run_cli(
        "--host", "127.0.0.1", "--port", "0", "--certfile", str(certfile), "--keyfile",
        str(keyfile), env=python_env(),
    )
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "listening" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("wsnet: ") and "TLS certificate or key" in lines[0], lines
    assert "Traceback" not in result.stderr


@pytest.mark.live
def test_tls_certfile_without_keyfile_is_a_usage_error(tls_files: TlsFiles) -> None:
    result = run_cli(
        "--host", "127.0.0.1", "--port", "0", "--certfile", str(tls_files.certfile),
        env=python_env(),
    )
    assert result.returncode == 2
    assert "certfile and keyfile go together" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------
# 2. Origin allowlist
# ----------------------------------------------------------------------------

ORIGIN_CASES: list[tuple[str | None, int]] = [
    ("https://good.example", 101),
    ("http://also.example", 101),
    ("HTTPS://GOOD.EXAMPLE", 101),
    ("https://Good.Example", 101),
    ("http://ALSO.example", 101),
    (None, 101),  # not a browser: nothing to check
    ("https://evil.example", 403),
    ("null", 403),
    ("http://good.example", 403),  # another scheme is another origin
    ("https://also.example", 403),
    ("https://good.example:8443", 403),  # another port too
    ("https://good.example.evil.example", 403),
    ("https://evilgood.example", 403),
    ("https://good.example, https://evil.example", 403),
]


def test_origin_allowlist(server_factory: ServerFactory) -> None:
    server = server_factory(
        "--allowed-origin", "https://good.example", "--allowed-origin", "http://also.example",
    )
    got: dict[str | None, int] = {}
    for origin, _expected in ORIGIN_CASES:
        headers = () if origin is None else (("Origin", origin),)
        response = attempt_upgrade(server.port, "/", headers)
        got[origin] = response.status
        if response.status == 403:
            assert response.body == b"origin not allowed\n", response.body
    assert got == dict(ORIGIN_CASES)

    async def scenario() -> None:
        async with ws_connect(server.url + "?name=ann", origin="https://good.example") as ws:
            assert (await welcome(ws))["name"] == "ann"
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(server.url, origin="https://evil.example"):
                pass
        assert refused.value.response.status_code == 403

    run(scenario())


def test_without_allowlist_every_origin_is_accepted(server_factory: ServerFactory) -> None:
    server = server_factory()
    for origin in ("https://evil.example", "null", "https://good.example", "", None):
        headers = () if origin is None else (("Origin", origin),)
        assert attempt_upgrade(server.port, "/", headers).status == 101, origin


# ----------------------------------------------------------------------------
# 3. The on_upgrade authentication hook
# ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class User:
    session: str


INTERNAL_DETAIL = "db password hunter2 at /srv/private/users.db"
LOGIN_BODY = b"log in first\n"


class CookieGate(wsnet.Handler):
    """Accepts upgrades that carry ``session=`` in a cookie; the identity is a User."""

    def __init__(self) -> None:
        self.upgrades = 0
        self.issued: queue.Queue[User] = queue.Queue()
        self.opened: queue.Queue[object] = queue.Queue()

    def on_upgrade(self, request: wsnet.Request) -> Any:
        self.upgrades += 1
        if "explode" in request.query:
            raise RuntimeError(INTERNAL_DETAIL)
        session = None
        cookie = SimpleCookie()
        try:
            cookie.load(request.header("cookie") or "")
        except CookieError:
            pass
        if "session" in cookie and cookie["session"].value:
            session = cookie["session"].value
        if session is None:
            return wsnet.Response(
                401, LOGIN_BODY, headers=(("WWW-Authenticate", 'Cookie realm="chat"'),),
            )
        user = User(session)
        self.issued.put(user)
        return user

    def on_open(self, conn: wsnet.Connection) -> None:
        self.opened.put(conn.identity)

    def on_message(self, conn: wsnet.Connection, data: str | bytes) -> None:
        identity = conn.identity
        assert isinstance(identity, User)
        conn.send(f"{identity.session}:{data!s}")


def test_on_upgrade_refusal_is_sent_verbatim(inprocess_server: InProcessFactory) -> None:
    gate = CookieGate()
    server = inprocess_server(gate)
    for headers in ((), (("Cookie", "theme=dark"),), (("Cookie", "session="),)):
        refused = attempt_upgrade(server.port, "/", headers)
        assert refused.status == 401, (headers, refused)
        assert refused.body == LOGIN_BODY
        assert refused.headers["www-authenticate"] == 'Cookie realm="chat"'
        assert refused.headers["connection"] == "close"
    assert gate.upgrades == 3
    assert gate.opened.empty()

    # Protocol checks come first: a broken upgrade is answered without the hook.
    with RawClient(server.port) as client:
        request = upgrade_request(server.port, "/", version="8")
        client.send(request)
        status, _head = client.read_http_head()
    assert status == 426
    assert gate.upgrades == 3


def test_on_upgrade_identity_reaches_the_connection(inprocess_server: InProcessFactory) -> None:
    gate = CookieGate()
    server = inprocess_server(gate, flush_interval=0.01)
    with RawClient(server.port) as client:
        request = upgrade_request(
            server.port, "/", extra_headers=(("Cookie", "theme=dark; session=abc123"),),
        )
        client.send(request)
        status, _head = client.read_http_head()
        assert status == 101
        issued = gate.issued.get(timeout=5)
        seen = gate.opened.get(timeout=5)
        assert seen is issued, "conn.identity must be the very object on_upgrade returned"
        assert isinstance(seen, User) and seen.session == "abc123"

        client.send_text("hi")
        frame = client.recv_data_frame()
        assert frame.payload == b"abc123:hi"  # and it stays on the connection


def test_on_upgrade_exception_is_a_bare_500(
    inprocess_server: InProcessFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    gate = CookieGate()
    server = inprocess_server(gate)
    with caplog.at_level(logging.ERROR, logger="wsnet"):
        response = attempt_upgrade(server.port, "/?explode=1", (("Cookie", "session=abc"),))
    assert response.status == 500
    for leak in ("hunter2", "users.db", "RuntimeError", "Traceback", "File ", "on_upgrade"):
        assert leak.encode() not in response.body, response.body
    assert len(response.body) < 100, response.body
    assert gate.opened.empty()
    # The operator, not the client, gets the details.
    assert any(
        r.exc_info is not None and INTERNAL_DETAIL in str(r.exc_info[1]) for r in caplog.records
    ), caplog.records

    # The server goes on serving.
    accepted = attempt_upgrade(server.port, "/", (("Cookie", "session=after"),))
    assert accepted.status == 101
    assert isinstance(gate.opened.get(timeout=5), User)


# ----------------------------------------------------------------------------
# 4. Chat tokens
# ----------------------------------------------------------------------------


def _b64name(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).rstrip(b"=").decode()


def test_token_round_trip() -> None:
    now = time.time()
    token = make_token(SECRET, "ann", int(now) + 60)
    assert token.isascii() and token.count(".") == 2
    assert verify_token(SECRET, token, now) == "ann"
    assert token.split(".")[1] == str(int(now) + 60)


def test_token_expiry() -> None:
    now = 1_700_000_000.0
    assert verify_token(SECRET, make_token(SECRET, "ann", 1_700_000_001), now) == "ann"
    for expires_at in (1_700_000_000, 1_699_999_999, 0):
        with pytest.raises(TokenError, match="expired"):
            verify_token(SECRET, make_token(SECRET, "ann", expires_at), now)


def test_token_tampering_is_detected() -> None:
    now = time.time()
    expiry = int(now) + 3600
    token = make_token(SECRET, "ann", expiry)
    name_part, expiry_part, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    forgeries = {
        "signature": f"{name_part}.{expiry_part}.{flipped}",
        "signature truncated": f"{name_part}.{expiry_part}.{signature[:-1]}",
        "signature empty": f"{name_part}.{expiry_part}.",
        "name": f"{_b64name('bob')}.{expiry_part}.{signature}",
        "expiry extended": f"{name_part}.{expiry + 10**6}.{signature}",
        "expiry zero-padded": f"{name_part}.0{expiry_part}.{signature}",
        "name from another token": f"{_b64name('root')}.{expiry_part}."
        + make_token(SECRET, "bob", expiry).split(".")[2],
    }
    for what, forged in forgeries.items():
        with pytest.raises(TokenError, match="bad_signature"):
            verify_token(SECRET, forged, now)
            pytest.fail(f"tampered {what} accepted")
    with pytest.raises(TokenError, match="bad_signature"):
        verify_token(b"another secret", token, now)
    with pytest.raises(TokenError, match="bad_signature"):
        verify_token(SECRET[:-1], token, now)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "ann",
        "YW5u.123",
        "YW5u.123.c.sig.extra",
        "..",
        "YW5u..sig",
        "YW5u.-5.sig",
        "YW5u.12x.sig",
        "YW5u. 12.sig",
        "YW5u.1.2.3.sig",
        "YW5u." + "9" * 5000 + ".sig",
    ],
)
def test_token_malformed(token: str) -> None:
    with pytest.raises(TokenError, match="malformed"):
        verify_token(SECRET, token, time.time())


def test_token_non_ascii_names() -> None:
    now = time.time()
    for name in ("Zoë", "日本語", "Ωmega-🎉", "a.b|c=d"):
        token = make_token(SECRET, name, int(now) + 60)
        assert token.isascii(), token
        assert verify_token(SECRET, token, now) == name


@settings(max_examples=100, deadline=None)
@given(
    name=st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
    secret=st.binary(min_size=1, max_size=64),
)
def test_token_round_trip_property(name: str, secret: bytes) -> None:
    token = make_token(secret, name, 2_000_000_000)
    assert verify_token(secret, token, 1_900_000_000.0) == name
    with pytest.raises(TokenError, match="expired"):
        verify_token(secret, token, 2_000_000_000.0)


def test_token_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="secret"):
        make_token(b"", "ann", int(time.time()) + 60)
    assert issubclass(TokenError, ValueError)


def test_token_non_ascii_parts_are_a_token_error() -> None:
    # Regression: a non-ASCII signature reached hmac.compare_digest, which raises
    # TypeError for non-ASCII str, instead of being refused as a TokenError.
    expiry = int(time.time()) + 3600
    name_part = _b64name("ann")
    for token in (
        f"{name_part}.{expiry}.\u00e9",
        f"{name_part}.{expiry}." + "\u00e9" * 43,
        f"\u00e9.{expiry}.sig",
        f"{name_part}.\u00b2.sig",  # str.isdigit() is true for superscript two
        f"{name_part}.\u0661\u0662.sig",  # Arabic-Indic digits
    ):
        with pytest.raises(TokenError):
            verify_token(SECRET, token, time.time())


@pytest.fixture
def token_server(
    server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch,
) -> ServerProcess:
    """The chat server with the token secret in its environment."""
    monkeypatch.setenv(SECRET_ENV, SECRET.decode())
    return server_factory()


def test_token_pins_the_chat_name(token_server: ServerProcess) -> None:
    url = token_server.url
    ann_token = make_token(SECRET, "ann", int(time.time()) + 300)
    bob_token = make_token(SECRET, "bob", int(time.time()) + 300)

    async def scenario() -> None:
        async with (
            ws_connect(f"{url}?name=mallory&token={ann_token}") as ann,
            ws_connect(f"{url}?token={bob_token}&name=ann") as bob,
        ):
            assert (await welcome(ann))["name"] == "ann"
            assert (await welcome(bob))["name"] == "bob"
            await ann.send("it is me")
            await bob.send(json.dumps({"type": "message", "text": "me too"}))
            seen: dict[str, list[tuple[str, str]]] = {"ann": [], "bob": []}
            for who, ws in (("ann", ann), ("bob", bob)):
                deadline = time.monotonic() + 5
                for _ in range(10):
                    if len(seen[who]) >= 2:
                        break
                    events = await recv_json(ws, max(0.01, deadline - time.monotonic()))
                    seen[who] += [
                        (str(e["from"]), str(e["text"])) for e in events if e["type"] == "message"
                    ]
            for who in ("ann", "bob"):
                assert sorted(seen[who]) == [("ann", "it is me"), ("bob", "me too")], seen

    run(scenario())


def test_token_refusals(token_server: ServerProcess) -> None:
    port = token_server.port
    now = int(time.time())
    good = make_token(SECRET, "ann", now + 300)
    name_part, expiry_part, signature = good.split(".")
    cases = {
        "/": "a token is required",
        "/?name=ann": "a token is required",
        f"/?token={make_token(SECRET, 'ann', now - 5)}": "token refused: expired",
        f"/?token={name_part}.{expiry_part}.{signature[::-1]}": "token refused: bad_signature",
        f"/?token={_b64name('bob')}.{expiry_part}.{signature}": "token refused: bad_signature",
        f"/?token={make_token(b'wrong', 'ann', now + 300)}": "token refused: bad_signature",
        "/?token=garbage": "token refused: malformed",
        f"/?token={quote(make_token(SECRET, 'not a name!', now + 300))}":
            "token refused: malformed",
    }
    for path, body in cases.items():
        response = attempt_upgrade(port, path)
        assert response.status == 403, (path, response)
        assert response.body == (body + "\n").encode(), (path, response.body)
    assert attempt_upgrade(port, f"/?token={good}").status == 101
    # Names of any script, with single inner spaces, are names.
    unicode_name = make_token(SECRET, "Zoë M", now + 300)
    assert attempt_upgrade(port, f"/?token={quote(unicode_name)}").status == 101
    assert token_server.alive()


def test_token_with_non_ascii_signature_gets_403(token_server: ServerProcess) -> None:
    # Regression: this was a 500 (TypeError escaping ChatApp.on_upgrade).
    expiry = int(time.time()) + 300
    response = attempt_upgrade(token_server.port, f"/?token={_b64name('ann')}.{expiry}.%C3%A9")
    assert response.status == 403, response
    assert response.body.startswith(b"token refused"), response.body


def test_mint_token_cli(
    server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = env_without_secret()
    env[SECRET_ENV] = SECRET.decode()
    before = int(time.time())
    result = run_cli("--mint-token", "ann", "--token-ttl", "60", env=env)
    after = int(time.time())
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout.count("\n") == 1 and re.fullmatch(r"[\w-]+\.\d+\.[\w-]+", token), token
    assert verify_token(SECRET, token, time.time()) == "ann"
    assert before + 60 <= int(token.split(".")[1]) <= after + 60

    monkeypatch.setenv(SECRET_ENV, SECRET.decode())
    server = server_factory()

    async def scenario() -> None:
        async with ws_connect(f"{server.url}?token={token}&name=other") as ws:
            assert (await welcome(ws))["name"] == "ann"

    run(scenario())


@pytest.mark.live
def test_mint_token_without_secret_fails() -> None:
    result = run_cli("--mint-token", "ann", env=env_without_secret())
    assert result.returncode == 2
    assert result.stdout == ""
    assert "--mint-token needs" in result.stderr


def test_auth_secret_file(server_factory: ServerFactory, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"  file secret\n")
    minted = run_cli(
        "--auth-secret-file", str(secret_file), "--mint-token", "cat", env=env_without_secret(),
    )
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    # One trailing newline is dropped; every other byte (spaces too) is the secret.
    assert verify_token(b"  file secret", token, time.time()) == "cat"
    with pytest.raises(TokenError):
        verify_token(b"file secret", token, time.time())

    server = server_factory("--auth-secret-file", str(secret_file))
    assert attempt_upgrade(server.port, "/?name=cat").status == 403
    assert attempt_upgrade(server.port, f"/?token={token}").status == 101

    missing = run_cli(
        "--auth-secret-file", str(tmp_path / "absent"), "--port", "0", env=env_without_secret(),
    )
    assert missing.returncode == 2 and "cannot read" in missing.stderr


@pytest.mark.live
def test_empty_auth_secret_file_does_not_fail_open(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"\n")
    proc = launch(
        ["--host", "127.0.0.1", "--port", "0", "--auth-secret-file", str(secret_file)],
        tmp_path / "empty-secret.stderr",
    )
    server = ServerProcess(proc, 0, tmp_path / "empty-secret.stderr", "")
    try:
        try:
            line = read_line(proc, time.monotonic() + STARTUP_DEADLINE)
        except AssertionError:
            if proc.poll() is None:
                raise
            # Refusing to start is the fail-closed outcome.
            assert proc.wait(5) == 2
            return
        port = int(line.rsplit(":", 1)[1].rstrip("/"))
        response = attempt_upgrade(port, "/?name=anyone")
        assert response.status == 403, "a client without a token was let in"
    finally:
        server.terminate_and_wait()


# ----------------------------------------------------------------------------
# 5. Logs and error responses
# ----------------------------------------------------------------------------

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORGED = "2030-01-01 00:00:00,000 ERROR wsnet: admin logged in"


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = sys.exc_info() if exc else None
    return logging.LogRecord("wsnet", logging.INFO, __file__, 1, msg, args, exc_info)


def test_safe_formatter_escapes_control_characters_in_messages() -> None:
    formatter = SafeFormatter(FORMAT)
    text = formatter.format(_record("peer said %s", f"hi\r\n{FORGED}\x1b[2J\x00\x7f\tend"))
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    assert "\x00" not in text and "\x7f" not in text
    assert "hi\\x0d\\x0a" + FORGED + "\\x1b[2J\\x00\\x7f\tend" in text
    # A plain message is left alone.
    assert formatter.format(_record("all is well")).endswith("INFO wsnet: all is well")


def test_safe_formatter_marks_every_traceback_line() -> None:
    formatter = SafeFormatter(FORMAT)
    try:
        raise ValueError(f"bad input\n{FORGED}\r\x1b[31m")
    except ValueError:
        record = _record("application error in %s", "on_message", exc=True)
    text = formatter.format(record)
    first, *rest = text.split("\n")
    assert first.endswith("INFO wsnet: application error in on_message")
    assert len(rest) >= 3, text
    assert rest[0] == "  | Traceback (most recent call last):"
    for line in rest:
        assert line.startswith("  | "), line
        assert "\r" not in line and "\x1b" not in line
    assert not any(line.startswith(FORGED) for line in text.split("\n"))
    assert f"  | {FORGED}\\x0d\\x1b[31m" in rest
    assert rest[-2].startswith("  | ValueError: bad input")

    stacked = logging.LogRecord("wsnet", logging.INFO, __file__, 1, "here", (), None)
    stacked.stack_info = f"Stack (most recent call last):\n{FORGED}"
    lines = formatter.format(stacked).split("\n")
    assert lines[1:] == ["  | Stack (most recent call last):", f"  | {FORGED}"]


class FailingApp(wsnet.Handler):
    """Raises with peer-chosen text in the exception message."""

    def on_http(self, request: wsnet.Request) -> wsnet.Response | None:
        if request.path.startswith("/boom"):
            raise ValueError(f"no route for {unquote(request.target)} (token hunter2)")
        return None

    def on_message(self, conn: wsnet.Connection, data: str | bytes) -> None:
        raise KeyError(f"lookup of {data!s} failed (token hunter2)")


@pytest.fixture
def safe_log() -> Iterator[io.StringIO]:
    """The wsnet logger's errors, through SafeFormatter, into a string."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter(FORMAT))
    handler.setLevel(logging.ERROR)
    logger = logging.getLogger("wsnet")
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def test_error_responses_and_logs_carry_no_internals(
    inprocess_server: InProcessFactory, safe_log: io.StringIO,
) -> None:
    server = inprocess_server(FailingApp(), flush_interval=0.01)
    target = "/boom?x=" + quote(f"\r\n{FORGED}\x1b[2J")
    response = plain_get(server.port, target)
    assert response.status == 500
    assert int(response.headers["content-length"]) == len(response.body)
    for leak in ("hunter2", "no route", "ValueError", "Traceback", "admin", "FailingApp"):
        assert leak.encode() not in response.body, response.body

    # The record reached the log (it was written before the response), and the
    # peer's newline could not start a record of its own there.
    log_lines = safe_log.getvalue().splitlines()
    assert any("application error in on_http" in line for line in log_lines), log_lines
    assert any("hunter2" in line for line in log_lines), log_lines
    assert not any(line.startswith(FORGED) for line in log_lines), log_lines
    assert all("\x1b" not in line for line in log_lines)

    # An exception in on_message: close 1011 with a generic reason.
    with RawClient(server.port) as client:
        client.handshake()
        client.send_text("secret-question")
        frame = client.recv_close()
    assert frame.opcode == OP_CLOSE and frame.close_code == 1011
    reason = frame.payload[2:].decode()
    assert "hunter2" not in reason and "secret-question" not in reason and "KeyError" not in reason

    # Still serving.
    assert plain_get(server.port, "/healthz").status == 200
