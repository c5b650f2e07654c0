"""Measuring and showing engram: ``engram bench``, the soak, the demos.

:mod:`.harness` runs named rows against a daemon of its own and reports p50, p99,
max and throughput; the rows live by what they measure; :mod:`.compare` runs two
commits back to back; :mod:`.soak` writes, watches and crashes for a long time;
:mod:`.demo` and :mod:`.clusterdemo` are ``make demo`` and ``make cluster-demo``;
:mod:`.natslab` runs a NATS cluster on loopback for them and for the tests.

May import anything of engram_cli but the command line's views; nothing imports
it but ``engram bench`` (and the tests).
"""
