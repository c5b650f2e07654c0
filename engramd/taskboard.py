"""Tasks that cannot be claimed twice: adding, the ready queue, claims, done and release.

A task is a TASK_STATUS unit; the store keeps each task's record (open or done)
as its units are applied, and this board keeps the open ones in memory so that
``ready`` walks no store (a done dependency is one point read). Done tasks stay in the
store only: they accumulate with the journal, and memory must not. A claim is a lease
on ``task:<id>`` (:mod:`engramd.leases`): FIFO, fenced, bound to the claiming process or
connection, so a claimer that dies or lets its lease expire frees the task at
once (the ``lock.released``/``lock.expired`` event says why). Each change of
state is written as a unit fenced with the claim's token, so a claimer that has
lost its claim cannot mark the task done.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
from collections.abc import Iterable, Iterator

import trio

from engramd import validate
from engramd.agentstore import StoredTask
from engramd.caller import Caller
from engramd.grants import session_of
from engramd.leases import LeaseManager
from engramd.locks import describe
from engramd.protocol import (
    AcquireLock,
    AddTask,
    BadRequest,
    ClaimTask,
    Conflict,
    EngramError,
    Fence,
    LockHeld,
    NotFound,
    UnitDraft,
    agentwork,
)
from engramd.protocol.bounds import MAX_PAGE, MAX_TITLE
from engramd.protocol.model import (
    TASK_PRIORITIES,
    TASK_STATES,
    Lease,
    Relationship,
    Task,
    UnitCreated,
)
from engramd.storage import Store
from engramd.wal.record import Entry
from engramd.writes import Writer


class _MovedOn(Exception):
    """The task a claim was about to write is no longer open (cluster mode: another
    machine's change, seen once this machine caught up)."""


class TaskBoard:
    def __init__(self, store: Store, writer: Writer, leases: LeaseManager) -> None:
        self.store = store
        self.writer = writer
        self.leases = leases
        self._tasks: dict[str, StoredTask] = {}
        """The open tasks (done ones are read from the store)."""
        self._queue: list[tuple[int, str]] = []
        """(priority, id) of every open task, in claim order: ``--next`` walks it from the
        front and stops at the first it can take, so done tasks cost it nothing."""
        for task in store.tasks():
            self._keep(task)

    def _keep(self, task: StoredTask) -> None:
        known = self._tasks.pop(task.id, None)
        if known is not None:
            del self._queue[bisect.bisect_left(self._queue, (known.priority, known.id))]
        if task.state == "open":
            self._tasks[task.id] = task
            bisect.insort(self._queue, (task.priority, task.id))

    def applied(self, entries: list[Entry]) -> None:
        """Follow the store: re-read the tasks these entries created or changed."""
        for entry in entries:
            for event in entry.events:
                if (isinstance(event, UnitCreated) and event.unit.type == "TASK_STATUS"
                        and agentwork.STATE in event.unit.meta):
                    task_id = event.unit.meta.get(agentwork.TASK_OF, event.unit.id)
                    stored = self.store.task(task_id)
                    if stored is not None:
                        self._keep(stored)

    # -- reading --------------------------------------------------------------------

    def _stored(self, task_id: str) -> StoredTask:
        task_id = validate.unit_id(task_id)
        found = self._tasks.get(task_id) or self.store.task(task_id)
        if found is None:
            raise NotFound(f"no task {task_id}")
        return found

    def _done(self, task_id: str) -> bool:
        if task_id in self._tasks:
            return False
        stored = self.store.task(task_id)
        return stored is not None and stored.state == "done"

    def _claim(self, task_id: str, *, live: bool = False) -> Lease | None:
        """The lease claiming the task, as the lease table holds it (until its end is
        durable); with *live*, only while it may still be used (not ending or expired)."""
        holding = self.leases.table.holding_on(agentwork.task_resource(task_id))
        if holding is None or (live and (holding.ending
                                         or holding.deadline <= trio.current_time())):
            return None
        return holding.lease

    def _open_dependencies(self, task: StoredTask) -> list[str]:
        return [dep for dep in task.depends_on if not self._done(dep)]

    def view(self, task: StoredTask) -> Task:
        claim = self._claim(task.id) if task.state == "open" else None
        return Task(id=task.id, context_id=task.context_id, title=task.title,
                    priority=task.priority, state="claimed" if claim else task.state,
                    depends_on=task.depends_on, open_dependencies=self._open_dependencies(task),
                    created_by=task.created_by, created_at=task.created_at, claim=claim,
                    done_by=task.done_by)

    def get(self, task_id: str) -> Task:
        return self.view(self._stored(task_id))

    def _is_ready(self, task: StoredTask) -> bool:
        return (task.state == "open" and not self._open_dependencies(task)
                and self.leases.table.can_take([agentwork.task_resource(task.id)]))

    def ready_in_order(self, contexts: list[str]) -> Iterator[StoredTask]:
        """Tasks free to claim, most urgent first, oldest first among equals (ids are
        UUIDv7: they sort by time)."""
        wanted = set(contexts)
        for _, task_id in self._queue:
            task = self._tasks[task_id]
            if (not wanted or task.context_id in wanted) and self._is_ready(task):
                yield task

    def ready(self, contexts: list[str]) -> list[StoredTask]:
        return list(self.ready_in_order(contexts))

    def list_tasks(self, states: list[str], ready: bool, contexts: list[str], limit: int
                   ) -> list[Task]:
        if not 1 <= limit <= MAX_PAGE:
            raise BadRequest(f"limit must be 1 to {MAX_PAGE}")
        unknown = set(states) - set(TASK_STATES)
        if unknown:
            raise BadRequest(f"unknown task state {', '.join(sorted(unknown))} "
                             f"(one of {', '.join(TASK_STATES)})")
        if ready:
            return [self.view(task) for task in self.ready(contexts)[:limit]]
        wanted = set(contexts)
        views = [self.view(task) for task in self._tasks.values()
                 if not wanted or task.context_id in wanted]
        views = [task for task in views if not states or task.state in states]
        views.sort(key=lambda task: (task.priority, task.id))
        if len(views) < limit and (not states or "done" in states):
            # After the open ones, as many done ones as fit, read from the store (a
            # task done since the last batch this board heard of is open here still).
            done = (task for task in self.store.tasks() if task.state == "done"
                    and task.id not in self._tasks
                    and (not wanted or task.context_id in wanted))
            views += [self.view(task) for task in heapq.nsmallest(
                limit - len(views), done, key=lambda task: (task.priority, task.id))]
        return views[:limit]

    def claimed_by(self, agent: str) -> list[Task]:
        return [self.view(task) for task in self._tasks.values()
                if (claim := self._claim(task.id)) is not None and claim.holder == agent]

    # -- changing -------------------------------------------------------------------

    async def add(self, request: AddTask, caller: Caller) -> Task:
        title = request.title.strip()
        validate.name(title, "task title", MAX_TITLE)
        if "\n" in title:
            raise BadRequest("a task title is one line (put the rest in its detail)")
        if request.priority not in TASK_PRIORITIES:
            raise BadRequest(f"priority must be {TASK_PRIORITIES.start} (most urgent) to "
                             f"{TASK_PRIORITIES.stop - 1}")
        for dependency in request.depends_on:
            self._stored(dependency)
        payload = title + ("\n\n" + request.detail if request.detail else "")
        meta = {**request.meta, agentwork.STATE: "open",
                agentwork.PRIORITY: str(request.priority)}
        meta.pop(agentwork.TASK_OF, None)
        draft = UnitDraft(
            context_id=request.context_id or agentwork.TASKS_CONTEXT, type="TASK_STATUS",
            payload=payload.encode(), meta=meta,
            relationships=[Relationship(type="DEPENDS_ON", target=dependency)
                           for dependency in dict.fromkeys(request.depends_on)])
        written = await self.writer.create_units([draft], caller)
        return self.get(written.units[0].id)

    async def claim(self, request: ClaimTask, caller: Caller) -> Task:
        """Claim the task asked for, or the most urgent ready one: never two at once."""
        # Without a ttl: held while the session process lives (with a pid), else the
        # longest a lease may be (bound to the connection, which ends it too).
        ttl = self.leases.max_ttl if request.ttl is None and request.pid is None \
            else request.ttl
        if request.task_id is not None:
            task = self._stored(request.task_id)
            if task.state == "done":
                raise Conflict(f"task {task.id} is done")
            if self._claimed_here(task.id, request, caller):
                return self.get(task.id)  # claimed again by its own session: that claim
            waiting = self._open_dependencies(task)
            if waiting:
                raise Conflict(f"task {task.id} waits for {', '.join(waiting)}")
            candidates: Iterable[StoredTask] = [task]
        else:
            for context_id in request.contexts:
                validate.context_id(context_id)
            candidates = self.ready_in_order(request.contexts)
        for task in candidates:
            resource = agentwork.task_resource(task.id)
            # From this check to the reservation acquire makes, nothing else runs: two
            # claims never pick the same task (a lost race moves on to the next one).
            if task.state != "open" or not self.leases.table.can_take([resource]):
                if request.task_id is None:
                    continue
                raise LockHeld(self._why_taken(task))
            # The first task that can be taken is the one: the walk ends here, before
            # anything awaits, so the queue it walks has not changed under it.
            # A claim made for an agent over a gateway ('as') has no connection of its
            # own to be bound to: it lives by its ttl, done or release.
            (lease,) = await self.leases.acquire(AcquireLock(
                resources=[resource], ttl=ttl, wait=0, pid=request.pid,
                bind_connection=request.pid is None and caller.connection is not None),
                caller)
            try:
                # In cluster mode the task may have moved on another machine before this
                # one's view saw it (done, then its claim released): looked at again
                # once everything acknowledged before the lease is applied here.
                await self.leases.caught_up()
                if self._stored(task.id).state != "open":
                    raise _MovedOn
                await self._write_state(task, "claimed", lease, caller)
            except _MovedOn:
                with trio.CancelScope(shield=True), contextlib.suppress(EngramError):
                    await self.leases.release(lease.lock_id, caller, resource)
                if request.task_id is None:
                    return await self.claim(request, caller)  # the next ready one
                now = self._stored(task.id)
                if now.state == "done":
                    raise Conflict(f"task {task.id} is done") from None
                raise LockHeld(self._why_taken(now)) from None
            except BaseException:
                # Not claimed after all (the fence failed, or the client left): the lease
                # goes too, unless it has ended already.
                with trio.CancelScope(shield=True), contextlib.suppress(EngramError):
                    await self.leases.release(lease.lock_id, caller, resource)
                raise
            return self.get(task.id)
        where = f" in {', '.join(request.contexts)}" if request.contexts else ""
        raise NotFound(f"no task is ready to claim{where}")

    def _claimed_here(self, task_id: str, request: ClaimTask, caller: Caller) -> bool:
        """Whether the caller's session holds the claim on *task_id* already."""
        claim = self._claim(task_id, live=True)
        session, _ = session_of(caller, request.pid, self.leases.machine)
        return claim is not None and claim.holder == caller.agent_id and \
            claim.session == session

    def _why_taken(self, task: StoredTask) -> str:
        claim = self._claim(task.id)
        if claim is None:
            return f"task {task.id} is being claimed by someone else"
        return (f"task {task.id} is claimed by {describe(claim.holder, claim.holder_pid)} "
                f"until {claim.expires_at.isoformat(timespec='seconds')}")

    async def finish(self, task_id: str, state: str, pid: int | None, token: int | None,
                     caller: Caller) -> Task:
        """End the caller's claim on a task: ``done``, or ``open`` (given back)."""
        task = self._stored(task_id)
        claim = self._claim(task.id, live=True)
        if claim is None:
            raise Conflict(f"task {task.id} is not claimed ({task.state}): claim it first")
        session, _ = session_of(caller, pid)
        ours = claim.holder == caller.agent_id and (
            claim.session == session or claim.fencing_token == token)
        if not ours:
            advice = ("" if claim.holder != caller.agent_id else ", not by this session "
                      "(the claim's fencing token lets another session of yours act for it)")
            raise Conflict(self._why_taken(task) + advice)
        await self._write_state(task, state, claim, caller)
        try:
            await self.leases.release(claim.lock_id, caller, claim.resource)
        except NotFound:
            pass  # it ended meanwhile (expired): the state is written all the same
        return self.get(task.id)

    async def _write_state(self, task: StoredTask, state: str, claim: Lease,
                           caller: Caller) -> None:
        """The task's new state as a unit, written only while *claim* still holds."""
        draft = UnitDraft(
            context_id=task.context_id, type="TASK_STATUS",
            payload=f"{state}: {task.title}".encode(),
            meta={agentwork.TASK_OF: task.id, agentwork.STATE: state,
                  "fencing_token": str(claim.fencing_token)},
            relationships=[Relationship(type="MODIFIES", target=task.id)],
            fence=Fence(resource=claim.resource, token=claim.fencing_token),
            # A retry of a write whose answer was lost (in cluster mode: "may or may not
            # be in the journal") finds it and writes it no second time.
            idempotency_key=f"engram.task/{task.id}/{claim.lock_id}/{state}")
        await self.writer.create_units([draft], caller)
