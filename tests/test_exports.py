"""The public API is exactly what ``__all__`` documents, and importing it pulls
in nothing beyond the standard library, h11 and wsproto (ARCHITECTURE.md, "The
public API")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import wsnet

REPO = Path(__file__).resolve().parent.parent

DOCUMENTED = {
    "CloseCode",
    "Config",
    "Connection",
    "Handler",
    "Pending",
    "Request",
    "Response",
    "Server",
    "TimerHandle",
    "__version__",
}


def test_all_is_the_documented_set() -> None:
    assert len(wsnet.__all__) == len(set(wsnet.__all__))
    assert set(wsnet.__all__) == DOCUMENTED


def test_every_name_is_importable() -> None:
    for name in wsnet.__all__:
        assert getattr(wsnet, name) is not None
    namespace: dict[str, object] = {}
    exec("from wsnet import *", namespace)
    assert set(namespace) >= DOCUMENTED


def test_exported_objects() -> None:
    assert isinstance(wsnet.__version__, str)
    assert all(part.isdigit() for part in wsnet.__version__.split("."))
    assert int(wsnet.CloseCode.MESSAGE_TOO_BIG) == 1009
    for name in ("Config", "Connection", "Handler", "Request", "Response", "Server", "TimerHandle"):
        assert isinstance(getattr(wsnet, name), type), name


@pytest.mark.live
def test_import_pulls_in_no_optional_packages() -> None:
    code = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        "import wsnet\n"
        "new = sorted({m.split('.')[0] for m in set(sys.modules) - before})\n"
        "print(json.dumps(new))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    imported = set(json.loads(result.stdout))
    allowed = set(sys.stdlib_module_names) | {"wsnet", "h11", "wsproto"}
    assert imported - allowed == set()
    assert "wsnet" in imported
    for optional in ("websockets", "hypothesis", "pytest"):
        assert optional not in imported
