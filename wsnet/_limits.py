"""Per-connection rate limiting, without clocks of its own.

A token bucket: ``rate`` messages per second on average, ``burst`` at once. A
chat user typing, or a benchmark sender at 20 msg/s, never empties it; a flood
does, and then each further message is refused until tokens trickle back.
``strikes`` counts refusals in a row, so a peer that keeps flooding after being
told can be closed, while one that slows down is forgiven at once.
"""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    __slots__ = ("tokens", "stamp", "strikes")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = burst
        self.stamp = now
        #: Messages refused since the last one admitted.
        self.strikes = 0

    def take(self, now: float, rate: float, burst: float) -> bool:
        """Spend one token if there is one; refill first for the time passed."""
        tokens = self.tokens + (now - self.stamp) * rate
        self.tokens = burst if tokens > burst else tokens
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.strikes = 0
            return True
        self.strikes += 1
        return False
