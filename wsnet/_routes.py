"""The built-in answers to plain HTTP requests: the application's ``on_http``
first (any method), then for GET and HEAD ``/healthz``, ``/metrics``, 426 on
WebSocket paths, and 404; 405 for other methods.

Pure: it sees a request and returns a response; the numbers it reports come
from callables the server gives it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from wsnet._http import Pending, Request, Response
from wsnet._nodeview import NodeView
from wsnet.handler import Handler
from wsnet.metrics import CONTENT_TYPE, Metric, render

__all__ = ["Routes"]

log = logging.getLogger("wsnet")

_INTERNAL_ERROR = "internal server error"


class Routes:
    """Answers every plain (non-upgrade) request."""

    def __init__(
        self,
        handler: Handler,
        ws_paths: frozenset[str] | tuple[str, ...],
        statistics: Callable[[], dict[str, object]],
        families: Callable[[], list[Metric]],
    ) -> None:
        self._handler = handler
        self._ws_paths = ws_paths
        self._statistics = statistics
        self._families = families

    #: With ``--workers``: the whole node's view (``_nodeview``), else None.
    node: NodeView | None = None

    def status(self) -> dict[str, object]:
        """``/healthz``'s fields for this process."""
        return {**self._statistics(), **self._handler.status()}

    def all_families(self) -> list[Metric]:
        """The server's families, then the application's (left out if it fails)."""
        families = self._families()
        try:
            return [*families, *self._handler.metrics()]
        except Exception:
            log.exception("application error in metrics")
            return families

    def answer(self, request: Request) -> Response | Pending:
        handler = self._handler
        try:
            response = handler.on_http(request)
        except Exception:
            log.exception("application error in on_http")
            return Response.text(500, _INTERNAL_ERROR)
        if response is not None:
            return response
        if request.method not in ("GET", "HEAD"):
            return Response.text(405, "method not allowed", ("Allow", "GET, HEAD"))
        if request.path == "/healthz":
            try:
                if self.node is not None:
                    code, body = self.node.health()
                    return Response.json(code, body)
                extra = handler.status()
            except Exception:
                log.exception("application error in status")
                return Response.text(500, _INTERNAL_ERROR)
            return Response.json(200, {**self._statistics(), **extra})
        if request.path == "/metrics":
            if self.node is not None:
                return Response(200, render(self.node.metrics()), content_type=CONTENT_TYPE)
            return self.metrics()
        if request.path in self._ws_paths:
            return Response.text(
                426,
                "this is a WebSocket endpoint: connect with a WebSocket client",
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Version", "13"),
            )
        return Response.text(404, "not found")

    def metrics(self) -> Response:
        """The Prometheus exposition: the server's families, then the
        application's. A failing ``Handler.metrics`` is logged and leaves out
        only the application's part, so the server's numbers stay visible."""
        families = self._families()
        try:
            body = render([*families, *self._handler.metrics()])
        except Exception:
            log.exception("application error in metrics")
            body = render(families)
        return Response(200, body, content_type=CONTENT_TYPE)
