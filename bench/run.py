"""``make bench``: wsnet side by side with peer servers, same load generator.

Scenarios (see bench/README.md): idle, broadcast, saturation, deflate, flush, and
scale (wsnet only: ``--workers N`` on a Redis backplane, up to 100,000 connections
in rooms). For every server (wsnet; the ``websockets`` peer; Node ``ws`` plain and
batched when ``node`` is installed) a scenario starts the server, opens
connections from ``bench/loadgen.py`` worker processes, runs the load, samples
the server's and the workers' RSS and CPU from ``/proc``, and stops everything.
Results go to ``bench/results/``. The code is in ``bench/wsbench/``.

Only 127.0.0.0/8 is ever a target; every phase is bounded in time.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ is not a package: wsbench and loadgen are imported from its folder, and
# support.procs (the process, port and Redis helpers the tests share) from tests/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from wsbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
