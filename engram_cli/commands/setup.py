"""``engram setup claude-code|codex`` (wire a harness) and ``engram hook ...`` (what the
harness runs): see :mod:`engram_cli.harness` for the formats."""

from __future__ import annotations

import contextlib
import fcntl
import json as jsonlib
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from engram_cli import briefview, context, gitinfo, harness
from engram_cli.client import Client
from engram_cli.context import JsonOption
from engram_cli.errors import EngramError, ExitCode, UsageProblem
from engram_cli.session import SESSION_PID_VAR, agent_name, session_pid
from engramd.protocol import agentwork

BACKUP_SUFFIX = ".engram-backup"
HOOK_TIMEOUT = 2.0
"""Seconds a hook waits for any answer of the daemon: a hook must never stall the agent."""

HarnessArg = Annotated[str, typer.Argument(
    metavar="claude-code|codex", help="The harness to wire.")]


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
    temporary = f"{path}.engram-{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    if os.path.exists(path):
        shutil.copymode(path, temporary)
    os.replace(temporary, path)


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

    Hooks: at session start the brief (also after a resume or compaction); on each
    prompt a line when mail is unread; before a file edit a lease guard; at stop the
    wake path (Claude Code: a background hook that wakes the agent when mail comes;
    Codex: the turn goes on when mail is waiting, never twice in a row). Files are
    merged, never clobbered; a backup of each is kept beside it until --remove.

    Examples:

      engram setup claude-code             # .claude/settings.json and .mcp.json here
      engram setup codex --global          # ~/.codex/hooks.json and ~/.codex/config.toml
      engram setup claude-code --check     # exit 1 when something is missing or stale
      engram setup claude-code --remove
    """
    if runner not in harness.HARNESSES:
        raise UsageProblem(f"unknown harness {runner!r} (one of {', '.join(harness.HARNESSES)})")
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


# -- hooks ---------------------------------------------------------------------------

hook_app = typer.Typer(
    help="What a harness runs (engram setup installs them): read the hook's JSON on stdin, "
         "answer in the harness's format, and exit 0 with no output when engramd cannot "
         "be reached.", no_args_is_help=True, add_completion=False)

HarnessOption = Annotated[str, typer.Option(
    "--harness", metavar="claude-code|codex", help="Which harness runs the hook.")]


def _hook_input() -> dict[str, Any]:
    try:
        data = jsonlib.loads(sys.stdin.read() or "{}") if not sys.stdin.isatty() else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _failing_open() -> Iterator[None]:
    """A hook never breaks the agent's session: engram's failures end it quietly."""
    try:
        yield
    except (EngramError, OSError):
        raise typer.Exit(0) from None


def _client(ctx: typer.Context, runner: str, timeout: float = HOOK_TIMEOUT
            ) -> tuple[Client, str, int]:
    """A connected client acting as the session's agent, its name and its process."""
    cli = context.get(ctx)
    pid = session_pid()
    agent = agent_name(cli.agent, pid, runner)
    client = Client(cli.socket, agent_id=agent, client_name="engram-hook", timeout=timeout,
                    start_timeout=HOOK_TIMEOUT)
    client.connect()
    ctx.call_on_close(client.close)
    return client, agent, pid


def _emit(answer: dict[str, Any]) -> None:
    sys.stdout.write(jsonlib.dumps(answer) + "\n")
    sys.stdout.flush()


@hook_app.command("session-start")
def session_start(ctx: typer.Context, runner: HarnessOption = "claude-code",
                  max_chars: Annotated[int, typer.Option("--max-chars", min=500)] = 8000
                  ) -> None:
    """SessionStart: the brief as additional context; the session announced, and (Claude
    Code) ENGRAM_AGENT and ENGRAM_SESSION_PID exported to the session's shell commands."""
    hook_input = _hook_input()
    with _failing_open():
        client, agent, pid = _client(ctx, runner)
        client.announce_session(pid=pid, harness=runner)
        cwd = str(hook_input.get("cwd") or os.getcwd())
        brief = client.brief(files=gitinfo.changed_files(cwd))
    env_file = os.environ.get("CLAUDE_ENV_FILE")
    if env_file:
        with contextlib.suppress(OSError), open(env_file, "a", encoding="utf-8") as exports:
            exports.write(f"export ENGRAM_AGENT={agent}\nexport {SESSION_PID_VAR}={pid}\n")
    _emit(harness.additional_context("SessionStart", briefview.markdown(brief, max_chars)))


@hook_app.command("prompt")
def prompt(ctx: typer.Context, runner: HarnessOption = "claude-code") -> None:
    """UserPromptSubmit: one line of context when messages are unread; nothing otherwise."""
    _hook_input()
    with _failing_open():
        client, _, _ = _client(ctx, runner)
        counted = client.unread()
    if counted.unread:
        _emit(harness.additional_context(
            "UserPromptSubmit", f"engram: {counted.unread} unread message(s) for you: read "
            "them with the inbox tool or `engram inbox`."))


@hook_app.command("pre-edit")
def pre_edit(ctx: typer.Context, runner: HarnessOption = "claude-code",
             guard: Annotated[str, typer.Option("--guard", metavar="warn|block")] = "warn"
             ) -> None:
    """PreToolUse on file edits: another agent's lease on the file warns (context naming
    the holder) or, with --guard block, denies the edit with the reason."""
    hook_input = _hook_input()
    cwd = str(hook_input.get("cwd") or os.getcwd())
    paths = harness.edited_paths(hook_input)
    if not paths:
        return
    with _failing_open():
        client, agent, _ = _client(ctx, runner)
        states = client.list_locks()
    try:
        root = gitinfo.toplevel(cwd)
    except gitinfo.GitError:
        root = cwd
    held: list[str] = []
    holders: list[str] = []
    for path in paths:
        absolute = os.path.normpath(os.path.join(cwd, path))
        relative = os.path.relpath(absolute, root)
        for state in states:
            lease = state.lease
            if lease is not None and lease.holder != agent and (
                    agentwork.covers(lease.resource, relative)
                    or agentwork.covers(lease.resource, absolute)):
                held.append(f"{relative} is leased by {lease.holder}"
                            + (f" (pid {lease.holder_pid})" if lease.holder_pid else "")
                            + f" as {lease.resource} until {lease.expires_at:%H:%M:%S} UTC")
                holders.append(lease.holder)
    if not held:
        return
    reason = ("; ".join(held) + f". Ask (engram send --to {','.join(dict.fromkeys(holders))}) "
              "or wait for the lease to end.")
    if guard == "block":
        _emit(harness.deny_edit(reason))
    else:
        _emit(harness.additional_context("PreToolUse", f"engram warning: {reason}"))


@hook_app.command("stop")
def stop(ctx: typer.Context, runner: HarnessOption = "claude-code",
         wait: Annotated[float, typer.Option("--wait", min=0.0, max=86400.0,
                                             metavar="SECONDS")] = 3600.0) -> None:
    """Stop: the wake path. Claude Code (run in the background): wait up to --wait for a
    message and exit 2 when one comes (the harness wakes the agent), 0 otherwise; one
    waiter per agent. Codex: when mail is waiting, continue the turn, never twice in a
    row."""
    hook_input = _hook_input()
    if runner == "codex":
        if hook_input.get("stop_hook_active"):
            return  # the turn already went on for this stop: let the agent stop
        with _failing_open():
            client, _, _ = _client(ctx, runner)
            counted = client.unread()
        if counted.unread:
            _emit({"decision": "block", "reason": f"engram: {counted.unread} unread "
                   "message(s) arrived; read them with `engram inbox` before you stop."})
        return
    with _failing_open():
        client, agent, _ = _client(ctx, runner, timeout=HOOK_TIMEOUT)
        with _one_waiter(client.socket_path, agent) as alone:
            if not alone:
                return
            page = client.inbox(peek=True, wait=wait, limit=1)
    if page.messages:
        first = page.messages[0]
        sys.stderr.write(f"engram: a message from {first.agent_id} is waiting "
                         f"({page.unread + 1} unread): read it with the inbox tool or "
                         "`engram inbox`.\n")
        raise typer.Exit(2)


@contextlib.contextmanager
def _one_waiter(socket_path: str, agent: str) -> Iterator[bool]:
    """Whether this is the only stop hook of *agent* waiting (a lock beside the socket)."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in agent)[:100]
    path = os.path.join(os.path.dirname(socket_path), f"wake-{name}.lock")
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
