"""Messages between agents: sending, the unread mark of each agent, acknowledgements.

Messages are units (see :mod:`engramd.protocol.agentwork`); the store files each
under its recipients as it is applied, so a mailbox is a range of keys in seq
order. What an agent has read is one number, the seq of the last message handed
to it (``q/inbox``), kept by the daemon: every message is handed to each
recipient once, however many sessions of it ask, and a broadcast reaches agents
that appear later too (their mark starts at 0).
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec
import trio

from engramd import validate
from engramd.agentstore import MailEntry
from engramd.caller import Caller
from engramd.marks import INBOX_MARK, LocalMarks, Marks
from engramd.protocol import (
    BadRequest,
    Forbidden,
    NotFound,
    ReadInbox,
    SendMessage,
    UnitDraft,
    agentwork,
)
from engramd.protocol.bounds import MAX_INBOX_PAGE as MAX_PAGE
from engramd.protocol.bounds import MAX_INBOX_WAIT as MAX_WAIT
from engramd.protocol.bounds import MAX_KEY
from engramd.protocol.model import Relationship, Unit, UnitCreated
from engramd.queries import unit_header
from engramd.storage import Store
from engramd.wal.record import Entry
from engramd.writes import Writer

_unit_decoder = msgspec.msgpack.Decoder(Unit)


def recipients(names: list[str]) -> list[str]:
    """The checked recipients of a message: agents, or ``*`` alone."""
    if not names:
        raise BadRequest("a message needs at least one recipient (an agent, or * for all)")
    checked = list(dict.fromkeys(name.strip() for name in names))
    for name in checked:
        if "," in name:
            raise BadRequest(f"recipient {name!r:.60} contains a comma; name one agent each")
        if name != agentwork.BROADCAST:
            validate.agent_id(name)  # a name no agent could ever have is no recipient
    if agentwork.BROADCAST in checked and len(checked) > 1:
        raise BadRequest("* already reaches every agent: send it alone")
    return checked


@dataclass
class _Counts:
    """One agent's unread messages and the messages waiting for its acknowledgement."""

    unread: int
    pending: set[str]
    """Ids of the messages that ask this agent for an acknowledgement it has not given."""


class Mailbox:
    def __init__(self, store: Store, writer: Writer, marks: Marks | None = None) -> None:
        self.store = store
        self.writer = writer
        self.marks: Marks = marks or LocalMarks(store)
        self._arrived = trio.Event()
        self._through = store.applied_seq
        """The mailbox sees the store only up to here: the last seq its follower has taken
        in. The journal thread writes the store before the follower hears of a batch; a
        count taken from the store in between would count that batch twice."""
        self._counts: dict[str, _Counts] = {}
        """For the agents asked about since the start: counted from the store once, then
        kept up to date as messages and acknowledgements come and messages are read."""

    def applied(self, entries: list[Entry]) -> None:
        """Count the messages and acknowledgements in these entries, and wake the inboxes
        waiting."""
        arrived = False
        for entry in entries:
            for event in entry.events:
                if not isinstance(event, UnitCreated) or event.unit.type != "MESSAGE":
                    continue
                unit = event.unit
                acked = unit.meta.get(agentwork.ACK_OF)
                counts = self._counts.get(unit.agent_id)
                if acked and counts is not None:
                    counts.pending.discard(acked)
                to = agentwork.recipients(unit.meta)
                if agentwork.BROADCAST in to:
                    to = [agent for agent in self._counts if agent != unit.agent_id]
                for agent in dict.fromkeys(to):
                    counts = self._counts.get(agent)
                    if counts is not None:
                        counts.unread += 1
                        if agentwork.wants_ack(unit.meta):
                            counts.pending.add(unit.id)
                arrived = arrived or bool(to)
        self._through = entries[-1].last_seq
        if arrived:
            self._arrived.set()
            self._arrived = trio.Event()

    # -- sending --------------------------------------------------------------------

    async def send(self, request: SendMessage, caller: Caller) -> Unit:
        to = recipients(request.to)
        meta = dict(request.meta)
        context_id = request.context_id
        thread = request.thread
        relationships = []
        if request.reply_to is not None:
            answered = self._message(request.reply_to)
            relationships.append(Relationship(type="RESPONDS_TO", target=answered.id))
            context_id = context_id or answered.context_id
            thread = thread or answered.meta.get(agentwork.THREAD) or answered.id
        meta[agentwork.TO] = ",".join(to)
        if thread:
            meta[agentwork.THREAD] = validate.name(thread, "thread")
        if request.ack_required:
            meta[agentwork.ACK_REQUIRED] = "true"
        draft = UnitDraft(context_id=context_id or agentwork.MESSAGES_CONTEXT, type="MESSAGE",
                          payload=request.payload, meta=meta, relationships=relationships)
        written = await self.writer.create_units([draft], caller)
        return written.units[0]

    async def acknowledge(self, message_id: str, caller: Caller) -> Unit:
        """Write the caller's acknowledgement of a message to it (once: again returns it)."""
        message = self._message(message_id)
        to = agentwork.recipients(message.meta)
        if caller.agent_id not in to and agentwork.BROADCAST not in to:
            raise Forbidden(f"message {message.id} is not addressed to {caller.agent_id}")
        meta = {agentwork.ACK_OF: message.id}
        if agentwork.THREAD in message.meta:
            meta[agentwork.THREAD] = message.meta[agentwork.THREAD]
        draft = UnitDraft(
            context_id=message.context_id, type="MESSAGE", payload=b"ack", meta=meta,
            relationships=[Relationship(type="RESPONDS_TO", target=message.id)],
            idempotency_key=f"ack:{message.id}:{caller.agent_id}"[:MAX_KEY])
        written = await self.writer.create_units([draft], caller)
        return written.units[0]

    def _message(self, unit_id: str) -> Unit:
        (raw,) = self.store.units_by_id([validate.unit_id(unit_id)])
        if raw is None:
            raise NotFound(f"no message {unit_id}")
        unit = _unit_decoder.decode(raw)
        if unit.type != "MESSAGE" or not agentwork.recipients(unit.meta):
            raise BadRequest(f"unit {unit_id} is not a message (a MESSAGE unit with recipients)")
        return unit

    # -- reading --------------------------------------------------------------------

    def _mail(self, agent: str, after: int = 0) -> Iterator[MailEntry]:
        """The messages to *agent* after seq *after*, as far as the follower has seen."""
        return itertools.takewhile(lambda entry: entry.seq <= self._through,
                                   self.store.mail(agent, after))

    def _pending(self, agent: str) -> Iterator[tuple[str, bytes]]:
        """Id and stored unit of each message asking *agent* for an acknowledgement it has
        not given, oldest first."""
        for entry in self._mail(agent):
            if not entry.ack_required:
                continue
            raw = self.store.unit_at(entry.seq)
            if raw is not None:
                unit_id = unit_header(raw).id
                if not self.store.acknowledged(unit_id, agent):
                    yield unit_id, raw

    def _counted(self, agent: str) -> _Counts:
        counts = self._counts.get(agent)
        if counts is None:
            mark = self.store.mark(INBOX_MARK, agent)
            counts = self._counts[agent] = _Counts(
                unread=sum(1 for _ in self._mail(agent, mark)),
                pending={unit_id for unit_id, _ in self._pending(agent)})
        return counts

    def unread(self, agent: str) -> int:
        return self._counted(agent).unread

    def pending_count(self, agent: str) -> int:
        return len(self._counted(agent).pending)

    def pending_acks(self, agent: str) -> list[bytes]:
        """Messages to *agent* that ask for an acknowledgement it has not given."""
        return [raw for _, raw in self._pending(agent)]

    def newest_unread(self, agent: str, count: int) -> tuple[list[bytes], int]:
        """The newest *count* unread messages (oldest first, not marked) and how many are."""
        newest = collections.deque(self._mail(agent, self.store.mark(INBOX_MARK, agent)),
                                   maxlen=count)
        return self._units(list(newest)), self.unread(agent)

    async def read(self, request: ReadInbox, caller: Caller) -> tuple[list[bytes], int]:
        """A page of the caller's unread messages (marked read unless peeking), and how
        many are still unread after it."""
        if not 1 <= request.limit <= MAX_PAGE:
            raise BadRequest(f"limit must be 1 to {MAX_PAGE}")
        if not 0 <= request.wait <= MAX_WAIT or math.isnan(request.wait):
            raise BadRequest(f"wait must be 0 to {MAX_WAIT:g} seconds")
        agent = caller.agent_id
        if request.pending:
            pending = self.pending_acks(agent)
            return pending[:request.limit], max(0, len(pending) - request.limit)
        deadline = trio.current_time() + request.wait
        while True:
            # Read and marked with no checkpoint in between on one machine: two sessions
            # of one agent asking at once each get different messages. In cluster mode
            # the mark moves only from the value read (compare-and-set): the same across
            # machines.
            mark = self.store.mark(INBOX_MARK, agent)
            page = list(itertools.islice(self._mail(agent, mark), request.limit))
            if page and not request.peek:
                counts = self._counted(agent)
                if not await self.marks.take_inbox(agent, mark, page[-1].seq):
                    continue  # another session (another machine's) moved it: again
                if self.marks.local:
                    counts.unread -= len(page)
                else:  # the mark may have moved through the watch meanwhile: count again
                    self._counts.pop(agent, None)
                    counts = self._counted(agent)
                return self._units(page), counts.unread
            if page or trio.current_time() >= deadline:
                break
            with trio.move_on_at(deadline):
                await self._arrived.wait()
        return self._units(page), self._counted(agent).unread - len(page)

    def mark_changed(self, agent: str) -> None:
        """*agent*'s inbox mark was moved by another machine: count its unread again."""
        self._counts.pop(agent, None)

    def _units(self, entries: list[MailEntry]) -> list[bytes]:
        found = (self.store.unit_at(entry.seq) for entry in entries)
        return [raw for raw in found if raw is not None]
