"""What agents ask about each other and about their own situation: the directory of
agents (``agent.list``) and the session brief (``brief``, printed by ``engram prime``).

Both read what the other parts keep (the store, the mailbox, the task board, the
lease table, presence) and write nothing but the agent's since-last-brief mark.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import defaultdict

import msgspec

from engramd import validate
from engramd.caller import Caller
from engramd.leases import LeaseManager
from engramd.mail import Mailbox
from engramd.marks import BRIEF_MARK
from engramd.presence import Presence
from engramd.protocol import (
    AgentInfo,
    BadRequest,
    Brief,
    GetBrief,
    Lease,
    NotFound,
    SessionInfo,
)
from engramd.protocol import resources as names
from engramd.protocol.agentwork import BROADCAST
from engramd.protocol.model import Context
from engramd.queries import raw_units, unit_header
from engramd.storage import Store
from engramd.taskboard import TaskBoard

MAX_ITEMS = 100
MAX_COUNTED = 1_000
"""Units since the last brief are counted up to this many."""
_context_decoder = msgspec.msgpack.Decoder(Context)


def _file(path: str) -> names.Resource:
    """A changed file the brief was asked about: a canonical name (``file:...``), or
    (from an older client) any other string, which is then a plain name."""
    try:
        return names.parse(path)
    except ValueError as exc:
        raise BadRequest(f"files: {exc}") from None


class Briefing:
    def __init__(self, store: Store, mailbox: Mailbox, board: TaskBoard,
                 leases: LeaseManager, presence: Presence) -> None:
        self.store = store
        self.mailbox = mailbox
        self.board = board
        self.leases = leases
        self.presence = presence

    def _members(self) -> dict[str, list[str]]:
        """Agent -> the contexts it is a member of."""
        members: dict[str, list[str]] = defaultdict(list)
        for raw in self.store.contexts():
            context = _context_decoder.decode(raw)
            for agent in context.agent_ids:
                members[agent].append(context.id)
        return members

    def _held(self) -> list[Lease]:
        return [holding.lease for holding in self.leases.table.held.values()]

    def known(self, members: dict[str, list[str]] | None = None,
              held: list[Lease] | None = None) -> set[str]:
        """Every agent engramd has seen: writers, addressees, members, holders, sessions."""
        members = self._members() if members is None else members
        holders = {lease.holder for lease in (self._held() if held is None else held)}
        return (set(self.store.agents()) | set(self.store.addressees()) | set(members)
                | holders | self.presence.agents()) - {BROADCAST}

    def check_recipients(self, to: list[str]) -> None:
        """Refuse a recipient no agent has been (a typo would make a phantom agent)."""
        unknown = [agent for agent in to if agent != BROADCAST]
        if not unknown:
            return
        known = self.known()
        unknown = [agent for agent in unknown if agent not in known]
        if unknown:
            names = ", ".join(sorted(known)[:20]) or "none yet"
            raise NotFound(f"no agent {', '.join(unknown)} is known here (known: {names}); "
                           "check the name, or send to it as a new agent")

    def agents(self) -> list[AgentInfo]:
        members = self._members()
        held = self._held()
        leases: dict[str, int] = defaultdict(int)
        for lease in held:
            leases[lease.holder] += 1
        names = self.known(members, held)
        infos = []
        for agent in sorted(names):
            sessions = self.presence.of(agent)
            announced = {(session.machine, session.pid) for session in sessions}
            sessions += [session for session in self._lease_sessions(held, agent)
                         if (session.machine, session.pid) not in announced]
            infos.append(AgentInfo(agent=agent, sessions=sessions,
                                   last_seen=self._last_seen(agent),
                                   contexts=members.get(agent, []), leases=leases[agent],
                                   unread=self.mailbox.unread(agent)))
        return infos

    @staticmethod
    def _lease_sessions(held: list[Lease], agent: str) -> list[SessionInfo]:
        """The processes holding *agent*'s pid-bound leases: sessions too."""
        seen: dict[tuple[str, int], SessionInfo] = {}
        for lease in held:
            if lease.holder == agent and lease.pid and (lease.machine, lease.pid) not in seen:
                seen[lease.machine, lease.pid] = SessionInfo(
                    pid=lease.pid, harness="", started_at=lease.acquired_at,
                    last_seen=lease.acquired_at, machine=lease.machine)
        return list(seen.values())

    def _last_seen(self, agent: str) -> dt.datetime | None:
        seen = self.presence.last_seen(agent)
        if seen is not None:
            return seen
        seq = self.store.newest_of_agent(agent)
        raw = None if seq is None else self.store.unit_at(seq)
        if raw is None:
            return None
        return unit_header(raw).ts

    # -- the brief ----------------------------------------------------------------------

    def brief(self, request: GetBrief, caller: Caller) -> Brief:
        """The caller's brief, the answer to *request*."""
        if not 0 <= request.items <= MAX_ITEMS:
            raise BadRequest(f"items must be 0 to {MAX_ITEMS}")
        for context_id in request.contexts:
            validate.context_id(context_id)
        agent, items = caller.agent_id, request.items
        contexts = list(request.contexts) or self._members().get(agent, [])
        messages, unread = self.mailbox.newest_unread(agent, items)
        held = self._held()
        mine = [lease for lease in held if lease.holder == agent]
        files = [_file(path) for path in request.files]
        others = [lease for lease in held if lease.holder != agent
                  and any(names.covers(lease.resource, path) for path in files)]
        ready = self.board.ready(list(request.contexts))
        mark = self.store.mark(BRIEF_MARK, agent)
        head = self.store.applied_seq
        since, since_total = self._since(contexts, agent, mark, items)
        if request.advance and head > mark:
            self.store.set_mark(BRIEF_MARK, agent, head)
            self.mailbox.marks.mark_moved(BRIEF_MARK, agent, head)
        pinned = self._pinned(contexts, items)
        return Brief(
            id=request.id, agent=agent, contexts=contexts, unread=unread,
            messages=raw_units(messages),
            pending_acks=self.mailbox.pending_count(agent), leases=mine,
            others_leases=others, claimed=self.board.claimed_by(agent),
            ready=[self.board.view(task) for task in ready[:items]], ready_total=len(ready),
            since=raw_units(since), since_total=since_total, pinned=raw_units(pinned))

    def _since(self, contexts: list[str], agent: str, mark: int, items: int
               ) -> tuple[list[bytes], int]:
        """Other agents' newest units in *contexts* after seq *mark* (oldest first), and
        how many there are (counted up to :data:`MAX_COUNTED`)."""
        newest: list[tuple[bytes, bytes]] = []
        total = 0
        for context_id in contexts:
            rows = self.store.scan_context(context_id, after=mark, newest_first=True)
            others = ((key, raw) for key, raw in rows
                      if unit_header(raw).agent_id != agent)
            for taken, (key, raw) in enumerate(itertools.islice(others, MAX_COUNTED - total)):
                total += 1
                if taken < items:  # this context's newest: candidates for the newest overall
                    newest.append((key[-8:], raw))
            if total >= MAX_COUNTED:
                break
        newest.sort()  # by seq: the last 8 bytes of the key, big-endian
        return [raw for _, raw in newest[-items:]] if items else [], total

    def _pinned(self, contexts: list[str], items: int) -> list[bytes]:
        ids: list[str] = []
        for context_id in contexts:
            raw = self.store.context(context_id)
            if raw is not None:
                ids += _context_decoder.decode(raw).pinned_units
        found = self.store.units_by_id(list(dict.fromkeys(ids))[:items])
        return [raw for raw in found if raw is not None]
