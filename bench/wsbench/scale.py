"""The scale scenario: wsnet only, ``--workers N`` processes on one port
(SO_REUSEPORT) and a Redis backplane, up to 100,000 connections in rooms whose
members are spread over load-generator processes and hence over workers, so every
room spans workers through Redis. Parts: (a) rooms of 100 at 1 msg/s each, (b)
one broadcast to everyone in one room, (c) (a) on one node against two nodes, a
sweep of N, and (stall) one process for ten minutes. See "The scale scenario" in bench/README.md.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any

from wsbench.cluster import RoomsSession, rooms_session
from wsbench.driver import RunResult
from wsbench.fmt import fmt_kb, fmt_ms, fmt_rate
from wsbench.scale_report import loop_line
from wsbench.scenarios import Row
from wsbench.scrape import loop_stats, scrape_loop
from wsbench.settings import SCALE_PER_LOADGEN, Scale


def layout_label(layout: tuple[int, ...], extra: tuple[str, ...] = ()) -> str:
    if "--no-affinity" in extra:
        return layout_label(layout) + " (no affinity)"
    if len(layout) == 1:
        return f"1 node x {layout[0]} workers" if layout[0] > 1 else "1 node, 1 process"
    if len(set(layout)) == 1:
        return f"{len(layout)} nodes x {layout[0]} worker{'s' if layout[0] > 1 else ''}"
    return " + ".join(f"{w}" for w in layout) + " workers"


def rooms_values(s: RoomsSession, r: RunResult | None) -> dict[str, Any]:
    """Everything measured about one session (and one run of it, if any)."""
    v: dict[str, Any] = {
        "layout": layout_label(s.cluster.layout, s.cluster.extra),
        "affinity": "--no-affinity" not in s.cluster.extra,
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
        "p999_ms": r.p999_ms,
        "max_ms": r.max_ms,
        "samples": r.samples,
        **r.rooms,
        "errors": r.errors,
        "lost_connections": r.lost,
        "closed_by_server": r.closed_by_server,
        "cpu_wsnet_pct": round(sum(c for p, c in r.cpu_by_pid.items() if p != redis_pid), 1),
        "cpu_redis_pct": round(r.cpu_by_pid.get(redis_pid, 0.0), 1),
        # CPU seconds of every wsnet process per delivery (the window's share of
        # a core / deliveries per second), in microseconds.
        "cpu_us_per_delivery": round(
            sum(c for p, c in r.cpu_by_pid.items() if p != redis_pid) / 100
            / r.deliveries_per_s * 1e6, 2) if r.deliveries_per_s else None,
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
    extra: tuple[str, ...] = (),
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
        sample_stride=19, max_sampled=250, drain=sizes.drain, extra=extra,
    ) as s:
        log(f"  scale ({part}) {layout_label(layout, extra)}: {s.connections:,} connected, "
            f"{s.joined:,} joined in {s.connect_s:.1f} s ({s.handshakes_per_s:,.0f} "
            "handshakes/s)")
        loads = [(0.0, idle_window)] if idle_window > 0 else []
        loads += [(rate, window) for rate in sorted(rates)]
        # One process answers every scrape: its loop's own view of the window.
        single = s.cluster.layout == (1,)
        for rate, seconds in loads:
            before = scrape_loop(s.cluster.ports[0]) if single else None
            r = s.loadgen.run(s.cluster, rate * rooms, seconds, sizes.drain)
            values = rooms_values(s, r)
            if before is not None:
                values.update(loop_stats(before, scrape_loop(s.cluster.ports[0])))
            values.update({"part": part, "room_size": sizes.room_size, "per_room_rate": rate,
                           "target_load": rate == sizes.per_room_rate, "window_s": seconds})
            rows.append(Row("scale", "wsnet", s.connections, values))
            log(f"  scale ({part}) {values['layout']} at {rate:g} msg/s per room: p50/p99/max "
                f"{fmt_ms(r.p50_ms)} / {fmt_ms(r.p99_ms)} / {fmt_ms(r.max_ms)}, delivered "
                f"{r.ratio:.4%}, {fmt_rate(r.deliveries_per_s)} deliveries/s, RSS "
                f"{fmt_kb(values['rss_total_kb'])}, CPU wsnet {values['cpu_wsnet_pct']:.0f} % "
                f"redis {values['cpu_redis_pct']:.0f} % other {values['cpu_other_pct']:.0f} %"
                f"{loop_line(values)}")
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
    parts: list[tuple[str, Callable[[], list[Row]]]] = []
    loads = (*sizes.lighter_rates, sizes.per_room_rate)
    if "a" in sizes.parts:
        parts.append(("a", lambda: scale_rooms_part(
            "a", (sizes.workers,), sizes.connections, sizes.window, scale=scale, rates=loads,
            idle_window=sizes.idle_window, log=log)))
    if "noaff" in sizes.parts:  # (a) again as every worker did before affinity
        parts.append(("noaff", lambda: scale_rooms_part(
            "noaff", (sizes.workers,), sizes.connections, sizes.window, scale=scale,
            rates=loads, log=log, extra=("--no-affinity",))))
    if "b" in sizes.parts:
        parts.append(("b", lambda: scale_broadcast_part(scale, log)))
    if "c" in sizes.parts:
        parts.append(("c", lambda: scale_rooms_part(
            "c", sizes.nodes, sizes.connections, sizes.window, scale=scale, rates=loads,
            idle_window=sizes.idle_window, log=log)))
    if "stall" in sizes.parts:  # one process, a long window: the worst latencies
        parts.append(("stall", lambda: scale_rooms_part(
            "stall", (1,), sizes.stall_connections, sizes.stall_window, scale=scale,
            rates=(sizes.per_room_rate,), log=log, extra=sizes.stall_extra)))
    if "sweep" in sizes.parts:
        for n in sizes.sweep:
            parts.append((f"sweep N={n}", functools.partial(
                scale_rooms_part, "sweep", (n,), sizes.sweep_connections, sizes.sweep_window,
                scale=scale, rates=(sizes.per_room_rate,), log=log,
            )))
    return run_parts([(f"scale ({name})", part) for name, part in parts], log)


def run_parts(
    parts: list[tuple[str, Callable[[], list[Row]]]], log: Callable[[str], None],
) -> tuple[list[Row], list[str]]:
    """Each part in turn (label, run): a part that fails is a notice starting
    with its label, and the others still run."""
    rows: list[Row] = []
    notices: list[str] = []
    for label, part in parts:
        try:
            rows += part()
        except RuntimeError as exc:
            notice = f"{label} failed: {exc}"
            log(f"  {notice}")
            notices.append(notice)
        time.sleep(2.0)  # the last session's sockets close before the next starts
    return rows, notices
