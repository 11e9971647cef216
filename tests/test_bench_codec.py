"""The load generator's wire codec (bench/wsbench/codec.py), checked against
wsproto: what it writes wsproto reads as a client's frames, and what wsproto
writes as a server it scans exactly. Pure bytes, no sockets."""

from __future__ import annotations

import base64
import hashlib
import sys
import zlib
from pathlib import Path

import pytest
from wsproto.frame_protocol import FrameProtocol, Opcode

# bench/ is not a package: its modules are imported from its folder.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from wsbench import codec

SIZES = [0, 1, 125, 126, 65535, 65536, 70_000]


@pytest.mark.parametrize("size", SIZES)
def test_masked_client_frames_parse_in_wsproto(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    server = FrameProtocol(client=False, extensions=[])
    server.receive_bytes(codec.mask_frame(payload, codec.OP_BINARY))
    [frame] = list(server.received_frames())
    assert frame.opcode is Opcode.BINARY and frame.frame_finished and frame.message_finished
    assert frame.payload == payload


def test_a_given_mask_key_is_used_and_empty_payloads_carry_only_it() -> None:
    assert codec.mask_frame(b"", codec.OP_TEXT, key=b"abcd") == b"\x81\x80abcd"
    frame = codec.mask_frame(b"Hi", codec.OP_TEXT, key=b"\x01\x02\x03\x04")
    assert frame == b"\x81\x82\x01\x02\x03\x04" + bytes((ord("H") ^ 1, ord("i") ^ 2))


@pytest.mark.parametrize("size", SIZES)
def test_server_frames_from_wsproto_scan_exactly(size: int) -> None:
    server = FrameProtocol(client=False, extensions=[])
    first = server.send_data("x" * size, fin=True)
    second = server.ping(b"p")
    data = bytes(first + second)
    spans, rest = codec.scan_frames(data)
    assert rest == len(data)
    assert [(b, data[s:e]) for b, s, e in spans] == [
        (codec.TEXT_FINAL, b"x" * size), (codec.FIN | codec.OP_PING, b"p"),
    ]
    assert codec.frame_size(data) == len(first)
    # An incomplete tail is left for the next read, at every cut.
    for cut in {1, len(first) - 1, len(first) + 1}:
        spans, rest = codec.scan_frames(data[:cut])
        assert rest == (len(first) if cut > len(first) else 0)


def test_a_masked_server_frame_is_an_error() -> None:
    with pytest.raises(codec.MaskedFrameError):
        codec.scan_frames(codec.mask_frame(b"hello"))


def test_accept_token_is_rfc6455s() -> None:
    # RFC 6455 §1.3's own example.
    assert codec.accept_for(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    key = codec.new_key()
    assert len(base64.b64decode(key)) == 16
    digest = base64.b64encode(hashlib.sha1(key + codec.GUID).digest())
    assert codec.accept_for(key) == digest


def test_inflate_undoes_a_sync_flushed_message_with_or_without_context() -> None:
    compressor = zlib.compressobj(wbits=-15)
    messages = [b"hello " * 50, b"hello again " * 30]
    inflater = codec.new_inflater()
    for message in messages:
        payload = compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH)
        assert payload.endswith(codec.TAIL)
        assert codec.inflate(payload[:-4], inflater) == message
    alone = zlib.compressobj(wbits=-15)
    payload = alone.compress(b"solo") + alone.flush(zlib.Z_SYNC_FLUSH)
    assert codec.inflate(payload[:-4]) == b"solo"
