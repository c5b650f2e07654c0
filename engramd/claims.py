"""Where the lock table's claims stand in the tree of resources: which of them conflict
with a new claim, found in O(depth).

A *claim* is a resource (:mod:`engramd.protocol.resources`) and a mode, shared or
exclusive, owned by a lease held, a grant being written or a waiter (the lock table
says which; here an owner is opaque). The index is a tree per root (a repository, the
file system, each plain name alone): one node per path part. A path's claims sit on
its node, a glob's on its anchor (the directory everything it matches is in), and
every node counts the claims below it by mode, as databases keep intention locks on
a row's tables and pages. For a path, the claims that may conflict are:

* those on its node and on the nodes above it (a directory it is in, a glob anchored
  above it: that one judged by the rule, in one pass over the path);
* for a directory, every claim below it: the counts say at once whether there is one.

A session's own claims do not stand in its way (it may hold ``src/`` and then
``src/app.py``); only when something is in the way are the candidates listed to see
whose they are.

So whether a path is free is O(depth) (plus the globs anchored on its way), and a
grant, an end and a line's join each update the counts of the nodes above: O(depth).
Listing who conflicts walks only the subtree below that holds claims; so does a glob,
which judges each claim below its anchor by the rule. Every verdict here is
:func:`~engramd.protocol.resources.conflicts`'s: the index only finds its candidates
fast (a property test holds them equal).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from engramd.protocol.resources import Resource, overlaps


@dataclass(eq=False, slots=True)
class Claim:
    resource: Resource
    shared: bool
    owner: object
    session: tuple[str, str] | None = None
    """The session it is made in (``(agent, session)``): a session's own claims never
    stand in its way."""


class _Node:
    __slots__ = (
        "below_exclusive",
        "below_shared",
        "children",
        "globs",
        "here",
        "name",
        "parent",
    )

    def __init__(self, parent: _Node | None, name: str) -> None:
        self.parent = parent
        self.name = name
        self.children: dict[str, _Node] = {}
        self.here: list[Claim] = []
        """Claims on this node's path (a file or a directory of that name)."""
        self.globs: list[Claim] = []
        """Globs anchored here."""
        self.below_shared = 0
        self.below_exclusive = 0
        """Claims on the nodes below this one, by mode."""

    def empty(self) -> bool:
        return not (self.children or self.here or self.globs)


def _clash(shared: bool, claim: Claim) -> bool:
    return not (shared and claim.shared)


class ClaimIndex:
    def __init__(self) -> None:
        self._roots: dict[str, _Node] = {}
        self.count = 0

    def __len__(self) -> int:
        return self.count

    # -- changes: O(depth) ---------------------------------------------------------------

    def add(self, claim: Claim) -> None:
        resource = claim.resource
        node = self._roots.get(resource.root)
        if node is None:
            node = self._roots[resource.root] = _Node(None, resource.root)
        for part in resource.parts[:resource.anchor]:
            if claim.shared:
                node.below_shared += 1
            else:
                node.below_exclusive += 1
            child = node.children.get(part)
            if child is None:
                child = node.children[part] = _Node(node, part)
            node = child
        (node.globs if resource.glob else node.here).append(claim)
        self.count += 1

    def remove(self, claim: Claim) -> None:
        resource = claim.resource
        node = self._roots.get(resource.root)
        for part in resource.parts[:resource.anchor]:
            if node is None:
                break
            node = node.children.get(part)
        claims = None if node is None else (node.globs if resource.glob else node.here)
        if node is None or claims is None or not any(c is claim for c in claims):
            return
        claims[:] = [c for c in claims if c is not claim]
        self.count -= 1
        parent = node.parent
        while parent is not None:
            if claim.shared:
                parent.below_shared -= 1
            else:
                parent.below_exclusive -= 1
            parent = parent.parent
        while node.empty():  # take away the nodes that hold nothing any more
            if node.parent is None:
                del self._roots[node.name]
                break
            del node.parent.children[node.name]
            node = node.parent

    # -- questions --------------------------------------------------------------------------

    def conflicting(self, resource: Resource, shared: bool) -> Iterator[Claim]:
        """Every claim that conflicts with a claim on *resource* in mode *shared*."""
        for claim in self._overlapping(resource, below=True):
            if _clash(shared, claim):
                yield claim

    def blocked(self, resource: Resource, shared: bool,
                session: tuple[str, str] | None = None) -> bool:
        """Whether a claim (not *session*'s) conflicts with one on *resource*: O(depth)
        for a path that nothing stands in the way of."""
        if not self._any(resource, shared):
            return False
        return session is None or any(claim.session != session
                                      for claim in self.conflicting(resource, shared))

    def _any(self, resource: Resource, shared: bool) -> bool:
        if resource.glob:
            return any(self.conflicting(resource, shared))
        if any(_clash(shared, claim) for claim in self._overlapping(resource, below=False)):
            return True
        if not resource.directory:
            return False  # nothing is under a file
        node = self._node(resource)
        if node is None:
            return False
        return bool(node.below_exclusive or (not shared and node.below_shared))

    def overlapping(self, resource: Resource) -> Iterator[Claim]:
        """Every claim whose resource overlaps *resource*, whatever the modes."""
        return self._overlapping(resource, below=True)

    def _node(self, resource: Resource) -> _Node | None:
        node = self._roots.get(resource.root)
        for part in resource.parts[:resource.anchor]:
            if node is None:
                return None
            node = node.children.get(part)
        return node

    def _overlapping(self, resource: Resource, *, below: bool) -> Iterator[Claim]:
        node = self._roots.get(resource.root)
        anchor = resource.anchor
        for depth in range(anchor + 1):
            if node is None:
                return
            for claim in node.here:
                if depth == len(resource.parts) and not resource.glob:
                    yield claim  # the same path
                elif claim.resource.directory:
                    yield claim  # a directory it is in (or a glob's anchor is in)
                elif resource.glob and overlaps(claim.resource, resource):
                    yield claim  # a file the glob matches
            for claim in node.globs:
                if overlaps(claim.resource, resource):
                    yield claim
            if depth < anchor:
                node = node.children.get(resource.parts[depth])
        if node is None or not below or not (resource.glob or resource.directory):
            return
        for claim in _under(node):
            if not resource.glob or overlaps(claim.resource, resource):
                yield claim


def _under(node: _Node) -> Iterable[Claim]:
    """Every claim on the nodes below *node*."""
    todo = list(node.children.values())
    while todo:
        node = todo.pop()
        yield from node.here
        yield from node.globs
        todo.extend(node.children.values())
