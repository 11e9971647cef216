"""The chat wire protocol (README, "The chat protocol"; lobby only) on the
``websockets`` package.

A peer for ``bench/run.py``: an asyncio server that broadcasts each message at
once, as a one-event JSON array, with ``websockets.broadcast`` (the library's own
encode-once fan-out). No batching, no rate limit: what a straightforward
websockets chat server looks like.

    python bench/peers/websockets_chat.py --port 0 [--no-deflate]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import re
import sys
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

LOBBY = "lobby"
NAME = re.compile(r"[A-Za-z0-9_.\-]{1,32}")


def encode(events: list[dict[str, Any]]) -> str:
    return json.dumps(events, ensure_ascii=False, separators=(",", ":"))


def chat_text(message: str) -> str | None:
    """The chat text a client frame carries (a command object or plain text)."""
    if message.lstrip()[:1] == "{":
        try:
            command = json.loads(message)
        except ValueError:
            command = None
        if isinstance(command, dict):
            text = command.get("text") if command.get("type") == "message" else None
            return text if isinstance(text, str) and text.strip() else None
    return message if message.strip() else None


class Lobby:
    def __init__(self) -> None:
        self.members: set[ServerConnection] = set()
        self.seq = 0
        self.ids = itertools.count(1)

    async def handler(self, ws: ServerConnection) -> None:
        conn_id = next(self.ids)
        query = parse_qs(urlsplit(ws.request.path).query) if ws.request else {}
        asked = query.get("name", [""])[0]
        name = asked if NAME.fullmatch(asked) else f"guest-{conn_id}"
        welcome = {"type": "welcome", "id": str(conn_id), "name": name, "room": LOBBY,
                   "seq": self.seq}
        await ws.send(encode([welcome]))
        self.members.add(ws)
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    await ws.close(1003, "binary frames are not part of chat protocol v1")
                    return
                text = chat_text(message)
                if text is None:
                    continue
                self.seq += 1
                event = {"type": "message", "room": LOBBY, "seq": self.seq, "from": name,
                         "text": text, "ts": int(time.time() * 1000)}
                broadcast(self.members, encode([event]))
        except ConnectionClosed:  # a client that just went away is no error
            pass
        finally:
            self.members.discard(ws)


async def serve_forever(host: str, port: int, deflate: bool) -> None:
    lobby = Lobby()
    async with serve(
        lobby.handler, host, port, compression="deflate" if deflate else None,
        backlog=1024, max_size=1 << 20,
    ) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        print(f"websockets chat listening on ws://{host}:{bound}/", flush=True)
        await asyncio.get_running_loop().create_future()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--no-deflate", action="store_true", help="do not negotiate compression")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    try:
        asyncio.run(serve_forever(args.host, args.port, not args.no_deflate))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
