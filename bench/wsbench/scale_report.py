"""The scale scenario's report: one table per part, the targets (p99, exact
delivery, total RSS), the heaviest load that held, one node against two, the
sweep's best N, and the notices that say when a row is not to be trusted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wsbench.fmt import fmt_kb, fmt_ms, fmt_rate
from wsbench.scenarios import Row
from wsbench.settings import (
    OTHER_BUSY,
    SCALE_CPU_PER_DELIVERY_TARGET_US,
    SCALE_P99_TARGET_MS,
    SCALE_RSS_TARGET_KB,
    STALL_MAX_TARGET_MS,
    STALL_P999_TARGET_MS,
)


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

    per = v.get("cpu_us_per_delivery")
    cpu = (f"; wsnet CPU per delivery {per:.1f} us (target <= "
           f"{SCALE_CPU_PER_DELIVERY_TARGET_US:g} us): "
           f"{verdict(per <= SCALE_CPU_PER_DELIVERY_TARGET_US)}" if per is not None else "")
    return (
        f"p99 {fmt_ms(p99)} (target <= {SCALE_P99_TARGET_MS:g} ms): {verdict(p99_ok)}; "
        f"delivered {v['delivered']:,} of {v['expected']:,}, every connection exactly its "
        f"room's messages: {verdict(exact(v))}; total RSS {v['rss_total_kb'] / 1024:,.0f} MiB "
        f"= {v['rss_total_kb'] * 1024 / 1e9:.2f} GB (target <= 1 GB): {verdict(rss_ok)} "
        f"(peak, VmHWM summed: {v['hwm_total_kb'] * 1024 / 1e9:.2f} GB){cpu}"
    )


def stall_targets(v: dict[str, Any]) -> str:
    """The worst latencies of one process over the long window, against the issue's
    targets (max latency bounds any stall of the loop: a stall delays every message
    sent during it)."""
    p999, worst = v.get("p999_ms"), v.get("max_ms")

    def verdict(value: float | None, target: float) -> str:
        return "met" if value is not None and value <= target else "**not met**"

    return (f"Over {v.get('samples', 0):,} samples: p99.9 {fmt_ms(p999)} (target <= "
            f"{STALL_P999_TARGET_MS:g} ms): {verdict(p999, STALL_P999_TARGET_MS)}; max "
            f"{fmt_ms(worst)} (no stall over {STALL_MAX_TARGET_MS:g} ms): "
            f"{verdict(worst, STALL_MAX_TARGET_MS)}; every message delivered: "
            f"{'met' if exact(v) else '**not met**'}.{loop_line(v)}")


def loop_line(v: dict[str, Any]) -> str:
    """What the server's own loop saw of the window (its /metrics): whether a
    stall the clients measured was the server's."""
    if "ticks" not in v:
        return ""
    line = (f" The server's loop: {v['ticks_late']:,} of {v['ticks']:,} flush ticks ran "
            f"over 100 ms late (the latest within {v['tick_worst_le_ms']:g} ms)")
    if "gc_pauses" in v:
        line += (f"; {v['gc_pauses']:,} collector pauses, {v['gc_total_ms']:,.0f} ms in all, "
                 f"{v['gc_long']:,} over 50 ms (the longest within {v['gc_worst_le_ms']:g} ms)")
    return line + "."


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


def beside_a(rows: list[Row], a_rows: list[Row], *, a_first: bool) -> list[Row]:
    """Each of ``rows`` next to part (a)'s run at the same rate, if (a) ran it."""
    ones = {r.values["per_room_rate"]: r for r in a_rows}
    out: list[Row] = []
    for row in rows:
        one = ones.get(row.values["per_room_rate"])
        out += [row] if one is None else [one, row] if a_first else [row, one]
    return out


def scale_report(rows: list[Row]) -> list[str]:
    by_part: dict[str, list[Row]] = {}
    for row in rows:
        by_part.setdefault(row.values["part"], []).append(row)
    out = [
        "Each worker of `--workers N` is a node of its own on one Redis (`--redis`): client "
        "g joins room `r{g % rooms}` in its URL, the load generators hold consecutive "
        "blocks of g, the workers share one accept queue, and room affinity hands each "
        "connection to the worker that owns its room (except in the no-affinity rows, "
        "where every room has members on every worker). Latency: send to receipt on sampled "
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
    if "noaff" in by_part:
        ones = {r.values["per_room_rate"]: r for r in by_part.get("a", [])}
        paired = beside_a(by_part["noaff"], by_part.get("a", []), a_first=False)
        out += ["", "### Room affinity: (a) without it, then with it", "",
                "`--no-affinity`: each connection stays on the worker that accepted it, so "
                "every room has members on every worker (as before affinity); with it, the "
                "accepting worker hands the connection to the worker that owns its room.", "",
                *scale_table(paired), "",
                "| Msg/s per room | wsnet CPU per delivery without / with affinity |",
                "|---:|---:|"]
        for row in by_part["noaff"]:
            one = ones.get(row.values["per_room_rate"])
            before = row.values.get("cpu_us_per_delivery")
            after = one.values.get("cpu_us_per_delivery") if one is not None else None
            if before is not None:
                out.append(f"| {row.values['per_room_rate']:g} | {before:.1f} us / "
                           f"{'-' if after is None else f'{after:.1f} us'} |")
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
        interleaved = beside_a(by_part["c"], by_part.get("a", []), a_first=True)
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
    if "stall" in by_part:
        row = by_part["stall"][0]
        v = row.values
        out += ["", f"### (stall) one process, {row.connections:,} connections, "
                f"{v['window_s'] / 60:g} minutes at {v['per_room_rate']:g} msg/s per room", "",
                *scale_table(by_part["stall"]), "", stall_targets(v)]
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
