"""The loop's clockwork, apart from the socket I/O it drives.

``Loop`` owns the selector, the timers, the flush tick's grid and the wake-up
pipe that lets a signal handler (or another thread) ask for a stop. It calls
whatever was registered with the selector when it is ready; what is done with a
ready socket is ``_reactor``'s business, so this module opens no socket and
can be tested on a fake clock.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from wsnet._channel import Channel
from wsnet._clock import Timer, Timers, next_tick

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

__all__ = ["READ", "WRITE", "Loop"]

log = logging.getLogger("wsnet")

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


class Loop:
    """Sleep in ``select`` until the next deadline, dispatch readiness, run due
    timers, tick; in the shape of curio's kernel.

    Selector data is either a ``Channel`` (handed to ``serve`` with its ready
    mask) or a callable run as is (the listener, a connecting stream, the wake-up
    pipe). ``tick`` runs on the grid ``origin + k * flush_interval``; with an
    interval of 0 it runs after every turn instead.
    """

    def __init__(
        self, *, flush_interval: float, tick: Callable[[], None], clock: Callable[[], float],
    ) -> None:
        self.clock = clock
        self.timers = Timers()
        self.flush_interval = flush_interval
        self.selector = selectors.DefaultSelector()
        self._tick = tick
        self._origin = clock()
        self._tick_timer: Timer | None = None
        self._stop_requested = False
        #: Called on the loop, after ``request_stop``.
        self.on_stop_request: Callable[[], None] | None = None
        #: The stop requested is a restart: clients get 1012, not 1001.
        self.restart = False
        #: Called with how late each tick ran (seconds past its grid point):
        #: a turn that blocked, a long collection or a starved process shows
        #: here first, as every message queued meanwhile waited that long.
        self.on_tick_late: Callable[[float], None] | None = None
        # A pipe, not a socketpair: writing one byte from a signal handler is
        # all it does, and it keeps this module free of sockets.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.selector.register(self._wake_r, READ, self._on_wakeup)

    # -- timers --------------------------------------------------------------

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        return self.timers.call_at(self.clock() + delay, callback)

    def cancel(self, timer: Timer | None) -> None:
        self.timers.cancel(timer)

    @staticmethod
    def _timer_failed(exc: BaseException) -> None:
        log.error("internal error in a timer", exc_info=exc)

    def _on_tick(self) -> None:
        late = self.on_tick_late
        if late is not None and self._tick_timer is not None:
            late(max(0.0, self.clock() - self._tick_timer.when))
        try:
            self._tick()
        finally:
            self.arm_tick()

    def arm_tick(self) -> None:
        """Schedule the next tick on the grid ``origin + k * flush_interval``.

        A tick that overran its period (a flush to many sockets can) is followed
        at once by the latest grid point it missed, so queued data waits no extra
        period; older missed points are skipped, never fired in a burst.
        """
        period = self.flush_interval
        if period <= 0:
            return
        now = self.clock()
        when = next_tick(self._origin, period, now - period)
        last = self._tick_timer
        if last is not None and when <= last.when:
            when = next_tick(self._origin, period, last.when)
        elif last is None and when <= now:
            when = next_tick(self._origin, period, now)
        self._tick_timer = self.timers.call_at(when, self._on_tick)

    # -- interest ------------------------------------------------------------

    def watch(self, ch: Channel, want: int) -> None:
        """Wait for ``want`` (``READ | WRITE``, 0 for nothing) on ``ch``, with the
        one selector call the change needs; a dead channel is left alone."""
        have = ch.mask
        if want == have or ch.dead:
            return
        if have == 0:
            self.selector.register(ch.sock, want, ch)
        elif want == 0:
            self.selector.unregister(ch.sock)
        else:
            self.selector.modify(ch.sock, want, ch)
        ch.mask = want

    def forget(self, fileobj: FileDescriptorLike) -> None:
        """Unregister ``fileobj`` if it is registered (closing paths)."""
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    # -- stopping ------------------------------------------------------------

    def request_stop(self, *, restart: bool = False) -> None:
        """Ask the loop to call ``on_stop_request`` (safe from signal handlers and
        other threads). ``restart``: clients are told the service restarts (1012)."""
        self.restart = self.restart or restart
        self._stop_requested = True
        try:
            os.write(self._wake_w, b"\0")
        except OSError:  # the pipe is full (a wake-up is pending) or closed
            pass

    def _on_wakeup(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        if self._stop_requested:
            self._stop_requested = False
            if self.on_stop_request is not None:
                self.on_stop_request()

    def install_signal_handlers(self, *, hup_restarts: bool = False) -> None:
        """SIGINT and SIGTERM request a graceful stop (main thread only); with
        ``hup_restarts`` (a worker under a supervisor), SIGHUP a stop that tells
        clients the service restarts."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda _s, _f: self.request_stop())
        if hup_restarts:
            signal.signal(signal.SIGHUP, lambda _s, _f: self.request_stop(restart=True))

    # -- the loop ------------------------------------------------------------

    def run(
        self,
        until: Callable[[], bool],
        serve: Callable[[Channel, int], None],
        broken: Callable[[Channel], None],
        end_turn: Callable[[], None] = lambda: None,
    ) -> None:
        """Run until ``until()`` is true (checked once per turn). An exception
        while serving a channel is logged and ``broken`` closes that channel;
        ``end_turn`` runs after each turn's events, timers and tick."""
        sel, timers, clock = self.selector, self.timers, self.clock
        self.arm_tick()
        while not until():
            deadline = timers.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - clock())
            for key, mask in sel.select(timeout):
                data = key.data
                try:
                    if isinstance(data, Channel):
                        serve(data, mask)
                    else:
                        data()
                except Exception:
                    log.exception("internal error while serving a connection")
                    if isinstance(data, Channel):
                        broken(data)
            timers.run_due(clock(), self._timer_failed)
            if self.flush_interval == 0:
                self._tick()
            end_turn()
        timers.cancel(self._tick_timer)

    def close(self) -> None:
        self.selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
