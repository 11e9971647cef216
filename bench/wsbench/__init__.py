"""The benchmark behind ``bench/run.py``, one concern per module.

- ``settings``: the sizes of every scenario and the thresholds the report judges by;
- ``procfs``: CPU, RSS, descriptors and children read from ``/proc``;
- ``servers``: the servers under test (wsnet and its peers) as processes;
- ``driver``: ``bench/loadgen.py`` worker processes, driven by JSON lines;
- ``scenarios``: idle, broadcast, saturation, deflate and flush;
- ``cluster``: Redis and wsnet nodes on it, with connections in rooms;
- ``scale``: the scale scenario's parts, on such clusters;
- ``fmt``, ``report``, ``scale_report``: the tables, notices and chart;
- ``cli``: the command line, the run and its result files;
- ``codec``: the load generator's WebSocket wire codec (pure bytes).

Process, port and Redis helpers come from ``tests/support/procs.py`` (the entry
point puts ``tests/`` on ``sys.path``). This file imports nothing: the load
generator imports ``wsbench.codec`` and must start fast.
"""
