"""``--workers N``: N reactor processes sharing one port, under a small supervisor.

Each worker is a whole ``python -m wsnet`` of its own (the same options, plus
``--workers 1``, the port and the hidden ``--as-worker-of PID`` and
``--listen-fd FD``), accepting on one listening socket that the supervisor made
and every worker inherits. Rooms span workers through the Redis backplane,
which is why more than one worker needs ``--redis``.

The supervisor is one thread and one ``selectors`` loop, like the workers:

- it makes the listening socket itself and keeps it, so that ``--port 0`` picks
  one port for all, and its one accept queue outlives every worker: a
  connection waiting there when a worker exits, crashes or drains is accepted
  by another worker (or by the next one), never reset. (Separate
  ``SO_REUSEPORT`` listeners would each have a queue of their own, and Linux
  resets what is in a queue whose listener closes.);
- it waits for every worker's listening line, then prints one line of its own;
  later lines from workers are read and dropped (logged at debug level), so its
  standard output holds only that line. Workers share its standard error;
- a worker that exits on its own is restarted, after 0.5 s doubling to 10 s if it
  keeps dying (back to 0.5 s once it has run 30 s);
- SIGHUP replaces the workers one at a time (a rolling restart, for a deploy or
  a new config file): the new worker starts and listens, then the old one gets
  SIGHUP and drains (close 1012, "service restart": clients reconnect at once,
  to the workers still running, and resume); so some worker accepts at every
  moment. A new worker that fails to start ends the roll, the old ones stay;
- SIGTERM or SIGINT is forwarded to every worker, which drains its clients (close
  1001) within the shutdown grace; a worker still running after the grace plus a
  few seconds is killed; the supervisor then exits 0;
- with affinity (the default; ``--no-affinity``), it makes one Unix socket
  pair per worker slot and a load board (``_placement``) and keeps them: a
  worker hands a connection whose room another worker owns to that worker,
  and what is handed to a slot whose worker is restarting waits in the pair
  for the new one;
- a worker whose supervisor dies stops too: Linux delivers SIGTERM to it
  (``PR_SET_PDEATHSIG``); elsewhere a thread notices the new parent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from wsnet._nodeview import fold, read_json, write_json
from wsnet._parent import stop_with_parent
from wsnet._placement import BOARD_FILE, LoadBoard
from wsnet._reactor import handoff_pairs, shared_listener

__all__ = [
    "Supervisor",
    "shared_listener",
    "worker_command",
    "describe_exit",
    "stop_with_parent",
    "NEEDS_REDIS",
]

log = logging.getLogger("wsnet.workers")

NEEDS_REDIS = "--workers N > 1 needs --redis: rooms must span workers"

#: Restart delays of a worker that keeps dying: 0.5 s, 1 s, 2 s, ... at most 10 s,
#: and back to the first once a worker has run ``STABLE_AFTER`` seconds.
RESTART_DELAY_MIN = 0.5
RESTART_DELAY_MAX = 10.0
STABLE_AFTER = 30.0
#: How long every worker of a fresh start has to print its listening line
#: (interpreter start-up and imports, even on a loaded machine).
STARTUP_DEADLINE = 30.0
#: After the shutdown grace, how long a worker has left before SIGKILL.
KILL_AFTER_GRACE = 3.0
def worker_command(
    argv: Sequence[str], port: int, supervisor_pid: int, listen_fd: int,
    *, node_dir: str | None = None, index: int = 1, handoff_fds: Sequence[int] = (),
) -> list[str]:
    """The command line of one worker: the supervisor's options, then overrides
    (argparse keeps the last value of an option given twice)."""
    command = [
        sys.executable, "-m", "wsnet", *argv,
        "--workers", "1", "--port", str(port), "--as-worker-of", str(supervisor_pid),
        "--listen-fd", str(listen_fd),
    ]
    if node_dir is not None:
        command += ["--node-dir", node_dir, "--worker-index", str(index)]
    if handoff_fds:
        command += ["--handoff-fds", ",".join(map(str, handoff_fds))]
    return command


def describe_exit(returncode: int) -> str:
    """``status 1`` or ``signal SIGKILL``, from a Popen return code."""
    if returncode >= 0:
        return f"status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = str(-returncode)
    return f"signal {name}"


class Worker:
    """One worker slot: its current process (if any) and its restart schedule."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.announced = ""  # the listening line of the current process
        self.pending = b""  # stdout bytes not yet ending in a newline
        self.delay = RESTART_DELAY_MIN
        self.restart_at: float | None = None

    @property
    def pid(self) -> int:
        return -1 if self.process is None else self.process.pid


@dataclass
class _SavedSignals:
    handlers: dict[signal.Signals, Any]
    wakeup_fd: int


class Closeable(Protocol):
    def close(self) -> None: ...
    def getsockname(self) -> Any: ...


class Supervisor:
    """Runs ``count`` workers on one port until SIGTERM or SIGINT.

    ``argv`` are the command-line options the workers get (before the overrides
    of ``worker_command``). Call ``reserve()`` first (it raises OSError when the
    port cannot be had), then ``run()``, which returns the exit status.
    """

    def __init__(
        self,
        argv: Sequence[str],
        count: int,
        host: str,
        port: int,
        *,
        grace: float,
        backlog: int = 1024,
        out: Callable[[str], None] | None = None,
        affinity: bool = True,
    ) -> None:
        if count < 1:
            raise ValueError("count must be at least 1")
        self.argv = list(argv)
        self.host = host
        self.port = port
        self.grace = grace
        self.backlog = backlog
        self.workers = [Worker(i + 1) for i in range(count)]
        #: Hand connections to the worker that owns their room (``_placement``).
        self.affinity = affinity and count > 1
        self._pairs: list[tuple[Any, Any]] = []  # (inbox, outbox) per slot, kept open
        #: A rolling restart: the slots still to replace, the replacement starting,
        #: and old workers draining (reaped, never restarted).
        self._roll: list[int] = []
        self._incoming: Worker | None = None
        self._retiring: list[Worker] = []
        self._hup = False
        #: Where workers leave their snapshots for the node's /metrics and
        #: /healthz (``_nodeview``); made by ``run``, removed when it returns.
        self.node_dir: str | None = None
        self._out = out or (lambda line: print(line, flush=True))
        self._reserved: Closeable | None = None
        self._sel = selectors.DefaultSelector()
        # Signals wake the loop through this pipe (``signal.set_wakeup_fd``).
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop_signal: int | None = None

    # -- public --------------------------------------------------------------

    def reserve(self) -> int:
        """Make the listening socket every worker will share; returns its port."""
        if self._reserved is None:
            self._reserved = shared_listener(self.host, self.port, self.backlog)
            self.port = self._reserved.getsockname()[1]
        return self.port

    def _listen_fd(self) -> int:
        listener = self._reserved
        assert listener is not None and hasattr(listener, "fileno")
        fd: int = listener.fileno()
        return fd

    def run(self) -> int:
        """Start the workers, keep them running, stop them on a signal."""
        self.reserve()
        self.node_dir = tempfile.mkdtemp(prefix="wsnet-node-")
        if self.affinity:
            LoadBoard.create(str(Path(self.node_dir) / BOARD_FILE), len(self.workers))
            self._pairs = handoff_pairs(len(self.workers))
        saved = self._install_signal_handlers()
        try:
            for worker in self.workers:
                self._spawn(worker, restarted=False)
            status = self._start_up()
            if status is None:
                self._out(self.workers[0].announced)
                self._supervise()
                status = 0
            self._shut_down()
            return status
        finally:
            self._kill_all()  # only if something above raised
            self._restore_signal_handlers(saved)
            self._sel.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            if self.node_dir is not None:
                shutil.rmtree(self.node_dir, ignore_errors=True)
            if self._reserved is not None:
                self._reserved.close()
            for pair in self._pairs:
                for end in pair:
                    end.close()

    # -- signals -------------------------------------------------------------

    def _install_signal_handlers(self) -> _SavedSignals:
        """SIGTERM/SIGINT ask to stop; SIGCHLD only wakes the loop (through the
        wakeup fd, like every handled signal)."""
        handlers: dict[signal.Signals, Any] = {}

        def stop(signum: int, _frame: FrameType | None) -> None:
            self._stop_signal = signum

        def child(_signum: int, _frame: FrameType | None) -> None:
            pass

        def hup(_signum: int, _frame: FrameType | None) -> None:
            self._hup = True

        for sig, handler in (
            (signal.SIGTERM, stop), (signal.SIGINT, stop), (signal.SIGCHLD, child),
            (signal.SIGHUP, hup),
        ):
            handlers[sig] = signal.signal(sig, handler)
        wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        return _SavedSignals(handlers, wakeup)

    def _restore_signal_handlers(self, saved: _SavedSignals) -> None:
        signal.set_wakeup_fd(saved.wakeup_fd)
        for sig, handler in saved.handlers.items():
            # None: a handler not installed from Python, which cannot be put back.
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)

    # -- processes -----------------------------------------------------------

    def _spawn(self, worker: Worker, *, restarted: bool) -> None:
        worker.restart_at = None
        worker.announced = ""
        worker.pending = b""
        try:
            fd = self._listen_fd()
            handoff = self._handoff_fds(worker.index)
            process = subprocess.Popen(
                worker_command(self.argv, self.port, os.getpid(), fd,
                               node_dir=self.node_dir, index=worker.index,
                               handoff_fds=handoff),
                pass_fds=(fd, *handoff),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                # stderr: inherited, so worker logs go where the supervisor's go.
            )
        except OSError as exc:
            log.error("worker %d could not be started: %s", worker.index, exc)
            self._schedule_restart(worker, time.monotonic())
            return
        worker.process = process
        worker.started_at = time.monotonic()
        assert process.stdout is not None
        os.set_blocking(process.stdout.fileno(), False)
        self._sel.register(process.stdout, selectors.EVENT_READ, worker)
        verb = "restarted" if restarted else "started"
        log.info("worker %d %s (pid %d)", worker.index, verb, process.pid)
        self._publish()

    def _handoff_fds(self, index: int) -> list[int]:
        """Slot ``index``'s inbox, then every slot's outbox; none without affinity."""
        if not self._pairs:
            return []
        return [self._pairs[index - 1][0].fileno(), *(out.fileno() for _, out in self._pairs)]

    def _schedule_restart(self, worker: Worker, now: float) -> float:
        if worker.started_at and now - worker.started_at >= STABLE_AFTER:
            worker.delay = RESTART_DELAY_MIN
        delay = worker.delay
        worker.restart_at = now + delay
        worker.delay = min(delay * 2, RESTART_DELAY_MAX)
        return delay

    def _reap(self, worker: Worker) -> int | None:
        """The worker's exit status if its process has ended (then forgotten)."""
        process = worker.process
        if process is None:
            return None
        returncode = process.poll()
        if returncode is None:
            return None
        self._read(worker)  # whatever it printed before exiting
        assert process.stdout is not None
        with contextlib.suppress(KeyError):
            self._sel.unregister(process.stdout)
        process.stdout.close()
        worker.process = None
        self._retire(process.pid)
        return returncode

    # -- the node's view -------------------------------------------------------

    def _publish(self) -> None:
        """``supervisor.json``: how many workers there should be, and which
        processes are running (workers, draining ones, a replacement)."""
        if self.node_dir is None:
            return
        pids = [w.pid for w in [*self.workers, *self._retiring, self._incoming]
                if w is not None and w.process is not None]
        write_json(Path(self.node_dir) / "supervisor.json",
                   {"expected": len(self.workers), "pids": pids, "pid": os.getpid()})

    def _retire(self, pid: int) -> None:
        """A worker is gone: its last counts join ``retired.json`` (so the
        node's totals do not go back), and its snapshot goes."""
        if self.node_dir is None:
            return
        directory = Path(self.node_dir)
        snapshot = read_json(directory / f"worker-{pid}.json")
        if isinstance(snapshot, dict):
            retired = read_json(directory / "retired.json") or {}
            write_json(directory / "retired.json", fold(retired, snapshot))
        self._publish()
        with contextlib.suppress(OSError):
            (directory / f"worker-{pid}.json").unlink()

    def _exited(self) -> list[tuple[Worker, int, int]]:
        """Reap every worker that ended: (worker, its pid, its exit status).
        Retired workers (drained by a rolling restart) are reaped here too."""
        for worker in list(self._retiring):
            pid = worker.pid
            returncode = self._reap(worker)
            if returncode is not None:
                self._retiring.remove(worker)
                log.info("worker %d (pid %d) retired with %s", worker.index, pid,
                         describe_exit(returncode))
        ended = []
        for worker in self.workers:
            pid = worker.pid
            returncode = self._reap(worker)
            if returncode is not None:
                ended.append((worker, pid, returncode))
        return ended

    def _live(self) -> list[Worker]:
        return [w for w in [*self.workers, *self._retiring] if w.process is not None]

    # -- the loop ------------------------------------------------------------

    def _wait(self, timeout: float | None) -> None:
        """Sleep until a signal, a child's exit or worker output (or the timeout);
        read what came."""
        for key, _mask in self._sel.select(timeout):
            if key.data is None:
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    while os.read(self._wake_r, 512):
                        pass
            else:
                self._read(key.data)

    def _read(self, worker: Worker) -> None:
        process = worker.process
        if process is None or process.stdout is None or process.stdout.closed:
            return
        fd = process.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except (BlockingIOError, InterruptedError):
                break
            if not chunk:  # closed: nothing more to read until it exits
                with contextlib.suppress(KeyError):
                    self._sel.unregister(process.stdout)
                break
            data = worker.pending + chunk
            *lines, worker.pending = data.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").rstrip("\r")
                if not worker.announced and " listening on " in line:
                    worker.announced = line
                else:
                    log.debug("worker %d (pid %d) printed: %s", worker.index, process.pid, line)
            worker.pending = worker.pending[-4096:]  # a worker cannot grow our memory

    def _start_up(self) -> int | None:
        """Wait for every worker's listening line: None once all listen, else the
        exit status (a worker that cannot start, e.g. port in use, fails the
        start: restarting it would fail alike)."""
        deadline = time.monotonic() + STARTUP_DEADLINE
        while True:
            if self._stop_signal is not None:
                return 0
            for worker, pid, returncode in self._exited():
                log.error(
                    "worker %d (pid %d) exited with %s before listening",
                    worker.index, pid, describe_exit(returncode),
                )
                return returncode if returncode > 0 else 1
            if all(w.announced for w in self.workers):
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                waiting = [w.index for w in self.workers if not w.announced]
                log.error("workers %s did not listen within %.0f s", waiting, STARTUP_DEADLINE)
                return 1
            self._wait(remaining)

    def _supervise(self) -> None:
        """Restart workers that exit, roll on SIGHUP, until a stop signal."""
        while self._stop_signal is None:
            if self._hup:
                self._hup = False
                self._start_roll()
            self._step_roll()
            now = time.monotonic()
            for worker, pid, returncode in self._exited():
                delay = self._schedule_restart(worker, now)
                log.warning(
                    "worker %d (pid %d) exited with %s; restarting in %.1f s",
                    worker.index, pid, describe_exit(returncode), delay,
                )
            for worker in self.workers:
                if worker.restart_at is not None and worker.restart_at <= now:
                    self._spawn(worker, restarted=True)
            due = [w.restart_at for w in self.workers if w.restart_at is not None]
            timeout = max(0.0, min(due) - time.monotonic()) if due else None
            self._wait(timeout)

    # -- rolling restarts ----------------------------------------------------

    def _start_roll(self) -> None:
        if self._roll or self._incoming is not None:
            log.info("SIGHUP: a rolling restart is already under way")
            return
        log.info("SIGHUP: replacing %d workers one at a time", len(self.workers))
        self._roll = list(range(len(self.workers)))

    def _step_roll(self) -> None:
        """Start the next slot's replacement; once it listens, drain the old one."""
        incoming = self._incoming
        if incoming is None:
            if not self._roll:
                return
            slot = self._roll[0]
            incoming = self._incoming = Worker(self.workers[slot].index)
            self._spawn(incoming, restarted=True)
            return
        if incoming.process is None or incoming.process.poll() is not None:
            returncode = self._reap(incoming)
            log.error("worker %d's replacement exited with %s before listening: "
                      "rolling restart stopped, the old workers stay",
                      incoming.index, describe_exit(returncode if returncode is not None else 1))
            self._incoming = None
            self._roll = []
            return
        if not incoming.announced:
            return
        slot = self._roll.pop(0)
        old = self.workers[slot]
        self.workers[slot] = incoming
        self._incoming = None
        if old.process is not None:
            log.info("worker %d (pid %d) draining: its replacement (pid %d) listens",
                     old.index, old.pid, incoming.pid)
            with contextlib.suppress(ProcessLookupError):
                old.process.send_signal(signal.SIGHUP)
            self._retiring.append(old)
        if not self._roll:
            log.info("rolling restart done")

    def _shut_down(self) -> None:
        """Forward the stop signal, wait out the workers' drain, kill stragglers."""
        sig = self._stop_signal or signal.SIGTERM
        if self._incoming is not None:  # a roll under way: its new worker stops too
            self._retiring.append(self._incoming)
            self._incoming = None
        self._roll = []
        for worker in self.workers:
            worker.restart_at = None
        live = self._live()
        log.info(
            "stopping: sending %s to %d workers", signal.Signals(sig).name, len(live),
        )
        for worker in live:
            assert worker.process is not None
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(sig)
        deadline = time.monotonic() + self.grace + KILL_AFTER_GRACE
        while True:
            for worker, pid, returncode in self._exited():
                log.info(
                    "worker %d (pid %d) stopped with %s",
                    worker.index, pid, describe_exit(returncode),
                )
            remaining = deadline - time.monotonic()
            if not self._live() or remaining <= 0:
                break
            self._wait(remaining)
        for worker in self._live():
            log.warning(
                "worker %d (pid %d) still running %.1f s after %s: killing it",
                worker.index, worker.pid, self.grace + KILL_AFTER_GRACE,
                signal.Signals(sig).name,
            )
        self._kill_all()
        log.info("all workers stopped")

    def _kill_all(self) -> None:
        if self._incoming is not None:
            self._retiring.append(self._incoming)
            self._incoming = None
        for worker in [*self.workers, *self._retiring]:
            process = worker.process
            if process is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
            self._reap(worker)
