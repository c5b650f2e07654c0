"""Every one-request operation of the client library, written once for both clients.

An operation builds a :class:`Call`: the request, and what to make of its
reply. A client runs it: :class:`~engram_cli.client.blocking.Client` blocks for the
reply, :class:`~engram_cli.client.asynchronous.AsyncClient` awaits it. So ``engram.ping()``
returns a ``Pong`` from the one and an awaitable of it from the other, from the
same definition below (the :class:`operation` descriptor binds it to the
client it is read from). What is not one request (subscriptions, waiting for
readiness or for a lost lease) each client writes in its own terms.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, Self, TypeVar, overload

import msgspec

from engram_cli.client import requests
from engram_cli.client.requests import Payload
from engram_cli.client.settings import Target
from engramd.protocol import (
    AckCursor,
    AckMessage,
    AcknowledgeCuts,
    AcquireLock,
    AddTask,
    AgentInfo,
    AnnounceSession,
    BackupChecked,
    BackupMade,
    BreakLock,
    Brief,
    ClaimTask,
    ClientConnection,
    ClientMessage,
    ClusterReport,
    Context,
    ContextFound,
    ContextPage,
    CountUnread,
    CreateToken,
    DaemonStats,
    DaemonStatus,
    FinishTask,
    GetBrief,
    GetCluster,
    GetContext,
    GetLock,
    GetStats,
    GetStatus,
    GetTask,
    GetUnits,
    ImportUnits,
    InboxPage,
    Lease,
    ListAgents,
    ListLocks,
    ListTasks,
    ListTokens,
    LockHistory,
    LockHistoryPage,
    LockState,
    MakeBackup,
    NotFound,
    Ping,
    Pong,
    ReadInbox,
    Reindex,
    RelatedFound,
    ReleaseLock,
    ReleaseTask,
    RenewLock,
    ResolveUnitIds,
    RetentionReport,
    RevokeTokens,
    RunRetention,
    Search,
    SearchResults,
    SendMessage,
    ServerMessage,
    Shutdown,
    ShuttingDown,
    Task,
    TaskFound,
    TokenCreated,
    TokenInfo,
    Unit,
    UnitDraft,
    UnitOrigin,
    UnitPage,
    UnitsCreated,
    UnitsFound,
    UnreadCount,
    Verify,
    VerifyBackup,
    VerifyReport,
    WalCut,
    Welcome,
)

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R", bound=ServerMessage)


class Call(msgspec.Struct, Generic[T], frozen=True):
    """One request, and what its reply gives the caller."""

    request: ClientMessage[Any]
    then: Callable[[Any], T]
    wait: float | None = 0.0
    """How much longer than the client's timeout the daemon may take (None: no limit)."""


@overload
def ask(request: ClientMessage[R]) -> Call[R]: ...
@overload
def ask(request: ClientMessage[R], then: Callable[[R], T], *,
        wait: float | None = 0.0) -> Call[T]: ...
def ask(request: ClientMessage[Any], then: Callable[[Any], Any] | None = None, *,
        wait: float | None = 0.0) -> Call[Any]:
    """A call of *request*; its result is the reply, or ``then(reply)``."""
    return Call(request, then or _reply, wait)


def _reply(reply: T) -> T:
    return reply


def _nothing(reply: object) -> None:
    return None


class Runs(Protocol):
    """A blocking client: runs a call and returns its result."""

    def run(self, call: Call[T]) -> T: ...


class RunsAsync(Protocol):
    """A trio client: runs a call in a coroutine."""

    def run(self, call: Call[T]) -> Coroutine[Any, Any, T]: ...


class operation(Generic[P, T]):  # noqa: N801 (used like a decorator, as property is)
    """Makes a method that builds a :class:`Call` into one the client runs."""

    def __init__(self, build: Callable[Concatenate[Any, P], Call[T]]) -> None:
        self._build = build
        functools.update_wrapper(self, build)  # type: ignore[arg-type]

    @overload
    def __get__(self, client: None, owner: type) -> Self: ...
    @overload
    def __get__(self, client: RunsAsync,
                owner: type) -> Callable[P, Coroutine[Any, Any, T]]: ...
    @overload
    def __get__(self, client: Runs, owner: type) -> Callable[P, T]: ...
    def __get__(self, client: Any, owner: type) -> Any:
        if client is None:
            return self
        build, run = self._build, client.run

        @functools.wraps(build)
        def bound(*args: P.args, **kwargs: P.kwargs) -> Any:
            return run(build(client, *args, **kwargs))

        # Kept on the client: later lookups find it there and skip this descriptor.
        client.__dict__[build.__name__] = bound
        return bound


class Operations:
    """What both clients offer: who they are, and the operations (SPECS.md, client library)."""

    target: Target
    _protocol: ClientConnection | None

    @property
    def socket_path(self) -> str:
        return self.target.socket_path

    @property
    def agent_id(self) -> str:
        return self.target.agent_id

    _started_notice = ""
    """Set by a client that started the daemon: the notice its readiness came with."""

    @property
    def welcome(self) -> Welcome | None:
        """The daemon's answer to the handshake (its version, pid, instance)."""
        return self._protocol.welcome if self._protocol else None

    @property
    def daemon_pid(self) -> int | None:
        """The daemon's pid, from the handshake."""
        return self.welcome.pid if self.welcome else None

    @property
    def stale(self) -> str:
        """Cluster mode: why the daemon's answers may be stale (empty when they are not),
        as of the handshake."""
        return self.welcome.stale if self.welcome else ""

    @property
    def notice(self) -> str:
        """What the daemon tells the first client after it started (log tails it cut at
        start-up), or empty."""
        return (self.welcome.notice if self.welcome else "") or self._started_notice

    # -- the daemon -----------------------------------------------------------

    @operation
    def ping(self) -> Call[Pong]:
        return ask(Ping())

    @operation
    def status(self) -> Call[DaemonStatus]:
        return ask(GetStatus())

    @operation
    def stats(self) -> Call[DaemonStats]:
        """Counters, gauges and latency histograms (see SPECS.md, engram stats)."""
        return ask(GetStats())

    @operation
    def cluster(self) -> Call[ClusterReport]:
        """Cluster mode: the journal stream, this machine's view, the machines seen."""
        return ask(GetCluster())

    @operation
    def shutdown(self) -> Call[ShuttingDown]:
        """Ask the daemon to stop; it answers before it goes."""
        return ask(Shutdown())

    # -- journal --------------------------------------------------------------

    @operation
    def create_unit(self, /, context_id: str, type: str = "MESSAGE", payload: Payload = b"",
                    **options: Any) -> Call[Unit]:
        """Write one unit; see :func:`engram_cli.client.requests.draft` for the options."""
        drafts = [requests.draft(context_id, type, payload, **options)]
        return ask(requests.create_units(drafts), lambda created: created.units[0])

    @operation
    def create_units(self, drafts: Iterable[UnitDraft]) -> Call[UnitsCreated]:
        """Write units all or nothing, with one fsync."""
        return ask(requests.create_units(drafts))

    @operation
    def import_units(self, drafts: Iterable[UnitDraft], agents: Iterable[str],
                     origins: Iterable[UnitOrigin | None] = ()) -> Call[UnitsCreated]:
        """Write units of several agents (``agents[i]`` wrote ``drafts[i]``), all or nothing,
        with one fsync; a connection with an agent token may name only its own agent.
        ``origins[i]``, when given, is the id and time ``drafts[i]`` keeps (a unit of that
        id already here is not written again: it is in ``reused``)."""
        return ask(ImportUnits(units=list(drafts), agents=list(agents), origins=list(origins)))

    @operation
    def get_units(self, unit_ids: Iterable[str]) -> Call[UnitsFound]:
        return ask(GetUnits(ids=list(unit_ids)))

    @operation
    def resolve_unit_ids(self, prefixes: Iterable[str]) -> Call[list[str]]:
        """The whole id of the one unit each prefix (8 characters or more) names; raises
        :class:`~engram_cli.client.errors.NotFound` for none, ``BadRequest`` naming the
        candidates for several."""
        return ask(ResolveUnitIds(prefixes=list(prefixes)), lambda resolved: resolved.ids)

    @operation
    def get_unit(self, unit_id: str) -> Call[Unit]:
        """One unit; raises :class:`~engram_cli.client.errors.NotFound` when it does not exist."""
        def first(found: UnitsFound) -> Unit:
            if not found.units:
                raise NotFound(f"no unit {unit_id}")
            return found.units[0]

        return ask(GetUnits(ids=[unit_id]), first)

    @operation
    def list_units(self, /, context_id: str, **options: Any) -> Call[UnitPage]:
        """A context's units; see :func:`engram_cli.client.requests.list_units` for the options."""
        return ask(requests.list_units(context_id, **options))

    @operation
    def related_units(self, /, unit_id: str, **options: Any) -> Call[RelatedFound]:
        return ask(requests.related_units(unit_id, **options))

    @operation
    def create_context(self, /, context_id: str | None = None, **options: Any) -> Call[Context]:
        return ask(requests.create_context(context_id, **options), _context)

    @operation
    def get_context(self, context_id: str) -> Call[Context]:
        return ask(GetContext(context_id=context_id), _context)

    @operation
    def context_info(self, context_id: str) -> Call[ContextFound]:
        """A context with who is watching it right now (``watching``)."""
        return ask(GetContext(context_id=context_id))

    @operation
    def list_contexts(self, /, **options: Any) -> Call[ContextPage]:
        return ask(requests.list_contexts(**options))

    @operation
    def update_context(self, /, context_id: str, **changes: Any) -> Call[Context]:
        """Rename, add or remove agents, pin or unpin units, set or unset meta."""
        return ask(requests.update_context(context_id, **changes), _context)

    @operation
    def ack_cursor(self, name: str, seq: int) -> Call[None]:
        """Record that the named cursor has processed every event up to *seq*."""
        return ask(AckCursor(cursor=name, seq=seq), _nothing)

    # -- leases ---------------------------------------------------------------

    @operation
    def acquire_lock(self, resources: str | Iterable[str], *, ttl: float | None = None,
                     wait: float | None = 0.0, bind_connection: bool = False,
                     pid: int | None = None, pgid: int | None = None,
                     shared: bool = False) -> Call[list[Lease]]:
        """Lease every resource together or none; ``wait`` seconds in line (0: try once,
        None: as long as it takes). The lease belongs to this connection, or with
        ``pid`` to that process (two connections of one process are then one holder).
        ``pgid`` (with ``pid``): the process group that works under the leases; none of
        them ends while a process of it runs (the daemon stops the group first).
        ``shared``: shared leases, which coexist with other shared ones. A file is
        named canonically (:func:`engram_cli.client.paths.resource`).

        Raises ``LockHeld`` (held, no wait), ``Timeout`` (waited), ``Deadlock``.
        """
        names = [resources] if isinstance(resources, str) else list(resources)
        request = AcquireLock(resources=names, ttl=ttl, wait=wait,
                              bind_connection=bind_connection, pid=pid, pgid=pgid,
                              shared=shared)
        # The reply comes when the wait ends: allow for it on top of the timeout.
        return ask(request, lambda granted: granted.leases, wait=wait)

    @operation
    def release_lock(self, lock_id: str, resource: str | None = None) -> Call[None]:
        """End a lease; with *resource*, only if the lease is on that resource."""
        return ask(ReleaseLock(lock_id=lock_id, resource=resource), _nothing)

    @operation
    def renew_lock(self, lock_id: str, ttl: float | None = None,
                   resource: str | None = None) -> Call[Lease]:
        """Extend a lease (and adopt it on this connection if its own has gone)."""
        return ask(RenewLock(lock_id=lock_id, ttl=ttl, resource=resource),
                   lambda renewed: renewed.lease)

    @operation
    def break_lock(self, resource: str, reason: str, lock_id: str | None = None,
                   token: int | None = None) -> Call[None]:
        """End another's lease on *resource* (every shared one); with *lock_id* or
        *token*, only that lease, and none (``Conflict``) when it has ended since."""
        return ask(BreakLock(resource=resource, reason=reason, lock_id=lock_id, token=token),
                   _nothing)

    @operation
    def get_lock(self, resource: str) -> Call[LockState]:
        return ask(GetLock(resource=resource), lambda found: found.state)

    @operation
    def list_locks(self, *, agent: str | None = None,
                   prefix: str = "") -> Call[list[LockState]]:
        return ask(ListLocks(agent=agent, prefix=prefix), lambda page: page.locks)

    @operation
    def lock_history(self, *, since: dt.datetime | None = None,
                     until: dt.datetime | None = None, after: int | None = None,
                     limit: int = 1000) -> Call[LockHistoryPage]:
        """A page of the leases granted and ended, as journaled (oldest first); follow
        its ``next_cursor`` as *after* for more."""
        return ask(LockHistory(since=since, until=until, after=after, limit=limit),
                   lambda page: page)

    # -- search ---------------------------------------------------------------

    @operation
    def search(self, /, query: str = "", **options: Any) -> Call[SearchResults]:
        """Ranked search; options are the fields of :class:`engramd.protocol.Search`."""
        return ask(Search(query=query, **options))

    @operation
    def reindex(self) -> Call[None]:
        """Rebuild the search index from the store (it catches up in the background)."""
        return ask(Reindex(), _nothing)

    # -- the journal as a whole (admin token) ---------------------------------------

    @operation
    def run_retention(self, *, dry_run: bool = False) -> Call[RetentionReport]:
        """Apply the retention policies now: archive and remove what is past them
        (*dry_run*: say what would go, changing nothing)."""
        return ask(RunRetention(dry_run=dry_run))

    @operation
    def verify(self) -> Call[VerifyReport]:
        """Walk the whole store, check its counts and compare it with the log."""
        return ask(Verify())

    @operation
    def make_backup(self, path: str) -> Call[BackupMade]:
        """Copy the journal, consistent at one seq, to *path* (absolute, not there yet)
        while the daemon runs; the copy is a data dir."""
        return ask(MakeBackup(path=path))

    @operation
    def verify_backup(self, path: str) -> Call[BackupChecked]:
        """Check a backup's files, log and store against its manifest."""
        return ask(VerifyBackup(path=path))

    @operation
    def acknowledge_cuts(self, ids: Iterable[str] = ()) -> Call[list[WalCut]]:
        """Clear the notes of log tails cut at start-up (all of them without *ids*)."""
        return ask(AcknowledgeCuts(ids=list(ids)), lambda reply: reply.cuts)

    # -- agents: messages, tasks, sessions --------------------------------------

    @operation
    def send_message(self, to: str | Iterable[str], payload: Payload = b"", *,
                     context_id: str | None = None, thread: str | None = None,
                     reply_to: str | None = None, ack_required: bool = False,
                     meta: Mapping[str, str] | None = None,
                     new_recipients: bool = False) -> Call[Unit]:
        """Send a message to agents (``"*"``: every agent); returns its unit. A recipient
        no agent has been is refused (``NotFound``) unless *new_recipients*."""
        names = [to] if isinstance(to, str) else list(to)
        request = SendMessage(to=names, payload=requests.as_bytes(payload),
                              context_id=context_id, thread=thread, reply_to=reply_to,
                              ack_required=ack_required, meta=dict(meta or {}),
                              new_recipients=new_recipients)
        return ask(request, lambda created: created.units[0])

    @operation
    def inbox(self, *, limit: int = 20, peek: bool = False, wait: float = 0.0,
              pending: bool = False) -> Call[InboxPage]:
        """This agent's unread messages, oldest first, marked read unless ``peek``;
        ``wait`` seconds for one to arrive when none is unread. ``pending``: the
        messages asking for an acknowledgement not given yet."""
        return ask(ReadInbox(limit=limit, peek=peek, wait=wait, pending=pending), _reply,
                   wait=wait)

    @operation
    def unread(self) -> Call[UnreadCount]:
        """How many messages are unread (and how many wait for an acknowledgement)."""
        return ask(CountUnread())

    @operation
    def ack_message(self, message_id: str) -> Call[Unit]:
        """Acknowledge a message; returns the acknowledgement's unit."""
        return ask(AckMessage(message_id=message_id), lambda created: created.units[0])

    @operation
    def add_task(self, title: str, *, context_id: str | None = None, priority: int = 2,
                 depends_on: Iterable[str] = (), detail: str = "",
                 meta: Mapping[str, str] | None = None) -> Call[Task]:
        return ask(AddTask(title=title, context_id=context_id, priority=priority,
                           depends_on=list(depends_on), detail=detail,
                           meta=dict(meta or {})), _task)

    @operation
    def get_task(self, task_id: str) -> Call[Task]:
        return ask(GetTask(task_id=task_id), _task)

    @operation
    def list_tasks(self, *, states: Iterable[str] = (), ready: bool = False,
                   contexts: Iterable[str] = (), limit: int = 100) -> Call[list[Task]]:
        return ask(ListTasks(states=list(states), ready=ready, contexts=list(contexts),
                             limit=limit), lambda page: page.tasks)

    @operation
    def claim_task(self, task_id: str | None = None, *, contexts: Iterable[str] = (),
                   ttl: float | None = None, pid: int | None = None) -> Call[Task]:
        """Claim a task, or (no id) the most urgent ready one; the claim is a lease bound
        to this connection, or with ``pid`` to that process. Raises ``NotFound`` when
        nothing is ready, ``LockHeld`` when the task is claimed."""
        return ask(ClaimTask(task_id=task_id, contexts=list(contexts), ttl=ttl, pid=pid),
                   _task)

    @operation
    def finish_task(self, task_id: str, *, pid: int | None = None,
                    token: int | None = None) -> Call[Task]:
        """Mark a task this session has claimed done (``Conflict`` when it has not)."""
        return ask(FinishTask(task_id=task_id, pid=pid, token=token), _task)

    @operation
    def release_task(self, task_id: str, *, pid: int | None = None,
                     token: int | None = None) -> Call[Task]:
        """Give a claimed task back: it is ready again."""
        return ask(ReleaseTask(task_id=task_id, pid=pid, token=token), _task)

    @operation
    def announce_session(self, *, pid: int | None = None, harness: str = "") -> Call[None]:
        """Say that process *pid* (default: this one) is a session of this agent."""
        return ask(AnnounceSession(pid=pid, harness=harness), _nothing)

    @operation
    def list_agents(self) -> Call[list[AgentInfo]]:
        return ask(ListAgents(), lambda page: page.agents)

    @operation
    def brief(self, *, contexts: Iterable[str] = (), files: Iterable[str] = (),
              items: int = 5, advance: bool = True) -> Call[Brief]:
        """This agent's session brief (``engram prime`` prints it)."""
        return ask(GetBrief(contexts=list(contexts), files=list(files), items=items,
                            advance=advance))

    # -- tokens ---------------------------------------------------------------

    @operation
    def create_token(self, agent: str) -> Call[TokenCreated]:
        """Issue a token for *agent*; needs a client made with ``admin=True``."""
        return ask(CreateToken(agent=agent))

    @operation
    def list_tokens(self) -> Call[list[TokenInfo]]:
        return ask(ListTokens(), lambda page: page.tokens)

    @operation
    def revoke_tokens(self, *, agent: str | None = None,
                      token_id: str | None = None) -> Call[list[TokenInfo]]:
        """Revoke one token by id, or every token of *agent*; their connections close."""
        return ask(RevokeTokens(agent=agent, token_id=token_id), lambda page: page.tokens)


def _context(found: ContextFound) -> Context:
    return found.context


def _task(found: TaskFound) -> Task:
    return found.task
