"""The sizes and durations of every scenario (full and ``--quick``), the paths the
benchmark uses, and the thresholds that the reports and notices judge by: kept
apart so that changing a size never means reading the code that runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
ROOT = BENCH.parent
NODE_DIR = BENCH / ".node"
#: A load generator above this share of one core may be what limits the run.
LOADGEN_BUSY = 90.0
#: Saturation: a step passes while p99 stays under this and nearly all arrive.
SATURATION_P99_MS = 500.0
SATURATION_DELIVERED = 0.99
#: Connections per source address: a load generator holding more spreads them
#: over several (127.0.G.2, .3, ...). connect() searches for a free ephemeral
#: port of the (source, destination) pair, and slows as they fill: ~17 us per
#: connect at 5,000, ~440 us at 19,000 from one address (2026-12-07).
CONNS_PER_SOURCE = 5_000


# -- sizes -------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleSizes:
    """The scale scenario (wsnet only): many connections in rooms, through Redis."""

    connections: int = 100_000  # parts (a), (b) and (c)
    room_size: int = 100  # (a), (c): connections / room_size rooms
    per_room_rate: float = 1.0  # messages/s into each room: the target load
    #: (a) and (c) also run these lighter loads first, same connections: where
    #: the target is out of reach, they show what this machine does hold...
    lighter_rates: tuple[float, ...] = (0.25, 0.5, 0.75)
    #: ...after a window without messages (0: none): what the open connections
    #: alone cost (keepalive pings and pongs).
    idle_window: float = 10.0
    window: float = 30.0  # seconds of sending, (a) and (c)
    workers: int = 6  # (a) and (b): one node, --workers N
    nodes: tuple[int, ...] = (3, 3)  # (c): workers of each node, same Redis
    broadcasts: int = 3  # (b): one message to everyone, this many times
    broadcast_drain: float = 30.0
    sweep: tuple[int, ...] = (2, 3, 4, 5, 6)  # (a)'s load at sweep_connections, N = ...
    sweep_connections: int = 30_000
    sweep_window: float = 20.0
    drain: float = 10.0
    #: (stall): one process holding this many connections at the target load
    #: for this long, judged by its worst latencies (the cyclic GC's pauses).
    stall_connections: int = 19_000
    stall_window: float = 600.0
    #: (stall): more wsnet options of its process (e.g. --gc-freeze, to compare).
    stall_extra: tuple[str, ...] = ()
    parts: tuple[str, ...] = ("a", "noaff", "b", "c", "sweep", "stall")


@dataclass(frozen=True)
class StormSizes:
    """The storm scenario (wsnet only): every client cut off at once, resuming."""

    connections: tuple[int, ...] = (20_000, 100_000)  # one storm each
    room_size: int = 100
    #: Light (a message per room every 5 s): the storm is about reconnecting,
    #: and every client still has something to miss and resume.
    per_room_rate: float = 0.2
    workers: int = 6
    window: float = 60.0  # seconds of sending...
    restart_at: float = 5.0  # ...the node restarted this far into it
    drain: float = 30.0


@dataclass(frozen=True)
class Scale:
    """The sizes and durations of every scenario."""

    idle_sizes: tuple[int, ...]
    #: Sessions of (connections, [total messages/s, ...]); runs of a session share
    #: one server process and one set of connections.
    broadcast: tuple[tuple[int, tuple[float, ...]], ...]
    saturation_connections: int
    saturation_rates: tuple[float, ...]
    deflate: tuple[tuple[int, tuple[float, ...]], ...]
    flush: tuple[tuple[int, tuple[float, ...]], ...]
    #: The store scenario: sessions as above, clients spread over ``store_rooms``
    #: rooms (one sender each), run with ``--store memory`` and with SQLite.
    store: tuple[tuple[int, tuple[float, ...]], ...]
    store_rooms: int
    duration: float  # seconds of sending per broadcast run
    step_duration: float  # seconds of sending per saturation step
    drain: float  # longest wait for the last deliveries after sending stops
    settle: float  # seconds between a server's start and its empty-RSS reading
    hold: float  # seconds between the last handshake and the RSS reading
    per_worker: int  # connections per load-generator process, at most
    min_workers: int  # load-generator processes for a session with senders, at least
    message_bytes: int = 100
    sample_stride: int = 20  # every 20th client measures latency (5 %)...
    max_sampled: int = 25  # ...at most this many per worker
    big: ScaleSizes = ScaleSizes()
    storm: StormSizes = StormSizes()


FULL = Scale(
    idle_sizes=(1000, 5000, 10_000, 19_000),
    broadcast=((1000, (10, 100)), (10_000, (10,))),
    saturation_connections=1000,
    saturation_rates=(100, 200, 500, 1000, 2000, 3000, 5000, 7500, 10_000),
    deflate=((1000, (10, 100)), (10_000, (10,))),
    flush=((1000, (10, 100)),),
    store=((1000, (100, 2000)),),
    store_rooms=100,
    duration=10.0,
    step_duration=5.0,
    drain=5.0,
    settle=0.5,
    hold=2.0,
    per_worker=5000,
    min_workers=2,
)
QUICK = Scale(
    idle_sizes=(200, 500),
    broadcast=((200, (10, 100)), (500, (10,))),
    saturation_connections=200,
    saturation_rates=(200, 1000, 3000),
    deflate=((200, (10, 100)),),
    flush=((200, (100,)),),
    store=((200, (100, 1000)),),
    store_rooms=20,
    duration=1.5,
    step_duration=1.0,
    drain=2.0,
    settle=0.3,
    hold=0.3,
    per_worker=250,
    min_workers=1,
    big=ScaleSizes(
        connections=5000, window=3.0, workers=2, nodes=(1, 1), broadcasts=1, lighter_rates=(),
        idle_window=1.0,
        broadcast_drain=10.0, sweep=(1, 2), sweep_connections=2000, sweep_window=2.0, drain=5.0,
        stall_connections=2000, stall_window=5.0,
    ),
    storm=StormSizes(connections=(1000,), workers=2, window=12.0, restart_at=3.0, drain=10.0),
)
SCENARIOS = ("idle", "broadcast", "saturation", "deflate", "flush", "store", "scale", "storm")


# -- the scale scenario (see wsbench/scale.py) ------------------------------------

#: Connections one load-generator process holds at most (~20k open files each).
SCALE_PER_LOADGEN = 19_000
#: Descriptors wsnet keeps back from its connection limit (wsnet/config.py).
WSNET_RESERVED_FDS = 64
#: SO_REUSEPORT spreads connections by a hash, not exactly: headroom per worker.
REUSEPORT_SLACK = 1.05
SCALE_P99_TARGET_MS = 120.0
#: wsnet's CPU per delivery at the target load: CPU seconds of every wsnet
#: process (supervisor and workers, not Redis) over the window / deliveries.
SCALE_CPU_PER_DELIVERY_TARGET_US = 7.0
#: CPU of everything else on the machine (% of one core) above which a notice
#: says that the numbers may suffer from it.
OTHER_BUSY = 25.0
SCALE_RSS_TARGET_KB = 1_000_000_000 // 1024  # 1 GB (10^9 bytes) in KiB
#: (stall): the issue's targets for one process over ten minutes.
STALL_P999_TARGET_MS = 100.0
STALL_MAX_TARGET_MS = 150.0
#: The store's targets against --store memory in the same run (issue: durable
#: history): p99 at most this many ms more, server CPU at most this ratio.
STORE_P99_EXTRA_MS = 5.0
STORE_CPU_RATIO = 1.15


# -- the storm scenario (see wsbench/storm.py) ------------------------------------

#: The issue's targets: this share of the clients cut off back in their rooms
#: within STORM_MOST_S of the restart, and all of them within STORM_ALL_S.
STORM_MOST = 0.99
STORM_MOST_S = 20.0
STORM_ALL_S = 40.0
