"""The chat application's limits: one frozen value, a reason beside each."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ChatSettings"]


@dataclass(frozen=True, slots=True)
class ChatSettings:
    """The chat application's limits, each a named default with its reason."""

    #: Messages a room keeps for replay: about an evening of a lively channel.
    history: int = 1000
    #: ...and at most this many bytes of them (encoded), so big texts cannot
    #: make one room's history tens of megabytes.
    history_bytes: int = 1 << 20
    #: Rooms one connection may be in at once: a sidebar, not a crawler.
    max_rooms_per_client: int = 32
    #: Above this many members presence is a count (see ``Room.counting``):
    #: member lists in every join reply would cost O(members²) per room.
    presence_limit: int = 100
    #: How often a counting room's members hear the new count, in seconds.
    count_interval: float = 1.0
    #: ...and at most this many count frames a second per room (one per
    #: member): a room of 5,000 hears its count each second, one of 50,000
    #: every 10 s. A count each second to 100,000 members would be 100,000
    #: frames a second, the whole of this machine's sending, for a number.
    count_frames: int = 5000
    #: A room whose presence events would cost more than this many frames in a
    #: second (each join, leave or rename is a frame to every member: a
    #: reconnect storm) switches to one ``presence_diff`` per
    #: ``presence_diff_interval`` (0: never), and back after an interval that
    #: cost less. Counted in frames, not changes: a room of 5 keeps single
    #: events up to 40 changes a second, a room of 100 switches above 2 (a
    #: restart of 100,000 clients in rooms of 100, back within 20 s, is 5
    #: joins a second per room), where diffs cut what its members are sent.
    presence_storm_frames: int = 200
    #: ...or whose worker's presence events, all rooms together, would cost
    #: more than this many frames in a second (0: no such limit). A mass
    #: connect of 100,000 into rooms of 100 brings each room about one join a
    #: second, 50-100 frames, under the room's limit, yet 50,000 frames a
    #: second in all: at ~10 us a send, half of each worker's time went there.
    #: While it is exceeded, diffs come less often than ``presence_diff_interval``
    #: where needed to keep the worker's diff frames within it too.
    presence_storm_total_frames: int = 5000
    #: Phoenix sends presence diffs at most every 1.5 s: a member list that is
    #: a second and a half behind during a storm, one frame instead of hundreds.
    presence_diff_interval: float = 1.5
    #: An empty room keeps its history this long for clients coming back.
    room_ttl: float = 600.0
    #: ...and at most this many empty rooms are kept, oldest forgotten first.
    max_idle_rooms: int = 10_000
    #: All rooms' history together: past it, empty rooms are forgotten oldest
    #: first, then the room being written to keeps less.
    history_total_bytes: int = 256 << 20
    #: Every room needs a token's grant, not only ``private:`` ones: for a
    #: deployment whose login service decides all membership.
    rooms_require_claim: bool = False
    #: One member's ``typing`` signals in one room, at most one per this many
    #: seconds: a keystroke each would be a flood with no news in it.
    typing_interval: float = 2.0

    def __post_init__(self) -> None:
        if self.history < 0 or self.max_rooms_per_client < 1 or self.presence_limit < 0:
            raise ValueError("history >= 0, max_rooms_per_client >= 1, presence_limit >= 0")
        if not 64 * 1024 <= self.history_bytes <= self.history_total_bytes:
            raise ValueError("64 KiB <= history_bytes <= history_total_bytes")
        if not (self.count_interval > 0 and self.room_ttl >= 0 and self.max_idle_rooms >= 0):
            raise ValueError("count_interval > 0, room_ttl >= 0, max_idle_rooms >= 0")
        if self.count_frames < 1:
            raise ValueError("count_frames >= 1")
        if self.presence_storm_frames < 0 or not self.presence_diff_interval > 0:
            raise ValueError("presence_storm_frames >= 0, presence_diff_interval > 0")
        if self.presence_storm_total_frames < 0:
            raise ValueError("presence_storm_total_frames >= 0")

    @property
    def replay_budget(self) -> int:
        """Replayed bytes one client may ask for in one tick: two full rooms.
        Without it, join-with-since and leave in a loop would copy a room's
        whole history into one frame a hundred times over."""
        return 2 * self.history_bytes
