"""What the tests (and the benchmark) share: the wire codec of a hand-made client
(``wire``), processes, ports and a throwaway Redis (``procs``), the server under
test as a subprocess or on a thread (``servers``), the chat clients (``chat``),
a fake clock (``clock``) and polling with a deadline (``waiting``).

Nothing here is a fixture: ``conftest.py`` wraps these in thin fixtures, and a test
file imports what it uses from ``support.<module>``. Every wait has a deadline.
"""
