"""The shape ARCHITECTURE.md describes, held by tests: sans-I/O modules import
no I/O, one module does socket I/O, the application handle is a façade, the
chat is written with the public API only, and the lifecycle table is closed."""

from __future__ import annotations

import ast
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import wsnet
from wsnet._channel import Channel
from wsnet._lifecycle import TRANSITIONS, Phase
from wsnet._reactor import Reactor, handoff_pairs

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "wsnet"

#: Modules ARCHITECTURE.md calls sans-I/O: decisions, framing, the chat's state.
SANS_IO = [
    "wsnet._clock",
    "wsnet._deflate",
    "wsnet._frames",
    "wsnet._http",
    "wsnet._limits",
    "wsnet._outbox",
    "wsnet._session",
    "wsnet._upgrade",
    "wsnet.config",
    "wsnet.metrics",
    "wsnet.tokens",
    "wsnet.chat.protocol",
    "wsnet.chat.backplane",
    "wsnet.chat.rooms",
    "wsnet.chat.batch",
    "wsnet.chat.history",
    "wsnet.chat.loading",
    "wsnet.chat.presence",
    "wsnet.chat.settings",
    "wsnet.chat.state",
    "wsnet.chat.table",
    "wsnet.chat.store",
    "wsnet.chat.redis",
    "wsnet.chat.redis.link",
]

#: What a sans-I/O import must not load (the reactor, the server, their I/O).
IO_MODULES = {
    "socket", "selectors", "ssl", "sqlite3", "wsnet.chat.sqlite",
    "wsnet._reactor", "wsnet._lifecycle", "wsnet.server", "wsnet.workers", "wsnet.chat.app",
}


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.live
def test_sans_io_modules_import_no_io() -> None:
    code = (
        "import json, sys\n"
        f"names = {SANS_IO!r}\n"
        "out = {}\n"
        "for name in names:\n"
        "    before = set(sys.modules)\n"
        "    __import__(name)\n"
        "    out[name] = sorted(set(sys.modules) - before)\n"
        "print(json.dumps(out))\n"
    )
    # One fresh interpreter per module, so one module's imports cannot hide another's.
    for name in SANS_IO:
        result = subprocess.run(
            [sys.executable, "-c", code.replace(f"names = {SANS_IO!r}", f"names = [{name!r}]")],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
        )
        loaded = set(json.loads(result.stdout)[name])
        assert name in loaded
        assert loaded & IO_MODULES == set(), name
        if not name.startswith("wsnet.chat.redis"):  # Redis code may load its parser
            assert "hiredis" not in loaded, name


def _runtime_imports(tree: ast.Module) -> set[str]:
    """Top-level module names imported outside ``if TYPE_CHECKING:``."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    visit([c for c in children if isinstance(c, ast.stmt)])
                    for handler in children:
                        if isinstance(handler, ast.ExceptHandler):
                            visit(handler.body)

    visit(tree.body)
    return found


def test_only_the_reactor_imports_socket() -> None:
    importers = {
        _module_name(path)
        for path in _sources()
        if "socket" in _runtime_imports(ast.parse(path.read_text()))
    }
    # The Python client (wsnet.client) is another program on its own blocking
    # socket; its I/O is in that one module, and the server never imports it.
    assert importers == {"wsnet._reactor", "wsnet.client"}


def test_the_server_never_imports_the_client() -> None:
    importers = set()
    for path in _sources():
        if _module_name(path).startswith("wsnet.client"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "wsnet.client" or n.startswith("wsnet.client.") for n in names):
                importers.add(_module_name(path))
    assert importers == set()


def test_ssl_is_used_only_where_a_context_is_built_or_wrapped() -> None:
    importers = {
        _module_name(path)
        for path in _sources()
        if "ssl" in _runtime_imports(ast.parse(path.read_text()))
    }
    # _channel: isinstance(sock, SSLSocket); server: tls_context(); cli: catches SSLError;
    # client: wss:// for the Python client.
    assert importers == {"wsnet._reactor", "wsnet._channel", "wsnet.server", "wsnet.cli",
                         "wsnet.client"}


#: Socket calls, by method name; on anything named like a socket they are I/O.
SOCKET_CALLS = {
    "send", "recv", "recv_into", "sendmsg", "sendall", "accept", "connect", "connect_ex",
    "bind", "listen", "setsockopt", "getsockopt", "shutdown", "do_handshake", "setblocking",
    "send_fds", "recv_fds", "wrap_socket",
}


def _socket_calls(tree: ast.Module) -> list[str]:
    calls = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        receiver = ast.unparse(node.func.value)
        last = receiver.rsplit(".", 1)[-1]
        if node.func.attr in SOCKET_CALLS and ("sock" in last or last in {"listener", "ssl"}):
            calls.append(f"{node.lineno}: {ast.unparse(node.func)}")
    return calls


def test_socket_calls_live_in_the_reactor_only() -> None:
    reactor_calls = _socket_calls(ast.parse((PACKAGE / "_reactor.py").read_text()))
    assert any("sendmsg" in call for call in reactor_calls)  # the scan does see them
    elsewhere = {
        _module_name(path): calls
        for path in _sources()
        if path.name != "_reactor.py" and (calls := _socket_calls(ast.parse(path.read_text())))
    }
    assert set(elsewhere) <= {"wsnet.client"}  # the client's own socket (see above)


def test_connection_is_a_facade_not_the_io_record() -> None:
    assert not issubclass(wsnet.Connection, Channel)
    public = {
        name for name in dir(wsnet.Connection) if not name.startswith("_")
    }
    assert public == {"id", "peer", "request", "context", "identity", "is_open", "deflate",
                      "send", "close"}
    assert "__dict__" not in dir(wsnet.Connection)  # slots: nothing can be hung on it by mistake


def test_the_chat_uses_only_the_public_api() -> None:
    private: dict[str, list[str]] = {}
    for path in sorted((PACKAGE / "chat").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            bad = [n for n in names if n.startswith("wsnet.") and any(
                part.startswith("_") for part in n.split(".")[1:])]
            if bad:
                private.setdefault(_module_name(path), []).extend(bad)
    assert private == {}


def test_tests_share_code_through_support_only() -> None:
    offenders = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in {"conftest", "helpers"}:
                offenders.append(path.name)
            if isinstance(node, ast.Import) and any(
                a.name in {"conftest", "helpers"} for a in node.names
            ):
                offenders.append(path.name)
    assert offenders == []
    assert not (REPO / "tests" / "helpers.py").exists()


def test_every_phase_has_its_moves_and_none_leaves_done() -> None:
    assert set(TRANSITIONS) == set(Phase)
    reachable = {Phase.HTTP}
    frontier = [Phase.HTTP]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(Phase)
    assert TRANSITIONS[Phase.DONE] == {Phase.DONE}
    assert Phase.HTTP not in set().union(*TRANSITIONS.values())  # nothing goes back


class Recorder:
    def __init__(self) -> None:
        self.lost: list[OSError | None] = []

    def connection_made(self, sock: socket.socket, peer: tuple[str, int]) -> Channel | None:
        raise AssertionError("no listener here")

    def connection_handed(
        self, sock: socket.socket, peer: tuple[str, int], data: bytes,
    ) -> Channel | None:
        raise AssertionError("no hand-offs here")

    def tick(self) -> None: ...
    def data_received(self, ch: Channel, data: bytes) -> None: ...
    def eof_received(self, ch: Channel) -> None: ...

    def connection_lost(self, ch: Channel, exc: OSError | None) -> None:
        self.lost.append(exc)


@pytest.mark.live
def test_a_write_error_is_reported_on_the_next_turn_not_inside_write_now() -> None:
    recorder = Recorder()
    reactor = Reactor(recorder, flush_interval=0.05, high_water=1 << 20)
    ours, theirs = socket.socketpair()
    theirs.close()  # every send now fails with EPIPE
    try:
        ours.setblocking(False)
        ch = Channel(ours, recorder)
        ch.outbox.append(b"x" * 100)
        reactor.write_now(ch)
        assert ch.dead  # the socket is closed at once ...
        assert recorder.lost == []  # ... but the protocol is not re-entered
        reactor.timers.run_due(reactor.clock() + 1, on_error=lambda exc: pytest.fail(repr(exc)))
        assert len(recorder.lost) == 1
        assert isinstance(recorder.lost[0], OSError)
    finally:
        ours.close()
        reactor.close_all()


@pytest.mark.live
def test_the_same_error_outside_a_protocol_write_is_reported_at_once() -> None:
    recorder = Recorder()
    reactor = Reactor(recorder, flush_interval=0.05, high_water=1 << 20)
    ours, theirs = socket.socketpair()
    theirs.close()
    try:
        ours.setblocking(False)
        ch = Channel(ours, recorder)
        ch.outbox.append(b"x" * 100)
        reactor.mark_dirty(ch)
        reactor.flush()  # the tick's flush is the reactor's own call
        assert len(recorder.lost) == 1
    finally:
        ours.close()
        reactor.close_all()


@pytest.mark.live
@pytest.mark.skipif(sys.platform != "linux", reason="SIOCOUTQ is Linux's")
def test_unacknowledged_is_what_a_peer_that_stopped_reading_left_queued() -> None:
    recorder = Recorder()
    reactor = Reactor(recorder, flush_interval=0.05, high_water=1 << 20)
    listener = socket.create_server(("127.0.0.1", 0))
    theirs = socket.create_connection(listener.getsockname()[:2])
    ours, _ = listener.accept()
    listener.close()
    try:
        ch = Channel(ours, recorder)
        ours.sendall(b"x" * 1000)  # never read, but the peer's kernel acknowledges it
        deadline = time.monotonic() + 5
        while reactor.unacknowledged(ch) != 0:
            assert time.monotonic() < deadline, reactor.unacknowledged(ch)
            time.sleep(0.01)
        ours.setblocking(False)
        for _ in range(10_000):  # until its receive window and our buffer are full
            try:
                ours.send(b"x" * 65536)
            except BlockingIOError:
                break
        queued = reactor.unacknowledged(ch)
        assert queued is not None and queued > 0
        ch.dead = True
        assert reactor.unacknowledged(ch) is None
    finally:
        theirs.close()
        ours.close()
        reactor.close_all()


@pytest.mark.live
def test_queued_bytes_counts_what_waits_for_the_flush_or_for_the_peer() -> None:
    recorder = Recorder()
    reactor = Reactor(recorder, flush_interval=0.05, high_water=64 << 20)
    listener = socket.create_server(("127.0.0.1", 0))
    theirs = socket.create_connection(listener.getsockname()[:2])
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ours, _ = listener.accept()
    listener.close()
    try:
        ours.setblocking(False)
        ch = Channel(ours, recorder)
        frame = b"x" * 65536
        for _ in range(200):  # 12.5 MiB: more than the kernel takes from one write
            ch.outbox.append(frame)
        reactor.mark_dirty(ch)
        assert reactor.queued_bytes() == 200 * 65536  # waiting for the flush
        reactor.flush()  # the peer reads nothing: the kernel takes part of it
        assert ch.blocked
        assert 0 < reactor.queued_bytes() == ch.outbox.nbytes < 200 * 65536
        reactor.close(ch)  # dropped with the connection, whatever it held
        assert reactor.queued_bytes() == 0
    finally:
        theirs.close()
        ours.close()
        reactor.close_all()


@pytest.mark.live
def test_a_hand_off_to_a_worker_whose_queue_is_full_fails_at_once() -> None:
    """Workers hand connections to each other; one blocked sending to another
    that is itself sending would stop the node, so a full queue means "serve it
    here" (False), never a wait."""
    recorder = Recorder()
    reactor = Reactor(recorder, flush_interval=0.05, high_water=1 << 20)
    pairs = handoff_pairs(2)
    reactor.take_handoffs(os.dup(pairs[0][0].fileno()), [os.dup(out.fileno()) for _, out in pairs])
    listener = socket.create_server(("127.0.0.1", 0))
    theirs = socket.create_connection(listener.getsockname()[:2])
    ours, _ = listener.accept()
    listener.close()
    request = b"GET /?room=r2 HTTP/1.1\r\nHost: x\r\n\r\n"
    results: list[bool] = []

    def hand_over() -> None:  # to slot 2, whose inbox nobody reads
        for _ in range(10_000):
            ch = Channel(socket.socket(fileno=os.dup(ours.fileno())), recorder)
            results.append(reactor.hand_off(ch, 2, request))
            if not results[-1]:
                ch.sock.close()
                return

    try:
        sender = threading.Thread(target=hand_over, daemon=True)
        sender.start()
        sender.join(10)
        assert not sender.is_alive(), f"hand_off blocked after {len(results)} hand-offs"
        assert results[-1] is False and len(results) > 1 and all(results[:-1])
        # What did go is whole: the request, and a descriptor of the same connection.
        data, fds, _, _ = socket.recv_fds(pairs[1][0], 65536, 1)
        assert data == request and len(fds) == 1
        with socket.socket(fileno=fds[0]) as handed:
            assert handed.getpeername() == theirs.getsockname()
    finally:
        theirs.close()
        ours.close()
        reactor.close_all()
        for pair in pairs:
            for sock in pair:
                sock.close()


def _readme_module_table() -> set[str]:
    """The first-column names of README's module table ("How it works")."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## How it works"):text.index("## Defences")]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def test_the_readme_module_table_names_every_module_and_only_real_ones() -> None:
    named = _readme_module_table()
    for name in named:
        assert (PACKAGE / name).exists(), f"README names {name}, which does not exist"
    covered = {name for name in named if name.endswith("/")}
    missing = [
        str(path.relative_to(PACKAGE)) for path in _sources()
        if path.name not in {"__init__.py", "__main__.py"}
        and str(path.relative_to(PACKAGE)) not in named
        and not any(str(path.relative_to(PACKAGE)).startswith(d) for d in covered)
    ]
    assert missing == [], f"modules missing from README's table: {missing}"
