"""``python -m wsnet.client URL --name ann --room dev``: a small terminal chat.

Prints every event as a line; a typed line is sent to the current room.
``/join ROOM`` joins and makes it current, ``/leave ROOM`` leaves, ``/quit``
(or end of input) ends.
"""

from __future__ import annotations

import argparse
import os
import selectors
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from wsnet.client import ChatClient, ClientError, Event

__all__ = ["describe", "main"]


def describe(event: Event) -> str | None:
    """One line for an event, or None for ones not worth a line."""
    kind, room = event.get("type"), event.get("room", "")
    if kind == "message":
        return f"[{room}] {event.get('from')}: {event.get('text')}"
    if kind in ("join", "leave"):
        return f"[{room}] * {event.get('name')} {'joined' if kind == 'join' else 'left'}"
    if kind == "typing":
        return f"[{room}] * {event.get('name')} is typing…"
    if kind == "presence" and "epoch" in event:
        names = [m.get("name") for m in event.get("members", [])]
        who = ", ".join(map(str, names)) if names else f"{event.get('count')} people"
        return f"[{room}] * here: {who}"
    if kind == "gap":
        return f"[{room}] * some messages are no longer in history"
    if kind == "welcome":
        return f"* connected as {event.get('name')}"
    if kind == "error":
        where = f"[{room}] " if room else ""
        return f"{where}! {event.get('error')}: {event.get('detail')}"
    return None


def _command(client: ChatClient, line: str, current: list[str]) -> bool:
    """Act on one typed line; False to quit."""
    if line in ("/quit", "/exit"):
        return False
    word, _, arg = line.partition(" ")
    if word == "/join" and arg:
        client.join(arg)
        current[0] = arg
    elif word == "/leave" and arg:
        client.leave(arg)
    elif line.strip():
        client.send(line, current[0])
    return True


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="python -m wsnet.client", description=__doc__)
    parser.add_argument("url", help="the server, e.g. ws://127.0.0.1:8080/")
    parser.add_argument("--name", help="your name (a token fixes it instead)")
    parser.add_argument("--room", default="lobby", help="the room to join (default %(default)s)")
    parser.add_argument("--token", default=os.environ.get("WSNET_TOKEN"),
                        help="a signed chat token (or set WSNET_TOKEN)")
    args = parser.parse_args(argv)
    try:
        client = ChatClient(args.url, name=args.name, room=args.room, token=args.token)
    except ValueError as exc:
        parser.error(str(exc))
    current = [args.room]
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin, selectors.EVENT_READ)
    try:
        while True:
            while (event := client.next_event(0.05)) is not None:
                line = describe(event)
                if line is not None:
                    print(line, file=out, flush=True)
            if selector.select(0.05):
                typed = sys.stdin.readline()
                if not typed or not _command(client, typed.rstrip("\n"), current):
                    break
        _drain(client, out)
    except ClientError as exc:
        print(f"wsnet.client: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
    return 0


def _drain(client: ChatClient, out: TextIO, timeout: float = 5.0) -> None:
    """What was typed last is not dropped on the way out: wait (a while) for
    the server to confirm it, printing what arrives meanwhile."""
    deadline = time.monotonic() + timeout
    while client.unacknowledged and time.monotonic() < deadline:
        event = client.next_event(deadline - time.monotonic())
        line = describe(event) if event is not None else None
        if line is not None:
            print(line, file=out, flush=True)


if __name__ == "__main__":
    sys.exit(main())
