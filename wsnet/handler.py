"""The application's side of the server: the callbacks an application overrides.

Kept apart from the server so that an application module, and its tests, can
subclass ``Handler`` while naming the server and connection types only for
typing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from wsnet._http import Pending, Request, Response
from wsnet.metrics import Metric

if TYPE_CHECKING:
    from wsnet.connection import Connection
    from wsnet.server import Server

__all__ = ["Handler"]


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

    def affinity(self, request: Request) -> str | None:
        """With ``--workers``: a key (the chat's room) for an upgrade that passed
        the protocol checks; connections with the same key are best served by
        one worker, which is then handed this connection before ``on_upgrade``
        runs there. None (the default): whichever worker accepted it."""
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

    def on_http(self, request: Request) -> Response | Pending | None:
        """Answer a plain (non-upgrade) request of any method (``request.body``
        holds its body); a ``Pending`` answers later. None falls through to the
        built-in routes (``/healthz``, ``/metrics``, then 404; 405 for methods
        other than GET and HEAD)."""
        return None

    def status(self) -> dict[str, object]:
        """Extra fields for ``/healthz``."""
        return {}

    def metrics(self) -> list[Metric]:
        """Extra metric families for ``/metrics``, rendered after the server's
        own (``wsnet.metrics``: Counter, Gauge, Histogram). Called per scrape."""
        return []
