"""``make bench``: wsnet side by side with peer servers, same load generator.

Scenarios (see bench/README.md): idle, broadcast, saturation, deflate, flush, and
scale (wsnet only: ``--workers N`` on a Redis backplane, up to 100,000 connections
in rooms; see "The scale scenario" below).
For every server (wsnet; the ``websockets`` peer; Node ``ws`` plain and batched
when ``node`` is installed) a scenario starts the server, opens connections from
``bench/loadgen.py`` worker processes, runs the load, samples the server's and the
workers' RSS and CPU from ``/proc``, and stops everything. Results go to
``bench/results/<timestamp>.json``, ``bench/results/latest.md`` and, when
matplotlib is importable, a PNG chart.

Only 127.0.0.0/8 is ever a target; every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import importlib.metadata
import json
import math
import os
import platform
import queue
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import Histogram, raise_nofile  # bench/ is not a package: from its folder

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
NODE_DIR = BENCH / ".node"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
#: A load generator above this share of one core may be what limits the run.
LOADGEN_BUSY = 90.0
#: Saturation: a step passes while p99 stays under this and nearly all arrive.
SATURATION_P99_MS = 500.0
SATURATION_DELIVERED = 0.99
#: Connections per source address before the next 127.0.0.x is used (the
#: ephemeral port range gives ~28k per (source, destination) pair).
CONNS_PER_SOURCE = 25_000


# -- scale -------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleSizes:
    """The scale scenario (wsnet only): many connections in rooms, through Redis."""

    connections: int = 100_000  # parts (a), (b) and (c)
    room_size: int = 100  # (a), (c): connections / room_size rooms
    per_room_rate: float = 1.0  # messages/s into each room: the target load
    #: (a) and (c) also run these lighter loads first, same connections: where
    #: the target is out of reach, they show what this machine does hold...
    lighter_rates: tuple[float, ...] = (0.25, 0.5, 0.75)
    #: ...after a window without messages (0: none): what the open connections
    #: alone cost (keepalive pings and pongs).
    idle_window: float = 10.0
    window: float = 30.0  # seconds of sending, (a) and (c)
    workers: int = 6  # (a) and (b): one node, --workers N
    nodes: tuple[int, ...] = (3, 3)  # (c): workers of each node, same Redis
    broadcasts: int = 3  # (b): one message to everyone, this many times
    broadcast_drain: float = 30.0
    sweep: tuple[int, ...] = (2, 3, 4, 5, 6)  # (a)'s load at sweep_connections, N = ...
    sweep_connections: int = 30_000
    sweep_window: float = 20.0
    drain: float = 10.0
    parts: tuple[str, ...] = ("a", "b", "c", "sweep")


@dataclass(frozen=True)
class Scale:
    """The sizes and durations of every scenario."""

    idle_sizes: tuple[int, ...]
    #: Sessions of (connections, [total messages/s, ...]); runs of a session share
    #: one server process and one set of connections.
    broadcast: tuple[tuple[int, tuple[float, ...]], ...]
    saturation_connections: int
    saturation_rates: tuple[float, ...]
    deflate: tuple[tuple[int, tuple[float, ...]], ...]
    flush: tuple[tuple[int, tuple[float, ...]], ...]
    duration: float  # seconds of sending per broadcast run
    step_duration: float  # seconds of sending per saturation step
    drain: float  # longest wait for the last deliveries after sending stops
    settle: float  # seconds between a server's start and its empty-RSS reading
    hold: float  # seconds between the last handshake and the RSS reading
    per_worker: int  # connections per load-generator process, at most
    min_workers: int  # load-generator processes for a session with senders, at least
    message_bytes: int = 100
    sample_stride: int = 20  # every 20th client measures latency (5 %)...
    max_sampled: int = 25  # ...at most this many per worker
    big: ScaleSizes = ScaleSizes()


FULL = Scale(
    idle_sizes=(1000, 5000, 10_000, 19_000),
    broadcast=((1000, (10, 100)), (10_000, (10,))),
    saturation_connections=1000,
    saturation_rates=(100, 200, 500, 1000, 2000, 3000, 5000, 7500, 10_000),
    deflate=((1000, (10, 100)), (10_000, (10,))),
    flush=((1000, (10, 100)),),
    duration=10.0,
    step_duration=5.0,
    drain=5.0,
    settle=0.5,
    hold=2.0,
    per_worker=5000,
    min_workers=2,
)
QUICK = Scale(
    idle_sizes=(200, 500),
    broadcast=((200, (10, 100)), (500, (10,))),
    saturation_connections=200,
    saturation_rates=(200, 1000, 3000),
    deflate=((200, (10, 100)),),
    flush=((200, (100,)),),
    duration=1.5,
    step_duration=1.0,
    drain=2.0,
    settle=0.3,
    hold=0.3,
    per_worker=250,
    min_workers=1,
    big=ScaleSizes(
        connections=5000, window=3.0, workers=2, nodes=(1, 1), broadcasts=1, lighter_rates=(),
        idle_window=1.0,
        broadcast_drain=10.0, sweep=(1, 2), sweep_connections=2000, sweep_window=2.0, drain=5.0,
    ),
)
SCENARIOS = ("idle", "broadcast", "saturation", "deflate", "flush", "scale")


# -- /proc -------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kb(pid: int, key: str) -> int | None:
    """A ``kB`` line of /proc/PID/status: VmRSS, VmHWM..."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


@dataclass
class Snapshot:
    """CPU seconds of the server (all its processes) and each worker, and the
    machine, at one instant."""

    t: float
    server_cpu: float
    worker_cpu: list[float]
    machine: tuple[int, int]
    by_pid: dict[int, float] = field(default_factory=dict)  # each server process

    @classmethod
    def take(cls, server_pids: int | list[int], worker_pids: list[int]) -> Snapshot:
        pids = [server_pids] if isinstance(server_pids, int) else server_pids
        by_pid = {p: proc_cpu_s(p) or 0.0 for p in pids}
        return cls(
            time.monotonic(),
            sum(by_pid.values()),
            [proc_cpu_s(p) or 0.0 for p in worker_pids],
            machine_jiffies(),
            by_pid,
        )


def cpu_percent(a: Snapshot, b: Snapshot) -> tuple[float, list[float], float]:
    """Server % of one core, each worker's % of one core, machine % busy (all cores)."""
    wall = max(1e-6, b.t - a.t)
    busy = b.machine[0] - a.machine[0]
    total = max(1, b.machine[1] - a.machine[1])
    return (
        100 * (b.server_cpu - a.server_cpu) / wall,
        [100 * (y - x) / wall for x, y in zip(a.worker_cpu, b.worker_cpu, strict=True)],
        100 * busy / total,
    )


def cpu_by_pid(a: Snapshot, b: Snapshot) -> dict[int, float]:
    """Each server process's % of one core between two snapshots (processes in
    both: one that ended or started in between is left out)."""
    wall = max(1e-6, b.t - a.t)
    return {p: 100 * (b.by_pid[p] - a.by_pid[p]) / wall for p in b.by_pid if p in a.by_pid}


# -- servers -----------------------------------------------------------------


@dataclass(frozen=True)
class ServerKind:
    name: str
    command: Callable[[bool, float | None], list[str]]

    def label(self, flush_ms: float | None) -> str:
        return self.name if flush_ms is None else f"{self.name} (flush {flush_ms:g} ms)"


def wsnet_command(deflate: bool, flush_ms: float | None) -> list[str]:
    # The default config, except the per-client rate limit (a benchmark sender
    # exceeds 50 msg/s by design).
    argv = [sys.executable, "-m", "wsnet", "--port", "0", "--log-level", "warning"]
    argv += ["--rate-limit", "0"]
    if flush_ms is not None:
        argv += ["--flush-interval-ms", f"{flush_ms:g}"]
    return argv


def websockets_command(deflate: bool, flush_ms: float | None) -> list[str]:
    argv = [sys.executable, str(BENCH / "peers" / "websockets_chat.py"), "--port", "0"]
    return argv if deflate else [*argv, "--no-deflate"]


def node_command(batch: bool) -> Callable[[bool, float | None], list[str]]:
    def command(deflate: bool, flush_ms: float | None) -> list[str]:
        argv = ["node", str(BENCH / "peers" / "node_chat.js"), "--port", "0"]
        return argv + (["--batch"] if batch else []) + (["--deflate"] if deflate else [])

    return command


SERVERS = {
    "wsnet": ServerKind("wsnet", wsnet_command),
    "websockets": ServerKind("websockets", websockets_command),
    "node": ServerKind("node-ws", node_command(batch=False)),
    "node-batch": ServerKind("node-ws-batch", node_command(batch=True)),
}


#: The first warning or error line each server process logged (see running_server).
SERVER_LOGS: list[str] = []


def ensure_node_ws() -> str | None:
    """Install Node ``ws`` into bench/.node if needed; a notice if we cannot."""
    if shutil.which("node") is None:
        return "node is not installed: the Node ws peers are skipped"
    if (NODE_DIR / "node_modules" / "ws" / "package.json").exists():
        return None
    if shutil.which("npm") is None:
        return "npm is not installed: the Node ws peers are skipped"
    print("installing ws into bench/.node (npm install --prefix bench/.node ws)", flush=True)
    NODE_DIR.mkdir(exist_ok=True)
    try:
        subprocess.run(
            ["npm", "install", "--prefix", str(NODE_DIR), "ws", "--no-audit", "--no-fund"],
            check=True, capture_output=True, timeout=300,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return f"npm install ws failed ({exc}): the Node ws peers are skipped"
    return None


#: Every process this run started, so that none outlives it (see ``reap_all``).
SPAWNED: list[subprocess.Popen[Any]] = []


def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Popen from the repository root, remembered in ``SPAWNED``."""
    proc = subprocess.Popen(argv, cwd=ROOT, **kwargs)
    SPAWNED.append(proc)
    return proc


def reap_all() -> list[int]:
    """Kill (SIGKILL) every process we started that still runs; their pids."""
    killed = []
    for proc in SPAWNED:
        if proc.poll() is None:
            proc.kill()
            killed.append(proc.pid)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    SPAWNED.clear()
    return killed


class ServerProcess:
    """A server under test, started on port 0; its URL line gives the port."""

    def __init__(self, argv: list[str], start_timeout: float = 20.0) -> None:
        self.argv = argv
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed by stop())
        self.proc = spawn(argv, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.port = self._read_port(timeout=start_timeout)

    def _read_port(self, timeout: float) -> int:
        found: queue.Queue[str] = queue.Queue()
        stdout = self.proc.stdout
        assert stdout is not None

        def reader() -> None:
            for line in stdout:  # keep draining: the pipe must never fill
                found.put(line)

        threading.Thread(target=reader, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = found.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            m = re.search(r"ws://127\.0\.0\.1:(\d+)/", line)
            if m:
                return int(m.group(1))
        self.stop()
        raise RuntimeError(f"server did not start: {' '.join(self.argv)}\n{self.stderr()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_pids(self) -> list[int]:
        """The processes whose CPU is the server's."""
        return [self.pid]

    def rss_kb(self) -> int:
        return proc_status_kb(self.pid, "VmRSS") or 0

    def hwm_kb(self) -> int:
        return proc_status_kb(self.pid, "VmHWM") or 0

    def stderr(self, limit: int = 2000) -> str:
        self.log.seek(0)
        return self.log.read()[-limit:]

    def problems(self) -> str | None:
        """The first warning, error or traceback the server logged, if any."""
        for line in self.stderr().splitlines():
            if re.search(r"WARNING|ERROR|CRITICAL|Traceback|Error:", line):
                return line.strip()[:300]
        return None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if not self.log.closed:
            self.log.close()


@contextmanager
def running_server(kind: ServerKind, deflate: bool, flush_ms: float | None) -> Iterator[
    ServerProcess
]:
    server = ServerProcess(kind.command(deflate, flush_ms))
    try:
        yield server
    finally:
        problem = server.problems()
        if problem:
            SERVER_LOGS.append(f"{kind.label(flush_ms)} logged: {problem}")
        server.stop()


# -- load generators ---------------------------------------------------------


def split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` near-equal integers."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@dataclass
class RunResult:
    """One run (a rate for a duration) measured across every worker."""

    rate: float
    duration: float
    sent: int
    receivers: int
    delivered: int
    expected: int
    deliveries_per_s: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    samples: int
    server_cpu: float
    server_rss_kb: int
    server_hwm_kb: int
    worker_cpu: list[float]
    worker_cpu_s: list[float]
    machine_busy: float
    max_send_lag_ms: float
    closed_by_server: int
    lost: int  # connections that ended during the run (closed by the server or reset)
    compressed_frames: int
    min_per_conn: int
    errors: dict[str, int]
    #: Each server process's % of one core over the sending window.
    cpu_by_pid: dict[int, float] = field(default_factory=dict)
    #: Rooms mode: exactness checks and error events, added up over workers.
    rooms: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.delivered / self.expected if self.expected else 0.0

    @property
    def loadgen_busy(self) -> bool:
        return max(self.worker_cpu, default=0.0) >= LOADGEN_BUSY


@dataclass
class WorkerSpec:
    """One load-generator process: its target port, clients, senders and any
    further options (``--source``, ``--rooms``...)."""

    port: int
    connections: int
    senders: int
    options: list[str] = field(default_factory=list)


class LoadGen:
    """Worker processes of bench/loadgen.py, driven by JSON lines."""

    def __init__(
        self,
        port: int,
        connections: int,
        scale: Scale,
        *,
        deflate: bool,
        senders: int,
        connect_timeout: float,
        specs: list[WorkerSpec] | None = None,
    ) -> None:
        if specs is None:
            workers = math.ceil(connections / scale.per_worker)
            if senders:
                workers = max(workers, scale.min_workers)
            sources = math.ceil(connections / CONNS_PER_SOURCE)
            specs = [
                WorkerSpec(port, count, sending, (
                    # beyond one address's ephemeral ports: 127.0.0.2, .3, ...
                    ["--source", f"127.0.0.{2 + i % sources}"] if sources > 1 else []
                ))
                for i, (count, sending) in enumerate(zip(
                    split(connections, workers), split(min(senders, connections), workers),
                    strict=True,
                ))
            ]
        self.counts = [spec.connections for spec in specs]
        self.senders = [spec.senders for spec in specs]
        self.events: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
        self.procs: list[subprocess.Popen[str]] = []
        # Workers start connecting together, once every interpreter is up.
        self.connect_at_ns = time.monotonic_ns() + int((0.5 + 0.15 * len(specs)) * 1e9)
        for i, spec in enumerate(specs):
            argv = [
                sys.executable, str(BENCH / "loadgen.py"), "--port", str(spec.port),
                "--connections", str(spec.connections), "--senders", str(spec.senders),
                "--message-bytes", str(scale.message_bytes), "--worker-id", str(i),
                "--sample-stride", str(scale.sample_stride),
                "--max-sampled", str(scale.max_sampled),
                "--connect-timeout", str(connect_timeout), "--drain", str(scale.drain),
                "--connect-at-ns", str(self.connect_at_ns), *spec.options,
            ]
            if deflate:
                argv.append("--deflate")
            proc = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.procs.append(proc)
            threading.Thread(target=self._reader, args=(i, proc.stdout), daemon=True).start()
        self.run_id = 0

    def _reader(self, i: int, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            if line.startswith("{"):
                self.events.put((i, json.loads(line)))
        self.events.put((i, {"event": "exit"}))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def send(self, i: int, command: dict[str, Any]) -> None:
        stdin = self.procs[i].stdin
        assert stdin is not None
        stdin.write(json.dumps(command) + "\n")
        stdin.flush()

    def collect(self, kind: str, timeout: float) -> list[dict[str, Any]]:
        """One ``kind`` event from every worker, in worker order."""
        got: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(self.procs):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"load generator: no '{kind}' from workers in {timeout:.0f} s")
            try:
                i, event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if event.get("event") == "exit":
                raise RuntimeError(f"load generator {i} exited while waiting for '{kind}'")
            if event.get("event") == kind:
                got[i] = event
        return [got[i] for i in range(len(self.procs))]

    def run(
        self, server: ServerProcess | Any, rate: float, duration: float, drain: float,
    ) -> RunResult:
        """Send ``rate`` messages/s in total for ``duration`` s, then drain.
        ``server`` is a ServerProcess or anything with its ``cpu_pids``,
        ``rss_kb`` and ``hwm_kb`` (scale.py's cluster of processes)."""
        self.run_id += 1
        start_ns = time.monotonic_ns() + 300_000_000
        total_senders = max(1, sum(self.senders))
        for i, senders in enumerate(self.senders):
            self.send(i, {
                "cmd": "run", "run": self.run_id, "start_ns": start_ns, "duration": duration,
                "rate": rate * senders / total_senders, "drain": drain,
            })
        sleep_until_ns(start_ns)
        before = Snapshot.take(server.cpu_pids(), self.pids)
        sleep_until_ns(start_ns + int(duration * 1e9))
        after = Snapshot.take(server.cpu_pids(), self.pids)
        rss, hwm = server.rss_kb(), server.hwm_kb()
        sent_events = self.collect("sent", timeout=duration + 30)
        sent = sum(e["sent"] for e in sent_events)
        expect: dict[str, Any] = {"cmd": "expect", "run": self.run_id, "messages": sent}
        if any("by_room" in e for e in sent_events):  # rooms mode: per-room totals
            by_room: dict[str, int] = {}
            for e in sent_events:
                for room, count in e.get("by_room", {}).items():
                    by_room[room] = by_room.get(room, 0) + count
            expect["by_room"] = by_room
        for i in range(len(self.procs)):
            self.send(i, expect)
        results = self.collect("result", timeout=drain + 30)
        server_cpu, worker_cpu, machine_busy = cpu_percent(before, after)
        hist = Histogram()
        for r in results:
            hist.merge(r["latency"]["counts"], r["latency"]["max_us"])
        receivers = sum(r["receivers"] for r in results)
        delivered = sum(r["delivered"] for r in results)
        expected = sum(r["expected"] or 0 for r in results) if "by_room" in expect else (
            sent * receivers
        )
        first = min((r["first_send_ns"] for r in results if r["first_send_ns"]), default=0)
        last = max((r["last_delivery_ns"] for r in results), default=0)
        window = (last - first) / 1e9 if first and last > first else 0.0

        def ms(p: float) -> float | None:
            v = hist.percentile(p)
            return None if v is None else v / 1000

        return RunResult(
            rate=rate,
            duration=duration,
            sent=sent,
            receivers=receivers,
            delivered=delivered,
            expected=expected,
            deliveries_per_s=delivered / window if window else 0.0,
            p50_ms=ms(50),
            p90_ms=ms(90),
            p99_ms=ms(99),
            max_ms=hist.max_us / 1000 if hist.n else None,
            samples=hist.n,
            server_cpu=server_cpu,
            server_rss_kb=rss,
            server_hwm_kb=hwm,
            worker_cpu=worker_cpu,
            worker_cpu_s=[r["cpu_s"] for r in results],
            machine_busy=machine_busy,
            max_send_lag_ms=max(r["max_send_lag_ms"] for r in results),
            closed_by_server=sum(r["closed_by_server"] for r in results),
            lost=sum(r["lost"] for r in results),
            compressed_frames=sum(r["compressed_frames"] for r in results),
            min_per_conn=min(r["min_per_conn"] for r in results),
            errors=summed_errors(results),
            cpu_by_pid=cpu_by_pid(before, after),
            rooms=rooms_checks(results) if "by_room" in expect else {},
        )

    def stop(self) -> list[dict[str, Any]]:
        byes: list[dict[str, Any]] = []
        for i in range(len(self.procs)):
            try:
                self.send(i, {"cmd": "stop"})
            except (BrokenPipeError, OSError):
                pass
        try:
            byes = self.collect("bye", timeout=15)
        except RuntimeError:
            pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        return byes


def rooms_checks(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Rooms mode: the workers' per-connection checks and error events, added up."""
    error_events: dict[str, int] = {}
    for r in results:
        for code, n in r.get("error_events", {}).items():
            error_events[code] = error_events.get(code, 0) + n
    return {
        "senders": sum(r.get("senders", 0) for r in results),
        "short_conns": sum(r.get("short_conns", 0) for r in results),
        "max_short": max((r.get("max_short", 0) for r in results), default=0),
        "over_conns": sum(r.get("over_conns", 0) for r in results),
        "misrouted": sum(r.get("misrouted", 0) for r in results),
        "not_joined": sum(r.get("not_joined", 0) for r in results),
        # A worker whose drain ended before the per-room totals arrived.
        "no_expect": sum(1 for r in results if r.get("expected") is None),
        "error_events": error_events,
    }


def summed_errors(events: list[dict[str, Any]]) -> dict[str, int]:
    """The workers' error counts, added up."""
    total: dict[str, int] = {}
    for event in events:
        for k, v in event["errors"].items():
            total[k] = total.get(k, 0) + v
    return total


def sleep_until_ns(t_ns: int) -> None:
    delay = (t_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)


@dataclass
class Session:
    """A server with N connections open, ready for runs."""

    server: ServerProcess
    loadgen: LoadGen
    connections: int
    empty_rss_kb: int
    open_rss_kb: int
    handshakes_per_s: float
    connect_cpu: float  # server % of a core while the handshakes happened
    connect_loadgen_cpu: list[float]  # each worker's % of a core meanwhile
    deflate_negotiated: int
    connect_errors: dict[str, int]

    @property
    def rss_per_conn_kb(self) -> float:
        return (self.open_rss_kb - self.empty_rss_kb) / max(1, self.connections)


@contextmanager
def session(
    kind: ServerKind,
    connections: int,
    scale: Scale,
    *,
    deflate: bool = False,
    flush_ms: float | None = None,
    senders: int = 0,
) -> Iterator[Session]:
    """Start the server, measure it empty, open the connections, measure again."""
    with running_server(kind, deflate, flush_ms) as server:
        time.sleep(scale.settle)  # let the empty server settle before its baseline
        empty = server.rss_kb()
        loadgen = LoadGen(
            server.port, connections, scale, deflate=deflate, senders=senders,
            connect_timeout=30 + connections / 200,
        )
        try:
            sleep_until_ns(loadgen.connect_at_ns)
            cpu0 = proc_cpu_s(server.pid) or 0.0
            readies = loadgen.collect("ready", timeout=60 + connections / 100)
            cpu1 = proc_cpu_s(server.pid) or 0.0
            opened = sum(r["connections"] for r in readies)
            start = min(r["handshake_start_ns"] for r in readies)
            end = max(r["handshake_end_ns"] for r in readies)
            window = max(1e-3, (end - start) / 1e9)
            time.sleep(scale.hold)
            yield Session(
                server=server,
                loadgen=loadgen,
                connections=opened,
                empty_rss_kb=empty,
                open_rss_kb=server.rss_kb(),
                handshakes_per_s=opened / window,
                connect_cpu=100 * (cpu1 - cpu0) / window,
                connect_loadgen_cpu=[100 * r["connect_cpu_s"] / window for r in readies],
                deflate_negotiated=sum(r["deflate_negotiated"] for r in readies),
                connect_errors=summed_errors(readies),
            )
        finally:
            loadgen.stop()


# -- scenarios ---------------------------------------------------------------


@dataclass
class Row:
    """One line of a result table."""

    scenario: str
    server: str
    connections: int
    values: dict[str, Any] = field(default_factory=dict)


def run_row(scenario: str, label: str, s: Session, r: RunResult) -> Row:
    return Row(scenario, label, s.connections, {
        "rate": r.rate,
        "deflate_negotiated": s.deflate_negotiated,
        "empty_rss_kb": s.empty_rss_kb,
        "open_rss_kb": s.open_rss_kb,
        "rss_per_conn_kb": round(s.rss_per_conn_kb, 2),
        "rss_kb": r.server_rss_kb,
        "hwm_kb": r.server_hwm_kb,
        "cpu_pct": round(r.server_cpu, 1),
        "p50_ms": r.p50_ms,
        "p90_ms": r.p90_ms,
        "p99_ms": r.p99_ms,
        "max_ms": r.max_ms,
        "samples": r.samples,
        "sent": r.sent,
        "delivered": r.delivered,
        "expected": r.expected,
        "delivered_ratio": round(r.ratio, 5),
        "deliveries_per_s": round(r.deliveries_per_s),
        "min_per_conn": r.min_per_conn,
        "closed_by_server": r.closed_by_server,
        "lost_connections": r.lost,
        "compressed_frames": r.compressed_frames,
        "loadgen_cpu_pct": [round(c, 1) for c in r.worker_cpu],
        "loadgen_cpu_s": r.worker_cpu_s,
        "loadgen_busy": r.loadgen_busy,
        "machine_busy_pct": round(r.machine_busy, 1),
        "max_send_lag_ms": r.max_send_lag_ms,
        "errors": r.errors,
    })


def senders_for(connections: int) -> int:
    """10 % of the clients send, at most 100."""
    return max(1, min(100, connections // 10))


def scenario_idle(kind: ServerKind, scale: Scale, log: Callable[[str], None]) -> list[Row]:
    rows = []
    for n in scale.idle_sizes:
        with session(kind, n, scale) as s:
            rows.append(Row("idle", kind.name, s.connections, {
                "wanted": n,
                "empty_rss_kb": s.empty_rss_kb,
                "rss_kb": s.open_rss_kb,
                "rss_per_conn_kb": round(s.rss_per_conn_kb, 2),
                "handshakes_per_s": round(s.handshakes_per_s),
                "connect_cpu_pct": round(s.connect_cpu, 1),
                "loadgen_cpu_pct": [round(c, 1) for c in s.connect_loadgen_cpu],
                "loadgen_busy": max(s.connect_loadgen_cpu, default=0) >= LOADGEN_BUSY,
                "errors": s.connect_errors,
            }))
        log(f"  idle {kind.name} {n}: {s.rss_per_conn_kb:.2f} KB/conn, "
            f"{s.handshakes_per_s:.0f} handshakes/s")
    return rows


def scenario_broadcast(
    kind: ServerKind,
    scale: Scale,
    log: Callable[[str], None],
    *,
    name: str = "broadcast",
    deflate: bool = False,
    flush_ms: float | None = None,
    sessions: tuple[tuple[int, tuple[float, ...]], ...] | None = None,
) -> list[Row]:
    rows = []
    label = kind.label(flush_ms)
    for n, rates in sessions or scale.broadcast:
        opened = session(
            kind, n, scale, deflate=deflate, flush_ms=flush_ms, senders=senders_for(n),
        )
        with opened as s:
            for rate in rates:
                r = s.loadgen.run(s.server, rate, scale.duration, scale.drain)
                rows.append(run_row(name, label, s, r))
                log(f"  {name} {label} {n} x {rate:g}/s: p99 {fmt_ms(r.p99_ms)}, "
                    f"delivered {r.ratio:.2%}, server CPU {r.server_cpu:.0f} %")
    return rows


def scenario_saturation(
    kind: ServerKind, scale: Scale, log: Callable[[str], None],
) -> list[Row]:
    rows = []
    n = scale.saturation_connections
    with session(kind, n, scale, senders=senders_for(n)) as s:
        for rate in scale.saturation_rates:
            r = s.loadgen.run(s.server, rate, scale.step_duration, scale.drain)
            held = (
                r.p99_ms is not None
                and r.p99_ms <= SATURATION_P99_MS
                and r.ratio >= SATURATION_DELIVERED
            )
            row = run_row("saturation", kind.name, s, r)
            row.values["held"] = held
            rows.append(row)
            log(f"  saturation {kind.name} {rate:g} msg/s: {r.deliveries_per_s:,.0f} "
                f"deliveries/s, p99 {fmt_ms(r.p99_ms)}, delivered {r.ratio:.2%}"
                f"{'' if held else '  <- not sustained'}")
            if not held:
                break
    return rows


# -- the scale scenario --------------------------------------------------------
#
# wsnet only: --workers N processes on one port (SO_REUSEPORT) and a Redis
# backplane, up to 100,000 connections in rooms whose members are spread over
# load-generator processes and hence over workers, so every room spans workers
# through Redis. Parts: (a) rooms of 100 at 1 msg/s each, (b) one broadcast to
# everyone in one room, (c) (a) on one node against two nodes, and a sweep of N.

#: Connections one load-generator process holds at most (~20k open files each).
SCALE_PER_LOADGEN = 19_000
#: Descriptors wsnet keeps back from its connection limit (wsnet/config.py).
WSNET_RESERVED_FDS = 64
#: SO_REUSEPORT spreads connections by a hash, not exactly: headroom per worker.
REUSEPORT_SLACK = 1.05
SCALE_P99_TARGET_MS = 120.0
#: CPU of everything else on the machine (% of one core) above which a notice
#: says that the numbers may suffer from it.
OTHER_BUSY = 25.0
SCALE_RSS_TARGET_KB = 1_000_000_000 // 1024  # 1 GB (10^9 bytes) in KiB
#: Started processes get SIGTERM when this process dies, even by SIGKILL (Linux's
#: PR_SET_PDEATHSIG survives the exec).
DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


def with_parent_death(argv: list[str]) -> list[str]:
    if not sys.platform.startswith("linux"):
        return argv
    return [sys.executable, "-c", DIE_WITH_PARENT, *argv]


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the kernel's pick, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_call(port: int, *args: str, timeout: float = 5.0) -> bytes:
    """One command to a Redis on 127.0.0.1:port; its reply, raw (RESP)."""
    request = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args
    )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                return reply
            reply += chunk
        if reply.startswith(b"$"):  # a bulk string: read all of it
            head, _, rest = reply.partition(b"\r\n")
            size = int(head[1:])
            while size >= 0 and len(rest) < size + 2:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                rest += chunk
            return rest[: max(0, size)]
        return reply


def child_pids(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` (from /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent:
            pids.append(int(entry))
    return sorted(pids)


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def kernel_tcp_mem_kb() -> int:
    """Pages the kernel holds for all TCP sockets' buffers (/proc/net/sockstat), in KB."""
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    fields = line.split()
                    return int(fields[fields.index("mem") + 1]) * PAGE_KB
    except (OSError, ValueError, IndexError):
        pass
    return 0


def ephemeral_ports() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(v) for v in f.read().split())
    except (OSError, ValueError):
        return 28_000
    return high - low + 1


class RedisProcess:
    """A throwaway ``redis-server`` on a free port: nothing written to disk."""

    def __init__(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not installed (make redis, or apt-get install "
                               "redis-server)")
        self.dir = tempfile.TemporaryDirectory(prefix="wsnet-bench-redis-")
        self.log_path = Path(self.dir.name) / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        for _attempt in range(3):  # the free port may be taken before redis binds it
            self.port = free_port()
            with self.log_path.open("ab") as log:
                self.proc = spawn(with_parent_death([
                    executable, "--port", str(self.port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", self.dir.name,
                ]), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if redis_call(self.port, "PING", timeout=1.0).startswith(b"+PONG"):
                        return
                except OSError:
                    pass
                time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"redis-server did not start: {self.log_text()[-1000:]}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def info(self) -> dict[str, str]:
        """``INFO``'s fields (empty if Redis does not answer)."""
        try:
            text = redis_call(self.port, "INFO").decode(errors="replace")
        except OSError:
            return {}
        return dict(
            line.split(":", 1) for line in text.splitlines() if ":" in line
            and not line.startswith("#")
        )

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.proc = None


def wsnet_node_command(workers: int, redis_url: str) -> list[str]:
    """One wsnet node: the benchmark's usual options, ``--workers N`` on Redis."""
    return with_parent_death([
        *wsnet_command(False, None), "--workers", str(workers), "--redis", redis_url,
    ])


class Cluster:
    """A Redis and wsnet nodes on it (``layout``: the workers of each node).

    Looks like a ServerProcess to ``LoadGen.run``: ``cpu_pids`` (every wsnet
    process and redis-server), ``rss_kb`` and ``hwm_kb`` (their sum). Each
    ``rss_kb`` call also leaves the breakdown in ``last``.
    """

    def __init__(self, layout: tuple[int, ...]) -> None:
        self.layout = layout
        self.nodes: list[ServerProcess] = []
        self.known_workers: set[int] = set()
        self.last: dict[str, Any] = {}
        self.log_lines: list[str] = []
        self.redis = RedisProcess()
        try:
            for workers in layout:
                self.nodes.append(ServerProcess(
                    wsnet_node_command(workers, self.redis.url), start_timeout=60.0,
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
        lines = []
        for node in self.nodes:
            if node.log.closed:
                continue
            for line in node.stderr(limit=1 << 20).splitlines():
                if re.search(r"WARNING|ERROR|CRITICAL|Traceback|Error:", line):
                    lines.append(line.strip()[:300])
        return lines

    def stop(self) -> None:
        self.log_lines = self.problem_lines() or self.log_lines
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
    per_worker = math.ceil(connections / sum(layout) * REUSEPORT_SLACK) + 200
    if soft != resource.RLIM_INFINITY and per_worker + WSNET_RESERVED_FDS > soft:
        raise RuntimeError(
            f"{connections:,} connections over {sum(layout)} wsnet workers is up to "
            f"~{per_worker:,} per worker, more than the open-file limit allows "
            f"(RLIMIT_NOFILE soft {soft}, hard {hard}, less {WSNET_RESERVED_FDS} reserved): "
            "use more workers, or raise the hard limit (ulimit -Hn)"
        )
    ports = ephemeral_ports()
    if max(loadgens) > ports - 500:
        raise RuntimeError(f"{max(loadgens):,} connections from one source address exceed the "
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
) -> Iterator[RoomsSession]:
    """Redis, the wsnet nodes, then ``connections`` clients: client g (over all
    load generators) joins room ``r{g % rooms}``, so each load generator holds
    members of every room, and SO_REUSEPORT spreads them over the workers."""
    workers = max(2, math.ceil(connections / SCALE_PER_LOADGEN))
    workers = math.ceil(workers / len(layout)) * len(layout)  # the same number per node
    counts = split(connections, workers)
    check_scale_limits(connections, layout, counts)
    if workers > 200:
        raise RuntimeError("too many load generators (at most 200 source addresses)")
    offsets = [sum(counts[:i]) for i in range(workers)]
    # One sender per room; each load generator sends into its share of the rooms.
    senders = [1] + [0] * (workers - 1) if rooms == 1 else split(rooms, workers)
    firsts = [sum(senders[:i]) for i in range(workers)]
    cluster = Cluster(layout)
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
                    "--source", f"127.0.0.{2 + i}",  # one source address each
                    "--max-lifetime", str(int(connect_timeout + 1200)),
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


def layout_label(layout: tuple[int, ...]) -> str:
    if len(layout) == 1:
        return f"1 node x {layout[0]} workers" if layout[0] > 1 else "1 node, 1 process"
    if len(set(layout)) == 1:
        return f"{len(layout)} nodes x {layout[0]} worker{'s' if layout[0] > 1 else ''}"
    return " + ".join(f"{w}" for w in layout) + " workers"


def rooms_values(s: RoomsSession, r: RunResult | None) -> dict[str, Any]:
    """Everything measured about one session (and one run of it, if any)."""
    v: dict[str, Any] = {
        "layout": layout_label(s.cluster.layout),
        "nodes": len(s.cluster.layout),
        "workers": sum(s.cluster.layout),
        "wanted": s.wanted,
        "joined": s.joined,
        "rooms": s.rooms,
        "handshakes_per_s": round(s.handshakes_per_s),
        "connect_s": round(s.connect_s, 1),
        "connect_cpu_wsnet_pct": round(s.connect_cpu["wsnet"], 1),
        "connect_cpu_redis_pct": round(s.connect_cpu["redis"], 1),
        "connect_cpu_other_pct": round(s.connect_cpu["other"], 1),
        "connect_machine_busy_pct": round(s.connect_cpu["machine"], 1),
        "connect_loadgen_cpu_pct": [round(c, 1) for c in s.connect_loadgen_cpu],
        "connect_errors": s.connect_errors,
        "empty_rss_kb": s.empty.get("rss_total_kb", 0),
        "connected_rss_kb": s.connected.get("rss_total_kb", 0),
        "connected_worker_fds": s.connected.get("worker_fds", []),
        "server_log": s.server_log[:20],
        "server_log_lines": len(s.server_log),
    }
    if r is None:
        return v
    last = s.cluster.last
    redis_pid = s.cluster.redis.pid
    v.update({
        "sent": r.sent,
        "receivers": r.receivers,
        "delivered": r.delivered,
        "expected": r.expected,
        "delivered_ratio": round(r.ratio, 6),
        "deliveries_per_s": round(r.deliveries_per_s),
        "p50_ms": r.p50_ms,
        "p90_ms": r.p90_ms,
        "p99_ms": r.p99_ms,
        "max_ms": r.max_ms,
        "samples": r.samples,
        **r.rooms,
        "errors": r.errors,
        "lost_connections": r.lost,
        "closed_by_server": r.closed_by_server,
        "cpu_wsnet_pct": round(sum(c for p, c in r.cpu_by_pid.items() if p != redis_pid), 1),
        "cpu_redis_pct": round(r.cpu_by_pid.get(redis_pid, 0.0), 1),
        "cpu_worker_pct": [round(r.cpu_by_pid.get(p, 0.0), 1) for p in s.cluster.worker_pids()],
        "loadgen_cpu_pct": [round(c, 1) for c in r.worker_cpu],
        "loadgen_busy": r.loadgen_busy,
        "machine_busy_pct": round(r.machine_busy, 1),
        # Everything else on the machine meanwhile (other programs, kernel threads,
        # this orchestrator), in % of one core: a busy machine shows here.
        "cpu_other_pct": round(max(0.0, r.machine_busy * (os.cpu_count() or 1)
                                   - sum(r.cpu_by_pid.values()) - sum(r.worker_cpu)), 1),
        "max_send_lag_ms": r.max_send_lag_ms,
        "rss_wsnet_kb": last.get("rss_wsnet_kb", 0),
        "rss_redis_kb": last.get("rss_redis_kb", 0),
        "rss_total_kb": last.get("rss_total_kb", 0),
        "hwm_total_kb": r.server_hwm_kb,
        "worker_rss_kb": last.get("worker_rss_kb", []),
        "worker_fds": last.get("worker_fds", []),
        "kernel_tcp_mem_kb": last.get("kernel_tcp_mem_kb", 0),
    })
    info = s.cluster.redis.info()
    v["redis"] = {k: info[k] for k in (
        "used_memory", "used_memory_peak", "connected_clients", "pubsub_channels",
        "total_commands_processed", "client_output_buffer_limit_disconnections",
        "rejected_connections",
    ) if k in info}
    return v


def scale_rooms_part(
    part: str, layout: tuple[int, ...], connections: int, window: float, *, scale: Scale,
    rates: tuple[float, ...], log: Callable[[str], None], idle_window: float = 0.0,
) -> list[Row]:
    """(a), (c) and the sweep: rooms of ``room_size``, each receiving ``rate``
    messages/s, for each rate (ascending: an overloaded run's backlog, if its
    drain timed out, must not weigh on a lighter one); first, with
    ``idle_window``, a window without messages."""
    sizes = scale.big
    rooms = max(1, connections // sizes.room_size)
    rows = []
    with rooms_session(
        layout, connections, rooms, scale,
        # 19 is prime to the room counts (multiples of 100): samplers spread over rooms.
        sample_stride=19, max_sampled=250, drain=sizes.drain,
    ) as s:
        log(f"  scale ({part}) {layout_label(layout)}: {s.connections:,} connected, "
            f"{s.joined:,} joined in {s.connect_s:.1f} s ({s.handshakes_per_s:,.0f} "
            "handshakes/s)")
        loads = [(0.0, idle_window)] if idle_window > 0 else []
        loads += [(rate, window) for rate in sorted(rates)]
        for rate, seconds in loads:
            r = s.loadgen.run(s.cluster, rate * rooms, seconds, sizes.drain)
            values = rooms_values(s, r)
            values.update({"part": part, "room_size": sizes.room_size, "per_room_rate": rate,
                           "target_load": rate == sizes.per_room_rate, "window_s": seconds})
            rows.append(Row("scale", "wsnet", s.connections, values))
            log(f"  scale ({part}) {values['layout']} at {rate:g} msg/s per room: p50/p99/max "
                f"{fmt_ms(r.p50_ms)} / {fmt_ms(r.p99_ms)} / {fmt_ms(r.max_ms)}, delivered "
                f"{r.ratio:.4%}, {fmt_rate(r.deliveries_per_s)} deliveries/s, RSS "
                f"{fmt_kb(values['rss_total_kb'])}, CPU wsnet {values['cpu_wsnet_pct']:.0f} % "
                f"redis {values['cpu_redis_pct']:.0f} % other {values['cpu_other_pct']:.0f} %")
    for row in rows:
        row.values.update({"server_log": s.server_log[:20], "server_log_lines": len(s.server_log)})
    return rows


def scale_broadcast_part(scale: Scale, log: Callable[[str], None]) -> list[Row]:
    """(b): everyone in one room (presence is a count), one message at a time;
    every client measures its latency."""
    sizes = scale.big
    rows = []
    layout = (sizes.workers,)
    with rooms_session(
        layout, sizes.connections, 1, scale,
        sample_stride=1, max_sampled=SCALE_PER_LOADGEN, drain=sizes.broadcast_drain,
    ) as s:
        log(f"  scale (b) {layout_label(layout)}: {s.connections:,} connected, "
            f"{s.joined:,} joined in {s.connect_s:.1f} s ({s.handshakes_per_s:,.0f} "
            "handshakes/s)")
        for k in range(sizes.broadcasts):
            time.sleep(2.0)  # let the presence counts of the joins go out first
            r = s.loadgen.run(s.cluster, 1.0, 1.0, sizes.broadcast_drain)  # one message
            values = rooms_values(s, r)
            values.update({"part": "b", "broadcast": k + 1})
            rows.append(Row("scale", "wsnet", s.connections, values))
            log(f"  scale (b) broadcast {k + 1}: {r.delivered:,}/{r.expected:,} delivered, "
                f"p50/p99/max {fmt_ms(r.p50_ms)} / {fmt_ms(r.p99_ms)} / {fmt_ms(r.max_ms)} "
                f"over {r.samples:,} clients")
    for row in rows:
        row.values.update({"server_log": s.server_log[:20],
                           "server_log_lines": len(s.server_log)})
    return rows


def scenario_scale(scale: Scale, log: Callable[[str], None]) -> tuple[list[Row], list[str]]:
    """Every part of the scale scenario; a part that fails is a notice, and the
    others still run."""
    sizes = scale.big
    rows: list[Row] = []
    notices: list[str] = []
    parts: list[tuple[str, Callable[[], list[Row]]]] = []
    loads = (*sizes.lighter_rates, sizes.per_room_rate)
    if "a" in sizes.parts:
        parts.append(("a", lambda: scale_rooms_part(
            "a", (sizes.workers,), sizes.connections, sizes.window, scale=scale, rates=loads,
            idle_window=sizes.idle_window, log=log)))
    if "b" in sizes.parts:
        parts.append(("b", lambda: scale_broadcast_part(scale, log)))
    if "c" in sizes.parts:
        parts.append(("c", lambda: scale_rooms_part(
            "c", sizes.nodes, sizes.connections, sizes.window, scale=scale, rates=loads,
            idle_window=sizes.idle_window, log=log)))
    if "sweep" in sizes.parts:
        for n in sizes.sweep:
            parts.append((f"sweep N={n}", functools.partial(
                scale_rooms_part, "sweep", (n,), sizes.sweep_connections, sizes.sweep_window,
                scale=scale, rates=(sizes.per_room_rate,), log=log,
            )))
    for name, part in parts:
        try:
            rows += part()
        except RuntimeError as exc:
            notice = f"scale ({name}) failed: {exc}"
            log(f"  {notice}")
            notices.append(notice)
        time.sleep(2.0)  # the last session's sockets close before the next starts
    return rows, notices


# -- reporting ---------------------------------------------------------------


def scale_errors_cell(v: dict[str, Any]) -> str:
    """Error events, connection errors and lost connections of one run, or 0."""
    parts = [f"{code} {n:,}" for code, n in sorted(v.get("error_events", {}).items())]
    parts += [f"{code} {n:,}" for code, n in sorted(v.get("connect_errors", {}).items())]
    parts += [f"{code} {n:,}" for code, n in sorted(v.get("errors", {}).items())
              if code not in v.get("connect_errors", {})]
    if v.get("lost_connections"):
        parts.append(f"lost {v['lost_connections']:,}")
    return ", ".join(parts) or "0"


def exact(v: dict[str, Any]) -> bool:
    """Every message reached exactly its room's members, nothing else arrived."""
    return (
        v.get("expected", 0) > 0
        and v["delivered"] == v["expected"]
        and not v.get("short_conns")
        and not v.get("over_conns")
        and not v.get("misrouted")
        and v.get("joined", 0) == v.get("wanted")
    )


def delivered_cell(v: dict[str, Any]) -> str:
    if not v.get("expected"):
        return "-" if not v.get("delivered") else f"{v['delivered']:,} unexpected"
    text = f"{v['delivered_ratio']:.4%}"
    if v.get("short_conns") or v.get("over_conns") or v.get("misrouted"):
        text += (f" ({v.get('short_conns', 0):,} short, {v.get('over_conns', 0):,} over, "
                 f"{v.get('misrouted', 0):,} misrouted)")
    return text


def cpu_cell(v: dict[str, Any]) -> str:
    loadgen = v["loadgen_cpu_pct"]
    return (f"{v['cpu_wsnet_pct']:.0f} % / {v['cpu_redis_pct']:.0f} % / "
            f"{sum(loadgen):.0f} % x{len(loadgen)}{' **busy**' if v['loadgen_busy'] else ''} / "
            f"{v['cpu_other_pct']:.0f} % ({v['machine_busy_pct']:.0f} %)")


def rss_cell(v: dict[str, Any]) -> str:
    return (f"{fmt_kb(v['rss_wsnet_kb'])} + {fmt_kb(v['rss_redis_kb'])} = "
            f"{fmt_kb(v['rss_total_kb'])}")


def scale_table(rows: list[Row]) -> list[str]:
    lines = [
        "| Layout | Connected (joined) | Rooms x size | Handshakes/s (all joined after) | "
        "Msg/s per room | Deliveries/s | Latency p50 / p99 / max | Delivered | Errors | "
        "RSS wsnet + Redis = total | CPU wsnet / Redis / loadgens / other (machine) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        v = row.values
        lines.append(
            f"| {v['layout']} | {row.connections:,} ({v['joined']:,}) | "
            f"{v['rooms']:,} x {v['room_size']} | {v['handshakes_per_s']:,} "
            f"({v['connect_s']:.0f} s) | {v['per_room_rate']:g} | "
            f"{fmt_rate(v['deliveries_per_s'])} | "
            f"{fmt_ms(v['p50_ms'])} / {fmt_ms(v['p99_ms'])} / {fmt_ms(v['max_ms'])} | "
            f"{delivered_cell(v)} | {scale_errors_cell(v)} | {rss_cell(v)} | {cpu_cell(v)} |"
        )
    return lines


def scale_targets(v: dict[str, Any]) -> str:
    p99 = v.get("p99_ms")
    p99_ok = p99 is not None and p99 <= SCALE_P99_TARGET_MS
    rss_ok = v["rss_total_kb"] <= SCALE_RSS_TARGET_KB

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    return (
        f"p99 {fmt_ms(p99)} (target <= {SCALE_P99_TARGET_MS:g} ms): {verdict(p99_ok)}; "
        f"delivered {v['delivered']:,} of {v['expected']:,}, every connection exactly its "
        f"room's messages: {verdict(exact(v))}; total RSS {v['rss_total_kb'] / 1024:,.0f} MiB "
        f"= {v['rss_total_kb'] * 1024 / 1e9:.2f} GB (target <= 1 GB): {verdict(rss_ok)} "
        f"(peak, VmHWM summed: {v['hwm_total_kb'] * 1024 / 1e9:.2f} GB)"
    )


def workers_line(v: dict[str, Any]) -> str:
    fds = v.get("worker_fds") or []
    rss = v.get("worker_rss_kb") or []
    cpu = v.get("cpu_worker_pct") or []
    if not fds:
        return ""
    return (f"open files per worker {min(fds):,}-{max(fds):,}, RSS per worker "
            f"{fmt_kb(min(rss))}-{fmt_kb(max(rss))}, CPU per worker "
            f"{min(cpu, default=0):.0f}-{max(cpu, default=0):.0f} %; kernel TCP buffers "
            f"{fmt_kb(v.get('kernel_tcp_mem_kb', 0))} (not in RSS)")


def target_row(rows: list[Row]) -> Row:
    """The run at the target load (the heaviest one run)."""
    marked = [r for r in rows if r.values.get("target_load")]
    return marked[0] if marked else max(rows, key=lambda r: r.values["per_room_rate"])


def holds(v: dict[str, Any]) -> bool:
    return exact(v) and v["p99_ms"] is not None and v["p99_ms"] <= SCALE_P99_TARGET_MS


def held_line(rows: list[Row]) -> list[str]:
    """The heaviest load that met the latency target with every message delivered."""
    if len(rows) < 2:
        return []
    held = [r for r in rows if holds(r.values)]
    if not held:
        return ["", f"No load tried met p99 <= {SCALE_P99_TARGET_MS:g} ms with every message "
                "delivered."]
    best = max(held, key=lambda r: r.values["per_room_rate"])
    v = best.values
    return ["", f"Heaviest load that met p99 <= {SCALE_P99_TARGET_MS:g} ms with every message "
            f"delivered: {v['per_room_rate']:g} msg/s per room ({fmt_rate(v['deliveries_per_s'])} "
            f"deliveries/s, p99 {fmt_ms(v['p99_ms'])})."]


def scale_report(rows: list[Row]) -> list[str]:
    by_part: dict[str, list[Row]] = {}
    for row in rows:
        by_part.setdefault(row.values["part"], []).append(row)
    out = [
        "Each worker of `--workers N` is a node of its own on one Redis (`--redis`), and "
        "every room has members on every worker: client g joins room `r{g % rooms}`, the "
        "load generators hold consecutive blocks of g, and SO_REUSEPORT spreads each "
        "generator's connections over the workers. Latency: send to receipt on sampled "
        "receivers (every 19th client, at most 250 per load generator; in (b) every "
        "client). Delivered: deliveries of each room's own marker counted on every "
        "receiver / (messages sent into its room, summed over receivers). CPU: % of one "
        "core over the sending window; other: everything else on the machine (other programs, "
        "kernel threads); machine: both cores busy. RSS: all wsnet processes + "
        "redis-server at the end of the window.",
    ]
    if "a" in by_part:
        target = target_row(by_part["a"])
        v = target.values
        out += ["", f"### (a) {target.connections:,} connections in {v['rooms']:,} "
                f"rooms of {v['room_size']}, target {v['per_room_rate']:g} msg/s per room "
                f"({v['window_s']:g} s windows)", "", *scale_table(by_part["a"]), "",
                f"Targets at {v['per_room_rate']:g} msg/s per room: {scale_targets(v)}."]
        out += held_line(by_part["a"])
        line = workers_line(v)
        if line:
            out += ["", f"Workers at {v['per_room_rate']:g} msg/s per room: {line}."]
    if "b" in by_part:
        first = by_part["b"][0]
        v0 = first.values
        out += ["", f"### (b) one message to {first.connections:,} clients in one room "
                f"({v0['layout']}, presence as a count)", "",
                f"Connected {first.connections:,} (joined {v0['joined']:,}) at "
                f"{v0['handshakes_per_s']:,} handshakes/s, all joined after "
                f"{v0['connect_s']:.0f} s.", "",
                "| Broadcast | Receivers | Delivered | Time to receipt p50 | p99 | "
                "max (the last client) | Errors | RSS total | CPU wsnet / Redis / loadgens / other "
                "(machine) |",
                "|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
        for row in by_part["b"]:
            v = row.values
            out.append(
                f"| {v['broadcast']} | {v['receivers']:,} | {delivered_cell(v)} | "
                f"{fmt_ms(v['p50_ms'])} | {fmt_ms(v['p99_ms'])} | {fmt_ms(v['max_ms'])} | "
                f"{scale_errors_cell(v)} | {fmt_kb(v['rss_total_kb'])} | {cpu_cell(v)} |"
            )
        out += ["", "Latency here is over every client (samples = receivers); CPU is over "
                "the one-second sending window."]
    if "c" in by_part:
        ones = {r.values["per_room_rate"]: r for r in by_part.get("a", [])}
        interleaved = []
        for row in by_part["c"]:
            one = ones.get(row.values["per_room_rate"])
            interleaved += [one, row] if one is not None else [row]
        pair = [r for r in (ones.get(target_row(by_part["c"]).values["per_room_rate"]),
                            target_row(by_part["c"])) if r is not None]
        out += ["", "### (c) one node against two nodes on the same Redis", "",
                "The one-node rows are run (a); the two-node rows are the same load with two "
                "supervisors (`--workers` half each) on two ports, the load generators split "
                "between them, every room still spanning both nodes.", "",
                *scale_table(interleaved), ""]
        out += ["| At the target load | " + " | ".join(r.values["layout"] for r in pair) + " |",
                "|---|" + "---:|" * len(pair)]
        metrics: list[tuple[str, Callable[[Row], str]]] = [
            ("Connected (joined)", lambda r: f"{r.connections:,} ({r.values['joined']:,})"),
            ("Handshakes/s (all joined after)",
             lambda r: f"{r.values['handshakes_per_s']:,} ({r.values['connect_s']:.0f} s)"),
            ("Deliveries/s", lambda r: fmt_rate(r.values["deliveries_per_s"])),
            ("Latency p50 / p99 / max", lambda r: " / ".join(
                fmt_ms(r.values[k]) for k in ("p50_ms", "p99_ms", "max_ms"))),
            ("Delivered", lambda r: delivered_cell(r.values)),
            ("Errors", lambda r: scale_errors_cell(r.values)),
            ("RSS wsnet + Redis = total", lambda r: rss_cell(r.values)),
            ("CPU wsnet / Redis / loadgens / other (machine)", lambda r: cpu_cell(r.values)),
            ("Open files per worker", lambda r: "{:,}-{:,}".format(
                min(r.values["worker_fds"] or [0]), max(r.values["worker_fds"] or [0]))),
        ]
        for name, cell in metrics:
            out.append(f"| {name} | " + " | ".join(cell(r) for r in pair) + " |")
        out += ["", "Targets, two nodes: " + scale_targets(target_row(by_part["c"]).values) + "."]
        out += held_line(by_part["c"])
    if "sweep" in by_part:
        sweep = by_part["sweep"]
        v = sweep[0].values
        out += ["", f"### Workers: N = {', '.join(str(r.values['workers']) for r in sweep)} at "
                f"{sweep[0].connections:,} connections ({v['rooms']:,} rooms of "
                f"{v['room_size']}, {v['window_s']:g} s)", "", *scale_table(sweep)]
        good = [r for r in sweep if exact(r.values) and r.values["p99_ms"] is not None]
        if good:
            best = min(good, key=lambda r: (r.values["p99_ms"], r.values["cpu_wsnet_pct"]))
            thrifty = min(good, key=lambda r: r.values["cpu_wsnet_pct"])
            p99s = [r.values["p99_ms"] for r in good]
            out += ["", f"With every message delivered: p99 from {fmt_ms(min(p99s))} to "
                    f"{fmt_ms(max(p99s))}, lowest at N = {best.values['workers']}; least wsnet "
                    f"CPU at N = {thrifty.values['workers']} "
                    f"({thrifty.values['cpu_wsnet_pct']:.0f} % of one core, against "
                    f"{max(r.values['cpu_wsnet_pct'] for r in good):.0f} % at most). "
                    "A few ms of p99 are within run-to-run noise."]
    return out


def scale_notices(row: Row) -> list[str]:
    v = row.values
    where = f"scale ({v['part']}{' ' + str(v['broadcast']) if 'broadcast' in v else ''}) / " \
        f"{v['layout']} / {row.connections:,}"
    if "broadcast" not in v and "per_room_rate" in v:
        where += f" x {v['per_room_rate']:g}/s per room"
    notes = []
    if row.connections < v["wanted"] or v.get("connect_errors"):
        notes.append(f"{v['wanted'] - row.connections:,} connections missing, connect errors "
                     f"{v.get('connect_errors')}")
    if v["joined"] < row.connections:
        notes.append(f"{row.connections - v['joined']:,} connections never got their join answer")
    if v.get("error_events"):
        notes.append(f"error events received: {v['error_events']}")
    if v.get("lost_connections"):
        notes.append(f"{v['lost_connections']} connections lost during the run "
                     f"({v['closed_by_server']} closed by the server)")
    if v.get("short_conns") or v.get("over_conns") or v.get("misrouted"):
        notes.append(f"{v.get('short_conns', 0):,} connections missed messages (at most "
                     f"{v.get('max_short', 0)} each), {v.get('over_conns', 0):,} got extra, "
                     f"{v.get('misrouted', 0):,} deliveries of other rooms")
    if v.get("no_expect"):
        notes.append(f"{v['no_expect']} load generators ended their drain without totals")
    if v.get("loadgen_busy"):
        notes.append("a load generator was near 100 % of a core: it may be the bottleneck")
    if v.get("max_send_lag_ms", 0) > 100:
        notes.append(f"senders fell up to {v['max_send_lag_ms']:.0f} ms behind schedule")
    if v.get("cpu_other_pct", 0) > OTHER_BUSY or v.get("connect_cpu_other_pct", 0) > OTHER_BUSY:
        notes.append(f"the machine was busy with other work: {v.get('cpu_other_pct', 0):.0f} % of "
                     f"a core while sending, {v.get('connect_cpu_other_pct', 0):.0f} % while "
                     "connecting (numbers may be pessimistic)")
    redis = v.get("redis", {})
    if int(redis.get("client_output_buffer_limit_disconnections", 0) or 0):
        notes.append("Redis disconnected a subscriber over its output buffer limit "
                     f"({redis['client_output_buffer_limit_disconnections']} times)")
    if v.get("server_log_lines") and v.get("broadcast", 1) == 1:
        notes.append(f"wsnet logged {v['server_log_lines']} warning/error lines, first: "
                     f"{v['server_log'][0]}")
    return [f"{where}: {n}" for n in notes]


def row_notices(row: Row) -> list[str]:
    """What a reader of one row must know to trust it (or not)."""
    if row.scenario == "scale":
        return scale_notices(row)
    v = row.values
    where = f"{row.scenario} / {row.server} / {row.connections:,}" + (
        f" x {v['rate']:g}/s" if "rate" in v else ""
    )
    notes = []
    if v.get("wanted", row.connections) > row.connections or v.get("errors"):
        notes.append(f"connection errors {v.get('errors')}")
    if v.get("lost_connections"):
        notes.append(f"{v['lost_connections']} connections lost during the run "
                     f"({v['closed_by_server']} closed by the server)")
    if v.get("loadgen_busy"):
        notes.append("a load generator was near 100 % of a core: it may be the bottleneck")
    if v.get("max_send_lag_ms", 0) > 100:
        notes.append(f"senders fell up to {v['max_send_lag_ms']:.0f} ms behind schedule")
    if row.scenario == "deflate":
        if v["deflate_negotiated"] < row.connections:
            notes.append(f"deflate negotiated on {v['deflate_negotiated']} of "
                         f"{row.connections} connections")
        if not v["compressed_frames"]:
            notes.append("no compressed frame was received")
    return [f"{where}: {n}" for n in notes]



def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f} ms" if v >= 10 else f"{v:.1f} ms"


def fmt_kb(kb: float) -> str:
    return f"{kb / 1024:.1f} MB" if kb >= 10 * 1024 else f"{kb:.0f} KB"


def fmt_rate(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def loadgen_cell(values: dict[str, Any]) -> str:
    cpu = values["loadgen_cpu_pct"]
    mark = " **busy**" if values["loadgen_busy"] else ""
    return f"{max(cpu):.0f} % x{len(cpu)}{mark}"


def table(rows: list[Row], scenario: str) -> list[str]:
    if scenario == "idle":
        head = (
            "| Server | Concurrent users | Memory (RSS) | RSS/conn above empty | "
            "Handshakes/s | CPU during handshakes | Loadgen CPU (max, workers) |"
        )
        lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
        for row in rows:
            v = row.values
            lines.append(
                f"| {row.server} | {row.connections:,} | {fmt_kb(v['rss_kb'])} | "
                f"{v['rss_per_conn_kb']:.2f} KB | {v['handshakes_per_s']:,} | "
                f"{v['connect_cpu_pct']:.0f} % | {loadgen_cell(v)} |"
            )
        return lines
    head = (
        "| Server | Concurrent users | Msg/s in | Memory (RSS) | RSS/conn | CPU | "
        "Latency p50 / p99 | Deliveries/s | Delivered | Loadgen CPU (max, workers) |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        v = row.values
        held = "" if v.get("held", True) else " (not held)"
        lines.append(
            f"| {row.server} | {row.connections:,} | {v['rate']:g} | {fmt_kb(v['rss_kb'])} | "
            f"{v['rss_per_conn_kb']:.2f} KB | {v['cpu_pct']:.0f} % | "
            f"{fmt_ms(v['p50_ms'])} / {fmt_ms(v['p99_ms'])} | "
            f"{fmt_rate(v['deliveries_per_s'])} | {v['delivered_ratio']:.2%}{held} | "
            f"{loadgen_cell(v)} |"
        )
    return lines


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def ratios(rows: list[Row], scenario: str) -> list[str]:
    """wsnet / peer for each row of the same size and rate."""
    def key(row: Row) -> tuple[int, float]:
        return row.values.get("wanted", row.connections), row.values.get("rate", 0)

    lines = []
    wsnet_rows = {key(r): r for r in rows if r.server == "wsnet"}
    if scenario == "saturation":
        best = saturation_best(rows)
        if "wsnet" in best:
            for peer, value in best.items():
                if peer != "wsnet":
                    lines.append(f"- wsnet/{peer}: highest sustained deliveries/s "
                                 f"{ratio(best['wsnet'], value)}")
        return lines
    for row in rows:
        mine = wsnet_rows.get(key(row))
        if row.server == "wsnet" or mine is None:
            continue
        a, b = mine.values, row.values
        size = f"{row.connections:,}" + (f" x {b['rate']:g}/s" if "rate" in b else "")
        if scenario == "idle":
            lines.append(
                f"- {size}: wsnet/{row.server} RSS/conn "
                f"{ratio(a['rss_per_conn_kb'], b['rss_per_conn_kb'])}, handshakes/s "
                f"{ratio(a['handshakes_per_s'], b['handshakes_per_s'])}"
            )
        else:
            lines.append(
                f"- {size}: wsnet/{row.server} RSS {ratio(a['rss_kb'], b['rss_kb'])}, "
                f"CPU {ratio(a['cpu_pct'], b['cpu_pct'])}, p99 {ratio(a['p99_ms'], b['p99_ms'])}, "
                f"deliveries/s {ratio(a['deliveries_per_s'], b['deliveries_per_s'])}"
            )
    return lines


def deflate_cost(deflate: list[Row], plain: list[Row]) -> list[str]:
    """Each server's CPU and RSS/conn with deflate against the same load without."""
    without = {(r.server, r.connections, r.values["rate"]): r for r in plain}
    lines = []
    for row in deflate:
        base = without.get((row.server, row.connections, row.values["rate"]))
        if base is None:
            continue
        a, b = row.values, base.values
        lines.append(
            f"- {row.server} {row.connections:,} x {a['rate']:g}/s, deflate/plain: "
            f"CPU {ratio(a['cpu_pct'], b['cpu_pct'])}, RSS/conn {a['rss_per_conn_kb']:.2f} vs "
            f"{b['rss_per_conn_kb']:.2f} KB"
        )
    return lines


def flush_tradeoff(rows: list[Row]) -> list[str]:
    """The flush-interval trade-off in one sentence per load."""
    by_load: dict[tuple[int, float], dict[str, Row]] = {}
    for row in rows:
        by_load.setdefault((row.connections, row.values["rate"]), {})[row.server] = row
    lines = []
    for (n, rate), pair in by_load.items():
        zero = next((r for k, r in pair.items() if "flush 0 ms" in k), None)
        tick = next((r for k, r in pair.items() if "flush 50 ms" in k), None)
        if zero is None or tick is None:
            continue
        z, t = zero.values, tick.values
        lines.append(
            f"- {n:,} x {rate:g}/s: flushing every loop turn gives p99 {fmt_ms(z['p99_ms'])} "
            f"instead of {fmt_ms(t['p99_ms'])} for {ratio(z['cpu_pct'], t['cpu_pct'])} the CPU "
            f"({z['cpu_pct']:.0f} % vs {t['cpu_pct']:.0f} % of a core)"
        )
    return lines


def saturated(rows: list[Row]) -> set[str]:
    """Servers that failed a saturation step (the others held the whole ladder)."""
    return {row.server for row in rows if not row.values.get("held", True)}


def saturation_best(rows: list[Row]) -> dict[str, float]:
    best: dict[str, float] = {}
    for row in rows:
        if row.values.get("held"):
            best[row.server] = max(best.get(row.server, 0.0), row.values["deliveries_per_s"])
    return best


TITLES = {
    "idle": "Idle connections: memory per connection and handshakes",
    "broadcast": "Broadcast: everyone receives everything (100-byte messages)",
    "saturation": "Saturation: total message rate raised stepwise until p99 > "
    f"{SATURATION_P99_MS:g} ms or delivered < {SATURATION_DELIVERED:.0%}",
    "deflate": "Deflate: the broadcast scenarios, every client negotiating permessage-deflate",
    "flush": "wsnet flush interval: 0 (every loop turn) vs 50 ms ticks",
    "scale": "Scale: wsnet --workers N on one Redis, rooms spanning workers",
}


def report(results: dict[str, Any], rows: dict[str, list[Row]]) -> str:
    m = results["machine"]
    out = [
        f"# wsnet benchmark ({'quick' if results['quick'] else 'full'})",
        "",
        f"{results['started']} · {m['cores']} cores ({m['cpu']}) · Python {m['python']} · "
        f"Linux {m['kernel']} · node {m['node'] or 'absent'} · websockets "
        f"{m['websockets']} · wsnet {m['wsnet']} ({m['commit']})",
        "",
        "CPU is % of one core over the sending window; RSS is the server's at its end. "
        "Latency: send (client clock) to receipt, on a sample of receivers. "
        "Delivered: deliveries counted on every receiver / (messages sent x receivers). "
        f"Loadgen CPU **busy** marks a worker at >= {LOADGEN_BUSY:g} % of a core "
        "(the load generator may then be the bottleneck).",
    ]
    for scenario, scenario_rows in rows.items():
        if not scenario_rows:
            continue
        if scenario == "scale":
            out += ["", f"## {TITLES[scenario]}", "", *scale_report(scenario_rows)]
            continue
        out += ["", f"## {TITLES[scenario]}", "", *table(scenario_rows, scenario)]
        if scenario == "saturation":
            best = saturation_best(scenario_rows)
            out += ["", "Highest sustained deliveries/s: " + (", ".join(
                f"{k} {fmt_rate(v)}" + ("" if k in saturated(scenario_rows) else
                                        " (held every step: not saturated)")
                for k, v in best.items()) or "none")]
        lines = ratios(scenario_rows, scenario)
        if scenario == "deflate":
            lines += deflate_cost(scenario_rows, rows.get("broadcast", []))
        if scenario == "flush":
            lines += flush_tradeoff(scenario_rows)
        if lines:
            out += ["", *lines]
    if results["notices"]:
        out += ["", "## Notices", "", *[f"- {n}" for n in results["notices"]]]
    busy = [r["machine_busy_pct"] for rs in results["scenarios"].values() for r in rs
            if "machine_busy_pct" in r]
    if busy:
        out += ["", f"Machine CPU busy during sending windows (all cores, everything running): "
                f"{min(busy):.0f}-{max(busy):.0f} %."]
    return "\n".join(out) + "\n"


def chart(rows: dict[str, list[Row]], path: Path) -> str | None:
    """Latency and memory against connections; None, or a notice if we cannot."""
    try:
        import matplotlib  # noqa: PLC0415  (optional extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return "matplotlib is not importable: no chart (pip install -e '.[bench]')"
    if not rows.get("broadcast") and not rows.get("idle"):
        return "no chart: it needs the idle or broadcast scenario"
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    broadcast = rows.get("broadcast", [])
    low = min((r.values["rate"] for r in broadcast), default=None)
    for server in dict.fromkeys(r.server for r in broadcast):
        points = sorted(
            (r.connections, r.values["p50_ms"], r.values["p99_ms"])
            for r in broadcast
            if r.server == server and r.values["rate"] == low and r.values["p99_ms"] is not None
        )
        if points:
            xs = [p[0] for p in points]
            line = left.plot(xs, [p[2] for p in points], marker="o", label=f"{server} p99")[0]
            left.plot(xs, [p[1] for p in points], marker=".", linestyle="--",
                      color=line.get_color(), label=f"{server} p50")
    left.set_title(f"Broadcast latency at {low or 0:g} msg/s")
    left.set_xlabel("connections")
    left.set_ylabel("ms")
    if broadcast:
        left.legend(fontsize=7)
    idle = rows.get("idle", [])
    for server in dict.fromkeys(r.server for r in idle):
        sizes = sorted((r.connections, r.values["rss_kb"] / 1024) for r in idle
                       if r.server == server)
        right.plot([p[0] for p in sizes], [p[1] for p in sizes], marker="o", label=server)
    right.set_title("Server RSS with idle connections")
    right.set_xlabel("connections")
    right.set_ylabel("MB")
    if idle:
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def machine_info() -> dict[str, Any]:
    def version(argv: list[str]) -> str | None:
        try:
            out = subprocess.run(
                argv, check=False, capture_output=True, text=True, timeout=10, cwd=ROOT,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() or None if out.returncode == 0 else None

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), "?")
    except OSError:
        pass
    try:
        ws_version = importlib.metadata.version("websockets")
    except importlib.metadata.PackageNotFoundError:
        ws_version = "absent"
    import wsnet  # noqa: PLC0415

    commit = version(["git", "rev-parse", "--short", "HEAD"]) or "?"
    if version(["git", "status", "--porcelain", "--untracked-files=no"]):
        commit += "+dirty"
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "node": version(["node", "--version"]) if shutil.which("node") else None,
        "websockets": ws_version,
        "wsnet": wsnet.__version__,
        "commit": commit,
        "loadavg": os.getloadavg(),
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE),
    }


# -- main --------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="wsnet benchmark: scenarios x servers")
    p.add_argument("--quick", action="store_true", help="every scenario at small scale (<2 min)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument("--servers", default=",".join(SERVERS),
                   help=f"comma-separated subset of {','.join(SERVERS)}")
    p.add_argument("--out", type=Path, default=BENCH / "results", help="results folder")
    p.add_argument("--sample-stride", type=int, default=20,
                   help="every k-th client measures latency (default 20: 5 %%)")
    p.add_argument("--max-sampled", type=int, default=25,
                   help="at most this many latency-measuring clients per worker (default 25)")
    g = p.add_argument_group("the scale scenario (defaults: those of --quick or the full run)")
    g.add_argument("--scale-parts", help="comma-separated subset of a,b,c,sweep")
    g.add_argument("--scale-connections", type=int, help="connections of (a), (b) and (c)")
    g.add_argument("--scale-workers", type=int, help="--workers N of the node in (a) and (b)")
    g.add_argument("--scale-nodes", help="(c): workers of each node, e.g. 3,3")
    g.add_argument("--scale-window", type=float, help="seconds of sending in (a) and (c)")
    g.add_argument("--scale-sweep", help="worker counts of the sweep, e.g. 2,3,4,5,6 ('' for none)")
    g.add_argument("--scale-sweep-connections", type=int, help="connections of the sweep")
    g.add_argument("--scale-broadcasts", type=int, help="(b): how many single broadcasts")
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    big = base.big
    for option, name, convert in (
        ("scale_parts", "parts", lambda v: tuple(x for x in v.split(",") if x)),
        ("scale_connections", "connections", None),
        ("scale_workers", "workers", None),
        ("scale_nodes", "nodes", lambda v: tuple(int(x) for x in v.split(",") if x)),
        ("scale_window", "window", None),
        ("scale_sweep", "sweep", lambda v: tuple(int(x) for x in v.split(",") if x)),
        ("scale_sweep_connections", "sweep_connections", None),
        ("scale_broadcasts", "broadcasts", None),
    ):
        value = getattr(args, option)
        if value is not None:
            change: dict[str, Any] = {name: convert(value) if convert else value}
            big = dataclasses.replace(big, **change)
    if not set(big.parts) <= {"a", "b", "c", "sweep"}:
        p.error("--scale-parts: a subset of a,b,c,sweep")
    scale = dataclasses.replace(
        base, sample_stride=args.sample_stride, max_sampled=args.max_sampled, big=big,
    )
    scenarios = [s for s in args.scenarios.split(",") if s]
    servers = [s for s in args.servers.split(",") if s]
    for name in scenarios:
        if name not in SCENARIOS:
            p.error(f"unknown scenario {name!r}")
    for name in servers:
        if name not in SERVERS:
            p.error(f"unknown server {name!r}")

    # Children inherit this: wsnet workers hold up to ~19k sockets each.
    try:
        raise_nofile(4096)
    except SystemExit as exc:
        p.error(str(exc))

    def terminated(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through every finally: nothing is left running

    signal.signal(signal.SIGTERM, terminated)
    try:
        return run_all(args, scale, scenarios, servers)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr, flush=True)
        return 130
    finally:
        killed = reap_all()
        if killed:
            print(f"killed leftover processes {killed}", file=sys.stderr, flush=True)


def run_all(
    args: argparse.Namespace, scale: Scale, scenarios: list[str], servers: list[str],
) -> int:
    notices: list[str] = []
    if any(s.startswith("node") for s in servers):
        notice = ensure_node_ws()
        if notice:
            print(f"notice: {notice}", flush=True)
            notices.append(notice)
            servers = [s for s in servers if not s.startswith("node")]
    kinds = [SERVERS[s] for s in servers]
    started = datetime.datetime.now().astimezone()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "scale": dataclasses.asdict(scale),
        "machine": machine_info(),
        "servers": [k.name for k in kinds],
        "notices": notices,
        "scenarios": {},
    }
    rows: dict[str, list[Row]] = {}
    t0 = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s]{message}", flush=True)

    for scenario in scenarios:
        log(f" scenario {scenario}")
        rows[scenario] = []
        for kind in kinds:
            if scenario in ("flush", "scale") and kind.name != "wsnet":
                continue
            try:
                if scenario == "scale":
                    scale_rows, scale_problems = scenario_scale(scale, log)
                    rows[scenario] += scale_rows
                    notices += scale_problems
                elif scenario == "idle":
                    rows[scenario] += scenario_idle(kind, scale, log)
                elif scenario == "broadcast":
                    rows[scenario] += scenario_broadcast(kind, scale, log)
                elif scenario == "deflate":
                    rows[scenario] += scenario_broadcast(
                        kind, scale, log, name="deflate", deflate=True, sessions=scale.deflate,
                    )
                elif scenario == "saturation":
                    rows[scenario] += scenario_saturation(kind, scale, log)
                elif scenario == "flush":
                    for flush_ms in (0.0, 50.0):
                        rows[scenario] += scenario_broadcast(
                            kind, scale, log, name="flush", flush_ms=flush_ms, sessions=scale.flush,
                        )
            except RuntimeError as exc:
                notice = f"{scenario} / {kind.name} failed: {exc}"
                log(f"  {notice}")
                notices.append(notice)
        scenario_notices = [n for row in rows[scenario] for n in row_notices(row)]
        scenario_notices += [f"{scenario} / {line}" for line in SERVER_LOGS]
        SERVER_LOGS.clear()
        for notice in scenario_notices:
            log(f"  notice: {notice}")
            notices.append(notice)
        results["scenarios"][scenario] = [
            {"server": r.server, "connections": r.connections, **r.values} for r in rows[scenario]
        ]
    results["elapsed_s"] = round(time.monotonic() - t0, 1)

    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    if rows.get("scale"):
        # The scale scenario also has files of its own, so that a run of it
        # alone (--scenarios scale) leaves latest.md to the whole benchmark.
        scale_results = {
            **results,
            "scenarios": {"scale": results["scenarios"]["scale"]},
            "notices": [n for n in notices if n.startswith("scale")],
        }
        markdown = report(scale_results, {"scale": rows["scale"]})
        for name, text in ((f"scale-{stamp}.json", json.dumps(scale_results, indent=1) + "\n"),
                           (f"scale-{stamp}.md", markdown)):
            (args.out / name).write_text(text)
            written.append(args.out / name)
        if scenarios == ["scale"]:
            print()
            print(markdown)
    if scenarios != ["scale"]:
        png = args.out / f"{stamp}.png"
        notice = chart(rows, png)
        if notice:
            print(f"notice: {notice}")
            notices.append(notice)
        else:
            shutil.copyfile(png, args.out / "latest.png")
            results["chart"] = png.name
            written.append(png)
        markdown = report(results, rows)
        (args.out / f"{stamp}.json").write_text(json.dumps(results, indent=1) + "\n")
        (args.out / "latest.md").write_text(markdown)
        written += [args.out / f"{stamp}.json", args.out / "latest.md"]
        print()
        print(markdown)
    print("results: " + ", ".join(str(w) for w in written))
    print(f"elapsed: {results['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
