"""A path given by a person or a program, made the one name a lease on it has, and back.

Every door that takes a path for a lease (``engram lock ... --path``, the MCP ``lock``
tool, the gateway's ``POST /locks``, the edit guard, the pre-commit guard, the brief's
changed files) resolves it here, once, the same way (the daemon only ever sees the
names, :mod:`engramd.protocol.resources`):

1. relative to the caller's working directory (``~`` expanded), symlinks resolved
   (for a glob, those of the directories before its first wildcard);
2. a directory when it ends in ``/`` or is one on disk (a lease on it covers what
   is under it), else a file (one not there yet too);
   a path that is there on disk is that path whatever its characters; else one with
   ``*``, ``?`` or ``[`` is a glob, unless each is escaped in brackets (``a[*].txt``
   names the file ``a*.txt``); in the name such characters of a file's are escaped so;
3. inside a git repository: ``file:<repo key>:<path in it>``, the key being the one
   the git hooks name contexts by (:func:`repo_key`: where ``origin`` lives, so
   clones of one remote agree, on one machine or several); a repository with no
   remote is named by where it is, so its paths are absolute;
4. outside one: ``file:/<absolute path>``.

:func:`display` turns a name back into what a person in a working directory would
type (``src/app.py``, ``../docs/``), and :func:`in_the_way` is the guards' verdict:
the rule itself, :func:`engramd.protocol.resources.covers`, between sessions as the
lock manager judges them.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable
from functools import lru_cache

from engram_cli.client import gitinfo
from engram_cli.client.session import own
from engramd.protocol import Lease, LockState
from engramd.protocol import resources as names

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SCP_LIKE = re.compile(r"^(?:[^@/]+@)?([^:/]+):(?!//)")


class PathProblem(ValueError):
    """A path that cannot be named (outside its repository, a relative path where only
    an absolute one will do)."""


def repo_key(repo: str) -> str:
    """A name of the repository that an unrelated one does not share: where its remote
    lives (``github.com/ann/proj``, from ``origin`` or else the first remote, see
    :func:`remote_key`), else (no remote, or one whose URL names no place) its
    absolute path. Two clones of one project share it."""
    url = gitinfo.remote_url(repo)
    top = gitinfo.toplevel(repo)
    return (remote_key(url, top) if url is not None else None) or top


_DEFAULT_PORTS = {"ssh": "22", "git+ssh": "22", "ssh+git": "22", "git": "9418",
                  "http": "80", "https": "443"}


def remote_key(url: str, top: str) -> str:
    """Where the remote at *url* lives, one way however it is written: host (lower case,
    its scheme's default port dropped) and path, without scheme, user, ``.git`` and
    trailing slashes (``ssh://git@GitHub.com:22/o/r.git``, ``git@github.com:o/r.git``
    and ``https://github.com/o/r/`` are ``github.com/o/r``); a local path made absolute
    from *top*. Empty for a URL that names no place (``https://``)."""
    url = url.strip()
    scheme = _URL_SCHEME.match(url)
    scp = None if scheme else _SCP_LIKE.match(url)
    host: str | None = None
    if scheme and scheme.group(0)[:-3].lower() == "file":
        key = "/" + url[scheme.end():].lstrip("/")
    elif scheme:
        authority, _, path = url[scheme.end():].partition("/")
        name, port = _host_and_port(authority.rpartition("@")[2])
        if port and not port.isdigit():  # (host:path inside a URL: a path after all)
            port, path = "", f"{port}/{path}"
        if port == _DEFAULT_PORTS.get(scheme.group(0)[:-3].lower()):
            port = ""
        name = name.lower().rstrip(".")  # (GitHub.com. is github.com)
        host = name + (f":{port}" if port and name else "")
        key = f"{host}/{path}"
    elif scp:
        host = scp.group(1).lower().rstrip(".")  # git@github.com:ann/proj.git
        key = f"{host}/{url[scp.end():]}"
    else:  # a path on this machine, perhaps relative to the repository
        key = os.path.normpath(os.path.join(top, url))
    key = re.sub(r"/{2,}", "/", key).rstrip("/")
    key = key.removesuffix(".git").rstrip("/")
    if host is None:  # a place on this machine: an absolute path
        return key if key != "/" else ""
    return key if host and key.startswith(host + "/") else ""  # a host and a path


def _host_and_port(where: str) -> tuple[str, str]:
    """``host:port`` (``[v6]:port`` too) taken apart; no port: empty."""
    if where.startswith("["):
        host, _, rest = where.partition("]")
        return host + "]", rest.removeprefix(":")
    host, _, port = where.partition(":")
    return host, port


@lru_cache(maxsize=256)
def _repository(directory: str) -> tuple[str, str] | None:
    """``(top level, key)`` of the repository *directory* (an existing directory) is
    in, or None outside one."""
    try:
        top = os.path.realpath(gitinfo.toplevel(directory))
    except (gitinfo.GitError, OSError):
        return None
    return top, _key_of(top)


@lru_cache(maxsize=64)
def _key_of(top: str) -> str:
    return repo_key(top)


def _existing(path: str) -> str:
    """The nearest directory at or above *path* that exists."""
    while not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def resource(path: str, cwd: str | None = None, *, absolute_only: bool = False,
             literal: bool = False) -> str:
    """The canonical resource naming *path* (see the module). ``absolute_only``: refuse
    a relative path (a caller whose working directory means nothing here). ``literal``:
    *path* is one file's path, never a pattern (what a guard is asked about)."""
    if not path:
        raise PathProblem("an empty path")
    if absolute_only and not os.path.isabs(path):  # (~ too: it would be the gateway's)
        raise PathProblem(f"{path}: give an absolute path (the gateway has no working "
                          "directory of yours)")
    path = os.path.expanduser(path)
    directory_given = path.endswith("/") or path.endswith("/.") or path in (".", "..")
    joined = os.path.normpath(os.path.join(cwd or os.getcwd(), path))
    parts = joined.split("/")
    # A path that is there is that path, whatever its characters; else wildcards that
    # are not escaped ([*]) make it a glob (see the module).
    exists = literal or os.path.lexists(joined)
    first_wild = None if exists else next(
        (i for i, part in enumerate(parts) if names.is_pattern(part)), None)
    if first_wild is None:
        real = os.path.realpath(joined if exists else names.unescape_path(joined))
        directory = directory_given or os.path.isdir(real)
        pattern = ""
    else:
        real = os.path.realpath(names.unescape_path("/".join(parts[:first_wild])) or "/")
        directory, pattern = False, "/".join(parts[first_wild:])
    found = _repository(_existing(real))
    if found is None:
        named = names.escape_path(real)
        return names.file_resource(posixpath.join(named, pattern) if pattern else named,
                                   directory)
    top, key = found
    inside = os.path.relpath(real, top)
    if inside == ".":
        inside = ""
    if _outside(inside):  # (a symlink out of the repository it was named in)
        raise PathProblem(f"{path} is not inside {top}")
    inside = names.escape_path(inside)
    if pattern:
        inside = posixpath.join(inside, pattern) if inside else pattern
    return names.repo_resource(key, inside, directory)


def _outside(relative: str) -> bool:
    """Whether a relative path leads out of where it is relative to: its first part is
    ``..`` (``..env`` and ``...`` are names like any other)."""
    return relative == ".." or relative.startswith("../")


def resources(paths: Iterable[str], cwd: str | None = None, *,
              absolute_only: bool = False) -> list[str]:
    return [resource(path, cwd, absolute_only=absolute_only) for path in paths]


def in_repository(repo: str, relative: Iterable[str]) -> dict[str, str]:
    """Path -> name, for paths relative to the top level of the repository *repo* is in
    (what ``git status`` and ``git diff --name-only`` print; untracked directories end
    in ``/``); empty outside a repository."""
    found = _repository(_existing(os.path.realpath(repo)))
    if found is None:
        return {}
    key = found[1]
    named = {}
    for path in relative:
        try:
            named[path] = names.repo_resource(key, names.escape_path(path))
        except ValueError:
            continue  # (outside the repository: no name, no verdict)
    return named


def display(name: str, cwd: str | None = None) -> str:
    """*name* as a person in *cwd* would give it: a path relative to *cwd* when it is in
    *cwd*'s repository or under *cwd* (``src/app.py``, ``../docs/``), an absolute path
    for another file; another repository's paths and plain names as they are. What it
    gives names *name* again (:func:`resource`), whatever is on disk."""
    try:
        parsed = names.parse(name)
    except ValueError:
        return name
    if not parsed.is_file:
        return name
    cwd = os.path.realpath(cwd or os.getcwd())
    suffix = "/" if parsed.directory and parsed.parts else ""
    found = _repository(_existing(cwd))
    # As the name writes it: a file's own wildcards stay in brackets (pages/[[]id].js), so
    # it is never shown as the glob pages/[id].js is, and reads back as itself.
    path = parsed.path
    if parsed.root == names.FILE:
        absolute = "/" + path
        inside = os.path.relpath(absolute, cwd)
        near = not _outside(inside) or (
            found is not None and not _outside(os.path.relpath(absolute, found[0])))
        return (inside if near else absolute) + suffix
    if found is None or names.parse(names.repo_resource(found[1], "")).root != parsed.root:
        return name
    relative = os.path.relpath(os.path.join(found[0], path), cwd)
    return ("./" if relative == "." else relative) + suffix


def leases_of(states: Iterable[LockState]) -> list[Lease]:
    """Every lease held in *states* (``lock list``'s answer), shared ones included."""
    return [lease for state in states
            for lease in (state.leases or ([state.lease] if state.lease else []))]


def in_the_way(leases: Iterable[Lease], agent: str, path: str,
               session: int | None = None) -> list[Lease]:
    """The leases that stand in the way of an edit of *path* (a name) by *agent* in the
    session of process *session*: the guards' verdict, by the lock manager's own rule
    (another session's lease is in the way, another agent's or not; see :func:`own`)."""
    return [lease for lease in leases
            if not own(lease, agent, session) and names.covers(lease.resource, path)]
