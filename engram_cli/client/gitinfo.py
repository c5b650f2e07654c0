"""What git says about a repository, for the hooks: small, synchronous, stdlib only."""

from __future__ import annotations

import os
import subprocess


class GitError(Exception):
    """git failed or this is not a repository."""


def git(repo: str, *args: str, check: bool = True) -> str:
    result = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True,
                            check=False)
    if check and result.returncode != 0:
        raise GitError(result.stderr.strip() or f"git {' '.join(args)} failed")
    return result.stdout.strip()


def toplevel(repo: str) -> str:
    return git(repo, "rev-parse", "--show-toplevel")


def hooks_dir(repo: str) -> str:
    """The hooks directory git uses here (``core.hooksPath`` respected)."""
    path = git(repo, "rev-parse", "--git-path", "hooks")
    return path if os.path.isabs(path) else os.path.join(toplevel(repo), path)


def git_dir(repo: str) -> str:
    path = git(repo, "rev-parse", "--git-dir")
    return path if os.path.isabs(path) else os.path.join(toplevel(repo), path)


def repo_name(repo: str) -> str:
    return os.path.basename(toplevel(repo))


def remote_url(repo: str) -> str | None:
    """The URL of ``origin``, else of the first remote; None without remotes."""
    remotes = git(repo, "remote", check=False).split()
    if not remotes:
        return None
    name = "origin" if "origin" in remotes else remotes[0]
    return git(repo, "remote", "get-url", name, check=False) or None


def last_head_move(repo: str) -> str:
    """What moved HEAD last, from the reflog (``commit (amend): ...``, ``rebase (pick):
    ...``); empty without a reflog."""
    return git(repo, "reflog", "-1", "--format=%gs", "HEAD", check=False)


def branch(repo: str) -> str:
    name = git(repo, "rev-parse", "--abbrev-ref", "HEAD", check=False)
    return name if name and name != "HEAD" else "detached"


def commit_info(repo: str, commit: str) -> dict[str, str]:
    fields = git(repo, "show", "-s", "--format=%H%x00%P%x00%an <%ae>%x00%B", commit)
    sha, parents, author, message = [*fields.split("\0", 3), "", "", ""][:4]
    return {"commit": sha, "parents": parents, "author": author, "message": message.strip()}


def numstat(repo: str, commit: str) -> list[tuple[str, str, str]]:
    """``(added, removed, path)`` for each file the commit changed."""
    out = git(repo, "show", "--numstat", "--format=", commit, check=False)
    rows = []
    for line in out.splitlines():
        parts = line.split("\t", 2)
        if len(parts) == 3:
            rows.append((parts[0], parts[1], parts[2]))
    return rows


def staged_files(repo: str) -> list[str]:
    """Every path the commit being made changes, relative to the top level: a rename's
    old name and new name both (``--no-renames``: moving a file away changes it), each
    as it is on disk (``-z``: git quotes names with other than printable ASCII in lines)."""
    result = subprocess.run(["git", "-C", repo, "diff", "--cached", "--name-only",
                             "--no-renames", "-z"], capture_output=True, check=False)
    if result.returncode != 0:
        raise GitError(result.stderr.decode(errors="replace").strip()
                       or "git diff --cached failed")
    return [os.fsdecode(path) for path in result.stdout.split(b"\0") if path]


def changed_files(repo: str, timeout: float = 1.0) -> list[str]:
    """Paths (relative to the top level) that ``git status`` shows as changed, staged or
    not, untracked included; empty outside a repository or when git is slow."""
    try:
        result = subprocess.run(["git", "-C", repo, "status", "--porcelain", "-z",
                                 "--untracked-files=normal"], capture_output=True,
                                check=False, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if result.returncode != 0:
        return []
    paths: list[str] = []
    entries = iter(result.stdout.decode(errors="replace").split("\0"))
    for entry in entries:
        if len(entry) < 4:
            continue
        paths.append(entry[3:])
        if entry[0] in "RC":
            next(entries, None)  # a rename's source follows its target
    return paths
