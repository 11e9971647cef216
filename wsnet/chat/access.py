"""Who may join, read and write which room: pure functions of the room's name,
the member's token and the time.

- ``dm:<name>:<name>`` (the two names sorted, ``dm_room`` makes it) is the
  direct conversation of those two token holders, and nobody else's.
- A token's grants (``wsnet.tokens.Grant``) open the rooms they name; a
  read-only grant lets its holder read but not write.
- ``private:...`` rooms (every room, with ``require_claim``) are closed to
  anyone without a current grant; other rooms are open to all.

A refusal says nothing about the room: the same ``forbidden`` whether it
exists, has members or history, or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from wsnet.chat.protocol import DM_PREFIX, split_dm
from wsnet.tokens import Grant

__all__ = ["DM_PREFIX", "PRIVATE_PREFIX", "Access", "dm_names", "dm_room", "room_access"]

PRIVATE_PREFIX = "private:"


class Access(Enum):
    NONE = "none"  # may not join; learns nothing
    READ = "read"  # may join and read, not send
    WRITE = "write"


def dm_room(a: str, b: str) -> str:
    """The one name of the direct conversation between ``a`` and ``b``."""
    first, second = sorted((a, b))
    return f"{DM_PREFIX}{first}:{second}"


def dm_names(room: str) -> tuple[str, str] | None:
    """The two names of a direct-message room in canonical form (sorted),
    else None."""
    names = split_dm(room)
    return names if names is not None and names[0] < names[1] else None


def room_access(
    room: str,
    name: str | None,
    grants: Sequence[Grant],
    now: float,
    *,
    require_claim: bool = False,
) -> Access:
    """What a member may do in ``room``. ``name`` is the name its token pins
    (None without a token); ``grants`` are its token's."""
    if room.startswith(DM_PREFIX):
        names = dm_names(room)
        return Access.WRITE if names is not None and name in names else Access.NONE
    granted = [g for g in grants if g.covers(room, now)]
    if granted:
        return Access.READ if all(g.read_only for g in granted) else Access.WRITE
    if require_claim or room.startswith(PRIVATE_PREFIX):
        return Access.NONE
    return Access.WRITE
