"""A worker's side of ``--workers``: never outlive the supervisor.

A worker whose supervisor dies (killed, crashed) must drain and exit rather
than hold the port and its clients with nobody to restart or stop it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["PARENT_POLL_INTERVAL", "stop_with_parent"]

log = logging.getLogger("wsnet.workers")

#: How often a worker without PR_SET_PDEATHSIG checks that its parent lives.
PARENT_POLL_INTERVAL = 1.0

_PR_SET_PDEATHSIG = 1


def _set_parent_death_signal(sig: int) -> bool:
    """Linux: have the kernel send ``sig`` to this process when its parent dies."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def stop_with_parent(parent_pid: int, stop: Callable[[], None]) -> None:
    """Make sure this worker does not outlive its supervisor ``parent_pid``.

    On Linux the kernel sends SIGTERM (the graceful drain) when the parent dies;
    elsewhere a daemon thread checks the parent once a second and calls ``stop``
    (which must be thread-safe, like ``Server.stop``). If the parent is already
    gone, ``stop`` is called at once.
    """
    watched = _set_parent_death_signal(signal.SIGTERM)
    # Checked after the prctl: a parent that died before it is noticed here.
    if os.getppid() != parent_pid:
        log.warning("supervisor (pid %d) is gone: stopping", parent_pid)
        stop()
        return
    if watched:
        return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_INTERVAL)
        log.warning("supervisor (pid %d) is gone: stopping", parent_pid)
        stop()

    threading.Thread(target=watch, name="wsnet-parent-watch", daemon=True).start()
