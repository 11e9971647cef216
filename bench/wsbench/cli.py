"""The command line of ``bench/run.py``: options, the run of every scenario on
every server, and the result files (``<timestamp>.json``, ``latest.md``, the
chart, and ``scale-<timestamp>.*`` for the scale scenario). Every process started
is killed on the way out, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loadgen import raise_nofile  # bench/ is not a package: from its folder

from wsbench.report import chart, report, row_notices
from wsbench.scale import scenario_scale
from wsbench.scale_chart import chart_runs, latency_series
from wsbench.scenarios import (
    Row,
    scenario_broadcast,
    scenario_idle,
    scenario_saturation,
    scenario_store,
)
from wsbench.servers import PROCESSES, SERVER_LOGS, SERVERS, ensure_node_ws
from wsbench.settings import BENCH, FULL, QUICK, ROOT, SCENARIOS, Scale
from wsbench.storm import scenario_storm


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


def redraw_scale_chart(files: list[Path], out: Path) -> int:
    """``--scale-chart``: one chart of earlier scale runs, e.g. for the README."""
    png = out / "scale-chart.png"
    notice = chart_runs([json.loads(f.read_text()) for f in files], png)
    print(f"notice: {notice}" if notice else f"chart: {png}")
    return 1 if notice else 0


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
    g.add_argument("--scale-parts", help="comma-separated subset of a,noaff,b,c,sweep,stall "
                   "(noaff: (a) with --no-affinity, to compare)")
    g.add_argument("--scale-lighter-rates",
                   help="msg/s per room run before the target in (a), (c), noaff ('' for none)")
    g.add_argument("--scale-connections", type=int, help="connections of (a), (b) and (c)")
    g.add_argument("--scale-workers", type=int, help="--workers N of the node in (a) and (b)")
    g.add_argument("--scale-nodes", help="(c): workers of each node, e.g. 3,3")
    g.add_argument("--scale-window", type=float, help="seconds of sending in (a) and (c)")
    g.add_argument("--scale-sweep", help="worker counts of the sweep, e.g. 2,3,4,5,6 ('' for none)")
    g.add_argument("--scale-sweep-connections", type=int, help="connections of the sweep")
    g.add_argument("--scale-broadcasts", type=int, help="(b): how many single broadcasts")
    g.add_argument("--scale-stall-window", type=float, help="(stall): seconds of sending")
    g.add_argument("--scale-stall-args", help="(stall): more wsnet options, space-separated "
                   "(e.g. --gc-freeze)")
    g.add_argument("--scale-chart", metavar="JSON,...",
                   help="run nothing: draw scale-chart.png in --out from these scale results")
    g = p.add_argument_group("the storm scenario (defaults: those of --quick or the full run)")
    g.add_argument("--storm-connections", help="connections of each storm, e.g. 20000,100000")
    g.add_argument("--storm-workers", type=int, help="--workers N of the node")
    g.add_argument("--storm-rate", type=float, help="msg/s per room of 100 meanwhile")
    args = p.parse_args(argv)
    if args.scale_chart:
        return redraw_scale_chart([Path(f) for f in args.scale_chart.split(",") if f], args.out)
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
        ("scale_stall_window", "stall_window", None),
        ("scale_stall_args", "stall_extra", lambda v: tuple(v.split())),
        ("scale_lighter_rates", "lighter_rates",
         lambda v: tuple(float(x) for x in v.split(",") if x)),
    ):
        value = getattr(args, option)
        if value is not None:
            change: dict[str, Any] = {name: convert(value) if convert else value}
            big = dataclasses.replace(big, **change)
    if not set(big.parts) <= {"a", "noaff", "b", "c", "sweep", "stall"}:
        p.error("--scale-parts: a subset of a,noaff,b,c,sweep,stall")
    storm = base.storm
    for option, name, convert in (
        ("storm_connections", "connections", lambda v: tuple(int(x) for x in v.split(",") if x)),
        ("storm_workers", "workers", None),
        ("storm_rate", "per_room_rate", None),
    ):
        value = getattr(args, option)
        if value is not None:
            storm_change: dict[str, Any] = {name: convert(value) if convert else value}
            storm = dataclasses.replace(storm, **storm_change)
    scale = dataclasses.replace(
        base, sample_stride=args.sample_stride, max_sampled=args.max_sampled, big=big,
        storm=storm,
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
        killed = PROCESSES.reap_all()
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
            if scenario in ("flush", "store", "scale", "storm") and kind.name != "wsnet":
                continue
            try:
                if scenario in ("scale", "storm"):
                    run_scenario = scenario_scale if scenario == "scale" else scenario_storm
                    own_rows, own_problems = run_scenario(scale, log)
                    rows[scenario] += own_rows
                    notices += own_problems
                elif scenario == "idle":
                    rows[scenario] += scenario_idle(kind, scale, log)
                elif scenario == "broadcast":
                    rows[scenario] += scenario_broadcast(kind, scale, log)
                elif scenario == "deflate":
                    rows[scenario] += scenario_broadcast(
                        kind, scale, log, name="deflate", deflate=True, sessions=scale.deflate,
                    )
                elif scenario == "store":
                    rows[scenario] += scenario_store(scale, log)
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
    own = [s for s in ("scale", "storm") if rows.get(s)]
    for scenario in own:
        # The scale and storm scenarios also have files of their own, so that a
        # run of one alone (--scenarios scale) leaves latest.md to the whole benchmark.
        own_results = {
            **results,
            "scenarios": {scenario: results["scenarios"][scenario]},
            "notices": [n for n in notices if n.startswith(scenario)],
        }
        markdown = report(own_results, {scenario: rows[scenario]})
        for name, text in ((f"{scenario}-{stamp}.json", json.dumps(own_results, indent=1) + "\n"),
                           (f"{scenario}-{stamp}.md", markdown)):
            (args.out / name).write_text(text)
            written.append(args.out / name)
        if scenario == "scale" and latency_series(own_results["scenarios"]["scale"]):
            png = args.out / f"scale-{stamp}.png"
            notice = chart_runs([own_results], png)
            if notice:
                print(f"notice: {notice}")
            else:
                written.append(png)
        if len(scenarios) == 1:
            print()
            print(markdown)
    if not set(scenarios) <= {"scale", "storm"}:
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
