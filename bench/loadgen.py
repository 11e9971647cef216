"""One load-generator worker: N WebSocket clients on raw sockets and ``selectors``.

Built for low CPU per delivery, so that the server, not this process, is what a
benchmark measures:

- its own client handshake and frame codec (no asyncio, no client library);
- receivers *count* deliveries with ``bytes.count`` of a per-run marker inside
  each frame's payload (batched JSON arrays included), never parsing JSON;
- only a sample of receivers (every k-th connection) extracts the send time of
  each message to measure latency, into a log-linear histogram.

Every message a sender sends is ``#r<run>#<monotonic_ns>#<worker>.<k>#`` padded
to the message size. ``time.monotonic_ns`` is one clock for the whole machine on
Linux, so a message sent by one worker is timed correctly by another.

With ``--rooms K`` client ``i`` joins room ``r{(offset + i) % K}`` through the
upgrade URL (``?room=...``), each sender sends into its own room, and messages
carry their room: ``#r<run>/<room>#<monotonic_ns>#<worker>.<k>#``. A receiver
then counts only its own room's marker (``#r<run>/<room>#``), so a delivery is
counted only where it belongs; the run's markers of other rooms are counted
apart (``misrouted``), and so are ``error`` events (``unavailable`` when the
backplane cannot take a message). Workers report how many messages they sent
into each room, the orchestrator adds them up (``expect`` carries ``by_room``),
and each worker expects, for each of its receivers, exactly its room's count.
A worker is ready once every client has its join answer (the ``presence``
snapshot), which with a Redis backplane comes a round trip after the 101.

With ``--resume`` (the storm scenario) a client behaves as the chat page does
when its connection ends during a run: it reconnects after the page's backoff
(full jitter over 0.5 s doubling to 15 s; at once after close 1012; the count
starts over once a connection lived 5 s), with ``since``/``epoch`` in the URL,
and a sender sends JSON ``message`` commands with a ``cid``, keeps every one it
has not seen echoed, and sends those again once it is back in its room. Every
client then follows its room's ``seq``: a delivery is a message numbered one
above the last it saw; a lower number is a repeat (unless it answers the
client's own resend), a higher one a loss, and so is a ``gap`` event. The result
says when each client was first cut off in the run and when it was first back
in its room.

The orchestrator (``bench/run.py``) drives workers through one JSON line per
command on stdin, and reads one JSON line per event on stdout::

    worker -> {"event": "ready", ...}         all connections open (or failed)
    run    <- {"cmd": "run", "run": 1, "start_ns": T, "duration": D, "rate": R}
    worker -> {"event": "sent", "run": 1, "sent": k}   senders are done
    run    <- {"cmd": "expect", "run": 1, "messages": M}  sent by all workers
                 (with --rooms also "by_room": {room: messages sent into it})
    worker -> {"event": "result", "run": 1, ...}   drained, or drain timed out
    run    <- {"cmd": "stop"}
    worker -> {"event": "bye", ...}

Everything is bounded: connect time, each run, each drain, and the worker's whole
lifetime (``--max-lifetime``); EOF on stdin also ends it. Only 127.0.0.0/8 is
accepted as a target or a source address.
"""

from __future__ import annotations

import argparse
import collections
import errno
import gc
import heapq
import ipaddress
import itertools
import json
import os
import random
import re
import resource
import selectors
import socket
import sys
import time
import zlib
from collections.abc import Iterable
from typing import Any

# bench/ is sys.path[0] when this runs as a script, and on sys.path for run.py.
from wsbench.codec import (
    FIN,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OPCODE,
    RSV1,
    TEXT_FINAL,
    HandshakeError,
    MaskedFrameError,
    check_response,
    frame_size,
    inflate,
    mask_frame,
    new_inflater,
    new_key,
    scan_frames,
    upgrade_request,
)

__all__ = ["Histogram", "main", "mask_frame"]

#: Bytes asked of each recv(). Not more: CPython allocates the whole size first,
#: and from 128 KiB up glibc maps fresh pages for it on every call (about 15 µs
#: each, five times the cost of the system call itself).
RECV_BYTES = 64 * 1024
MAX_HEAD_BYTES = 16 * 1024
#: In rooms mode, what a client's join answer (a presence snapshot) carries.
JOINED_TAG = b'"epoch":"'
#: Every chat error event carries this; its code follows in "error":"<code>".
ERROR_TAG = b'"type":"error"'
ERROR_CODE = re.compile(rb'"type":"error","error":"([A-Za-z_]{1,40})"')
#: Descriptors a worker keeps back beyond its clients (stdin/out/err, selector...).
RESERVED_FDS = 64
#: --resume: the chat page's reconnect backoff (wsnet/chat/static/index.html).
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 15.0
STABLE_S = 5.0
#: --resume: a connect or handshake not done by then counts as failed (a
#: browser waits longer; the backoff then applies as for a refusal).
ATTEMPT_TIMEOUT_S = 10.0
#: --resume: the events a client follows its room by (the server's encoding:
#: wsnet/chat/protocol.py, presence.py).
TRACKED = re.compile(
    rb'"type":"(?:message","room":"[^"]*","seq":(\d+)'
    rb'|presence","room":"[^"]*","epoch":"([^"]*)","seq":(\d+)|(gap)")'
)
#: Linux's IP_BIND_ADDRESS_NO_PORT: bind() to a source address without picking a
#: port yet, so ephemeral ports are shared per (source, destination) pair.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

# Client states (WAITING: --resume, cut off and waiting for its next attempt).
CONNECTING, HANDSHAKE, OPEN, CLOSED, WAITING = range(5)


def marker(run: int) -> bytes:
    """What every message of one run carries, and receivers count."""
    return b"#r%d#" % run


def room_marker(run: int, room: int) -> bytes:
    """Rooms mode: what every message of one run into one room carries."""
    return b"#r%d/%d#" % (run, room)


def raise_nofile(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE up to the hard limit; SystemExit, saying what
    to do, if even the hard limit is below ``needed``. Returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    elif hard == resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        soft = needed
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise SystemExit(
            f"loadgen: {needed} open files needed, but the hard RLIMIT_NOFILE is {hard}: "
            "use fewer connections per worker (or raise the hard limit: ulimit -Hn)"
        )
    return soft


class Histogram:
    """Latencies in microseconds, log-linear buckets (about 3 % wide), mergeable.

    Values below 64 µs are exact; above, a bucket keeps the top 6 bits.
    """

    __slots__ = ("counts", "max_us", "n")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.max_us = 0
        self.n = 0

    @staticmethod
    def key(us: int) -> int:
        e = us.bit_length()
        if e <= 6:
            return us
        shift = e - 6
        return (shift << 6) | (us >> shift)

    @staticmethod
    def value(key: int) -> float:
        """The middle of a bucket, in microseconds."""
        if key < 64:
            return float(key)
        shift, mantissa = key >> 6, key & 63
        return (mantissa << shift) + (1 << shift) / 2

    def add(self, us: int) -> None:
        k = self.key(us)
        self.counts[k] = self.counts.get(k, 0) + 1
        self.n += 1
        self.max_us = max(self.max_us, us)

    def merge(self, counts: dict[Any, int], max_us: int) -> None:
        for k, c in counts.items():
            key = int(k)
            self.counts[key] = self.counts.get(key, 0) + c
            self.n += c
        self.max_us = max(self.max_us, max_us)

    def percentile(self, p: float) -> float | None:
        """The p-th percentile in microseconds (None if empty)."""
        if not self.n:
            return None
        rank = max(1, int(p / 100 * self.n + 0.5))
        seen = 0
        for k in sorted(self.counts):
            seen += self.counts[k]
            if seen >= rank:
                return min(self.value(k), float(self.max_us))
        return float(self.max_us)

    def summary_ms(self) -> dict[str, float | None]:
        """p50/p90/p99/max in milliseconds."""
        out: dict[str, float | None] = {}
        for name, p in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0)):
            v = self.percentile(p)
            out[name] = None if v is None else round(v / 1000, 3)
        out["max"] = round(self.max_us / 1000, 3) if self.n else None
        return out

    def to_json(self) -> dict[str, Any]:
        return {"counts": {str(k): c for k, c in self.counts.items()}, "max_us": self.max_us}


class Client:
    """One WebSocket client connection."""

    __slots__ = (
        "index", "sock", "fd", "state", "head", "key", "sampled", "deflate", "inflater",
        "pending", "pending_len", "need", "fragments", "fragment_rsv1", "out", "delivered",
        "room", "joined",
        # --resume
        "seq", "epoch", "attempt", "attempt_id", "opened_at", "dropped_ns", "resumed_ns",
        "unacked", "resent",
    )

    def __init__(self, index: int, sock: socket.socket, sampled: bool, room: int = 0) -> None:
        self.index = index
        self.sock = sock
        self.fd = sock.fileno()
        self.state = CONNECTING
        self.head = b""  # handshake response bytes so far
        self.key = b""
        self.sampled = sampled
        self.deflate = False
        #: A persistent inflater when the server keeps its compression context;
        #: None when it imposed server_no_context_takeover (each message alone).
        self.inflater: Any = None
        self.pending: list[bytes] = []  # an incomplete frame's bytes
        self.pending_len = 0
        self.need = 0  # bytes needed before the pending frame can be parsed
        self.fragments: list[bytes] | None = None
        self.fragment_rsv1 = False
        self.out = b""  # bytes the kernel did not take yet
        self.delivered = 0  # this run's messages received
        self.room = room  # rooms mode: the index of its room
        self.joined = False  # rooms mode: its join answer arrived
        self.seq = -1  # --resume: the last message number it saw (-1: not joined yet)
        self.epoch = b""
        self.attempt = 0  # reconnect attempts since it was last stable
        self.attempt_id = 0  # which attempt a pending deadline belongs to
        self.opened_at = 0.0  # when its join answer last arrived
        self.dropped_ns = 0  # when it was first cut off in this run (0: not yet)
        self.resumed_ns = 0  # when it was first back in its room after that
        #: A sender's messages not yet seen echoed, by cid (sent again on rejoin).
        self.unacked: dict[bytes, bytes] = {}
        self.resent = 0  # own messages sent again (their answers are no repeats)


class Worker:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.sel = selectors.DefaultSelector()
        self.clients: list[Client] = []
        self.by_fd: dict[int, Client] = {}
        self.errors: dict[str, int] = {}
        self.closed_by_server = 0
        self.lost = 0
        self.deflate_conns = 0
        self.handshake_start_ns = 0
        self.handshake_end_ns = 0
        self.to_connect = 0  # next client index to open
        self.in_flight = 0
        self.opened = 0
        self.stdin_buf = b""
        self.stdin_eof = False
        self.stdin_is_file = False  # commands from a file or /dev/null: EOF is not "gone"
        self.commands: list[dict[str, Any]] = []
        self.born = time.monotonic()
        # Per-run state.
        self.run_id = 0
        self.mark = marker(0)
        self.pattern = re.compile(re.escape(self.mark) + rb"(\d+)#")
        self.hist = Histogram()
        self.delivered = 0
        self.last_delivery_ns = 0
        self.other_frames = 0
        self.compressed_frames = 0
        # Rooms mode (--rooms K): per-room markers of the run, what else was seen.
        self.rooms = opts.rooms
        self.room_marks = [room_marker(0, r) for r in range(self.rooms)]
        self.room_patterns: dict[int, re.Pattern[bytes]] = {}
        self.generic = b"#r0/"  # any message of this run, whatever its room
        self.seen_any = 0  # markers of this run seen at all (own room or not)
        self.error_events: dict[str, int] = {}
        self.joined = 0
        self.join_end_ns = 0
        # --resume: reconnecting is on during runs; who waits for its next
        # attempt (due time, client, attempt id) and whose attempt may time out.
        self.resume = opts.resume
        self.reconnecting = False
        self.retries: list[tuple[float, int, int, Client]] = []  # (due, order, attempt, c)
        self.order = itertools.count()
        self.attempts: collections.deque[tuple[float, int, Client]] = collections.deque()
        self.backoff = random.Random(opts.worker_id)
        self.cid_tag = b'"cid":"w%d.' % opts.worker_id
        self.cid_pattern = re.compile(re.escape(self.cid_tag) + rb'(\d+)"')
        self.track = {"missing": 0, "repeats": 0, "gap_events": 0, "resets": 0,
                      "reconnects": 0, "attempts": 0, "resent": 0}

    # -- output ----------------------------------------------------------------

    @staticmethod
    def emit(event: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    # -- connecting ------------------------------------------------------------

    def start_connect(self, index: int) -> None:
        opts = self.opts
        stride = max(1, opts.sample_stride)
        sampled = index % stride == 0 and index // stride < opts.max_sampled
        sock = self.new_socket(index)
        if sock is None:
            return
        room = (opts.room_offset + index) % opts.rooms if opts.rooms else 0
        client = Client(index, sock, sampled, room)
        self.clients.append(client)
        self.by_fd[client.fd] = client
        self.sel.register(sock, WRITE, client)
        self.in_flight += 1

    def new_socket(self, index: int) -> socket.socket | None:
        """A non-blocking connect to the server under way (None: it failed at once)."""
        opts = self.opts
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if opts.source:
                sources = opts.source
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((sources[index % len(sources)], 0))
            rc = sock.connect_ex((opts.host, opts.port))
        except OSError as exc:
            sock.close()
            self.error(errno.errorcode.get(exc.errno or 0, "connect"))
            return None
        if rc not in (0, errno.EINPROGRESS):
            sock.close()
            self.error(errno.errorcode.get(rc, "connect"))
            return None
        return sock

    def connected(self, c: Client) -> None:
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.fail(c, errno.errorcode.get(err, "connect"))
            return
        c.key = new_key()
        room = b"room=%s%d&" % (self.opts.room_prefix.encode(), c.room) if self.rooms else b""
        if c.seq >= 0:  # --resume: back into the room after the last message it saw
            room += b"since=%d&epoch=%s&" % (c.seq, c.epoch)
        request = upgrade_request(
            host=self.opts.host.encode(), port=self.opts.port, path=self.opts.path.encode(),
            query=b"%sname=b%d-%d" % (room, self.opts.worker_id, c.index), key=c.key,
            deflate=self.opts.deflate,
        )
        c.state = HANDSHAKE
        self.sel.modify(c.sock, READ, c)
        self.write(c, request)

    def handshake_data(self, c: Client, data: bytes) -> None:
        c.head += data
        end = c.head.find(b"\r\n\r\n")
        if end < 0:
            if len(c.head) > MAX_HEAD_BYTES:
                self.fail(c, "handshake_too_long")
            return
        head, rest = c.head[:end], c.head[end + 4 :]
        c.head = b""
        try:
            accepted = check_response(head, c.key)
        except HandshakeError as exc:
            self.fail(c, exc.reason)
            return
        if accepted.deflate:
            c.deflate = True
            self.deflate_conns += 1
            if accepted.context_takeover:
                c.inflater = new_inflater()
        c.state = OPEN
        self.in_flight -= 1
        self.opened += 1
        self.handshake_end_ns = time.monotonic_ns()
        if rest:
            self.frames(c, rest, 0)

    def fail(self, c: Client, why: str) -> None:
        """A client that never got open."""
        self.error(why)
        if c.state in (CONNECTING, HANDSHAKE):
            self.in_flight -= 1
        self.drop(c)
        if self.reconnecting:
            self.wait_to_reconnect(c, why)

    def drop(self, c: Client) -> None:
        if c.state is CLOSED:
            return
        c.state = CLOSED
        self.by_fd.pop(c.fd, None)
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def lose(self, c: Client, why: str) -> None:
        """An open connection ended by the server or the network."""
        if c.state is OPEN:
            self.lost += 1
            self.error(why)
            self.drop(c)
            if self.reconnecting:
                self.wait_to_reconnect(c, why)
        else:
            self.fail(c, why)

    # -- reconnecting (--resume) -----------------------------------------------

    def wait_to_reconnect(self, c: Client, why: str) -> None:
        """The page's backoff: full jitter over base * 2^attempt, capped; the
        count starts over after a connection that lived STABLE_S, and at 1012."""
        now = time.monotonic()
        if not c.dropped_ns:
            c.dropped_ns = time.monotonic_ns()
        if why == "close_1012" or (c.opened_at and now - c.opened_at >= STABLE_S):
            c.attempt = 0
        c.opened_at = 0.0
        ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** c.attempt)
        c.attempt = min(c.attempt + 1, 30)
        c.state = WAITING
        c.joined = False
        c.attempt_id += 1
        due = now + self.backoff.random() * ceiling
        heapq.heappush(self.retries, (due, next(self.order), c.attempt_id, c))

    def due_retries(self) -> None:
        """Start the attempts that are due; fail the ones that took too long."""
        now = time.monotonic()
        while self.retries and self.retries[0][0] <= now:
            _, _, attempt_id, c = heapq.heappop(self.retries)
            if c.state is WAITING and attempt_id == c.attempt_id:
                self.reconnect(c, now)
        while self.attempts and self.attempts[0][0] <= now:
            _, attempt_id, c = self.attempts.popleft()
            if attempt_id == c.attempt_id and c.state in (CONNECTING, HANDSHAKE):
                self.fail(c, "attempt_timeout")

    def reconnect(self, c: Client, now: float) -> None:
        self.track["attempts"] += 1
        sock = self.new_socket(c.index)
        if sock is None:
            self.wait_to_reconnect(c, "connect")
            return
        c.sock, c.fd, c.state = sock, sock.fileno(), CONNECTING
        c.head, c.pending, c.pending_len, c.need, c.fragments, c.out = b"", [], 0, 0, None, b""
        c.deflate, c.inflater = False, None
        self.by_fd[c.fd] = c
        self.sel.register(sock, WRITE, c)
        self.in_flight += 1
        self.attempts.append((now + ATTEMPT_TIMEOUT_S, c.attempt_id, c))

    def follow(self, c: Client, data: bytes, end: int) -> None:
        """--resume: the client's room by its numbering, over complete events."""
        track = self.track
        for m in TRACKED.finditer(data, 0, end):
            seq = m.group(1)
            if seq is not None:
                n = int(seq)
                if n == c.seq + 1:
                    c.seq = n
                    c.delivered += 1
                    self.delivered += 1
                elif n > c.seq:
                    track["missing"] += n - c.seq - 1
                    c.seq = n
                else:  # seen before: the answer to its own resend, or a repeat
                    following = data.find(b',{"type":', m.end(), end)
                    stop = end if following < 0 else following
                    if c.resent and data.find(self.cid_tag, m.end(), stop) >= 0:
                        c.resent -= 1
                    else:
                        track["repeats"] += 1
            elif m.group(4) is not None:
                track["gap_events"] += 1
            else:  # a join answer: the room's head, and its epoch
                epoch = m.group(2)
                if c.seq < 0:
                    c.seq = int(m.group(3))
                elif epoch != c.epoch:  # numbering restarted: what follows is new
                    track["resets"] += 1
                    c.seq = 0
                c.epoch = epoch
        if c.unacked and data.find(self.cid_tag, 0, end) >= 0:
            for m in self.cid_pattern.finditer(data, 0, end):
                c.unacked.pop(m.group(1), None)

    def rejoined(self, c: Client) -> None:
        """--resume: back in its room: note when, and send again what was not echoed."""
        c.opened_at = time.monotonic()
        if c.dropped_ns and not c.resumed_ns:
            c.resumed_ns = time.monotonic_ns()
            self.track["reconnects"] += 1
        for frame in c.unacked.values():
            self.write(c, frame)
            if c.state is not OPEN:
                return
        c.resent += len(c.unacked)
        self.track["resent"] += len(c.unacked)

    # -- writing ---------------------------------------------------------------

    def write(self, c: Client, data: bytes) -> None:
        if c.out:
            c.out += data
            return
        try:
            sent = c.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.lose(c, "send_error")
            return
        if sent < len(data):
            c.out = data[sent:]
            self.sel.modify(c.sock, READ | WRITE, c)

    def writable(self, c: Client) -> None:
        try:
            sent = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.lose(c, "send_error")
            return
        c.out = c.out[sent:]
        if not c.out:
            self.sel.modify(c.sock, READ, c)

    # -- reading ---------------------------------------------------------------

    def readable(self, c: Client) -> None:
        try:
            data = c.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.lose(c, "recv_error")
            return
        if not data:
            self.lose(c, "eof")
            return
        if c.state is not OPEN:
            self.handshake_data(c, data)
            return
        if c.pending:
            c.pending.append(data)
            c.pending_len += len(data)
            if c.pending_len < c.need:
                return
            data = b"".join(c.pending)
            c.pending = []
            c.pending_len = 0
        self.frames(c, data, time.monotonic_ns() if c.sampled else 0)

    def frames(self, c: Client, data: bytes, now_ns: int) -> None:
        """Every complete frame in ``data``; the hot path of the whole harness."""
        try:
            spans, pos = scan_frames(data)
        except MaskedFrameError:  # a protocol error: nothing of this read is counted
            self.lose(c, "masked_server_frame")
            return
        count = 0
        mark = self.room_marks[c.room] if self.rooms else self.mark
        fast = not c.sampled
        counting = not self.resume  # --resume counts by seq instead (follow)
        for b0, start, end in spans:
            if b0 == TEXT_FINAL and fast and c.fragments is None:  # whole text, no RSV1
                if counting:
                    count += data.count(mark, start, end)
            else:
                self.frame(c, b0, data, start, end, now_ns=now_ns)
                if c.state is not OPEN:
                    return
        if count:
            c.delivered += count
            self.delivered += count
            self.last_delivery_ns = time.monotonic_ns()
        if self.rooms and pos:
            self.room_checks(c, data, pos)
        if pos < len(data):
            rest = data[pos:]
            c.pending = [rest]
            c.pending_len = len(rest)
            c.need = frame_size(rest)

    def room_checks(self, c: Client, data: bytes, end: int) -> None:
        """Rooms mode, over the complete frames of one read: every marker of the
        run (own room or not), error events, and the client's join answer."""
        self.seen_any += data.count(self.generic, 0, end)
        if data.find(ERROR_TAG, 0, end) >= 0:
            found = ERROR_CODE.findall(data, 0, end)
            for code in found:
                key = code.decode()
                self.error_events[key] = self.error_events.get(key, 0) + 1
            missing = data.count(ERROR_TAG, 0, end) - len(found)
            if missing > 0:
                self.error_events["?"] = self.error_events.get("?", 0) + missing
        if self.resume:
            self.follow(c, data, end)
        if not c.joined and data.find(JOINED_TAG, 0, end) >= 0:
            c.joined = True
            self.joined += 1
            self.join_end_ns = time.monotonic_ns()
            if self.resume:
                self.rejoined(c)

    def frame(self, c: Client, b0: int, data: bytes, start: int, end: int, *, now_ns: int) -> None:
        """The frames the fast path does not take: sampled, compressed, fragmented,
        control."""
        opcode = b0 & OPCODE
        fin = b0 & FIN
        rsv1 = bool(b0 & RSV1)
        if opcode >= OP_CLOSE:
            if opcode == OP_PING:  # answer at once
                self.write(c, mask_frame(data[start:end], OP_PONG))
            elif opcode == OP_CLOSE:  # answer and go
                self.write(c, mask_frame(data[start : start + 2], OP_CLOSE))
                self.closed_by_server += 1
                self.lose(c, f"close_{int.from_bytes(data[start : start + 2], 'big')}")
            return
        if opcode != OP_CONT:  # first frame of a message
            if fin:
                self.message(c, rsv1, data, start, end, now_ns=now_ns)
            else:
                c.fragments = [data[start:end]]
                c.fragment_rsv1 = rsv1
            return
        if c.fragments is None:
            self.lose(c, "stray_continuation")
            return
        c.fragments.append(data[start:end])
        if fin:
            whole = b"".join(c.fragments)
            c.fragments = None
            self.message(c, c.fragment_rsv1, whole, 0, len(whole), now_ns=now_ns)

    def message(
        self, c: Client, compressed: bool, data: bytes, start: int, end: int, *, now_ns: int,
    ) -> None:
        if compressed:
            self.compressed_frames += 1
            try:
                data = inflate(data[start:end], c.inflater)
            except zlib.error:
                self.lose(c, "bad_deflate")
                return
            start, end = 0, len(data)
            if self.rooms:
                self.room_checks(c, data, end)
        mark = self.room_marks[c.room] if self.rooms else self.mark
        count = data.count(mark, start, end)
        if not count:
            self.other_frames += 1
            return
        if not self.resume:
            c.delivered += count
            self.delivered += count
        self.last_delivery_ns = time.monotonic_ns()
        if c.sampled:
            hist = self.hist
            pattern = self.room_pattern(c.room) if self.rooms else self.pattern
            for m in pattern.finditer(data, start, end):
                hist.add(max(0, now_ns - int(m.group(1))) // 1000)

    def room_pattern(self, room: int) -> re.Pattern[bytes]:
        pattern = self.room_patterns.get(room)
        if pattern is None:
            pattern = re.compile(re.escape(self.room_marks[room]) + rb"(\d+)#")
            self.room_patterns[room] = pattern
        return pattern

    # -- commands --------------------------------------------------------------

    def read_stdin(self) -> None:
        try:
            chunk = os.read(sys.stdin.fileno(), 65536)
        except (BlockingIOError, InterruptedError):
            return
        if not chunk:
            self.stdin_eof = True
            self.sel.unregister(sys.stdin.fileno())
            return
        self.stdin_buf += chunk
        self.parse_commands()

    def parse_commands(self) -> None:
        while b"\n" in self.stdin_buf:
            line, self.stdin_buf = self.stdin_buf.split(b"\n", 1)
            if line.strip():
                self.commands.append(json.loads(line))

    def next_command(self, deadline: float) -> dict[str, Any] | None:
        """Serve the sockets until a command arrives (None on EOF or deadline)."""
        while not self.commands:
            if self.stdin_eof or time.monotonic() > deadline:
                return None
            self.poll(0.05)
        return self.commands.pop(0)

    # -- the loop --------------------------------------------------------------

    def poll(self, timeout: float) -> None:
        if self.reconnecting:
            self.due_retries()
        for key, events in self.sel.select(timeout):
            c = key.data
            if c is None:
                self.read_stdin()
                continue
            if c.state is CLOSED or c.state is WAITING:
                continue
            if c.state is CONNECTING:
                self.connected(c)
                continue
            if events & WRITE and c.out:
                self.writable(c)
                if c.state is CLOSED:
                    continue
            if events & READ:
                self.readable(c)

    def open_all(self) -> None:
        opts = self.opts
        # Every worker starts at the instant the orchestrator chose, so their
        # handshake windows overlap and add up.
        delay = (opts.connect_at_ns - time.monotonic_ns()) / 1e9
        if delay > 0:
            time.sleep(min(delay, 10.0))
        deadline = time.monotonic() + opts.connect_timeout
        self.handshake_start_ns = time.monotonic_ns()
        while time.monotonic() < deadline:
            while self.to_connect < opts.connections and self.in_flight < opts.concurrency:
                self.start_connect(self.to_connect)
                self.to_connect += 1
            if (
                self.to_connect >= opts.connections
                and self.in_flight == 0
                and (not self.rooms or self.joined >= len(self.by_fd))
            ):
                break
            gone = self.stdin_eof and not self.stdin_is_file
            if gone or any(c.get("cmd") == "stop" for c in self.commands):
                return  # the orchestrator gave up (or is gone): no point going on
            self.poll(0.05)
        else:
            if self.to_connect < opts.connections:
                self.errors["not_started"] = opts.connections - self.to_connect
            for c in list(self.by_fd.values()):
                if c.state is not OPEN:
                    self.fail(c, "handshake_timeout")
                elif self.rooms and not c.joined:
                    # Open but not in its room: kept (a receiver that will miss
                    # its room's messages, which the counts then show).
                    self.error("join_timeout")

    def open_clients(self) -> list[Client]:
        return [c for c in self.clients if c.state is OPEN]

    def run(self, cmd: dict[str, Any], lifetime_deadline: float) -> None:
        opts = self.opts
        self.run_id = int(cmd["run"])
        self.mark = marker(self.run_id)
        self.pattern = re.compile(re.escape(self.mark) + rb"(\d+)#")
        self.hist = Histogram()
        self.delivered = 0
        self.other_frames = 0
        self.compressed_frames = 0
        self.last_delivery_ns = 0
        closed0, lost0 = self.closed_by_server, self.lost
        for c in self.clients:
            c.delivered = 0
            c.dropped_ns = c.resumed_ns = 0
        receivers = self.open_clients()
        self.reconnecting = self.resume
        if self.rooms:
            self.room_marks = [room_marker(self.run_id, r) for r in range(self.rooms)]
            self.room_patterns = {}
            self.generic = b"#r%d/" % self.run_id
            senders = self.room_senders(receivers)
        else:
            senders = receivers[: opts.senders]
        self.seen_any = 0
        self.error_events = {}
        by_room: dict[int, int] = {}
        rate = float(cmd["rate"])
        duration = float(cmd["duration"])
        start_ns = int(cmd["start_ns"])
        total = round(rate * duration) if senders else 0
        interval_ns = int(1e9 / rate) if rate > 0 else 0
        # Message k is due at a random point of its own interval: the mean rate is
        # exact, and sends do not lock in phase with a server's periodic tick
        # (10 msg/s against a 50 ms tick would otherwise always hit the same spot).
        jitter = random.Random(self.run_id * 1000 + opts.worker_id)

        def due_ns(k: int) -> int:
            return start_ns + int((k + jitter.random()) * interval_ns)

        next_due = due_ns(0)
        pad = b"x" * opts.message_bytes
        cpu0 = cpu_seconds()
        sent = 0
        max_lag_ns = 0
        first_send_ns = last_send_ns = 0
        while sent < total and time.monotonic() < lifetime_deadline:
            while sent < total and time.monotonic_ns() >= next_due:
                c = senders[sent % len(senders)]
                if self.rooms:
                    by_room[c.room] = by_room.get(c.room, 0) + 1
                if self.resume:  # as the page: a command with a cid, kept until echoed
                    t = time.monotonic_ns()
                    mark = self.room_marks[c.room]
                    head = b"%s%d#%d.%d#" % (mark, t, opts.worker_id, sent)
                    text = (head + pad)[: max(len(head), opts.message_bytes)]
                    frame = mask_frame(b'{"type":"message","text":"%s","cid":"w%d.%d"}' % (
                        text, opts.worker_id, sent))
                    c.unacked[b"%d" % sent] = frame
                    if c.state is OPEN and c.joined:
                        self.write(c, frame)
                    if not first_send_ns:
                        first_send_ns = t
                    last_send_ns = t
                    max_lag_ns = max(max_lag_ns, t - next_due)
                elif c.state is OPEN:
                    t = time.monotonic_ns()
                    mark = self.room_marks[c.room] if self.rooms else self.mark
                    head = b"%s%d#%d.%d#" % (mark, t, opts.worker_id, sent)
                    self.write(c, mask_frame((head + pad)[: max(len(head), opts.message_bytes)]))
                    if not first_send_ns:
                        first_send_ns = t
                    last_send_ns = t
                    max_lag_ns = max(max_lag_ns, t - next_due)
                sent += 1
                next_due = due_ns(sent)
            if sent >= total:
                break
            self.poll(max(0.0, min(0.05, (next_due - time.monotonic_ns()) / 1e9)))
        event: dict[str, Any] = {"event": "sent", "run": self.run_id, "sent": sent}
        if self.rooms:
            event["by_room"] = {str(r): k for r, k in by_room.items()}
        self.emit(event)
        # Drain: until every message sent by every worker reached every receiver
        # here, or the drain period is over. It starts when the sending window
        # ends, also for a worker with nothing (or less) to send: the others'
        # messages come until then.
        window_left = max(0.0, (start_ns + duration * 1e9 - time.monotonic_ns()) / 1e9)
        drain_deadline = time.monotonic() + window_left + float(cmd.get("drain", opts.drain))
        expected: int | None = None
        room_totals: dict[int, int] | None = None
        while time.monotonic() < min(drain_deadline, lifetime_deadline):
            for i, pending in enumerate(self.commands):
                if pending.get("cmd") == "expect" and pending.get("run") == self.run_id:
                    if self.rooms:
                        totals = pending.get("by_room") or {}
                        room_totals = {int(r): int(k) for r, k in totals.items()}
                        expected = sum(room_totals.get(c.room, 0) for c in receivers)
                    else:
                        expected = int(pending["messages"]) * len(receivers)
                    del self.commands[i]
                    break
            if expected is not None and self.delivered >= expected:
                break
            if self.stdin_eof:
                break
            self.poll(0.02)
        per_conn = [c.delivered for c in receivers]
        extra: dict[str, Any] = {}
        if self.rooms:
            # Per connection, exactly its room's messages: how many got fewer
            # (and the largest shortfall) and how many got more.
            totals = room_totals or {}
            short = [totals.get(c.room, 0) - c.delivered for c in receivers
                     if c.delivered < totals.get(c.room, 0)]
            extra = {
                "rooms_here": len({c.room for c in receivers}),
                "senders": len(senders),
                "short_conns": len(short),
                "max_short": max(short, default=0),
                "over_conns": sum(1 for c in receivers if c.delivered > totals.get(c.room, 0)),
                "misrouted": self.seen_any - self.delivered,
                "error_events": self.error_events,
                "not_joined": sum(1 for c in receivers if not c.joined),
            }
        if self.resume:
            cut = [c for c in receivers if c.dropped_ns]
            extra["storm"] = {
                **self.track,
                "receivers": len(receivers),
                "dropped": len(cut),
                "first_drop_ns": min((c.dropped_ns for c in cut), default=0),
                # When each client cut off in the run was back in its room (0: never).
                "resumed_ns": [c.resumed_ns for c in cut],
                "unacked": sum(len(c.unacked) for c in receivers),
            }
        self.emit({
            "event": "result",
            "run": self.run_id,
            "sent": sent,
            "receivers": len(receivers),
            "open_after": len(self.open_clients()),
            "delivered": self.delivered,
            "expected": expected,
            "min_per_conn": min(per_conn, default=0),
            "max_per_conn": max(per_conn, default=0),
            "first_send_ns": first_send_ns,
            "last_send_ns": last_send_ns,
            "last_delivery_ns": self.last_delivery_ns,
            "max_send_lag_ms": round(max_lag_ns / 1e6, 3),
            "latency": self.hist.to_json(),
            "latency_ms": self.hist.summary_ms(),
            "samples": self.hist.n,
            "sampled_receivers": sum(1 for c in receivers if c.sampled),
            "other_frames": self.other_frames,
            "compressed_frames": self.compressed_frames,
            "cpu_s": round(cpu_seconds() - cpu0, 4),
            "closed_by_server": self.closed_by_server - closed0,
            "lost": self.lost - lost0,
            "errors": self.errors,
            **extra,
        })

    def room_senders(self, receivers: list[Client]) -> list[Client]:
        """Rooms mode: one sender in each of the rooms ``--sender-room-first``,
        +1, ... (``--senders`` of them, mod K): the first open client of each."""
        opts = self.opts
        first_of: dict[int, Client] = {}
        for c in receivers:
            first_of.setdefault(c.room, c)
        start = opts.room_offset if opts.sender_room_first is None else opts.sender_room_first
        senders = []
        for j in range(opts.senders):
            member = first_of.get((start + j) % self.rooms)
            if member is None:
                self.error("no_member_to_send_from")
            else:
                senders.append(member)
        return senders

    def main(self) -> int:
        opts = self.opts
        lifetime_deadline = self.born + opts.max_lifetime
        try:
            self.sel.register(sys.stdin.fileno(), READ, None)
            os.set_blocking(sys.stdin.fileno(), False)
        except PermissionError:  # a regular file or /dev/null: every command is there now
            self.stdin_buf = sys.stdin.buffer.read(1 << 20) + b"\n"
            self.parse_commands()
            self.stdin_eof = self.stdin_is_file = True
        cpu0 = cpu_seconds()
        self.open_all()
        connect_cpu_s = cpu_seconds() - cpu0
        # Every client object lives until the end: out of the cyclic garbage
        # collector's sight from now on, so that its full collections (hundreds of
        # ms with 19,000 clients) do not delay reading, which would count as latency.
        gc.collect()
        gc.freeze()
        elapsed = max(1, self.handshake_end_ns - self.handshake_start_ns)
        joins: dict[str, Any] = {}
        if self.rooms:
            joins = {"joined": self.joined, "join_end_ns": self.join_end_ns,
                     "rooms_here": len({c.room for c in self.open_clients()}),
                     "error_events": dict(self.error_events)}
        self.emit({
            "event": "ready",
            "worker": opts.worker_id,
            "connections": self.opened,
            "wanted": opts.connections,
            "deflate_negotiated": self.deflate_conns,
            "handshake_start_ns": self.handshake_start_ns,
            "handshake_end_ns": self.handshake_end_ns,
            "handshakes_per_s": round(self.opened / (elapsed / 1e9), 1) if self.opened else 0,
            "connect_cpu_s": round(connect_cpu_s, 4),
            "errors": self.errors,
            "pid": os.getpid(),
            **joins,
        })
        while True:
            cmd = self.next_command(lifetime_deadline)
            if cmd is None or cmd.get("cmd") == "stop":
                break
            if cmd.get("cmd") == "run":
                self.run(cmd, lifetime_deadline)
        self.emit({
            "event": "bye",
            "open": len(self.open_clients()),
            "cpu_s": round(cpu_seconds(), 4),
            "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "errors": self.errors,
        })
        for c in self.clients:
            self.drop(c)
        return 0


def cpu_seconds() -> float:
    """This process's user + system CPU time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def loopback(value: str) -> str:
    if not ipaddress.ip_address(value).is_loopback or ":" in value:
        raise argparse.ArgumentTypeError(f"{value} is not an IPv4 loopback address (127.0.0.0/8)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--host", type=loopback, default="127.0.0.1", help="server address (loopback)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--connections", type=int, default=100, help="clients to open")
    p.add_argument("--senders", type=int, default=10, help="of them, how many send")
    p.add_argument("--message-bytes", type=int, default=100, help="size of each chat text")
    p.add_argument("--deflate", action="store_true", help="offer permessage-deflate")
    p.add_argument(
        "--rooms", type=int, default=0, metavar="K",
        help="client i joins room <prefix>{(offset+i) %% K} in its upgrade URL, senders send "
        "into their own rooms, and deliveries are counted per room (0: the server's default "
        "room, every message to everyone)",
    )
    p.add_argument("--room-offset", type=int, default=0, help="with --rooms: the offset above")
    p.add_argument("--room-prefix", default="r", help="with --rooms: room names' prefix")
    p.add_argument(
        "--sender-room-first", type=int, default=None,
        help="with --rooms: the --senders senders are one client in each of the rooms "
        "from this one on (default: --room-offset)",
    )
    p.add_argument(
        "--source",
        type=loopback,
        action="append",
        help="source address to bind to, e.g. 127.0.0.2 (repeatable: round robin)",
    )
    p.add_argument(
        "--sample-stride", type=int, default=20, help="every k-th client measures latency",
    )
    p.add_argument("--max-sampled", type=int, default=25, help="at most this many such clients")
    p.add_argument("--concurrency", type=int, default=64, help="handshakes in flight at once")
    p.add_argument("--connect-timeout", type=float, default=60.0)
    p.add_argument(
        "--connect-at-ns", type=int, default=0, help="time.monotonic_ns() to start connecting at",
    )
    p.add_argument("--drain", type=float, default=5.0, help="default drain after a run (s)")
    p.add_argument("--max-lifetime", type=float, default=900.0, help="exit after this (s)")
    p.add_argument("--worker-id", type=int, default=0)
    p.add_argument(
        "--resume", action="store_true",
        help="with --rooms: during runs, reconnect as the chat page does and resume with "
        "since/epoch; senders resend what was not echoed; count deliveries by seq",
    )
    p.add_argument("--profile", metavar="FILE", help="write a cProfile of this worker to FILE")
    return p


def main(argv: Iterable[str] | None = None) -> int:
    opts = build_parser().parse_args(list(argv) if argv is not None else None)
    if not 0 < opts.connections <= 19_000:
        raise SystemExit("--connections must be 1..19000 (one process may hold ~20k files)")
    if opts.rooms < 0 or opts.room_offset < 0:
        raise SystemExit("--rooms and --room-offset must be >= 0")
    if opts.resume and not opts.rooms:
        raise SystemExit("--resume needs --rooms")
    raise_nofile(opts.connections + RESERVED_FDS)
    worker = Worker(opts)
    try:
        return run_worker(worker, opts)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: exit quietly
        return 130


def run_worker(worker: Worker, opts: argparse.Namespace) -> int:
    if opts.profile:
        import cProfile  # noqa: PLC0415  (a developer's option)

        with cProfile.Profile() as profile:
            rc = worker.main()
        profile.dump_stats(opts.profile)
        return rc
    return worker.main()


if __name__ == "__main__":
    sys.exit(main())
