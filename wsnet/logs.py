"""Log records an operator can use: escaped text or one JSON object per line,
secrets masked, and the access line each connection leaves when it closes.

The server logs through ``logging`` ("wsnet", and "wsnet.access" for access
lines); ``python -m wsnet`` installs one of these formatters. Access lines carry
their fields as ``record.access`` too, so the JSON form has them as fields.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, ClassVar

__all__ = ["ACCESS", "JsonFormatter", "SafeFormatter", "access_line", "mask_secrets"]

#: Where access lines go: one per WebSocket at close, one per plain request.
ACCESS = logging.getLogger("wsnet.access")

#: A token in a query string, or a bearer credential, wherever it appears.
_SECRETS = re.compile(r"(?i)(\btoken=|\bbearer\s+)[^\s&\"']+")


def mask_secrets(text: str) -> str:
    """``?token=abc`` -> ``?token=***``; ``Bearer abc`` -> ``Bearer ***``."""
    return _SECRETS.sub(r"\1***", text)


class SafeFormatter(logging.Formatter):
    """Escape control characters, so text a peer chose (in an exception message,
    say) cannot forge log lines or drive the terminal; mask secrets."""

    _TABLE: ClassVar[dict[int, str]] = {
        c: f"\\x{c:02x}" if c < 256 else f"\\u{c:04x}"
        for c in [*range(32), *range(127, 160), 0x2028, 0x2029]
        if c != 9
    }

    def formatMessage(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().formatMessage(record)).translate(self._TABLE)

    def format(self, record: logging.LogRecord) -> str:
        # A traceback spans lines by design, and an exception's text may hold a
        # newline a peer chose: every continuation line is escaped and marked, so
        # nothing can pass for a record of its own.
        first, *rest = super().format(record).split("\n")
        return first + "".join("\n  | " + mask_secrets(line).translate(self._TABLE)
                               for line in rest)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, for log shippers: ``time``, ``level``,
    ``logger``, ``pid``, ``message``, an access line's fields, ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": mask_secrets(record.getMessage()),
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry.update(access)
        if record.exc_info:
            entry["exception"] = mask_secrets(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))


def access_line(fields: dict[str, Any]) -> str:
    """The text form of an access record's fields."""
    if "status" in fields:
        return (f"{fields['peer']} {fields['method']} {fields['path']} {fields['status']} "
                f"{fields['bytes_out']}B {fields['duration']:.3f}s")
    return (f"{fields['peer']} websocket {fields['path']} {fields['duration']:.1f}s "
            f"in {fields['bytes_in']}B/{fields['messages_in']}msg "
            f"out {fields['bytes_out']}B/{fields['messages_out']}msg close {fields['close']}")
