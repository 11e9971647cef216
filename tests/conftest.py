"""Fixtures, and the ``live`` marker. The code behind the fixtures lives in
``tests/support/`` (test files import it from there, never from this file).

``live`` marks every test that starts a server, a subprocess or a browser, or
opens a network socket: ``pytest -m "not live"`` runs the pure tests alone, in
seconds. A test is live if it uses one of ``LIVE_FIXTURES`` or says so
(``pytestmark = pytest.mark.live`` for a whole module). A test that is not live
yet binds or connects a socket, or starts a process, fails and says to mark it.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.procs import RedisServer, start_redis
from support.rawclient import RawClient, RawClientFactory
from support.servers import (
    InProcessFactory,
    ServerFactory,
    ServerProcess,
    ThreadedServer,
    serve_in_thread,
    start_server,
)

import wsnet

#: Fixtures that make a test live (pytest also counts the ones they use).
LIVE_FIXTURES = frozenset({
    "server_factory", "chat_server", "echo_server", "inprocess_server", "raw_client",
    "redis_server",
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if LIVE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.live)


class NotMarkedLive(AssertionError):
    """A test that is not marked live used the network or started a process."""


@contextlib.contextmanager
def _offline(nodeid: str) -> Iterator[None]:
    """Network sockets and processes refused, for the duration (a socketpair, as
    an event loop makes for itself, stays allowed)."""

    def refuse(what: str) -> Any:
        def refused(*_args: object, **_kwargs: object) -> Any:
            raise NotMarkedLive(f"{nodeid} {what} but is not marked live: add "
                                "@pytest.mark.live (or use a live fixture)")
        return refused

    patches = [
        (socket.socket, "bind", refuse("binds a socket")),
        (socket.socket, "connect", refuse("connects a socket")),
        (socket.socket, "connect_ex", refuse("connects a socket")),
        (subprocess.Popen, "__init__", refuse("starts a process")),
    ]
    saved = [(owner, name, owner.__dict__.get(name)) for owner, name, _ in patches]
    for owner, name, replacement in patches:
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for owner, name, original in saved:
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    if item.get_closest_marker("live") is not None:
        yield
        return
    with _offline(item.nodeid):
        yield


# ----------------------------------------------------------------------------
# Servers
# ----------------------------------------------------------------------------


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    """``server_factory(*cli_args)`` starts ``python -m wsnet``; all are stopped
    at teardown."""
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


@pytest.fixture
def inprocess_server() -> Iterator[InProcessFactory]:
    """``inprocess_server(handler, **config_fields)``: a ``wsnet.Server`` serving on a
    daemon thread; stopped (and joined, bounded) at teardown."""
    running: list[ThreadedServer] = []

    def factory(handler: wsnet.Handler, **fields: object) -> ThreadedServer:
        entry = serve_in_thread(handler, **fields)
        running.append(entry)
        return entry

    yield factory
    for entry in running:
        entry.stop()


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


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh ``redis-server`` for this test (``.url``, ``.port``, ``.stop()``,
    ``.start()``, ``.kill()``); stopped at teardown. Missing redis-server fails the
    test: ``make unit`` installs it."""
    workdir = tmp_path / "redis"
    workdir.mkdir()
    try:
        server = start_redis(workdir)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()
