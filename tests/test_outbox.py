"""The per-connection outbox: shared chunks, partial writes as memoryview tails,
and a byte count that always matches what is queued."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wsnet._outbox import Outbox


def queued(box: Outbox) -> bytes:
    return b"".join(bytes(chunk) for chunk in box.chunks)


def test_empty() -> None:
    box = Outbox()
    assert not box
    assert box.nbytes == 0 and box.chunks == [] and not box.partial
    box.append(b"")  # nothing to send: not queued
    assert box.chunks == [] and not box


def test_append_shares_the_object() -> None:
    frame = b"shared frame"
    a, b = Outbox(), Outbox()
    a.append(frame)
    b.append(frame)
    assert a.chunks[0] is frame and b.chunks[0] is frame
    assert a.nbytes == b.nbytes == len(frame)


def test_partial_write_leaves_a_memoryview_tail() -> None:
    first, second = b"0123456789", b"abcdef"
    box = Outbox()
    box.append(first)
    box.append(second)
    box.consume(4)
    head = box.chunks[0]
    assert isinstance(head, memoryview)
    assert head.obj is first  # a view, not a copy
    assert bytes(head) == b"456789"
    assert box.chunks[1] is second
    assert box.partial
    assert box.nbytes == 12
    # A second partial write into the same chunk.
    box.consume(5)
    assert bytes(box.chunks[0]) == b"9" and box.partial and box.nbytes == 7
    # Finishing the head exactly: the next chunk is untouched and whole.
    box.consume(1)
    assert box.chunks == [second] and box.chunks[0] is second
    assert not box.partial and box.nbytes == 6


def test_consume_across_chunks() -> None:
    box = Outbox()
    for chunk in (b"aa", b"bbb", b"cccc"):
        box.append(chunk)
    box.consume(6)  # "aa", "bbb" and one "c"
    assert queued(box) == b"ccc" and box.partial and box.nbytes == 3
    box.consume(3)
    assert box.chunks == [] and not box and not box.partial


def test_consume_nothing() -> None:
    box = Outbox()
    box.append(b"abc")
    box.consume(1)
    box.consume(0)
    assert box.partial and queued(box) == b"bc" and box.nbytes == 2


def test_discard_keeps_a_partly_written_head() -> None:
    box = Outbox()
    for chunk in (b"frame-one", b"frame-two", b"frame-three"):
        box.append(chunk)
    box.consume(3)
    box.discard()
    # The rest of the frame already begun must still go out, or the stream breaks.
    assert queued(box) == b"me-one"
    assert box.nbytes == 6 and box.partial
    close = b"close-frame"
    box.append(close)
    assert queued(box) == b"me-one" + close and box.nbytes == 6 + len(close)
    box.consume(6)
    assert box.chunks == [close] and not box.partial


def test_discard_without_partial_write_drops_everything() -> None:
    box = Outbox()
    box.append(b"one")
    box.append(b"two")
    box.consume(3)  # exactly one whole chunk
    box.discard()
    assert box.chunks == [] and box.nbytes == 0 and not box and not box.partial


Op = tuple[str, int]


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(0, 40)),
            st.tuples(st.just("consume"), st.integers(0, 100)),
            st.tuples(st.just("discard"), st.just(0)),
        ),
        max_size=60,
    ),
)
def test_matches_a_byte_stream_model(ops: list[Op]) -> None:
    """The outbox behaves as one byte stream; ``partial`` says whether a frame
    (chunk) has been begun but not finished."""
    box = Outbox()
    model = b""  # what is still to be sent
    frames: list[bytes] = []  # the frames still (partly) queued, in order
    written_of_head = 0  # bytes of frames[0] already sent
    counter = 0
    for op, arg in ops:
        if op == "append":
            counter += 1
            frame = bytes([counter % 256]) * arg
            box.append(frame)
            if frame:
                model += frame
                frames.append(frame)
        elif op == "consume":
            sent = min(arg, len(model))  # the kernel never takes more than offered
            box.consume(sent)
            model = model[sent:]
            written_of_head += sent
            while frames and written_of_head >= len(frames[0]):
                written_of_head -= len(frames.pop(0))
        else:
            box.discard()
            if written_of_head:
                frames = frames[:1]
                model = frames[0][written_of_head:]
            else:
                frames, model = [], b""
        assert box.nbytes == len(model) == sum(len(c) for c in box.chunks)
        assert queued(box) == model
        assert bool(box) == bool(model)
        assert box.partial == (written_of_head > 0)
        assert all(len(c) > 0 for c in box.chunks)
