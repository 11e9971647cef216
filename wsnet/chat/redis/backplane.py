"""The Redis backplane: rooms spanning every node and worker on one Redis.

- A message is published by one server-side script that increments the room's
  ``seq``, appends the event to a capped stream (the history), and publishes it,
  so publish order is ``seq`` order and all nodes agree on the numbering.
- A node subscribes only to rooms it has local members in. What it receives goes
  into ``Chat.deliver``, hence into the same per-tick batches as local rooms.
- Opening a room on a node subscribes first, then loads the room's epoch, ``seq``,
  recent history and members: whatever was published in between arrives twice
  and is dropped by ``seq``, so nothing falls between the two.
- Presence is a hash per room, ``"<node>|<member id>" -> name``, changed and
  announced by one script; each node's heartbeat lives in a sorted set, and any
  node removes (and announces the leaves of) the members of a node whose
  heartbeat is older than the TTL.
- When Redis goes away the node keeps its clients; messages that cannot be
  published are answered with an ``unavailable`` error; on reconnection it
  resubscribes, reloads its rooms (delivering what it missed, or a reset if Redis
  lost the room), and registers its members again.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from wsnet.chat.backplane import Accepted, Duplicate, Failed, RoomPeek, RoomSink, new_epoch
from wsnet.chat.loop import Cancellable, Loop
from wsnet.chat.redis.link import RedisLink
from wsnet.chat.redis.resp import RedisAddress, RedisError
from wsnet.metrics import Counter, Gauge, Histogram, Metric

__all__ = ["RedisBackplane"]

log = logging.getLogger("wsnet")


# KEYS: seq, log, channel, epoch[, dedup]. ARGV: prefix, suffix, history, new
# epoch, ttl. Returns {seq, epoch}; with a dedup key seen before {seq, epoch,
# first event or false} and nothing published (the key lives as long as the
# history, so the event is usually there).
_PUBLISH = """
if KEYS[5] then
  local old = redis.call('GET', KEYS[5])
  if old then
    local epoch = redis.call('GET', KEYS[4]) or ''
    local entry = redis.call('XRANGE', KEYS[2], old .. '-1', old .. '-1')
    if entry[1] then return {tonumber(old), epoch, entry[1][2][2]} end
    return {tonumber(old), epoch, false}
  end
end
redis.call('SET', KEYS[4], ARGV[4], 'NX')
local seq = redis.call('INCR', KEYS[1])
local event = ARGV[1] .. seq .. ARGV[2]
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-1', 'e', event)
redis.call('PUBLISH', KEYS[3], 'm ' .. seq .. ' ' .. event)
if KEYS[5] then redis.call('SET', KEYS[5], seq, 'EX', ARGV[5]) end
for i = 1, 4 do
  if i ~= 3 then redis.call('EXPIRE', KEYS[i], ARGV[5]) end
end
return {seq, redis.call('GET', KEYS[4])}
"""

# KEYS: seq, log, epoch, members. ARGV: new epoch, history.
_LOAD = """
redis.call('SET', KEYS[3], ARGV[1], 'NX')
local epoch = redis.call('GET', KEYS[3])
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[2])
return {epoch, seq, entries, redis.call('HGETALL', KEYS[4])}
"""

# KEYS: members, channel, node rooms. ARGV: field, name ('' = gone), event, node, room.
_PRESENCE = """
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('SADD', KEYS[3], ARGV[5])
end
if ARGV[3] ~= '' then
  redis.call('PUBLISH', KEYS[2], 'p ' .. ARGV[4] .. ' ' .. ARGV[3])
end
return 1
"""

# KEYS: nodes. ARGV: now ms, ttl ms, key prefix. Forgets nodes whose heartbeat
# is too old, with the leave of each of their members.
_REAP = """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
for _, node in ipairs(dead) do
  local rooms_key = ARGV[3] .. 'n:' .. node .. ':rooms'
  for _, room in ipairs(redis.call('SMEMBERS', rooms_key)) do
    local hash = ARGV[3] .. 'r:' .. room .. ':members'
    local fields = redis.call('HGETALL', hash)
    for i = 1, #fields, 2 do
      local field = fields[i]
      if string.sub(field, 1, #node + 1) == node .. '|' then
        redis.call('HDEL', hash, field)
        local event = cjson.encode({type = 'leave', room = room,
                                    id = string.sub(field, #node + 2), name = fields[i + 1]})
        redis.call('PUBLISH', ARGV[3] .. 'r:' .. room, 'p ' .. node .. ' ' .. event)
      end
    end
  end
  redis.call('DEL', rooms_key)
  redis.call('ZREM', KEYS[1], node)
end
return #dead
"""


# KEYS: epoch, seq, log, members. ARGV: since, limit. Nothing is written.
_PEEK = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then return false end
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local oldest = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)
local entries = redis.call('XRANGE', KEYS[3], '(' .. ARGV[1] .. '-1', '+', 'COUNT', ARGV[2])
return {epoch, seq, oldest, entries, redis.call('HGETALL', KEYS[4])}
"""

# ARGV: the members hashes' pattern, most rooms to list. -> {key, size, ...}
_SIZES = """
local out, cursor = {}, '0'
repeat
  local page = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = page[1]
  for _, key in ipairs(page[2]) do
    out[#out + 1] = key
    out[#out + 1] = redis.call('HLEN', key)
    if #out >= 2 * tonumber(ARGV[2]) then return out end
  end
until cursor == '0'
return out
"""

#: Rooms ``room_sizes`` lists at most (an admin's overview, not an export).
MAX_LISTED = 10_000


class RedisBackplane:
    """Rooms spanning every node on one Redis (see the module docstring)."""

    remote = True

    def __init__(
        self,
        url: str,
        *,
        node_ttl: float = 10.0,
        history_ttl: float = 7 * 86400,
        prefix: str = "wsnet:",
    ) -> None:
        self.address = RedisAddress.parse(url)
        self.node = secrets.token_hex(4)
        self.node_ttl = node_ttl
        self.history_ttl = max(1, int(history_ttl))
        self.prefix = prefix
        self.publish_errors = Counter(
            "wsnet_backplane_publish_errors_total",
            "Messages refused because Redis could not take them (clients got 'unavailable').",
        )
        self.publish_latency = Histogram(
            "wsnet_backplane_publish_seconds",
            "Time from a message's publish to Redis's reply.",
            (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
        )
        self.state_changes = Counter(
            "wsnet_backplane_down_total", "Times the Redis links went down.",
        )
        self._open: set[str] = set()  # rooms with local members, as Chat asked
        #: Rooms being loaded -> what was pushed for them meanwhile, to apply after.
        self._loading: dict[str, list[Callable[[], None]]] = {}
        self._first_load: set[str] = set()  # loading for the first time: Chat waits
        self._heartbeat: Cancellable | None = None
        #: Where a disconnect published by any node is carried out here.
        self.kicked: Callable[[str], object] | None = None
        self._stopped = False
        self._announced = False  # "up" was logged and "down" not yet
        self._fresh = False

    # -- life ----------------------------------------------------------------

    def attach(self, sink: RoomSink) -> None:
        self.sink = sink

    def start(self, loop: Loop) -> None:
        self.loop = loop
        self.commands = RedisLink(
            loop, self.address, name="commands", on_up=self._link_up, on_down=self._link_down,
        )
        self.pubsub = RedisLink(
            loop, self.address, name="subscriber",
            on_up=self._link_up, on_down=self._link_down, on_push=self._push,
        )
        self.commands.start()
        self.pubsub.start()
        self._beat()

    def stop(self) -> None:
        """Leave: the members' leaves were queued as they closed; send them (and
        our node's removal) before the links go, so others need not wait for
        the TTL."""
        self._stopped = True
        self._cancel_heartbeat()
        self.commands.command("ZREM", f"{self.prefix}nodes", self.node)
        self.commands.command("DEL", self._node_rooms())
        self.commands.flush_blocking(1.0)
        self.commands.close()
        self.pubsub.close()

    @property
    def up(self) -> bool:
        return self.commands.up and self.pubsub.up

    def metrics(self) -> list[Metric]:
        up = Gauge("wsnet_backplane_up", "1 while both Redis links are connected.")
        up.set(1 if self.up else 0)
        rooms = Gauge("wsnet_backplane_rooms", "Rooms this node is subscribed to.")
        rooms.set(len(self._open))
        return [up, rooms, self.publish_latency, self.publish_errors, self.state_changes]

    def status(self) -> dict[str, object]:
        return {
            "backplane": "redis",
            "redis": str(self.address),
            "redis_state": "up" if self.up else "down",
            "node": self.node,
        }

    # -- keys ----------------------------------------------------------------

    def _key(self, room: str, what: str) -> str:
        return f"{self.prefix}r:{room}:{what}"

    def _channel(self, room: str) -> str:
        return f"{self.prefix}r:{room}"

    def _members(self, room: str) -> str:
        return self._key(room, "members")

    def _node_rooms(self) -> str:
        return f"{self.prefix}n:{self.node}:rooms"

    def _run(
        self, script: str, keys: list[str], args: list[str | int],
        callback: Callable[[Any], None] | None = None,
    ) -> bool:
        return self.commands.command("EVAL", script, len(keys), *keys, *args, callback=callback)

    # -- messages ------------------------------------------------------------

    def publish(
        self, room: str, prefix: str, suffix: str, failed: Failed,
        *, key: str | None = None, duplicate: Duplicate | None = None,
        accepted: Accepted | None = None,
    ) -> None:
        started = time.monotonic()

        def done(reply: Any) -> None:
            if isinstance(reply, RedisError) or not isinstance(reply, list) or len(reply) < 2:
                self.publish_errors.inc()
                log.debug("publish to %s failed: %s", room, reply)
                failed()
                return
            self.publish_latency.observe(time.monotonic() - started)
            if len(reply) > 2:  # seen before: the first event, if still held
                first = reply[2]
                if duplicate is not None and isinstance(first, bytes):
                    duplicate(first.decode())
            if accepted is not None:
                accepted(int(reply[0]), reply[1].decode() if reply[1] else "")

        keys = [self._key(room, "seq"), self._key(room, "log"), self._channel(room),
                self._key(room, "epoch")]
        if key is not None:
            keys.append(self._key(room, "cid:" + key))
        args: list[str | int] = [prefix, suffix, self.sink.history_limit, new_epoch(),
                                 self.history_ttl]
        if not self._run(_PUBLISH, keys, args, done):
            self.publish_errors.inc()
            failed()

    def _push(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            return
        kind = reply[0]
        if kind == b"message":
            self._message(reply[1].decode(), reply[2])
        elif kind == b"subscribe" and reply[1].decode().startswith(self.prefix + "r:"):
            room = reply[1].decode()[len(self.prefix) + 2:]
            if room in self._open:
                self._load(room)

    def _message(self, channel: str, payload: bytes) -> None:
        if channel == self._kick_channel():
            if self.kicked is not None:
                self.kicked(payload.decode())
            return
        room = channel[len(self.prefix) + 2:]
        kind, _, rest = payload.partition(b" ")
        if kind == b"m":
            seq_text, _, event = rest.partition(b" ")
            apply = partial(self.sink.deliver, room, int(seq_text), event.decode())
        elif kind == b"p":
            node, _, event = rest.partition(b" ")
            if node.decode() == self.node:
                return
            apply = partial(self.sink.remote_presence, room, json.loads(event))
        elif kind == b"s":
            node, _, event = rest.partition(b" ")
            if node.decode() == self.node:
                return
            self.sink.remote_signal(room, event.decode())  # ephemeral: no order to keep
            return
        else:
            return
        pending = self._loading.get(room)
        if pending is not None:  # applied after the load, in order; repeats drop out
            pending.append(apply)
        else:
            apply()

    # -- rooms ---------------------------------------------------------------

    def open_room(self, room: str) -> None:
        """Subscribe, then (on confirmation) load; Chat hears ``room_loaded`` or
        ``room_failed``."""
        self._open.add(room)
        self._loading[room] = []
        self._first_load.add(room)
        if not self.up or not self.pubsub.command("SUBSCRIBE", self._channel(room)):
            self._room_failed(room)
            return
        self.commands.command("SADD", self._node_rooms(), room)

    def _load(self, room: str) -> None:
        keys = [self._key(room, "seq"), self._key(room, "log"), self._key(room, "epoch"),
                self._members(room)]

        def loaded(reply: Any) -> None:
            if isinstance(reply, RedisError):
                self._room_failed(room)
                return
            if room not in self._open:
                return
            epoch, seq, entries, flat = reply
            history = []
            for entry_id, fields in reversed(entries):
                history.append((int(entry_id.split(b"-")[0]), fields[1].decode()))
            remote = {}
            mine = self.node + "|"
            for field, name in zip(flat[::2], flat[1::2], strict=True):
                node_and_id = field.decode()
                if not node_and_id.startswith(mine):
                    remote[node_and_id.partition("|")[2]] = name.decode()
            pending = self._loading.pop(room, [])
            self._first_load.discard(room)
            self.sink.room_loaded(room, epoch.decode(), int(seq), history, remote)
            for apply in pending:
                apply()

        if not self._run(_LOAD, keys, [new_epoch(), self.sink.history_limit], loaded):
            self._room_failed(room)

    def _room_failed(self, room: str) -> None:
        self._loading.pop(room, None)
        if room in self._first_load:
            self._first_load.discard(room)
            self._open.discard(room)
            self.sink.room_failed(room)

    def close_room(self, room: str) -> None:
        self._open.discard(room)
        self._loading.pop(room, None)
        self._first_load.discard(room)
        self.pubsub.command("UNSUBSCRIBE", self._channel(room))
        self.commands.command("SREM", self._node_rooms(), room)

    def presence(self, room: str, member_id: str, name: str | None, event: str) -> None:
        keys = [self._members(room), self._channel(room), self._node_rooms()]
        self._run(_PRESENCE, keys, [f"{self.node}|{member_id}", name or "", event, self.node,
                                    room])

    def signal(self, room: str, encoded: str) -> None:
        self.commands.command("PUBLISH", self._channel(room), f"s {self.node} {encoded}")

    # -- the HTTP API's reads (Directory) --------------------------------------

    def peek(self, room: str, since: int, limit: int,
             answer: Callable[[RoomPeek | Exception | None], None]) -> None:
        def done(reply: Any) -> None:
            if isinstance(reply, RedisError):
                answer(reply)
            elif reply is None:
                answer(None)
            else:
                epoch, seq, oldest, entries, members = reply
                first = _stream_seq(oldest[0][0]) if oldest else seq + 1
                events = [e[1][1].decode() for e in entries]
                pairs = zip(members[::2], members[1::2], strict=True)
                listed = [(f.decode().partition("|")[2], n.decode()) for f, n in pairs]
                answer(RoomPeek(epoch.decode(), int(seq), first, events, listed))

        keys = [self._key(room, "epoch"), self._key(room, "seq"), self._key(room, "log"),
                self._members(room)]
        if not self._run(_PEEK, keys, [since, limit], done):
            answer(RedisError("the backplane is down"))

    def room_sizes(self, answer: Callable[[list[tuple[str, int]] | Exception], None]) -> None:
        head, tail = len(self.prefix) + 2, -len(":members")

        def done(reply: Any) -> None:
            if isinstance(reply, RedisError):
                answer(reply)
                return
            pairs = zip(reply[::2], reply[1::2], strict=True)
            answer(sorted((key.decode()[head:tail], int(size)) for key, size in pairs))

        pattern = f"{self.prefix}r:*:members"
        if not self._run(_SIZES, [], [pattern, MAX_LISTED], done):
            answer(RedisError("the backplane is down"))

    def kick(self, name: str) -> None:
        """Ask every node (this one too) to close ``name``'s connections."""
        self.commands.command("PUBLISH", self._kick_channel(), name)

    def _kick_channel(self) -> str:
        return f"{self.prefix}kick"

    # -- links ---------------------------------------------------------------

    def _link_up(self) -> None:
        if not self.up:
            return
        log.info("redis backplane: up (node %s, %d rooms to restore)", self.node, len(self._open))
        self._announced = True
        self._fresh = True  # the next heartbeat tells whether Redis still knew us
        self._beat()  # and if Redis lost our node, our members are announced again
        if self._open:
            for room in self._open:
                self._loading.setdefault(room, [])
            self.pubsub.command("SUBSCRIBE", *(self._channel(r) for r in self._open))
        self.pubsub.command("SUBSCRIBE", self._kick_channel())

    def _link_down(self, reason: str) -> None:
        if self._stopped:
            return
        if self._announced:  # one line per outage, whichever link noticed first
            self.state_changes.inc()
            log.warning("redis backplane: down (%s); clients stay connected, messages are "
                        "refused", reason)
            self._announced = False
        for room in list(self._loading):
            self._room_failed(room)  # first loads fail now; reloads wait for the link

    def _announce_members(self) -> None:
        """Register every local member again (Redis may have lost them, or
        another node may have taken us for dead) and tell the other nodes."""
        for room in self._open:
            for member_id, name in self.sink.local_members(room):
                event = {"type": "join", "room": room, "id": member_id, "name": name}
                self.presence(room, member_id, name, json.dumps(event, ensure_ascii=False))

    def _beat(self) -> None:
        self._cancel_heartbeat()
        if self._stopped:
            return
        if self.up:
            now_ms = int(time.time() * 1000)
            fresh, self._fresh = self._fresh, False

            def beaten(reply: Any) -> None:
                if reply == 1 and self._open:  # our node was not listed
                    if not fresh:  # not Redis forgetting everything: taken for dead
                        log.warning("redis backplane: this node was taken for dead; "
                                    "announcing its members again")
                    self._announce_members()

            self.commands.command("ZADD", f"{self.prefix}nodes", now_ms, self.node,
                                  callback=beaten)
            self._run(_REAP, [f"{self.prefix}nodes"],
                      [now_ms, int(self.node_ttl * 1000), self.prefix])
        self._heartbeat = self.loop.call_later(self.node_ttl / 3, self._beat)

    def _cancel_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None


def _stream_seq(entry_id: bytes) -> int:
    """A history entry's seq: its stream id is ``<seq>-1``."""
    return int(entry_id.split(b"-", 1)[0])
