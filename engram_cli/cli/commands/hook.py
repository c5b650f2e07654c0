"""``engram hook ...``: what a harness runs at its hook events (``engram setup`` installs
them); see :mod:`engram_cli.doors.harness` for the formats. Each reads the hook's JSON on stdin,
answers on stdout, and fails open."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import msgspec
import typer

from engram_cli.cli import completion, context
from engram_cli.client import Client
from engram_cli.client.errors import EngramError
from engram_cli.client.session import SESSION_PID_VAR, agent_name, session_pid
from engram_cli.doors import harness

HOOK_TIMEOUT = 2.0
"""Seconds a hook waits for any answer of the daemon: a hook must never stall the agent."""

app = typer.Typer(
    help="What a harness runs (engram setup installs them): read the hook's JSON on stdin, "
         "answer in the harness's format, and exit 0 with no output when engramd cannot "
         "be reached.", no_args_is_help=True, add_completion=False)

HarnessOption = Annotated[str, typer.Option(
    "--harness", metavar="|".join(completion.HARNESSES), autocompletion=completion.harnesses,
    help="Which harness runs the hook (its format).")]


def _hook_input() -> dict[str, Any]:
    try:
        data = msgspec.json.decode(sys.stdin.buffer.read() or b"{}") \
            if not sys.stdin.isatty() else {}
    except (msgspec.DecodeError, OSError, RecursionError):  # nested past the decoder's depth
        return {}
    return data if isinstance(data, dict) else {}


def _nothing(runner: str) -> None:
    """Say nothing: no output, except to Cursor, which wants JSON on every path."""
    if runner == "cursor":
        _emit({})


@contextlib.contextmanager
def _failing_open(runner: str) -> Iterator[None]:
    """A hook never breaks the agent's session: engram's failures end it quietly."""
    try:
        yield
    except (EngramError, OSError):
        _nothing(runner)
        raise typer.Exit(0) from None


def _client(ctx: typer.Context, runner: str) -> tuple[Client, str, int]:
    """A connected client acting as the session's agent, its name and its process."""
    cli = context.get(ctx)
    pid = session_pid()
    cli.agent = agent_name(cli.agent, pid, runner)
    return cli.client(timeout=HOOK_TIMEOUT, start_timeout=HOOK_TIMEOUT), cli.agent, pid


def _emit(answer: dict[str, Any]) -> None:
    sys.stdout.write(msgspec.json.encode(answer).decode() + "\n")
    sys.stdout.flush()


@app.command("session-start")
def session_start(ctx: typer.Context, runner: HarnessOption = "claude-code",
                  max_chars: Annotated[int, typer.Option("--max-chars", min=500)] = 8000
                  ) -> None:
    """SessionStart: the session brief as context.

    Also announces the session and exports ENGRAM_AGENT, ENGRAM_SESSION_PID and where
    the daemon is (ENGRAM_SOCKET, ENGRAM_DATA_DIR: the hook's own) to the session's
    shell commands (Claude Code: through $CLAUDE_ENV_FILE; Cursor: the answer's env),
    so that the agent's engram commands reach the daemon its hooks reach.
    """
    hook_input = _hook_input()
    with _failing_open(runner):
        client, agent, pid = _client(ctx, runner)
        client.announce_session(pid=pid, harness=runner)
        cwd = harness.working_dir(hook_input, os.getcwd())
        # Only where git is asked: it brings subprocess.
        from engram_cli.client import gitinfo, paths

        changed = paths.in_repository(cwd, gitinfo.changed_files(cwd))
        brief = client.brief(files=list(changed.values()))
    from engram_cli.formats import briefview  # only here: the hooks run on every edit need none

    exported = {"ENGRAM_AGENT": agent, SESSION_PID_VAR: str(pid),
                "ENGRAM_SOCKET": client.socket_path}
    data_dir = context.get(ctx).data_dir
    if data_dir:
        exported["ENGRAM_DATA_DIR"] = os.path.abspath(data_dir)
    env_file = os.environ.get("CLAUDE_ENV_FILE")
    if env_file:
        import shlex  # only here: pre-edit, the hook run before every edit, needs none

        with contextlib.suppress(OSError), open(env_file, "a", encoding="utf-8") as exports:
            exports.write("".join(f"export {name}={shlex.quote(value)}\n"
                                  for name, value in exported.items()))
    answer = harness.additional_context(harness.harness_of(runner).start,
                                        briefview.markdown(
                                            brief, max_chars,
                                            name=lambda name: paths.display(name, cwd)),
                                        runner)
    if runner == "cursor":
        answer["env"] = exported
    _emit(answer)


@app.command("prompt")
def prompt(ctx: typer.Context, runner: HarnessOption = "claude-code") -> None:
    """UserPromptSubmit (Gemini CLI: BeforeAgent): one line of context when messages are
    unread; nothing otherwise."""
    _hook_input()
    with _failing_open(runner):
        client, _, _ = _client(ctx, runner)
        counted = client.unread()
    if not counted.unread:
        _nothing(runner)
        return
    _emit(harness.additional_context(
        harness.harness_of(runner).prompt or "UserPromptSubmit",
        f"engram: {counted.unread} unread message(s) for you: read them with the inbox "
        "tool or `engram inbox`.", runner))


@app.command("pre-edit")
def pre_edit(ctx: typer.Context, runner: HarnessOption = "claude-code",
             guard: Annotated[str, typer.Option("--guard", metavar="warn|block")] = "warn"
             ) -> None:
    """PreToolUse on file edits (Gemini CLI: BeforeTool, AfterTool to warn): the lease guard.

    A lease of another session on the file (another agent's, or another running
    session's of the same agent; on it, on a directory it is in, a glob that matches
    it, shared or not: the lock manager's rule) adds a warning naming the holder, or
    with --guard block denies the edit with that reason.
    """
    hook_input = _hook_input()
    cwd = harness.working_dir(hook_input, os.getcwd())
    paths = harness.edited_paths(hook_input)
    if not paths:
        _nothing(runner)
        return
    with _failing_open(runner):
        client, agent, session = _client(ctx, runner)
        states = client.list_locks()
    from engram_cli.client import paths as resolve  # (git: only when a lease may matter)
    from engram_cli.formats.text import one_line

    others = [lease for lease in resolve.leases_of(states)
              if not resolve.own(lease, agent, session)]
    if not others:
        _nothing(runner)  # the common case, and no git to ask
        return
    held: list[str] = []
    holders: list[str] = []
    for path in paths:
        try:
            name = resolve.resource(path, cwd, literal=True)  # an edit is of one file
        except ValueError:
            continue
        shown = one_line(resolve.display(name, cwd))
        for lease in resolve.in_the_way(others, agent, name, session):
            held.append(f"{shown} is leased by {lease.holder}"
                        + (f" (pid {lease.holder_pid})" if lease.holder_pid else "")
                        + (" for reading (shared)" if lease.shared else "")
                        + ("" if lease.resource == name
                           else f" as {one_line(resolve.display(lease.resource, cwd))}")
                        + (" while its session lives" if lease.while_alive else
                           f" until {lease.expires_at:%H:%M:%S} UTC"))
            holders.append(lease.holder)
    if not held:
        _nothing(runner)
        return
    reason = ("; ".join(held) + f". Ask (engram send --to {','.join(dict.fromkeys(holders))}) "
              "or wait for the lease to end.")
    if guard == "block":
        _emit(harness.deny_edit(reason, runner))
    else:
        _emit(harness.warn_edit(f"engram warning: {reason}", runner))


@app.command("stop")
def stop(ctx: typer.Context, runner: HarnessOption = "claude-code",
         wait: Annotated[float, typer.Option("--wait", min=0.0, max=86400.0,
                                             metavar="SECONDS")] = 3600.0) -> None:
    """Stop: the wake path.

    Claude Code (run in the background): wait up to --wait for a message and exit 2
    when one comes (the harness wakes the agent), else 0; one waiter per agent.
    The others (Gemini CLI: AfterAgent): when mail waits, the turn goes on, never
    twice in a row.
    """
    hook_input = _hook_input()
    if runner != "claude-code":
        if hook_input.get("stop_hook_active") or hook_input.get("loop_count"):
            _nothing(runner)  # the turn already went on for this stop: let it stop
            return
        with _failing_open(runner):
            client, _, _ = _client(ctx, runner)
            counted = client.unread()
        if not counted.unread:
            _nothing(runner)
            return
        _emit(harness.go_on(f"engram: {counted.unread} unread message(s) arrived; read "
                            "them with `engram inbox` before you stop.", runner))
        return
    with _failing_open(runner):
        client, agent, _ = _client(ctx, runner)
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
