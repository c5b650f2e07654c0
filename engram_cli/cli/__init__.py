"""The ``engram`` command line.

:mod:`.app` is the root (global options, commands loaded only when they run, every
error told as one line and an exit status); :mod:`.commands` holds one Typer
sub-app per command group. What they share: :mod:`.context` (the global options and
the invocation's one client), :mod:`.output` (every table, plain row and JSON line;
the only module that imports rich), :mod:`.completion` (completions that ask the
daemon), and the larger pieces of two commands, :mod:`.doctor` and :mod:`.lockrun`
(with :mod:`.cmdgroup`, its CMD as a process group).

May import: the client library, :mod:`engram_cli.formats`, the doors (a command
that opens one), typer and rich. The bench tools only from ``engram bench``.
Nothing outside the command line imports it.
"""
