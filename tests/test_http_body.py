"""Plain requests with bodies, keep-alive and answers given later, without
sockets (``HttpReader``, ``keep_alive``, ``render_response``, ``Pending``); the
same over real sockets in tests/test_live_http.py."""

from __future__ import annotations

import pytest

from wsnet import Pending, Request, Response
from wsnet._http import keep_alive, render_response
from wsnet._upgrade import HttpReader

HEAD = 16 * 1024
BODY = 64 * 1024


def post(body: bytes, *extra: str) -> bytes:
    lines = ["POST /api/publish HTTP/1.1", "Host: x", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(*chunks: bytes) -> bytes:
    head = b"POST /api/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return head + body + b"0\r\n\r\n"


def test_a_body_is_read_whole_byte_by_byte_and_the_next_request_is_left_over() -> None:
    reader = HttpReader(HEAD, BODY)
    data = post(b'{"a":1}') + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    results = [reader.feed(data[i:i + 1]) for i in range(len(data))]
    requests = [r for r in results if r is not None]
    assert len(requests) == 1
    request = requests[0]
    assert isinstance(request, Request)
    assert (request.method, request.path, request.body) == ("POST", "/api/publish", b'{"a":1}')
    following = HttpReader(HEAD, BODY)
    second = following.feed(reader.leftover())
    assert isinstance(second, Request) and second.path == "/healthz" and second.body == b""


def test_a_chunked_body_is_joined() -> None:
    request = HttpReader(HEAD, BODY).feed(chunked(b"ab", b"cd" * 100))
    assert isinstance(request, Request) and request.body == b"ab" + b"cd" * 100


def test_a_declared_oversized_body_is_refused_before_it_is_read() -> None:
    reader = HttpReader(HEAD, BODY)
    head = post(b"x" * (BODY + 1))[: -(BODY + 1)]  # the head alone
    answer = reader.feed(head)
    assert isinstance(answer, Response) and answer.status == 413
    exact = HttpReader(HEAD, BODY).feed(post(b"x" * BODY))
    assert isinstance(exact, Request) and len(exact.body) == BODY


def test_a_chunked_body_is_cut_once_it_grows_past_the_limit() -> None:
    reader = HttpReader(HEAD, BODY)
    assert reader.feed(chunked()[:-5]) is None  # the head, and no chunk yet
    answer = None
    for _ in range(BODY // 1000 + 2):
        answer = reader.feed(b"3e8\r\n" + b"y" * 1000 + b"\r\n")
        if answer is not None:
            break
    assert isinstance(answer, Response) and answer.status == 413


def test_an_upgrade_is_still_returned_at_its_head() -> None:
    upgrade = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Content-Length: 5\r\n\r\n")
    request = HttpReader(HEAD, BODY).feed(upgrade)
    assert isinstance(request, Request) and request.body == b""  # decide_upgrade refuses it


def test_bytes_held_while_an_answer_is_pending_are_bounded() -> None:
    reader = HttpReader(HEAD, BODY)
    assert isinstance(reader.feed(post(b"{}")), Request)
    assert reader.hold(b"G" * (HEAD + BODY))
    assert not reader.hold(b"G")


@pytest.mark.parametrize(
    ("version", "connection", "expected"),
    [("1.1", None, True), ("1.1", "close", False), ("1.1", "Keep-Alive, Close", False),
     ("1.0", None, False), ("1.0", "keep-alive", False)],
)
def test_keep_alive(version: str, connection: str | None, expected: bool) -> None:
    headers = (("connection", connection),) if connection else ()
    assert keep_alive(Request("GET", "/", headers, version)) is expected


def test_a_kept_alive_response_does_not_say_close() -> None:
    response = Response.json(200, {"ok": True})
    assert b"Connection: close" not in render_response(response, keep_alive=True)
    assert b"Connection: close\r\n" in render_response(response)
    assert render_response(response, keep_alive=True).endswith(b'{"ok":true}')


def test_pending_delivers_once_whether_answered_before_or_after_binding() -> None:
    got: list[int] = []
    early = Pending()
    early.answer(Response.text(200, "early"))
    early.bind(lambda r: got.append(r.status))
    late = Pending()
    late.bind(lambda r: got.append(r.status))
    assert got == [200]
    late.answer(Response.text(201, "late"))
    assert got == [200, 201]
    with pytest.raises(RuntimeError):
        late.answer(Response.text(500, "twice"))
    gone = Pending()
    gone.bind(lambda r: got.append(r.status))
    gone.cancel()
    gone.answer(Response.text(202, "nobody listens"))
    assert got == [200, 201]
