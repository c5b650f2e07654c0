"""Every message that crosses the socket, as msgspec Structs.

Messages are MessagePack maps tagged by their ``msg`` field. Client messages
(the handshake and requests) all carry a client-chosen ``id``; every reply
carries the ``id`` of the request it answers, so a client may pipeline many
requests on one connection and match the answers as they come. Each request
type names the reply it gets (``Ping(ClientMessage[Pong])``); besides replies
the daemon sends :class:`Push` messages for subscriptions, :class:`Notice`
messages (a lost lease), and an :class:`ErrorReply` without an id when it
closes a connection and says why.

The replies come first in this module because the requests name them.

Rules for changing this module (the wire format is a promise):

* A new message is a new Struct with a new short tag, plus a ``match`` arm on
  each side; add its golden bytes to ``tests/data/``.
* New fields go at the end and have defaults. Requests refuse unknown fields
  (the daemon must not silently ignore what a client asked for); replies
  accept them (a newer daemon may say more than an older client knows).
* Bump :data:`PROTOCOL_VERSION` only for a change an older peer cannot read.
"""

# msgspec Struct options (frozen, kw_only) are inherited by subclasses; mypy's
# dataclass model does not know that and would flag every message class.
# mypy: disable-error-code="misc"

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar, cast, get_args

import msgspec

from engramd.protocol.model import (
    MAX_MAP_ENTRIES,
    AnyEvent,
    Context,
    Lease,
    LockAcquired,
    LockExpired,
    LockReleased,
    Relationship,
    Task,
    Unit,
)

PROTOCOL_VERSION = 1

MAX_LIST_ITEMS = 10_000
"""Most items in any list of a request, checked from the length before decoding them."""
# Bounds checked by the decoder from a container's header, before any element is
# built: without them a frame of tiny strings decodes to ~20 times its size.
Names = Annotated[list[str], msgspec.Meta(max_length=MAX_LIST_ITEMS)]
Pairs = Annotated[dict[str, str], msgspec.Meta(max_length=MAX_MAP_ENTRIES)]


# -- daemon to client -------------------------------------------------------


class ServerMessage(msgspec.Struct, tag_field="msg", frozen=True, kw_only=True):
    """Base of everything the daemon sends."""


class Reply(ServerMessage):
    """Base of the answers to requests."""

    id: int


# omit_defaults: a welcome without an agent encodes as it did before it said one.
class Welcome(Reply, tag="welcome", omit_defaults=True):
    """The daemon's answer to a :class:`Hello` it accepts."""

    protocol_version: int
    daemon_version: str
    pid: int
    instance_id: str
    agent_id: str = ""
    """The agent the connection acts as (the token's, when the hello named none)."""
    stale: str = ""
    """Cluster mode, while the cluster is unreachable: why writes are refused and reads
    may be stale (answered from this machine's view). Empty otherwise."""
    notice: str = ""
    """What the first client after a start must hear (log tails cut at start-up and not
    yet acknowledged); empty for every other client and when there is nothing to tell."""


class Pong(Reply, tag="pong"):
    daemon_version: str
    uptime: float
    """Seconds since the daemon started."""
    server_time: dt.datetime
    """The daemon's wall clock, UTC."""


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    max_frame_bytes: int
    max_connections: int
    max_inflight_per_connection: int
    max_payload_bytes: int = 0
    max_batch_units: int = 0


class JournalStatus(msgspec.Struct, frozen=True, kw_only=True):
    last_seq: int
    """The newest durable sequence number."""
    checkpoint_seq: int
    """Everything up to here is in the store's own files; replay starts after it."""
    units: int
    contexts: int
    wal_segments: int
    wal_bytes: int
    durability: str
    write_error: str | None
    """Why writes are refused, when they are (a failed fsync)."""
    indexed_seq: int = 0
    """The search index has taken in everything up to here (its lag: last_seq - this)."""
    commit_batches: int = 0
    """Group commits (one write and one fsync each) since the daemon started."""
    commit_entries: int = 0
    """Commits they held: entries / batches is the mean batch size."""
    fsync_seconds: float = 0.0
    """Time spent writing and syncing the WAL since the start."""
    vector_seq: int | None = None
    """The vector index (semantic search) has taken in everything up to here; None
    when semantic search is not installed or is off."""
    approximate_lag: int = 0
    """Vectors the approximate index has yet to take in (semantic search scores them
    exactly meanwhile, §2.8)."""
    store_damage: str | None = None
    """The first damage a read of the store met since the start (the file and the fix)."""
    read_only: bool = False
    """engramd started read-only on a full disk (``write_error`` says so)."""
    index_paused: str | None = None
    """Why the search indexer is not feeding the index now (the disk nearly full)."""


class StreamStatus(msgspec.Struct, frozen=True, kw_only=True):
    subscribers: int
    live: int
    """Subscribers following the live flow (the others are reading the stored log)."""
    published: int
    delivered: int
    detached_for_lag: int
    leases_held: int
    leases_granted: int
    leases_expired: int


class ClusterPeer(msgspec.Struct, frozen=True, kw_only=True):
    """A replica of the journal stream other than its leader."""

    name: str
    current: bool
    """Caught up with the leader."""
    active_seconds: float
    """Since the leader last heard from it."""
    lag: int = 0
    """Journal entries it is behind the leader."""
    offline: bool = False


class ClusterStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Cluster mode: the journal stream and this machine's view of it."""

    deployment: str
    stream: str
    servers: list[str]
    machine: str
    """This data dir's name in the cluster."""
    reachable: bool
    """Writes are accepted (the cluster answered lately); reads are local either way."""
    view_stream_seq: int
    """The last stream message this machine's view applied."""
    stream_last_seq: int | None
    """The stream's last message, as last seen (None: never reached)."""
    lag: int | None
    """stream_last_seq - view_stream_seq."""
    replicas: int
    leader: str
    peers: list[ClusterPeer]
    storage: str = ""
    """``file`` or ``memory`` (as last seen; empty: never reached)."""
    failure: str | None = None
    """Why the view stopped following the stream (it needs a rebuild)."""
    leases_synced: bool = False
    """This machine has read the cluster's leases once: it can take and end leases."""
    refused: str = ""
    """Why the servers refuse this machine's connection (its TLS settings or its
    credentials), while they do; empty otherwise."""
    facts_age: float | None = None
    """Seconds since the stream's facts (last message, leader, replicas) were read: they
    are as of then (None: never read)."""
    unreachable_for: float | None = None
    """Seconds since the cluster stopped answering this machine (None: it answers)."""
    write_error: str | None = None
    """Why writes are refused now, as far as this machine can tell (None: accepted)."""
    servers_answering: int | None = None
    """How many of ``servers`` accepted a connection when the status was made."""
    machines_age: float | None = None
    """Seconds since the machines seen were read (None: never)."""


class ClusterMachine(msgspec.Struct, frozen=True, kw_only=True):
    """An engramd of the deployment that announced itself within the last 30 s."""

    machine: str
    host: str
    socket: str
    stream_seq: int
    applied_seq: int
    version: str


class ClusterReport(Reply, tag="cluster.report"):
    status: ClusterStatus
    machines: list[ClusterMachine]


class DaemonStatus(Reply, tag="status"):
    state: str
    """``ready`` or ``recovering`` (see SPECS.md)."""
    daemon_version: str
    protocol_version: int
    pid: int
    instance_id: str
    started_at: dt.datetime
    uptime: float
    socket: str
    data_dir: str
    config_file: str | None
    log_file: str | None
    connections: int
    requests_served: int
    limits: Limits
    journal: JournalStatus | None = None
    stream: StreamStatus | None = None
    """Live stream and lease counters (nil while recovering)."""
    cluster: ClusterStatus | None = None
    """Cluster mode only."""
    wal_cuts: list[WalCut] = []
    """Log tails cut at a start and not yet acknowledged (``wal.acknowledge``)."""


class ShuttingDown(Reply, tag="shutdown"):
    """The daemon accepted a :class:`Shutdown` and has stopped accepting."""

    pid: int


class ErrorReply(ServerMessage, tag="error"):
    """A request failed, or the connection is about to close.

    ``id`` is ``None`` when the failing frame could not be read far enough to
    find its id. ``code`` is one of :class:`~engramd.protocol.errors.ErrorCode`.
    """

    id: int | None
    code: str
    message: str


class UnitsCreated(Reply, tag="unit.created"):
    units: list[Unit]
    """In the order of the drafts."""
    reused: list[str] = []
    """Ids of units returned for an idempotency key already used, not written again."""


class UnitsFound(Reply, tag="unit.found"):
    units: list[Unit]
    missing: list[str]


class UnitIdsResolved(Reply, tag="unit.resolved"):
    ids: list[str]
    """Whole ids, one per prefix, in the order of the request."""


class UnitPage(Reply, tag="unit.page"):
    units: list[Unit]
    next_cursor: int | None
    """Pass as ``before`` (or ``after`` when paging forward) for the next page; None at the end."""


class RelatedEdge(msgspec.Struct, frozen=True, kw_only=True):
    source: str
    type: str
    target: str
    depth: int


class RelatedFound(Reply, tag="unit.related"):
    root: str
    edges: list[RelatedEdge]
    units: list[Unit]
    """The root and every unit an edge touches."""


class ContextFound(Reply, tag="context.found"):
    context: Context
    created: bool = False
    watching: list[str] = []
    """Agents with a live subscription that covers this context right now."""


class ContextPage(Reply, tag="context.page"):
    contexts: list[Context]
    next_cursor: str | None


class Subscribed(Reply, tag="subscribed"):
    subscription: int
    after: int
    """The effective cursor: events after this seq will come."""
    head_seq: int


class Done(Reply, tag="done"):
    """The request (unsubscribe, cursor ack) took effect."""


class Push(ServerMessage):
    """Base of what a subscription pushes, unasked, until it ends."""

    subscription: int
    """The id of the ``subscribe`` request that started the subscription."""


class Notice(ServerMessage):
    """Base of what the daemon tells a connection unasked, outside any subscription."""


class EventPush(Push, tag="event"):
    """One event for one subscription, pushed by the daemon."""

    event: AnyEvent


class Heartbeat(Push, tag="heartbeat"):
    """An idle subscription is alive; ``cursor`` is the last seq it was sent."""

    head_seq: int
    cursor: int


class Lagged(Push, tag="lagged"):
    """The subscription fell too far behind and has ended; resume with ``after=cursor``."""

    cursor: int
    head_seq: int


class Ended(Push, tag="ended"):
    """The daemon ended the subscription for good, and says why (an error code and its
    message): the token it was made with was revoked. Not to be resumed as it was."""

    code: str
    message: str


class Waiter(msgspec.Struct, frozen=True, kw_only=True):
    agent: str
    position: int
    """1 is next in line."""
    resources: list[str]
    session: str = ""
    """The waiting session (see :attr:`Lease.session`)."""
    pid: int = 0
    """The waiting session's process."""


class LockState(msgspec.Struct, frozen=True, kw_only=True):
    resource: str
    lease: Lease | None
    """The lease on the resource (the first of several shared ones), or None."""
    waiters: list[Waiter]
    leases: list[Lease] = []
    """Every lease on the resource (several when shared)."""
    overlapping: list[Lease] = []
    """``lock.get`` only: the leases on other resources that overlap it (a directory
    it is in, paths under it, globs matching it), whatever their mode."""


class LocksGranted(Reply, tag="lock.granted"):
    leases: list[Lease]
    """One per resource, in lexical order of the resources."""


class LeaseRenewed(Reply, tag="lock.renewed"):
    lease: Lease


class LockFound(Reply, tag="lock.found"):
    state: LockState


class LockPage(Reply, tag="lock.page"):
    locks: list[LockState]


class LockHistoryPage(Reply, tag="lock.history.page"):
    events: list[LockAcquired | LockReleased | LockExpired]
    """Oldest first, as journaled."""
    next_cursor: int | None
    """Pass as ``after`` for the next page; None when the journal was read to its end
    (or to ``until``)."""


class SearchHit(msgspec.Struct, frozen=True, kw_only=True):
    unit_id: str
    seq: int
    score: float
    """The rank's score, higher is better: BM25 relevance (keyword; 0 without words),
    cosine similarity (semantic), or the reciprocal-rank fusion of both (hybrid)."""
    snippet: str
    """Payload text around the matches, each match between ``**`` marks."""
    bm25: float | None = None
    """The BM25 relevance, when the keyword side found it (hybrid)."""
    similarity: float | None = None
    """The cosine similarity, when the semantic side found it (semantic, hybrid)."""


class SearchResults(Reply, tag="search.results"):
    total: int
    hits: list[SearchHit]


class LeaseLost(Notice, tag="lease.lost"):
    """Pushed to the holder's connection the moment one of its leases ends without it."""

    lease: Lease
    reason: str
    """``expired`` or ``broken``."""
    by: str


class TokenInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A token as listed: never its secret, which only its creation returns."""

    id: str
    agent: str
    created_at: dt.datetime


class TokenCreated(Reply, tag="token.created"):
    token: str
    """The secret; the daemon keeps only its hash, so this is the one time it is shown."""
    info: TokenInfo


class TokenPage(Reply, tag="token.page"):
    tokens: list[TokenInfo]


class TokensRevoked(Reply, tag="token.revoked"):
    tokens: list[TokenInfo]


class HistogramData(msgspec.Struct, frozen=True, kw_only=True):
    """A latency histogram: ``counts[i]`` observations were at most ``bounds[i]``
    seconds (and more than ``bounds[i-1]``); the last count is above every bound."""

    bounds: list[float]
    counts: list[int]
    count: int
    sum: float


class DaemonStats(Reply, tag="stats"):
    counters: dict[str, int]
    """Totals since the daemon started, named like Prometheus counters (labels included)."""
    gauges: dict[str, float]
    """Values now: connections, subscribers, queue depths, WAL size, index lag, memory."""
    histograms: dict[str, HistogramData]


class InboxPage(Reply, tag="inbox.page"):
    messages: list[Unit]
    """Oldest first."""
    unread: int
    """Messages still unread after this page."""


class UnreadCount(Reply, tag="inbox.counted"):
    unread: int
    pending_acks: int
    """Messages to this agent that ask for an acknowledgement it has not given."""


class TaskFound(Reply, tag="task.found"):
    task: Task


class TaskPage(Reply, tag="task.page"):
    tasks: list[Task]


class SessionInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One running instance of an agent: a process that announced itself or holds leases."""

    pid: int
    harness: str
    """What runs it (``claude-code``, ``codex``, ``engram-python``...), when known."""
    started_at: dt.datetime
    last_seen: dt.datetime
    gone_at: dt.datetime | None = None
    """When its process ended (None: still running)."""
    connections: int = 0
    """Connections it has open to engramd now (a session may hold none: a harness
    between two commands)."""
    announced: bool = True
    """It announced itself (``session.announce``); else engramd saw it connect."""
    machine: str = ""
    """Cluster mode: the machine it runs on (sessions are each machine's own; those of
    other machines show through their pid-bound leases). Empty on one machine."""


class AgentInfo(msgspec.Struct, frozen=True, kw_only=True):
    agent: str
    sessions: list[SessionInfo]
    last_seen: dt.datetime | None
    """Its last request since the daemon started, else its newest unit."""
    contexts: list[str]
    leases: int
    unread: int


class AgentPage(Reply, tag="agent.page"):
    agents: list[AgentInfo]


class Brief(Reply, tag="brief"):
    """What a session of an agent needs to know at its start (``engram prime``)."""

    agent: str
    contexts: list[str]
    """The contexts asked for, else those the agent is a member of."""
    unread: int
    messages: list[Unit]
    """The newest unread messages (not marked read), oldest first."""
    pending_acks: int
    leases: list[Lease]
    """The agent's own leases."""
    others_leases: list[Lease]
    """Other agents' leases on the files the request named."""
    claimed: list[Task]
    ready: list[Task]
    """The top ready tasks of those contexts."""
    ready_total: int
    since: list[Unit]
    """The newest units of those contexts since the agent's last brief, oldest first."""
    since_total: int
    pinned: list[Unit]


# -- client to daemon -------------------------------------------------------


ReplyT = TypeVar("ReplyT", bound=ServerMessage)


if TYPE_CHECKING:
    class ClientMessage(
        msgspec.Struct, Generic[ReplyT], tag_field="msg", frozen=True, kw_only=True,
        forbid_unknown_fields=True,
    ):
        id: int = 0
else:
    class ClientMessage(
        msgspec.Struct, tag_field="msg", frozen=True, kw_only=True, forbid_unknown_fields=True,
    ):
        """Base of everything a client sends; ``ClientMessage[Reply]`` names what a
        success is answered with.

        The client connection numbers requests as it sends them (a request built
        with the default ``id`` 0 gets the next number), so callers leave it out.

        Generic to the type checker only: at run time ``ClientMessage[Reply]`` is a
        :class:`_Answered`, which makes the class a plain ClientMessage that remembers
        its reply. (typing.Generic cost every ``engram`` start ~1.5 ms for the 44
        request classes.)
        """

        id: int = 0

        def __class_getitem__(cls, reply: type[ServerMessage]) -> _Answered:
            return _Answered(reply)


class _Answered:
    """``ClientMessage[Reply]`` at run time: as a base, ClientMessage; kept in the
    request class's ``__orig_bases__`` with its reply type."""

    def __init__(self, reply: type[ServerMessage]) -> None:
        self.reply = reply

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        return (ClientMessage,)


class Hello(ClientMessage[Welcome], tag="hello", omit_defaults=True):
    """The first message on every connection.

    ``omit_defaults``: a hello without a token encodes as it did before tokens
    existed, so a newer client still greets an older daemon.
    """

    protocol_version: int
    client_name: str
    agent_id: str
    """Who the connection acts as; empty with an agent token: the token's agent."""
    token: str | None = None
    """An agent token (the connection then acts as that agent only) or the admin token."""
    delegated: bool = False
    """With the admin token: act as ``agent_id`` with that agent's rights only, not
    the admin's (a gateway speaking for a caller it has authenticated)."""
    window: int = 0
    """Each subscription of this connection pushes at most this many messages (events,
    heartbeats) ahead of what the client has granted back (``subscription.grant``), so a
    client that multiplexes many readers can hold each to its own pace; 0: no window."""


class Ping(ClientMessage[Pong], tag="ping"):
    """Round trip: the daemon answers with :class:`Pong`."""


class GetStatus(ClientMessage[DaemonStatus], tag="status"):
    """Ask for the daemon's state, paths, counts and limits."""


class Shutdown(ClientMessage[ShuttingDown], tag="shutdown"):
    """Ask the daemon to stop gracefully (like SIGTERM)."""


class Fence(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A write allowed only while this lease token holds the resource."""

    resource: str
    token: int


class UnitDraft(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A unit as a client writes it; the daemon adds id, seq, agent, time and origin."""

    context_id: str
    type: str
    """A unit type, in any case."""
    payload: bytes = b""
    meta: Pairs = {}
    relationships: Annotated[list[Relationship], msgspec.Meta(max_length=MAX_MAP_ENTRIES)] = []
    idempotency_key: str | None = None
    """A retry with the same key returns the unit first written with it."""
    fence: Fence | None = None
    """Refused with ``conflict`` unless this token's lease holds the resource now."""


class UnitOrigin(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The id and time a unit had in the journal it was exported from: an import keeps
    both (``unit.import`` only; its seq is the importing journal's own)."""

    id: str
    """A UUID in its text form (36 characters, lowercase hex)."""
    ts: dt.datetime


class SpooledUnit(msgspec.Struct, frozen=True, kw_only=True):
    """A unit written to ``<data dir>/spool/`` (JSON) while the daemon was unreachable.

    The daemon writes spooled units when it starts, as ``agent_id``; their
    idempotency key makes a second delivery a no-op.
    """

    agent_id: str
    draft: UnitDraft


class CreateUnits(ClientMessage[UnitsCreated], tag="unit.create"):
    """Write units: all or nothing, one fsync."""

    units: Annotated[list[UnitDraft], msgspec.Meta(max_length=MAX_LIST_ITEMS)]


# omit_defaults: without origins it encodes as it did before they existed.
class ImportUnits(ClientMessage[UnitsCreated], tag="unit.import", omit_defaults=True):
    """Write units of several agents at once (``engram unit import``): all or nothing,
    one fsync. ``agents[i]`` is the agent of ``units[i]``; a connection bound to an
    agent token may name only its own agent."""

    units: Annotated[list[UnitDraft], msgspec.Meta(max_length=MAX_LIST_ITEMS)]
    agents: Names
    origins: Annotated[list[UnitOrigin | None], msgspec.Meta(max_length=MAX_LIST_ITEMS)] = []
    """None, or one per draft: where ``origins[i]`` is given, ``units[i]`` keeps that id
    and time, and is not written at all (it is in ``reused``) when the journal holds a
    unit of that id already; None gives a new id and the time of writing."""


class GetUnits(ClientMessage[UnitsFound], tag="unit.get"):
    ids: Names


class ResolveUnitIds(ClientMessage[UnitIdsResolved], tag="unit.resolve"):
    """The whole ids of units named by prefixes of their ids (at least 8 characters,
    any case): each must name exactly one unit (``not_found`` for none, ``bad_request``
    naming the candidates for several)."""

    prefixes: Names


class ListUnits(ClientMessage[UnitPage], tag="unit.list"):
    """A context's units in sequence order: the newest ``limit`` unless paging.

    ``before=SEQ`` pages back from SEQ (exclusive), ``after=SEQ`` pages forward
    from SEQ (exclusive, oldest first). ``reverse`` returns newest first.
    """

    context_id: str
    limit: int = 100
    before: int | None = None
    after: int | None = None
    reverse: bool = False
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    agents: Names = []
    types: Names = []


class RelatedUnits(ClientMessage[RelatedFound], tag="unit.related"):
    unit_id: str
    types: Names = []
    direction: str = "both"
    """``out`` (relationships this unit has), ``in`` (units pointing at it), or ``both``."""
    depth: int = 1


class CreateContext(ClientMessage[ContextFound], tag="context.create"):
    context_id: str | None = None
    """A slug such as ``build-42`` or ``git:engram/main``; generated when absent."""
    display_name: str | None = None
    meta: Pairs = {}


class GetContext(ClientMessage[ContextFound], tag="context.get"):
    context_id: str


class ListContexts(ClientMessage[ContextPage], tag="context.list"):
    limit: int = 100
    after: str | None = None
    """Page on from this context id (exclusive)."""
    prefix: str = ""


class UpdateContext(ClientMessage[ContextFound], tag="context.update"):
    context_id: str
    display_name: str | None = None
    add_agents: Names = []
    remove_agents: Names = []
    pin: Names = []
    unpin: Names = []
    set_meta: Pairs = {}
    unset_meta: Names = []


class Subscribe(ClientMessage[Subscribed], tag="subscribe"):
    """Start pushing matching events; the subscription's id is this request's id.

    Filters combine with AND; each list matches any of its values; empty means all.
    ``after`` is the cursor: events with a greater seq are delivered (None: from
    now on, 0: from the start). A ``cursor`` name resumes after that name's last
    acknowledged seq, when it has one; a name without one is stored at where ``after``
    starts, so that the next subscription under it gets what came after.
    """

    contexts: Names = []
    kinds: Names = []
    agents: Names = []
    types: Names = []
    meta: Pairs = {}
    after: int | None = None
    cursor: str | None = None
    heartbeat: float | None = None
    """Seconds between heartbeats on an idle subscription (None: the daemon's setting)."""


class Unsubscribe(ClientMessage[Done], tag="unsubscribe"):
    subscription: int


class GrantPushes(ClientMessage[Done], tag="subscription.grant"):
    """Let *subscription* push *count* more messages (a connection with a ``window``);
    the credit never exceeds the window."""

    subscription: int
    count: int


class AckCursor(ClientMessage[Done], tag="cursor.ack"):
    """Remember that the named cursor has processed everything up to ``seq``."""

    cursor: str
    seq: int


# omit_defaults: without a pgid these encode with what an older daemon reads.
class AcquireLock(ClientMessage[LocksGranted], tag="lock.acquire", omit_defaults=True):
    """Take leases on all of ``resources`` together, or none.

    ``wait``: 0 tries once; N waits up to N seconds in a first-come, first-served
    line; None waits as long as it takes. ``bind_connection`` releases the
    leases when this connection closes; ``pid`` releases them when that process
    exits and makes that process the holding session (else this connection is).
    ``pgid`` (with ``pid``): the process group working under the leases, led by a
    process of ``pid``'s session; no lease ends while a process of it runs.
    ``shared``: shared (readers') leases, which coexist with each other.
    """

    resources: Names
    ttl: float | None = None
    wait: float | None = 0.0
    bind_connection: bool = False
    pid: int | None = None
    pgid: int | None = None
    shared: bool = False


# omit_defaults: without a resource these encode as they did before it existed,
# so an older daemon still reads them.
class ReleaseLock(ClientMessage[Done], tag="lock.release", omit_defaults=True):
    lock_id: str
    resource: str | None = None
    """When given, the lease must be on this resource (else ``not_found``)."""


class RenewLock(ClientMessage[LeaseRenewed], tag="lock.renew", omit_defaults=True):
    """Extend a lease; from a connection other than the one that took it, also
    adopt it when that one has gone (its lost-lease notices, and the binding of
    a connection-bound lease, move here)."""

    lock_id: str
    ttl: float | None = None
    """The new time to live from now (None: the lease's own ttl)."""
    resource: str | None = None
    """When given, the lease must be on this resource (else ``not_found``)."""


class BreakLock(ClientMessage[Done], tag="lock.break", omit_defaults=True):
    """End someone else's lease, recording who did it and why."""

    resource: str
    reason: str
    """Why, in words: blank (whitespace alone) is refused."""
    lock_id: str | None = None
    """The lease to end, as the breaker was shown it: when the resource is held by
    another lease now (its holder let go and the next took it), ``conflict``. Only
    that lease ends (not every shared one on the resource)."""
    token: int | None = None
    """The same, by the lease's fencing token."""


class GetLock(ClientMessage[LockFound], tag="lock.get"):
    resource: str


class ListLocks(ClientMessage[LockPage], tag="lock.list"):
    agent: str | None = None
    prefix: str = ""


class LockHistory(ClientMessage[LockHistoryPage], tag="lock.history"):
    """The leases granted and ended as the journal holds them (``lock.acquired``,
    ``lock.released``, ``lock.expired``; renewals are left out), oldest first: from
    ``since`` (nil: the journal's start), or after the seq ``after`` to page on, to
    ``until`` (nil: now). One request walks a bounded stretch of the journal: a page may
    hold fewer than ``limit`` events and still have a ``next_cursor``."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    after: int | None = None
    limit: int = 1000


class Search(ClientMessage[SearchResults], tag="search"):
    """Ranked full-text search with filters; a query may be filters alone.

    ``query`` words are matched as plain terms (all required); with ``advanced``
    the query is FTS5 syntax (phrases, prefix*, NEAR, AND/OR/NOT).
    """

    query: str = ""
    advanced: bool = False
    contexts: Names = []
    agents: Names = []
    types: Names = []
    meta: Pairs = {}
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    related_to: str | None = None
    related_types: Names = []
    related_direction: str = "both"
    related_depth: int = 1
    limit: int = 20
    offset: int = 0
    mode: str = "keyword"
    """``keyword`` (BM25), ``semantic`` (embeddings; needs engram-journal[semantic]) or
    ``hybrid`` (reciprocal-rank fusion of both)."""
    min_similarity: float | None = None
    """Semantic and hybrid: leave out units less similar than this (cosine, -1 to 1)."""
    exact: bool = False
    """Semantic and hybrid: score every vector, never the approximate index (slower on a
    large journal; what a measure of the approximate index's recall compares with)."""


class Reindex(ClientMessage[Done], tag="search.reindex"):
    """Rebuild the search index from the store (in the background)."""


class CreateToken(ClientMessage[TokenCreated], tag="token.create"):
    """Issue a new token for *agent* (needs the admin token)."""

    agent: str


class ListTokens(ClientMessage[TokenPage], tag="token.list"):
    """Every token issued and not revoked (needs the admin token)."""


class RevokeTokens(ClientMessage[TokensRevoked], tag="token.revoke"):
    """Revoke the token *token_id*, or every token of *agent* (needs the admin token)."""

    agent: str | None = None
    token_id: str | None = None


class GetStats(ClientMessage[DaemonStats], tag="stats"):
    """Counters, gauges and latency histograms (``engram stats``)."""


class GetCluster(ClientMessage[ClusterReport], tag="cluster.status"):
    """Cluster mode: the journal stream, this machine's view, the machines seen."""


class SendMessage(ClientMessage[UnitsCreated], tag="message.send"):
    """Write a message to agents (``*``: every agent, also ones that appear later)."""

    to: Names
    payload: bytes = b""
    context_id: str | None = None
    """None: the ``messages`` context (or the context of the message replied to)."""
    thread: str | None = None
    """None: the thread of the message replied to, if any."""
    reply_to: str | None = None
    """A message this one answers (a RESPONDS_TO relationship)."""
    ack_required: bool = False
    meta: Pairs = {}
    new_recipients: bool = False
    """The recipients may be agents engramd has not seen yet; without it a name no agent
    has used (a typo, most often) is refused, naming the agents it knows."""


class ReadInbox(ClientMessage[InboxPage], tag="inbox"):
    """The calling agent's unread messages, oldest first, marked read unless ``peek``.

    ``wait`` seconds: when none is unread, answer as soon as one arrives (or empty
    after that long). ``pending``: instead, the messages that ask this agent for an
    acknowledgement it has not given, read or not (nothing is marked).
    """

    limit: int = 20
    peek: bool = False
    wait: float = 0.0
    pending: bool = False


class CountUnread(ClientMessage[UnreadCount], tag="inbox.count"):
    """How many messages the calling agent has unread, without listing them."""


class AckMessage(ClientMessage[UnitsCreated], tag="message.ack"):
    """Acknowledge a message (written as a unit that RESPONDS_TO it)."""

    message_id: str


class AddTask(ClientMessage[TaskFound], tag="task.add"):
    title: str
    context_id: str | None = None
    """None: the ``tasks`` context."""
    priority: int = 2
    """0 (most urgent) to 4."""
    depends_on: Names = []
    detail: str = ""
    """More text, after the title in the task's payload."""
    meta: Pairs = {}


class GetTask(ClientMessage[TaskFound], tag="task.get"):
    task_id: str


class ListTasks(ClientMessage[TaskPage], tag="task.list"):
    """Tasks, most urgent first, oldest first among equals."""

    states: Names = []
    """Any of ``open``, ``claimed``, ``done`` (empty: all)."""
    ready: bool = False
    """Only tasks ready to claim: open, unclaimed, every dependency done."""
    contexts: Names = []
    limit: int = 100


class ClaimTask(ClientMessage[TaskFound], tag="task.claim"):
    """Claim a task (``task_id``), or the most urgent ready one (None), never twice.

    The claim is a lease on ``task:<id>``: bound to process ``pid`` when given (its
    session), else to this connection; it ends at ``ttl`` (None: ``locks.max_ttl``).
    """

    task_id: str | None = None
    contexts: Names = []
    """For the next ready task: only from these contexts (empty: any)."""
    ttl: float | None = None
    pid: int | None = None


class FinishTask(ClientMessage[TaskFound], tag="task.done"):
    """Mark a claimed task done; only its claim's session (``pid``, else this
    connection) or its agent showing the claim's fencing ``token`` may."""

    task_id: str
    pid: int | None = None
    token: int | None = None


class ReleaseTask(ClientMessage[TaskFound], tag="task.release"):
    """Give a claimed task back (ready again); who may, as for ``task.done``."""

    task_id: str
    pid: int | None = None
    token: int | None = None


class AnnounceSession(ClientMessage[Done], tag="session.announce"):
    """Say that process ``pid`` (None: the connecting one) is a session of this agent,
    run by ``harness``; it is listed by ``agent.list`` until it exits."""

    pid: int | None = None
    harness: str = ""


class ListAgents(ClientMessage[AgentPage], tag="agent.list"):
    """Every agent known: who wrote, holds, announced a session or was addressed."""


class GetBrief(ClientMessage[Brief], tag="brief"):
    """The calling agent's session brief; ``advance`` moves its since-last-brief mark."""

    contexts: Names = []
    files: Names = []
    """Paths changed in the agent's working tree: others' leases on them are listed."""
    items: int = 5
    """How many of each list (messages, tasks, units since) at most."""
    advance: bool = True


# -- the journal's care: cuts at start-up, backups -------------------------------------
# (Replies and their parts first, then the requests that name them.)


class WalCut(msgspec.Struct, frozen=True, kw_only=True):
    """Bytes cut off the end of the log at a start (a torn tail), reported until a
    ``wal.acknowledge`` clears it: a crash leaves such a tail, and so does damage to an
    acknowledged record on disk, which the daemon cannot always tell apart."""

    id: str
    at: dt.datetime
    """When the daemon cut it."""
    segment: str
    """The segment file it was cut from."""
    offset: int
    bytes: int
    reason: str
    """What was wrong there (``checksum mismatch``, a record running past the end...)."""
    seq: int | None
    """The seq the first cut record would have had (None: the segment held no record)."""
    last_seq: int | None
    """The last seq of the cut bytes, when they still decode."""
    unit_ids: list[str]
    """The units in the cut bytes, when they still decode."""
    acknowledged: str
    """Whether the cut record may have been acknowledged to its writer: ``unlikely`` (the
    write was cut short: no fsync had covered it), ``possibly`` (a whole record whose
    checksum fails: a torn write, or an acknowledged record damaged on disk), ``yes``
    (the store had applied it; its changes are kept there)."""
    saved: str
    """The file the cut bytes were put in."""
    summary: str
    """The whole of it in one line for people."""


def cuts_notice(cuts: list[WalCut]) -> str:
    """The one warning a client shows of log tails cut at start-up (empty: none)."""
    if not cuts:
        return ""
    more = f" (and {len(cuts) - 1} more)" if len(cuts) > 1 else ""
    return (f"{cuts[-1].summary}{more}; 'engram daemon cuts' shows them, "
            "'engram daemon cuts --acknowledge' clears this notice")


class CutsAcknowledged(Reply, tag="wal.acknowledged"):
    cuts: list[WalCut]
    """The notes cleared."""


class BackupInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a backup holds; its manifest (``backup.json``) says the same."""

    path: str
    made_at: dt.datetime
    daemon_version: str
    seq: int
    """The journal's last seq in the copy: every change up to it, none after."""
    store_seq: int
    """The store's applied seq in the copy; a daemon started on it replays the log's
    entries after it."""
    units: int
    contexts: int
    leases: int
    """Leases held at ``seq``."""
    tasks: int
    files: int
    bytes: int


class BackupMade(Reply, tag="backup.made"):
    backup: BackupInfo
    paused_seconds: float
    """How long writes waited for the backup (the store's checkpoint and the log's links)."""
    seconds: float
    """The whole backup, copying included."""


class BackupChecked(Reply, tag="backup.checked"):
    ok: bool
    backup: BackupInfo | None
    """What the backup's manifest says (None when it cannot be read)."""
    problems: list[str]
    """One line each: a file missing or changed, a damaged log record, a count that
    differs from the manifest. Empty when ``ok``."""


class AcknowledgeCuts(ClientMessage[CutsAcknowledged], tag="wal.acknowledge"):
    """Clear the notes of log tails cut at start-up (needs the admin token)."""

    ids: Names = []
    """The notes to clear (``WalCut.id``); empty: every one."""


class MakeBackup(ClientMessage[BackupMade], tag="backup"):
    """Copy the journal, consistent at one seq, to a new directory while the daemon runs
    (needs the admin token). The copy is a data dir: ``engramd --data-dir PATH``."""

    path: str
    """An absolute path that does not exist yet, in a directory that does."""


class VerifyBackup(ClientMessage[BackupChecked], tag="backup.verify"):
    """Check a backup: its files against its manifest, its log's checksums and seqs, its
    store's counts (needs the admin token)."""

    path: str


# -- the store walk (issue 33) ------------------------------------------------


class StoreDamage(msgspec.Struct, frozen=True, kw_only=True):
    """A stretch of the store that could not be read."""

    file: str
    """The file RocksDB named (else the store's directory)."""
    reason: str
    after_key: str
    """The last key read before the damage (empty: from the start)."""
    resumed_at: str
    """The first key read after the damage (empty: none could be): the keys between the
    two were not read."""


class VerifyReport(Reply, tag="verify.report"):
    """What a walk of the whole store found, against the log (SPECS §3.4)."""

    ok: bool
    """No damage, every count agrees, the log and the store agree."""
    applied_seq: int
    """The store's applied seq in the snapshot walked."""
    keys: int
    units: int
    """Units found (``u/`` keys); ``units_expected`` is the store's own count."""
    units_expected: int
    contexts: int
    contexts_expected: int
    events: int
    """Entries of the store's event log (one per seq, ``applied_seq`` when whole)."""
    walked_all: bool
    """False when damage stopped the walk before the end of the store."""
    damage: list[StoreDamage]
    log_first_seq: int
    """The first seq the log still holds (1: the whole journal; 0: none, or cluster mode)."""
    log_last_seq: int
    log_units: int
    """Units in the log up to ``applied_seq``."""
    missing: list[list[int]]
    """``[first, last]`` seq ranges the store lacks (or holds as another kind of event)."""
    unrecoverable: list[list[int]]
    """Of those, the ranges the log no longer holds either: a rebuild cannot restore them."""
    rebuild_complete: bool
    """Whether ``engramd --rebuild-store`` would give back everything the store should hold."""
    problems: list[str]
    """One line per finding, for people."""
    seconds: float


class Verify(ClientMessage[VerifyReport], tag="verify"):
    """Walk the whole store, check its counts and compare it with the log (admin token)."""


# -- retention (issue 40) -------------------------------------------------------


class RetentionContext(msgspec.Struct, frozen=True, kw_only=True):
    """What a retention policy does (or would do, in a dry run) to one context."""

    context_id: str
    units: int
    """Units archived and removed (a dry run: that would be)."""
    held: int
    """Units past the policy that stay: pinned, a task not done, a message awaiting an
    acknowledgement."""
    kept: int
    """Units of the context that stay, the held ones among them."""
    bytes: int
    """The removed units' stored bytes."""
    oldest: dt.datetime | None
    """The oldest removed unit's time (nil: none removed)."""
    newest: dt.datetime | None
    archive: str
    """The archive file written (empty in a dry run, or when nothing is removed)."""


class RetentionPolicyReport(msgspec.Struct, frozen=True, kw_only=True):
    context: str
    """The policy's ``context`` pattern (an id, or a prefix ending in ``*``)."""
    max_age: float | None
    """Seconds, or nil."""
    max_units: int | None
    contexts: list[RetentionContext]
    """The contexts it covers that it removes units of (or would), in id order."""
    shadowed_by: str | None = None
    """An earlier policy's ``context`` that covers every context this one could: this
    one never applies (the first policy that covers a context is its own)."""


class RetentionReport(Reply, tag="gc.report"):
    """What a retention run did (``dry_run``: would do)."""

    dry_run: bool
    policies: list[RetentionPolicyReport]
    units: int
    """Units removed (would be) in all."""
    bytes: int
    archive_dir: str
    seconds: float


class RunRetention(ClientMessage[RetentionReport], tag="gc"):
    """Apply the retention policies now (admin token under ``auth.require_tokens``);
    ``dry_run``: say what they would archive and remove, changing nothing."""

    dry_run: bool = False


Request = (
    Ping | GetStatus | Shutdown | CreateUnits | ImportUnits | GetUnits | ListUnits
    | RelatedUnits | CreateContext | GetContext | ListContexts | UpdateContext | Subscribe
    | Unsubscribe | AckCursor | AcquireLock | ReleaseLock | RenewLock | BreakLock | GetLock
    | ListLocks | LockHistory | Search | Reindex | CreateToken | ListTokens | RevokeTokens
    | GetStats | ResolveUnitIds | SendMessage | ReadInbox | CountUnread | AckMessage | AddTask
    | GetTask
    | ListTasks | ClaimTask | FinishTask | ReleaseTask | AnnounceSession | ListAgents | GetBrief
    | GetCluster
    | AcknowledgeCuts | MakeBackup | VerifyBackup | Verify | GrantPushes | RunRetention
)
"""Requests allowed after the handshake."""


class SpeakFor(ClientMessage[Reply], tag="as", kw_only=True):
    """*request* made for an agent by a connection that speaks for many (a gateway):
    only a connection holding the admin token (not delegated) may send it.

    Who the agent is, is proved as in a hello: ``token`` (an agent token, checked
    here: its agent), or ``agent_id`` with ``delegated`` (the sender vouches for it
    and it gets that agent's rights), or ``agent_id`` alone (as a hello without a
    token: refused under ``auth.require_tokens``). The request is its own session
    (``connection_id/id``): what it takes (a lease, a claim) is bound to no
    connection and lives by its ttl. Its answer is *request*'s, with this id.
    """

    agent_id: str = ""
    token: str | None = None
    delegated: bool = False
    request: Request

AnyClientMessage = (
    Hello | Ping | GetStatus | Shutdown | CreateUnits | ImportUnits | GetUnits | ListUnits
    | RelatedUnits | CreateContext | GetContext | ListContexts | UpdateContext | Subscribe
    | Unsubscribe | AckCursor | AcquireLock | ReleaseLock | RenewLock | BreakLock | GetLock
    | ListLocks | LockHistory | Search | Reindex | CreateToken | ListTokens | RevokeTokens
    | GetStats | ResolveUnitIds | SendMessage | ReadInbox | CountUnread | AckMessage | AddTask
    | GetTask
    | ListTasks | ClaimTask | FinishTask | ReleaseTask | AnnounceSession | ListAgents | GetBrief
    | GetCluster
    | AcknowledgeCuts | MakeBackup | VerifyBackup | Verify | GrantPushes | RunRetention
    | SpeakFor
)


AnyServerMessage = (
    Welcome | Pong | DaemonStatus | ShuttingDown | ErrorReply | UnitsCreated | UnitsFound
    | UnitPage | RelatedFound | ContextFound | ContextPage | Subscribed | Done | EventPush
    | Heartbeat | Lagged | LocksGranted | LeaseRenewed | LockFound | LockPage | LockHistoryPage
    | LeaseLost
    | SearchResults | TokenCreated | TokenPage | TokensRevoked | DaemonStats | UnitIdsResolved
    | InboxPage | UnreadCount | TaskFound | TaskPage | AgentPage | Brief | ClusterReport
    | CutsAcknowledged | BackupMade | BackupChecked | VerifyReport | Ended | RetentionReport
)


def reply_type(request: type[ClientMessage[ReplyT]]) -> type[ReplyT]:
    """The message a request of this type is answered with when it succeeds."""
    return cast(type[ReplyT], _REPLY_TYPES[request])


_REPLY_TYPES: dict[type[ClientMessage[Any]], type[ServerMessage]] = {
    cls: cls.__orig_bases__[0].reply for cls in get_args(AnyClientMessage)
}


__all__ = [
    "AckCursor", "AckMessage", "AcknowledgeCuts", "AcquireLock", "AddTask", "AgentInfo",
    "AgentPage", "AnnounceSession", "AnyClientMessage", "AnyServerMessage", "BackupChecked",
    "BackupInfo", "BackupMade", "BreakLock", "Brief", "ClaimTask", "ClientMessage",
    "ClusterMachine", "ClusterPeer", "ClusterReport", "ClusterStatus", "ContextFound",
    "ContextPage", "CountUnread", "CreateContext", "CreateToken", "CreateUnits", "cuts_notice",
    "CutsAcknowledged", "DaemonStats", "DaemonStatus", "Done", "Ended", "ErrorReply",
    "EventPush", "Fence", "FinishTask", "GetBrief", "GetCluster", "GetContext", "GetLock",
    "GetStats", "GetStatus", "GetTask", "GetUnits", "GrantPushes", "Heartbeat", "Hello",
    "HistogramData", "ImportUnits",
    "InboxPage", "JournalStatus", "Lagged", "LeaseLost", "LeaseRenewed", "Limits",
    "ListAgents", "ListContexts", "ListLocks", "ListTasks", "ListTokens", "ListUnits",
    "LockFound", "LockHistory", "LockHistoryPage", "LockPage", "LocksGranted", "LockState",
    "MakeBackup", "Notice", "Ping",
    "Pong", "PROTOCOL_VERSION", "Push", "ReadInbox", "Reindex", "RelatedEdge", "RelatedFound",
    "RelatedUnits", "ReleaseLock", "ReleaseTask", "RenewLock", "Reply", "reply_type", "ReplyT",
    "Request", "ResolveUnitIds", "RetentionContext", "RetentionPolicyReport", "RetentionReport",
    "RunRetention", "RevokeTokens", "Search", "SearchHit", "SearchResults",
    "SendMessage", "ServerMessage", "SessionInfo", "Shutdown", "ShuttingDown", "SpeakFor",
    "SpooledUnit",
    "StoreDamage", "StreamStatus", "Subscribe", "Subscribed", "TaskFound", "TaskPage",
    "TokenCreated", "TokenInfo", "TokenPage", "TokensRevoked", "UnitDraft", "UnitIdsResolved",
    "UnitOrigin", "UnitPage", "UnitsCreated", "UnitsFound", "UnreadCount", "Unsubscribe",
    "UpdateContext", "Verify", "VerifyBackup", "VerifyReport", "Waiter", "WalCut", "Welcome",
]
