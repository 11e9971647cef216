"""How the benchmark judges and draws its targets, without running a load:
which windows of a scale run become chart points (bench/wsbench/scale_chart.py),
and the idle scenario's handshake target line (bench/wsbench/report.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

# bench/ is not a package: its modules are imported from its folder.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from wsbench.report import handshake_target
from wsbench.scale_chart import chart_runs, latency_series
from wsbench.scenarios import Row


def window(part: str, rate: float, p99: float | None, *, connections: int = 100_000,
           layout: str = "1 node x 6 workers", affinity: bool = True) -> dict[str, Any]:
    return {"part": part, "connections": connections, "layout": layout, "affinity": affinity,
            "per_room_rate": rate, "p50_ms": None if p99 is None else p99 / 2, "p99_ms": p99}


def test_sending_windows_at_the_largest_size_by_layout_and_rate() -> None:
    rows = [
        window("a", 1.0, 5000.0), window("a", 0.25, 87.0),
        window("a", 0.0, None),  # the idle window: nothing to plot
        window("noaff", 0.5, 300.0, affinity=False),
        window("c", 0.5, 200.0, layout="2 nodes x 3 workers"),
        window("a", 1.0, 60.0, connections=30_000),  # a smaller size: another chart
        window("b", 1.0, 900.0), window("stall", 1.0, 70.0, connections=100_000),
    ]
    assert latency_series(rows, prefix="d ") == {
        "d 1 node x 6 workers": [(0.25, 43.5, 87.0), (1.0, 2500.0, 5000.0)],
        "d 1 node x 6 workers, no affinity": [(0.5, 150.0, 300.0)],
        "d 2 nodes x 3 workers": [(0.5, 100.0, 200.0)],
    }


def test_a_run_without_sending_windows_has_no_chart(tmp_path: Path) -> None:
    results = {"started": "2026-12-07T16:02:13", "scenarios": {"scale": [window("a", 0, None)]}}
    notice = chart_runs([results], tmp_path / "c.png")
    assert notice is not None and "no sending window" in notice
    assert not (tmp_path / "c.png").exists()


def test_a_chart_is_drawn_when_matplotlib_is_there(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results = {"started": "2026-12-07T16:02:13",
               "scenarios": {"scale": [window("a", 0.25, 87.0), window("a", 1.0, 5000.0)]}}
    assert chart_runs([results], tmp_path / "c.png") is None
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_idle_report_judges_the_best_wsnet_handshake_rate() -> None:
    def row(server: str, n: int, rate: float) -> Row:
        return Row("idle", server, n, {"handshakes_per_s": rate})

    rows = [row("wsnet", 1000, 6090), row("wsnet", 10_000, 6364), row("node-ws", 19_000, 8441)]
    assert handshake_target(rows) == [
        "Handshakes into one idle wsnet process (target >= 8,000/s): **not met** "
        "(best 6,364/s, at 10,000 connections)."]
    assert handshake_target([row("wsnet", 5000, 8100)])[0].startswith(
        "Handshakes into one idle wsnet process (target >= 8,000/s): met (best 8,100/s")
    assert handshake_target([row("node-ws", 5000, 9000)]) == []
