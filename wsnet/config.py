"""Every limit, timeout and knob of the server, in one frozen place.

Each default says why it is what it is. A limit that is not here does not exist,
which is the point: remote peers are bounded by these numbers and nothing else.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import resource
from dataclasses import dataclass
from typing import Any

__all__ = ["Config", "default_max_connections"]

#: Descriptors kept back from ``max_connections`` for the listener, the selector,
#: log files, a signal pipe and whatever an embedding application opens.
_RESERVED_FDS = 64


def default_max_connections() -> int:
    """What the process's soft descriptor limit allows, less a reserve."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(1, soft - _RESERVED_FDS)


@dataclass(frozen=True, slots=True)
class Config:
    """Server settings. Build one, or ``Config().replace(port=9000)``."""

    host: str = "127.0.0.1"
    port: int = 8080
    #: Kernel accept queue; bursts of handshakes (benchmarks, reconnect storms)
    #: wait here instead of being refused.
    backlog: int = 1024
    #: Share the port with other processes (SO_REUSEPORT): worker processes
    #: each listen and the kernel spreads connections over them.
    reuse_port: bool = False

    #: Fan-out period. Every outbox is flushed once per tick, so a broadcast costs
    #: one send per recipient per tick however many messages it holds. 0 flushes at
    #: the end of every loop turn (lowest latency, one send per message).
    flush_interval: float = 0.050

    #: Request line plus headers. h11's own default, between nginx's 8 KiB and
    #: node's 80 KiB: browsers with many cookies fit, floods do not. Past it: 431.
    max_header_bytes: int = 16 * 1024
    #: One line per connection on the "wsnet.access" logger (peer, path, time,
    #: bytes and messages each way, close code; one per plain request): what an
    #: operator reads first. Off for runs of millions of short connections.
    access_log: bool = True
    #: After a burst of new WebSockets (1,000 of them, then a quiet second),
    #: move every object the collector tracks to its permanent generation
    #: (``gc.freeze``), so that full collections stop walking them. wsnet's own
    #: records hold no reference cycles, so refcounting still frees them; a
    #: cycle the application makes and then drops after a freeze is never
    #: collected. Off by default, because below overload there is little left
    #: for it to do: full collections run only when a process gains many
    #: long-lived objects, and at 100,000 connections over six workers at half
    #: the target load they ran none in 90 s (2026-12-08). An overloaded worker,
    #: whose outboxes grow, does run them (four of ~0.9 s in 33 s); a freeze
    #: removes those but not the queueing delay (``--gc-freeze``).
    gc_freeze: bool = False
    #: Largest body of a plain request (the chat's HTTP API takes JSON): past
    #: it, 413 before the body is read, or as soon as a chunked one grows past.
    max_body_bytes: int = 64 * 1024
    #: A peer that has not finished its HTTP request (head and body) by then is
    #: dropped; so is a kept-alive connection idle that long between requests.
    handshake_timeout: float = 10.0
    #: Paths that accept the WebSocket upgrade.
    ws_paths: tuple[str, ...] = ("/", "/ws")

    #: Largest message after reassembly and after inflate. Past it: close 1009.
    max_message_bytes: int = 1 << 20
    #: Frames in one message. A message of many tiny (or empty) fragments costs
    #: parsing per frame while its size barely grows; past it: close 1009.
    max_fragments: int = 4096
    #: Bytes waiting to be sent to one peer. A peer that still has more than this
    #: waiting when a new frame is queued is a slow consumer: close 1008. Bounds
    #: memory per connection to this plus one frame.
    outbox_limit: int = 1 << 20
    #: Above this many queued bytes the peer is not read from until it drains,
    #: so a client cannot make us queue replies faster than it takes them.
    outbox_high_water: int = 256 * 1024
    #: The kernel's send buffer per client socket (SO_SNDBUF; Linux doubles it
    #: for its bookkeeping). Left to autotuning, a client that stops reading
    #: lets it grow to ~4 MiB on loopback before our outbox (and its limit) sees
    #: a byte, which at 100,000 clients is far beyond the machine. 128 KiB keeps
    #: a chat's throughput (a tick's frames are kilobytes) and bounds a stalled
    #: client to about outbox_limit plus this. 0 leaves the kernel's default.
    socket_send_buffer: int = 128 * 1024
    #: Upgraded connections allowed at once; beyond it the upgrade gets 503.
    #: 0 means "what the descriptor limit allows" (see default_max_connections).
    max_connections: int = 0
    #: Open WebSockets per client IP address; beyond it the upgrade gets 429.
    #: 0 (the default) is off: benchmarks, NATs and proxies put many honest
    #: clients behind one address.
    max_connections_per_ip: int = 0

    #: Messages a client may send per second on average (token bucket), and at
    #: once. A person typing or a bot at 20 msg/s stays far below. A refused
    #: message is dropped and the application told (chat sends an error event);
    #: 0 disables the limit.
    rate_limit: float = 50.0
    rate_burst: int = 100
    #: Refused messages (since the bucket was last half full) before the flooder
    #: is closed with 1008.
    rate_limit_close_after: int = 100

    #: Browser origins allowed to open a WebSocket (e.g. "https://chat.example");
    #: others get 403. Empty: any origin. Requests without Origin (non-browser
    #: clients, which can send any Origin anyway) are not affected.
    allowed_origins: tuple[str, ...] = ()
    #: Reverse proxies (addresses and CIDRs) whose Forwarded / X-Forwarded-For
    #: and X-Forwarded-Proto headers are believed: then the client behind them is
    #: ``conn.peer``, the per-address limits and the logs. Empty: nobody's, since
    #: any client can write those headers.
    forwarded_allow_ips: tuple[str, ...] = ()

    #: TLS: serve wss:// and https:// when both are set (PEM files).
    certfile: str | None = None
    keyfile: str | None = None

    #: Keepalive: a ping after ping_interval seconds in which the client sent
    #: nothing (one that talks is alive: pinging it would only cost frames) and
    #: took nothing either (on Linux, data we sent it that its TCP acknowledged
    #: in full shows its host up as well as a pong would; not through a proxy
    #: in forwarded_allow_ips, whose acknowledgements are its own; a peer that
    #: vanishes right after such an interval is then found one interval
    #: later), and a close (1011) if no pong arrives within ping_timeout.
    #: 0 disables it.
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    #: How long we wait for the peer's close frame, and then for its FIN, before
    #: dropping the socket ourselves.
    close_timeout: float = 5.0
    #: On SIGINT/SIGTERM, how long clients get to answer our 1001 close.
    shutdown_grace: float = 5.0

    #: permessage-deflate (RFC 7692). The server always imposes
    #: server_no_context_takeover, so one compressed frame serves every deflate
    #: peer and no compressor lives between messages.
    deflate: bool = True
    #: Also impose client_no_context_takeover, so no inflate state (about 40 KiB of
    #: zlib window and state) lives between a peer's messages. RFC 7692 §7.1.1.2
    #: lets the server require it.
    deflate_client_no_context_takeover: bool = True
    #: zlib level for outgoing frames: 1..9. Broadcasts are compressed once per
    #: tick, so a middle level costs little.
    deflate_level: int = 6
    #: Payloads shorter than this are sent uncompressed (valid on a deflate
    #: connection): deflate's sync-flush overhead eats the gain on tiny frames.
    deflate_min_bytes: int = 128

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (validated again: a bad value raises
        ValueError naming it, as ``Config(...)`` does)."""
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append("port must be 0..65535")
        if self.flush_interval < 0:
            problems.append("flush_interval must be >= 0")
        for name in (
            "max_header_bytes",
            "max_body_bytes",
            "max_message_bytes",
            "outbox_limit",
            "outbox_high_water",
            "backlog",
            "max_fragments",
        ):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0")
        for name in ("handshake_timeout", "close_timeout", "shutdown_grace"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0")
        if self.ping_interval < 0 or self.ping_timeout <= 0:
            problems.append("ping_interval must be >= 0 and ping_timeout > 0")
        if self.socket_send_buffer < 0:
            problems.append("socket_send_buffer must be >= 0")
        if self.max_connections < 0 or self.max_connections_per_ip < 0:
            problems.append("max_connections and max_connections_per_ip must be >= 0")
        if self.rate_limit < 0 or self.rate_burst < 1 or self.rate_limit_close_after < 1:
            problems.append("rate_limit must be >= 0, rate_burst and rate_limit_close_after >= 1")
        if (self.certfile is None) != (self.keyfile is None):
            problems.append("certfile and keyfile go together")
        if not 1 <= self.deflate_level <= 9:
            problems.append("deflate_level must be 1..9")
        for spec in self.forwarded_allow_ips:
            try:
                ipaddress.ip_network(spec.strip(), strict=False)
            except ValueError:
                problems.append(f"forwarded_allow_ips: not an address or CIDR: {spec!r}")
        if problems:
            raise ValueError("invalid Config: " + "; ".join(problems))

    @property
    def tls(self) -> bool:
        return self.certfile is not None

    @property
    def connection_limit(self) -> int:
        """max_connections with 0 resolved to the descriptor budget."""
        return self.max_connections or default_max_connections()
