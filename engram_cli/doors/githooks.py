"""Git hooks that record commits, checkouts, merges and rewrites as work units.

``install`` puts a small POSIX shell script in the repository's hooks directory
(``core.hooksPath`` respected) for each hook. An existing hook is kept as
``<hook>.engram-orig`` and still runs first, its status respected;
``uninstall`` puts it back. The script calls ``engram hooks run`` with a time
limit and never lets engram fail a git command (except a ``block`` guard).

When the daemon cannot be reached, the unit goes to the spool in the data dir
(``spool/*.json``) and is delivered by the next hook that reaches the daemon, or
when the daemon starts. Each unit's idempotency key names the repository, the
hook and the commit, so nothing is recorded twice.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import stat
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from engram_cli.client import Client, gitinfo, paths, requests
from engram_cli.client.errors import ClientTimeout, EngramError, Unavailable
from engram_cli.client.paths import repo_key
from engram_cli.client.session import own, session_pid
from engram_cli.client.settings import default_agent_id
from engram_cli.doors.files import write_whole
from engram_cli.formats.text import one_line
from engramd.protocol import SpooledUnit, UnitDraft, resolve_data_dir

HOOKS = ("post-commit", "post-checkout", "post-merge", "post-rewrite")
MARKER = "# engram-hook v1"
ORIGINAL_SUFFIX = ".engram-orig"
HOOK_TIMEOUT_SECONDS = 5
_REWRITES = ("commit (amend)", "rebase")
"""How the reflog names the HEAD moves that post-rewrite reports as well."""
UNITS_FILE = "engram-units"
"""In the git dir: ``<commit> <unit id>`` lines, for SEQUENTIAL links to the parent."""

SCRIPT = """#!/bin/sh
{marker}: records this git event in engram. Installed by `engram hooks install`;
# `engram hooks uninstall` removes it and puts back what was here before.
hook=$(basename "$0")
original="$0{suffix}"
status=0
if [ "$hook" = post-rewrite ]; then input=$(cat); fi
if [ -x "$original" ]; then
    if [ "$hook" = post-rewrite ]; then
        printf '%s\\n' "$input" | "$original" "$@"
    else
        "$original" "$@"
    fi
    status=$?
    if [ "$hook" = pre-commit ] && [ "$status" -ne 0 ]; then exit "$status"; fi
fi
run() {{ ENGRAM_NO_AUTOSTART=1 timeout {timeout} {python} -m engram_cli hooks run "$hook" "$@"; }}
if [ "$hook" = pre-commit ]; then
    run "$@" </dev/null
    exit $?
fi
if [ "$hook" = post-rewrite ]; then
    printf '%s\\n' "$input" | run "$@" >/dev/null 2>&1
else
    run "$@" </dev/null >/dev/null 2>&1
fi
exit "$status"
"""


def script() -> str:
    return SCRIPT.format(marker=MARKER, suffix=ORIGINAL_SUFFIX, timeout=HOOK_TIMEOUT_SECONDS,
                         python=shlex.quote(sys.executable))


def _ours(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return MARKER in file.read(4096)
    except OSError:
        return False


@dataclass(frozen=True)
class HookState:
    name: str
    installed: bool
    original: bool


def install(repo: str, *, context: str | None, guard: str) -> list[str]:
    """Install the hooks (idempotent); returns the hook names installed."""
    directory = gitinfo.hooks_dir(repo)
    os.makedirs(directory, exist_ok=True)
    names = [*HOOKS, *(["pre-commit"] if guard != "off" else [])]
    for name in names:
        path = os.path.join(directory, name)
        if os.path.lexists(path) and not _ours(path):
            os.replace(path, path + ORIGINAL_SUFFIX)
        with open(path, "w", encoding="utf-8") as file:
            file.write(script())
        os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    if context:
        gitinfo.git(repo, "config", "engram.context", context)
    gitinfo.git(repo, "config", "engram.guard", guard)
    return names


def uninstall(repo: str) -> list[str]:
    """Remove our hooks and put back what they replaced; returns the hooks removed."""
    directory = gitinfo.hooks_dir(repo)
    removed = []
    for name in (*HOOKS, "pre-commit"):
        path = os.path.join(directory, name)
        if _ours(path):
            os.unlink(path)
            removed.append(name)
            if os.path.lexists(path + ORIGINAL_SUFFIX):
                os.replace(path + ORIGINAL_SUFFIX, path)
    gitinfo.git(repo, "config", "--unset", "engram.guard", check=False)
    return removed


def status(repo: str) -> list[HookState]:
    directory = gitinfo.hooks_dir(repo)
    return [HookState(name, _ours(os.path.join(directory, name)),
                      os.path.lexists(os.path.join(directory, name + ORIGINAL_SUFFIX)))
            for name in (*HOOKS, "pre-commit")]


# -- recording ----------------------------------------------------------------


_NOT_IN_CONTEXT_ID = re.compile(r"[^A-Za-z0-9._:/@+-]+")
_MAX_CONTEXT_ID = 128


def context_for(repo: str) -> str:
    """``engram.context`` if set, else ``git:<repo key>/<branch>``, made a valid context
    id (other characters become ``-``; a key too long keeps its last part and a hash)."""
    configured = gitinfo.git(repo, "config", "--get", "engram.context", check=False)
    if configured:
        return configured
    key, branch = repo_key(repo), gitinfo.branch(repo)
    name = _NOT_IN_CONTEXT_ID.sub("-", f"git:{key}/{branch}")
    if len(name) > _MAX_CONTEXT_ID:
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        short = _NOT_IN_CONTEXT_ID.sub("-", f"git:{os.path.basename(key)}-{digest}/{branch}")
        name = short[:_MAX_CONTEXT_ID]
    return name


def _known_units(repo: str) -> dict[str, str]:
    path = os.path.join(gitinfo.git_dir(repo), UNITS_FILE)
    try:
        with open(path, encoding="utf-8") as file:
            return dict(line.split() for line in file if len(line.split()) == 2)
    except OSError:
        return {}


def _remember(repo: str, commit: str, unit_id: str) -> None:
    with open(os.path.join(gitinfo.git_dir(repo), UNITS_FILE), "a", encoding="utf-8") as file:
        file.write(f"{commit} {unit_id}\n")


def _commit_draft(repo: str, hook: str, commit: str, extra: Mapping[str, str]) -> UnitDraft:
    info = gitinfo.commit_info(repo, commit)
    files = gitinfo.numstat(repo, commit)
    lines = [f"{added}\t{removed}\t{path}" for added, removed, path in files]
    payload = info["message"] + ("\n\n" + "\n".join(lines) if lines else "")
    parent = info["parents"].split()[0] if info["parents"] else None
    known = _known_units(repo)
    relationships = [("SEQUENTIAL", known[parent])] if parent and parent in known else []
    meta = {"git.hook": hook, "git.commit": info["commit"], "git.branch": gitinfo.branch(repo),
            "git.author": info["author"], "git.repo": repo_key(repo),
            "git.path": gitinfo.toplevel(repo),
            "git.files": str(len(files)),
            "git.added": str(sum(int(a) for a, _, _ in files if a.isdigit())),
            "git.removed": str(sum(int(r) for _, r, _ in files if r.isdigit())), **extra}
    return requests.draft(context_for(repo), "FILE_CHANGE", payload, meta=meta,
                          relationships=relationships,
                          idempotency_key=f"git:{gitinfo.toplevel(repo)}:{hook}:{info['commit']}")


def drafts_for(repo: str, hook: str, args: list[str], stdin: str) -> list[UnitDraft]:
    """The units a hook records (none for a file checkout)."""
    if hook == "post-commit" and gitinfo.last_head_move(repo).startswith(_REWRITES):
        return []  # an amend or a rebase: post-rewrite records it, with where it came from
    if hook in ("post-commit", "post-merge"):
        return [_commit_draft(repo, hook, "HEAD", {})]
    if hook == "post-rewrite":
        drafts = []
        known = _known_units(repo)
        for line in stdin.splitlines():
            parts = line.split()
            # A commit post-commit recorded already (a repository without a reflog) is
            # not recorded again.
            if len(parts) >= 2 and parts[1] not in known:
                drafts.append(_commit_draft(repo, f"post-rewrite-{args[0] if args else 'x'}",
                                            parts[1], {"git.rewritten-from": parts[0]}))
        return drafts
    if hook == "post-checkout" and len(args) >= 3 and args[2] == "1":
        previous, new = args[0], args[1]
        branch = gitinfo.branch(repo)
        return [requests.draft(
            context_for(repo), "SYSTEM", f"checked out {branch} ({new[:12]}), was {previous[:12]}",
            meta={"git.hook": hook, "git.branch": branch, "git.commit": new,
                  "git.previous": previous, "git.repo": repo_key(repo),
                  "git.path": gitinfo.toplevel(repo)},
            idempotency_key=f"git:{gitinfo.toplevel(repo)}:checkout:{new}:{time.time_ns()}")]
    return []


def spool_dir(env: Mapping[str, str]) -> str:
    return os.path.join(resolve_data_dir(None, env), "spool")


_spool_encoder = msgspec.json.Encoder()
_spool_decoder = msgspec.json.Decoder(SpooledUnit)


def spool(draft: UnitDraft, agent: str, env: Mapping[str, str]) -> str:
    directory = spool_dir(env)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.json")
    write_whole(path, _spool_encoder.encode(SpooledUnit(agent_id=agent, draft=draft)))
    return path


def deliver_spool(client: Client, env: Mapping[str, str]) -> int:
    """Write every spooled unit (oldest first) and remove its file; returns how many."""
    directory = spool_dir(env)
    try:
        names = sorted(name for name in os.listdir(directory) if name.endswith(".json"))
    except FileNotFoundError:
        return 0
    delivered = 0
    for name in names:
        path = os.path.join(directory, name)
        with open(path, "rb") as file:
            spooled = _spool_decoder.decode(file.read())
        if spooled.agent_id == client.agent_id:
            client.create_units([spooled.draft])
        else:
            with Client(client.socket_path, agent_id=spooled.agent_id, autostart=False,
                        timeout=client.timeout) as other:
                other.create_units([spooled.draft])
        os.unlink(path)
        delivered += 1
    return delivered


def record(repo: str, hook: str, args: list[str], stdin: str, socket: str | None,
           env: Mapping[str, str]) -> tuple[int, int]:
    """Record a hook's units: ``(written, spooled)``. Never raises for an absent daemon."""
    drafts = drafts_for(repo, hook, args, stdin)
    agent = default_agent_id(env)
    try:
        with Client(socket, agent_id=agent, autostart=False, timeout=2, env=env) as client:
            deliver_spool(client, env)
            written = 0
            for draft in drafts:
                unit = client.create_units([draft]).units[0]
                commit = draft.meta.get("git.commit")
                if commit and draft.type == "FILE_CHANGE":
                    _remember(repo, commit, unit.id)
                written += 1
            return written, 0
    except (Unavailable, ClientTimeout):
        for draft in drafts:
            spool(draft, agent, env)
        return 0, len(drafts)


def guard(repo: str, mode: str, socket: str | None, env: Mapping[str, str]) -> list[str]:
    """Staged files under the lease of another session (another agent's, or another
    running session's of this agent), as messages (empty: all clear): each file named
    as a lease on it is (:mod:`engram_cli.client.paths`) and judged by the lock
    manager's rule; the committing session is :func:`session_pid`'s."""
    if mode == "off":
        return []
    agent = default_agent_id(env)
    staged = gitinfo.staged_files(repo)
    if not staged:
        return []
    problems = []
    try:
        with Client(socket, agent_id=agent, autostart=False, timeout=2, env=env) as client:
            leases = paths.leases_of(client.list_locks())
    except (Unavailable, ClientTimeout, EngramError):
        return []  # no daemon, no guard: never stop a commit for engram's sake
    session = session_pid(env)  # (git counts as a wrapper: the session runs git)
    if all(own(lease, agent, session) for lease in leases):
        return []
    for path, name in paths.in_repository(repo, staged).items():
        for lease in paths.in_the_way(leases, agent, name, session):
            problems.append(f"{one_line(path)} is leased by {lease.holder}"
                            + (" (shared)" if lease.shared else "")
                            + ("" if lease.resource == name
                               else f" as {one_line(paths.display(lease.resource, repo))}")
                            + f" until {lease.expires_at.isoformat(timespec='seconds')}")
    return problems
