"""Zero-downtime restarts with ``--workers``: SIGHUP replaces the workers one at
a time, and neither that nor a crashed worker refuses or resets a single
connection (one accept queue, the supervisor's), while a chat goes on and
resumes with nothing lost. A single process ignores SIGHUP, and says why."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from functools import partial

import pytest
from support.procs import RedisServer
from support.servers import ServerFactory, ServerProcess
from support.waiting import wait_for
from test_workers import children, start_workers, worker_pids

from wsnet.client import ChatClient, Event

pytestmark = pytest.mark.live


@dataclass
class ConnectLoop:
    """A client that connects, asks ``/metrics`` and hangs up, over and over
    (bounded: ``limit`` tries), counting what did not get a 200."""

    port: int
    limit: int = 5000
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        for _ in range(self.limit):
            if self._stop.is_set():
                return
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                    sock.sendall(request)
                    answer = sock.recv(64)
                if answer.startswith(b"HTTP/1.1 200 "):
                    self.ok += 1
                else:
                    self.failures.append(repr(answer[:40]))
            except OSError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)


def chat_across(server: ServerProcess, during: object, count: int = 20) -> list[str]:
    """``ann`` sends ``count`` messages while ``during()`` runs between them;
    returns what ``bob`` received, in order."""
    url = server.url
    ann = ChatClient(url, name="ann", room="dev", backoff_base=0.1, backoff_cap=0.5)
    bob = ChatClient(url, name="bob", room="dev", backoff_base=0.1, backoff_cap=0.5)
    got: list[Event] = []
    deadline = time.monotonic() + 60

    def pump(until: object) -> None:
        while not (callable(until) and until()):
            assert time.monotonic() < deadline, "the chat did not finish"
            for client in (ann, bob):
                event = client.next_event(0.02)
                if event is not None and client is bob and event["type"] == "message":
                    got.append(event)

    pump(lambda: ann.session.rooms["dev"].joined and bob.session.rooms["dev"].joined)
    for i in range(count):
        ann.send(f"m{i:02}")
        if i == count // 4 and callable(during):
            during()
        pump(lambda: True)
    pump(lambda: len(got) >= count and not ann.unacknowledged)
    ann.close()
    bob.close()
    return [e["text"] for e in got]


def test_sighup_replaces_every_worker_and_refuses_nobody(
    server_factory: ServerFactory, redis_server: RedisServer,
) -> None:
    server = start_workers(server_factory, redis_server)
    before = worker_pids(server)
    loop = ConnectLoop(server.port)
    loop.start()

    def roll() -> None:
        os.kill(server.pid, signal.SIGHUP)

    texts = chat_across(server, roll)
    wait_for("the rolling restart to finish",
             lambda: "rolling restart done" in server.stderr_text() or None, timeout=60)
    after = wait_for("two new workers",
                     lambda: (p if len(p := children(server.pid)) == 2 and not p & before
                              else None), timeout=30)
    loop.stop()
    assert loop.failures == [], loop.failures[:5]
    assert loop.ok > 20  # it kept connecting throughout
    assert texts == [f"m{i:02}" for i in range(20)]  # once each, in order
    def retired(pid: int) -> bool:
        log = server.stderr_text()
        return f"(pid {pid}) draining" in log and f"(pid {pid}) retired" in log

    for pid in before:  # reaped and logged by the supervisor in its own time
        wait_for(f"worker {pid} retired", partial(retired, pid))
    assert after and server.alive()


def test_connections_queued_for_a_worker_that_crashes_are_not_lost(
    server_factory: ServerFactory, redis_server: RedisServer,
) -> None:
    """With both workers frozen, clients wait in the accept queue; one worker
    is killed. Every client must still be answered (a closing SO_REUSEPORT
    listener would reset what its own queue held)."""
    server = start_workers(server_factory, redis_server)
    victim, survivor = sorted(worker_pids(server))
    for pid in (victim, survivor):
        os.kill(pid, signal.SIGSTOP)
    clients = []
    try:
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            clients.append(sock)
        os.kill(victim, signal.SIGKILL)
        wait_for("the killed worker to go", lambda: victim not in children(server.pid) or None)
    finally:
        os.kill(survivor, signal.SIGCONT)
    answers = []
    for sock in clients:
        with sock:
            answers.append(sock.recv(64)[:12])
    assert answers == [b"HTTP/1.1 200"] * 20


def test_one_process_ignores_sighup_and_says_so(server_factory: ServerFactory) -> None:
    server = server_factory()
    os.kill(server.pid, signal.SIGHUP)
    wait_for("the warning", lambda: "SIGHUP ignored" in server.stderr_text() or None)
    assert server.alive()
    texts = chat_across(server, None, count=3)
    assert texts == ["m00", "m01", "m02"]
