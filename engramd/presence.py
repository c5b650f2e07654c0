"""Who is here: the sessions agents announce, when each agent was last seen.

A session is announced (``session.announce``, sent by ``engram prime`` at the
start of an agent's session) with the process that is the session; the daemon
watches that process with a pidfd and marks the session gone the moment it
exits, and forgets it :data:`FORGET_AFTER` seconds later. Processes holding
pid-bound leases are sessions too (the lease manager watches them already).
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

    def info(self) -> SessionInfo:
        return SessionInfo(pid=self.pid, harness=self.harness, started_at=self.started_at,
                           last_seen=self.last_seen, gone_at=self.gone_at)


class Presence:
    def __init__(self) -> None:
        self.sessions: dict[tuple[str, int], Session] = {}
        self.last_request: dict[str, float] = {}
        """Agent -> the wall-clock time of its last request (seconds since the epoch)."""
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def saw(self, agent: str, when: float) -> None:
        self.last_request[agent] = when

    def last_seen(self, agent: str) -> dt.datetime | None:
        when = self.last_request.get(agent)
        return None if when is None else dt.datetime.fromtimestamp(when, dt.UTC)

    def announce(self, agent: str, pid: int, harness: str) -> None:
        if pid <= 0:
            raise BadRequest("pid must be a process id")
        if harness:
            validate.name(harness, "harness", 64)
        self._forget_gone()
        now = _now()
        known = self.sessions.get((agent, pid))
        if known is not None and known.gone_at is None:
            known.last_seen = now
            known.harness = harness or known.harness
            return
        if len(self.sessions) >= MAX_SESSIONS:
            raise BadRequest(f"more than {MAX_SESSIONS} sessions announced")
        session = Session(agent, pid, harness, now, now)
        self.sessions[(agent, pid)] = session
        assert self._nursery is not None, "presence runs before requests come"
        self._nursery.start_soon(self._watch, session)

    async def _watch(self, session: Session) -> None:
        await process_exit(session.pid)
        session.gone_at = _now()

    def _forget_gone(self) -> None:
        horizon = _now() - dt.timedelta(seconds=FORGET_AFTER)
        for key, session in list(self.sessions.items()):
            if session.gone_at is not None and session.gone_at < horizon:
                del self.sessions[key]

    def of(self, agent: str) -> list[SessionInfo]:
        self._forget_gone()
        return [session.info() for (name, _), session in self.sessions.items()
                if name == agent]

    def agents(self) -> set[str]:
        return {agent for agent, _ in self.sessions} | set(self.last_request)
