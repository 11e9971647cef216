"""The scale scenario's processes: a throwaway Redis, wsnet nodes (``--workers N
--redis``) on it, and a session of connections in rooms spread over load
generators, hence over every worker, so that every room crosses Redis. The parts
of the scenario (scale.py) run their loads on such sessions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import resource
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.procs import RedisServer, redis_executable, start_redis, with_parent_death

from wsbench.driver import (
    LoadGen,
    WorkerSpec,
    sleep_until_ns,
    source_options,
    split,
    summed_errors,
)
from wsbench.procfs import (
    Snapshot,
    child_pids,
    cpu_by_pid,
    cpu_percent,
    ephemeral_ports,
    kernel_tcp_mem_kb,
    open_fds,
    proc_status_kb,
)
from wsbench.servers import PROCESSES, ServerProcess, wsnet_command
from wsbench.settings import (
    CONNS_PER_SOURCE,
    REUSEPORT_SLACK,
    SCALE_PER_LOADGEN,
    WSNET_RESERVED_FDS,
    Scale,
)


def start_bench_redis(workdir: Path) -> RedisServer:
    """``support.procs.start_redis`` on a free port, logging into ``workdir``,
    started by ``PROCESSES`` and ending with this process (PR_SET_PDEATHSIG).
    RuntimeError if it cannot run, so that the part fails with a notice."""
    if redis_executable() is None:
        raise RuntimeError("redis-server is not installed (make redis, or apt-get install "
                           "redis-server)")
    try:
        return start_redis(workdir, group=PROCESSES, die_with_parent=True)
    except AssertionError as exc:  # it runs but does not answer PING in time
        raise RuntimeError(f"redis-server did not start: {exc}") from exc


def wsnet_node_command(
    workers: int, redis_url: str, extra: tuple[str, ...] = (), port: int = 0,
) -> list[str]:
    """One wsnet node: the benchmark's usual options, ``--workers N`` on Redis
    (on ``port``; 0: any free one)."""
    return with_parent_death([
        *wsnet_command(False, None, store=False, port=port), "--workers", str(workers),
        "--redis", redis_url, *extra,
    ])


class Cluster:
    """A Redis and wsnet nodes on it (``layout``: the workers of each node).

    Looks like a ServerProcess to ``LoadGen.run``: ``cpu_pids`` (every wsnet
    process and redis-server), ``rss_kb`` and ``hwm_kb`` (their sum). Each
    ``rss_kb`` call also leaves the breakdown in ``last``.
    """

    def __init__(self, layout: tuple[int, ...], extra: tuple[str, ...] = ()) -> None:
        self.layout = layout
        self.extra = extra  # more wsnet options (e.g. --no-affinity)
        self.nodes: list[ServerProcess] = []
        self.known_workers: set[int] = set()
        self.last: dict[str, Any] = {}
        self.log_lines: list[str] = []
        self.redis_dir = tempfile.TemporaryDirectory(prefix="wsnet-bench-redis-")
        try:
            self.redis = start_bench_redis(Path(self.redis_dir.name))
        except BaseException:
            self.redis_dir.cleanup()
            raise
        try:
            for workers in layout:
                self.nodes.append(ServerProcess(
                    wsnet_node_command(workers, self.redis.url, extra), start_timeout=60.0,
                ))
            self.worker_pids()
        except BaseException:
            self.stop()
            raise

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def worker_pids(self) -> list[int]:
        """The processes that serve: each node's workers (the node itself when
        it has one). The parent-death wrapper exec()s, so a node's pid is its own."""
        pids: list[int] = []
        for node, workers in zip(self.nodes, self.layout, strict=True):
            if workers == 1:
                pids.append(node.pid)
            else:
                found = child_pids(node.pid)
                self.known_workers.update(found)
                pids += found
        return pids

    def wsnet_pids(self) -> list[int]:
        supervisors = [n.pid for n, w in zip(self.nodes, self.layout, strict=True) if w > 1]
        return supervisors + self.worker_pids()

    def cpu_pids(self) -> list[int]:
        return [*self.wsnet_pids(), self.redis.pid]

    def rss_kb(self) -> int:
        workers = self.worker_pids()
        wsnet = sum(proc_status_kb(p, "VmRSS") or 0 for p in self.wsnet_pids())
        redis = proc_status_kb(self.redis.pid, "VmRSS") or 0
        self.last = {
            "rss_wsnet_kb": wsnet,
            "rss_redis_kb": redis,
            "rss_total_kb": wsnet + redis,
            "worker_rss_kb": [proc_status_kb(p, "VmRSS") or 0 for p in workers],
            "worker_fds": [open_fds(p) for p in workers],
            "kernel_tcp_mem_kb": kernel_tcp_mem_kb(),
        }
        return wsnet + redis

    def hwm_kb(self) -> int:
        return sum(proc_status_kb(p, "VmHWM") or 0 for p in self.cpu_pids())

    def problem_lines(self) -> list[str]:
        """Warnings, errors and tracebacks that the wsnet nodes logged."""
        return [line for node in self.nodes for line in node.problem_lines(limit=1 << 20)]

    def restart(self) -> tuple[float, float]:
        """Every node stopped (SIGTERM: its clients get close 1001) and started
        again on its port, on the same Redis: what a deploy without rolling does.
        The seconds the stops took, and the starts (until each printed its URL)."""
        stopping = starting = 0.0
        for i, (node, workers) in enumerate(zip(self.nodes, self.layout, strict=True)):
            self.log_lines += node.problem_lines(limit=1 << 20)
            t0 = time.monotonic()
            node.stop(timeout=30.0)
            t1 = time.monotonic()
            self.nodes[i] = ServerProcess(
                wsnet_node_command(workers, self.redis.url, self.extra, port=node.port),
                start_timeout=60.0,
            )
            stopping, starting = stopping + t1 - t0, starting + time.monotonic() - t1
        self.worker_pids()
        return stopping, starting

    def stop(self) -> None:
        self.log_lines += self.problem_lines()
        for node in self.nodes:
            node.stop(timeout=15.0)
        for pid in self.known_workers:  # a worker that outlived its supervisor
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if b"--worker-of" in cmdline:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        self.redis.stop()
        self.redis_dir.cleanup()


@dataclass
class RoomsSession:
    """A cluster with connections open in rooms, ready for runs."""

    cluster: Cluster
    loadgen: LoadGen
    wanted: int
    connections: int
    joined: int
    rooms: int
    empty: dict[str, Any]
    connected: dict[str, Any]
    handshakes_per_s: float
    connect_s: float  # first connect to the last join answer
    connect_cpu: dict[str, float]  # wsnet, redis: % of one core while connecting
    connect_loadgen_cpu: list[float]
    connect_errors: dict[str, int]
    server_log: list[str] = field(default_factory=list)


def check_scale_limits(connections: int, layout: tuple[int, ...], loadgens: list[int]) -> None:
    """Fail clearly, before starting anything, if the descriptor limit or the
    ephemeral ports cannot hold the connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # One process takes every connection itself: no uneven spread to allow for.
    slack = REUSEPORT_SLACK if sum(layout) > 1 else 1.0
    per_worker = math.ceil(connections / sum(layout) * slack) + 200
    if soft != resource.RLIM_INFINITY and per_worker + WSNET_RESERVED_FDS > soft:
        raise RuntimeError(
            f"{connections:,} connections over {sum(layout)} wsnet workers is up to "
            f"~{per_worker:,} per worker, more than the open-file limit allows "
            f"(RLIMIT_NOFILE soft {soft}, hard {hard}, less {WSNET_RESERVED_FDS} reserved): "
            "use more workers, or raise the hard limit (ulimit -Hn)"
        )
    ports = ephemeral_ports()
    per_source = min(max(loadgens), CONNS_PER_SOURCE)  # see source_options
    if per_source > ports - 500:
        raise RuntimeError(f"{per_source:,} connections from one source address exceed the "
                           f"{ports:,} ephemeral ports (net.ipv4.ip_local_port_range)")


@contextmanager
def rooms_session(
    layout: tuple[int, ...],
    connections: int,
    rooms: int,
    scale: Scale,
    *,
    sample_stride: int,
    max_sampled: int,
    drain: float,
    extra: tuple[str, ...] = (),
    loadgen_options: tuple[str, ...] = (),
) -> Iterator[RoomsSession]:
    """Redis, the wsnet nodes, then ``connections`` clients: client g (over all
    load generators) joins room ``r{g % rooms}``, so each load generator holds
    members of every room; the workers' room affinity (unless ``extra`` turns
    it off) then gathers each room in the worker that owns it."""
    workers = max(2, math.ceil(connections / SCALE_PER_LOADGEN))
    workers = math.ceil(workers / len(layout)) * len(layout)  # the same number per node
    counts = split(connections, workers)
    check_scale_limits(connections, layout, counts)
    if workers > 200:
        raise RuntimeError("too many load generators (at most 200)")
    offsets = [sum(counts[:i]) for i in range(workers)]
    # One sender per room; each load generator sends into its share of the rooms.
    senders = [1] + [0] * (workers - 1) if rooms == 1 else split(rooms, workers)
    firsts = [sum(senders[:i]) for i in range(workers)]
    cluster = Cluster(layout, extra)
    session: RoomsSession | None = None
    try:
        time.sleep(1.0)  # let every worker settle (and connect to Redis) before its baseline
        cluster.rss_kb()
        empty = dict(cluster.last)
        loadscale = dataclasses.replace(
            scale, sample_stride=sample_stride, max_sampled=max_sampled, drain=drain,
        )
        connect_timeout = 60 + connections / 500
        specs = [
            WorkerSpec(
                port=cluster.ports[i * len(layout) // workers],
                connections=counts[i],
                senders=senders[i],
                options=[
                    "--rooms", str(rooms), "--room-offset", str(offsets[i]),
                    "--sender-room-first", str(firsts[i]),
                    *source_options(i, counts[i]),
                    "--max-lifetime", str(int(connect_timeout + 1200)),
                    *loadgen_options,
                ],
            )
            for i in range(workers)
        ]
        loadgen = LoadGen(
            0, connections, loadscale, deflate=False, senders=sum(senders),
            connect_timeout=connect_timeout, specs=specs,
        )
        try:
            sleep_until_ns(loadgen.connect_at_ns)
            before = Snapshot.take(cluster.cpu_pids(), loadgen.pids)
            readies = loadgen.collect("ready", timeout=connect_timeout + 60)
            after = Snapshot.take(cluster.cpu_pids(), loadgen.pids)
            opened = sum(r["connections"] for r in readies)
            start = min(r["handshake_start_ns"] for r in readies)
            end = max(r["handshake_end_ns"] for r in readies)
            joined_at = max([end] + [r.get("join_end_ns", 0) for r in readies])
            by_pid = cpu_by_pid(before, after)
            _, loadgen_cpu, machine = cpu_percent(before, after)
            other = machine * (os.cpu_count() or 1) - sum(by_pid.values()) - sum(loadgen_cpu)
            time.sleep(scale.hold)
            cluster.rss_kb()
            session = RoomsSession(
                cluster=cluster,
                loadgen=loadgen,
                wanted=connections,
                connections=opened,
                joined=sum(r.get("joined", 0) for r in readies),
                rooms=rooms,
                empty=empty,
                connected=dict(cluster.last),
                handshakes_per_s=opened / max(1e-3, (end - start) / 1e9),
                connect_s=(joined_at - start) / 1e9,
                connect_cpu={
                    "wsnet": sum(v for p, v in by_pid.items() if p != cluster.redis.pid),
                    "redis": by_pid.get(cluster.redis.pid, 0.0),
                    "other": max(0.0, other),
                    "machine": machine,
                },
                connect_loadgen_cpu=loadgen_cpu,
                connect_errors=summed_errors(readies),
            )
            for r in readies:  # chat error events while joining (e.g. unavailable)
                for code, n in r.get("error_events", {}).items():
                    key = f"{code} event"
                    session.connect_errors[key] = session.connect_errors.get(key, 0) + n
            yield session
        finally:
            loadgen.stop()
    finally:
        cluster.stop()
        if session is not None:
            session.server_log = cluster.log_lines
