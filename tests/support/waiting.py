"""Polling with a deadline, for state that another process or thread changes
(there is nothing to wait on but the state itself)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TypeVar

T = TypeVar("T")

#: How often a probe is asked (seconds): often enough that a wait is not
#: measurably longer than the change it waits for.
POLL_INTERVAL = 0.02


def wait_for(
    what: str, probe: Callable[[], T | Literal[False] | None], timeout: float = 10.0,
) -> T:
    """Ask ``probe`` until it returns something other than None or False, and
    return that; AssertionError naming ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(POLL_INTERVAL)
