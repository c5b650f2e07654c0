"""The code of the hot commands, the ones scripts, hooks and agents run many times
(``hook *``, ``unit create``, ``lock acquire|release|renew|run``, ``ping``, ``wait``,
``send``, ``inbox``), without the command-line framework: each function takes the
invocation's :class:`~engram_cli.cli.context.CliContext` and the command's options, as
the Typer command in :mod:`engram_cli.cli.commands` that calls it has them, so that
:mod:`engram_cli.cli.fast` can run the same code without importing Typer. A function
returns the exit status (None: 0) or raises
:class:`~engram_cli.cli.exits.Exit`.

May import: the client library, :mod:`engram_cli.formats`, :mod:`engram_cli.doors`
(harness formats) and the typer-free modules of :mod:`engram_cli.cli`; never typer,
click or rich (tests/test_layering.py holds it to that).
"""
