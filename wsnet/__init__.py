"""wsnet: a single-threaded WebSocket server core with batched, encode-once fan-out.

The public API is what ``__all__`` lists; everything in ``wsnet._*`` is private.
"""

from wsnet._clock import TimerHandle
from wsnet._http import Request, Response
from wsnet._session import CloseCode
from wsnet.config import Config
from wsnet.server import Connection, Handler, Server

__version__ = "0.1.0"

__all__ = [
    "CloseCode",
    "Config",
    "Connection",
    "Handler",
    "Request",
    "Response",
    "Server",
    "TimerHandle",
    "__version__",
]
