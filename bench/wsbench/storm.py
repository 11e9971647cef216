"""The storm scenario: every client cut off at once, as in a deploy without a
rolling restart. ``--workers N --redis`` with connections in rooms of 100
(scale.py's set-up); the load generators run with ``--resume``, so each client
behaves as the chat page: messages go on at a light rate, the node is stopped
(SIGTERM: close 1001 to everyone) and started again on its port, and every
client reconnects with the page's backoff and jitter and resumes its room with
``since``/``epoch``; senders send again what they never saw echoed. Measured:
when each client was back in its room (from the moment the restart began),
against the issue's 99 % within 20 s and 100 % within 40 s, and that every
client saw each message of its room exactly once and in order. See "The storm
scenario" in bench/README.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from wsbench.cluster import rooms_session
from wsbench.scale import layout_label, run_parts
from wsbench.scale_report import scale_errors_cell
from wsbench.scenarios import Row
from wsbench.settings import (
    STORM_ALL_S,
    STORM_MOST,
    STORM_MOST_S,
    Scale,
)


def resume_values(storm: dict[str, Any], storm_ns: int) -> dict[str, Any]:
    """How long the clients cut off took to be back in their rooms, from ``storm_ns``."""
    delays = sorted((t - storm_ns) / 1e9 for t in storm.get("resumed_ns", []) if t)
    dropped = storm.get("dropped", 0)

    def within(seconds: float) -> float:
        return sum(1 for d in delays if d <= seconds) / dropped if dropped else 0.0

    def pct(p: float) -> float | None:
        return round(delays[min(len(delays) - 1, int(p / 100 * len(delays)))], 2) if delays \
            else None

    return {
        "dropped": dropped,
        "resumed": len(delays),
        "never_resumed": dropped - len(delays),
        "resumed_within_most": round(within(STORM_MOST_S), 6),
        "resumed_within_all": round(within(STORM_ALL_S), 6),
        "resume_p50_s": pct(50),
        "resume_p99_s": pct(99),
        "resume_max_s": round(delays[-1], 2) if delays else None,
        **{k: storm.get(k, 0) for k in ("missing", "repeats", "gap_events", "resets",
                                         "attempts", "resent", "unacked")},
    }


def exactly_once(v: dict[str, Any]) -> bool:
    """Every client saw each message of its room once, in order, nothing lost."""
    return (
        v.get("expected", 0) > 0
        and v["delivered"] == v["expected"]
        and not v.get("short_conns") and not v.get("over_conns")
        and not any(v.get(k) for k in ("missing", "repeats", "gap_events", "resets", "unacked"))
    )


def storm_part(connections: int, scale: Scale, log: Callable[[str], None]) -> Row:
    sizes = scale.storm
    rooms = max(1, connections // sizes.room_size)
    layout = (sizes.workers,)
    with rooms_session(
        layout, connections, rooms, scale, sample_stride=19, max_sampled=250,
        drain=sizes.drain, loadgen_options=("--resume",),
    ) as s:
        log(f"  storm {layout_label(layout)}: {s.connections:,} connected, {s.joined:,} joined "
            f"in {s.connect_s:.1f} s ({s.handshakes_per_s:,.0f} handshakes/s)")
        marks: dict[str, float] = {}

        def restart() -> None:
            marks["storm_ns"] = time.monotonic_ns()
            marks["stop_s"], marks["start_s"] = s.cluster.restart()
            marks["restart_s"] = (time.monotonic_ns() - marks["storm_ns"]) / 1e9

        r = s.loadgen.run(s.cluster, sizes.per_room_rate * rooms, sizes.window, sizes.drain,
                          midway=(sizes.restart_at, restart))
        v: dict[str, Any] = {
            "layout": layout_label(layout),
            "workers": sizes.workers,
            "wanted": s.wanted,
            "joined": s.joined,
            "rooms": rooms,
            "room_size": sizes.room_size,
            "per_room_rate": sizes.per_room_rate,
            "window_s": sizes.window,
            "restart_at_s": sizes.restart_at,
            "handshakes_per_s": round(s.handshakes_per_s),
            "connect_s": round(s.connect_s, 1),
            "restart_s": round(marks.get("restart_s", 0.0), 2),
            "stop_s": round(marks.get("stop_s", 0.0), 2),
            "start_s": round(marks.get("start_s", 0.0), 2),
            "sent": r.sent,
            "receivers": r.receivers,
            "delivered": r.delivered,
            "expected": r.expected,
            **r.rooms,
            "errors": r.errors,
            "lost_connections": r.lost,
            "closed_by_server": r.closed_by_server,
            "p50_ms": r.p50_ms,
            "p99_ms": r.p99_ms,
            "max_ms": r.max_ms,
            "loadgen_cpu_pct": [round(c, 1) for c in r.worker_cpu],
            "machine_busy_pct": round(r.machine_busy, 1),
            **resume_values(r.storm, int(marks.get("storm_ns", 0))),
        }
        v["exactly_once"] = exactly_once(v)
        log(f"  storm {connections:,}: restart took {v['restart_s']:.1f} s (stop "
            f"{v['stop_s']:.1f} s, start {v['start_s']:.1f} s); of {v['dropped']:,} "
            f"cut off {v['resumed_within_most']:.2%} back within {STORM_MOST_S:g} s, "
            f"{v['resumed_within_all']:.2%} within {STORM_ALL_S:g} s (p50/p99/max "
            f"{v['resume_p50_s']} / {v['resume_p99_s']} / {v['resume_max_s']} s); delivered "
            f"{r.delivered:,}/{r.expected:,}, missing {v['missing']}, repeats {v['repeats']}")
    v.update({"server_log": s.server_log[:20], "server_log_lines": len(s.server_log)})
    return Row("storm", "wsnet", s.connections, v)


def scenario_storm(scale: Scale, log: Callable[[str], None]) -> tuple[list[Row], list[str]]:
    """One storm per size; a size that fails is a notice, and the others still run."""
    def one(connections: int) -> Callable[[], list[Row]]:
        return lambda: [storm_part(connections, scale, log)]

    return run_parts([(f"storm {n:,}", one(n)) for n in scale.storm.connections], log)


def storm_targets(v: dict[str, Any]) -> str:
    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    return (
        f"{STORM_MOST:.0%} resumed within {STORM_MOST_S:g} s: "
        f"{verdict(v['resumed_within_most'] >= STORM_MOST)} ({v['resumed_within_most']:.2%}); "
        f"100 % within {STORM_ALL_S:g} s: {verdict(v['resumed_within_all'] >= 1.0)} "
        f"({v['resumed_within_all']:.2%}); nothing lost or repeated: "
        f"{verdict(v['exactly_once'])}"
    )


def storm_report(rows: list[Row]) -> list[str]:
    out = [
        "`--workers N --redis`, rooms of 100 (client g joins `r{g % rooms}`); messages go "
        "on at the rate shown, and the node is stopped (SIGTERM: close 1001 to every "
        "client) and started again on its port that far into the window. Each client "
        "reconnects as the chat page does (full jitter over 0.5 s doubling to 15 s; an "
        "attempt not done in 10 s counts as failed) with `since`/`epoch`, and senders resend "
        "by `cid` what they never saw echoed. Back: the client's join answer after the "
        "restart began. Delivered: messages numbered one above the last the client saw; "
        "missing: numbers skipped; repeats: numbers seen again (not counting answers to a "
        "client's own resend).",
        "",
        "| Connections | Initial handshakes/s | Restart took (stop + start) | Cut off | "
        f"Back within {STORM_MOST_S:g} s | within {STORM_ALL_S:g} s | Back p50 / p99 / max | "
        "Never | Delivered | Missing / repeats / gaps / resets | Errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        v = row.values
        spread = " / ".join("-" if v[k] is None else f"{v[k]:.1f} s"
                            for k in ("resume_p50_s", "resume_p99_s", "resume_max_s"))
        delivered = f"{v['delivered']:,} / {v['expected']:,}"
        if v.get("short_conns") or v.get("over_conns"):
            delivered += f" ({v.get('short_conns', 0):,} short, {v.get('over_conns', 0):,} over)"
        out.append(
            f"| {row.connections:,} | {v['handshakes_per_s']:,} | {v['restart_s']:.1f} s "
            f"({v.get('stop_s', 0):.1f} + {v.get('start_s', 0):.1f}) | "
            f"{v['dropped']:,} | {v['resumed_within_most']:.2%} | "
            f"{v['resumed_within_all']:.2%} | {spread} | {v['never_resumed']:,} | {delivered} | "
            f"{v['missing']:,} / {v['repeats']:,} / {v['gap_events']:,} / {v['resets']:,} | "
            f"{scale_errors_cell(v)} |"
        )
    for row in rows:
        v = row.values
        out += ["", f"Targets at {row.connections:,} ({v['per_room_rate']:g} msg/s per room, "
                f"restart {v['restart_at_s']:g} s into a {v['window_s']:g} s window): "
                f"{storm_targets(v)}."]
    return out


def storm_notices(row: Row) -> list[str]:
    v = row.values
    notes = []
    if row.connections < v["wanted"]:
        notes.append(f"{v['wanted'] - row.connections:,} connections missing before the storm")
    if v.get("never_resumed"):
        notes.append(f"{v['never_resumed']:,} clients cut off were not back by the end")
    if v.get("unacked"):
        notes.append(f"{v['unacked']:,} messages never echoed to their senders")
    if v.get("server_log_lines"):
        notes.append(f"wsnet logged {v['server_log_lines']} warning/error lines, first: "
                     f"{v['server_log'][0]}")
    return [f"storm / {row.connections:,}: {n}" for n in notes]
