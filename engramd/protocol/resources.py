"""What a lease's resource names, and the one rule that says when two leases conflict.

Pure functions (the standard library only), used by the lock manager and by every
client that judges a lease (the edit guard, the pre-commit guard, ``lock list``, the
brief), so that none of them can disagree with another.

Resources come in two kinds:

* **Files**, named canonically (the client resolves a path once, relative to its
  working directory and through its symlinks, :mod:`engram_cli.client.paths`):

  - ``file:<repo-key>:<path>``: a path inside a git repository whose key is where its
    remote lives (``github.com/ann/proj``: the key the git hooks name contexts by, so
    clones of one remote agree, on one machine or several); ``%`` and ``:`` in the
    key are written ``%25`` and ``%3A``. ``<path>`` is relative to the repository's
    top level, ``/``-separated, without ``.``, ``..``, empty parts or a trailing
    ``/``; empty, it names the whole repository (``file:github.com/ann/proj:``).
  - ``file:/<absolute path>``: any other path (a repository without a remote is
    named by where it is, so its files are absolute paths too), normalised the
    same way; ``file:/`` is the whole file system.

  A name ending in ``/`` is a directory (``file:<key>:src/``; the repository's root
  and ``file:/`` are directories too), any other a file. A lease on a directory
  covers everything under it, so two file resources *overlap* when they name the
  same path, or one is a directory the other is in (``src/`` and ``src/app.py``).
* **Plain** resources: any other string (``deploy:prod``, ``task:<id>``), opaque.
  Two overlap only when they are the same string.

**Globs.** A file resource whose path holds ``*``, ``?`` or ``[`` is a pattern: ``*``
matches any characters but ``/`` (a leading ``.`` too), ``?`` one of them, ``[...]`` one
of a set (``[!...]``: not of it), and a whole ``**`` part any number of parts, none
included (``src/**/*.py`` matches ``src/a.py`` and ``src/x/y/b.py``; ``src/**`` matches
``src`` and everything in it). A glob stands for every path it matches, each with
what is under it. A glob and a path overlap when the glob matches the path or one of
its directories, or (for a directory) something under it: decided exactly, in one
pass over the path's parts. Two globs overlap when the
literal text before their first wildcard is the same, or one is the start of the
other (``src/**/*.py`` and ``src/*.md``: conservatively yes; ``src/a*`` and ``docs/*``,
or ``src/a*`` and ``src/b*``: no): a pair that could match paths where one is, or is
inside, the other is never judged apart.

**Literal wildcard characters.** A file whose name holds ``*``, ``?`` or ``[`` is named
with each of them in brackets, as fnmatch escapes them: ``[*]``, ``[?]``, ``[[]``
(``pages/[id].js`` is ``pages/[[]id].js``, ``a*.txt`` is ``a[*].txt``). A part whose
only wildcards are such escapes is a plain part, not a pattern, so one file has one
name and a glob may hold a literal part (``pages/[[]id]/*.js``).

**The rule.** Two leases *conflict* when their resources overlap and they are not
both shared. A file edit is an exclusive claim on its path: another's lease
*covers* it when the two conflict (:func:`covers`).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache

__all__ = ["FILE", "WILDCARDS", "Resource", "parse", "overlaps", "conflicts", "covers",
           "contains", "file_resource", "repo_resource", "escape_key", "unescape_key",
           "escape_path", "unescape_path", "is_pattern"]

FILE = "file:"
WILDCARDS = "*?["
ANY_DEPTH = "**"
_ESCAPED = re.compile(r"\[([*?[])\]")
"""A wildcard character written literally: ``[*]``, ``[?]``, ``[[]``."""
_WILDCARD = re.compile(r"([*?[])")


def escape_path(path: str) -> str:
    """A literal path as it stands in a name: its wildcard characters in brackets."""
    return _WILDCARD.sub(r"[\1]", path)


def unescape_path(text: str) -> str:
    """The literal path a name's path text stands for (the reverse of :func:`escape_path`)."""
    return _ESCAPED.sub(r"\1", text)


def is_pattern(text: str) -> bool:
    """Whether *text* (a part, or a path) holds a wildcard that is not written literally."""
    return any(c in _ESCAPED.sub("", text) for c in WILDCARDS)


@dataclass(frozen=True, slots=True)
class Resource:
    """A resource name taken apart (see the module)."""

    text: str
    """The canonical name, as leases carry it."""
    root: str
    """What a name must share with another to overlap it: ``file:`` for absolute paths,
    ``file:<key>:`` for a repository's paths, the whole name for a plain resource."""
    parts: tuple[str, ...] = ()
    """A file's path, part by part (empty for the namespace's root and for plain names)."""
    glob: bool = False
    anchor: int = 0
    """A glob's number of leading parts without a wildcard: the directory every path it
    matches is in (or is). For a path, every part."""
    literal: str = ""
    """A glob's path text before its first wildcard."""
    directory: bool = False
    """A path that names a directory (its name ends in ``/``; a root does too)."""

    @property
    def is_file(self) -> bool:
        return self.root.startswith(FILE)

    @property
    def path(self) -> str:
        """The path within the root, ``/``-separated (empty for the root), as the name
        writes it (wildcard characters of a path's names in brackets)."""
        return "/".join(self.parts)

    @property
    def literal_path(self) -> str:
        """The path on disk a path (not a glob) names: :attr:`path` unescaped."""
        return unescape_path(self.path)


def escape_key(key: str) -> str:
    """A repository key as it stands in a resource name (``%`` and ``:`` escaped)."""
    return key.replace("%", "%25").replace(":", "%3A")


def unescape_key(text: str) -> str:
    return text.replace("%3A", ":").replace("%25", "%")


def repo_resource(key: str, path: str, directory: bool = False) -> str:
    """The name of *path* (relative to the top level, ``/``-separated) in the repository
    whose key is *key* (a *directory* when so, or when *path* ends in ``/``); a key that
    is an absolute path names absolute paths."""
    directory = directory or path.endswith("/")
    path = _normal_relative(path)
    directory = directory or not path
    if key.startswith("/"):
        return file_resource(posixpath.join(key, path) if path else key, directory)
    return f"{FILE}{escape_key(key)}:{path}" + ("/" if directory and path else "")


def file_resource(absolute: str, directory: bool = False) -> str:
    """The name of an absolute path outside any repository with a remote."""
    if not absolute.startswith("/"):
        raise ValueError(f"not an absolute path: {absolute!r}")
    directory = directory or absolute.endswith("/")
    normal = posixpath.normpath(absolute).lstrip("/")
    return FILE + "/" + normal + ("/" if directory and normal else "")


def _normal_relative(path: str) -> str:
    normal = posixpath.normpath(path.strip("/")) if path.strip("/") else ""
    if normal == ".":
        normal = ""
    if normal == ".." or normal.startswith("../"):
        raise ValueError(f"{path!r} is outside the repository")
    return normal


def _normal_key(key: str) -> bool:
    """*key* is as the client names a repository (``paths.remote_key``): one remote, one
    key, so that no lease can name a file in a way no other lease of it meets."""
    if "//" in key or key.endswith(("/", ".git")):
        return False
    host, slash, _ = key.partition("/")  # (a key that is a path names files file:/...)
    return bool(slash) and bool(host) and host == host.lower()


@lru_cache(maxsize=4096)
def parse(text: str) -> Resource:
    """*text* taken apart; ValueError (saying why) for a file name that is not canonical.
    (Remembered: a grant parses its resources a few times over, in O(depth) each.)"""
    if not text.startswith(FILE):
        return Resource(text=text, root=text)
    rest = text[len(FILE):]
    if rest.startswith("/"):
        root, path = FILE, rest[1:]
    else:
        key, colon, path = rest.partition(":")
        if not colon or not key:
            raise ValueError(f"{text!r} is neither {FILE}/ABSOLUTE/PATH nor "
                             f"{FILE}REPO-KEY:PATH")
        if escape_key(unescape_key(key)) != key:
            raise ValueError(f"{text!r}: a % in a repository key is written %25")
        if not _normal_key(unescape_key(key)):
            raise ValueError(f"{text!r} is not canonical: a repository key is a host in "
                             "lower case and a path, without //, a trailing / or .git (as "
                             "`engram lock acquire --path` names it)")
        root = f"{FILE}{key}:"
    directory = not path or path.endswith("/")
    path = path[:-1] if path.endswith("/") else path
    parts = tuple(path.split("/")) if path else ()
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"{text!r} is not canonical: a path without ., .., empty parts "
                         "or more than one trailing /")
    for index, part in enumerate(parts):
        if is_pattern(part):
            if directory:
                raise ValueError(f"{text!r}: a glob does not end in /")
            # (conservative: an escape such as [*] before the first wildcard ends it too)
            literal = path[:min(i for i in (path.find(c) for c in WILDCARDS) if i >= 0)]
            return Resource(text=text, root=root, parts=parts, glob=True, anchor=index,
                            literal=literal)
    return Resource(text=text, root=root, parts=parts, anchor=len(parts), literal=path,
                    directory=directory)


def _parsed(resource: str | Resource) -> Resource:
    return resource if isinstance(resource, Resource) else parse(resource)


def overlaps(a: str | Resource, b: str | Resource) -> bool:
    """Whether leases on *a* and *b* would cover a path in common (see the module)."""
    a, b = _parsed(a), _parsed(b)
    if a.root != b.root:
        return False
    if a.glob and b.glob:
        return a.literal.startswith(b.literal) or b.literal.startswith(a.literal)
    if a.glob:
        return _meets(a.parts, b)
    if b.glob:
        return _meets(b.parts, a)
    outer, inner = (a, b) if len(a.parts) <= len(b.parts) else (b, a)
    if inner.parts[:len(outer.parts)] != outer.parts:
        return False
    return len(outer.parts) == len(inner.parts) or outer.directory


def conflicts(a: str | Resource, b: str | Resource, *, a_shared: bool = False,
              b_shared: bool = False) -> bool:
    """The rule: two leases conflict when they overlap and are not both shared."""
    return not (a_shared and b_shared) and overlaps(a, b)


def covers(resource: str | Resource, path: str | Resource) -> bool:
    """Whether a lease on *resource* (shared or not) stands in the way of an edit of the
    file *path* (a canonical name): the guard's verdict, the lock manager's rule for an
    exclusive lease on *path*."""
    return conflicts(resource, path)


def contains(outer: str | Resource, inner: str | Resource) -> bool:
    """Whether every path under *inner* (a path, not a glob) is under a lease on *outer*:
    a write to *inner* is fenced by such a lease's token."""
    outer, inner = _parsed(outer), _parsed(inner)
    if outer.root != inner.root or inner.glob:
        return outer.text == inner.text
    if outer.glob:
        return any(_matches(outer.parts, inner.parts[:depth])
                   for depth in range(len(inner.parts) + 1))
    return inner.parts[:len(outer.parts)] == outer.parts and (
        outer.directory or (len(outer.parts) == len(inner.parts) and not inner.directory))


def _closure(states: set[int], pattern: tuple[str, ...]) -> set[int]:
    """*states* with every state a ``**`` part may skip to (it matches no part too)."""
    found, todo = set(states), list(states)
    while todo:
        state = todo.pop()
        if state < len(pattern) and pattern[state] == ANY_DEPTH and state + 1 not in found:
            found.add(state + 1)
            todo.append(state + 1)
    return found


def _step(states: set[int], pattern: tuple[str, ...], name: str) -> set[int]:
    after: set[int] = set()
    for state in states:
        if state < len(pattern):
            if pattern[state] == ANY_DEPTH:
                after.add(state)
            elif fnmatchcase(unescape_path(name) if "[" in name else name, pattern[state]):
                after.add(state + 1)
    return _closure(after, pattern)


def _matches(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Whether the glob's *pattern* matches exactly the path *parts*."""
    states = _closure({0}, pattern)
    for name in parts:
        states = _step(states, pattern, name)
        if not states:
            return False
    return len(pattern) in states


def _meets(pattern: tuple[str, ...], path: Resource) -> bool:
    """Whether the glob matches *path*, a directory of it, or (a directory) a path under
    it: one pass over the parts, O(len(parts) x len(pattern))."""
    states = _closure({0}, pattern)
    for name in path.parts:
        if len(pattern) in states:
            return True  # it matched a directory of the path (or the root)
        states = _step(states, pattern, name)
        if not states:
            return False
    # Left: the path itself matched, or the rest of the pattern may match parts below
    # it (each part pattern matches some name: conservatively, one always does).
    return len(pattern) in states or (path.directory and bool(states))
