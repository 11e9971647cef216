"""``--config FILE`` and ``--print-config``: the file's keys and types, flags
over the file, the printed configuration read back, and each error as one line
with exit status 2 (``python -m wsnet`` in a subprocess)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from support.chat import run, ws_connect
from support.procs import python_env
from support.servers import ServerFactory

from wsnet.cli import build_parser
from wsnet.config_file import ConfigFileError, file_options, parse_config, render_config


def parsed(text: str, *argv: str) -> argparse.Namespace:
    parser = build_parser()
    parser.set_defaults(**parse_config(text.encode(), parser, "wsnet.toml"))
    return parser.parse_args(list(argv))


def test_the_file_sets_options_and_flags_win() -> None:
    args = parsed('port = 9001\nno-deflate = true\nhistory = 50\nrate-limit = 5\n'
                  'allowed-origin = ["https://a.example"]\nlog-level = "debug"\n',
                  "--port", "9002")
    assert (args.port, args.no_deflate, args.history, args.rate_limit) == (9002, True, 50, 5.0)
    assert args.allowed_origin == ["https://a.example"] and args.log_level == "debug"
    assert isinstance(args.rate_limit, float)  # an integer where a number goes


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("prot = 1", "unknown key 'prot'"),
        ("mint-token = 'ann'", "unknown key 'mint-token'"),  # a command, not a setting
        ("port = '80'", "'port' must be an integer"),
        ("port = true", "'port' must be an integer"),
        ("rate-limit = 'fast'", "'rate-limit' must be a number"),
        ("no-deflate = 1", "'no-deflate' must be true or false"),
        ("allowed-origin = 'https://a'", "'allowed-origin' must be a list of strings"),
        ("host = 1", "'host' must be a string"),
        ("log-level = 'loud'", "'log-level' must be one of debug"),
        ("[server]\nport = 1", "unknown key 'server'"),
        ("port = ", "not valid TOML"),
    ],
)
def test_each_mistake_names_its_key(text: str, words: str) -> None:
    with pytest.raises(ConfigFileError, match=words) as raised:
        parse_config(text.encode(), build_parser(), "wsnet.toml")
    assert str(raised.value).startswith("wsnet.toml: ")


def test_the_printed_configuration_reads_back_the_same() -> None:
    parser = build_parser()
    args = parser.parse_args(["--port", "9005", "--no-deflate", "--allowed-origin", "https://x",
                              "--redis", "redis://u:hunter2@127.0.0.1:6379/0", "--history", "7"])
    text = render_config(args, parser)
    assert "hunter2" not in text and "redis://u:***@127.0.0.1:6379/0" in text
    again = build_parser()
    values = parse_config(text.replace(":***@", ":hunter2@").encode(), again)
    again.set_defaults(**values)
    back = again.parse_args([])
    for key, action in file_options(parser).items():
        assert getattr(back, action.dest) == getattr(args, action.dest), key


def wsnet(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wsnet", *argv], capture_output=True,
                          text=True, timeout=30, env=env or python_env(), check=False)


@pytest.mark.live
def test_print_config_and_errors_from_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "wsnet.toml"
    config.write_text('port = 9100\nhistory = 10\n')
    env = {**python_env(), "WSNET_API_KEY": "k" * 20}
    shown = wsnet("--config", str(config), "--history", "11", "--print-config", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "port = 9100" in shown.stdout and "history = 11" in shown.stdout
    assert "WSNET_API_KEY is set" in shown.stdout and "k" * 20 not in shown.stdout
    config.write_text("port = 'x'\n")
    bad = wsnet("--config", str(config))
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"wsnet: {config}: 'port' must be an integer, "
                                               "not 'x'"]
    missing = wsnet("--config", str(tmp_path / "none.toml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_a_server_runs_from_its_config_file(server_factory: ServerFactory, tmp_path: Path) -> None:
    config = tmp_path / "wsnet.toml"
    config.write_text('app = "echo"\nno-deflate = true\n')
    server = server_factory("--config", str(config))

    async def echo() -> None:
        ws = await ws_connect(server.url)
        assert ws.response is not None
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None  # no deflate
        await ws.send("from the file")
        assert await ws.recv() == "from the file"  # the echo app, not the chat
        await ws.close()

    run(echo())
