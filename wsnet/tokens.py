"""Signed chat tokens: a shared secret pins a user's name, with an expiry, and
may grant rooms.

A token is ``<name>.<expiry>.<signature>``, or ``<name>.<expiry>.<claims>.<signature>``
when it grants rooms: the name and the claims in base64url (the claims are a
JSON list of ``{"room": ..., "read_only": true, "exp": ...}``, only ``room``
required), the expiry in unix seconds, and an HMAC-SHA256 over all of them.
Whoever holds the secret (your login service) mints tokens; the chat server
only verifies them, so one user cannot speak as another or widen its rooms.
Standard library only; comparisons are constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Grant", "Token", "TokenError", "make_token", "read_token", "verify_token"]

_CONTEXT = b"wsnet-chat-token-v1"
#: Tokens travel in a URL's query: room for a few dozen grants, no more.
MAX_TOKEN_CHARS = 4096
#: Grants one token may carry.
MAX_GRANTS = 64


class TokenError(ValueError):
    """Why a token was refused: ``malformed``, ``bad_signature`` or ``expired``."""


@dataclass(frozen=True, slots=True)
class Grant:
    """A room (exact name, or ``prefix*``) the holder may join; ``read_only``
    holders may read it but not write; ``expires_at`` (unix seconds) ends it
    before the token does."""

    room: str
    read_only: bool = False
    expires_at: int | None = None

    def __post_init__(self) -> None:
        if not self.room or "*" in self.room[:-1]:
            raise ValueError(f"a granted room is a name or 'prefix*', not {self.room!r}")

    def covers(self, room: str, now: float) -> bool:
        """Does this grant name ``room``, and is it still current?"""
        if self.expires_at is not None and self.expires_at <= now:
            return False
        if self.room.endswith("*"):
            return room.startswith(self.room[:-1])
        return room == self.room

    def claim(self) -> dict[str, object]:
        claim: dict[str, object] = {"room": self.room}
        if self.read_only:
            claim["read_only"] = True
        if self.expires_at is not None:
            claim["exp"] = self.expires_at
        return claim


@dataclass(frozen=True, slots=True)
class Token:
    """What a genuine, current token says."""

    name: str
    expires_at: int
    grants: tuple[Grant, ...] = field(default=())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, *parts: str) -> str:
    message = b"|".join((_CONTEXT, *(p.encode() for p in parts)))
    return _b64(hmac.new(secret, message, hashlib.sha256).digest())


def make_token(
    secret: bytes, name: str, expires_at: int, grants: Iterable[Grant] = (),
) -> str:
    """A token for ``name`` valid until ``expires_at`` (unix seconds), granting
    ``grants`` (a token without grants has the three-part form)."""
    if not secret:
        raise ValueError("the secret must not be empty")
    parts = [_b64(name.encode()), str(int(expires_at))]
    claims = [g.claim() for g in grants]
    if len(claims) > MAX_GRANTS:
        raise ValueError(f"at most {MAX_GRANTS} grants in one token")
    if claims:
        parts.append(_b64(json.dumps(claims, separators=(",", ":")).encode()))
    token = ".".join([*parts, _sign(secret, *parts)])
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError(f"the token would be over {MAX_TOKEN_CHARS} characters")
    return token


def read_token(secret: bytes, token: str, now: float) -> Token:
    """The token's name and grants; raises TokenError if it is not genuine or
    current. The signature is checked before anything inside is decoded."""
    parts = token.split(".")
    if (len(token) > MAX_TOKEN_CHARS or not token.isascii() or len(parts) not in (3, 4)
            or not parts[1].isdecimal()):
        raise TokenError("malformed")
    *signed, signature = parts
    if not hmac.compare_digest(signature, _sign(secret, *signed)):
        raise TokenError("bad_signature")
    if int(signed[1]) <= now:
        raise TokenError("expired")
    try:
        name = _unb64(signed[0]).decode()
        grants = _grants(json.loads(_unb64(signed[2]))) if len(signed) == 3 else ()
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError, RecursionError):
        raise TokenError("malformed") from None
    return Token(name, int(signed[1]), grants)


def verify_token(secret: bytes, token: str, now: float) -> str:
    """The name the token pins; raises TokenError if it is not genuine or current."""
    return read_token(secret, token, now).name


def _grants(claims: object) -> tuple[Grant, ...]:
    if not isinstance(claims, list) or len(claims) > MAX_GRANTS:
        raise ValueError("claims are a list")
    grants = []
    for claim in claims:
        if not isinstance(claim, dict) or not isinstance(claim.get("room"), str):
            raise ValueError("a claim names its room")
        read_only, expires = claim.get("read_only", False), claim.get("exp")
        if not isinstance(read_only, bool):
            raise ValueError("read_only is a boolean")
        if expires is not None and (type(expires) is not int or expires < 0):
            raise ValueError("exp is unix seconds")
        grants.append(Grant(claim["room"], read_only, expires))
    return tuple(grants)
