"""The shipped deployment files stay true: ``contrib/wsnet.toml`` is a config
wsnet reads, ``contrib/wsnet.service`` starts wsnet with options it knows (and
passes ``systemd-analyze verify`` where that tool exists). ``contrib/nginx.conf``
is run for real in tests/test_proxy.py."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from wsnet.cli import build_parser
from wsnet.config_file import parse_config

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"


def test_the_example_config_is_read_without_error() -> None:
    parser = build_parser()
    values = parse_config((CONTRIB / "wsnet.toml").read_bytes(), parser, "wsnet.toml")
    assert values["forwarded_allow_ips"] == ["127.0.0.1"] and values["port"] == 8080
    parser.set_defaults(**values)
    args = parser.parse_args([])
    assert args.allowed_origin == ["self"] and args.log_format == "json"


def unit() -> configparser.ConfigParser:
    parsed = configparser.ConfigParser(strict=False, interpolation=None)
    parsed.optionxform = str  # type: ignore[assignment,method-assign]
    parsed.read(CONTRIB / "wsnet.service")
    return parsed


def test_the_unit_runs_wsnet_with_options_it_knows() -> None:
    service = unit()["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[1:3] == ["-m", "wsnet"]
    args = build_parser().parse_args(argv[3:])
    assert args.config == "/etc/wsnet/wsnet.toml"
    assert int(service["LimitNOFILE"]) >= 65536
    assert service["ExecReload"].endswith("-HUP $MAINPID")
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"


@pytest.mark.live
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (the unit's options are checked above)")
    # verify wants the executable to exist: point it at this interpreter.
    text = (CONTRIB / "wsnet.service").read_text()
    python = shutil.which("python3") or "/usr/bin/python3"
    (tmp_path / "wsnet.service").write_text(text.replace("/opt/wsnet/bin/python", python))
    result = subprocess.run([analyze, "verify", str(tmp_path / "wsnet.service")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "wsnet.service" not in result.stderr, result.stderr  # no warnings about it
