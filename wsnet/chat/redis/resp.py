"""RESP, the Redis wire format: commands encoded here, replies parsed by
hiredis' ``Reader`` (the optional ``redis`` extra). Pure: bytes in, values out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

try:  # the optional ``redis`` extra; the core imports without it
    import hiredis
except ImportError:  # pragma: no cover - checked when a backplane starts
    hiredis = None  # type: ignore[assignment]

__all__ = [
    "RedisAddress", "RedisError", "Reply", "encode_command", "new_reader", "redis_available",
]

Reply = Any  # bytes | int | list | None | RedisError, as hiredis builds them


class RedisError(Exception):
    """An error reply, or the connection failing under a command."""


@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str
    port: int
    db: int

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """``redis://host[:port][/db]``; ValueError says what is wrong."""
        parts = urlsplit(url)
        if parts.scheme != "redis" or not parts.hostname:
            raise ValueError(f"not a redis://host:port/db URL: {url!r}")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"the database in {url!r} must be a number")
        return cls(parts.hostname, parts.port or 6379, int(path or 0))

    def __str__(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"


def encode_command(*args: bytes | str | int) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def redis_available() -> bool:
    """Is the parser of the optional ``redis`` extra installed?"""
    return hiredis is not None


def new_reader() -> Any:
    """A reply parser: ``feed(bytes)``, then ``gets()`` until it returns False."""
    if hiredis is None:
        raise RuntimeError("the Redis backplane needs hiredis: pip install 'wsnet[redis]'")
    return hiredis.Reader(replyError=RedisError)
