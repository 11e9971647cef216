"""wsnet: a single-threaded WebSocket server core with batched, encode-once fan-out.

The public API is what ``__all__`` lists; everything in ``wsnet._*`` is private.

Names are imported on first use (PEP 562), so ``import wsnet.chat.protocol`` or
``import wsnet.metrics`` does not pull in the reactor, ``socket``, ``selectors``
or ``ssl``: the sans-I/O parts stay importable, and testable, on their own.
ARCHITECTURE.md (beside this package) describes how the modules fit together.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsnet._clock import TimerHandle
    from wsnet._http import Pending, Request, Response
    from wsnet._session import CloseCode
    from wsnet.config import Config
    from wsnet.connection import Connection
    from wsnet.handler import Handler
    from wsnet.server import Server

__version__ = "0.1.0"

_HOMES = {
    "CloseCode": "wsnet._session",
    "Config": "wsnet.config",
    "Connection": "wsnet.connection",
    "Handler": "wsnet.handler",
    "Pending": "wsnet._http",
    "Request": "wsnet._http",
    "Response": "wsnet._http",
    "Server": "wsnet.server",
    "TimerHandle": "wsnet._clock",
}

__all__ = [
    "CloseCode",
    "Config",
    "Connection",
    "Handler",
    "Pending",
    "Request",
    "Response",
    "Server",
    "TimerHandle",
    "__version__",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'wsnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
