"""The scale scenario's chart: latency against load at the largest size, with
the 120 ms p99 target, from one run or several (``--scale-chart``), so that a
README can show how far from the target each run was and where it saturated.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: The issue's target: p99 at most this at 100,000 connections.
TARGET_P99_MS = 120.0

#: (msg/s per room, p50 ms, p99 ms), by load.
Points = list[tuple[float, float, float]]


def latency_series(rows: Iterable[dict[str, Any]], prefix: str = "") -> dict[str, Points]:
    """Per layout, the sending windows of parts (a), noaff and (c) at the
    largest connection count among them; idle windows and windows with no
    latency samples are left out."""
    windows = [r for r in rows if r.get("part") in ("a", "noaff", "c")
               and r.get("per_room_rate") and r.get("p99_ms") is not None]
    if not windows:
        return {}
    size = max(r["connections"] for r in windows)
    series: dict[str, Points] = {}
    for r in windows:
        if r["connections"] != size:
            continue
        label = f"{prefix}{r['layout']}{', no affinity' if r.get('affinity') is False else ''}"
        series.setdefault(label, []).append(
            (float(r["per_room_rate"]), float(r["p50_ms"]), float(r["p99_ms"])))
    return {label: sorted(points) for label, points in series.items()}


def draw(series: dict[str, Points], path: Path, title: str) -> str | None:
    """Write the chart; None, or a notice saying why there is none."""
    if not series:
        return "no scale chart: no sending window of part (a), noaff or (c)"
    try:
        import matplotlib  # noqa: PLC0415  (optional extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return "matplotlib is not importable: no scale chart (pip install -e '.[bench]')"
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for label, points in series.items():
        xs = [p[0] for p in points]
        line = ax.plot(xs, [p[2] for p in points], marker="o", label=f"{label} p99")[0]
        ax.plot(xs, [p[1] for p in points], marker=".", linestyle="--",
                color=line.get_color(), label=f"{label} p50")
    ax.axhline(TARGET_P99_MS, color="red", linewidth=1, linestyle=":",
               label=f"target p99 {TARGET_P99_MS:g} ms")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("msg/s per room of 100 (1 = the target load)")
    ax.set_ylabel("send to receipt, ms")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def chart_runs(runs: Iterable[dict[str, Any]], path: Path) -> str | None:
    """One chart of several runs' results (their JSON), each labelled with its day."""
    series: dict[str, Points] = {}
    sizes: set[int] = set()
    for results in runs:
        rows = results.get("scenarios", {}).get("scale", [])
        day = str(results.get("started", ""))[:10]
        found = latency_series(rows, prefix=f"{day} " if day else "")
        sizes.update(r["connections"] for r in rows if r.get("part") in ("a", "noaff", "c"))
        series.update(found)
    size = f"{max(sizes):,} connections" if sizes else "scale"
    return draw(series, path, f"{size} in rooms of 100: latency against load")
