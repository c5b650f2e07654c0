"""What the store derives for agents: mailboxes, read marks and tasks (SPECS §2.12).

A part of :class:`engramd.storage.Store` (a mixin, for the size of one module): the
keys ``b/``, ``v/``, ``j/`` and ``q/`` of the store's key layout, filed as each batch
is applied and read back through the store's checked reads.
"""

from __future__ import annotations

import datetime as dt
import heapq
import struct
from collections.abc import Iterator
from typing import Any, NamedTuple

import msgspec
from rocksdict import WriteBatch

from engramd.protocol import agentwork
from engramd.rocks import CheckedIter

_SEQ = struct.Struct(">Q")


def _text(value: str) -> bytes:
    return value.encode()


def _seq_from(key: bytes) -> int:
    return int(_SEQ.unpack_from(key, len(key) - 8)[0])


class StoredTask(msgspec.Struct, kw_only=True):
    """A task as the store keeps it; whether it is claimed is the lease table's to say."""

    id: str
    context_id: str
    title: str
    priority: int
    state: str
    """``open`` or ``done``."""
    depends_on: list[str]
    created_by: str
    created_at: dt.datetime
    done_by: str = ""


_task_decoder = msgspec.msgpack.Decoder(StoredTask)


class MailEntry(NamedTuple):
    seq: int
    ack_required: bool
    sender: str


class AgentRecords:
    """The agents' part of the store; the store gives it its checked reads."""

    def _get(self, key: Any) -> Any:
        raise NotImplementedError

    def _iter(self) -> CheckedIter:
        raise NotImplementedError

    def _values(self, prefix: bytes) -> Iterator[bytes]:
        raise NotImplementedError

    def _put_logged(self, key: bytes, value: bytes) -> None:
        raise NotImplementedError

    @staticmethod
    def _file_message(batch: WriteBatch, unit: Any, seq: bytes) -> None:
        """Index a message under each recipient, and an acknowledgement under its message."""
        flag = b"A" if agentwork.wants_ack(unit.meta) else b"-"
        for recipient in dict.fromkeys(agentwork.recipients(unit.meta)):
            batch.put(b"b/" + _text(recipient) + b"\0" + seq, flag + _text(unit.agent_id))
        acked = unit.meta.get(agentwork.ACK_OF)
        if acked:
            batch.put(b"v/" + _text(acked) + b"\0" + _text(unit.agent_id), _text(unit.id))

    def _track_task(self, tasks: dict[str, StoredTask], unit: Any) -> None:
        """A task's creation, or a change of its state (``claimed`` is the lease table's)."""
        meta = unit.meta
        state = meta[agentwork.STATE]
        task_id = meta.get(agentwork.TASK_OF)
        if task_id is None:
            if state != "open":
                return
            try:
                priority = int(meta.get(agentwork.PRIORITY, agentwork.DEFAULT_PRIORITY))
            except ValueError:
                priority = agentwork.DEFAULT_PRIORITY
            tasks[unit.id] = StoredTask(
                id=unit.id, context_id=unit.context_id,
                title=agentwork.task_title(unit.payload), priority=priority, state="open",
                depends_on=[rel.target for rel in unit.relationships
                            if rel.type == "DEPENDS_ON"],
                created_by=unit.agent_id, created_at=unit.ts)
            return
        if state not in ("open", "done"):
            return
        task = tasks.get(task_id) or self.task(task_id)
        if task is not None and task.state != "done":
            task.state = state
            task.done_by = unit.agent_id if state == "done" else ""
            tasks[task_id] = task

    # -- messages and tasks ---------------------------------------------------

    def _mailbox(self, name: str, after: int) -> Iterator[MailEntry]:
        prefix = b"b/" + _text(name) + b"\0"
        iterator = self._iter()
        iterator.seek(prefix + _SEQ.pack(after + 1))
        while iterator.valid():
            key: bytes = iterator.key()
            if not key.startswith(prefix):
                return
            value: bytes = iterator.value()
            yield MailEntry(_seq_from(key), value[:1] == b"A", value[1:].decode())
            iterator.next()

    def mail(self, agent: str, after: int = 0) -> Iterator[MailEntry]:
        """Messages to *agent* with a seq after *after*, in seq order: those addressed to
        it and the broadcasts of other agents."""
        broadcasts = (entry for entry in self._mailbox(agentwork.BROADCAST, after)
                      if entry.sender != agent)
        if agent == agentwork.BROADCAST:
            return broadcasts
        return heapq.merge(self._mailbox(agent, after), broadcasts)

    def acknowledged(self, message_id: str, agent: str) -> bool:
        return self._get(b"v/" + _text(message_id) + b"\0" + _text(agent)) is not None

    def mark(self, kind: str, agent: str) -> int:
        """How far *agent* has got in *kind* (``inbox``, ``brief``): 0 when never."""
        raw = self._get(b"q/" + _text(kind) + b"\0" + _text(agent))
        return 0 if raw is None else _seq_from(raw)

    def set_mark(self, kind: str, agent: str, seq: int) -> None:
        self._put_logged(b"q/" + _text(kind) + b"\0" + _text(agent), _SEQ.pack(seq))

    def task(self, task_id: str) -> StoredTask | None:
        raw = self._get(b"j/" + _text(task_id))
        return None if raw is None else _task_decoder.decode(raw)

    def tasks(self) -> Iterator[StoredTask]:
        return (_task_decoder.decode(raw) for raw in self._values(b"j/"))

    def _names(self, prefix: bytes) -> Iterator[str]:
        """The distinct names of ``<prefix><name>\\0<seq>`` keys, in order."""
        iterator = self._iter()
        iterator.seek(prefix)
        while iterator.valid():
            key: bytes = iterator.key()
            if not key.startswith(prefix):
                return
            name = key[len(prefix):key.index(b"\0", len(prefix))]
            yield name.decode()
            iterator.seek(prefix + name + b"\1")  # past every seq of this name

    def agents(self) -> Iterator[str]:
        """Every agent that has written a unit, in name order."""
        return self._names(b"a/")

    def addressees(self) -> Iterator[str]:
        """Every agent a message has named (``*`` among them, for a broadcast)."""
        return self._names(b"b/")

    def newest_of_agent(self, agent: str) -> int | None:
        """The seq of *agent*'s newest unit."""
        prefix = b"a/" + _text(agent) + b"\0"
        iterator = self._iter()
        iterator.seek_for_prev(prefix + b"\xff" * 8)
        if iterator.valid() and iterator.key().startswith(prefix):
            return _seq_from(iterator.key())
        return None

