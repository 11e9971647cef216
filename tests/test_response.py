"""Responses an application builds: checked where they are made, rendered exactly."""

from __future__ import annotations

import json

import pytest

import wsnet
from wsnet._http import render_response


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        ("X-Note", "a\r\nSet-Cookie: stolen=1", "contains CR, LF or NUL"),
        ("X-Note", "line\nbreak", "contains CR, LF or NUL"),
        ("X-Note", "nul\x00byte", "contains CR, LF or NUL"),
        ("X Note", "1", "must be an RFC 9110 token"),
        ("X-Note:", "1", "must be an RFC 9110 token"),
        ("", "1", "must be an RFC 9110 token"),
        ("X-Note", "snow \u2603", "is not Latin-1"),
    ],
)
def test_a_header_that_cannot_be_one_line_is_refused_when_made(
    name: str, value: str, complaint: str,
) -> None:
    with pytest.raises(ValueError, match=complaint):
        wsnet.Response(200, b"", headers=((name, value),))
    with pytest.raises(ValueError, match=complaint):
        wsnet.Response.text(403, "no", (name, value))


def test_content_type_and_status_are_checked_too() -> None:
    with pytest.raises(ValueError, match="contains CR, LF or NUL"):
        wsnet.Response(200, b"", content_type="text/html\r\nX-Evil: 1")
    for status in (0, 99, 1000):
        with pytest.raises(ValueError, match="invalid HTTP status"):
            wsnet.Response(status)


def test_rendering_writes_the_head_the_response_describes() -> None:
    response = wsnet.Response.text(429, "slow down", ("Retry-After", "3"), ("X-Note", "caf\u00e9"))
    data = render_response(response)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 429 Too Many Requests"
    assert b"Content-Length: 10" in lines and b"Connection: close" in lines
    assert b"Retry-After: 3" in lines and b"X-Note: caf\xe9" in lines
    assert body == b"slow down\n"
    assert render_response(response, head_only=True) == head + b"\r\n\r\n"


def test_json_is_compact_and_typed() -> None:
    response = wsnet.Response.json(200, {"ok": True, "n": [1, 2]})
    assert response.content_type == "application/json"
    assert response.body == b'{"ok":true,"n":[1,2]}'
    assert json.loads(response.body) == {"ok": True, "n": [1, 2]}
