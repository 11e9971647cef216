"""Processes, ports and a throwaway Redis, for the tests and the benchmark.

Every wait here has a deadline and every process started can be stopped with one
(SIGTERM, then SIGKILL). Nothing is written outside the directories given, and
only 127.0.0.1 is used. The benchmark imports this module too (bench puts
``tests/`` on ``sys.path``), so it knows nothing of pytest.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

#: The repository root: the working directory of every process started here.
REPO = Path(__file__).resolve().parents[2]
#: SIGTERM gives a wsnet server's clients shutdown_grace (5 s) to answer; then we kill.
STOP_DEADLINE = 10.0
#: How long a fresh redis-server may take to answer PING.
REDIS_DEADLINE = 10.0


# ----------------------------------------------------------------------------
# Ports and environments
# ----------------------------------------------------------------------------


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the kernel's pick, then released), for
    programs that cannot be told port 0. Another process may take it before the
    caller binds it: callers retry (see ``start_redis``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def python_env(**extra: str) -> dict[str, str]:
    """This environment with the repository first on PYTHONPATH and unbuffered
    output, so that ``python -m wsnet`` runs this checkout and its lines arrive
    when they are printed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


#: A child started through this gets SIGTERM when its parent dies, even by
#: SIGKILL (Linux's PR_SET_PDEATHSIG survives the exec).
DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


def with_parent_death(argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped so that it cannot outlive this process (Linux only;
    elsewhere ``argv`` unchanged)."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-c", DIE_WITH_PARENT, *argv]


# ----------------------------------------------------------------------------
# Starting, watching and stopping processes
# ----------------------------------------------------------------------------


def stop_process(
    proc: subprocess.Popen[Any], deadline: float = STOP_DEADLINE, *, sig: int = signal.SIGTERM,
) -> int:
    """Send ``sig`` (SIGTERM), wait up to ``deadline`` seconds, SIGKILL after that;
    the exit status. A process that already ended is only reaped."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=deadline)
    return proc.returncode


def kill_process(proc: subprocess.Popen[Any], deadline: float = STOP_DEADLINE) -> int:
    """SIGKILL (the abrupt end) and reap; the exit status."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=deadline)
    return proc.returncode


class ProcessGroup:
    """Processes started together and reaped together, so that none outlives the
    run (a test fixture, or the whole benchmark)."""

    def __init__(self, cwd: Path = REPO) -> None:
        self.cwd = cwd
        self.started: list[subprocess.Popen[Any]] = []

    def spawn(self, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """``Popen(argv, **popen)`` from ``cwd``, remembered for ``reap_all``."""
        popen.setdefault("cwd", self.cwd)
        proc: subprocess.Popen[Any] = subprocess.Popen(list(argv), **popen)
        self.started.append(proc)
        return proc

    def reap_all(self, deadline: float = 5.0) -> list[int]:
        """SIGKILL every process started here that still runs; their pids."""
        killed = []
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
                killed.append(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=deadline)
        self.started.clear()
        return killed

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reap_all()


def read_line(proc: subprocess.Popen[Any], deadline: float) -> str:
    """The first line ``proc`` writes to its stdout pipe, read straight from the
    descriptor; AssertionError once ``deadline`` (``time.monotonic()``) passes or
    if the process exits first. The rest of stdout is left unread: for a program
    that announces itself once, as ``python -m wsnet`` does."""
    assert proc.stdout is not None, "stdout must be a pipe"
    fd = proc.stdout.fileno()
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"the process did not announce itself in time; got {buf!r}")
            if not sel.select(remaining):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(
                    f"the process exited before announcing itself (rc={proc.wait(5)}); "
                    f"stdout {buf!r}",
                )
            buf += chunk
    return buf.split(b"\n", 1)[0].decode()


class LineReader:
    """Drains a process's stdout on a daemon thread (so that the pipe never fills)
    and keeps the lines, for programs that print more than one line and of which
    one line matters (``wait``)."""

    def __init__(self, stream: IO[Any]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._ended = False
        threading.Thread(target=self._drain, args=(stream,), daemon=True).start()

    def _drain(self, stream: IO[Any]) -> None:
        try:
            for raw in stream:
                line = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
                with self._changed:
                    self.lines.append(line.rstrip("\n"))
                    self._changed.notify_all()
        except (OSError, ValueError):  # closed under us
            pass
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str] | None:
        """The first line (seen so far or within ``timeout`` s) that ``pattern``
        matches (``re.search``); None at the deadline or when the stream ends."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    found = regex.search(line)
                    if found:
                        return found
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if self._ended or remaining <= 0:
                    return None
                self._changed.wait(remaining)


# ----------------------------------------------------------------------------
# Redis
# ----------------------------------------------------------------------------


def _resp_command(*args: str | int) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def redis_call(port: int, *args: str | int, timeout: float = 5.0) -> bytes:
    """One command on a fresh connection to a Redis on 127.0.0.1:port; the reply
    raw (RESP), except that a bulk string comes back as its bytes. For probes
    (PING, INFO); tests that need parsed replies parse them. OSError if Redis is
    not there."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(_resp_command(*args))
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                return reply
            reply += chunk
        if not reply.startswith(b"$"):
            return reply
        head, _, rest = reply.partition(b"\r\n")  # a bulk string: read all of it
        size = int(head[1:])
        while size >= 0 and len(rest) < size + 2:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return rest[: max(0, size)]


def redis_ping(port: int, timeout: float = 1.0) -> bool:
    """Does a Redis on 127.0.0.1:port answer PING with +PONG?"""
    try:
        return redis_call(port, "PING", timeout=timeout).startswith(b"+PONG\r\n")
    except OSError:
        return False


class RedisServer:
    """A ``redis-server`` subprocess on 127.0.0.1:``port``: no persistence (nothing
    written to disk but its log, ``workdir/redis.log``). ``stop``/``kill`` and
    ``start`` again (same port) make an outage.

    ``group`` (if given) starts it, so that it is reaped with the others;
    ``die_with_parent`` makes it end with this process even if this one is killed.
    """

    def __init__(
        self,
        executable: str,
        workdir: Path,
        port: int,
        *,
        group: ProcessGroup | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.executable = executable
        self.workdir = workdir
        self.port = port
        self.log_path = workdir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._group = group
        self._die_with_parent = die_with_parent

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None, "redis-server is not running"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def info(self) -> dict[str, str]:
        """``INFO``'s fields (empty if Redis does not answer)."""
        try:
            text = redis_call(self.port, "INFO").decode(errors="replace")
        except OSError:
            return {}
        pairs = (line.split(":", 1) for line in text.splitlines())
        return {p[0]: p[1] for p in pairs if len(p) == 2 and not p[0].startswith("#")}

    def start(self, deadline: float = REDIS_DEADLINE) -> None:
        """Start (again) on ``self.port``; return once it answers PING.
        RuntimeError if it exits first (say, the port was taken),
        AssertionError if it does not answer in time."""
        assert not self.alive(), "redis-server is already running"
        argv = [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
        ]
        if self._die_with_parent:
            argv = with_parent_death(argv)
        start = self._group.spawn if self._group is not None else subprocess.Popen
        with self.log_path.open("ab") as log:
            proc: subprocess.Popen[bytes] = start(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        self.process = proc
        end = time.monotonic() + deadline
        while not redis_ping(self.port):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {proc.returncode} on port "
                    f"{self.port}:\n{self.log_text()[-2000:]}",
                )
            if time.monotonic() > end:
                self.kill()
                raise AssertionError(f"redis-server did not answer PING within {deadline} s")
            time.sleep(0.02)

    def stop(self, deadline: float = STOP_DEADLINE) -> None:
        """SIGTERM and wait (SIGKILL past the deadline)."""
        if self.process is not None:
            stop_process(self.process, deadline)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: the abrupt outage."""
        if self.process is not None:
            kill_process(self.process)
        self.process = None


def redis_executable() -> str | None:
    """Where ``redis-server`` is, if it is installed."""
    return shutil.which("redis-server")


def start_redis(
    workdir: Path,
    *,
    executable: str | None = None,
    attempts: int = 3,
    group: ProcessGroup | None = None,
    die_with_parent: bool = False,
) -> RedisServer:
    """A running ``RedisServer`` on a free port, logging into ``workdir`` (which
    must exist). The free port may be taken before Redis binds it, so this tries
    ``attempts`` ports. RuntimeError if redis-server is missing or never starts."""
    executable = executable or redis_executable()
    if executable is None:
        raise RuntimeError("redis-server is not installed (`make unit` as root installs "
                           "Debian's redis-server)")
    server: RedisServer | None = None
    for _attempt in range(attempts):
        server = RedisServer(
            executable, workdir, free_port(), group=group, die_with_parent=die_with_parent,
        )
        try:
            server.start()
        except RuntimeError:
            continue
        return server
    log = server.log_text()[-2000:] if server is not None else ""
    raise RuntimeError(f"redis-server did not start:\n{log}")
