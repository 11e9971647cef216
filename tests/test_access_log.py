"""Logs an operator can use: one access line per WebSocket at close and per
plain request, secrets masked everywhere, and ``--log-format json``."""

from __future__ import annotations

import json
import logging
import time

import pytest
from support.chat import run, ws_connect
from support.rawclient import http_get
from support.servers import InProcessFactory, ServerFactory

from wsnet.chat import ChatApp
from wsnet.logs import JsonFormatter, SafeFormatter, access_line, mask_secrets

pytestmark = pytest.mark.live


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "wsnet.access"]


def wait_for(caplog: pytest.LogCaptureFixture, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(access_records(caplog)) < count:
        assert time.monotonic() < deadline, [r.getMessage() for r in access_records(caplog)]
        time.sleep(0.02)


def test_a_websocket_leaves_one_access_line_with_its_counts_and_no_token(
    inprocess_server: InProcessFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="wsnet.access")
    server = inprocess_server(ChatApp())

    async def chat() -> None:
        ws = await ws_connect(server.url + "?name=ann&room=dev&token=s3cr3t-token")
        await ws.recv()  # the welcome
        for text in ("one", "two"):
            await ws.send(text)
            await ws.recv()  # its echo
        await ws.close()

    run(chat())
    wait_for(caplog, 1)
    [record] = access_records(caplog)
    fields = record.access  # type: ignore[attr-defined]
    assert fields["path"] == "/" and fields["close"] == 1000
    assert fields["messages_in"] == 2 and fields["messages_out"] >= 3  # 101, welcome, echoes
    assert fields["bytes_in"] > 0 and fields["bytes_out"] > 0 and fields["duration"] >= 0
    assert fields["peer"].startswith("127.0.0.1:")
    assert "s3cr3t" not in record.getMessage() and "websocket / " in record.getMessage()


def test_a_plain_request_leaves_one_line_and_access_logs_can_be_turned_off(
    inprocess_server: InProcessFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="wsnet.access")
    server = inprocess_server(ChatApp())
    assert http_get(server.port, "/healthz?token=abc").status == 200
    wait_for(caplog, 1)
    [record] = access_records(caplog)
    fields = record.access  # type: ignore[attr-defined]
    assert (fields["method"], fields["path"], fields["status"]) == ("GET", "/healthz", 200)
    assert "abc" not in record.getMessage()
    quiet = inprocess_server(ChatApp(), access_log=False)
    assert http_get(quiet.port, "/healthz").status == 200
    assert http_get(server.port, "/nothing").status == 404  # the first one still logs
    wait_for(caplog, 2)
    assert [r.access["status"] for r in access_records(caplog)] == [200, 404]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("GET /ws?name=ann&token=abc.123.def HTTP/1.1", "GET /ws?name=ann&token=*** HTTP/1.1"),
        ("Authorization: Bearer k3y-value", "Authorization: Bearer ***"),
        ("token=x", "token=***"),
        ("no secrets here", "no secrets here"),
    ],
)
def test_secrets_are_masked(text: str, masked: str) -> None:
    assert mask_secrets(text) == masked


def test_formatters_mask_and_json_carries_the_access_fields() -> None:
    fields = {"peer": "127.0.0.1:5", "path": "/", "duration": 1.5, "bytes_in": 10,
              "messages_in": 1, "bytes_out": 20, "messages_out": 2, "close": 1000}
    record = logging.LogRecord("wsnet.access", logging.INFO, __file__, 1, access_line(fields),
                               None, None)
    record.access = fields
    entry = json.loads(JsonFormatter().format(record))
    assert entry["logger"] == "wsnet.access" and entry["close"] == 1000
    assert entry["message"] == "127.0.0.1:5 websocket / 1.5s in 10B/1msg out 20B/2msg close 1000"
    leak = logging.LogRecord("wsnet", logging.WARNING, __file__, 1, "bad ?token=%s\nforged",
                             ("t0k3n",), None)
    assert "t0k3n" not in JsonFormatter().format(leak)
    text = SafeFormatter("%(message)s").format(leak)
    assert "t0k3n" not in text and "\n" not in text


def test_log_format_json_makes_every_line_a_json_object(
    server_factory: ServerFactory,
) -> None:
    server = server_factory("--log-format", "json")
    assert http_get(server.port, "/healthz").status == 200

    async def chat() -> None:
        ws = await ws_connect(server.url + "?name=ann")
        await ws.recv()
        await ws.close()

    run(chat())
    deadline = time.monotonic() + 5
    while '"close":' not in server.stderr_text():
        assert time.monotonic() < deadline, server.stderr_text()
        time.sleep(0.05)
    lines = [json.loads(line) for line in server.stderr_text().splitlines() if line]
    access = [e for e in lines if e["logger"] == "wsnet.access"]
    assert {e.get("status") for e in access} >= {200} and any("close" in e for e in access)
