"""``--workers N``: N reactor processes on one port under a supervisor, live.

Which worker holds a connection is read from /proc: a worker's socket inodes
(/proc/PID/fd) against the ESTABLISHED rows of /proc/net/tcp whose peer is the
client's own port. Every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TypeVar

import pytest
from support.procs import REPO, RedisServer, python_env, redis_ping
from support.rawclient import RawClient, RawClientFactory, http_get
from support.servers import ServerFactory, ServerProcess
from support.waiting import wait_for
from support.wire import OP_TEXT

from wsnet.workers import NEEDS_REDIS

pytestmark = pytest.mark.live

T = TypeVar("T")

DEADLINE = 10.0
TCP_ESTABLISHED = "01"
TCP_LISTEN = "0A"


# ----------------------------------------------------------------------------
# /proc helpers
# ----------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)", which may hold spaces
    return fields[0], int(fields[1])


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def children(pid: int) -> set[int]:
    """Live child processes of ``pid``."""
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] == pid and stat[0] != "Z":
                found.add(int(entry))
    return found


def socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def established(server_port: int) -> dict[int, int]:
    """Client port -> socket inode, for server-side ESTABLISHED sockets on the port."""
    rows: dict[int, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
        if state == TCP_ESTABLISHED and int(local.split(":")[1], 16) == server_port:
            rows[int(remote.split(":")[1], 16)] = inode
    return rows


def listening(server_port: int) -> bool:
    """Is any socket listening on 127.0.0.1:server_port?"""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == TCP_LISTEN and int(fields[1].split(":")[1], 16) == server_port:
            return True
    return False


def owners(server_port: int, clients: list[RawClient], workers: set[int]) -> dict[int, int]:
    """Client port -> pid of the worker holding its server side (known ones only)."""
    by_inode = {inode: pid for pid in workers for inode in socket_inodes(pid)}
    rows = established(server_port)
    found: dict[int, int] = {}
    for client in clients:
        port = client.sock.getsockname()[1]
        pid = by_inode.get(rows.get(port, -1))
        if pid is not None:
            found[port] = pid
    return found


def worker_pids(server: ServerProcess, count: int = 2) -> set[int]:
    return wait_for(
        f"{count} workers", lambda: (pids if len(pids := children(server.pid)) == count else None),
    )


def start_workers(
    server_factory: ServerFactory, redis: RedisServer, *extra: str,
) -> ServerProcess:
    return server_factory("--workers", "2", "--redis", redis.url, *extra)


def open_clients(raw_client: RawClientFactory, port: int, count: int) -> list[RawClient]:
    """``count`` chat WebSockets, each past its welcome frame."""
    clients = []
    for _ in range(count):
        client: RawClient = raw_client(port)
        client.handshake()
        assert client.recv_data_frame().opcode == OP_TEXT  # the welcome
        clients.append(client)
    return clients


def owner_map(
    server: ServerProcess, clients: list[RawClient], workers: set[int],
) -> dict[int, int]:
    """Client port -> worker pid, once every client's owner is known."""
    return wait_for(
        "every connection to show up in a worker",
        lambda: (o if len(o := owners(server.port, clients, workers)) == len(clients) else None),
    )


def spread(
    server: ServerProcess, clients: list[RawClient], workers: set[int],
) -> Counter[int]:
    """Connections per worker pid."""
    return Counter(owner_map(server, clients, workers).values())


# ----------------------------------------------------------------------------
# The tests
# ----------------------------------------------------------------------------


def test_connections_land_on_both_workers(
    server_factory: ServerFactory, raw_client: RawClientFactory, redis_server: RedisServer,
) -> None:
    server = start_workers(server_factory, redis_server, "--no-affinity")
    assert server.listening_line == f"wsnet chat listening on ws://127.0.0.1:{server.port}/"
    workers = worker_pids(server)
    clients = open_clients(raw_client, server.port, 32)
    counts = spread(server, clients, workers)
    # Without affinity (every client here is in the lobby) the workers share the
    # accept queue: 32 on one of two would mean one never accepted.
    assert set(counts) == workers, counts
    log = server.stderr_text()
    for pid in workers:
        assert f"started (pid {pid})" in log, log


def test_a_room_spans_workers(
    server_factory: ServerFactory, raw_client: RawClientFactory, redis_server: RedisServer,
) -> None:
    server = start_workers(server_factory, redis_server, "--no-affinity")
    workers = worker_pids(server)
    # All in the default room. The kernel spreads them by a hash, over the
    # workers listening by then: more, in rounds, until both hold one (bounded).
    clients = open_clients(raw_client, server.port, 16)
    where = owner_map(server, clients, workers)
    while set(where.values()) != workers and len(clients) < 64:
        clients += open_clients(raw_client, server.port, 8)
        where = owner_map(server, clients, workers)
    by_worker = {pid: [c for c in clients if where[c.sock.getsockname()[1]] == pid]
                 for pid in workers}
    assert all(by_worker.values()), where
    sender, receiver = (by_worker[pid][0] for pid in sorted(workers))
    sender.send_text("hello from the other worker")
    end = time.monotonic() + DEADLINE
    while True:
        frame = receiver.recv_data_frame(timeout=max(0.0, end - time.monotonic()))
        assert frame.opcode == OP_TEXT, frame
        events = json.loads(frame.payload)
        texts = [e.get("text") for e in events if e["type"] == "message"]
        if "hello from the other worker" in texts:
            break


def test_the_redis_fixture_restarts_on_the_same_port(redis_server: RedisServer) -> None:
    port = redis_server.port
    assert redis_ping(port)
    redis_server.kill()
    assert not redis_ping(port)
    redis_server.start()
    assert redis_server.port == port and redis_ping(port)
    redis_server.stop()
    assert not redis_server.alive() and not redis_ping(port)
    redis_server.start()
    assert redis_server.url == f"redis://127.0.0.1:{port}/0" and redis_ping(port)


def test_a_killed_worker_is_restarted_while_the_port_keeps_accepting(
    server_factory: ServerFactory, raw_client: RawClientFactory, redis_server: RedisServer,
) -> None:
    server = start_workers(server_factory, redis_server, "--no-affinity")
    workers = worker_pids(server)
    victim = min(workers)
    survivor = max(workers)
    os.kill(victim, signal.SIGKILL)
    wait_for("the killed worker to die", lambda: victim not in children(server.pid))
    # Meanwhile the survivor takes every connection.
    for _ in range(10):
        assert http_get(server.port, "/metrics").status == 200  # (/healthz: 503, one is down)
    replaced = wait_for(
        "a new worker",
        lambda: (pids if len(pids := children(server.pid)) == 2 and victim not in pids else None),
    )
    (newcomer,) = replaced - {survivor}
    # The newcomer serves on the same port: connect until one lands on it.
    clients: list[RawClient] = []

    def landed() -> bool:
        clients.extend(open_clients(raw_client, server.port, 4))
        return newcomer in owners(server.port, clients, {newcomer}).values()

    wait_for("a connection served by the restarted worker", landed)
    log = server.stderr_text()
    assert f"(pid {victim}) exited with signal SIGKILL; restarting in" in log, log
    assert f"restarted (pid {newcomer})" in log, log
    assert server.alive()


def test_a_connection_made_while_every_worker_is_down_waits_and_is_served(
    server_factory: ServerFactory, redis_server: RedisServer,
) -> None:
    server = start_workers(server_factory, redis_server)
    workers = worker_pids(server)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    wait_for("both workers to die", lambda: not children(server.pid) & workers)
    # No worker now (restarts wait 0.5 s), but the supervisor's socket still
    # listens: nobody else may bind the port, and a client is queued, not refused.
    assert listening(server.port)
    with socket.socket() as other, pytest.raises(OSError):
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", server.port))
    with RawClient(server.port, timeout=10) as early:
        early.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert not children(server.pid) & workers
        answer = early.read_until_eof(timeout=10)  # once a new worker accepts it
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:80]
    replaced = children(server.pid)
    assert replaced and not replaced & workers
    wait_for("a healthy node again", lambda: _healthz_or_none(server.port) == 200)


def _healthz_or_none(port: int) -> int | None:
    try:
        return http_get(port, "/healthz", timeout=2).status
    except OSError:
        return None


def test_sigterm_closes_clients_1001_on_every_worker_and_exits_0(
    server_factory: ServerFactory, raw_client: RawClientFactory, redis_server: RedisServer,
) -> None:
    server = start_workers(server_factory, redis_server, "--no-affinity")
    workers = worker_pids(server)
    clients = open_clients(raw_client, server.port, 16)
    # Whichever worker wakes first accepts: a busy moment can give one all 16.
    while set(spread(server, clients, workers)) != workers and len(clients) < 64:
        clients += open_clients(raw_client, server.port, 8)
    assert set(spread(server, clients, workers)) == workers
    start = time.monotonic()
    os.kill(server.pid, signal.SIGTERM)
    for client in clients:
        assert client.recv_close(timeout=DEADLINE).close_code == 1001
        client.send(bytes(client.encoder.close(1001)))  # answer, as a browser does,
        client.close()  # and hang up
    returncode = server.process.wait(timeout=DEADLINE)
    elapsed = time.monotonic() - start
    assert returncode == 0
    assert elapsed < 5.0, f"exit took {elapsed:.2f}s with cooperative clients (grace 5 s)"
    assert not any(running(pid) for pid in workers)
    # Standard output held the supervisor's one line, and nothing from the workers.
    assert server.process.stdout is not None
    assert server.process.stdout.read() == b""
    log = server.stderr_text()
    assert "stopping: sending SIGTERM to 2 workers" in log, log
    assert "all workers stopped" in log and "Traceback" not in log, log


def test_workers_stop_when_the_supervisor_dies(
    server_factory: ServerFactory, redis_server: RedisServer,
) -> None:
    server = start_workers(server_factory, redis_server)
    workers = worker_pids(server)
    os.kill(server.pid, signal.SIGKILL)
    server.process.wait(timeout=DEADLINE)
    wait_for(
        "the orphaned workers to exit",
        lambda: not any(running(pid) for pid in workers),
    )


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsnet", "--host", "127.0.0.1", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=python_env(),
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--workers", "2"), NEEDS_REDIS),
        (("--workers", "0"), "--workers must be at least 1"),
    ],
)
def test_bad_worker_counts_exit_2(args: tuple[str, ...], message: str) -> None:
    done = _run_cli("--port", "0", *args)
    assert done.returncode == 2
    assert message in done.stderr, done.stderr
    assert done.stdout == ""


def test_a_port_in_use_exits_2_before_starting_workers(redis_server: RedisServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run_cli("--port", str(port), "--workers", "2", "--redis", redis_server.url)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"wsnet: cannot listen on 127.0.0.1:{port}: address already in use"
    ), done.stderr
    assert "worker 1 started" not in done.stderr
