"""The load generator's driver: ``bench/loadgen.py`` worker processes, spread
over the connections and source addresses, driven by one JSON line per command
(``run``, ``expect``, ``stop``), and their answers added up into one
``RunResult`` per run, with the server's and the workers' CPU from ``/proc``.
"""

from __future__ import annotations

import json
import math
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from loadgen import Histogram  # bench/ is not a package: from its folder
from support.procs import kill_process

from wsbench.procfs import Snapshot, cpu_by_pid, cpu_percent
from wsbench.servers import PROCESSES
from wsbench.settings import BENCH, CONNS_PER_SOURCE, LOADGEN_BUSY, Scale


class Measured(Protocol):
    """What a run measures: a ServerProcess, or a cluster of them and Redis."""

    def cpu_pids(self) -> list[int]: ...
    def rss_kb(self) -> int: ...
    def hwm_kb(self) -> int: ...


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
    p999_ms: float | None
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
    #: --resume: the workers' reconnect counts added up, and when each client
    #: cut off in the run was back in its room (``resumed_ns``, 0: never).
    storm: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.delivered / self.expected if self.expected else 0.0

    @property
    def loadgen_busy(self) -> bool:
        return max(self.worker_cpu, default=0.0) >= LOADGEN_BUSY


def source_options(worker: int, connections: int) -> list[str]:
    """``--source`` options for one load generator: addresses of its own,
    127.0.(worker + 1).2, .3, ..., at most ``CONNS_PER_SOURCE`` connections
    each. From one address for all, connect() itself slowed as that pair's
    ephemeral ports filled, and capped every server's handshake rate."""
    if not 0 <= worker < 254:
        raise ValueError("at most 254 load generators (127.0.1.x to 127.0.254.x)")
    count = max(1, math.ceil(connections / CONNS_PER_SOURCE))
    return [opt for j in range(count) for opt in ("--source", f"127.0.{worker + 1}.{2 + j}")]


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
            specs = [
                WorkerSpec(port, count, sending, source_options(i, count))
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
            proc = PROCESSES.spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
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
        self, server: Measured, rate: float, duration: float, drain: float,
        midway: tuple[float, Callable[[], None]] | None = None,
    ) -> RunResult:
        """Send ``rate`` messages/s in total for ``duration`` s, then drain.
        ``server`` is a ServerProcess or a cluster of processes (cluster.py);
        ``midway`` (seconds, action): what to do that long into the window
        (the storm scenario restarts the server)."""
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
        if midway is not None:
            sleep_until_ns(start_ns + int(midway[0] * 1e9))
            midway[1]()
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
            p999_ms=ms(99.9),
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
            storm=storm_checks(results),
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
        for proc in self.procs:  # they exit on "stop"; SIGKILL for one that does not
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                kill_process(proc, deadline=5)
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


def storm_checks(results: list[dict[str, Any]]) -> dict[str, Any]:
    """--resume: the workers' counts added up, their resume times joined."""
    storms = [r["storm"] for r in results if "storm" in r]
    if not storms:
        return {}
    total: dict[str, Any] = {k: sum(s[k] for s in storms) for k, v in storms[0].items()
                             if isinstance(v, int) and k != "first_drop_ns"}
    total["first_drop_ns"] = min((s["first_drop_ns"] for s in storms if s["first_drop_ns"]),
                                 default=0)
    total["resumed_ns"] = [t for s in storms for t in s["resumed_ns"]]
    return total


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
