"""Which process is the agent session an ``engram`` command runs in, and what runs it.

Agents run engram from throwaway shells (a harness starts ``bash -c`` for each
tool call), so the command's parent is no session at all. The session is the
nearest ancestor that is not a shell or a wrapper (the harness, an editor, a
terminal multiplexer, a script's interpreter), or ``$ENGRAM_SESSION_PID`` when
set. Task claims are bound to it, and ``engram prime`` announces it.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # (collections costs the fast start of the hooks ~1 ms)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

SESSION_PID_VAR = "ENGRAM_SESSION_PID"
PASSED_THROUGH = frozenset({
    "sh", "bash", "dash", "zsh", "fish", "ksh", "mksh", "ash", "busybox", "tcsh", "csh",
    "env", "nohup", "nice", "timeout", "setsid", "stdbuf", "xargs", "time",
    "git", "pre-commit",  # (git and its hook script: the pre-commit guard's session is
                          # whoever runs git)
})
"""Processes that only run another: a session is never one of these."""
MAX_HOPS = 32


def _stat(pid: int) -> tuple[str, int] | None:
    """The command name and parent of process *pid*, from ``/proc/PID/stat``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            raw = stat.read()
    except OSError:
        return None
    name = raw[raw.index(b"(") + 1:raw.rindex(b")")].decode(errors="replace")
    parent = int(raw[raw.rindex(b")") + 2:].split()[1])
    return name, parent


def session_pid(env: Mapping[str, str] | None = None) -> int:
    """The process that is this command's agent session (see the module)."""
    env = os.environ if env is None else env
    given = env.get(SESSION_PID_VAR, "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    pid = os.getppid()
    for _ in range(MAX_HOPS):
        found = _stat(pid)
        if found is None or pid <= 1:
            break
        name, parent = found
        if name not in PASSED_THROUGH or parent <= 1:
            return pid
        pid = parent
    return os.getppid()


def harness(env: Mapping[str, str] | None = None, pid: int | None = None) -> str:
    """What runs the session: a coding agent's harness when its variables say so, else
    the session process's command name."""
    env = os.environ if env is None else env
    if env.get("CLAUDECODE") == "1":
        return "claude-code"
    if any(name.startswith("CODEX_") for name in env):
        return "codex"
    found = _stat(pid if pid is not None else session_pid(env))
    return found[0] if found is not None else ""


def agent_name(given: str | None, pid: int, runner: str) -> str:
    """The agent a harness's session acts as: the name given (``--agent``,
    ``ENGRAM_AGENT``), else ``<harness>-<pid>``, so two sessions are two agents."""
    return given or f"{runner}-{pid}"


def own(lease: Any, agent: str, session: int | None) -> bool:
    """Whether *lease* is the editor's own: *agent*'s, held in the session of process
    *session* (bound to it, or taken by it), or held in no session that still runs (a
    lease of a connection whose command has ended, which any connection of the agent
    may renew, adopt and release). A lease of another running session of the agent is
    not: the lock manager would make that session wait for it too. *lease*: a
    ``Lease``, or anything with its ``holder``, ``pid`` and ``holder_pid`` (the fast
    start's lean reading of one)."""
    if lease.holder != agent:
        return False
    if session is not None and session in (lease.pid, lease.holder_pid):
        return True
    return lease.pid is None and not _runs(lease.holder_pid)


def _runs(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # (another user's: it runs)
    return True
