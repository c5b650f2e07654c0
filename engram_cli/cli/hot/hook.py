"""``engram hook ...``: what a harness runs at its hook events (see :mod:`..hot` and
:mod:`engram_cli.cli.commands.hook`). Each reads the hook's JSON on stdin, answers on
stdout, and fails open."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from typing import Any

import msgspec

from engram_cli.cli.context import CliContext
from engram_cli.cli.exits import Exit
from engram_cli.client import Client
from engram_cli.client.errors import EngramError
from engram_cli.client.session import SESSION_PID_VAR, agent_name, own, session_pid
from engram_cli.doors import harness
from engram_cli.doors.hookinput import edited_paths, working_dir
from engramd.protocol import LockState

HOOK_TIMEOUT = 2.0
"""Seconds a hook waits for any answer of the daemon: a hook must never stall the agent."""


def read_input() -> bytes | None:
    """The hook's input as it came on stdin (None from a terminal, or unreadable)."""
    try:
        return sys.stdin.buffer.read() if not sys.stdin.isatty() else None
    except OSError:
        return None


def hook_input(raw: bytes | None) -> dict[str, Any]:
    """The hook's input *raw* (from :func:`read_input`) as a JSON object ({}: none)."""
    if raw is None:
        return {}
    try:
        data = msgspec.json.decode(raw or b"{}")
    except (msgspec.DecodeError, RecursionError):  # nested past the decoder's depth
        return {}
    return data if isinstance(data, dict) else {}


def _hook_input() -> dict[str, Any]:
    return hook_input(read_input())


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
        raise Exit(0) from None


def _client(cli: CliContext, runner: str) -> tuple[Client, str, int]:
    """A connected client acting as the session's agent, its name and its process."""
    pid = session_pid()
    cli.agent = agent_name(cli.agent, pid, runner)
    return cli.client(timeout=HOOK_TIMEOUT, start_timeout=HOOK_TIMEOUT), cli.agent, pid


def _emit(answer: dict[str, Any]) -> None:
    sys.stdout.write(msgspec.json.encode(answer).decode() + "\n")
    sys.stdout.flush()


def session_start(cli: CliContext, *, runner: str, max_chars: int) -> int | None:
    """``engram hook session-start``."""
    hook_input = _hook_input()
    with _failing_open(runner):
        client, agent, pid = _client(cli, runner)
        client.announce_session(pid=pid, harness=runner)
        cwd = working_dir(hook_input, os.getcwd())
        # Only where git is asked: it brings subprocess.
        from engram_cli.client import gitinfo, paths

        changed = paths.in_repository(cwd, gitinfo.changed_files(cwd))
        brief = client.brief(files=list(changed.values()))
    from engram_cli.formats import briefview  # only here: the hooks run on every edit need none

    exported = {"ENGRAM_AGENT": agent, SESSION_PID_VAR: str(pid),
                "ENGRAM_SOCKET": client.socket_path}
    data_dir = cli.data_dir
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
    return None


def prompt(cli: CliContext, *, runner: str, read: bool = True) -> int | None:
    """``engram hook prompt`` (*read*: the input is still to be read from stdin)."""
    if read:
        read_input()
    with _failing_open(runner):
        client, _, _ = _client(cli, runner)
        counted = client.unread()
    prompt_answer(counted.unread, runner)
    return None


def prompt_answer(unread: int, runner: str) -> None:
    """What the prompt hook says when *unread* messages wait."""
    if not unread:
        _nothing(runner)
        return
    _emit(harness.additional_context(
        harness.harness_of(runner).prompt or "UserPromptSubmit",
        f"engram: {unread} unread message(s) for you: read them with the inbox "
        "tool or `engram inbox`.", runner))


def pre_edit(cli: CliContext, *, runner: str, guard: str,
             given: dict[str, Any] | None = None) -> int | None:
    """``engram hook pre-edit`` (*given*: its input, read already)."""
    hook_input = _hook_input() if given is None else given
    cwd = working_dir(hook_input, os.getcwd())
    paths = edited_paths(hook_input)
    if not paths:
        _nothing(runner)
        return None
    with _failing_open(runner):
        client, agent, session = _client(cli, runner)
        states = client.list_locks()
    guard_answer(states, agent, session, paths, cwd, runner, guard)
    return None


def guard_answer(states: list[LockState], agent: str, session: int, paths: list[str],
                 cwd: str, runner: str, guard: str) -> None:
    """What the edit guard says of the leases *states* (every lease held or awaited)."""
    from engram_cli.client import paths as resolve  # (git: only when a lease may matter)
    from engram_cli.formats.text import one_line

    others = [lease for lease in resolve.leases_of(states)
              if not own(lease, agent, session)]
    if not others:
        _nothing(runner)  # the common case, and no git to ask
        return None
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
        return None
    reason = ("; ".join(held) + f". Ask (engram send --to {','.join(dict.fromkeys(holders))}) "
              "or wait for the lease to end.")
    if guard == "block":
        _emit(harness.deny_edit(reason, runner))
    else:
        _emit(harness.warn_edit(f"engram warning: {reason}", runner))
    return None


def stop(cli: CliContext, *, runner: str, wait: float) -> int | None:
    """``engram hook stop``."""
    from engram_cli.cli.hot.checks import seconds

    seconds(wait, "--wait")
    hook_input = _hook_input()
    if runner != "claude-code":
        if hook_input.get("stop_hook_active") or hook_input.get("loop_count"):
            _nothing(runner)  # the turn already went on for this stop: let it stop
            return None
        with _failing_open(runner):
            client, _, _ = _client(cli, runner)
            counted = client.unread()
        if not counted.unread:
            _nothing(runner)
            return None
        _emit(harness.go_on(f"engram: {counted.unread} unread message(s) arrived; read "
                            "them with `engram inbox` before you stop.", runner))
        return None
    with _failing_open(runner):
        client, agent, _ = _client(cli, runner)
        with _one_waiter(client.socket_path, agent) as alone:
            if not alone:
                return None
            page = client.inbox(peek=True, wait=wait, limit=1)
    if page.messages:
        first = page.messages[0]
        sys.stderr.write(f"engram: a message from {first.agent_id} is waiting "
                         f"({page.unread + 1} unread): read it with the inbox tool or "
                         "`engram inbox`.\n")
        raise Exit(2)
    return None


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
