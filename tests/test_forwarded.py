"""Who the client is behind trusted proxies (``wsnet._forwarded``), without
sockets: a table of peers, headers and the address believed. The same behind a
real nginx: tests/test_proxy.py."""

from __future__ import annotations

import pytest

from wsnet import Config, Request
from wsnet._forwarded import Forwarded, TrustedProxies

PROXIES = TrustedProxies(["10.0.0.0/8", "::1", "192.168.1.5"])


def request(*headers: tuple[str, str]) -> Request:
    return Request("GET", "/", tuple((k.lower(), v) for k, v in headers))


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        # an untrusted peer: its headers mean nothing
        ("203.0.113.9", [("X-Forwarded-For", "1.2.3.4")], None),
        ("203.0.113.9", [("Forwarded", "for=1.2.3.4")], None),
        # a trusted proxy names the client; the rightmost untrusted hop wins
        ("10.0.0.2", [("X-Forwarded-For", "198.51.100.7")], Forwarded("198.51.100.7", 0, None)),
        ("10.0.0.2", [("X-Forwarded-For", "6.6.6.6, 198.51.100.7")],
         Forwarded("198.51.100.7", 0, None)),  # 6.6.6.6 is what the client claimed
        ("10.0.0.2", [("X-Forwarded-For", "198.51.100.7, 10.1.1.1")],
         Forwarded("198.51.100.7", 0, None)),  # through two proxies of ours
        ("10.0.0.2", [("X-Forwarded-For", "10.3.3.3, 10.1.1.1")],
         Forwarded("10.3.3.3", 0, None)),  # all ours: the leftmost
        ("10.0.0.2", [("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-For", "198.51.100.7")],
         Forwarded("198.51.100.7", 0, None)),  # repeated headers are one list
        ("10.0.0.2", [("X-Forwarded-For", "198.51.100.7:4711")],
         Forwarded("198.51.100.7", 4711, None)),
        ("10.0.0.2", [("X-Forwarded-For", "[2001:db8::7]:80")], Forwarded("2001:db8::7", 80, None)),
        ("10.0.0.2", [("X-Forwarded-For", "2001:db8::7")], Forwarded("2001:db8::7", 0, None)),
        ("10.0.0.2", [("X-Forwarded-For", "unknown")], None),
        ("10.0.0.2", [("X-Forwarded-For", "garbage, 10.1.1.1")], None),  # ours wrote junk
        ("10.0.0.2", [("X-Forwarded-For", "garbage, 198.51.100.7")],
         Forwarded("198.51.100.7", 0, None)),  # the client's junk is left of the client
        # RFC 7239 first, with its proto
        ("10.0.0.2", [("Forwarded", 'for="[2001:db8::7]:4711";proto=https'),
                      ("X-Forwarded-For", "1.2.3.4")], Forwarded("2001:db8::7", 4711, "https")),
        ("10.0.0.2", [("Forwarded", "for=6.6.6.6, for=198.51.100.7;proto=http")],
         Forwarded("198.51.100.7", 0, "http")),
        ("10.0.0.2", [("Forwarded", "for=_hidden")], None),
        # the scheme alone
        ("10.0.0.2", [("X-Forwarded-Proto", "https")], Forwarded("10.0.0.2", 5, "https")),
        ("10.0.0.2", [("X-Forwarded-For", "198.51.100.7"), ("X-Forwarded-Proto", "https")],
         Forwarded("198.51.100.7", 0, "https")),
        ("10.0.0.2", [("X-Forwarded-Proto", "gopher")], None),
        ("::ffff:10.0.0.2", [("X-Forwarded-For", "198.51.100.7")],
         Forwarded("198.51.100.7", 0, None)),  # an IPv4 peer on a dual-stack socket
        ("::1", [("X-Forwarded-For", "198.51.100.7")], Forwarded("198.51.100.7", 0, None)),
        ("192.168.1.6", [("X-Forwarded-For", "198.51.100.7")], None),  # one address, exact
    ],
)
def test_the_client_behind_trusted_proxies(
    peer: str, headers: list[tuple[str, str]], expected: Forwarded | None,
) -> None:
    assert PROXIES.client((peer, 5), request(*headers)) == expected


def test_no_proxies_trust_nobody_and_bad_specs_are_named() -> None:
    none = TrustedProxies([])
    assert not none
    assert none.client(("10.0.0.2", 5), request(("X-Forwarded-For", "1.2.3.4"))) is None
    with pytest.raises(ValueError, match=r"'10\.0\.0\.300'"):
        TrustedProxies(["10.0.0.300"])
    with pytest.raises(ValueError, match="forwarded_allow_ips"):
        Config(forwarded_allow_ips=("not-an-ip",))
