"""``engram setup claude-code|codex``: wire a harness to engram (its MCP server and the
``engram hook`` commands); see :mod:`engram_cli.doors.harness` for the formats."""

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
from engram_cli.cli.context import JsonOption
from engram_cli.client import gitinfo
from engram_cli.client.errors import EngramError, ExitCode, UsageProblem
from engram_cli.doors import harness
from engram_cli.doors.files import write_whole

BACKUP_SUFFIX = ".engram-backup"

HarnessArg = Annotated[str, typer.Argument(
    metavar="claude-code|codex", autocompletion=completion.harnesses,
    help="The harness to wire.")]


# -- setup --------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigFile:
    path: str
    install: Callable[[str], str]
    """The file's text (empty when absent) with engram's entries."""
    remove: Callable[[str], str]
    """The file's text without them."""


def _json_edit(change: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[str], str]:
    def edit(text: str) -> str:
        try:
            data = jsonlib.loads(text) if text.strip() else {}
        except ValueError as exc:
            raise EngramError(f"cannot read it as JSON ({exc}); fix or move it first") from None
        if not isinstance(data, dict):
            raise EngramError("it is not a JSON object; fix or move it first")
        changed = change(data)
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


def config_files(runner: str, where: str, guard: str) -> list[ConfigFile]:
    engram = _engram_program()
    specs = harness.hook_specs(runner, engram, guard)
    home = os.path.expanduser("~")
    if where == "global":
        root = home
    else:
        try:
            root = gitinfo.toplevel(os.getcwd())
        except gitinfo.GitError:
            root = os.getcwd()
    hooks = (_json_edit(lambda data: harness.install_hooks(data, specs)),
             _json_edit(harness.remove_hooks))
    if runner == "claude-code":
        settings = os.path.join(root, ".claude", "settings.json")
        servers = os.path.join(home, ".claude.json") if where == "global" \
            else os.path.join(root, ".mcp.json")
        return [ConfigFile(settings, *hooks),
                ConfigFile(servers, _json_edit(lambda data: harness.install_mcp(data, engram)),
                           _json_edit(harness.remove_mcp))]
    directory = os.path.join(root, ".codex")
    return [ConfigFile(os.path.join(directory, "hooks.json"), *hooks),
            ConfigFile(os.path.join(directory, "config.toml"),
                       lambda text: harness.install_toml(text, engram), harness.remove_toml)]


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EngramError(f"cannot read {path}: {exc.strerror}") from None


def _write_atomically(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_whole(path, text.encode("utf-8"))


def _plan(file: ConfigFile, remove: bool) -> tuple[str | None, str | None]:
    """The file's text now and what it is to become (None: absent)."""
    now = _read(file.path)
    if not remove:
        return now, file.install(now or "")
    backup = _read(file.path + BACKUP_SUFFIX)
    if now is None:
        return None, None
    stripped = file.remove(now)
    if backup is not None and file.remove(backup) == stripped:
        return now, backup  # nothing else changed since: what was there, byte for byte
    if backup is None and not stripped.strip():
        return now, None  # engram made this file
    return now, stripped


def _apply(file: ConfigFile, now: str | None, wanted: str | None, remove: bool) -> None:
    backup = file.path + BACKUP_SUFFIX
    if wanted is None:
        os.unlink(file.path)
    else:
        if not remove and now is not None and not os.path.exists(backup):
            _write_atomically(backup, now)  # the first install keeps what was there
        _write_atomically(file.path, wanted)
    if remove and os.path.exists(backup):
        os.unlink(backup)


def setup(
    ctx: typer.Context,
    runner: HarnessArg,
    global_: Annotated[bool, typer.Option(
        "--global", help="Your user configuration (~/.claude, ~/.codex) rather than the "
        "project's.")] = False,
    project: Annotated[bool, typer.Option(
        "--project", help="The repository's configuration (the default).")] = False,
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
    on a prompt when mail is unread; a lease guard before file edits; at stop, the
    wake path (Claude Code: a background hook wakes the agent when mail comes;
    Codex: the turn goes on when mail waits, never twice in a row).

    Files are merged, never clobbered; a backup of each stays beside it until
    --remove, which puts back what was there.

    Examples:

      engram setup claude-code           # .claude/settings.json, .mcp.json
      engram setup codex --global        # ~/.codex/hooks.json, config.toml
      engram setup claude-code --check   # exit 1 if missing or stale
      engram setup claude-code --remove
    """
    if runner not in completion.HARNESSES:
        raise UsageProblem(f"unknown harness {runner!r} (one of {', '.join(completion.HARNESSES)})")
    if guard not in harness.GUARDS:
        raise UsageProblem(f"--guard is one of {', '.join(harness.GUARDS)}, not {guard!r}")
    if global_ and project:
        raise UsageProblem("give --global or --project, not both")
    if check and remove:
        raise UsageProblem("give --check or --remove, not both")
    out = context.get(ctx).output(json)
    stale = []
    for file in config_files(runner, "global" if global_ else "project", guard):
        now, wanted = _plan(file, remove)
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
    if check and stale:
        raise typer.Exit(ExitCode.ERROR)
