"""The connection lifecycle: what happens to a socket from accept to close.

A connection goes HTTP -> OPEN -> CLOSING -> DONE, and ``TRANSITIONS`` lists
every move it may make (as h11 keeps its state machine in one table). HTTP reads
a request with h11; a plain request answered normally stays in HTTP for the next
one (keep-alive; the application may answer later, with ``Pending``), while an
error, a refused upgrade or a request asking to close gets its response and the
socket is half-closed (DONE). An accepted upgrade switches to a wsproto session
(OPEN). When the session stops being open, for whatever reason, the application
hears ``on_close`` exactly once (CLOSING), and the socket closes once the close
handshake ends or ``close_timeout`` passes.

``Lifecycle`` is the reactor's protocol for the server; each connection's
``Link`` is its channel's protocol. Application callbacks never see either: an
exception in one closes only that connection (1011), never the loop.
ARCHITECTURE.md, "The connection lifecycle", has the table with its reasons.
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable
from dataclasses import replace
from enum import Enum
from typing import TYPE_CHECKING

from wsnet._channel import Channel
from wsnet._clock import Timer
from wsnet._deadlines import Deadlines
from wsnet._fanout import Fanout
from wsnet._forwarded import TrustedProxies
from wsnet._http import Pending, Request, Response, keep_alive, render_response
from wsnet._limits import TokenBucket
from wsnet._placement import LoadBoard, owner
from wsnet._reactor import Reactor
from wsnet._routes import Routes
from wsnet._server_metrics import ServerMetrics, close_code_label
from wsnet._session import Session
from wsnet._upgrade import Accept, HttpReader, decide_upgrade, is_upgrade
from wsnet.config import Config
from wsnet.connection import Connection
from wsnet.handler import Handler
from wsnet.logs import ACCESS, access_line

if TYPE_CHECKING:  # the sockets themselves are the reactor's
    import socket
    import ssl

__all__ = ["DONE", "HTTP", "OPEN", "CLOSING", "TRANSITIONS", "Lifecycle", "Link", "Phase"]

log = logging.getLogger("wsnet")


class Phase(Enum):
    HTTP = "http"  # reading the request
    OPEN = "open"  # WebSocket open
    CLOSING = "closing"  # on_close delivered; close handshake and drain under way
    DONE = "done"  # nothing more to say: half-closed, waiting for EOF


HTTP, OPEN, CLOSING, DONE = Phase.HTTP, Phase.OPEN, Phase.CLOSING, Phase.DONE

#: Every phase change there is. HTTP ends in a response (DONE) or an upgrade
#: (OPEN); an open connection is always told it closed (CLOSING) before DONE.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    HTTP: frozenset({OPEN, DONE}),
    OPEN: frozenset({CLOSING}),
    CLOSING: frozenset({DONE}),
    DONE: frozenset({DONE}),
}


def _release(counts: dict[str, int], key: str) -> None:
    """Count one down, forgetting keys at zero so the dict holds only live ones."""
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


#: WebSockets opened after which the collector's objects are frozen, once
#: upgrades pause for GC_FREEZE_QUIET seconds (``Config.gc_freeze``).
GC_FREEZE_AFTER = 1000
GC_FREEZE_QUIET = 1.0
#: Connections' timeouts run up to this late (seconds): those falling due
#: within one grain share a sweep, not a reactor timer each.
SWEEP_GRAIN = 0.05


class _Forgotten:
    """The protocol of a channel whose connection is gone: late news is dropped."""

    def data_received(self, ch: Channel, data: bytes) -> None:
        pass

    def eof_received(self, ch: Channel) -> None:
        pass

    def connection_lost(self, ch: Channel, exc: OSError | None) -> None:
        pass


_FORGOTTEN = _Forgotten()


class Link:
    """The server's record of one connection: channel, phase, parser, session,
    timeout. The application's ``Connection`` is a façade over it."""

    __slots__ = (
        "lifecycle", "ch", "conn", "phase", "http", "pending", "session", "deadline",
        "on_deadline", "bucket",
        "over_limit", "started", "bytes_in", "messages_in", "path", "via", "heard", "told",
        "first",
    )

    def __init__(
        self, lifecycle: Lifecycle, sock: socket.socket, peer: tuple[str, int], ident: int,
    ) -> None:
        self.lifecycle = lifecycle
        self.ch = Channel(sock, self)
        self.conn = Connection(self, ident, peer)
        self.phase = HTTP
        self.http: HttpReader | None = None
        #: The application's answer still to come for the request read.
        self.pending: Pending | None = None
        self.session: Session | None = None
        #: Its one timeout (``Lifecycle.deadlines``): when, and what then.
        self.deadline: float | None = None
        self.on_deadline: Callable[[Lifecycle, Link], None] | None = None
        self.bucket: TokenBucket | None = None
        self.over_limit = False
        #: For the access line: when it was accepted, what came in, the path.
        self.started = lifecycle.reactor.clock()
        self.bytes_in = 0
        self.messages_in = 0
        self.path = "-"
        #: The socket's own peer, when a trusted proxy named the client in ``conn.peer``.
        self.via: tuple[str, int] | None = None
        #: ``bytes_in`` when keepalive last looked: more since means the peer is alive.
        self.heard = 0
        #: Bytes sent to it when keepalive last looked (``Lifecycle._acknowledged``).
        self.told = 0
        #: Every byte read before the first answer, while this connection may still
        #: be handed to the worker that owns its key (``_placement``); else None.
        self.first: bytes | None = b"" if lifecycle.board is not None else None

    @property
    def is_open(self) -> bool:
        return self.phase is OPEN

    def forget(self) -> None:
        """Nothing more will happen here: cut the references back to this
        record (channel -> link, link -> connection, connection -> the
        application's context), so that refcounting frees a closed connection
        at once instead of leaving ~20 objects of cyclic garbage for the
        collector. The application may keep its ``Connection``: it only reports
        itself closed."""
        self.ch.protocol = _FORGOTTEN
        self.conn.context = None
        self.session = None
        del self.conn  # the Connection keeps its link; the link lets go of it

    def enter(self, phase: Phase) -> None:
        if phase not in TRANSITIONS[self.phase]:
            raise AssertionError(f"connection {self.conn.id}: {self.phase.value} -> {phase.value}")
        self.phase = phase

    # The channel's protocol: bytes go to the phase's reader.

    def data_received(self, ch: Channel, data: bytes) -> None:
        self.bytes_in += len(data)
        phase = self.phase
        if phase is OPEN or phase is CLOSING:
            self.lifecycle.feed_websocket(self, data)
        elif phase is HTTP:
            if self.first is not None:
                self.first += data
            self.lifecycle.feed_http(self, data)
        # DONE: the peer's remaining bytes are read and dropped until its EOF.

    def eof_received(self, ch: Channel) -> None:
        self.lifecycle.drop(self)

    def connection_lost(self, ch: Channel, exc: OSError | None) -> None:
        self.lifecycle.drop(self)


class Lifecycle:
    """Every connection's phases, counts and timers; the reactor's protocol."""

    def __init__(
        self, config: Config, handler: Handler, ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.config = config
        self.handler = handler
        self.reactor = reactor = Reactor(
            self,
            flush_interval=config.flush_interval,
            high_water=config.outbox_high_water,
            ssl_context=ssl_context,
            send_buffer=config.socket_send_buffer,
        )
        self.metrics = ServerMetrics()
        #: Every connection's one timeout; swept by one reactor timer, ``_sweep``.
        self.deadlines: Deadlines[Link] = Deadlines()
        self._sweep: Timer | None = None
        reactor.loop.on_tick_late = self.metrics.tick_lateness.observe
        self.fanout = Fanout(config.outbox_limit, reactor.mark_dirty, self.metrics)
        self.links: set[Link] = set()
        self.open = 0
        self.stopping = False
        self._per_ip: dict[str, int] = {}  # open WebSockets per client address
        self._sockets_per_ip: dict[str, int] = {}  # sockets in any phase
        self._next_id = 0
        self.routes: Routes | None = None  # set by the server, which knows its statistics
        self.proxies = TrustedProxies(config.forwarded_allow_ips)
        self._accepted_unfrozen = 0  # WebSockets opened since the last gc.freeze
        self._last_accept = 0.0
        self._scheme = "https" if ssl_context is not None else "http"
        #: With ``--workers``: the node's load board; connections whose key
        #: another worker owns are handed to it (``_placement``). Set before
        #: the first connection is accepted.
        self.board: LoadBoard | None = None
        #: Read once: the descriptor limit it may resolve is the process's at start.
        self._connection_limit = config.connection_limit
        #: Each WebSocket path as the one shared string a link records.
        self._paths = {path: path for path in config.ws_paths}

    # -- the reactor's protocol ----------------------------------------------

    def connection_made(self, sock: socket.socket, peer: tuple[str, int]) -> Channel | None:
        self.metrics.sockets_accepted.value += 1
        link = self._new_link(sock, peer)
        return None if link is None else link.ch

    def connection_handed(
        self, sock: socket.socket, peer: tuple[str, int], data: bytes,
    ) -> Channel | None:
        """A connection another worker accepted and handed here, because this
        worker owns its key: served as if accepted here, from the bytes that
        worker read, and never handed on again."""
        link = self._new_link(sock, peer)
        if link is None:
            return None
        self.metrics.handoffs.labels("received").value += 1
        link.first = None
        link.data_received(link.ch, data)
        return link.ch

    def _new_link(self, sock: socket.socket, peer: tuple[str, int]) -> Link | None:
        per_ip = self.config.max_connections_per_ip
        ip = peer[0]
        if self.proxies and self.proxies.trusts(ip):
            ip = ""  # a proxy's sockets are many clients': counted once each is known
        sockets = self._sockets_per_ip.get(ip, 0)
        if per_ip and ip and sockets >= 2 * per_ip:
            # Sockets still in their handshake or closing count too, or one address
            # could hold every descriptor with requests it never finishes. Twice
            # the limit leaves room for reconnects while old sockets close.
            return None
        self._sockets_per_ip[ip] = sockets + 1
        self._next_id += 1
        link = Link(self, sock, peer, self._next_id)
        link.http = self._reader()
        self._arm(link, self.config.handshake_timeout, Lifecycle.drop)
        self.links.add(link)
        return link

    def tick(self) -> None:
        if self.board is not None and not self.stopping:
            self.board.write(len(self.links))
        self.call_app(None, self.handler.on_tick)
        if self.fanout.slow:
            for link in self.fanout.take_slow():
                self._close_slow(link)
        if (self._accepted_unfrozen >= GC_FREEZE_AFTER and self.config.gc_freeze
                and self.reactor.clock() - self._last_accept >= GC_FREEZE_QUIET):
            self._freeze()

    def _freeze(self) -> None:
        """A burst of connections is in: the young generations are collected
        (cheap), then everything that survived is frozen (``Config.gc_freeze``)."""
        self._accepted_unfrozen = 0
        gc.collect(1)
        gc.freeze()
        log.debug("gc: %d objects frozen", gc.get_freeze_count())

    # -- HTTP phase ----------------------------------------------------------

    def _client_of(self, link: Link, request: Request) -> Request:
        """The request as its client made it: behind a trusted proxy, the
        client's address (``conn.peer``, per-address limits, logs) and scheme."""
        if not self.proxies:
            return request if self._scheme == "http" else replace(request, scheme=self._scheme)
        socket_peer = link.via or link.conn.peer
        client = self.proxies.client(socket_peer, request)
        if client is None:
            link.via, link.conn.peer = None, socket_peer
            return replace(request, peer=socket_peer, scheme=self._scheme)
        link.via, link.conn.peer = socket_peer, (client.ip, client.port)
        return replace(request, peer=link.conn.peer, scheme=client.scheme or self._scheme)

    def _reader(self) -> HttpReader:
        return HttpReader(self.config.max_header_bytes, self.config.max_body_bytes)

    def feed_http(self, link: Link, data: bytes) -> None:
        """Requests, one after another while they keep the connection alive (a
        loop, not recursion: a client may pipeline hundreds)."""
        while link.phase is HTTP:
            reader = link.http
            assert reader is not None
            if link.pending is not None:  # the application is still answering
                if not reader.hold(data):
                    self.drop(link)
                return
            result = reader.feed(data, link.conn.peer)
            if result is None:
                if reader.closed:
                    self.drop(link)
                return
            if isinstance(result, Request):
                result = self._client_of(link, result)
            if isinstance(result, Response):
                self._respond(link, result)
            elif is_upgrade(result):
                self._decide_upgrade(link, result)
            else:
                assert self.routes is not None
                answer = self.routes.answer(result)
                if isinstance(answer, Pending):
                    self._wait(link, result, answer)
                    return
                if not self._answered(link, result, answer):
                    return
                data = reader.leftover()
                if not data:
                    return

    def _wait(self, link: Link, request: Request, pending: Pending) -> None:
        """The application answers later; until then the peer's bytes are held."""
        link.first = None
        link.pending = pending
        self._arm(link, self.config.handshake_timeout, Lifecycle._late)

        def deliver(response: Response) -> None:
            if link.pending is pending and link.phase is HTTP:
                link.pending = None
                assert link.http is not None
                leftover = link.http.leftover()
                if self._answered(link, request, response):
                    self.reactor.write_now(link.ch)
                    if leftover:
                        self.feed_http(link, leftover)

        pending.bind(deliver)

    def _late(self, link: Link) -> None:
        if link.pending is not None:
            link.pending.cancel()
            link.pending = None
            self._respond(link, Response.text(503, "no answer in time", ("Retry-After", "1")))

    def _answered(self, link: Link, request: Request, response: Response) -> bool:
        """Write the response; True if the connection stays for another request
        (keep-alive, the server not stopping, and not too much unread already)."""
        link.first = None
        keep = (keep_alive(request) and not self.stopping
                and link.ch.outbox.nbytes < self.config.outbox_high_water)
        if not keep:
            self._respond(link, response, request)
            return False
        self._log_request(link, request, response)
        head_only = request.method == "HEAD"
        link.ch.outbox.append(render_response(response, head_only=head_only, keep_alive=True))
        link.http = self._reader()
        self._arm(link, self.config.handshake_timeout, Lifecycle.drop)
        self.reactor.mark_dirty(link.ch)
        return True

    def _decide_upgrade(self, link: Link, request: Request) -> None:
        """The protocol's checks first, then the application's say."""
        cfg = self.config
        per_ip = cfg.max_connections_per_ip
        decision = decide_upgrade(
            request,
            ws_paths=cfg.ws_paths,
            deflate=cfg.deflate,
            impose_client_no_context=cfg.deflate_client_no_context_takeover,
            at_capacity=self.open >= self._connection_limit or self.stopping,
            ip_at_capacity=per_ip > 0 and self._per_ip.get(link.conn.peer[0], 0) >= per_ip,
            allowed_origins=cfg.allowed_origins,
        )
        if isinstance(decision, Response):
            self._refuse(link, decision, request)
            return
        if link.first is not None and self._handed_off(link, request):
            return
        try:
            verdict = self.handler.on_upgrade(request)
        except Exception:
            log.exception("application error in on_upgrade")
            verdict = Response.text(500, "internal server error")
        if isinstance(verdict, Response):
            self._refuse(link, verdict, request)
        else:
            link.conn.identity = verdict
            self._upgrade(link, request, decision)

    def _handed_off(self, link: Link, request: Request) -> bool:
        """Hand the connection to the worker that owns its key, if another
        does and has room (``_placement``); True if it went: no longer ours."""
        board = self.board
        data, link.first = link.first, None
        assert board is not None and data is not None
        try:
            key = self.handler.affinity(request)
        except Exception:
            log.exception("application error in affinity")
            return False
        if key is None:
            return False
        outcomes = self.metrics.handoffs
        slot = board.target(key)
        if slot is None:
            here = owner(key, board.workers) == board.me
            outcomes.labels("local" if here else "spilled").value += 1
            return False
        if not self.reactor.hand_off(link.ch, slot, data):
            outcomes.labels("failed").value += 1
            return False
        outcomes.labels("sent").value += 1
        self.drop(link)  # its socket is closed here already: only our records go
        return True

    def _release_address(self, link: Link) -> None:
        ip = (link.via or link.conn.peer)[0]
        _release(self._sockets_per_ip, "" if self.proxies and self.proxies.trusts(ip) else ip)

    def _refuse(self, link: Link, response: Response, request: Request) -> None:
        self.metrics.upgrades_refused.labels(response.status).value += 1
        self._respond(link, response, request)

    def _respond(self, link: Link, response: Response, request: Request | None = None) -> None:
        self._log_request(link, request, response)
        head_only = request is not None and request.method == "HEAD"
        self._last_answer(link, render_response(response, head_only=head_only))

    def _last_answer(self, link: Link, data: bytes) -> None:
        """Write ``data`` as the connection's last bytes, then close it once
        they are out (or after ``close_timeout``)."""
        link.first = None
        link.http = None
        link.ch.outbox.append(data)
        link.enter(DONE)
        self._arm(link, self.config.close_timeout, Lifecycle.drop)
        self.reactor.close_after_drain(link.ch)

    def _upgrade(self, link: Link, request: Request, accept: Accept) -> None:
        assert link.http is not None
        if self.reactor.peer_gone(link.ch):
            self._abandoned(link, accept)
            return
        cfg = self.config
        head, trailing = link.http.switch(accept)
        link.http = None
        link.first = None
        link.ch.outbox.append(head)
        link.session = Session(
            link.ch.outbox,
            max_message_bytes=cfg.max_message_bytes,
            max_fragments=cfg.max_fragments,
            deflate=accept.deflate,
            deflate_level=cfg.deflate_level,
            deflate_min_bytes=cfg.deflate_min_bytes,
        )
        link.enter(OPEN)
        # Long-lived records are made now: a burst of them is what gc_freeze is for.
        self._accepted_unfrozen += 1
        self._last_accept = self.reactor.clock()
        # The configured path itself (shared by every connection), never the query.
        link.path = self._paths.get(request.path, "-")
        self.open += 1
        conn = link.conn
        ip = conn.peer[0]
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        if cfg.rate_limit > 0:
            link.bucket = TokenBucket(cfg.rate_burst, self.reactor.clock())
        link.heard = link.bytes_in  # the handshake does not count as having spoken
        self._arm(link, cfg.ping_interval or None, Lifecycle._ping)
        conn.request = request
        self.call_app(link, self.handler.on_open, conn)
        conn.request = None
        # The 101 (and whatever on_open queued behind it) leaves now. A peer that
        # is already gone is reported on the next loop turn, and hears on_close
        # after on_open.
        self.reactor.write_now(link.ch)
        if link.phase is OPEN and trailing:
            self.feed_websocket(link, trailing)
        else:
            self._after_websocket(link)

    def _abandoned(self, link: Link, accept: Accept) -> None:
        """The peer closed its side behind a whole upgrade request: it may still
        read (a half-close), so the request is answered, but it can never send
        a frame, so the application never hears of it (no ``on_open``, no
        ``on_close``). Most such peers gave up waiting in the accept backlog
        (a reconnect storm's timed-out attempts): serving them would be a join
        and a leave for the room to hear, for no one."""
        assert link.http is not None
        head, _ = link.http.switch(accept)
        self.metrics.upgrades_abandoned.value += 1
        self._last_answer(link, head)

    # -- WebSocket phase -----------------------------------------------------

    def feed_websocket(self, link: Link, data: bytes) -> None:
        session = link.session
        assert session is not None
        on_message = self.handler.on_message
        bucket = link.bucket
        received = self.metrics.messages_received
        conn = link.conn
        for message in session.feed(data):
            if link.phase is not OPEN:
                continue
            received.value += 1
            link.messages_in += 1
            if bucket is not None and not self._admit(link, bucket):
                continue
            self.call_app(link, on_message, conn, message)
        self._after_websocket(link)

    def _admit(self, link: Link, bucket: TokenBucket) -> bool:
        """The message rate limit: a flood is dropped, then closed 1008."""
        cfg = self.config
        if bucket.take(self.reactor.clock(), cfg.rate_limit, cfg.rate_burst):
            return True
        self.metrics.rate_limited.value += 1
        if bucket.strikes == 1:
            self.call_app(link, self.handler.on_rate_limited, link.conn)
        if bucket.strikes >= cfg.rate_limit_close_after and link.phase is OPEN:
            log.info("closing %s: message rate limit exceeded", link.conn.peer)
            self.close(link, 1008, "message rate limit exceeded")
        return False

    def _after_websocket(self, link: Link) -> None:
        """Act on what the session did: notify a close, send close frames now,
        queue other output (pongs) for the tick."""
        session = link.session
        assert session is not None
        if link.phase is OPEN and session.close_code is not None:
            self._closed(link)
        ch = link.ch
        if link.phase is CLOSING:
            if session.closing_done:
                link.enter(DONE)
                self.reactor.close_after_drain(ch)
            else:
                self.reactor.write_now(ch)
        elif ch.outbox and not ch.dead:
            self.reactor.mark_dirty(ch)

    def _closed(self, link: Link) -> None:
        """The session stopped being open: tell the application, once."""
        session = link.session
        assert session is not None and session.close_code is not None
        link.enter(CLOSING)
        self.open -= 1
        self.metrics.closes.labels(close_code_label(session.close_code)).value += 1
        _release(self._per_ip, link.conn.peer[0])
        self._arm(link, self.config.close_timeout, Lifecycle.drop)
        self.call_app(
            None, self.handler.on_close, link.conn, session.close_code, session.close_reason,
        )

    def _close_slow(self, link: Link) -> None:
        session = link.session
        if link.phase is not OPEN or session is None:
            return
        log.info("closing slow consumer %s (%d bytes queued)", link.conn.peer,
                 link.ch.outbox.nbytes)
        self.metrics.slow_consumer_closes.value += 1
        link.ch.outbox.discard()
        session.fail(1008, "slow consumer")
        self._after_websocket(link)

    def close(self, link: Link, code: int, reason: str) -> None:
        session = link.session
        if link.phase is not OPEN or session is None:
            return
        session.close(code, reason)
        self._after_websocket(link)

    # -- timers --------------------------------------------------------------

    def _arm(
        self, link: Link, delay: float | None, action: Callable[[Lifecycle, Link], None],
    ) -> None:
        """Give the connection its one timeout (replacing any earlier one; None:
        none). ``action`` is the class's function, not a bound method, so that
        arming allocates nothing the collector tracks (``_deadlines``)."""
        if delay is None:
            self._disarm(link)
            return
        due = self.deadlines.arm(link, self.reactor.clock(), delay)
        link.on_deadline = action
        self._sweep_by(due)

    def _disarm(self, link: Link) -> None:
        self.deadlines.cancel(link)
        link.on_deadline = None

    def _sweep_by(self, due: float) -> None:
        """Have the deadlines swept at ``due`` (rounded up to ``SWEEP_GRAIN``,
        so that the timeouts of a busy second share a few sweeps)."""
        when = math.ceil(due / SWEEP_GRAIN) * SWEEP_GRAIN
        sweep = self._sweep
        if sweep is not None and not sweep.cancelled:
            if sweep.when <= when:
                return
            self.reactor.cancel(sweep)
        self._sweep = self.reactor.timers.call_at(when, self._run_deadlines)

    def _run_deadlines(self) -> None:
        self._sweep = None
        for link in self.deadlines.pop_due(self.reactor.clock()):
            action, link.on_deadline = link.on_deadline, None
            if action is None:
                continue
            try:
                action(self, link)
            except Exception:
                log.exception("internal error in a connection's timeout")
        due = self.deadlines.next_due()
        if due is not None:
            self._sweep_by(due)

    def _ping(self, link: Link) -> None:
        """Ping a connection that said nothing for a whole interval. One that
        did is alive, and needs no ping: at 100,000 clients the pings and pongs
        of chatty connections alone would be thousands of frames a second."""
        session = link.session
        if link.phase is not OPEN or session is None:
            return
        if link.bytes_in != link.heard or self._acknowledged(link):
            link.heard = link.bytes_in
            self._arm(link, self.config.ping_interval, Lifecycle._ping)
            return
        session.ping(b"wsnet")
        self.reactor.mark_dirty(link.ch)
        self._arm(link, self.config.ping_timeout, Lifecycle._check_pong)

    def _acknowledged(self, link: Link) -> bool:
        """Whether we sent the client something since keepalive last looked
        and its TCP has acknowledged all of it: its host is up and the path
        open, which is what a pong would show, without the ping and the pong
        (at 100,000 clients each hearing a message a second, 5,000 of each a
        second). Not through a trusted proxy: its acknowledgement speaks only
        for the proxy."""
        told = link.ch.outbox.written
        if told == link.told or link.via is not None:
            return False
        link.told = told
        return self.reactor.unacknowledged(link.ch) == 0

    def _check_pong(self, link: Link) -> None:
        session = link.session
        if link.phase is not OPEN or session is None:
            return
        cfg = self.config
        if not session.pong_seen:
            log.info("closing %s: no pong within %.1f s", link.conn.peer, cfg.ping_timeout)
            self.metrics.keepalive_timeouts.value += 1
            session.fail(1011, "keepalive ping timeout")
            self._after_websocket(link)
            return
        link.heard = link.bytes_in  # the pong itself is not news
        link.told = link.ch.outbox.written  # nor the ping
        self._arm(link, max(0.0, cfg.ping_interval - cfg.ping_timeout), Lifecycle._ping)

    def drop(self, link: Link) -> None:
        """Close the socket now, telling the application if it was still open."""
        self._disarm(link)
        session = link.session
        if link.phase is OPEN and session is not None:
            session.receive(None)  # records 1006 unless a code is already known
            self._closed(link)
            self._disarm(link)
        if session is not None and link in self.links and self.config.access_log:
            self._log_websocket(link, session.close_code)
        link.enter(DONE)
        link.http = None
        if link.pending is not None:
            link.pending.cancel()
            link.pending = None
        self.reactor.close(link.ch)
        if link in self.links:
            self.links.remove(link)
            self._release_address(link)
            link.forget()

    # -- access lines ----------------------------------------------------------

    def _log_websocket(self, link: Link, code: int | None) -> None:
        if not ACCESS.isEnabledFor(logging.INFO):
            return
        outbox = link.ch.outbox
        fields = {
            "peer": _peer(link), "path": link.path,
            "duration": round(self.reactor.clock() - link.started, 3),
            "bytes_in": link.bytes_in, "messages_in": link.messages_in,
            "bytes_out": outbox.written, "messages_out": outbox.frames,
            "close": code if code is not None else 1006,
        }
        if link.via is not None:
            fields["via"] = link.via[0]
        ACCESS.info(access_line(fields), extra={"access": fields})

    def _log_request(self, link: Link, request: Request | None, response: Response) -> None:
        if not (self.config.access_log and ACCESS.isEnabledFor(logging.INFO)):
            return
        fields = {
            "peer": _peer(link),
            "method": request.method if request is not None else "-",
            "path": request.path if request is not None else "-",  # no query: no tokens
            "status": response.status, "bytes_out": len(response.body),
            "duration": round(self.reactor.clock() - link.started, 3),
        }
        ACCESS.info(access_line(fields), extra={"access": fields})

    # -- shutdown and application calls --------------------------------------

    def close_all(self, *, restart: bool = False) -> None:
        """Shutting down: drop half-made connections, close open ones 1001. A
        restart (other workers go on) closes them 1012 instead, come back at
        once, and lets requests already accepted finish: a plain one gets its
        answer, an upgrade a 503 to retry (on a worker still running)."""
        self.stopping = True
        if self.board is not None:
            self.board.leave()
        code, reason = (1012, "service restart") if restart else (1001, "server shutting down")
        for link in list(self.links):
            if link.phase is HTTP and not restart:
                self.drop(link)
            elif link.phase is OPEN:
                self.close(link, code, reason)

    def call_app(self, link: Link | None, fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("application error in %s", getattr(fn, "__name__", fn))
            if link is not None and link.phase is OPEN:
                self.close(link, 1011, "internal error")


def _peer(link: Link) -> str:
    host, port = link.conn.peer[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
