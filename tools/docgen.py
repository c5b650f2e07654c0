"""Generate the shell completions, the man pages and the fast start's option table from
the code itself.

``python -m tools.docgen completions DIR``, ``... man DIR`` and ``... fast FILE`` (the
make targets ``completions``, ``man`` and ``fasttable``). The command tree comes from the Typer app
and the daemon's options from its argparse parser and settings table, so the
checked-in files can be regenerated and compared by the tests.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Iterator
from typing import Any

import typer
from typer.completion import get_completion_script

from engram_cli import __version__
from engram_cli.cli.app import EXIT_CODES_HELP, app
from engram_cli.cli.exits import COMPLETE_VAR
from engramd.config import SETTINGS
from engramd.main import build_parser

PROG = "engram"
SHELLS = {"bash": "engram.bash", "zsh": "_engram", "fish": "engram.fish"}
# Pinned, so regenerating on another day does not change the files.
DATE = "2026-11-23"


def completion_scripts() -> dict[str, str]:
    return {
        filename: get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR,
                                        shell=shell) + "\n"
        for shell, filename in SHELLS.items()
    }


# -- roff -------------------------------------------------------------------


def _roff(text: str) -> str:
    """Escape text for roff: backslashes, leading dots and quotes, hyphens. (A bracket
    escaped for rich's markup, ``\\[``, is a bracket.)"""
    text = text.replace("\\[", "[").replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        "\\&" + line if line.startswith((".", "'")) else line
        for line in text.splitlines() or [""]
    )


def _help_roff(text: str) -> list[str]:
    """A command's help as roff paragraphs; an indented paragraph (the examples) is kept
    line for line, as the terminal help shows it."""
    lines: list[str] = []
    for index, paragraph in enumerate(inspect.cleandoc(text).split("\n\n")):
        rows = paragraph.splitlines()
        if rows and all(row.startswith(" ") for row in rows):
            lines += [".RS", ".nf", *(_roff(row.strip()) for row in rows), ".fi", ".RE"]
        else:
            lines += ([] if index == 0 else [".PP"]) + [_roff(paragraph)]
    return lines


def _walk(command: Any, path: list[str],
          ctx: typer.Context) -> Iterator[tuple[list[str], Any, typer.Context]]:
    yield path, command, ctx
    for name in sorted(subcommands(command, ctx)):
        sub = command.get_command(ctx, name)
        sub_ctx = typer.Context(sub, info_name=name, parent=ctx)
        yield from _walk(sub, [*path, name], sub_ctx)


def subcommands(command: Any, ctx: typer.Context) -> list[str]:
    """The names of a group's commands (loading them: the root group loads lazily)."""
    list_commands = getattr(command, "list_commands", None)
    return list(list_commands(ctx)) if list_commands is not None else []


def _options(command: Any, ctx: typer.Context) -> list[tuple[str, str]]:
    records = []
    for param in getattr(command, "params", []):
        record = param.get_help_record(ctx)
        if record is not None:
            records.append(record)
    return records


def _arguments(command: Any) -> str:
    return " ".join(param.human_readable_name.upper()
                    for param in getattr(command, "params", [])
                    if param.param_type_name == "argument")


ENGRAM_ENVIRONMENT = [
    ("ENGRAM_SOCKET", "The daemon's socket, like --socket."),
    ("ENGRAM_AGENT", "The agent to act as, like --agent (default: the user name)."),
    ("ENGRAM_DATA_DIR", "The data dir of a daemon that engram starts."),
    ("ENGRAM_NO_AUTOSTART", "Set to 1 to never start engramd automatically."),
    ("ENGRAM_DEBUG", "Set to 1 to show tracebacks instead of one-line errors."),
    ("XDG_RUNTIME_DIR", "Holds the default socket directory, engram/."),
    ("XDG_DATA_HOME", "Holds the default data dir, engram/ (default ~/.local/share)."),
    ("NO_COLOR", "Set to anything to turn colour off."),
]


def engram_man_page() -> str:
    root = typer.main.get_command(app)
    root_ctx = typer.Context(root, info_name=PROG)
    out = [
        f'.TH ENGRAM 1 "{DATE}" "engram {__version__}" "User Commands"',
        ".SH NAME",
        "engram \\- coordination journal for the agents, scripts and git hooks of one machine",
        ".SH SYNOPSIS",
        ".B engram",
        "[\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
        _roff(
            "engram talks to engramd, the local daemon that keeps the journal, leases, "
            "live stream and search index, over a Unix socket. When no daemon answers, "
            "engram starts one in the background (see ENGRAM_NO_AUTOSTART). Output is "
            "plain text when piped, formatted on a terminal, and JSON with --json."
        ),
        ".SH GLOBAL OPTIONS",
    ]
    for opts, help_text in _options(root, root_ctx):
        out += [".TP", f".B {_roff(opts)}", _roff(help_text)]
    out.append(".SH COMMANDS")
    for path, command, ctx in _walk(root, [], root_ctx):
        if not path:
            continue
        is_group = bool(subcommands(command, ctx))
        arguments = _arguments(command)
        synopsis = " ".join([PROG, *path]) + (" COMMAND" if is_group else " [OPTIONS]")
        if arguments:
            synopsis += " " + arguments
        out += [".SS " + _roff(synopsis), *_help_roff(command.help or "")]
        for opts, help_text in _options(command, ctx):
            if opts.startswith("-h, --help"):
                continue
            out += [".TP", f".B {_roff(opts)}", _roff(help_text)]
    out += [".SH EXIT STATUS", _roff(EXIT_CODES_HELP)]
    out += [".TP", ".B 0", "Success.", ".TP", ".B 1", "Error.",
            ".TP", ".B 2", "Usage: bad command line.",
            ".TP", ".B 3", "Not found.", ".TP", ".B 4", "Conflict, or lock held by another.",
            ".TP", ".B 5", "Timeout.", ".TP", ".B 69", "The daemon is unavailable."]
    out.append(".SH ENVIRONMENT")
    for name, text in ENGRAM_ENVIRONMENT:
        out += [".TP", f".B {name}", _roff(text)]
    out += [
        ".SH FILES",
        ".TP", ".I $XDG_RUNTIME_DIR/engram/engramd.sock",
        _roff("The daemon's socket (else /tmp/engram-$UID/engramd.sock)."),
        ".TP", ".I $XDG_DATA_HOME/engram/engramd.log",
        _roff("The log of a daemon that engram started."),
        ".SH EXAMPLES",
        ".nf",
        _roff("engram ping\nengram status --json\nengram daemon logs -f\n"
              "ENGRAM_NO_AUTOSTART=1 engram ping || echo 'daemon down'"),
        ".fi",
        ".SH SEE ALSO",
        ".BR engramd (8)",
    ]
    return "\n".join(out) + "\n"


def engramd_man_page() -> str:
    parser = build_parser()
    out = [
        f'.TH ENGRAMD 8 "{DATE}" "engram {__version__}" "System Administration"',
        ".SH NAME",
        "engramd \\- the engram daemon",
        ".SH SYNOPSIS",
        ".B engramd",
        "[\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        _roff(
            "engramd owns the engram journal and serves clients over a Unix socket that "
            "only its owner can reach (directory 0700, socket 0600; peers of another uid "
            "are refused). It runs in the foreground; engram(1) starts it detached when "
            "needed. A lock file in the data dir keeps two daemons from sharing it."
        ),
        ".SH OPTIONS",
    ]
    for action in parser._actions:
        if not action.option_strings:
            continue
        flags = ", ".join(action.option_strings)
        if action.metavar:
            flags += f" {action.metavar}"
        text = (action.help or "") % {"prog": "engramd"} if action.help else ""
        if isinstance(action, argparse._VersionAction):
            text = "print the version and exit"
        out += [".TP", f".B {_roff(flags)}", _roff(text)]
    out += [
        ".SH CONFIGURATION",
        _roff(
            "Values come from the defaults, then the TOML file, then ENGRAM_<KEY> "
            "environment variables (the key upper-cased, dots as underscores), then "
            "--set KEY=VALUE flags. Unknown keys and bad values are errors; numbers are "
            "finite, in ASCII digits, an int at most 2^63-1 and a float at most 3155760000 "
            "(100 years of seconds). "
            "engramd --print-config shows each value and its source."
        ),
    ]
    for setting in SETTINGS:
        default = setting.default
        out += [".TP", f".B {_roff(setting.key)} \\fR({setting.kind.__name__}, default "
                f"{_roff(str(default))}; {setting.env_var})",
                _roff(setting.help)]
    out += [".TP", ".B [[retention.policy]] \\fR(array of tables, config file only)",
            _roff("Retention policies: context (an id, or a prefix ending in *), max_age "
                  "(\"30d\", \"12h\", or seconds), max_units. Units past a policy are "
                  "archived (gzip'd JSON lines in retention.archive_dir) and then removed "
                  "from the journal and the search indexes; pinned units, tasks not done "
                  "and messages awaiting acknowledgements stay. engram gc runs them now.")]
    out += [
        ".SH SIGNALS",
        ".TP", ".B SIGTERM, SIGINT",
        _roff("Stop gracefully: stop accepting, finish in-flight requests, close storage, "
              "remove the socket, exit 0."),
        ".SH EXIT STATUS",
        ".TP", ".B 0", "Stopped cleanly.",
        ".TP", ".B 1", _roff("Could not start (data dir or socket in use, unsafe directory) "
                             "or failed."),
        ".TP", ".B 2", "Bad arguments or configuration.",
        ".TP", ".B 3", _roff("The journal is damaged: the one line on standard error names "
                             "the file, the offset and the fix (engramd --repair). With "
                             "--verify-backup: the backup is damaged."),
        ".SH FILES",
        ".TP", ".I $XDG_RUNTIME_DIR/engram/engramd.sock",
        _roff("The socket (else /tmp/engram-$UID/engramd.sock), with engramd.sock.lock."),
        ".TP", ".I $XDG_DATA_HOME/engram/",
        _roff("The data dir (default ~/.local/share/engram): engramd.lock, engramd.log."),
        ".TP", ".I $XDG_CONFIG_HOME/engram/config.toml",
        _roff("The configuration file, read when it exists."),
        ".SH SEE ALSO",
        ".BR engram (1)",
    ]
    return "\n".join(out) + "\n"


def man_pages() -> dict[str, str]:
    return {"engram.1": engram_man_page(), "engramd.8": engramd_man_page()}


# -- the fast start's table ------------------------------------------------------

FAST_FILE = "engram_cli/cli/fasttable.py"
"""Where ``make fasttable`` writes :func:`fast_table` (tests/cli/test_fast.py compares)."""


def _fast_param(param: Any) -> tuple[Any, ...]:
    """One parameter as the fast start parses it: (name, kind, opts, flag, multiple,
    nargs, type, min, max, envvar, default, required)."""
    # (Typer carries its own copy of click: its types are known by their class names.)
    kind = param.param_type_name
    flag = bool(getattr(param, "is_flag", False))
    low = high = None
    value_type = param.type
    type_class = type(value_type).__name__
    if type_class in ("IntRange", "FloatRange"):
        assert not (value_type.min_open or value_type.max_open or value_type.clamp), param
        low, high = value_type.min, value_type.max
    if flag:
        assert not param.secondary_opts and getattr(param, "flag_value", True) is True, param
        type_name = "bool"
    elif type_class in ("IntParamType", "IntRange"):
        type_name = "int"
    elif type_class in ("FloatParamType", "FloatRange"):
        type_name = "float"
    elif type_class == "StringParamType":
        type_name = "str"
    else:  # a type the fast start would not convert as click does
        raise ValueError(f"{param.name}: no fast parsing for {value_type!r}")
    envvar = getattr(param, "envvar", None)
    assert envvar is None or isinstance(envvar, str), param
    default = param.default
    assert default is None or isinstance(default, bool | int | float | str), param
    return (param.name, kind, tuple(param.opts), flag, bool(param.multiple), param.nargs,
            type_name, low, high, envvar, default, bool(param.required))


def fast_table() -> str:
    """The options of the root and of every hot command, from the Typer tree: the
    module the fast start (:mod:`engram_cli.cli.fast`) parses the command line with."""
    from engram_cli.cli.fastcommands import HOT

    root = typer.main.get_command(app)
    root_ctx = typer.Context(root, info_name=PROG)
    lines = [
        '"""The options of the root and of the hot commands, generated from the Typer',
        "command tree by ``make fasttable`` (tools/docgen.py; tests/cli/test_fast.py checks",
        'that it is current): do not edit. Each parameter is (name, kind, opts, flag,',
        "multiple, nargs, type, min, max, envvar, default, required); each command is",
        '(allow_interspersed_args, parameters)."""',
        "",
        "# fmt: off",
        "ROOT = (",
    ]
    lines += [f"    {_fast_param(param)!r}," for param in root.params
              if param.expose_value or param.name == "version"]
    lines += [")", "", "COMMANDS = {"]
    for path in HOT:
        command: Any = root
        ctx = root_ctx
        for word in path:
            command = command.get_command(ctx, word)
            ctx = typer.Context(command, info_name=word, parent=ctx)
        # A command's context_settings are what its Context takes (lock run's
        # allow_interspersed_args=False is there, not on the command).
        interspersed = command.context_settings.get("allow_interspersed_args",
                                                     command.allow_interspersed_args)
        lines.append(f"    {path!r}: ({bool(interspersed)!r}, (")
        lines += [f"        {_fast_param(param)!r}," for param in command.params]
        lines.append("    )),")
    lines += ["}", ""]
    return "\n".join(lines)


def write(files: dict[str, str], directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(directory, name), "w", encoding="utf-8") as file:
            file.write(text)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("completions", "man", "fast"):
        print("usage: python -m tools.docgen completions|man DIR | fast FILE", file=sys.stderr)
        return 2
    kind, directory = args
    if kind == "fast":
        with open(directory, "w", encoding="utf-8") as file:
            file.write(fast_table())
        return 0
    write(completion_scripts() if kind == "completions" else man_pages(), directory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
