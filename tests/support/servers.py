"""The server under test: the real ``python -m wsnet`` in a subprocess, or a
``wsnet.Server`` serving on a background thread of the test process.

Both listen on 127.0.0.1 port 0; the port comes from the listening line (the
subprocess) or from ``Server.listen`` (the thread). Every wait has a deadline.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import wsnet
from support.procs import REPO, STOP_DEADLINE, python_env, read_line, stop_process

#: What the first line of ``python -m wsnet`` starts with.
LISTEN_PREFIX = "wsnet "
STARTUP_DEADLINE = 15.0


@dataclass
class ServerProcess:
    """A running ``python -m wsnet``; stderr goes to ``stderr_path``."""

    process: subprocess.Popen[bytes]
    port: int
    stderr_path: Path
    listening_line: str

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_kib(self) -> int:
        """Resident set size from /proc (VmRSS), in KiB."""
        return proc_status_kib(self.pid, "VmRSS")

    def terminate_and_wait(self, deadline: float = STOP_DEADLINE) -> int:
        """SIGTERM, wait up to ``deadline`` seconds, SIGKILL after that."""
        returncode = stop_process(self.process, deadline)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return returncode


def proc_status_kib(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{key} not in /proc/{pid}/status")


def launch(args: list[str], stderr_path: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m wsnet ARGS`` (stdout a pipe, stderr into ``stderr_path``)
    without waiting for anything. Unless ``args`` name one, the chat's default
    store goes into a data directory beside ``stderr_path`` (each server its
    own file, as the store allows one server per file)."""
    if "--data-dir" not in args:
        args = [*args, "--data-dir", str(stderr_path.with_name(stderr_path.name + ".data"))]
    with stderr_path.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "wsnet", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=REPO,
            env=python_env(),
        )


def start_server(args: list[str], stderr_path: Path) -> ServerProcess:
    """Start the server on an ephemeral port and wait for its listening line."""
    proc = launch(["--host", "127.0.0.1", "--port", "0", *args], stderr_path)
    try:
        line = read_line(proc, time.monotonic() + STARTUP_DEADLINE)
        assert line.startswith(LISTEN_PREFIX) and " listening on ws://127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1].rstrip("/"))
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    return ServerProcess(proc, port, stderr_path, line)


@dataclass
class ThreadedServer:
    """A ``wsnet.Server`` serving on a daemon thread of this process."""

    server: wsnet.Server
    thread: threading.Thread
    port: int
    errors: list[BaseException] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def stop(self, deadline: float = STOP_DEADLINE) -> None:
        """Stop serving and join the thread (bounded); fail if it does not stop or
        ``serve_forever`` raised."""
        self.server.stop()
        self.thread.join(deadline)
        assert not self.thread.is_alive(), "in-process server did not stop"
        assert not self.errors, self.errors


def serve_in_thread(handler: wsnet.Handler, **fields: object) -> ThreadedServer:
    """``handler`` served on 127.0.0.1 port 0 (``fields`` override the Config)."""
    config = wsnet.Config(host="127.0.0.1", port=0).replace(**fields)
    server = wsnet.Server(handler, config)
    _host, port = server.listen()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.serve_forever(install_signal_handlers=False)
        except BaseException as exc:
            errors.append(exc)
            raise

    thread = threading.Thread(target=run, name=f"wsnet-{port}", daemon=True)
    thread.start()
    return ThreadedServer(server, thread, port, errors)


#: ``server_factory(*cli_args)``: the conftest fixture's type.
ServerFactory = Callable[..., ServerProcess]
#: ``inprocess_server(handler, **config_fields)``: the conftest fixture's type.
InProcessFactory = Callable[..., ThreadedServer]
