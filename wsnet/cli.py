"""``python -m wsnet``: run the chat server (or the echo app) from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from wsnet._nodeview import INTERVAL as NODE_INTERVAL
from wsnet._nodeview import NodeView
from wsnet._placement import BOARD_FILE, LoadBoard
from wsnet.chat import ChatApp, ChatSettings, valid_name
from wsnet.chat.protocol import NAME_RULE, ROOM_RULE, valid_room
from wsnet.chat.redis import RedisBackplane, redis_available
from wsnet.chat.sqlite import SqliteStore, StoreOpenError
from wsnet.config import Config
from wsnet.config_file import ConfigFileError, parse_config, render_config
from wsnet.echo import EchoApp
from wsnet.logs import JsonFormatter, SafeFormatter
from wsnet.server import Handler, Server
from wsnet.tokens import Grant, make_token
from wsnet.workers import NEEDS_REDIS, Supervisor, stop_with_parent

__all__ = ["main", "build_parser"]

APPS: dict[str, type[Handler]] = {"chat": ChatApp, "echo": EchoApp}
SECRET_ENV = "WSNET_AUTH_SECRET"
API_KEY_ENV = "WSNET_API_KEY"
#: The default store's file in --data-dir.
DEFAULT_STORE_FILE = "chat.sqlite3"
_T = TypeVar("_T")


def _read_secret(path: str | None, env: str = SECRET_ENV) -> bytes | None:
    """The chat token secret (or the API key), or None when none is configured.
    An empty file is an error (raised as ValueError), never a silent "no
    authentication"."""
    if path is not None:
        with open(path, "rb") as f:
            secret = f.read()
        # One line ending, as editors and `echo` add, is not part of the secret;
        # anything else is, byte for byte, as the minting service sees it.
        secret = secret.removesuffix(b"\n").removesuffix(b"\r")
        if not secret:
            raise ValueError(f"{path} is empty")
        return secret
    return os.environ.get(env, "").encode() or None


def _read_api_key(path: str | None) -> bytes | None:
    """The HTTP API's key: it travels in a header, so printable ASCII only."""
    key = _read_secret(path, API_KEY_ENV)
    if key is not None and not (key.isascii() and all(33 <= b <= 126 for b in key)):
        raise ValueError("the API key must be printable ASCII without spaces")
    if key is not None and len(key) < 16:
        raise ValueError("the API key must be at least 16 characters")
    return key


def _add_token_options(p: argparse.ArgumentParser) -> None:
    """Minting tokens, and what they grant."""
    p.add_argument(
        "--mint-token",
        metavar="NAME",
        help="print a signed chat token for NAME (secret from the file or environment) and exit",
    )
    p.add_argument(
        "--token-ttl", type=int, default=86400, help="lifetime of a minted token in seconds",
    )
    p.add_argument(
        "--room", dest="grant_rooms", action="append", default=[], metavar="ROOM",
        help="with --mint-token: the token may join ROOM (a name, or prefix*), repeatable",
    )
    p.add_argument(
        "--read-only-room", dest="read_only_rooms", action="append", default=[],
        metavar="ROOM", help="with --mint-token: the token may read ROOM but not write to it",
    )
    p.add_argument(
        "--claim-ttl", type=int, metavar="SECONDS",
        help="with --mint-token: the room grants end after SECONDS (default: with the token)",
    )
    p.add_argument(
        "--rooms-require-claim", action="store_true",
        help="every room needs a token's grant, not only private:... rooms",
    )


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(
        prog="python -m wsnet",
        description="A WebSocket chat server (or echo server) on one single-threaded reactor.",
    )
    p.add_argument(
        "--config", metavar="FILE",
        help="a TOML file of options under their names without '--' "
        "(max-connections = 1000); flags given here win",
    )
    p.add_argument(
        "--print-config", action="store_true",
        help="print the effective configuration (file and flags; secrets masked) and exit",
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
        "--send-buffer-bytes",
        type=int,
        help=f"the kernel's send buffer per client (SO_SNDBUF), 0 = the kernel's autotuning "
        f"(default {d.socket_send_buffer})",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        help="open WebSockets allowed; more get 503 (default: what the descriptor limit allows)",
    )
    p.add_argument(
        "--max-connections-per-ip",
        type=int,
        help="open WebSockets per client address; more get 429 (default 0 = no limit)",
    )
    p.add_argument(
        "--rate-limit",
        type=float,
        help=f"messages per second per client, 0 = off (default {d.rate_limit:g}, echo app off)",
    )
    p.add_argument(
        "--rate-burst",
        type=int,
        help=f"messages a client may send at once (default {d.rate_burst})",
    )
    p.add_argument(
        "--allowed-origin",
        action="append",
        metavar="ORIGIN",
        help="browser Origin allowed to connect, e.g. https://chat.example (repeatable; "
        "default: any). Others get 403",
    )
    p.add_argument(
        "--forwarded-allow-ips", action="append", metavar="ADDRS",
        help="reverse proxies (addresses and CIDRs, comma-separated, repeatable) whose "
        "Forwarded / X-Forwarded-For / X-Forwarded-Proto headers name the client "
        "(default: none)",
    )
    p.add_argument("--certfile", help="PEM certificate chain: serve wss:// and https://")
    p.add_argument("--keyfile", help="PEM private key for --certfile")
    p.add_argument(
        "--auth-secret-file",
        help=f"file holding the chat token secret (or set {SECRET_ENV}); clients then need "
        "?token=",
    )
    p.add_argument(
        "--api-key-file",
        help=f"file holding the HTTP API's key (or set {API_KEY_ENV}); the chat then "
        "serves /api/ to callers with 'Authorization: Bearer <key>'",
    )
    _add_token_options(p)
    p.add_argument("--no-deflate", action="store_true", help="do not negotiate permessage-deflate")
    p.add_argument(
        "--gc-freeze", action="store_true",
        help="freeze the garbage collector's objects after bursts of new WebSockets "
        "(experimental: see README)",
    )
    p.add_argument(
        "--ping-interval", type=float, help=f"seconds between keepalive pings, 0 = off "
        f"(default {d.ping_interval:g})",
    )
    p.add_argument(
        "--ping-timeout",
        type=float,
        help=f"seconds to wait for a pong (default {d.ping_timeout:g})",
    )
    c = ChatSettings()
    p.add_argument(
        "--history", type=int, default=c.history,
        help="messages each chat room keeps for resume (default %(default)s)",
    )
    p.add_argument(
        "--history-bytes", type=int, default=c.history_bytes,
        help="...and at most this many bytes of them (default %(default)s)",
    )
    p.add_argument(
        "--history-total-bytes", type=int, default=c.history_total_bytes,
        help="history of all rooms together (default %(default)s)",
    )
    p.add_argument(
        "--max-rooms-per-client", type=int, default=c.max_rooms_per_client,
        help="chat rooms one connection may be in (default %(default)s)",
    )
    p.add_argument(
        "--presence-limit", type=int, default=c.presence_limit,
        help="room size above which presence is a count, not a list (default %(default)s)",
    )
    p.add_argument(
        "--room-ttl", type=float, default=c.room_ttl,
        help="seconds an empty room keeps its history (default %(default)g)",
    )
    p.add_argument(
        "--store", metavar="KIND",
        help="where the chat keeps rooms and history: sqlite:PATH (a file that survives "
        "restarts and crashes) or memory (lost on restart); default sqlite in --data-dir. "
        "With --redis, Redis keeps them",
    )
    p.add_argument(
        "--data-dir", default="wsnet-data", metavar="DIR",
        help="directory of the default store, created on start (default ./%(default)s/)",
    )
    p.add_argument(
        "--fsync", action="store_true",
        help="make each tick's commit durable against power loss too (synchronous=FULL), "
        "not only against the process dying",
    )
    p.add_argument(
        "--workers", type=int, default=1,
        help="reactor processes sharing one listening socket under a supervisor that "
        "restarts crashed ones; more than 1 needs --redis (default 1)",
    )
    p.add_argument(
        "--no-affinity", action="store_true",
        help="with --workers: leave each connection on the worker that accepted it, "
        "instead of handing it to the worker that owns its room (so that a room is "
        "received from Redis and encoded once, not once per worker)",
    )
    p.add_argument(
        "--redis", metavar="URL",
        help="chat backplane, e.g. redis://127.0.0.1:6379/0: rooms span every node and "
        "worker on that Redis (needs the redis extra: pip install 'wsnet[redis]')",
    )
    p.add_argument(
        "--node-ttl", type=float, default=10.0,
        help="with --redis: seconds after which a silent node's members are removed "
        "from presence (default %(default)g)",
    )
    # Internal: how the supervisor of --workers starts each worker (accept on
    # the inherited socket FD, stop when the supervisor with this pid is gone,
    # leave snapshots in the node's directory).
    p.add_argument("--as-worker-of", type=int, metavar="PID", help=argparse.SUPPRESS)
    p.add_argument("--listen-fd", type=int, metavar="FD", help=argparse.SUPPRESS)
    p.add_argument("--node-dir", metavar="DIR", help=argparse.SUPPRESS)
    p.add_argument("--worker-index", type=int, default=1, help=argparse.SUPPRESS)
    # The node's socket pairs for handing connections over: this worker's inbox,
    # then every slot's outbox (1..N), comma-separated descriptors.
    p.add_argument("--handoff-fds", metavar="FDS", help=argparse.SUPPRESS)
    p.add_argument(
        "--log-format", default="text", choices=["text", "json"],
        help="log lines as escaped text, or one JSON object each (default %(default)s)",
    )
    p.add_argument(
        "--no-access-log", action="store_true",
        help="no access line per connection (wsnet.access logger)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (default %(default)s)",
    )
    return p


def config_from_args(args: argparse.Namespace, app: type[Handler]) -> Config:
    """Library defaults, then the application's preferences, then the options.

    ``--host`` and ``--port`` form the layer under the application's
    preferences; every other option, when given, overrides both.
    """
    defaults = app.config_defaults
    preferred = Config().replace(**defaults)
    ms = args.flush_interval_ms
    origins = tuple(args.allowed_origin) if args.allowed_origin else None
    proxies = tuple(a.strip() for arg in args.forwarded_allow_ips or () for a in arg.split(",")
                    if a.strip()) or None
    return dataclasses.replace(
        preferred,
        host=preferred.host if "host" in defaults else args.host,
        port=preferred.port if "port" in defaults else args.port,
        flush_interval=_given(None if ms is None else ms / 1000, preferred.flush_interval),
        max_message_bytes=_given(args.max_message_bytes, preferred.max_message_bytes),
        outbox_limit=_given(args.outbox_limit_bytes, preferred.outbox_limit),
        socket_send_buffer=_given(args.send_buffer_bytes, preferred.socket_send_buffer),
        max_connections=_given(args.max_connections, preferred.max_connections),
        ping_interval=_given(args.ping_interval, preferred.ping_interval),
        ping_timeout=_given(args.ping_timeout, preferred.ping_timeout),
        max_connections_per_ip=_given(
            args.max_connections_per_ip, preferred.max_connections_per_ip,
        ),
        rate_limit=_given(args.rate_limit, preferred.rate_limit),
        rate_burst=_given(args.rate_burst, preferred.rate_burst),
        allowed_origins=_given(origins, preferred.allowed_origins),
        forwarded_allow_ips=_given(proxies, preferred.forwarded_allow_ips),
        certfile=_given(args.certfile, preferred.certfile),
        keyfile=_given(args.keyfile, preferred.keyfile),
        deflate=False if args.no_deflate else preferred.deflate,
        access_log=False if args.no_access_log else preferred.access_log,
        gc_freeze=args.gc_freeze or preferred.gc_freeze,
    )


def _given(option: _T | None, otherwise: _T) -> _T:
    """An option the user gave, or what the layers below chose."""
    return otherwise if option is None else option


def _read_config_file(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> None:
    """``--config FILE``'s settings become the parser's defaults, so that flags
    on the command line still win. Raises OSError or ConfigFileError."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--config")
    known, _ = first.parse_known_args(argv)
    if known.config is None:
        return
    with open(known.config, "rb") as f:
        data = f.read()
    parser.set_defaults(**parse_config(data, parser, known.config))


def _print_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    notes = {env: f"{env} is set (its value is not shown)"
             for env in (SECRET_ENV, API_KEY_ENV) if os.environ.get(env)}
    print(render_config(args, parser, notes), end="")
    return 0


def _parse(argv: Sequence[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The options: the config file's, then the command line's. A file that
    cannot be used is one line and exit status 2."""
    parser = build_parser()
    try:
        _read_config_file(parser, argv)
    except OSError as exc:
        print(f"wsnet: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        raise SystemExit(2) from None
    except ConfigFileError as exc:
        print(f"wsnet: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return parser, parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    parser, args = _parse(argv)
    if args.print_config:
        return _print_config(parser, args)
    _check_workers(parser, args)
    _setup_logging(args)
    try:
        secret = _read_secret(args.auth_secret_file)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        path = args.auth_secret_file
        print(f"wsnet: cannot read the auth secret {path}: {reason}", file=sys.stderr)
        return 2
    if args.mint_token is not None:
        return _mint(parser, args, secret)
    if args.grant_rooms or args.read_only_rooms or args.claim_ttl is not None:
        parser.error("--room, --read-only-room and --claim-ttl go with --mint-token")
    app_class = APPS[args.app]
    _check_chat_options(parser, args, app_class)
    if secret is not None and app_class is not ChatApp:
        if args.auth_secret_file is not None:
            parser.error(f"--auth-secret-file applies to the chat app, not --app {args.app}")
        logging.getLogger("wsnet").warning(
            "%s is set but --app %s has no authentication", SECRET_ENV, args.app,
        )
    try:
        config = config_from_args(args, app_class)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        app = _chat_app(parser, args, secret) if app_class is ChatApp else app_class()
    except StoreOpenError as exc:
        print(f"wsnet: cannot use the chat store: {exc}", file=sys.stderr)
        return 2
    try:
        server = Server(app, config)
    except (OSError, ssl.SSLError) as exc:
        files = f"{config.certfile} / {config.keyfile}"
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"wsnet: cannot load the TLS certificate or key ({files}): {detail}", file=sys.stderr)
        return 2
    if args.workers > 1:
        # Everything is checked (options, TLS files): the workers do the serving.
        return _supervise(list(sys.argv[1:] if argv is None else argv), args.workers, config,
                          affinity=not args.no_affinity)
    return _serve(server, app, args, config)


def _serve(server: Server, app: Handler, args: argparse.Namespace, config: Config) -> int:
    """Listen (or take the supervisor's socket), say so, serve until stopped."""
    if args.as_worker_of is None:
        _ignore_hup()  # before the listening line: a reload right after must not kill us
    try:
        server.listen(fd=args.listen_fd)
    except OSError as exc:
        _cannot_listen(config, exc)
        return 2
    if args.handoff_fds and args.node_dir is not None:
        # Before the listening line: once every worker printed it, each one's
        # slot on the board is fresh and connections may be handed to it.
        _join_placement(server, args.node_dir, args.worker_index, args.handoff_fds)
    if args.as_worker_of is not None:
        stop_with_parent(args.as_worker_of, server.stop)
        # Before the listening line, which tells the supervisor it may drain us.
        signal.signal(signal.SIGHUP, lambda _s, _f: server.stop(restart=True))
    print(f"wsnet {args.app} listening on {server.url}", flush=True)
    if isinstance(app, ChatApp) and isinstance(app.store, SqliteStore):
        sync = "FULL (--fsync)" if args.fsync else "NORMAL"
        logging.getLogger("wsnet").info("chat store: %s (synchronous=%s)", app.store.path, sync)
    node = _join_node(server, args) if args.node_dir is not None else None
    server.serve_forever(hup_restarts=args.as_worker_of is not None)
    if node is not None:
        node.write()  # the last counts, for the supervisor to keep in the totals
    logging.getLogger("wsnet").info("stopped")
    return 0


def _join_node(server: Server, args: argparse.Namespace) -> NodeView:
    """A worker of ``--workers``: /metrics and /healthz answer for the whole
    node, and this worker's snapshot is written every second for the others."""
    routes = server._lifecycle.routes  # the package's own internals, not an application's
    assert routes is not None
    node = NodeView(args.node_dir, args.worker_index, routes.all_families, routes.status)
    routes.node = node

    def write() -> None:
        try:
            node.write()
        except OSError as exc:
            logging.getLogger("wsnet").warning("cannot write the node snapshot: %s", exc)
        server.call_later(NODE_INTERVAL, write)

    write()
    return node


def _join_placement(server: Server, node_dir: str, index: int, fds: str) -> None:
    """A worker of ``--workers`` with affinity: publish its load on the node's
    board, take connections handed to it, hand over those another owns."""
    inbox, *outboxes = (int(fd) for fd in fds.split(","))
    lifecycle = server._lifecycle  # the package's own internals, as in _join_node
    lifecycle.board = LoadBoard(str(Path(node_dir) / BOARD_FILE), len(outboxes), index)
    lifecycle.reactor.take_handoffs(inbox, outboxes)
    lifecycle.board.write(0)


def _ignore_hup() -> None:
    """One process cannot hand its clients to a successor (see README,
    "Deploying"): SIGHUP, a reload elsewhere, must not stop it; say so."""

    def hup(_signum: int, _frame: object) -> None:
        logging.getLogger("wsnet").warning(
            "SIGHUP ignored: a rolling restart needs --workers (one process cannot "
            "restart without closing its clients)")

    signal.signal(signal.SIGHUP, hup)


def _mint(parser: argparse.ArgumentParser, args: argparse.Namespace, secret: bytes | None) -> int:
    if secret is None:
        parser.error(f"--mint-token needs --auth-secret-file or {SECRET_ENV}")
    if not valid_name(args.mint_token):
        parser.error(f"--mint-token: {NAME_RULE}")
    print(make_token(secret, args.mint_token, int(time.time()) + args.token_ttl,
                     _grants(parser, args)))
    return 0


def _grants(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[Grant]:
    """The rooms a minted token grants, each checked like a room name."""
    until = None if args.claim_ttl is None else int(time.time()) + args.claim_ttl
    grants = []
    for room, read_only in [*((r, False) for r in args.grant_rooms),
                            *((r, True) for r in args.read_only_rooms)]:
        if not valid_room(room.removesuffix("*")):
            parser.error(f"--room {room}: {ROOM_RULE}, or such a name followed by *")
        grants.append(Grant(room, read_only, until))
    return grants


def _chat_app(
    parser: argparse.ArgumentParser, args: argparse.Namespace, secret: bytes | None,
) -> ChatApp:
    try:
        settings = ChatSettings(
            history=args.history,
            history_bytes=args.history_bytes,
            history_total_bytes=args.history_total_bytes,
            max_rooms_per_client=args.max_rooms_per_client,
            presence_limit=args.presence_limit,
            room_ttl=args.room_ttl,
            rooms_require_claim=args.rooms_require_claim,
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        api_key = _read_api_key(args.api_key_file)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        parser.error(f"cannot use the API key {args.api_key_file or API_KEY_ENV}: {reason}")
    backplane = None
    if args.redis:
        if not redis_available():
            parser.error("--redis needs hiredis: pip install 'wsnet[redis]'")
        try:
            backplane = RedisBackplane(
                args.redis, node_ttl=args.node_ttl, history_ttl=max(args.room_ttl, 86400),
            )
        except ValueError as exc:
            parser.error(f"--redis: {exc}")
        return ChatApp(secret=secret, settings=settings, backplane=backplane, api_key=api_key)
    store = _open_store(parser, args)
    try:
        return ChatApp(secret=secret, settings=settings, store=store, api_key=api_key)
    except BaseException:
        if store is not None:
            store.close()
        raise


def _open_store(parser: argparse.ArgumentParser, args: argparse.Namespace) -> SqliteStore | None:
    """``--store``: None for memory, else the SQLite store it names (by default
    ``--data-dir/chat.sqlite3``, the directory made if need be)."""
    kind = args.store
    if kind == "memory":
        return None
    if kind is None:
        data_dir = Path(args.data_dir)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreOpenError(f"{data_dir}: cannot create the data directory: "
                                 f"{exc.strerror}") from exc
        path = data_dir / DEFAULT_STORE_FILE
    elif kind.startswith("sqlite:") and len(kind) > len("sqlite:"):
        path = Path(kind.removeprefix("sqlite:"))
    else:
        parser.error(f"--store: expected sqlite:PATH or memory, not {kind!r}")
    return SqliteStore(path, fsync=args.fsync)


def _check_chat_options(
    parser: argparse.ArgumentParser, args: argparse.Namespace, app_class: type[Handler],
) -> None:
    if app_class is not ChatApp:
        for given, option in ((args.redis, "--redis"), (args.store, "--store"),
                              (args.fsync, "--fsync")):
            if given:
                parser.error(f"{option} applies to the chat app, not --app {args.app}")
    if args.redis and (args.store is not None or args.fsync):
        parser.error("--store and --fsync are the single-node engine's: with --redis, "
                     "Redis keeps history")
    if args.node_ttl <= 0:
        parser.error("--node-ttl must be > 0")


def _check_workers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.workers > 1 and not args.redis:
        parser.error(NEEDS_REDIS)


def _setup_logging(args: argparse.Namespace) -> None:
    handler = logging.StreamHandler()
    if args.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        # Workers share the supervisor's standard error: their lines carry their pid.
        name = "%(name)s[%(process)d]" if args.as_worker_of is not None else "%(name)s"
        handler.setFormatter(SafeFormatter(f"%(asctime)s %(levelname)s {name}: %(message)s"))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])


def _supervise(options: list[str], workers: int, config: Config, *, affinity: bool) -> int:
    """``--workers N``: run N worker processes (see ``wsnet.workers``)."""
    supervisor = Supervisor(
        options, workers, config.host, config.port, grace=config.shutdown_grace,
        backlog=config.backlog, affinity=affinity,
    )
    try:
        supervisor.reserve()
    except OSError as exc:
        _cannot_listen(config, exc)
        return 2
    return supervisor.run()


def _cannot_listen(config: Config, exc: OSError) -> None:
    why = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or exc
    print(f"wsnet: cannot listen on {config.host}:{config.port}: {why}", file=sys.stderr)
