"""``Server``: one ``Handler`` served on one reactor thread.

The server is the application's handle on the loop: it listens, runs, stops,
broadcasts, schedules calls and opens outbound streams. What happens to each
connection lives in ``_lifecycle``, the plain-HTTP answers in ``_routes``, the
queueing of frames in ``_fanout``; this module wires them together.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Iterable

from wsnet._clock import TimerHandle
from wsnet._lifecycle import Lifecycle
from wsnet._routes import Routes
from wsnet._stream import Stream, StreamProtocol
from wsnet.config import Config
from wsnet.connection import Connection
from wsnet.handler import Handler
from wsnet.metrics import Metric

__all__ = ["Connection", "Handler", "Server", "tls_context"]

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


class Server:
    """A WebSocket server running one ``Handler`` on one reactor thread."""

    def __init__(self, handler: Handler, config: Config | None = None) -> None:
        self.config = config or Config()
        self.handler = handler
        self.address: tuple[str, int] | None = None
        cfg = self.config
        self._lifecycle = lifecycle = Lifecycle(cfg, handler, tls_context(cfg))
        self._reactor = lifecycle.reactor
        self._reactor.loop.on_stop_request = self._begin_shutdown
        lifecycle.routes = Routes(handler, cfg.ws_paths, self.statistics, self._families)
        self._started = time.monotonic()
        self._forced = False

    # -- running -------------------------------------------------------------

    def listen(self, fd: int | None = None) -> tuple[str, int]:
        """Bind the listening socket, or (``fd``) accept on an inherited one that
        is already listening; OSError (e.g. EADDRINUSE) propagates."""
        if self.address is None:
            cfg = self.config
            self.address = self._reactor.listen(
                cfg.host, cfg.port, cfg.backlog, reuse_port=cfg.reuse_port, fd=fd,
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

    def serve_forever(
        self, *, install_signal_handlers: bool = True, hup_restarts: bool = False,
    ) -> None:
        """Serve until SIGINT/SIGTERM or ``stop()``, then shut down gracefully:
        stop accepting, flush, close every client with 1001, wait up to
        ``shutdown_grace`` for their replies."""
        self.listen()
        reactor = self._reactor
        if install_signal_handlers:
            reactor.loop.install_signal_handlers(hup_restarts=hup_restarts)
        try:
            reactor.run(until=self._finished)
        finally:
            lifecycle = self._lifecycle
            for link in list(lifecycle.links):
                lifecycle.drop(link)
            lifecycle.call_app(None, self.handler.on_stop)
            reactor.close_all()

    def stop(self, *, restart: bool = False) -> None:
        """Begin a graceful shutdown (safe from other threads and signal handlers).
        ``restart``: clients are closed 1012 ("service restart": reconnect now)
        instead of 1001."""
        self._reactor.loop.request_stop(restart=restart)

    # -- for applications ----------------------------------------------------

    def broadcast(self, conns: Iterable[Connection], data: str | bytes) -> int:
        """Send one message to many connections, encoded once.

        The same frame object (plain, or compressed once per window size) goes
        into every outbox. Returns how many connections it was queued for.
        """
        return self._lifecycle.fanout.broadcast(conns, data)

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle:
        """Call ``callback()`` on the loop's thread after ``delay`` seconds.

        Not thread-safe: call it from a callback. An exception from ``callback``
        is logged and the loop goes on.
        """
        reactor = self._reactor
        return TimerHandle(reactor.timers, reactor.call_later(delay, callback))

    def cancel(self, handle: TimerHandle | None) -> None:
        """Cancel a call from ``call_later`` (None, repeats and calls that already
        ran are no-ops)."""
        if handle is not None:
            handle.cancel()

    def clock(self) -> float:
        """The loop's clock (monotonic seconds), as ``call_later`` counts."""
        return self._reactor.clock()

    def open_stream(
        self, host: str, port: int, protocol: StreamProtocol, *, timeout: float,
    ) -> Stream:
        """Open an outbound TCP connection served by this loop (a client of
        another service, e.g. Redis); ``protocol`` hears its bytes and its end."""
        return self._reactor.open_stream(host, port, protocol, timeout=timeout)

    def statistics(self) -> dict[str, object]:
        return {
            "status": "stopping" if self._lifecycle.stopping else "ok",
            "connections": self._lifecycle.open,
            "uptime_s": round(time.monotonic() - self._started, 3),
        }

    # -- private -------------------------------------------------------------

    def _families(self) -> list[Metric]:
        lifecycle = self._lifecycle
        metrics = lifecycle.metrics
        metrics.connections.value = lifecycle.open
        metrics.outbox_bytes.value = self._reactor.queued_bytes()
        metrics.uptime.value = round(time.monotonic() - self._started, 3)
        return metrics.families()

    def _begin_shutdown(self) -> None:
        lifecycle = self._lifecycle
        if lifecycle.stopping:
            return
        log.info("shutting down: closing %d connections", lifecycle.open)
        reactor = self._reactor
        reactor.stop_listening()
        reactor.call_later(self.config.shutdown_grace, self._force_stop)
        lifecycle.stopping = True
        lifecycle.tick()  # send what the application batched this tick
        reactor.flush()
        lifecycle.close_all(restart=reactor.loop.restart)

    def _force_stop(self) -> None:
        self._forced = True

    def _finished(self) -> bool:
        return self._lifecycle.stopping and (self._forced or not self._lifecycle.links)
