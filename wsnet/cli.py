"""``python -m wsnet``: run the chat lobby (or the echo app) from the command line."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Sequence

from wsnet.chat import ChatApp
from wsnet.config import Config
from wsnet.echo import EchoApp
from wsnet.server import Handler, Server

__all__ = ["main", "build_parser"]

APPS: dict[str, type[Handler]] = {"chat": ChatApp, "echo": EchoApp}


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(
        prog="python -m wsnet",
        description="A WebSocket chat server (or echo server) on one single-threaded reactor.",
    )
    p.add_argument("--host", default=d.host, help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="port (default %(default)s; 0 = any)")
    p.add_argument("--app", choices=sorted(APPS), default="chat", help="application (default chat)")
    p.add_argument(
        "--flush-interval-ms",
        type=float,
        help=f"fan-out tick in ms; 0 flushes every loop turn (default {d.flush_interval * 1000:g}, "
        "echo app 0)",
    )
    p.add_argument(
        "--max-message-bytes",
        type=int,
        help=f"largest message accepted (default {d.max_message_bytes}, echo app 16 MiB)",
    )
    p.add_argument(
        "--outbox-limit-bytes",
        type=int,
        help=f"bytes queued for one client before it is closed 1008 (default {d.outbox_limit})",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        help="open WebSockets allowed; more get 503 (default: what the descriptor limit allows)",
    )
    p.add_argument("--no-deflate", action="store_true", help="do not negotiate permessage-deflate")
    p.add_argument(
        "--ping-interval", type=float, help=f"seconds between keepalive pings, 0 = off "
        f"(default {d.ping_interval:g})",
    )
    p.add_argument(
        "--ping-timeout",
        type=float,
        help=f"seconds to wait for a pong (default {d.ping_timeout:g})",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (default %(default)s)",
    )
    return p


def config_from_args(args: argparse.Namespace, app: type[Handler]) -> Config:
    """Library defaults, then the application's preferences, then the options."""
    fields: dict[str, object] = {"host": args.host, "port": args.port}
    fields.update(app.config_defaults)
    options: dict[str, object | None] = {
        "flush_interval": None if args.flush_interval_ms is None else args.flush_interval_ms / 1000,
        "max_message_bytes": args.max_message_bytes,
        "outbox_limit": args.outbox_limit_bytes,
        "max_connections": args.max_connections,
        "ping_interval": args.ping_interval,
        "ping_timeout": args.ping_timeout,
    }
    fields.update({k: v for k, v in options.items() if v is not None})
    if args.no_deflate:
        fields["deflate"] = False
    return Config(**fields)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app_class = APPS[args.app]
    try:
        config = config_from_args(args, app_class)
    except ValueError as exc:
        parser.error(str(exc))
    server = Server(app_class(), config)
    try:
        server.listen()
    except OSError as exc:
        why = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or exc
        print(f"wsnet: cannot listen on {config.host}:{config.port}: {why}", file=sys.stderr)
        return 2
    print(f"wsnet {args.app} listening on {server.url}", flush=True)
    server.serve_forever()
    logging.getLogger("wsnet").info("stopped")
    return 0
