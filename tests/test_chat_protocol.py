"""The chat wire protocol v1 (README, "The chat protocol"), without sockets: one
client text frame in, one command (or the reason it is refused) out; the upgrade
URL's query in, what the connection asked for out."""

from __future__ import annotations

import json
import re
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsnet.chat.protocol import (
    MAX_TEXT_CHARS,
    ChatError,
    Command,
    Hello,
    Join,
    Leave,
    Nick,
    SendMessage,
    encode_event,
    parse_command,
    parse_hello,
    valid_name,
    valid_room,
)


def msg(text: str, room: str | None = None, cid: str | None = None) -> SendMessage:
    return SendMessage(room, text, cid)


def cmd(**fields: object) -> str:
    return json.dumps(fields)


LONG = "x" * (MAX_TEXT_CHARS + 1)

# frame text -> expected result (a command, or the error code of a ChatError)
COMMANDS: list[tuple[str, str, Command | str]] = [
    ("plain text", "hello", msg("hello")),
    ("plain text with spaces", "  hi there  ", msg("  hi there  ")),
    ("non-ASCII text", "h\xe9 \u2713 \U0001f600", msg("h\xe9 \u2713 \U0001f600")),
    ("message command", cmd(type="message", text="hi"), msg("hi")),
    ("message command with room", cmd(type="message", room="dev", text="hi"), msg("hi", "dev")),
    ("message with cid", cmd(type="message", text="hi", cid="k1"), msg("hi", None, "k1")),
    ("cid of 64", cmd(type="message", text="hi", cid="c" * 64), msg("hi", None, "c" * 64)),
    ("cid of 65", cmd(type="message", text="hi", cid="c" * 65), "bad_command"),
    ("empty cid", cmd(type="message", text="hi", cid=""), "bad_command"),
    ("cid not a string", cmd(type="message", text="hi", cid=7), "bad_command"),
    # A lone surrogate would be echoed in events that cannot be encoded.
    ("cid lone surrogate", '{"type":"message","text":"hi","cid":"\\ud800"}', "bad_command"),
    ("cid with a space", cmd(type="message", text="hi", cid="a b"), "bad_command"),
    ("cid non-ASCII", cmd(type="message", text="hi", cid="\xe9"), "bad_command"),
    ("extra fields ignored", cmd(type="message", text="hi", color="red"), msg("hi")),
    ("JSON without type", cmd(text="hi"), "bad_command"),
    ("type not a string", cmd(type=3, text="hi"), "bad_command"),
    ("type null", cmd(type=None), "bad_command"),
    ("unknown type", cmd(type="dance"), "unknown_type"),
    ("type in other case", cmd(type="MESSAGE", text="hi"), "unknown_type"),
    ("empty text", "", "empty_text"),
    ("blank text", " \t\n ", "empty_text"),
    ("empty message command", cmd(type="message", text=""), "empty_text"),
    ("blank message command", cmd(type="message", text="   "), "empty_text"),
    ("text too long", LONG, "text_too_long"),
    ("command text too long", cmd(type="message", text=LONG), "text_too_long"),
    ("longest text", "x" * MAX_TEXT_CHARS, msg("x" * MAX_TEXT_CHARS)),
    ("limit counts characters", "\xe9" * MAX_TEXT_CHARS, msg("\xe9" * MAX_TEXT_CHARS)),
    ("lone surrogate", '{"type":"message","text":"\\ud800"}', "bad_text"),
    ("text not a string", cmd(type="message", text=5), "bad_command"),
    ("text is a list", cmd(type="message", text=["a"]), "bad_command"),
    ("text missing", cmd(type="message"), "bad_command"),
    ("room not a string", cmd(type="message", room=5, text="a"), "bad_command"),
    ("room null means default", cmd(type="message", room=None, text="a"), msg("a")),
    ("message to a bad room name", cmd(type="message", room="a b", text="a"), "bad_room"),
    ("join", cmd(type="join", room="dev"), Join("dev")),
    ("join with since", cmd(type="join", room="dev", since=41), Join("dev", 41)),
    ("join with since and epoch", cmd(type="join", room="dev", since=0, epoch="ab"),
     Join("dev", 0, "ab")),
    ("join without room", cmd(type="join"), "bad_command"),
    ("join room not a string", cmd(type="join", room=["dev"]), "bad_command"),
    ("join empty room name", cmd(type="join", room=""), "bad_room"),
    ("join room name too long", cmd(type="join", room="r" * 65), "bad_room"),
    ("join longest room name", cmd(type="join", room="r" * 64), Join("r" * 64)),
    ("join room with slash", cmd(type="join", room="a/b"), "bad_room"),
    ("join non-ASCII room", cmd(type="join", room="caf\xe9"), Join("caf\xe9")),
    ("since negative", cmd(type="join", room="dev", since=-1), "bad_command"),
    ("since a string", cmd(type="join", room="dev", since="4"), "bad_command"),
    ("since a float", cmd(type="join", room="dev", since=4.0), "bad_command"),
    ("since true", cmd(type="join", room="dev", since=True), "bad_command"),
    ("epoch a number", cmd(type="join", room="dev", since=1, epoch=5), "bad_command"),
    ("epoch too long", cmd(type="join", room="dev", since=1, epoch="e" * 33), "bad_command"),
    ("leave", cmd(type="leave", room="dev"), Leave("dev")),
    ("leave without room", cmd(type="leave"), "bad_command"),
    ("leave bad room name", cmd(type="leave", room="<x>"), "bad_room"),
    ("nick", cmd(type="nick", name="ann"), Nick("ann")),
    ("nick with inner space", cmd(type="nick", name="Ann Lee"), Nick("Ann Lee")),
    ("nick non-ASCII", cmd(type="nick", name="Zo\xeb"), Nick("Zo\xeb")),
    ("nick without name", cmd(type="nick"), "bad_command"),
    ("nick name not a string", cmd(type="nick", name=1), "bad_command"),
    ("nick empty", cmd(type="nick", name=""), "bad_name"),
    ("nick too long", cmd(type="nick", name="n" * 33), "bad_name"),
    ("nick leading space", cmd(type="nick", name=" ann"), "bad_name"),
    ("nick double space", cmd(type="nick", name="a  b"), "bad_name"),
    ("nick with markup", cmd(type="nick", name="<b>"), "bad_name"),
    ("nick with newline", cmd(type="nick", name="a\nb"), "bad_name"),
    # Any script: combining marks belong to letters (Devanagari, Tamil, Thai,
    # decomposed accents); invisible filler letters and a leading mark do not.
    ("nick Devanagari", cmd(type="nick", name="\u0939\u093f\u0928\u094d\u0926\u0940"),
     Nick("\u0939\u093f\u0928\u094d\u0926\u0940")),
    ("nick Tamil", cmd(type="nick", name="\u0ba4\u0bae\u0bbf\u0bb4\u0bcd"),
     Nick("\u0ba4\u0bae\u0bbf\u0bb4\u0bcd")),
    ("nick decomposed accent", cmd(type="nick", name="Jose\u0301"), Nick("Jose\u0301")),
    ("nick Hangul filler", cmd(type="nick", name="\u3164"), "bad_name"),
    ("nick starts with a mark", cmd(type="nick", name="\u0301a"), "bad_name"),
    ("nick zero-width space", cmd(type="nick", name="a\u200bb"), "bad_name"),
    ("nick bidi override", cmd(type="nick", name="a\u202eb"), "bad_name"),
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
def test_parse_command(text: str, expected: Command | str) -> None:
    result = parse_command(text)
    if isinstance(expected, str):
        assert isinstance(result, ChatError), result
        assert result.error == expected
        assert result.detail  # something a human can read
    else:
        assert result == expected


def test_errors_carry_the_commands_room_and_cid() -> None:
    error = parse_command(cmd(type="message", room="dev", text=" ", cid="k9"))
    assert isinstance(error, ChatError)
    assert error.event() == {
        "type": "error", "error": "empty_text", "detail": error.detail, "room": "dev", "cid": "k9",
    }
    error = parse_command(cmd(type="join", room="dev", since=-1))
    assert isinstance(error, ChatError) and error.event()["room"] == "dev"


def test_error_event_shape() -> None:
    error = parse_command(cmd(type="dance"))
    assert isinstance(error, ChatError)
    assert error.event() == {"type": "error", "error": "unknown_type", "detail": error.detail}


@given(st.text(max_size=200))
def test_never_raises_and_plain_text_round_trips(text: str) -> None:
    result = parse_command(text)
    assert isinstance(result, SendMessage | Join | Leave | Nick | ChatError)
    if not text.lstrip().startswith("{") and text.strip():
        assert result == SendMessage(None, text)


@given(st.dictionaries(st.sampled_from(["type", "room", "text", "since", "epoch", "name", "cid"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=70),
                                 st.lists(st.integers(), max_size=2)), max_size=7))
def test_any_command_object_is_parsed_or_refused_never_raises(fields: dict[str, object]) -> None:
    result = parse_command(json.dumps(fields))
    assert isinstance(result, SendMessage | Join | Leave | Nick | ChatError)
    if isinstance(result, Join | Leave):
        assert valid_room(result.room)
    if isinstance(result, Nick):
        assert valid_name(result.name)


def _by_the_rule(text: str, limit: int, spaces: bool, extra: str) -> bool:
    """The README's rule for names and rooms, one character at a time."""
    if not 0 < len(text) <= limit or unicodedata.category(text[0]).startswith("M"):
        return False
    word = {"Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No"}
    return all(
        part and all(ch in "_.-" + extra or (unicodedata.category(ch) in word
                                             and ch not in "\u115f\u1160\u3164\uffa0")
                     for ch in part)
        for part in (text.split(" ") if spaces else [text])
    )


# Mostly valid characters with a few of every kind that is not: ASCII, where
# the shortcut applies, and beyond it.
_MIXED = st.text(st.sampled_from("aZ09_.-: <>/\t\x00\x7f\xe9\u0301\u3164\u200b"), max_size=70)


@given(st.one_of(_MIXED, st.text(max_size=70),
                 st.sampled_from(["a b", "a-b.c_d", "A1 b2 c3", "dev:ops", "x" * 64, "\u0301a"])))
def test_names_and_rooms_follow_the_rule_with_and_without_the_ascii_shortcut(text: str) -> None:
    assert valid_name(text) == _by_the_rule(text, 32, spaces=True, extra="")
    if not text.startswith("dm:"):  # direct-message rooms have their own form
        assert valid_room(text) == _by_the_rule(text, 64, spaces=False, extra=":")


# query -> expected Hello fields (errors given by their codes)
HELLOS: list[tuple[str, dict[str, str], Hello, tuple[str, ...]]] = [
    ("nothing", {}, Hello(), ()),
    ("name and room", {"name": "ann", "room": "dev"}, Hello("ann", "dev"), ()),
    ("resume", {"room": "dev", "since": "41", "epoch": "9f"}, Hello(None, "dev", 41, "9f"), ()),
    ("bad name falls back", {"name": "<ann>"}, Hello(), ("bad_name",)),
    ("bad room joins nothing", {"room": "a b"}, Hello(room=None), ("bad_room",)),
    ("empty room joins nothing", {"room": ""}, Hello(room=None), ("bad_room",)),
    ("bad since", {"since": "-1"}, Hello(), ("bad_command",)),
    ("non-ASCII digits are not a since", {"since": "\u0664"}, Hello(), ("bad_command",)),
    ("huge since", {"since": "9" * 40}, Hello(), ("bad_command",)),
    # Kept: it can only fail to match, which makes the resume a reset.
    ("overlong epoch is kept", {"since": "1", "epoch": "e" * 40},
     Hello(since=1, epoch="e" * 40), ()),
    ("everything wrong", {"name": "", "room": "/", "since": "x"}, Hello(room=None),
     ("bad_name", "bad_room", "bad_command")),
]


@pytest.mark.parametrize(
    ("query", "expected", "codes"), [h[1:] for h in HELLOS], ids=[h[0] for h in HELLOS],
)
def test_parse_hello(query: dict[str, str], expected: Hello, codes: tuple[str, ...]) -> None:
    hello = parse_hello(query)
    assert (hello.name, hello.room, hello.since, hello.epoch) == (
        expected.name, expected.room, expected.since, expected.epoch,
    )
    assert tuple(e.error for e in hello.errors) == codes


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
