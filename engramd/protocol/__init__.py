"""The contract between engramd and its clients: pure data and pure functions.

Imports only the standard library and msgspec: no sockets, no files, no trio.
This package is the only part of :mod:`engramd` that :mod:`engram_cli` uses.
"""

from engramd.protocol.address import (
    MAX_SOCKET_PATH_BYTES as MAX_SOCKET_PATH_BYTES,
)
from engramd.protocol.address import (
    SocketPathTooLong as SocketPathTooLong,
)
from engramd.protocol.address import (
    admin_token_path as admin_token_path,
)
from engramd.protocol.address import (
    check_socket_path as check_socket_path,
)
from engramd.protocol.address import (
    default_config_file as default_config_file,
)
from engramd.protocol.address import (
    log_file_in as log_file_in,
)
from engramd.protocol.address import (
    resolve_data_dir as resolve_data_dir,
)
from engramd.protocol.address import (
    resolve_socket_path as resolve_socket_path,
)
from engramd.protocol.address import (
    unusable_dir as unusable_dir,
)
from engramd.protocol.client import (
    ClientConnection as ClientConnection,
)
from engramd.protocol.client import (
    result as result,
)
from engramd.protocol.connection import (
    CLOSED as CLOSED,
)
from engramd.protocol.connection import (
    NEED_DATA as NEED_DATA,
)
from engramd.protocol.connection import (
    InvalidMessage as InvalidMessage,
)
from engramd.protocol.connection import (
    ServerConnection as ServerConnection,
)
from engramd.protocol.connection import (
    State as State,
)
from engramd.protocol.connection import (
    encode_message as encode_message,
)
from engramd.protocol.errors import (
    BadRequest as BadRequest,
)
from engramd.protocol.errors import (
    Conflict as Conflict,
)
from engramd.protocol.errors import (
    Deadlock as Deadlock,
)
from engramd.protocol.errors import (
    EngramError as EngramError,
)
from engramd.protocol.errors import (
    ErrorCode as ErrorCode,
)
from engramd.protocol.errors import (
    Forbidden as Forbidden,
)
from engramd.protocol.errors import (
    FrameTooLarge as FrameTooLarge,
)
from engramd.protocol.errors import (
    InternalError as InternalError,
)
from engramd.protocol.errors import (
    LocalProtocolError as LocalProtocolError,
)
from engramd.protocol.errors import (
    LockHeld as LockHeld,
)
from engramd.protocol.errors import (
    NotFound as NotFound,
)
from engramd.protocol.errors import (
    ProtocolError as ProtocolError,
)
from engramd.protocol.errors import (
    RateLimited as RateLimited,
)
from engramd.protocol.errors import (
    RemoteProtocolError as RemoteProtocolError,
)
from engramd.protocol.errors import (
    Timeout as Timeout,
)
from engramd.protocol.errors import (
    TooLarge as TooLarge,
)
from engramd.protocol.errors import (
    Unavailable as Unavailable,
)
from engramd.protocol.errors import (
    VersionMismatch as VersionMismatch,
)
from engramd.protocol.errors import (
    error_for as error_for,
)
from engramd.protocol.framing import (
    DEFAULT_MAX_FRAME as DEFAULT_MAX_FRAME,
)
from engramd.protocol.framing import (
    FrameDecoder as FrameDecoder,
)
from engramd.protocol.framing import (
    encode_frame as encode_frame,
)
from engramd.protocol.messages import (
    PROTOCOL_VERSION as PROTOCOL_VERSION,
)
from engramd.protocol.messages import (
    AckCursor as AckCursor,
)
from engramd.protocol.messages import (
    AckMessage as AckMessage,
)
from engramd.protocol.messages import (
    AcquireLock as AcquireLock,
)
from engramd.protocol.messages import (
    AddTask as AddTask,
)
from engramd.protocol.messages import (
    AgentInfo as AgentInfo,
)
from engramd.protocol.messages import (
    AgentPage as AgentPage,
)
from engramd.protocol.messages import (
    AnnounceSession as AnnounceSession,
)
from engramd.protocol.messages import (
    AnyClientMessage as AnyClientMessage,
)
from engramd.protocol.messages import (
    AnyServerMessage as AnyServerMessage,
)
from engramd.protocol.messages import (
    BreakLock as BreakLock,
)
from engramd.protocol.messages import (
    Brief as Brief,
)
from engramd.protocol.messages import (
    ClaimTask as ClaimTask,
)
from engramd.protocol.messages import (
    ClientMessage as ClientMessage,
)
from engramd.protocol.messages import (
    ClusterMachine as ClusterMachine,
)
from engramd.protocol.messages import (
    ClusterPeer as ClusterPeer,
)
from engramd.protocol.messages import (
    ClusterReport as ClusterReport,
)
from engramd.protocol.messages import (
    ClusterStatus as ClusterStatus,
)
from engramd.protocol.messages import (
    ContextFound as ContextFound,
)
from engramd.protocol.messages import (
    ContextPage as ContextPage,
)
from engramd.protocol.messages import (
    CountUnread as CountUnread,
)
from engramd.protocol.messages import (
    CreateContext as CreateContext,
)
from engramd.protocol.messages import (
    CreateToken as CreateToken,
)
from engramd.protocol.messages import (
    CreateUnits as CreateUnits,
)
from engramd.protocol.messages import (
    DaemonStats as DaemonStats,
)
from engramd.protocol.messages import (
    DaemonStatus as DaemonStatus,
)
from engramd.protocol.messages import (
    Done as Done,
)
from engramd.protocol.messages import (
    ErrorReply as ErrorReply,
)
from engramd.protocol.messages import (
    EventPush as EventPush,
)
from engramd.protocol.messages import (
    Fence as Fence,
)
from engramd.protocol.messages import (
    FinishTask as FinishTask,
)
from engramd.protocol.messages import (
    GetBrief as GetBrief,
)
from engramd.protocol.messages import (
    GetCluster as GetCluster,
)
from engramd.protocol.messages import (
    GetContext as GetContext,
)
from engramd.protocol.messages import (
    GetLock as GetLock,
)
from engramd.protocol.messages import (
    GetStats as GetStats,
)
from engramd.protocol.messages import (
    GetStatus as GetStatus,
)
from engramd.protocol.messages import (
    GetTask as GetTask,
)
from engramd.protocol.messages import (
    GetUnits as GetUnits,
)
from engramd.protocol.messages import (
    Heartbeat as Heartbeat,
)
from engramd.protocol.messages import (
    Hello as Hello,
)
from engramd.protocol.messages import (
    HistogramData as HistogramData,
)
from engramd.protocol.messages import (
    ImportUnits as ImportUnits,
)
from engramd.protocol.messages import (
    InboxPage as InboxPage,
)
from engramd.protocol.messages import (
    JournalStatus as JournalStatus,
)
from engramd.protocol.messages import (
    Lagged as Lagged,
)
from engramd.protocol.messages import (
    LeaseLost as LeaseLost,
)
from engramd.protocol.messages import (
    LeaseRenewed as LeaseRenewed,
)
from engramd.protocol.messages import (
    Limits as Limits,
)
from engramd.protocol.messages import (
    ListAgents as ListAgents,
)
from engramd.protocol.messages import (
    ListContexts as ListContexts,
)
from engramd.protocol.messages import (
    ListLocks as ListLocks,
)
from engramd.protocol.messages import (
    ListTasks as ListTasks,
)
from engramd.protocol.messages import (
    ListTokens as ListTokens,
)
from engramd.protocol.messages import (
    ListUnits as ListUnits,
)
from engramd.protocol.messages import (
    LockFound as LockFound,
)
from engramd.protocol.messages import (
    LockPage as LockPage,
)
from engramd.protocol.messages import (
    LocksGranted as LocksGranted,
)
from engramd.protocol.messages import (
    LockState as LockState,
)
from engramd.protocol.messages import (
    Notice as Notice,
)
from engramd.protocol.messages import (
    Ping as Ping,
)
from engramd.protocol.messages import (
    Pong as Pong,
)
from engramd.protocol.messages import (
    Push as Push,
)
from engramd.protocol.messages import (
    ReadInbox as ReadInbox,
)
from engramd.protocol.messages import (
    Reindex as Reindex,
)
from engramd.protocol.messages import (
    RelatedEdge as RelatedEdge,
)
from engramd.protocol.messages import (
    RelatedFound as RelatedFound,
)
from engramd.protocol.messages import (
    RelatedUnits as RelatedUnits,
)
from engramd.protocol.messages import (
    ReleaseLock as ReleaseLock,
)
from engramd.protocol.messages import (
    ReleaseTask as ReleaseTask,
)
from engramd.protocol.messages import (
    RenewLock as RenewLock,
)
from engramd.protocol.messages import (
    Reply as Reply,
)
from engramd.protocol.messages import (
    ReplyT as ReplyT,
)
from engramd.protocol.messages import (
    Request as Request,
)
from engramd.protocol.messages import (
    ResolveUnitIds as ResolveUnitIds,
)
from engramd.protocol.messages import (
    RevokeTokens as RevokeTokens,
)
from engramd.protocol.messages import (
    Search as Search,
)
from engramd.protocol.messages import (
    SearchHit as SearchHit,
)
from engramd.protocol.messages import (
    SearchResults as SearchResults,
)
from engramd.protocol.messages import (
    SendMessage as SendMessage,
)
from engramd.protocol.messages import (
    ServerMessage as ServerMessage,
)
from engramd.protocol.messages import (
    SessionInfo as SessionInfo,
)
from engramd.protocol.messages import (
    Shutdown as Shutdown,
)
from engramd.protocol.messages import (
    ShuttingDown as ShuttingDown,
)
from engramd.protocol.messages import (
    SpooledUnit as SpooledUnit,
)
from engramd.protocol.messages import (
    StreamStatus as StreamStatus,
)
from engramd.protocol.messages import (
    Subscribe as Subscribe,
)
from engramd.protocol.messages import (
    Subscribed as Subscribed,
)
from engramd.protocol.messages import (
    TaskFound as TaskFound,
)
from engramd.protocol.messages import (
    TaskPage as TaskPage,
)
from engramd.protocol.messages import (
    TokenCreated as TokenCreated,
)
from engramd.protocol.messages import (
    TokenInfo as TokenInfo,
)
from engramd.protocol.messages import (
    TokenPage as TokenPage,
)
from engramd.protocol.messages import (
    TokensRevoked as TokensRevoked,
)
from engramd.protocol.messages import (
    UnitDraft as UnitDraft,
)
from engramd.protocol.messages import (
    UnitIdsResolved as UnitIdsResolved,
)
from engramd.protocol.messages import (
    UnitOrigin as UnitOrigin,
)
from engramd.protocol.messages import (
    UnitPage as UnitPage,
)
from engramd.protocol.messages import (
    UnitsCreated as UnitsCreated,
)
from engramd.protocol.messages import (
    UnitsFound as UnitsFound,
)
from engramd.protocol.messages import (
    UnreadCount as UnreadCount,
)
from engramd.protocol.messages import (
    Unsubscribe as Unsubscribe,
)
from engramd.protocol.messages import (
    UpdateContext as UpdateContext,
)
from engramd.protocol.messages import (
    Waiter as Waiter,
)
from engramd.protocol.messages import (
    Welcome as Welcome,
)
from engramd.protocol.messages import (
    reply_type as reply_type,
)
from engramd.protocol.model import (
    CONTEXT_CHANGES as CONTEXT_CHANGES,
)
from engramd.protocol.model import (
    EVENT_KINDS as EVENT_KINDS,
)
from engramd.protocol.model import (
    MIN_UNIT_ID_PREFIX as MIN_UNIT_ID_PREFIX,
)
from engramd.protocol.model import (
    RELATIONSHIP_TYPES as RELATIONSHIP_TYPES,
)
from engramd.protocol.model import (
    UNIT_ID_LENGTH as UNIT_ID_LENGTH,
)
from engramd.protocol.model import (
    UNIT_TYPES as UNIT_TYPES,
)
from engramd.protocol.model import (
    UUID_TEXT as UUID_TEXT,
)
from engramd.protocol.model import (
    AnyEvent as AnyEvent,
)
from engramd.protocol.model import (
    Context as Context,
)
from engramd.protocol.model import (
    ContextChange as ContextChange,
)
from engramd.protocol.model import (
    ContextCreated as ContextCreated,
)
from engramd.protocol.model import (
    ContextUpdated as ContextUpdated,
)
from engramd.protocol.model import (
    Event as Event,
)
from engramd.protocol.model import (
    Lease as Lease,
)
from engramd.protocol.model import (
    LockAcquired as LockAcquired,
)
from engramd.protocol.model import (
    LockEvent as LockEvent,
)
from engramd.protocol.model import (
    LockExpired as LockExpired,
)
from engramd.protocol.model import (
    LockReleased as LockReleased,
)
from engramd.protocol.model import (
    LockRenewed as LockRenewed,
)
from engramd.protocol.model import (
    Relationship as Relationship,
)
from engramd.protocol.model import (
    Task as Task,
)
from engramd.protocol.model import (
    Unit as Unit,
)
from engramd.protocol.model import (
    UnitCreated as UnitCreated,
)

# isort: split
# Integrity and a full disk (issue 33): their errors, and the store walk.
from engramd.protocol.errors import Damaged as Damaged
from engramd.protocol.errors import DiskFull as DiskFull
from engramd.protocol.messages import StoreDamage as StoreDamage
from engramd.protocol.messages import Verify as Verify
from engramd.protocol.messages import VerifyReport as VerifyReport
