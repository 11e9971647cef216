"""The scenarios on one server at a time: idle, broadcast (also run as deflate and
flush) and saturation. A session starts the server, measures it empty, opens the
connections and measures again; each run of it becomes one ``Row`` of a table.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from wsbench.driver import LoadGen, RunResult, WorkerSpec, sleep_until_ns, split, summed_errors
from wsbench.fmt import fmt_ms
from wsbench.procfs import proc_cpu_s
from wsbench.scrape import commit_stats, scrape
from wsbench.servers import ServerKind, ServerProcess, running_server, wsnet_store
from wsbench.settings import LOADGEN_BUSY, SATURATION_DELIVERED, SATURATION_P99_MS, Scale


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
    rooms: int = 0,
) -> Iterator[Session]:
    """Start the server, measure it empty, open the connections, measure again.
    With ``rooms``, client g joins room ``r{g % rooms}`` and each room has one
    sender (``senders`` is then ignored)."""
    with running_server(kind, deflate, flush_ms) as server:
        time.sleep(scale.settle)  # let the empty server settle before its baseline
        empty = server.rss_kb()
        specs = _room_specs(server.port, connections, rooms, scale) if rooms else None
        loadgen = LoadGen(
            server.port, connections, scale, deflate=deflate,
            senders=rooms if rooms else senders,
            connect_timeout=30 + connections / 200, specs=specs,
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


def _room_specs(port: int, connections: int, rooms: int, scale: Scale) -> list[WorkerSpec]:
    """Load generators whose clients fill ``rooms`` rooms, one sender per room."""
    workers = max(scale.min_workers, math.ceil(connections / scale.per_worker))
    counts = split(connections, workers)
    senders = split(rooms, workers)
    return [
        WorkerSpec(port, counts[i], senders[i], [
            "--rooms", str(rooms), "--room-offset", str(sum(counts[:i])),
            "--sender-room-first", str(sum(senders[:i])),
        ])
        for i in range(workers)
    ]


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


def scenario_store(scale: Scale, log: Callable[[str], None]) -> list[Row]:
    """The durable default against memory, the same load one after the other:
    clients in rooms, each room's messages committed once per tick."""
    rows = []
    for store in ("memory", "sqlite"):
        kind = wsnet_store(store)
        for n, rates in scale.store:
            with session(kind, n, scale, rooms=scale.store_rooms) as s:
                before = scrape(s.server.port, "wsnet_chat_store_commit_seconds")
                for rate in rates:
                    r = s.loadgen.run(s.server, rate, scale.duration, scale.drain)
                    row = run_row("store", kind.name, s, r)
                    row.values["rooms"] = scale.store_rooms
                    after = scrape(s.server.port, "wsnet_chat_store_commit_seconds")
                    commits = commit_stats(before, after)
                    before = after
                    row.values.update(commits)
                    rows.append(row)
                    timing = (f", commits {commits['commits']} (mean "
                              f"{commits['commit_mean_ms']:.2f} ms, p99 <= "
                              f"{commits['commit_p99_ms']:g} ms)" if commits else "")
                    log(f"  store {kind.name} {n} in {scale.store_rooms} rooms x {rate:g}/s: "
                        f"p50 {fmt_ms(r.p50_ms)}, p99 {fmt_ms(r.p99_ms)}, "
                        f"delivered {r.ratio:.2%}, server CPU {r.server_cpu:.0f} %{timing}")
    return rows
