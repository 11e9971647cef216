"""Signed chat tokens: a shared secret pins a user's name, with an expiry.

A token is ``<name in base64url>.<expiry, unix seconds>.<HMAC-SHA256 in
base64url>``. Whoever holds the secret (your login service) mints tokens; the
chat server only verifies them, so one user cannot speak as another. Standard
library only; comparisons are constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

__all__ = ["TokenError", "make_token", "verify_token"]

_CONTEXT = b"wsnet-chat-token-v1"


class TokenError(ValueError):
    """Why a token was refused: ``malformed``, ``bad_signature`` or ``expired``."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, name_part: str, expiry: str) -> str:
    message = b"|".join((_CONTEXT, name_part.encode(), expiry.encode()))
    return _b64(hmac.new(secret, message, hashlib.sha256).digest())


def make_token(secret: bytes, name: str, expires_at: int) -> str:
    """A token for ``name`` valid until ``expires_at`` (unix seconds)."""
    if not secret:
        raise ValueError("the secret must not be empty")
    name_part = _b64(name.encode())
    expiry = str(int(expires_at))
    return f"{name_part}.{expiry}.{_sign(secret, name_part, expiry)}"


def verify_token(secret: bytes, token: str, now: float) -> str:
    """The name the token pins; raises TokenError if it is not genuine or current."""
    parts = token.split(".")
    if len(token) > 512 or not token.isascii() or len(parts) != 3 or not parts[1].isdecimal():
        raise TokenError("malformed")
    name_part, expiry, signature = parts
    if not hmac.compare_digest(signature, _sign(secret, name_part, expiry)):
        raise TokenError("bad_signature")
    if int(expiry) <= now:
        raise TokenError("expired")
    try:
        return _unb64(name_part).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise TokenError("malformed") from None
