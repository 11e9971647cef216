"""The report of a run: a Markdown table per scenario, the wsnet/peer ratios,
the deflate and flush trade-offs, the notices a reader needs to trust a row, and
the chart (latency and memory against connections, when matplotlib is there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsbench.fmt import fmt_kb, fmt_ms, fmt_rate, ratio
from wsbench.scale_report import scale_notices, scale_report
from wsbench.scenarios import Row
from wsbench.settings import (
    LOADGEN_BUSY,
    SATURATION_DELIVERED,
    SATURATION_P99_MS,
    STORE_CPU_RATIO,
    STORE_P99_EXTRA_MS,
)
from wsbench.storm import storm_notices, storm_report


def row_notices(row: Row) -> list[str]:
    """What a reader of one row must know to trust it (or not)."""
    if row.scenario == "scale":
        return scale_notices(row)
    if row.scenario == "storm":
        return storm_notices(row)
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
    "store": "Durable store: SQLite (the default) vs --store memory, clients in rooms",
    "scale": "Scale: wsnet --workers N on one Redis, rooms spanning workers",
    "storm": "Storm: every client cut off by a restart at once, reconnecting and resuming",
}


#: The scale-out issue's target for handshakes into one idle wsnet process.
TARGET_HANDSHAKES_PER_S = 8000


def handshake_target(rows: list[Row]) -> list[str]:
    """wsnet's best handshake rate over the idle sizes, judged by the target."""
    ours = [r for r in rows if r.server == "wsnet" and r.values.get("handshakes_per_s")]
    if not ours:
        return []
    best = max(ours, key=lambda r: r.values["handshakes_per_s"])
    rate = best.values["handshakes_per_s"]
    verdict = "met" if rate >= TARGET_HANDSHAKES_PER_S else "**not met**"
    return [f"Handshakes into one idle wsnet process (target >= {TARGET_HANDSHAKES_PER_S:,}/s): "
            f"{verdict} (best {rate:,.0f}/s, at {best.connections:,} connections)."]


def store_cost(rows: list[Row]) -> list[str]:
    """The store against memory at each load, judged by the targets."""
    out = []
    by_load: dict[tuple[int, float], dict[str, Row]] = {}
    for row in rows:
        by_load.setdefault((row.connections, row.values["rate"]), {})[row.server] = row
    for (n, rate), pair in sorted(by_load.items()):
        memory, sqlite = pair.get("wsnet (memory)"), pair.get("wsnet (sqlite)")
        if memory is None or sqlite is None:
            continue
        m, q = memory.values, sqlite.values
        if m["p99_ms"] is None or q["p99_ms"] is None or not m["cpu_pct"]:
            continue
        extra = q["p99_ms"] - m["p99_ms"]
        cpu = q["cpu_pct"] / m["cpu_pct"]
        met = extra <= STORE_P99_EXTRA_MS and cpu <= STORE_CPU_RATIO
        out.append(
            f"- {n:,} clients in {m.get('rooms', '?')} rooms x {rate:g} msg/s: the store adds "
            f"{extra:+.1f} ms at p99 (target <= {STORE_P99_EXTRA_MS:g}) and uses {cpu:.2f}x the "
            f"CPU (target <= {STORE_CPU_RATIO:g}x): {'met' if met else '**not met**'}",
        )
    return out


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
        if scenario == "storm":
            out += ["", f"## {TITLES[scenario]}", "", *storm_report(scenario_rows)]
            continue
        out += ["", f"## {TITLES[scenario]}", "", *table(scenario_rows, scenario)]
        if scenario == "saturation":
            best = saturation_best(scenario_rows)
            out += ["", "Highest sustained deliveries/s: " + (", ".join(
                f"{k} {fmt_rate(v)}" + ("" if k in saturated(scenario_rows) else
                                        " (held every step: not saturated)")
                for k, v in best.items()) or "none")]
        lines = ratios(scenario_rows, scenario)
        if scenario == "idle":
            lines += handshake_target(scenario_rows)
        if scenario == "deflate":
            lines += deflate_cost(scenario_rows, rows.get("broadcast", []))
        if scenario == "flush":
            lines += flush_tradeoff(scenario_rows)
        if scenario == "store":
            lines += store_cost(scenario_rows)
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
