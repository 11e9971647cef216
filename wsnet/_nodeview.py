"""One node, one view: ``/metrics`` and ``/healthz`` of every worker together,
whichever worker a scrape lands on (``--workers``).

Each worker writes a snapshot of its metric families and health to a file in
the node's directory (the supervisor makes it) once a second and when it stops;
a worker answering ``/metrics`` merges its own live families with the others'
files. Counters and histograms are summed, gauges summed too except the few
that only mean something per worker (``PER_WORKER``), which get a ``worker``
label. When a worker exits, the supervisor folds its last counters and
histograms into ``retired.json``, so totals never go back when a worker is
restarted (a crash loses at most its last second). ``supervisor.json`` says
which workers should be there, so ``/healthz`` can answer 503 when one is not.

Files, not a socket to the supervisor: a scrape then costs a few small reads
and no round trip, and nothing here runs unless someone scrapes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from wsnet.metrics import Counter, Gauge, Histogram, Metric

__all__ = ["NodeView", "dump_families", "fold", "load_families", "merge", "read_json",
           "write_json"]

#: Seconds between a worker's snapshots.
INTERVAL = 1.0
#: A snapshot older than this means its worker is stuck or gone.
STALE_AFTER = 5.0
#: Gauges that add up to nothing across workers: labelled by worker instead.
PER_WORKER = frozenset({
    "wsnet_uptime_seconds", "wsnet_backplane_up", "wsnet_chat_store_healthy",
})
#: Worker pids ``retired.json`` remembers having folded (their files may linger).
FOLDED_KEPT = 200

Series = list[Any]  # [label values, value] (a histogram's value: [counts, sum])


def dump_families(families: Iterable[Metric]) -> list[dict[str, Any]]:
    """Families as JSON-ready dicts (what a snapshot file holds)."""
    out = []
    for family in families:
        entry: dict[str, Any] = {"name": family.name, "kind": family.kind,
                                 "help": family.help, "labels": list(family.labelnames)}
        if isinstance(family, Histogram):
            entry["bounds"] = list(family.bounds)
        entry["series"] = [[list(values), _value(child)] for values, child in _series(family)]
        out.append(entry)
    return out


def _series(family: Metric) -> list[tuple[tuple[str, ...], Metric]]:
    if family.labelnames:
        return sorted(family._children.items())
    return [((), family)]


def _value(metric: Metric) -> Any:
    if isinstance(metric, Histogram):
        return [list(metric.counts), metric.sum]
    assert isinstance(metric, Counter | Gauge)
    return metric.value


def load_families(entries: Iterable[dict[str, Any]]) -> list[Metric]:
    """Metric objects again, from ``dump_families``' output."""
    families: list[Metric] = []
    for entry in entries:
        labels = entry["labels"]
        family: Metric
        if entry["kind"] == "histogram":
            family = Histogram(entry["name"], entry["help"], entry["bounds"], labels)
        elif entry["kind"] == "counter":
            family = Counter(entry["name"], entry["help"], labels)
        else:
            family = Gauge(entry["name"], entry["help"], labels)
        for values, value in entry["series"]:
            _set(family.labels(*values) if labels else family, value)
        families.append(family)
    return families


def _set(metric: Metric, value: Any) -> None:
    if isinstance(metric, Histogram):
        metric.counts = list(value[0])
        metric.sum = value[1]
    elif isinstance(metric, Counter | Gauge):
        metric.value = value


def merge(workers: list[tuple[int, list[dict[str, Any]]]],
          retired: list[dict[str, Any]]) -> list[Metric]:
    """The node's families: ``workers`` are ``(index, dumped families)``;
    ``retired`` the counters and histograms of workers that are gone."""
    merged: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    sources = [(index, entries) for index, entries in workers] + [(None, retired)]
    for index, entries in sources:
        for entry in entries:
            name = entry["name"]
            per_worker = entry["kind"] == "gauge" and name in PER_WORKER
            if index is None and entry["kind"] == "gauge":
                continue
            target = merged.get(name)
            if target is None:
                target = merged[name] = {**entry, "series": {}}
                if per_worker:
                    target["labels"] = [*entry["labels"], "worker"]
                order.append(name)
            series: dict[tuple[str, ...], Any] = target["series"]
            for values, value in entry["series"]:
                key = (*values, str(index)) if per_worker else tuple(values)
                series[key] = _add(series.get(key), value, entry["kind"])
    return load_families(
        {**merged[name], "series": [[list(k), v] for k, v in merged[name]["series"].items()]}
        for name in order
    )


def _add(total: Any, value: Any, kind: str) -> Any:
    if total is None:
        return value
    if kind == "histogram":
        counts = [a + b for a, b in zip(total[0], value[0], strict=False)]
        return [counts, total[1] + value[1]]
    return total + value


def fold(retired: dict[str, Any], snapshot: dict[str, Any]) -> dict[str, Any]:
    """``retired.json`` with a gone worker's counters and histograms added
    (once: a worker already folded is not added again)."""
    pid = snapshot.get("pid")
    done = list(retired.get("folded", []))
    if pid is None or pid in done:
        return retired
    kept = [e for e in snapshot.get("families", []) if e["kind"] != "gauge"]
    families = merge([(0, kept)], retired.get("families", []))
    return {"families": dump_families(families), "folded": [*done, pid][-FOLDED_KEPT:]}


def write_json(path: Path, value: object) -> None:
    """Replace ``path`` at once (a reader sees the old file or the new one)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    temp.write_text(json.dumps(value, separators=(",", ":")))
    os.replace(temp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class NodeView:
    """A worker's side: its snapshots, and the node's merged answers."""

    def __init__(
        self, directory: str, index: int,
        families: Callable[[], list[Metric]], status: Callable[[], dict[str, Any]],
    ) -> None:
        self.directory = Path(directory)
        self.index = index
        self.pid = os.getpid()
        self._families = families
        self._status = status

    def snapshot(self) -> dict[str, Any]:
        return {"pid": self.pid, "index": self.index, "written": time.time(),
                "status": self._status(), "families": dump_families(self._families())}

    def write(self) -> None:
        """This worker's snapshot, for the others' scrapes."""
        write_json(self.directory / f"worker-{self.pid}.json", self.snapshot())

    def _snapshots(self) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
        """supervisor.json, the snapshots of the workers it lists (not yet
        folded into the totals), and retired.json."""
        supervisor = read_json(self.directory / "supervisor.json") or {}
        retired = read_json(self.directory / "retired.json") or {}
        folded = set(retired.get("folded", []))
        snapshots = []
        for pid in sorted(set(supervisor.get("pids", [])) - folded):
            snap = read_json(self.directory / f"worker-{pid}.json")
            if isinstance(snap, dict):
                snapshots.append(snap)
        return supervisor, snapshots, retired

    def metrics(self) -> list[Metric]:
        """The node's families, from the snapshots alone (this worker's too), so
        that every worker gives the same answer and counters never go back from
        one scrape to the next, whichever worker takes it."""
        _, snapshots, retired = self._snapshots()
        workers = [(snap["index"], snap["families"]) for snap in snapshots]
        if not any(snap["pid"] == self.pid for snap in snapshots):  # not written yet
            workers.append((self.index, dump_families(self._families())))
        return merge(workers, retired.get("families", []))

    def health(self) -> tuple[int, dict[str, Any]]:
        """``(status code, body)``: 503 when a worker the supervisor expects is
        missing or stale, or one reports its backplane or store failing."""
        supervisor, others, _ = self._snapshots()
        now = time.time()
        mine = {"pid": self.pid, "index": self.index, "written": now, "status": self._status()}
        by_index: dict[int, dict[str, Any]] = {}
        for seen in [*others, mine]:
            index = seen["index"]
            if index not in by_index or seen["written"] > by_index[index]["written"]:
                by_index[index] = seen
        workers: list[dict[str, Any]] = []
        problems: list[str] = []
        for index in range(1, int(supervisor.get("expected", 1)) + 1):
            snap = by_index.get(index)
            if snap is None or now - snap["written"] > STALE_AFTER:
                problems.append(f"worker {index} is down")
                workers.append({"index": index, "up": False})
                continue
            status = snap["status"]
            entry = {"index": index, "pid": snap["pid"], "up": True,
                     "connections": status.get("connections"), "uptime_s": status.get("uptime_s")}
            for key in ("backplane", "redis_state", "store"):
                if key in status:
                    entry[key] = status[key]
            if status.get("redis_state") == "down" or status.get("store") == "failing":
                problems.append(f"worker {index}: backplane or store failing")
            workers.append(entry)
        body = {"status": "ok" if not problems else "degraded", "problems": problems,
                "connections": sum(w.get("connections") or 0 for w in workers),
                "workers": workers}
        return (200 if not problems else 503), body
