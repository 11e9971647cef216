"""One node, one view (``wsnet._nodeview``): snapshots merged without sockets,
then ``/metrics`` and ``/healthz`` through the shared port of three live
workers, over many scrapes and across a killed and a frozen worker."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.procs import RedisServer
from support.rawclient import http_get
from support.servers import ServerFactory, ServerProcess
from support.waiting import wait_for
from test_workers import children, worker_pids

from wsnet._nodeview import dump_families, fold, load_families, merge
from wsnet.metrics import Counter, Gauge, Histogram, render


def worker_families(accepted: int, up: float, slow: list[float]) -> list[dict[str, object]]:
    counter = Counter("wsnet_sockets_accepted_total", "Sockets.")
    counter.value = accepted
    closes = Counter("wsnet_closes_total", "Closes.", ["code"])
    closes.labels("1000").value = accepted // 2
    uptime = Gauge("wsnet_uptime_seconds", "Up.")
    uptime.value = up
    conns = Gauge("wsnet_connections", "Open.")
    conns.value = accepted // 3
    hist = Histogram("wsnet_x_seconds", "X.", [0.1, 1.0])
    for value in slow:
        hist.observe(value)
    return dump_families([counter, closes, uptime, conns, hist])


def values(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


def test_snapshots_round_trip_and_merge_as_prometheus_expects() -> None:
    one, two = worker_families(10, 5.0, [0.05, 2.0]), worker_families(4, 7.5, [0.5])
    assert dump_families(load_families(one)) == one
    retired = fold({}, {"pid": 99, "families": worker_families(100, 1.0, [0.05])})
    assert fold(retired, {"pid": 99, "families": worker_families(100, 1.0, [])}) == retired
    merged = values(render(merge([(1, one), (2, two)], retired["families"])))
    assert merged[("wsnet_sockets_accepted_total", ())] == 114  # 10 + 4 + the retired 100
    assert merged[("wsnet_closes_total", (("code", "1000"),))] == 5 + 2 + 50
    assert merged[("wsnet_connections", ())] == 3 + 1  # summed; a gone worker holds none
    assert merged[("wsnet_uptime_seconds", (("worker", "1"),))] == 5.0
    assert merged[("wsnet_uptime_seconds", (("worker", "2"),))] == 7.5
    assert ("wsnet_uptime_seconds", (("worker", "None"),)) not in merged
    assert merged[("wsnet_x_seconds_count", ())] == 4
    assert merged[("wsnet_x_seconds_bucket", (("le", "0.1"),))] == 2
    assert merged[("wsnet_x_seconds_bucket", (("le", "1.0"),))] == 3


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = http_get(port, "/metrics")
    assert response.status == 200
    return values(response.body)


def healthz(port: int) -> tuple[int, dict[str, object]]:
    response = http_get(port, "/healthz")
    return response.status, json.loads(response.body)


@pytest.fixture
def node(server_factory: ServerFactory, redis_server: RedisServer) -> ServerProcess:
    server = server_factory("--workers", "3", "--redis", redis_server.url)
    worker_pids(server, 3)
    wait_for("every worker's first snapshot",
             lambda: len(healthz(server.port)[1]["workers"]) == 3  # type: ignore[arg-type]
             and healthz(server.port)[0] == 200)
    return server


ACCEPTED = ("wsnet_sockets_accepted_total", ())


@pytest.mark.live
def test_every_scrape_sees_the_whole_node_and_counters_never_go_back(
    node: ServerProcess,
) -> None:
    seen = []
    for _ in range(40):
        got = scrape(node.port)
        seen.append(got[ACCEPTED])
        assert {k[1] for k in got if k[0] == "wsnet_uptime_seconds"} == {
            (("worker", str(i)),) for i in (1, 2, 3)}
        time.sleep(0.05)  # a scrape every 50 ms: snapshots change under them
    assert seen == sorted(seen) and seen[-1] > seen[0]  # monotonic, and moving
    status, body = healthz(node.port)
    assert status == 200 and body["status"] == "ok"
    workers = body["workers"]
    assert isinstance(workers, list) and [w["index"] for w in workers] == [1, 2, 3]
    assert all(w["up"] and w["redis_state"] == "up" for w in workers)
    # A killed worker's counts stay in the totals after its restart.
    before = scrape(node.port)[ACCEPTED]
    victim = max(children(node.pid))
    os.kill(victim, signal.SIGKILL)
    wait_for("a replacement", lambda: len(p := children(node.pid)) == 3 and victim not in p)
    wait_for("the replacement's snapshot", lambda: healthz(node.port)[0] == 200)
    after = [scrape(node.port)[ACCEPTED] for _ in range(10)]
    assert after == sorted(after) and after[0] >= before


@pytest.mark.live
def test_healthz_is_503_while_a_worker_is_stuck(node: ServerProcess) -> None:
    frozen = min(children(node.pid))
    os.kill(frozen, signal.SIGSTOP)
    try:
        # Scrapes the frozen worker would take wait in the queue; the others answer.
        def stuck_reported() -> tuple[int, dict[str, object]] | None:
            status, body = healthz(node.port)
            workers = body.get("workers")
            down = isinstance(workers, list) and any(not w["up"] for w in workers)
            return (status, body) if status == 503 and down else None

        _, body = wait_for("a 503 naming the stuck worker", stuck_reported, timeout=20)
        assert body["status"] == "degraded" and body["problems"]
        workers = body["workers"]
        assert isinstance(workers, list)
        assert [w["up"] for w in workers].count(False) == 1
    finally:
        os.kill(frozen, signal.SIGCONT)
    wait_for("200 again", lambda: healthz(node.port)[0] == 200, timeout=20)


@pytest.mark.live
def test_healthz_is_503_while_redis_is_down(node: ServerProcess, redis_server: RedisServer) -> None:
    redis_server.stop()
    try:
        _, body = wait_for("a 503", lambda: (r if (r := healthz(node.port))[0] == 503
                                             else None), timeout=20)
        problems = body["problems"]
        assert isinstance(problems, list) and any("backplane" in p for p in problems)
    finally:
        redis_server.start()
    wait_for("200 again", lambda: healthz(node.port)[0] == 200, timeout=30)
