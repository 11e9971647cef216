"""The server: connection lifecycle, upgrade routing, fan-out and the application
API, on top of the reactor.

A connection goes HTTP -> OPEN -> CLOSING -> DONE. HTTP reads one request with
h11; a refused or plain request gets one response and the socket is half-closed
(DONE). An accepted upgrade switches to a wsproto session (OPEN). When the
session stops being open, for whatever reason, the application hears
``on_close`` exactly once (CLOSING), and the socket closes once the close
handshake ends or ``close_timeout`` passes.

Application callbacks never see a socket, and an exception in one closes only
that connection (1011), never the loop.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from functools import partial
from typing import Any, ClassVar

from wsnet._clock import Timer
from wsnet._frames import Outgoing
from wsnet._http import Request, Response, json_response, render_response, text_response
from wsnet._limits import TokenBucket
from wsnet._metrics import CONTENT_TYPE, Metric, ServerMetrics, close_code_label, render
from wsnet._reactor import Channel, Reactor
from wsnet._session import Session
from wsnet._upgrade import Accept, HttpReader, decide_upgrade, is_upgrade
from wsnet.config import Config

__all__ = ["Connection", "Handler", "Server"]

log = logging.getLogger("wsnet")


def tls_context(config: Config) -> ssl.SSLContext | None:
    """A server context with modern defaults (TLS 1.2+), or None without TLS.

    Raises OSError / ssl.SSLError for unreadable or mismatched PEM files.
    """
    if config.certfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Client-initiated renegotiation (TLS 1.2) costs us CPU on the client's
    # schedule and makes writes wait for reads; nothing legitimate needs it.
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(config.certfile, config.keyfile)
    return context


def _release(counts: dict[str, int], key: str) -> None:
    """Count one down, forgetting keys at zero so the dict holds only live ones."""
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


class Phase(Enum):
    HTTP = "http"  # reading the request
    OPEN = "open"  # WebSocket open
    CLOSING = "closing"  # on_close delivered; close handshake and drain under way
    DONE = "done"  # nothing more to say: half-closed, waiting for EOF


HTTP, OPEN, CLOSING, DONE = Phase.HTTP, Phase.OPEN, Phase.CLOSING, Phase.DONE


class Connection(Channel):
    """One client connection, as applications see it."""

    __slots__ = (
        "server",
        "id",
        "peer",
        "phase",
        "http",
        "session",
        "timer",
        "request",
        "context",
        "identity",
        "bucket",
        "over_limit",
    )

    def __init__(self, server: Server, sock: socket.socket, peer: tuple[str, int], ident: int):
        super().__init__(sock)
        self.server = server
        #: A number unique within this server process.
        self.id = ident
        #: The client's (address, port).
        self.peer = peer
        self.phase = HTTP
        self.http: HttpReader | None = None
        self.session: Session | None = None
        self.timer: Timer | None = None
        #: The upgrade request. Kept only during ``on_open``: copy what you need,
        #: since header strings would otherwise dominate an idle connection's memory.
        self.request: Request | None = None
        #: Free for the application (a user record, a room list, ...).
        self.context: Any = None
        #: What ``Handler.on_upgrade`` returned for this connection (who it is).
        self.identity: Any = None
        self.bucket: TokenBucket | None = None
        self.over_limit = False

    @property
    def is_open(self) -> bool:
        return self.phase is OPEN

    @property
    def deflate(self) -> bool:
        """Did this client negotiate permessage-deflate?"""
        return self.session is not None and self.session.deflate is not None

    def send(self, data: str | bytes) -> bool:
        """Queue a text (str) or binary (bytes) message for the next flush.

        Returns False, sending nothing, if the connection is not open or is a
        slow consumer: more than ``outbox_limit`` bytes were already waiting when
        a message was queued (it is then closed 1008 at the next tick).
        """
        return self.server._send(self, Outgoing(data))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; ``on_close`` follows at once."""
        self.server._close(self, code, reason)

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.peer[0]}:{self.peer[1]} {self.phase.value}>"


class Handler:
    """Application callbacks. Subclass and override what you need.

    All callbacks run on the server's single thread; keep them short. ``data`` is
    ``str`` for text messages and ``bytes`` for binary ones.
    """

    #: Config fields this application prefers over the library defaults; the CLI
    #: applies them before the user's own options.
    config_defaults: ClassVar[Mapping[str, object]] = {}

    server: Server

    def on_start(self, server: Server) -> None:
        """The server is listening."""
        self.server = server

    def on_stop(self) -> None:
        """The server stopped serving (every client is gone); release what
        ``on_start`` acquired."""

    def on_upgrade(self, request: Request) -> Any:
        """Accept or refuse an upgrade that passed the protocol checks.

        Return a ``Response`` to refuse it (401, 403, ...); anything else accepts
        it and becomes ``conn.identity`` (e.g. the authenticated user).
        """
        return None

    def on_open(self, conn: Connection) -> None:
        """A WebSocket opened; ``conn.request`` is the upgrade request."""

    def on_message(self, conn: Connection, data: str | bytes) -> None:
        """A whole message arrived."""

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        """The connection is no longer open (1006 if the peer just vanished)."""

    def on_tick(self) -> None:
        """Called before every flush: the place to send what a tick batched."""

    def on_rate_limited(self, conn: Connection) -> None:
        """A message from ``conn`` was dropped by the rate limit (called for the
        first refusal of a flood; the flood closes 1008 if it goes on)."""

    def on_http(self, request: Request) -> Response | None:
        """Answer a plain (non-upgrade) GET or HEAD; None falls through to the
        built-in routes (``/healthz``, ``/metrics``, then 404)."""
        return None

    def status(self) -> dict[str, object]:
        """Extra fields for ``/healthz``."""
        return {}

    def metrics(self) -> list[Metric]:
        """Extra metric families for ``/metrics``, rendered after the server's
        own (``wsnet._metrics``: Counter, Gauge, Histogram). Called per scrape."""
        return []


class Server:
    """A WebSocket server running one ``Handler`` on one reactor thread."""

    def __init__(self, handler: Handler, config: Config | None = None) -> None:
        self.config = config or Config()
        self.handler = handler
        self.reactor = Reactor(
            self,
            flush_interval=self.config.flush_interval,
            high_water=self.config.outbox_high_water,
            ssl_context=tls_context(self.config),
        )
        self.reactor.on_stop_request = self._begin_shutdown
        self.address: tuple[str, int] | None = None
        self._conns: set[Connection] = set()
        self._open = 0
        self._per_ip: dict[str, int] = {}  # open WebSockets per client address
        self._sockets_per_ip: dict[str, int] = {}  # sockets in any phase
        self._next_id = 0
        self._limit = self.config.connection_limit
        self._over_limit: list[Connection] = []
        self._started = time.monotonic()
        self._metrics = ServerMetrics()
        self._stopping = False
        self._forced = False

    # -- public --------------------------------------------------------------

    def listen(self) -> tuple[str, int]:
        """Bind the listening socket; OSError (e.g. EADDRINUSE) propagates."""
        if self.address is None:
            cfg = self.config
            self.address = self.reactor.listen(
                cfg.host, cfg.port, cfg.backlog, reuse_port=cfg.reuse_port,
            )
            self.handler.on_start(self)
        return self.address

    @property
    def url(self) -> str:
        host, port = self.listen()
        if ":" in host:
            host = f"[{host}]"
        scheme = "wss" if self.config.tls else "ws"
        return f"{scheme}://{host}:{port}/"

    def serve_forever(self, *, install_signal_handlers: bool = True) -> None:
        """Serve until SIGINT/SIGTERM or ``stop()``, then shut down gracefully:
        stop accepting, flush, close every client with 1001, wait up to
        ``shutdown_grace`` for their replies."""
        self.listen()
        if install_signal_handlers:
            self.reactor.install_signal_handlers()
        try:
            self.reactor.run(until=self._finished)
        finally:
            for conn in list(self._conns):
                self._drop(conn)
            self._call_app(None, self.handler.on_stop)
            self.reactor.close_all()

    def stop(self) -> None:
        """Begin a graceful shutdown (safe from other threads and signal handlers)."""
        self.reactor.request_stop()

    def broadcast(self, conns: Iterable[Connection], data: str | bytes) -> int:
        """Send one message to many connections, encoded once.

        The same frame object (plain, or compressed once per window size) goes
        into every outbox. Returns how many connections it was queued for.
        """
        message = Outgoing(data)
        limit = self.config.outbox_limit
        mark_dirty = self.reactor.mark_dirty
        plain: bytes | None = None
        queued = 0
        for conn in conns:
            session = conn.session
            if conn.phase is not OPEN or session is None or conn.over_limit:
                continue
            if session.deflate is None:
                if plain is None:
                    plain = message.plain()
                frame = plain
            else:
                frame = session.frame_for(message)
            box = conn.outbox
            if box.nbytes > limit:
                self._flag_slow(conn)
                continue
            box.append(frame)
            queued += 1
            mark_dirty(conn)
        metrics = self._metrics
        metrics.deliveries.value += queued
        metrics.broadcasts.value += 1
        metrics.broadcast_recipients.observe(queued)
        return queued

    def statistics(self) -> dict[str, object]:
        return {
            "status": "stopping" if self._stopping else "ok",
            "connections": self._open,
            "uptime_s": round(time.monotonic() - self._started, 3),
        }

    # -- reactor protocol ----------------------------------------------------

    def connection_made(self, sock: socket.socket, peer: tuple[str, int]) -> Channel | None:
        self._metrics.sockets_accepted.value += 1
        per_ip = self.config.max_connections_per_ip
        ip = peer[0]
        sockets = self._sockets_per_ip.get(ip, 0)
        if per_ip and sockets >= 2 * per_ip:
            # Sockets still in their handshake or closing count too, or one address
            # could hold every descriptor with requests it never finishes. Twice
            # the limit leaves room for reconnects while old sockets close.
            return None
        self._sockets_per_ip[ip] = sockets + 1
        self._next_id += 1
        conn = Connection(self, sock, peer, self._next_id)
        conn.http = HttpReader(self.config.max_header_bytes)
        conn.timer = self.reactor.call_later(
            self.config.handshake_timeout, partial(self._drop, conn),
        )
        self._conns.add(conn)
        return conn

    def data_received(self, ch: Channel, data: bytes) -> None:
        conn: Connection = ch  # type: ignore[assignment]
        phase = conn.phase
        if phase is OPEN or phase is CLOSING:
            self._feed_websocket(conn, data)
        elif phase is HTTP:
            self._feed_http(conn, data)
        # DONE: the peer's remaining bytes are read and dropped until its EOF.

    def eof_received(self, ch: Channel) -> None:
        self._drop(ch)  # type: ignore[arg-type]

    def connection_lost(self, ch: Channel, exc: OSError | None) -> None:
        self._drop(ch)  # type: ignore[arg-type]

    def tick(self) -> None:
        self._call_app(None, self.handler.on_tick)
        if self._over_limit:
            slow, self._over_limit = self._over_limit, []
            for conn in slow:
                self._close_slow(conn)

    # -- HTTP phase ----------------------------------------------------------

    def _feed_http(self, conn: Connection, data: bytes) -> None:
        reader = conn.http
        assert reader is not None
        result = reader.feed(data, conn.peer)
        if result is None:
            if reader.closed:
                self._drop(conn)
        elif isinstance(result, Response):
            self._respond(conn, result)
        elif is_upgrade(result):
            self._decide_upgrade(conn, result)
        else:
            self._respond(conn, self._plain(result), result)

    def _decide_upgrade(self, conn: Connection, request: Request) -> None:
        """The protocol's checks first, then the application's say."""
        cfg = self.config
        per_ip = cfg.max_connections_per_ip
        decision = decide_upgrade(
            request,
            ws_paths=cfg.ws_paths,
            deflate=cfg.deflate,
            impose_client_no_context=cfg.deflate_client_no_context_takeover,
            at_capacity=self._open >= self._limit or self._stopping,
            ip_at_capacity=per_ip > 0 and self._per_ip.get(conn.peer[0], 0) >= per_ip,
            allowed_origins=cfg.allowed_origins,
        )
        if isinstance(decision, Response):
            self._refuse(conn, decision, request)
            return
        try:
            verdict = self.handler.on_upgrade(request)
        except Exception:
            log.exception("application error in on_upgrade")
            verdict = text_response(500, "internal server error")
        if isinstance(verdict, Response):
            self._refuse(conn, verdict, request)
        else:
            conn.identity = verdict
            self._upgrade(conn, request, decision)

    def _refuse(self, conn: Connection, response: Response, request: Request) -> None:
        self._metrics.upgrades_refused.labels(response.status).value += 1
        self._respond(conn, response, request)

    def _plain(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return text_response(405, "method not allowed", ("Allow", "GET, HEAD"))
        try:
            response = self.handler.on_http(request)
        except Exception:
            log.exception("application error in on_http")
            return text_response(500, "internal server error")
        if response is not None:
            return response
        if request.path == "/healthz":
            try:
                extra = self.handler.status()
            except Exception:
                log.exception("application error in status")
                return text_response(500, "internal server error")
            return json_response(200, {**self.statistics(), **extra})
        if request.path == "/metrics":
            return self._metrics_response()
        if request.path in self.config.ws_paths:
            return text_response(
                426,
                "this is a WebSocket endpoint: connect with a WebSocket client",
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Version", "13"),
            )
        return text_response(404, "not found")

    def _metrics_response(self) -> Response:
        """The Prometheus exposition: the server's families, then the
        application's. A failing ``Handler.metrics`` is logged and leaves out
        only the application's part, so the server's numbers stay visible."""
        metrics = self._metrics
        metrics.connections.value = self._open
        metrics.outbox_bytes.value = sum(conn.outbox.nbytes for conn in self._conns)
        metrics.uptime.value = round(time.monotonic() - self._started, 3)
        families = metrics.families()
        try:
            body = render([*families, *self.handler.metrics()])
        except Exception:
            log.exception("application error in metrics")
            body = render(families)
        return Response(200, body, content_type=CONTENT_TYPE)

    def _respond(
        self, conn: Connection, response: Response, request: Request | None = None,
    ) -> None:
        head_only = request is not None and request.method == "HEAD"
        conn.outbox.append(render_response(response, head_only=head_only))
        conn.http = None
        conn.phase = DONE
        self._arm(conn, self.config.close_timeout, self._drop)
        self.reactor.close_after_drain(conn)

    def _upgrade(self, conn: Connection, request: Request, accept: Accept) -> None:
        assert conn.http is not None
        cfg = self.config
        head, trailing = conn.http.switch(accept)
        conn.http = None
        conn.outbox.append(head)
        conn.session = Session(
            conn.outbox,
            max_message_bytes=cfg.max_message_bytes,
            max_fragments=cfg.max_fragments,
            deflate=accept.deflate,
            deflate_level=cfg.deflate_level,
            deflate_min_bytes=cfg.deflate_min_bytes,
        )
        conn.phase = OPEN
        self._open += 1
        ip = conn.peer[0]
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        if cfg.rate_limit > 0:
            conn.bucket = TokenBucket(cfg.rate_burst, self.reactor.clock())
        self._arm(conn, cfg.ping_interval or None, self._ping)
        conn.request = request
        self._call_app(conn, self.handler.on_open, conn)
        conn.request = None
        # The 101 (and whatever on_open queued behind it) leaves now. A peer that
        # is already gone is dropped here, and hears on_close after on_open.
        self.reactor.write_now(conn)
        if conn.phase is OPEN and trailing:
            self._feed_websocket(conn, trailing)
        else:
            self._after_websocket(conn)

    # -- WebSocket phase -----------------------------------------------------

    def _feed_websocket(self, conn: Connection, data: bytes) -> None:
        session = conn.session
        assert session is not None
        on_message = self.handler.on_message
        bucket = conn.bucket
        received = self._metrics.messages_received
        for message in session.feed(data):
            if conn.phase is not OPEN:
                continue
            received.value += 1
            if bucket is not None and not self._admit(conn, bucket):
                continue
            self._call_app(conn, on_message, conn, message)
        self._after_websocket(conn)

    def _admit(self, conn: Connection, bucket: TokenBucket) -> bool:
        cfg = self.config
        if bucket.take(self.reactor.clock(), cfg.rate_limit, cfg.rate_burst):
            return True
        self._metrics.rate_limited.value += 1
        if bucket.strikes == 1:
            self._call_app(conn, self.handler.on_rate_limited, conn)
        if bucket.strikes >= cfg.rate_limit_close_after and conn.phase is OPEN:
            log.info("closing %s: message rate limit exceeded", conn.peer)
            self._close(conn, 1008, "message rate limit exceeded")
        return False

    def _after_websocket(self, conn: Connection) -> None:
        """Act on what the session did: notify a close, send close frames now,
        queue other output (pongs) for the tick."""
        session = conn.session
        assert session is not None
        if conn.phase is OPEN and session.close_code is not None:
            self._closed(conn)
        if conn.phase is CLOSING:
            if session.closing_done:
                conn.phase = DONE
                self.reactor.close_after_drain(conn)
            else:
                self.reactor.write_now(conn)
        elif conn.outbox and not conn.dead:
            self.reactor.mark_dirty(conn)

    def _closed(self, conn: Connection) -> None:
        """The session stopped being open: tell the application, once."""
        session = conn.session
        assert session is not None and session.close_code is not None
        conn.phase = CLOSING
        self._open -= 1
        self._metrics.closes.labels(close_code_label(session.close_code)).value += 1
        _release(self._per_ip, conn.peer[0])
        self._arm(conn, self.config.close_timeout, self._drop)
        self._call_app(None, self.handler.on_close, conn, session.close_code, session.close_reason)

    def _send(self, conn: Connection, message: Outgoing) -> bool:
        session = conn.session
        if conn.phase is not OPEN or session is None or conn.over_limit:
            return False
        if conn.outbox.nbytes > self.config.outbox_limit:
            self._flag_slow(conn)
            return False
        if not session.send(message):
            return False
        self._metrics.deliveries.value += 1
        self.reactor.mark_dirty(conn)
        return True

    def _flag_slow(self, conn: Connection) -> None:
        """Past the outbox limit: stop queueing now, close 1008 at the tick.

        The limit applies to what was already waiting, not to the frame being
        added: one large batch must not condemn a client that reads at once, and
        memory per client stays under the limit plus one frame. The message that
        found the backlog over the limit is not queued.

        Deferred so that applications never see ``on_close`` from inside their
        own ``send`` or ``broadcast`` loops over a set they are iterating.
        """
        conn.over_limit = True
        self._over_limit.append(conn)

    def _close_slow(self, conn: Connection) -> None:
        session = conn.session
        if conn.phase is not OPEN or session is None:
            return
        log.info("closing slow consumer %s (%d bytes queued)", conn.peer, conn.outbox.nbytes)
        self._metrics.slow_consumer_closes.value += 1
        conn.outbox.discard()
        session.fail(1008, "slow consumer")
        self._after_websocket(conn)

    def _close(self, conn: Connection, code: int, reason: str) -> None:
        session = conn.session
        if conn.phase is not OPEN or session is None:
            return
        session.close(code, reason)
        self._after_websocket(conn)

    # -- timers --------------------------------------------------------------

    def _arm(
        self, conn: Connection, delay: float | None, action: Callable[[Connection], None],
    ) -> None:
        """Give the connection its one timer (replacing any earlier one)."""
        self.reactor.cancel(conn.timer)
        if delay is None:
            conn.timer = None
        else:
            conn.timer = self.reactor.call_later(delay, partial(action, conn))

    def _ping(self, conn: Connection) -> None:
        session = conn.session
        if conn.phase is not OPEN or session is None:
            return
        cfg = self.config
        session.ping(b"wsnet")
        self.reactor.mark_dirty(conn)
        self._arm(conn, cfg.ping_timeout, self._check_pong)

    def _check_pong(self, conn: Connection) -> None:
        session = conn.session
        if conn.phase is not OPEN or session is None:
            return
        cfg = self.config
        if not session.pong_seen:
            log.info("closing %s: no pong within %.1f s", conn.peer, cfg.ping_timeout)
            self._metrics.keepalive_timeouts.value += 1
            session.fail(1011, "keepalive ping timeout")
            self._after_websocket(conn)
            return
        self._arm(conn, max(0.0, cfg.ping_interval - cfg.ping_timeout), self._ping)

    def _drop(self, conn: Connection) -> None:
        """Close the socket now, telling the application if it was still open."""
        self.reactor.cancel(conn.timer)
        conn.timer = None
        session = conn.session
        if conn.phase is OPEN and session is not None:
            session.receive(None)  # records 1006 unless a code is already known
            self._closed(conn)
            self.reactor.cancel(conn.timer)
            conn.timer = None
        conn.phase = DONE
        conn.http = None
        self.reactor.close(conn)
        if conn in self._conns:
            self._conns.remove(conn)
            _release(self._sockets_per_ip, conn.peer[0])

    # -- shutdown ------------------------------------------------------------

    def _begin_shutdown(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        log.info("shutting down: closing %d connections", self._open)
        self.reactor.stop_listening()
        self.reactor.call_later(self.config.shutdown_grace, self._force_stop)
        self.tick()  # send what the application batched this tick
        self.reactor.flush()
        for conn in list(self._conns):
            if conn.phase is HTTP:
                self._drop(conn)
            elif conn.phase is OPEN:
                self._close(conn, 1001, "server shutting down")

    def _force_stop(self) -> None:
        self._forced = True

    def _finished(self) -> bool:
        return self._stopping and (self._forced or not self._conns)

    def _call_app(self, conn: Connection | None, fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("application error in %s", getattr(fn, "__name__", fn))
            if conn is not None and conn.phase is OPEN:
                self._close(conn, 1011, "internal error")
