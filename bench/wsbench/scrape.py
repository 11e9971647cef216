"""The server's own histograms, read from ``/metrics`` before and after a
window: what the store's commits cost, and whether the loop itself stalled
(flush ticks that ran late, collector pauses). A scrape reaches one process:
exact for one, one worker's view under ``--workers``."""

from __future__ import annotations

import math
import urllib.request
from typing import Any

__all__ = ["Buckets", "commit_stats", "loop_stats", "scrape", "scrape_loop"]

#: Cumulative counts by upper bound (``math.inf`` for +Inf), plus "sum" and
#: "count" under those names.
Buckets = dict[float | str, float]

#: Ticks later than this count as a stall of the loop (the stall target's 100 ms).
LATE_S = 0.1
#: Collector pauses longer than this are counted apart.
LONG_GC_S = 0.05


def scrape(port: int, family: str, labels: str = "") -> Buckets:
    """One histogram of the process at ``port`` (``labels``: a label's
    ``name="value"`` the series must carry); series that differ in other
    labels are added up. Empty if the family is missing."""
    return parse_histogram(_exposition(port), family, labels)


def scrape_loop(port: int) -> dict[str, Buckets]:
    """The loop's two stall histograms, with one request."""
    text = _exposition(port)
    return {"ticks": parse_histogram(text, "wsnet_tick_lateness_seconds"),
            "gc": parse_histogram(text, "wsnet_gc_pause_seconds")}


def _exposition(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def parse_histogram(text: str, family: str, labels: str = "") -> Buckets:
    out: Buckets = {}
    for line in text.splitlines():
        if not line.startswith(family + "_") or (labels and labels not in line):
            continue
        name, raw = line.rsplit(" ", 1)
        value = float(raw)
        if "_bucket{" in name:
            le = name.split('le="', 1)[1].split('"', 1)[0]
            key: float | str = math.inf if le == "+Inf" else float(le)
        elif name.split("{", 1)[0].endswith("_sum"):
            key = "sum"
        elif name.split("{", 1)[0].endswith("_count"):
            key = "count"
        else:
            continue
        out[key] = out.get(key, 0.0) + value
    return out


def _window(before: Buckets, after: Buckets) -> tuple[float, list[tuple[float, float]]]:
    """Observations in the window, and its cumulative buckets ascending."""
    count = after.get("count", 0.0) - before.get("count", 0.0)
    buckets = sorted((k, v - before.get(k, 0.0)) for k, v in after.items()
                     if isinstance(k, float))
    return count, buckets


def _over(buckets: list[tuple[float, float]], count: float, bound: float) -> int:
    """Observations above ``bound`` (a bucket bound of the family)."""
    within = next((seen for le, seen in buckets if le >= bound), count)
    return int(count - within)


def _worst(buckets: list[tuple[float, float]], count: float) -> float:
    """The bound of the bucket holding the largest observation."""
    return next((le for le, seen in buckets if seen >= count), math.inf)


def commit_stats(before: Buckets, after: Buckets) -> dict[str, Any]:
    """Commits during one window: how many, their mean, and the bucket holding
    the 99th."""
    count, buckets = _window(before, after)
    if count <= 0:
        return {}
    p99 = next((le for le, seen in buckets if seen >= 0.99 * count), math.inf)
    return {
        "commits": int(count),
        "commit_mean_ms": round(1000 * (float(after["sum"]) - before.get("sum", 0.0)) / count, 3),
        "commit_p99_ms": round(1000 * p99, 3),
    }


def loop_stats(before: dict[str, Buckets], after: dict[str, Buckets]) -> dict[str, Any]:
    """Ticks late by more than 100 ms and the worst tick's bucket; collector
    pauses over 50 ms and the longest's bucket (all generations)."""
    out: dict[str, Any] = {}
    ticks, tick_buckets = _window(before["ticks"], after["ticks"])
    if ticks > 0:
        out.update({"ticks": int(ticks), "ticks_late": _over(tick_buckets, ticks, LATE_S),
                    "tick_worst_le_ms": 1000 * _worst(tick_buckets, ticks)})
    pauses, gc_buckets = _window(before["gc"], after["gc"])
    if pauses > 0:
        out.update({"gc_pauses": int(pauses),
                    "gc_long": _over(gc_buckets, pauses, LONG_GC_S),
                    "gc_worst_le_ms": 1000 * _worst(gc_buckets, pauses),
                    "gc_total_ms": round(1000 * (float(after["gc"]["sum"])
                                                 - before["gc"].get("sum", 0.0)), 1)})
    return out
