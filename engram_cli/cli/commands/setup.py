"""``engram setup claude-code|codex|gemini|cursor``: wire a harness to engram (its MCP
server and the ``engram hook`` commands); see :mod:`engram_cli.doors.harness` and
:mod:`engram_cli.doors.tomlblock` for the formats."""

from __future__ import annotations

import json as jsonlib
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from engram_cli.cli import completion, context
from engram_cli.cli.options import JsonOption
from engram_cli.cli.output import note
from engram_cli.client import gitinfo, settings
from engram_cli.client.errors import BadRequest, EngramError, ExitCode, UsageProblem
from engram_cli.doors import harness, tomlblock
from engram_cli.doors.files import write_whole
from engramd.protocol import SocketPathTooLong, resolve_data_dir

BACKUP_SUFFIX = ".engram-backup"

HarnessArg = Annotated[str, typer.Argument(
    metavar="|".join(completion.HARNESSES), autocompletion=completion.harnesses,
    help="The harness to wire.")]


# -- setup --------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigFile:
    path: str
    install: Callable[[str], str]
    """The file's text (empty when absent) with engram's entries."""
    remove: Callable[[str], str]
    """The file's text without them."""
    root: str
    """The directory setup works in (the project's or home): a directory below it that
    holds nothing once engram's file is gone goes too."""
    json: bool = True
    """A JSON file: two texts are the same when they hold the same data."""
    command_lines: Callable[[str], list[list[str]]] = lambda text: []
    """engram's command lines in the file's text (hooks, the server), split into words."""

    def same(self, one: str, other: str) -> bool:
        if not self.json:
            return one == other
        return bool(strict_json(one or "{}") == strict_json(other or "{}"))


def strict_json(text: str) -> Any:
    """JSON as the standard says it, and no more: a key twice in one object (the last would
    silently win, and a hook of the user's vanish), NaN or Infinity, or nesting past the
    parser's depth are refused (ValueError) rather than rewritten."""
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                raise ValueError(f"the key {key!r:.60} appears twice in one object")
            seen[key] = value
        return seen

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return jsonlib.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except RecursionError:
        raise ValueError("nested too deep") from None


def _json_edit(change: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[str], str]:
    """An edit of a JSON object's text through *change* (the text as it was when nothing
    changes, however it is laid out)."""
    def edit(text: str) -> str:
        try:
            data = strict_json(text) if text.strip() else {}
        except ValueError as exc:
            raise harness.ConfigProblem(f"cannot read it as JSON ({exc})") from None
        if not isinstance(data, dict):
            raise harness.ConfigProblem("the file is not a JSON object")
        changed = change(data)
        if changed == data:
            return text
        return harness.dump_json(changed) if changed else ""
    return edit


def _engram_program() -> list[str]:
    """How the harness runs engram: its name when that finds this engram, else its path
    (or this Python with ``-m engram_cli``, when engram runs as a module)."""
    here = os.path.realpath(sys.argv[0])
    if here.endswith(".py"):
        return [sys.executable, "-m", "engram_cli"]
    found = shutil.which("engram")
    return ["engram"] if found and os.path.realpath(found) == here else [here]


def _json_lines(find: Callable[[dict[str, Any]], list[list[str]]]
                ) -> Callable[[str], list[list[str]]]:
    def lines(text: str) -> list[list[str]]:
        try:
            data = strict_json(text) if text.strip() else {}
        except ValueError:
            return []
        return find(data) if isinstance(data, dict) else []
    return lines


def config_files(runner: str, scope: str, guard: str,
                 daemon: tuple[str, str]) -> list[ConfigFile]:
    """The files setup writes for *runner* in *scope*, and how (SPECS.md §6.2): every
    engram command in them names the daemon's socket and data dir, *daemon*."""
    socket, data_dir = daemon
    engram = [*_engram_program(), "--socket", socket, "--data-dir", data_dir]
    rules = harness.HARNESSES[runner]
    specs = harness.hook_specs(runner, engram, guard)
    entry = harness.mcp_entry(engram, runner)
    home = os.path.expanduser("~")
    try:
        project = gitinfo.toplevel(os.getcwd())
    except gitinfo.GitError:
        project = os.getcwd()
    root = home if scope == "global" else project

    def install_hooks(data: dict[str, Any]) -> dict[str, Any]:
        return harness.install_hooks(data, specs, rules)

    def remove_hooks(data: dict[str, Any]) -> dict[str, Any]:
        return harness.remove_hooks(data, rules)

    def hook_lines(data: dict[str, Any]) -> list[list[str]]:
        return harness.hook_command_lines(data, rules)

    def servers(path: str, top: str, where: tuple[str, ...] = harness.SERVERS) -> ConfigFile:
        return ConfigFile(path, _json_edit(lambda data: harness.install_mcp(data, entry, where)),
                          _json_edit(lambda data: harness.remove_mcp(data, where)), top,
                          command_lines=_json_lines(
                              lambda data: harness.mcp_command_lines(data, where)))

    def hooks(path: str) -> ConfigFile:
        return ConfigFile(path, _json_edit(install_hooks), _json_edit(remove_hooks), root,
                          command_lines=_json_lines(hook_lines))

    if runner == "claude-code":
        settings = "settings.local.json" if scope == "local" else "settings.json"
        files = [hooks(os.path.join(root, ".claude", settings))]
        if scope == "project":
            return [*files, servers(os.path.join(root, ".mcp.json"), root)]
        where = ("projects", project, "mcpServers") if scope == "local" else harness.SERVERS
        return [*files, servers(os.path.join(home, ".claude.json"), home, where)]
    if runner == "codex":
        directory = os.path.join(root, ".codex")
        return [hooks(os.path.join(directory, "hooks.json")),
                ConfigFile(os.path.join(directory, "config.toml"),
                           lambda text: tomlblock.install_toml(text, entry),
                           tomlblock.remove_toml, root, json=False,
                           command_lines=tomlblock.command_lines)]
    if runner == "gemini":  # hooks and servers share one settings file
        return [ConfigFile(
            os.path.join(root, ".gemini", "settings.json"),
            _json_edit(lambda data: harness.install_mcp(install_hooks(data), entry)),
            _json_edit(lambda data: harness.remove_mcp(remove_hooks(data))), root,
            command_lines=_json_lines(lambda data: [*hook_lines(data),
                                                    *harness.mcp_command_lines(data)]))]
    directory = os.path.join(root, ".cursor")
    return [hooks(os.path.join(directory, "hooks.json")),
            servers(os.path.join(directory, "mcp.json"), root)]


def _this_shells_daemon(cli: context.CliContext) -> tuple[str, str]:
    """The socket and the data dir this shell's engram resolves (its options, else its
    environment): what every command setup writes names."""
    try:
        socket = settings.find_socket(cli.socket, os.environ)
    except SocketPathTooLong as exc:
        raise UsageProblem(str(exc)) from None
    return socket, resolve_data_dir(cli.data_dir, os.environ)


def _moved(runner: str, daemon: tuple[str, str], found: list[list[list[str]]], *,
           apply: bool) -> str | None:
    """One line when the engram commands in the files name another socket or data dir
    than *daemon* (this shell's), else None."""
    named: dict[str, set[str]] = {option: set() for option in harness.WHERE_OPTIONS}
    for lines in found:
        for line in lines:
            for option, value in harness.where(line).items():
                named[option].add(value)
    differences = [(f"{what} {', '.join(sorted(named[option]))}", f"{what} {now}")
                   for option, what, now in zip(harness.WHERE_OPTIONS, ("socket", "data dir"),
                                                daemon, strict=True)
                   if named[option] and named[option] != {now}]
    if not differences:
        return None
    then = ", ".join(old for old, _ in differences)
    here = ", ".join(new for _, new in differences)
    if apply:
        return (f"{runner}'s hooks and MCP server went to the engramd at {then}; they now go "
                f"to this shell's ({here})")
    return (f"{runner}'s hooks and MCP server go to the engramd at {then}, not to this "
            f"shell's ({here}): setup without --check points them at this shell's")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", newline="") as file:
            return file.read()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise BadRequest(f"{path}: not UTF-8 text; fix or move it first") from None
    except OSError as exc:
        raise EngramError(f"cannot read {path}: {exc.strerror}") from None


def _write_atomically(path: str, text: str, like: str | None = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_whole(path, text.encode("utf-8"), like=like)


def _plan(file: ConfigFile, remove: bool) -> tuple[str | None, str | None]:
    """The file's text now and what it is to become (None: absent)."""
    now = _read(file.path)
    try:
        if not remove:
            return now, file.install(now or "")
        if now is None:
            return None, None
        backup = _read(file.path + BACKUP_SUFFIX)
        stripped = file.remove(now)
        if backup is not None and file.same(file.remove(file.install(backup)), stripped):
            return now, backup  # nothing else changed since: what was there, byte for byte
    except harness.ConfigProblem as exc:
        raise BadRequest(f"{file.path}: {exc}; fix or move it first") from None
    if backup is None and not stripped.strip():
        return now, None  # engram made this file
    return now, stripped


def _apply(file: ConfigFile, now: str | None, wanted: str | None, remove: bool) -> None:
    backup = file.path + BACKUP_SUFFIX
    if wanted is None:
        os.unlink(file.path)
        _prune(os.path.dirname(file.path), file.root)
    else:
        if not remove and now is not None and not os.path.exists(backup):
            # The first install keeps what was there, as private as it was.
            _write_atomically(backup, now, like=file.path)
        _write_atomically(file.path, wanted)
    if remove and os.path.exists(backup):
        os.unlink(backup)


def _prune(directory: str, root: str) -> None:
    """Remove *directory* and its parents below *root* while they are empty."""
    root = os.path.abspath(root)
    directory = os.path.abspath(directory)
    while directory.startswith(root + os.sep):
        try:
            os.rmdir(directory)
        except OSError:
            return
        directory = os.path.dirname(directory)


def setup(
    ctx: typer.Context,
    runner: HarnessArg,
    global_: Annotated[bool, typer.Option(
        "--global", help="Your user configuration (~/.claude, ~/.codex, ~/.gemini, "
        "~/.cursor) rather than the project's.")] = False,
    project: Annotated[bool, typer.Option(
        "--project", help="The repository's configuration, shared through git (the "
        "default).")] = False,
    local: Annotated[bool, typer.Option(
        "--local", help="Claude Code: yours, in this repository only "
        "(.claude/settings.local.json, not committed; the server in ~/.claude.json "
        "under the project).")] = False,
    guard: Annotated[str, typer.Option(
        "--guard", metavar="off|warn|block",
        help="Before a file edit: warn about others' leases on it, or deny the edit.")
    ] = "warn",
    check: Annotated[bool, typer.Option(
        "--check", help="Change nothing; exit 1 when anything is missing or stale.")] = False,
    remove: Annotated[bool, typer.Option(
        "--remove", help="Take engram out again (restores what was there).")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Say what would change, change nothing.")] = False,
    json: JsonOption = False,
) -> None:
    """Wire a coding agent's harness to engram: its MCP server and its hooks.

    Hooks: the brief at session start (also after a resume or compaction); a line
    on a prompt when mail is unread (not Cursor: it takes none); a lease guard on
    file edits; at stop, the wake path (Claude Code: a background hook wakes the
    agent when mail comes; the others: the turn goes on when mail waits, never
    twice in a row).

    Every engram command written names the daemon this shell reaches (--socket and
    --data-dir as resolved here), so the hooks and the MCP server reach it whatever
    environment the harness gives them; --check says when this shell's changed.

    Files are merged, never clobbered, and each is read back before it replaces
    the old one; a backup of each (as private as the file) stays beside it until
    --remove, which puts back what was there. A file or key of a shape setup does
    not expect stops it with exit 2, naming them, before anything is written.

    Examples:

      engram setup claude-code           # .claude/settings.json, .mcp.json
      engram setup claude-code --local   # .claude/settings.local.json, ~/.claude.json
      engram setup codex --global        # ~/.codex/hooks.json, config.toml
      engram setup gemini                # .gemini/settings.json
      engram setup cursor                # .cursor/hooks.json, .cursor/mcp.json
      engram setup claude-code --check   # exit 1 if missing or stale
      engram setup claude-code --remove
    """
    if runner not in completion.HARNESSES:
        raise UsageProblem(f"unknown harness {runner!r} (one of {', '.join(completion.HARNESSES)})")
    if guard not in harness.GUARDS:
        raise UsageProblem(f"--guard is one of {', '.join(harness.GUARDS)}, not {guard!r}")
    if global_ + project + local > 1:
        raise UsageProblem("give one of --global, --project and --local")
    if local and runner != "claude-code":
        raise UsageProblem(f"--local is Claude Code's scope; {runner} has --project and "
                           "--global")
    if check and remove:
        raise UsageProblem("give --check or --remove, not both")
    cli = context.get(ctx)
    out = cli.output(json)
    scope = "global" if global_ else "local" if local else "project"
    daemon = _this_shells_daemon(cli)
    # Every file is planned (read, edited, read back) before any is written.
    plans = [(file, *_plan(file, remove))
             for file in config_files(runner, scope, guard, daemon)]
    moved = None if remove else _moved(
        runner, daemon, [file.command_lines(now or "") for file, now, _ in plans],
        apply=not (check or dry_run))
    stale = []
    for file, now, wanted in plans:
        changes = now != wanted
        action = ("unchanged" if not changes else "remove" if wanted is None
                  else "restore" if remove and wanted == _read(file.path + BACKUP_SUFFIX)
                  else "update" if now is not None else "create")
        if changes and not (check or dry_run):
            _apply(file, now, wanted, remove)
        if changes:
            stale.append(file.path)
        if out.json:
            out.json_line({"path": file.path, "action": action,
                           "applied": changes and not (check or dry_run)})
        else:
            verb = action if not (check or dry_run) or not changes else f"would {action}"
            out.line(f"{verb}: {file.path}")
    if moved:
        note(moved)
    if check and stale:
        raise typer.Exit(ExitCode.ERROR)
