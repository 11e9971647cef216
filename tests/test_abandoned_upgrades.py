"""An upgrade request whose client gave up before it was answered (it waited
in the accept backlog, then closed: a reconnect storm's timed-out attempts) is
never opened to the application: no join for the room to hear (the 101 still
goes out, for a peer that only half-closed), and a counter for the operator.
The server is paused with SIGSTOP so that the request and the close are both
queued before it reads either."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest
from support.chat import ChatClient, kind, run
from support.servers import ServerProcess
from support.wire import upgrade_request
from test_metrics import scrape, value

pytestmark = pytest.mark.live


def test_an_upgrade_whose_client_already_left_gets_no_join(chat_server: ServerProcess) -> None:
    port = chat_server.port
    pid = chat_server.process.pid

    async def scenario() -> list[dict[str, object]]:
        watcher = await ChatClient.open(chat_server, room="hall", name="watcher")
        os.kill(pid, signal.SIGSTOP)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as ghost:
                ghost.sendall(upgrade_request(port, "/?room=hall&name=ghost"))
        finally:  # the request and the FIN wait together in the backlog
            os.kill(pid, signal.SIGCONT)
        late = await ChatClient.open(chat_server, room="hall", name="late")
        await watcher.until(kind("join", room="hall", name="late"))
        await late.ws.close()
        await watcher.ws.close()
        return watcher.events

    events = run(scenario())
    names = [e.get("name") for e in events if e["type"] == "join"]
    assert names == ["late"], names  # the ghost, earlier in the queue, never joined
    deadline = time.monotonic() + 5
    while True:  # the counter is read over HTTP: poll it with a deadline
        _, samples = scrape(port)
        if value(samples, "wsnet_upgrades_abandoned_total") >= 1 or time.monotonic() > deadline:
            break
    assert value(samples, "wsnet_upgrades_abandoned_total") == 1
