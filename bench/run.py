"""``make bench``: wsnet side by side with peer servers, same load generator.

Scenarios (see bench/README.md): idle, broadcast, saturation, deflate, flush.
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
import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import platform
import queue
import re
import resource
import shutil
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

from loadgen import Histogram  # bench/ is not a package: imported from its folder

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
)
SCENARIOS = ("idle", "broadcast", "saturation", "deflate", "flush")


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
    """CPU seconds of the server and each worker, and the machine, at one instant."""

    t: float
    server_cpu: float
    worker_cpu: list[float]
    machine: tuple[int, int]

    @classmethod
    def take(cls, server_pid: int, worker_pids: list[int]) -> Snapshot:
        return cls(
            time.monotonic(),
            proc_cpu_s(server_pid) or 0.0,
            [proc_cpu_s(p) or 0.0 for p in worker_pids],
            machine_jiffies(),
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


class ServerProcess:
    """A server under test, started on port 0; its URL line gives the port."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        self.port = self._read_port(timeout=20.0)

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

    def rss_kb(self) -> int:
        return proc_status_kb(self.pid, "VmRSS") or 0

    def hwm_kb(self) -> int:
        return proc_status_kb(self.pid, "VmHWM") or 0

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read()[-2000:]

    def problems(self) -> str | None:
        """The first warning, error or traceback the server logged, if any."""
        for line in self.stderr().splitlines():
            if re.search(r"WARNING|ERROR|CRITICAL|Traceback|Error:", line):
                return line.strip()[:300]
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
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

    @property
    def ratio(self) -> float:
        return self.delivered / self.expected if self.expected else 0.0

    @property
    def loadgen_busy(self) -> bool:
        return max(self.worker_cpu, default=0.0) >= LOADGEN_BUSY


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
    ) -> None:
        workers = math.ceil(connections / scale.per_worker)
        if senders:
            workers = max(workers, scale.min_workers)
        self.counts = split(connections, workers)
        self.senders = split(min(senders, connections), workers)
        sources = math.ceil(connections / CONNS_PER_SOURCE)
        self.events: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
        self.procs: list[subprocess.Popen[str]] = []
        # Workers start connecting together, once every interpreter is up.
        self.connect_at_ns = time.monotonic_ns() + int((0.5 + 0.15 * workers) * 1e9)
        for i, count in enumerate(self.counts):
            argv = [
                sys.executable, str(BENCH / "loadgen.py"), "--port", str(port),
                "--connections", str(count), "--senders", str(self.senders[i]),
                "--message-bytes", str(scale.message_bytes), "--worker-id", str(i),
                "--sample-stride", str(scale.sample_stride),
                "--max-sampled", str(scale.max_sampled),
                "--connect-timeout", str(connect_timeout), "--drain", str(scale.drain),
                "--connect-at-ns", str(self.connect_at_ns),
            ]
            if deflate:
                argv.append("--deflate")
            if sources > 1:  # beyond one address's ephemeral ports: 127.0.0.2, .3, ...
                argv += ["--source", f"127.0.0.{2 + i % sources}"]
            proc = subprocess.Popen(
                argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
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
        self, server: ServerProcess, rate: float, duration: float, drain: float,
    ) -> RunResult:
        """Send ``rate`` messages/s in total for ``duration`` s, then drain."""
        self.run_id += 1
        start_ns = time.monotonic_ns() + 300_000_000
        total_senders = max(1, sum(self.senders))
        for i, senders in enumerate(self.senders):
            self.send(i, {
                "cmd": "run", "run": self.run_id, "start_ns": start_ns, "duration": duration,
                "rate": rate * senders / total_senders, "drain": drain,
            })
        sleep_until_ns(start_ns)
        before = Snapshot.take(server.pid, self.pids)
        sleep_until_ns(start_ns + int(duration * 1e9))
        after = Snapshot.take(server.pid, self.pids)
        rss, hwm = server.rss_kb(), server.hwm_kb()
        sent_events = self.collect("sent", timeout=duration + 30)
        sent = sum(e["sent"] for e in sent_events)
        for i in range(len(self.procs)):
            self.send(i, {"cmd": "expect", "run": self.run_id, "messages": sent})
        results = self.collect("result", timeout=drain + 30)
        server_cpu, worker_cpu, machine_busy = cpu_percent(before, after)
        hist = Histogram()
        for r in results:
            hist.merge(r["latency"]["counts"], r["latency"]["max_us"])
        receivers = sum(r["receivers"] for r in results)
        delivered = sum(r["delivered"] for r in results)
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
            expected=sent * receivers,
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


# -- reporting ---------------------------------------------------------------


def row_notices(row: Row) -> list[str]:
    """What a reader of one row must know to trust it (or not)."""
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
    args = p.parse_args(argv)
    scale = dataclasses.replace(
        QUICK if args.quick else FULL,
        sample_stride=args.sample_stride,
        max_sampled=args.max_sampled,
    )
    scenarios = [s for s in args.scenarios.split(",") if s]
    servers = [s for s in args.servers.split(",") if s]
    for name in scenarios:
        if name not in SCENARIOS:
            p.error(f"unknown scenario {name!r}")
    for name in servers:
        if name not in SERVERS:
            p.error(f"unknown server {name!r}")

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
        "scale": scale.__dict__,
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
            if scenario == "flush" and kind.name != "wsnet":
                continue
            try:
                if scenario == "idle":
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
    png = args.out / f"{stamp}.png"
    notice = chart(rows, png)
    if notice:
        print(f"notice: {notice}")
        notices.append(notice)
    else:
        shutil.copyfile(png, args.out / "latest.png")
        results["chart"] = png.name
    markdown = report(results, rows)
    (args.out / f"{stamp}.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "latest.md").write_text(markdown)
    print()
    print(markdown)
    print(f"results: {args.out / (stamp + '.json')}, {args.out / 'latest.md'}"
          + ("" if notice else f", {png}"))
    print(f"elapsed: {results['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
