"""What ``/proc`` says about processes and the machine: CPU seconds, RSS, open
files, children, the kernel's TCP buffers and the ephemeral port range. Every
number the benchmark reports about a server comes from here, read from outside
the process, so that it measures servers that know nothing of the benchmark.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kb(pid: int, key: str) -> int | None:
    """A ``kB`` line of /proc/PID/status: VmRSS, VmHWM..."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


@dataclass
class Snapshot:
    """CPU seconds of the server (all its processes) and each worker, and the
    machine, at one instant."""

    t: float
    server_cpu: float
    worker_cpu: list[float]
    machine: tuple[int, int]
    by_pid: dict[int, float] = field(default_factory=dict)  # each server process

    @classmethod
    def take(cls, server_pids: int | list[int], worker_pids: list[int]) -> Snapshot:
        pids = [server_pids] if isinstance(server_pids, int) else server_pids
        by_pid = {p: proc_cpu_s(p) or 0.0 for p in pids}
        return cls(
            time.monotonic(),
            sum(by_pid.values()),
            [proc_cpu_s(p) or 0.0 for p in worker_pids],
            machine_jiffies(),
            by_pid,
        )


def cpu_percent(a: Snapshot, b: Snapshot) -> tuple[float, list[float], float]:
    """Server % of one core, each worker's % of one core, machine % busy (all cores)."""
    wall = max(1e-6, b.t - a.t)
    busy = b.machine[0] - a.machine[0]
    total = max(1, b.machine[1] - a.machine[1])
    return (
        100 * (b.server_cpu - a.server_cpu) / wall,
        [100 * (y - x) / wall for x, y in zip(a.worker_cpu, b.worker_cpu, strict=True)],
        100 * busy / total,
    )


def cpu_by_pid(a: Snapshot, b: Snapshot) -> dict[int, float]:
    """Each server process's % of one core between two snapshots (processes in
    both: one that ended or started in between is left out)."""
    wall = max(1e-6, b.t - a.t)
    return {p: 100 * (b.by_pid[p] - a.by_pid[p]) / wall for p in b.by_pid if p in a.by_pid}


def child_pids(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` (from /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent:
            pids.append(int(entry))
    return sorted(pids)


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def kernel_tcp_mem_kb() -> int:
    """Pages the kernel holds for all TCP sockets' buffers (/proc/net/sockstat), in KB."""
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    fields = line.split()
                    return int(fields[fields.index("mem") + 1]) * PAGE_KB
    except (OSError, ValueError, IndexError):
        pass
    return 0


def ephemeral_ports() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(v) for v in f.read().split())
    except (OSError, ValueError):
        return 28_000
    return high - low + 1
