"""Where an agent has got: its inbox and brief marks and its named cursors.

On one machine they live in the store only (written with RocksDB's own log). In
cluster mode an agent moves between machines, so they are shared through the
cluster (:mod:`engramd.cluster.marks`): the code that moves a mark or a cursor
tells a :class:`Marks` after (or, for the inbox, instead of) writing the store.
"""

from __future__ import annotations

from typing import Protocol

from engramd.agentstore import AgentRecords

INBOX_MARK = "inbox"
BRIEF_MARK = "brief"


class Marks(Protocol):
    local: bool
    """Marks live on this machine only (no cluster)."""

    async def fresh_cursor(self, agent: str, name: str) -> None:
        """Bring this machine's copy of *agent*'s cursor *name* up to the shared one."""

    def cursor_moved(self, agent: str, name: str, seq: int) -> None:
        """The store holds *seq* under *agent*'s cursor *name* now: share it (soon)."""

    async def cursor_shared(self, agent: str, name: str) -> None:
        """Share what the store holds under the cursor now, if the cluster answers
        within a moment (else it is shared once it does)."""

    def mark_moved(self, kind: str, agent: str, seq: int) -> None:
        """The store holds *seq* as *agent*'s mark *kind* now (the brief's): share it."""

    async def take_inbox(self, agent: str, mark: int, seq: int) -> bool:
        """Move *agent*'s inbox mark from *mark* (as read from the store) to *seq* if no
        one moved it meanwhile; False when someone did (read it again)."""
        ...


class LocalMarks:
    """One machine: the store is where marks and cursors are."""

    local = True

    def __init__(self, store: AgentRecords) -> None:
        self.store = store

    async def fresh_cursor(self, agent: str, name: str) -> None:
        pass

    def cursor_moved(self, agent: str, name: str, seq: int) -> None:
        pass

    async def cursor_shared(self, agent: str, name: str) -> None:
        pass

    def mark_moved(self, kind: str, agent: str, seq: int) -> None:
        pass

    async def take_inbox(self, agent: str, mark: int, seq: int) -> bool:
        # No checkpoint since the caller read *mark*: nobody moved it meanwhile.
        self.store.set_mark(INBOX_MARK, agent, seq)
        return True
