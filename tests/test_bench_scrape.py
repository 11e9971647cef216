"""The benchmark's reading of the server's own histograms (``bench/wsbench/
scrape.py``): parsed from the server's real exposition, and, live, a process
stopped for 300 ms shows as late ticks, which is how the stall row tells the
server's stalls from the load generator's."""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from wsnet._server_metrics import ServerMetrics
from wsnet.metrics import render

# bench/ is not a package: its modules are imported from its folder.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from wsbench.scrape import loop_stats, parse_histogram, scrape_loop
from wsbench.servers import ServerProcess, wsnet_command


def exposition(metrics: ServerMetrics) -> str:
    return render(metrics.families()).decode()


def test_a_histogram_is_read_back_as_exposed() -> None:
    metrics = ServerMetrics()
    for late in (0.0, 0.002, 0.12, 0.3):
        metrics.tick_lateness.observe(late)
    buckets = parse_histogram(exposition(metrics), "wsnet_tick_lateness_seconds")
    assert buckets["count"] == 4
    assert buckets["sum"] == pytest.approx(0.422)
    assert buckets[0.001] == 1 and buckets[0.005] == 2 and buckets[0.1] == 2
    assert buckets[0.15] == 3 and buckets[0.5] == 4 and buckets[math.inf] == 4


def test_loop_stats_count_only_the_window() -> None:
    metrics = ServerMetrics()
    metrics.tick_lateness.observe(0.4)  # before the window: not counted
    text = exposition(metrics)
    before = {"ticks": parse_histogram(text, "wsnet_tick_lateness_seconds"),
              "gc": parse_histogram(text, "wsnet_gc_pause_seconds")}
    for late in (0.0, 0.01, 0.2):
        metrics.tick_lateness.observe(late)
    text = exposition(metrics)
    after = {"ticks": parse_histogram(text, "wsnet_tick_lateness_seconds"),
             "gc": parse_histogram(text, "wsnet_gc_pause_seconds")}
    stats = loop_stats(before, after)
    assert stats["ticks"] == 3 and stats["ticks_late"] == 1
    assert stats["tick_worst_le_ms"] == 250


@pytest.mark.live
def test_a_stopped_server_shows_late_ticks() -> None:
    server = ServerProcess(wsnet_command(False, None, port=0))
    try:
        before = scrape_loop(server.port)
        os.kill(server.pid, signal.SIGSTOP)
        time.sleep(0.3)  # the stall itself, not a wait for an outcome
        os.kill(server.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while True:  # the late tick runs as soon as the process runs again
            stats = loop_stats(before, scrape_loop(server.port))
            if stats.get("ticks_late", 0) >= 1 or time.monotonic() > deadline:
                break
        assert stats["ticks_late"] >= 1
        assert stats["tick_worst_le_ms"] >= 250  # stopped 300 ms: its bucket is (250, 500]
    finally:
        server.stop()
