"""The README's embedding example is real code: run it against real clients."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

import wsnet

README = Path(__file__).resolve().parent.parent / "README.md"


def embedding_example() -> str:
    text = README.read_text()
    section = text.split("## Embedding", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "README has no python example under Embedding"
    return match.group(1)


def test_example_is_short() -> None:
    lines = [ln for ln in embedding_example().splitlines() if ln.strip()]
    assert len(lines) < 20


@pytest.mark.live
def test_example_runs_and_broadcasts() -> None:
    source = embedding_example()
    last = source.rstrip().splitlines()[-1]
    assert last == "wsnet.Server(Shout(), wsnet.Config(port=9000)).serve_forever()"
    namespace: dict[str, object] = {}
    exec(compile(source.replace(last, ""), "README.md", "exec"), namespace)
    handler = namespace["Shout"]()  # type: ignore[operator]
    server = wsnet.Server(handler, wsnet.Config(port=0))
    server.listen()
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"install_signal_handlers": False}, daemon=True,
    )
    thread.start()

    async def chat() -> tuple[object, object]:
        async with connect(server.url) as a, connect(server.url) as b:
            # on_open runs before the 101 leaves the server, so both are members.
            await a.send("hello")
            got_a = await asyncio.wait_for(a.recv(), 5)
            got_b = await asyncio.wait_for(b.recv(), 5)
            return got_a, got_b

    try:
        assert asyncio.run(chat()) == ("HELLO", "HELLO")
    finally:
        server.stop()
        thread.join(10)
    assert not thread.is_alive()
