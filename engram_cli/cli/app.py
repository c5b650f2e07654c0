"""The root of the ``engram`` command line: global options, command groups, exit codes.

Any :class:`~engram_cli.client.errors.EngramError` a command raises becomes one line on
stderr and its exit status, here and nowhere else; ``ENGRAM_DEBUG=1`` shows the
traceback instead.
"""

# No `from __future__ import annotations` here nor in commands/info.py: Typer reads the
# signatures of the root and of `ping` at every start, and string annotations cost it an
# eval() each.

import importlib
import os
import sys
from collections.abc import Mapping
from typing import Annotated, Any, NoReturn

import typer
import typer.core
import typer.models

from engram_cli.cli import output
from engram_cli.cli.context import CliContext
from engram_cli.cli.exits import (
    COMPLETE_VAR,
    Exit,
    end_process,
    failure,
    help_hint,
    internal_error,
    wants_json,
)
from engram_cli.client.errors import EngramError, ExitCode

EXIT_CODES_HELP = (
    "Exit status: 0 success, 1 error, 2 usage, 3 not found, "
    "4 conflict or lock held, 5 timeout, 6 lease lost (lock run), 69 daemon unavailable, "
    "74 damaged journal, 75 disk full; "
    "lock run: 126 CMD cannot run, 127 CMD not found."
)

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module in engram_cli.cli.commands, its Typer sub-app or command function)
    "help": ("info", "help_"),
    "ping": ("info", "ping"),
    "status": ("info", "status"),
    "version": ("info", "version"),
    "stats": ("info", "stats"),
    "doctor": ("info", "doctor"),
    "daemon": ("daemon", "app"),
    "cluster": ("cluster", "app"),
    "unit": ("unit", "app"),
    "context": ("context", "app"),
    "lock": ("lock", "app"),
    "hooks": ("hooks", "app"),
    "agent": ("agent", "app"),
    "send": ("mail", "send"),
    "inbox": ("mail", "inbox"),
    "ack": ("mail", "ack"),
    "task": ("task", "app"),
    "prime": ("prime", "prime"),
    "agents": ("prime", "agents"),
    "mcp": ("mcp", "mcp"),
    "gateway": ("gateway", "gateway"),
    "setup": ("setup", "setup"),
    "hook": ("hook", "app"),
    "search": ("search", "search"),
    "trace": ("search", "trace"),
    "watch": ("watch", "watch"),
    "wait": ("watch", "wait"),
    "backup": ("journal", "backup"),
    "verify": ("journal", "verify"),
    "restore": ("journal", "restore"),
    "gc": ("journal", "gc"),
    "bench": ("bench", "bench"),
}
"""Every command, loaded only when it runs (or when help lists them all)."""


class LazyGroup(typer.core.TyperGroup):
    """The root command group: imports a command's module and builds its command from
    its Typer definition only when that command is asked for, so that ``engram ping``
    pays for ``ping`` alone, not for every command's module and signature."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module_name, attribute = COMMANDS[cmd_name]
            module = importlib.import_module(f"engram_cli.cli.commands.{module_name}")
            target = getattr(module, attribute)
            if isinstance(target, typer.Typer):
                command = lazy_group(target)
            else:
                command = single_command(typer.models.CommandInfo(name=cmd_name,
                                                                  callback=target))
            command.name = cmd_name
            self.commands[cmd_name] = command
        return self.commands.get(cmd_name)


class LazyCommands(typer.core.TyperGroup):
    """A command group (``engram unit``) that builds a command from its definition only
    when it is asked for: typer reads the signature and evaluates the annotations of
    every command of a group it builds, which cost ``engram unit create`` more than
    the rest of its start-up."""

    definitions: dict[str, typer.models.CommandInfo]

    def list_commands(self, ctx: Any) -> list[str]:
        return [*self.definitions, *(name for name in self.commands
                                     if name not in self.definitions)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in self.definitions:
            command = single_command(self.definitions[cmd_name])
            command.name = cmd_name
            self.commands[cmd_name] = command
        return self.commands.get(cmd_name)


def lazy_group(target: typer.Typer) -> Any:
    """*target*'s group (its own options, help and sub-groups) without building its
    commands until they are asked for."""
    definitions = {info.name or typer.main.get_command_name(info.callback.__name__): info
                   for info in target.registered_commands if info.callback is not None}
    commands, target.registered_commands = target.registered_commands, []
    try:
        group = typer.main.get_group(target)
    finally:
        target.registered_commands = commands
    group.__class__ = LazyCommands
    assert isinstance(group, LazyCommands)
    group.definitions = definitions
    return group


def single_command(info: typer.models.CommandInfo) -> Any:
    """The click command typer builds for one definition."""
    holder = typer.Typer(add_completion=False)
    holder.registered_commands.append(info)
    return typer.main.get_command(holder)


app = typer.Typer(
    cls=LazyGroup,
    name="engram",
    help="engram: a coordination journal for the agents, scripts and git hooks "
    "of one machine. Talks to engramd, starting it when needed.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from engram_cli import __version__
        from engramd.protocol import PROTOCOL_VERSION

        sys.stdout.write(f"engram {__version__} (protocol {PROTOCOL_VERSION})\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    socket: Annotated[str | None, typer.Option(
        "--socket", metavar="PATH", envvar="ENGRAM_SOCKET", show_envvar=True,
        help="The daemon's socket (default: $XDG_RUNTIME_DIR/engram/engramd.sock, "
        "else /tmp/engram-$UID/engramd.sock).")] = None,
    data_dir: Annotated[str | None, typer.Option(
        "--data-dir", metavar="DIR", envvar="ENGRAM_DATA_DIR", show_envvar=True,
        help="The journal of a daemon this command starts (default: "
        "$XDG_DATA_HOME/engram, else ~/.local/share/engram).")] = None,
    agent: Annotated[str | None, typer.Option(
        "--agent", metavar="NAME", envvar="ENGRAM_AGENT", show_envvar=True,
        help="Act as this agent (default: the user name).")] = None,
    json: Annotated[bool, typer.Option(
        "--json", help="Print JSON, one object per line, for every command.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version,
        help="Print engram's version and exit (engram version: the daemon's too).")] = False,
) -> None:
    cli = CliContext(socket=socket, agent=agent, json=json, data_dir=data_dir)
    ctx.obj = cli
    ctx.call_on_close(cli.close)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if COMPLETE_VAR in os.environ:
        # The shell asks for completions (see completions/); load the shell
        # classes only then, to keep ordinary start-up fast.
        from typer.completion import completion_init

        completion_init()
    as_json = wants_json(args)
    undecodable = not_utf8(args, os.environ)
    if undecodable:
        output.error(f"{undecodable} is not valid UTF-8: engram keeps text as UTF-8 (a "
                     "payload of any bytes comes from --file or stdin)"
                     + help_hint(_command_path(args)),
                     code="bad_request", exit_status=ExitCode.USAGE, as_json=as_json)
        return ExitCode.USAGE
    try:
        # Not standalone: the parser's errors come here, to be told in engram's one
        # line rather than in Typer's boxed panel.
        status = app(args=args, prog_name="engram", standalone_mode=False)
    except typer.TyperException as exc:
        return _usage_failure(exc, args, as_json)
    except typer.Abort:
        return 130
    except (EngramError, Exit, KeyboardInterrupt, BrokenPipeError) as exc:
        told = failure(exc, as_json, _command_path(args))
        if told is None:  # ENGRAM_DEBUG=1
            raise
        return told
    except SystemExit as exc:
        # Click ends a command whose reader went away (EPIPE) with exit 1, even when
        # not standalone; not our failure (SPECS: 0, as the fast start says).
        if isinstance(exc.__context__, BrokenPipeError):
            return failure(exc.__context__, as_json) or ExitCode.OK
        raise
    except Exception as exc:
        if os.environ.get("ENGRAM_DEBUG") == "1":
            raise
        return internal_error(exc, as_json)
    # A command that ends normally returns None; typer.Exit(n) comes back as n.
    return status if isinstance(status, int) else ExitCode.OK


def run() -> NoReturn:
    """The ``engram`` program: :func:`main`, then the process ends with its status."""
    status = main()
    end_process(status)


def _command_path(args: list[str]) -> str:
    """``engram GROUP COMMAND`` as far as *args* name them (after the root's options),
    for a hint where no parser's context says it: the parser failed before it knew the
    command (an option missing its value), or the command itself refused its line."""
    command: Any = typer.main.get_command(app)
    takes_value = {name for param in command.params if not getattr(param, "is_flag", True)
                   for name in param.opts}
    at = 0
    while at < len(args) and args[at].startswith("-") and args[at] != "--":
        at += 2 if args[at] in takes_value else 1
    words = ["engram"]
    for arg in args[at:]:
        found = command.get_command(None, arg) if hasattr(command, "get_command") else None
        if found is None:
            break
        words.append(arg)
        command = found
    return " ".join(words)


PATH_OPTIONS = frozenset({"--file", "-f", "--socket", "--data-dir", "--repo", "--jwt-jwks",
                          "--jwt-public-key", "--jwt-secret-file"})
"""Options whose value names a file: a file name may be any bytes."""
TEXT_VARIABLES = ("ENGRAM_AGENT", "ENGRAM_TOKEN")


def not_utf8(args: list[str], env: Mapping[str, str]) -> str | None:
    """What of the command line (before ``--``, which is another program's) or of the
    variables engram reads as text is not valid UTF-8, named for the user; None when
    all is. (Python hands such bytes over as lone surrogates.)"""
    options = args[:args.index("--")] if "--" in args else args
    positional = [arg for arg in options if not arg.startswith("-")]
    file_argument = positional[:2] == ["unit", "import"]  # `engram unit import FILE`
    for index, arg in enumerate(options):
        previous = options[index - 1] if index else ""
        option = arg.partition("=")[0] if arg.startswith("--") else previous
        if not _surrogates(arg) or option in PATH_OPTIONS:
            continue
        if not option.startswith("-") and file_argument:
            continue
        shown = arg.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
        after = f" (after {previous})" if previous.startswith("-") else ""
        return f"the argument '{shown}'{after}"
    for name in TEXT_VARIABLES:
        if _surrogates(env.get(name, "")):
            return f"${name}"
    return None


def _surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _usage_failure(exc: typer.TyperException, args: list[str], as_json: bool) -> int:
    """The parser's complaint as one line, naming the help to read."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError":
        # `engram unit`: a group named without its command gets its help, as a
        # usage error (rich has printed it already; plain click leaves it to us).
        if not as_json and exc.format_message().strip() and ctx is not None:
            sys.stdout.write(ctx.get_help() + "\n")
        return ExitCode.USAGE
    message = " ".join(exc.format_message().split())
    command_path = ctx.command_path if ctx is not None else _command_path(args)
    message += help_hint(command_path)
    status = int(getattr(exc, "exit_code", ExitCode.USAGE))
    output.error(message, code="bad_request" if status == ExitCode.USAGE else "internal",
                 exit_status=status, as_json=as_json)
    return status
