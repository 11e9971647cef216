"""Per-connection rate limiting, without clocks of its own.

A token bucket: ``rate`` messages per second on average, ``burst`` at once. A
chat user typing, or a benchmark sender at 20 msg/s, never empties it; a flood
does, and then each further message is refused until tokens trickle back.
``strikes`` counts refusals since the bucket was last half full: a flood at any
rate above the limit keeps the bucket near empty and piles up strikes (so it can
be closed), while a client that paused long enough to refill half is forgiven.
"""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    __slots__ = ("tokens", "stamp", "strikes")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = burst
        self.stamp = now
        #: Messages refused since the bucket was last at least half full.
        self.strikes = 0

    def take(self, now: float, rate: float, burst: float) -> bool:
        """Spend one token if there is one; refill first for the time passed."""
        tokens = self.tokens + (now - self.stamp) * rate
        self.tokens = burst if tokens > burst else tokens
        self.stamp = now
        if self.tokens * 2 >= burst:
            self.strikes = 0
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.strikes += 1
        return False
