"""``--config FILE``: the command line's options in a TOML file, each under its
flag's name without the dashes (``max-connections = 1000``, ``no-deflate =
true``, ``allowed-origin = ["https://chat.example"]``); flags on the command
line win over the file. ``--print-config`` shows the result.

Pure: an ``argparse`` parser and a file's bytes in, option values out. Read
with the standard library's ``tomllib``; a key that is not an option, or a
value of the wrong type, is one ``ConfigFileError`` naming the key.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["ConfigFileError", "file_options", "parse_config", "render_config"]

#: Options that are commands or internal, not configuration.
NOT_SETTINGS = frozenset({
    "help", "config", "print-config", "as-worker-of", "listen-fd", "node-dir", "worker-index",
    "handoff-fds",
    "mint-token", "token-ttl", "room", "read-only-room", "claim-ttl",
})


class ConfigFileError(ValueError):
    """What is wrong with the file, naming the key."""


def file_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The options a file may set, by key (the long flag without ``--``)."""
    keys: dict[str, argparse.Action] = {}
    for action in parser._actions:  # argparse offers no public list of them
        flags = [o for o in action.option_strings if o.startswith("--")]
        if flags and flags[0][2:] not in NOT_SETTINGS:
            keys[flags[0][2:]] = action
    return keys


def parse_config(
    data: bytes, parser: argparse.ArgumentParser, name: str = "config",
) -> dict[str, Any]:
    """The file's settings as ``{dest: value}``, ready for ``parser.set_defaults``."""
    try:
        table = tomllib.loads(data.decode())
    except UnicodeDecodeError:
        raise ConfigFileError(f"{name}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{name}: not valid TOML: {exc}") from None
    options = file_options(parser)
    values: dict[str, Any] = {}
    for key, value in table.items():
        action = options.get(key)
        if action is None:
            raise ConfigFileError(f"{name}: unknown key {key!r} (keys are the options' "
                                  "names without '--', e.g. max-connections)")
        values[action.dest] = _checked(name, key, action, value)
    return values


def _checked(name: str, key: str, action: argparse.Action, value: object) -> object:
    kind = _kind(action)
    if kind == "flag":
        ok = isinstance(value, bool)
    elif kind == "list":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigFileError(f"{name}: {key!r} must be {_WORDS[kind]}, not {value!r}")
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ConfigFileError(f"{name}: {key!r} must be one of {choices}, not {value!r}")
    return float(value) if kind == "float" else value  # type: ignore[arg-type]


_WORDS = {"flag": "true or false", "list": "a list of strings", "int": "an integer",
          "float": "a number", "str": "a string"}


def _kind(action: argparse.Action) -> str:
    if isinstance(action, argparse._StoreTrueAction):
        return "flag"
    if isinstance(action, argparse._AppendAction):
        return "list"
    if action.type is int:
        return "int"
    if action.type is float:
        return "float"
    return "str"


def render_config(args: argparse.Namespace, parser: argparse.ArgumentParser,
                  notes: Mapping[str, str] = {}) -> str:
    """The effective configuration as a TOML file that ``--config`` would read
    back; options left to their built-in default (None) are comments, and a
    password in a URL is masked."""
    lines = ["# the effective configuration of python -m wsnet"]
    lines.extend(f"# {note}" for note in notes.values())
    for key, action in file_options(parser).items():
        value = getattr(args, action.dest, None)
        if value is None:
            lines.append(f"# {key} = (not set: the built-in default)")
            continue
        if isinstance(value, str) and "://" in value:
            value = _mask_password(value)
        lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string


def _mask_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
