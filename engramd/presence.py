"""Who is here: the sessions agents announce, when each agent was last seen.

A session is announced (``session.announce``, sent by ``engram prime`` at the
start of an agent's session) with the process that is the session; the daemon
watches that process with a pidfd and marks the session gone the moment it
exits, and forgets it :data:`FORGET_AFTER` seconds later. Every process connected
to the daemon is a session too (a ``watch``, a script, the MCP server), seen at its
hello; one that lived under :data:`BRIEF` seconds (a single command) is forgotten at
once when it exits. Processes holding pid-bound leases are sessions too (the lease
manager watches them already).
None of this is journaled: it describes the processes of this boot.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import trio
from trio import TaskStatus

from engramd import validate
from engramd.pidwatch import process_exit
from engramd.protocol import BadRequest, SessionInfo

FORGET_AFTER = 600.0
"""Seconds a gone session stays listed."""
BRIEF = 10.0
"""A connected process that lived less than this is not listed once it has gone."""
MAX_SESSIONS = 4_096


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Session:
    agent: str
    pid: int
    harness: str
    started_at: dt.datetime
    last_seen: dt.datetime
    gone_at: dt.datetime | None = None
    announced: bool = True
    connections: int = 0

    def info(self, machine: str = "") -> SessionInfo:
        return SessionInfo(pid=self.pid, harness=self.harness, started_at=self.started_at,
                           last_seen=self.last_seen, gone_at=self.gone_at,
                           connections=self.connections, announced=self.announced,
                           machine=machine)


class Presence:
    def __init__(self) -> None:
        self.sessions: dict[tuple[str, int], Session] = {}
        self.last_request: dict[str, float] = {}
        """Agent -> the wall-clock time of its last request (seconds since the epoch)."""
        self.proven: set[str] = set()
        """The agents of those requests that proved who they were (a connection of
        this machine's, a token): a name alone makes no agent."""
        self._nursery: trio.Nursery | None = None
        self.machine = ""
        """Cluster mode: this machine's name, which its sessions carry."""

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def saw(self, agent: str, when: float, *, proven: bool = True) -> None:
        self.last_request[agent] = when
        if proven:
            self.proven.add(agent)

    def last_seen(self, agent: str) -> dt.datetime | None:
        when = self.last_request.get(agent)
        return None if when is None else dt.datetime.fromtimestamp(when, dt.UTC)

    def announce(self, agent: str, pid: int, harness: str) -> None:
        if pid <= 0:
            raise BadRequest("pid must be a process id")
        if harness:
            validate.name(harness, "harness", 64)
        session = self._session(agent, pid, harness)
        if session is None:
            raise BadRequest(f"more than {MAX_SESSIONS} sessions announced")
        session.announced = True
        session.harness = harness or session.harness

    def connected(self, agent: str, pid: int, client: str) -> None:
        """A connection of process *pid* said hello as *agent* (*client*: its name)."""
        self.saw(agent, _now().timestamp())
        if self._nursery is None:
            return  # still recovering: sessions are listed from the next hello on
        session = self._session(agent, pid, client[:64], announced=False)
        if session is not None:  # beyond the bound, a connection is simply not listed
            session.connections += 1

    def disconnected(self, agent: str, pid: int) -> None:
        session = self.sessions.get((agent, pid))
        if session is not None and session.connections:
            session.connections -= 1
            session.last_seen = _now()

    def _session(self, agent: str, pid: int, harness: str, *,
                 announced: bool = True) -> Session | None:
        """The live session of (*agent*, *pid*), made and watched if need be; None when
        there are too many."""
        self._forget_gone()
        now = _now()
        known = self.sessions.get((agent, pid))
        if known is not None and known.gone_at is None:
            known.last_seen = now
            return known
        if len(self.sessions) >= MAX_SESSIONS:
            return None
        session = Session(agent, pid, harness, now, now, announced=announced)
        self.sessions[(agent, pid)] = session
        assert self._nursery is not None, "presence runs before requests come"
        self._nursery.start_soon(self._watch, session)
        return session

    async def _watch(self, session: Session) -> None:
        await process_exit(session.pid)
        session.gone_at = _now()
        session.connections = 0
        lived = (session.gone_at - session.started_at).total_seconds()
        if not session.announced and lived < BRIEF:
            self.sessions.pop((session.agent, session.pid), None)

    def _forget_gone(self) -> None:
        horizon = _now() - dt.timedelta(seconds=FORGET_AFTER)
        for key, session in list(self.sessions.items()):
            if session.gone_at is not None and session.gone_at < horizon:
                del self.sessions[key]

    def of(self, agent: str) -> list[SessionInfo]:
        self._forget_gone()
        return [session.info(self.machine) for (name, _), session in self.sessions.items()
                if name == agent]

    def agents(self) -> set[str]:
        return {agent for agent, _ in self.sessions} | self.proven
