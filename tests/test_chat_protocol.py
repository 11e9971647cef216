"""The chat wire protocol v1 (DESIGN §2), without sockets: one client text frame
in, one command (or the reason it is refused) out."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsnet.chat import MAX_TEXT_CHARS, ChatError, SendMessage, encode_event, parse_command


def msg(text: str, room: str = "lobby") -> SendMessage:
    return SendMessage(room, text)


def cmd(**fields: object) -> str:
    return json.dumps(fields)


LONG = "x" * (MAX_TEXT_CHARS + 1)

# frame text -> expected result (a SendMessage, or the error code of a ChatError)
COMMANDS: list[tuple[str, str, SendMessage | str]] = [
    ("plain text", "hello", msg("hello")),
    ("plain text with spaces", "  hi there  ", msg("  hi there  ")),
    ("non-ASCII text", "h\xe9 \u2713 \U0001f600", msg("h\xe9 \u2713 \U0001f600")),
    ("message command", cmd(type="message", text="hi"), msg("hi")),
    ("message command with room", cmd(type="message", room="lobby", text="hi"), msg("hi")),
    ("message to another room", cmd(type="message", room="r2", text="hi"), msg("hi", "r2")),
    ("extra fields ignored", cmd(type="message", text="hi", color="red"), msg("hi")),
    ("JSON without type", cmd(text="hi"), "bad_command"),
    ("type not a string", cmd(type=3, text="hi"), "bad_command"),
    ("type null", cmd(type=None), "bad_command"),
    ("unknown type", cmd(type="dance"), "unknown_type"),
    ("type in other case", cmd(type="MESSAGE", text="hi"), "unknown_type"),
    ("join not served", cmd(type="join", room="r"), "unsupported"),
    ("leave not served", cmd(type="leave", room="r"), "unsupported"),
    ("nick not served", cmd(type="nick", name="ann"), "unsupported"),
    ("empty text", "", "empty_text"),
    ("blank text", " \t\n ", "empty_text"),
    ("empty message command", cmd(type="message", text=""), "empty_text"),
    ("blank message command", cmd(type="message", text="   "), "empty_text"),
    ("text too long", LONG, "text_too_long"),
    ("command text too long", cmd(type="message", text=LONG), "text_too_long"),
    ("longest text", "x" * MAX_TEXT_CHARS, msg("x" * MAX_TEXT_CHARS)),
    ("limit counts characters", "\xe9" * MAX_TEXT_CHARS, msg("\xe9" * MAX_TEXT_CHARS)),
    ("text not a string", cmd(type="message", text=5), "bad_command"),
    ("text is a list", cmd(type="message", text=["a"]), "bad_command"),
    ("text missing", cmd(type="message"), "bad_command"),
    ("room not a string", cmd(type="message", room=5, text="a"), "bad_command"),
    ("room null", cmd(type="message", room=None, text="a"), "bad_command"),
    ("broken JSON", '{"type": "message", "text": ', msg('{"type": "message", "text": ')),
    ("single brace", "{", msg("{")),
    ("braces in prose", "{we} should meet", msg("{we} should meet")),
    ("JSON array", "[1, 2]", msg("[1, 2]")),
    ("JSON string", '"quoted"', msg('"quoted"')),
    ("JSON number", "42", msg("42")),
    ("JSON null", "null", msg("null")),
    ("empty object", "{}", "bad_command"),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in COMMANDS], ids=[c[0] for c in COMMANDS],
)
def test_parse_command(text: str, expected: SendMessage | str) -> None:
    result = parse_command(text)
    if isinstance(expected, SendMessage):
        assert result == expected
    else:
        assert isinstance(result, ChatError), result
        assert result.error == expected
        assert result.detail  # something a human can read


def test_default_room_is_used_for_plain_text_and_room_less_commands() -> None:
    assert parse_command("hi", default_room="r9") == SendMessage("r9", "hi")
    assert parse_command(cmd(type="message", text="hi"), default_room="r9") == SendMessage(
        "r9", "hi",
    )


def test_error_event_shape() -> None:
    error = parse_command(cmd(type="dance"))
    assert isinstance(error, ChatError)
    assert error.event() == {"type": "error", "error": "unknown_type", "detail": error.detail}


@given(st.text(max_size=200))
def test_never_raises_and_plain_text_round_trips(text: str) -> None:
    result = parse_command(text)
    assert isinstance(result, SendMessage | ChatError)
    if not text.startswith("{") and text.strip():
        assert result == SendMessage("lobby", text)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def outside_strings(encoded: str) -> str:
    return _STRING.sub('""', encoded)


def test_encode_event_is_compact_json() -> None:
    text = 'h\xe9 "q" \u2713'
    event = {"type": "message", "room": "lobby", "seq": 42, "from": "ann", "text": text}
    encoded = encode_event(event)
    assert json.loads(encoded) == event
    assert encoded == (
        '{"type":"message","room":"lobby","seq":42,"from":"ann","text":"h\xe9 \\"q\\" \u2713"}'
    )


@given(
    st.dictionaries(
        st.text(max_size=10),
        st.one_of(st.integers(), st.text(max_size=20), st.booleans(), st.none()),
        max_size=6,
    ),
)
def test_encode_event_round_trips_compactly(event: dict[str, object]) -> None:
    encoded = encode_event(event)
    assert json.loads(encoded) == event
    # No whitespace between tokens, and one line.
    assert not any(ch.isspace() for ch in outside_strings(encoded))
    assert "\n" not in encoded
    # Printable non-ASCII text is written as it is, not as \u escapes.
    for value in event.values():
        if isinstance(value, str) and value.isprintable() and not set(value) & set('"\\'):
            assert f'"{value}"' in encoded
