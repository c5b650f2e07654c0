"""How an ``engram`` process ends, on both of its paths (the Typer app, :mod:`.app`, and
the hot commands' own start, :mod:`.fast`): an exit status a command asks for, any
:class:`~engram_cli.client.errors.EngramError` as one line on stderr and its status,
and the end of the process itself. No typer, no msgspec here: :mod:`.fast` imports it
before it knows whether it needs either."""

from __future__ import annotations

import atexit
import os
import sys

TYPE_CHECKING = False  # (typing itself costs a start ~2 ms)
if TYPE_CHECKING:
    from typing import NoReturn


COMPLETE_VAR = "_ENGRAM_COMPLETE"
"""Set by the shell when it asks for completions (see completions/): the Typer app's."""


def wants_json(args: list[str]) -> bool:
    """Whether ``--json`` is among the options (not after ``--``, where it would belong
    to another program), so that even a usage error can be told in JSON."""
    options = args[:args.index("--")] if "--" in args else args
    return "--json" in options


class Exit(Exception):
    """End the command with *status* (what ``typer.Exit`` is to a Typer command, for
    the code of the hot commands, which both paths run)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = int(status)


def failure(exc: BaseException, as_json: bool, command: str | None = None) -> int | None:
    """*exc* told as engram tells a failure (one line on stderr), and the exit status;
    None for what is not an EngramError nor an interruption (the caller's to tell).

    A ``bad_request`` (a usage error, exit 2: the command line or a value in it, found
    by the command or by the daemon) names the help of *command* (``engram lock
    acquire``), as the parser's own errors do."""
    from engram_cli.client.errors import EngramError, ExitCode

    if isinstance(exc, Exit):
        return exc.status
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, BrokenPipeError):
        # The reader went away (`engram ... | head`); not our failure.
        sys.stderr.close()
        return ExitCode.OK
    if not isinstance(exc, EngramError) or os.environ.get("ENGRAM_DEBUG") == "1":
        return None
    from engram_cli.cli import output

    message = str(exc)
    if command is not None and str(exc.code) == "bad_request":
        message += help_hint(command)
    output.error(message, code=str(exc.code), exit_status=int(exc.exit_code),
                 as_json=as_json)
    return int(exc.exit_code)


def help_hint(command: str) -> str:
    """What every usage error ends with: the help to read."""
    return f" (try '{command} --help')"


def internal_error(exc: Exception, as_json: bool) -> int:
    """An unexpected exception as one line (ENGRAM_DEBUG=1: the caller re-raises it)."""
    from engram_cli.cli import output
    from engram_cli.client.errors import ExitCode

    output.error(f"internal error: {type(exc).__name__}: {exc} "
                 "(run with ENGRAM_DEBUG=1 for the traceback)",
                 code="internal", exit_status=ExitCode.ERROR, as_json=as_json)
    return ExitCode.ERROR


def end_process(status: int) -> NoReturn:
    """Exit with *status*, skipping the interpreter's teardown when it has nothing to do.

    Freeing every module and object one by one at exit costs a short command about as
    much as all of engram's own imports (~10 ms here); the kernel frees a process at
    once. So once the output is flushed, a process with no other thread and no exit
    handler (such as logging's, which a command may have set up) ends with ``_exit``;
    any other ends the normal way.
    """
    threading = sys.modules.get("threading")
    handlers = getattr(atexit, "_ncallbacks", lambda: 1)()  # CPython's count
    if handlers == 0 and (threading is None or threading.active_count() == 1):
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # let the normal exit meet (and report) it
        else:
            os._exit(status)
    sys.exit(status)
