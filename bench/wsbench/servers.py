"""The servers under test: how to start each kind (wsnet and its peers, Node's
``ws`` installed with npm on first use), a running server as a process whose
port comes from its URL line, and ``PROCESSES``, every process the benchmark
starts, so that none outlives it.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from support.procs import LineReader, ProcessGroup, stop_process

from wsbench.procfs import proc_status_kb
from wsbench.settings import BENCH, NODE_DIR, ROOT

#: Every process this run starts (servers, Redis, load generators), so that none
#: outlives it: ``cli.main`` kills what is left on the way out.
PROCESSES = ProcessGroup(ROOT)
#: Where a server says where it listens.
URL_LINE = re.compile(r"ws://127\.0\.0\.1:(\d+)/")
#: A log line worth a notice.
PROBLEM_LINE = re.compile(r"WARNING|ERROR|CRITICAL|Traceback|Error:")


@dataclass(frozen=True)
class ServerKind:
    name: str
    command: Callable[[bool, float | None], list[str]]

    def label(self, flush_ms: float | None) -> str:
        return self.name if flush_ms is None else f"{self.name} (flush {flush_ms:g} ms)"


def wsnet_command(
    deflate: bool, flush_ms: float | None, *, store: bool = True, port: int = 0,
) -> list[str]:
    # The default config, except the per-client rate limit (a benchmark sender
    # exceeds 50 msg/s by design) and the store: history in memory, as the
    # peers keep it (the store scenario measures the durable default; with
    # Redis, ``store=False``, Redis keeps it and there is no store to choose).
    # Port 0: any free one (a restart passes the port it had).
    argv = [sys.executable, "-m", "wsnet", "--port", str(port), "--log-level", "warning"]
    argv += ["--rate-limit", "0", *(["--store", "memory"] if store else [])]
    if flush_ms is not None:
        argv += ["--flush-interval-ms", f"{flush_ms:g}"]
    return argv


#: Where the store scenario's SQLite files go (one per server start); removed
#: when the benchmark exits.
_STORE_DIR: tempfile.TemporaryDirectory[str] | None = None


def wsnet_store(store: str) -> ServerKind:
    """wsnet with ``--store memory`` or with SQLite (a fresh file each start)."""
    starts = itertools.count(1)

    def command(deflate: bool, flush_ms: float | None) -> list[str]:
        global _STORE_DIR  # noqa: PLW0603 (one directory for the whole run)
        argv = wsnet_command(deflate, flush_ms)
        if store == "memory":
            return argv
        if _STORE_DIR is None:
            _STORE_DIR = tempfile.TemporaryDirectory(prefix="wsnet-bench-store-")
        path = f"{_STORE_DIR.name}/chat-{next(starts)}.sqlite3"
        return [*argv[:argv.index("--store")], "--store", f"sqlite:{path}",
                *argv[argv.index("--store") + 2:]]

    return ServerKind(f"wsnet ({store})", command)


def websockets_command(deflate: bool, flush_ms: float | None) -> list[str]:
    argv = [sys.executable, str(BENCH / "peers" / "websockets_chat.py"), "--port", "0"]
    return argv if deflate else [*argv, "--no-deflate"]


def node_command(batch: bool) -> Callable[[bool, float | None], list[str]]:
    def command(deflate: bool, flush_ms: float | None) -> list[str]:
        argv = ["node", str(BENCH / "peers" / "node_chat.js"), "--port", "0"]
        return argv + (["--batch"] if batch else []) + (["--deflate"] if deflate else [])

    return command


SERVERS = {
    "wsnet": ServerKind("wsnet", wsnet_command),
    "websockets": ServerKind("websockets", websockets_command),
    "node": ServerKind("node-ws", node_command(batch=False)),
    "node-batch": ServerKind("node-ws-batch", node_command(batch=True)),
}


#: The first warning or error line each server process logged (see running_server).
SERVER_LOGS: list[str] = []


def ensure_node_ws() -> str | None:
    """Install Node ``ws`` into bench/.node if needed; a notice if we cannot."""
    if shutil.which("node") is None:
        return "node is not installed: the Node ws peers are skipped"
    if (NODE_DIR / "node_modules" / "ws" / "package.json").exists():
        return None
    if shutil.which("npm") is None:
        return "npm is not installed: the Node ws peers are skipped"
    print("installing ws into bench/.node (npm install --prefix bench/.node ws)", flush=True)
    NODE_DIR.mkdir(exist_ok=True)
    try:
        subprocess.run(
            ["npm", "install", "--prefix", str(NODE_DIR), "ws", "--no-audit", "--no-fund"],
            check=True, capture_output=True, timeout=300,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return f"npm install ws failed ({exc}): the Node ws peers are skipped"
    return None


class ServerProcess:
    """A server under test, started on port 0; its URL line gives the port."""

    def __init__(self, argv: list[str], start_timeout: float = 20.0) -> None:
        self.argv = argv
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed by stop())
        self.proc: subprocess.Popen[str] = PROCESSES.spawn(
            argv, stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        self.port = self._read_port(timeout=start_timeout)

    def _read_port(self, timeout: float) -> int:
        assert self.proc.stdout is not None
        # The reader keeps draining stdout: the pipe must never fill.
        found = LineReader(self.proc.stdout).wait(URL_LINE, timeout)
        if found is not None:
            return int(found.group(1))
        why = self.stderr()  # before stop(), which closes the log
        self.stop()
        raise RuntimeError(f"server did not start: {' '.join(self.argv)}\n{why}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_pids(self) -> list[int]:
        """The processes whose CPU is the server's."""
        return [self.pid]

    def rss_kb(self) -> int:
        return proc_status_kb(self.pid, "VmRSS") or 0

    def hwm_kb(self) -> int:
        return proc_status_kb(self.pid, "VmHWM") or 0

    def stderr(self, limit: int = 2000) -> str:
        self.log.seek(0)
        return self.log.read()[-limit:]

    def problem_lines(self, limit: int = 2000) -> list[str]:
        """Warnings, errors and tracebacks in the last ``limit`` characters of the log."""
        if self.log.closed:
            return []
        return [line.strip()[:300] for line in self.stderr(limit).splitlines()
                if PROBLEM_LINE.search(line)]

    def problems(self) -> str | None:
        """The first warning, error or traceback the server logged, if any."""
        return next(iter(self.problem_lines()), None)

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.proc, timeout)
        if not self.log.closed:
            self.log.close()


@contextmanager
def running_server(kind: ServerKind, deflate: bool, flush_ms: float | None) -> Iterator[
    ServerProcess
]:
    server = ServerProcess(kind.command(deflate, flush_ms))
    try:
        yield server
    finally:
        problem = server.problems()
        if problem:
            SERVER_LOGS.append(f"{kind.label(flush_ms)} logged: {problem}")
        server.stop()
