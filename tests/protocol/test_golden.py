"""The wire format is a promise: these bytes must not change by accident.

If a change to the messages is deliberate (a new message, a new field at the
end), add or update the line in tests/data/golden_messages.txt in the same
commit and say so in SPECS.md.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import get_args

import msgspec
import pytest

from engramd.protocol import (
    AckCursor,
    AckMessage,
    AcknowledgeCuts,
    AcquireLock,
    AddTask,
    AgentInfo,
    AgentPage,
    AnnounceSession,
    BackupChecked,
    BackupInfo,
    BackupMade,
    BreakLock,
    Brief,
    ClaimTask,
    ClusterMachine,
    ClusterPeer,
    ClusterReport,
    ClusterStatus,
    Context,
    ContextChange,
    ContextCreated,
    ContextFound,
    ContextPage,
    ContextUpdated,
    CountUnread,
    CreateContext,
    CreateToken,
    CreateUnits,
    CutsAcknowledged,
    DaemonStats,
    DaemonStatus,
    Done,
    Ended,
    ErrorReply,
    EventPush,
    FinishTask,
    GetBrief,
    GetCluster,
    GetContext,
    GetLock,
    GetStats,
    GetStatus,
    GetTask,
    GetUnits,
    GrantPushes,
    Heartbeat,
    Hello,
    HistogramData,
    ImportUnits,
    InboxPage,
    JournalStatus,
    Lagged,
    Lease,
    LeaseLost,
    LeaseRenewed,
    Limits,
    ListAgents,
    ListContexts,
    ListLocks,
    ListTasks,
    ListTokens,
    ListUnits,
    LockAcquired,
    LockExpired,
    LockFound,
    LockHistory,
    LockHistoryPage,
    LockPage,
    LockReleased,
    LockRenewed,
    LocksGranted,
    LockState,
    MakeBackup,
    Ping,
    Pong,
    ReadInbox,
    Reindex,
    RelatedEdge,
    RelatedFound,
    RelatedUnits,
    Relationship,
    ReleaseLock,
    ReleaseTask,
    RenewLock,
    ResolveUnitIds,
    RetentionContext,
    RetentionPolicyReport,
    RetentionReport,
    RevokeTokens,
    RunRetention,
    Search,
    SearchHit,
    SearchResults,
    SendMessage,
    SessionInfo,
    Shutdown,
    ShuttingDown,
    SpeakFor,
    StoreDamage,
    Subscribe,
    Subscribed,
    Task,
    TaskFound,
    TaskPage,
    TokenCreated,
    TokenInfo,
    TokenPage,
    TokensRevoked,
    Unit,
    UnitCreated,
    UnitDraft,
    UnitIdsResolved,
    UnitOrigin,
    UnitPage,
    UnitsCreated,
    UnitsFound,
    UnitsRemoved,
    UnreadCount,
    Unsubscribe,
    UpdateContext,
    Verify,
    VerifyBackup,
    VerifyReport,
    Waiter,
    WalCut,
    Welcome,
    encode_message,
)
from engramd.protocol.messages import AnyClientMessage, AnyServerMessage
from engramd.protocol.model import AnyEvent
from engramd.wal.record import Entry, SegmentHeader, encode_record

GOLDEN = Path(__file__).parent.parent / "data" / "golden_messages.txt"
WHEN = dt.datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=dt.UTC)

UNIT = Unit(id="0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b", seq=7, context_id="build-42",
            agent_id="alice", type="TOOL_RESULT", ts=WHEN, meta={"exit": "0"},
            payload=b"all tests passed\n",
            relationships=[Relationship(type="RESPONDS_TO",
                                        target="0193a1b2-c3d4-7e5f-8a6b-000000000001")],
            uid=1000, pid=4242)
CONTEXT = Context(id="build-42", display_name="Build 42", agent_ids=["alice"],
                  pinned_units=[UNIT.id], meta={"branch": "main"}, created_at=WHEN,
                  updated_at=WHEN)

CLIENT_MESSAGES = {
    "hello": Hello(id=1, protocol_version=1, client_name="engram-cli", agent_id="alice"),
    "ping": Ping(id=2),
    "status": GetStatus(id=3),
    "shutdown": Shutdown(id=4),
    "unit_create": CreateUnits(id=5, units=[UnitDraft(
        context_id="build-42", type="tool_result", payload=b"ok", meta={"exit": "0"},
        relationships=[Relationship(type="CAUSES", target=UNIT.id)], idempotency_key="k1")]),
    "unit_import": ImportUnits(id=28, units=[UnitDraft(
        context_id="build-42", type="MESSAGE", payload=b"ok", idempotency_key="k2")],
        agents=["bob"]),
    "unit_import_kept": ImportUnits(id=29, units=[UnitDraft(
        context_id="build-42", type="MESSAGE", payload=b"ok")], agents=["bob"],
        origins=[UnitOrigin(id=UNIT.id, ts=WHEN)]),
    "unit_list": ListUnits(id=6, context_id="build-42", limit=10, before=100),
    "context_update": UpdateContext(id=7, context_id="build-42", add_agents=["bob"],
                                    pin=[UNIT.id], set_meta={"k": "v"}),
    "subscribe": Subscribe(id=8, contexts=["build-42"], kinds=["unit.created"],
                           types=["TOOL_RESULT"], meta={"exit": "0"}, after=0,
                           cursor="bot", heartbeat=2.0),
    "unsubscribe": Unsubscribe(id=9, subscription=8),
    "hello_window": Hello(id=1, protocol_version=1, client_name="engram-gateway",
                          agent_id="gw", token="ega_x", window=256),
    "subscription_grant": GrantPushes(id=30, subscription=8, count=128),
    "as": SpeakFor(id=31, agent_id="alice", delegated=True,
                   request=Subscribe(contexts=["build-42"], after=7)),
    "as_token": SpeakFor(id=32, token="egt_1_x", request=GetTask(task_id=UNIT.id)),
    "cursor_ack": AckCursor(id=10, cursor="bot", seq=7),
    "lock_acquire": AcquireLock(id=11, resources=["deploy:prod", "repo/README.md"], ttl=30.0,
                                wait=5.0, bind_connection=True, pid=4242),
    "lock_release": ReleaseLock(id=12, lock_id="0123456789abcdef"),
    "lock_renew": RenewLock(id=13, lock_id="0123456789abcdef", ttl=60.0),
    "lock_acquire_unbounded": AcquireLock(id=11, resources=["deploy:prod"], wait=None,
                                          pid=4242),
    "lock_acquire_group": AcquireLock(id=11, resources=["deploy:prod"], ttl=30.0, wait=None,
                                      pid=4242, pgid=4250),
    "lock_acquire_shared": AcquireLock(id=11, resources=["file:github.com/ann/proj:src/"],
                                       wait=None, pid=4242, shared=True),
    "lock_release_on": ReleaseLock(id=12, lock_id="0123456789abcdef", resource="deploy:prod"),
    "lock_renew_on": RenewLock(id=13, lock_id="0123456789abcdef", resource="deploy:prod"),
    "lock_break": BreakLock(id=14, resource="deploy:prod", reason="stuck"),
    "lock_get": GetLock(id=15, resource="deploy:prod"),
    "lock_list": ListLocks(id=16, agent="alice", prefix="deploy:"),
    "lock_history": LockHistory(id=48, since=WHEN, limit=500),
    "search_hybrid": Search(id=17, query="storage full", mode="hybrid", min_similarity=0.2),
    "search": Search(id=17, query="frame limit", contexts=["build-42"], types=["ERROR"],
                     meta={"exit": "1"}, since=WHEN, related_to=UNIT.id, limit=5, offset=10),
    "search_reindex": Reindex(id=18),
    "hello_token": Hello(id=1, protocol_version=1, client_name="engram-cli", agent_id="alice",
                         token="egt_0123456789ab_secret"),
    "hello_token_agent": Hello(id=1, protocol_version=1, client_name="engram-gateway",
                               agent_id="", token="egt_0123456789ab_secret"),
    "hello_delegated": Hello(id=1, protocol_version=1, client_name="engram-gateway",
                             agent_id="alice", token="ega_secret", delegated=True),
    "token_create": CreateToken(id=19, agent="alice"),
    "token_list": ListTokens(id=20),
    "token_revoke": RevokeTokens(id=21, agent="alice", token_id=None),
    "unit_get": GetUnits(id=22, ids=[UNIT.id]),
    "unit_related": RelatedUnits(id=23, unit_id=UNIT.id, types=["CAUSES"], direction="out",
                                 depth=2),
    "context_create": CreateContext(id=24, context_id="build-42", display_name="Build 42",
                                    meta={"branch": "main"}),
    "context_get": GetContext(id=25, context_id="build-42"),
    "context_list": ListContexts(id=26, limit=10, after="build-41", prefix="build-"),
    "stats": GetStats(id=27),
    "cluster_status": GetCluster(id=43),
    "unit_resolve": ResolveUnitIds(id=28, prefixes=["0193a1b2"]),
    "message_send": SendMessage(id=30, to=["bob", "carol"], payload=b"review?",
                                context_id="build-42", thread="t1", reply_to=UNIT.id,
                                ack_required=True, meta={"urgent": "yes"}),
    "inbox": ReadInbox(id=31, limit=5, peek=True, wait=2.5, pending=False),
    "inbox_count": CountUnread(id=32),
    "message_ack": AckMessage(id=33, message_id=UNIT.id),
    "task_add": AddTask(id=34, title="fix the build", context_id="build-42", priority=1,
                        depends_on=[UNIT.id], detail="see the log", meta={"area": "ci"}),
    "task_get": GetTask(id=35, task_id=UNIT.id),
    "task_list": ListTasks(id=36, states=["open"], ready=True, contexts=["build-42"],
                           limit=10),
    "task_claim": ClaimTask(id=37, task_id=None, contexts=["build-42"], ttl=600.0, pid=4242),
    "task_done": FinishTask(id=38, task_id=UNIT.id, pid=4242, token=None),
    "task_release": ReleaseTask(id=39, task_id=UNIT.id, pid=None, token=42),
    "session_announce": AnnounceSession(id=40, pid=4242, harness="claude-code"),
    "agent_list": ListAgents(id=41),
    "brief": GetBrief(id=42, contexts=["build-42"], files=["README.md"], items=3,
                      advance=False),
    "wal_acknowledge": AcknowledgeCuts(id=44, ids=["0a1b2c3d"]),
    "backup": MakeBackup(id=45, path="/backups/engram-2026-11-23"),
    "backup_verify": VerifyBackup(id=46, path="/backups/engram-2026-11-23"),
    "verify": Verify(id=47),
    "gc": RunRetention(id=47),
    "gc_dry_run": RunRetention(id=48, dry_run=True),
}
TOKEN = TokenInfo(id="0123456789ab", agent="alice", created_at=WHEN)
LEASE = Lease(resource="deploy:prod", holder="alice", lock_id="0123456789abcdef",
              fencing_token=42, acquired_at=WHEN, expires_at=WHEN, ttl=30.0, boot_id="b",
              deadline_boottime=1030.5, pid=None, bound_to_connection=True,
              session="conn:3@0123abcd", holder_pid=4242)
LEASE_BEFORE_SESSIONS = msgspec.structs.replace(LEASE, session="", holder_pid=0)
LEASE_OF_GROUP = msgspec.structs.replace(LEASE, pid=4242, bound_to_connection=False,
                                         session="pid:4242", pgid=4250)
LEASE_ON_PATH = msgspec.structs.replace(LEASE, resource="file:github.com/ann/proj:src/app.py")
LEASE_SHARED = msgspec.structs.replace(LEASE, resource="file:github.com/ann/proj:src/",
                                       shared=True, lock_id="fedcba9876543210")
CUT = WalCut(id="0a1b2c3d", at=WHEN, segment="/d/wal/00000000000000000001.wal", offset=4305,
             bytes=217, reason="checksum mismatch", seq=21, last_seq=21, unit_ids=[UNIT.id],
             acknowledged="possibly", saved="/d/wal/damaged-00000000000000000001-4305.bin",
             summary="the last 217 bytes of the log were cut at start-up")
BACKUP = BackupInfo(path="/backups/engram-2026-11-23", made_at=WHEN, daemon_version="0.1.0",
                    seq=120, store_seq=118, units=100, contexts=3, leases=2, tasks=4, files=9,
                    bytes=123456)
TASK = Task(id=UNIT.id, context_id="build-42", title="fix the build", priority=1,
            state="claimed", depends_on=[], open_dependencies=[], created_by="alice",
            created_at=WHEN, claim=LEASE, done_by="")
SERVER_MESSAGES = {
    "welcome": Welcome(id=1, protocol_version=1, daemon_version="0.1.0", pid=42,
                       instance_id="abc"),
    "welcome_agent": Welcome(id=1, protocol_version=1, daemon_version="0.1.0", pid=42,
                             instance_id="abc", agent_id="alice"),
    "welcome_stale": Welcome(id=1, protocol_version=1, daemon_version="0.1.0", pid=42,
                             instance_id="abc", agent_id="alice",
                             stale="the cluster is unreachable"),
    "pong": Pong(id=2, daemon_version="0.1.0", uptime=1.5, server_time=WHEN),
    "daemon_status": DaemonStatus(
        id=3, state="ready", daemon_version="0.1.0", protocol_version=1, pid=42,
        instance_id="abc", started_at=WHEN, uptime=1.5, socket="/s", data_dir="/d",
        config_file=None, log_file="/d/engramd.log", connections=1, requests_served=2,
        limits=Limits(max_frame_bytes=16, max_connections=2, max_inflight_per_connection=3,
                      max_payload_bytes=4, max_batch_units=5),
        journal=JournalStatus(last_seq=9, checkpoint_seq=8, units=3, contexts=1,
                              wal_segments=1, wal_bytes=100, durability="fsync",
                              write_error=None)),
    "daemon_status_cuts": DaemonStatus(
        id=3, state="ready", daemon_version="0.1.0", protocol_version=1, pid=42,
        instance_id="abc", started_at=WHEN, uptime=1.5, socket="/s", data_dir="/d",
        config_file=None, log_file=None, connections=1, requests_served=2,
        limits=Limits(max_frame_bytes=16, max_connections=2, max_inflight_per_connection=3),
        wal_cuts=[CUT]),
    "wal_acknowledged": CutsAcknowledged(id=44, cuts=[CUT]),
    "backup_made": BackupMade(id=45, backup=BACKUP, paused_seconds=0.0042, seconds=1.25),
    "backup_checked": BackupChecked(id=46, ok=False, backup=BACKUP,
                                    problems=["wal/00000000000000000001.wal: its content "
                                              "changed since the backup was made (SHA-256)"]),
    "shutting_down": ShuttingDown(id=4, pid=42),
    "error": ErrorReply(id=None, code="bad_request", message="no"),
    "unit_page": UnitPage(id=6, units=[UNIT], next_cursor=None),
    "context_found": ContextFound(id=7, context=CONTEXT, created=False, watching=["carol"]),
    "subscribed": Subscribed(id=8, subscription=8, after=0, head_seq=9),
    "done": Done(id=9),
    "event_push": EventPush(subscription=8,
                            event=UnitCreated(seq=7, ts=WHEN, context_id="build-42", unit=UNIT)),
    "heartbeat": Heartbeat(subscription=8, head_seq=9, cursor=7),
    "lagged": Lagged(subscription=8, cursor=7, head_seq=200000),
    "ended": Ended(subscription=8, code="forbidden", message="the token was revoked"),
    "lock_granted": LocksGranted(id=11, leases=[LEASE]),
    "lock_granted_group": LocksGranted(id=11, leases=[LEASE_OF_GROUP]),
    "lock_renewed": LeaseRenewed(id=13, lease=LEASE),
    "lock_found": LockFound(id=15, state=LockState(
        resource="deploy:prod", lease=LEASE,
        waiters=[Waiter(agent="bob", position=1, resources=["deploy:prod"],
                        session="pid:4343", pid=4343)])),
    "lock_found_paths": LockFound(id=15, state=LockState(
        resource="file:github.com/ann/proj:src/app.py", lease=LEASE_ON_PATH, waiters=[],
        leases=[LEASE_ON_PATH], overlapping=[LEASE_SHARED])),
    "lock_page": LockPage(id=16, locks=[]),
    "lock_history_page": LockHistoryPage(id=48, events=[
        LockAcquired(seq=42, ts=WHEN, context_id="", lease=LEASE),
        LockReleased(seq=43, ts=WHEN, context_id="", lease=LEASE, reason="released",
                     by="alice")], next_cursor=43),
    "lease_lost": LeaseLost(lease=LEASE, reason="expired", by="engramd"),
    "search_results": SearchResults(id=17, total=1, hits=[SearchHit(
        unit_id=UNIT.id, seq=7, score=1.5, snippet="the **frame** **limit**")]),
    "search_results_hybrid": SearchResults(id=17, total=1, hits=[SearchHit(
        unit_id=UNIT.id, seq=7, score=0.032787, snippet="", bm25=None, similarity=0.41)]),
    "token_created": TokenCreated(id=19, token="egt_0123456789ab_secret", info=TOKEN),
    "token_page": TokenPage(id=20, tokens=[TOKEN]),
    "token_revoked": TokensRevoked(id=21, tokens=[TOKEN]),
    "unit_created": UnitsCreated(id=5, units=[UNIT], reused=[]),
    "unit_found": UnitsFound(id=22, units=[UNIT], missing=["0193a1b2-c3d4-7e5f-8a6b-0000000000ff"]),
    "unit_related_found": RelatedFound(id=23, root=UNIT.id, edges=[RelatedEdge(
        source=UNIT.id, type="RESPONDS_TO", target="0193a1b2-c3d4-7e5f-8a6b-000000000001",
        depth=1)], units=[UNIT]),
    "context_page": ContextPage(id=26, contexts=[CONTEXT], next_cursor="build-42"),
    "daemon_stats": DaemonStats(id=27, counters={"requests_total{op=\"ping\"}": 3},
                                gauges={"connections": 1.0}, histograms={
                                    "fsync_seconds": HistogramData(bounds=[0.001, 0.01],
                                                                   counts=[4, 1, 0], count=5,
                                                                   sum=0.0123)}),
    "unit_resolved": UnitIdsResolved(id=28, ids=[UNIT.id]),
    "inbox_page": InboxPage(id=31, messages=[UNIT], unread=2),
    "inbox_counted": UnreadCount(id=32, unread=3, pending_acks=1),
    "task_found": TaskFound(id=34, task=TASK),
    "task_page": TaskPage(id=36, tasks=[TASK]),
    "agent_page": AgentPage(id=41, agents=[AgentInfo(
        agent="alice", sessions=[SessionInfo(pid=4242, harness="claude-code", started_at=WHEN,
                                             last_seen=WHEN, gone_at=None)],
        last_seen=WHEN, contexts=["build-42"], leases=1, unread=2)]),
    "agent_page_cluster": AgentPage(id=47, agents=[AgentInfo(
        agent="alice", sessions=[SessionInfo(pid=4242, harness="claude-code", started_at=WHEN,
                                             last_seen=WHEN, connections=1,
                                             machine="box-0a1b2c3d")],
        last_seen=WHEN, contexts=["build-42"], leases=0, unread=0)]),
    "brief_reply": Brief(id=42, agent="alice", contexts=["build-42"], unread=1,
                         messages=[UNIT], pending_acks=0, leases=[LEASE], others_leases=[],
                         claimed=[TASK], ready=[], ready_total=0, since=[UNIT], since_total=1,
                         pinned=[]),
    "cluster_report": ClusterReport(id=43, status=ClusterStatus(
        deployment="engram", stream="ENGRAM_ENGRAM", servers=["nats://127.0.0.1:4222"],
        machine="box-0a1b2c3d", reachable=True, view_stream_seq=41, stream_last_seq=42,
        lag=1, replicas=3, leader="n1", peers=[ClusterPeer(
            name="n2", current=True, active_seconds=0.012, lag=0, offline=False)],
        storage="file"), machines=[ClusterMachine(
            machine="box-0a1b2c3d", host="box", socket="/run/user/1000/engram/engramd.sock",
            stream_seq=41, applied_seq=120, version="0.1.0")]),
    "cluster_report_refused": ClusterReport(id=45, status=ClusterStatus(
        deployment="engram", stream="ENGRAM_ENGRAM", servers=["tls://127.0.0.1:4222"],
        machine="box-0a1b2c3d", reachable=False, view_stream_seq=0, stream_last_seq=None,
        lag=None, replicas=3, leader="", peers=[],
        refused="TLS: the servers ask for this machine's certificate"), machines=[]),
    "verify_report": VerifyReport(
        id=44, ok=False, applied_seq=61, keys=277, units=60, units_expected=60, contexts=1,
        contexts_expected=1, events=61, walked_all=True, damage=[StoreDamage(
            file="/d/store/000008.sst", reason="Corruption: block checksum mismatch",
            after_key="c/build-42 seq 32", resumed_at="e/ seq 1")],
        log_first_seq=1, log_last_seq=61, log_units=60, missing=[], unrecoverable=[],
        rebuild_complete=True, problems=["unit bodies: 31 in the store, 60 expected"],
        seconds=0.001),
    "gc_report": RetentionReport(
        id=46, dry_run=False, policies=[RetentionPolicyReport(
            context="ci/*", max_age=2592000.0, max_units=100000, contexts=[RetentionContext(
                context_id="ci/build-42", units=2, held=1, kept=58, bytes=326, oldest=WHEN,
                newest=WHEN, archive="/d/archive/ci%2Fbuild-42.20261123T202225Z.7.jsonl.gz")])],
        units=2, bytes=326, archive_dir="/d/archive", seconds=0.004),
}
EVENTS = {
    "event_unit_created": UnitCreated(seq=7, ts=WHEN, context_id="build-42", unit=UNIT),
    "event_context_created": ContextCreated(seq=1, ts=WHEN, context_id="build-42",
                                            context=CONTEXT),
    "event_lock_acquired": LockAcquired(seq=42, ts=WHEN, context_id="", lease=LEASE),
    "event_lock_released": LockReleased(seq=43, ts=WHEN, context_id="", lease=LEASE,
                                        reason="released", by="alice"),
    "event_lock_renewed": LockRenewed(seq=44, ts=WHEN, context_id="", lease=LEASE),
    "event_lock_expired": LockExpired(seq=45, ts=WHEN, context_id="", lease=LEASE),
    "event_context_updated": ContextUpdated(
        seq=8, ts=WHEN, context_id="build-42", context=CONTEXT,
        changes=[ContextChange(kind="unit_pinned", value=UNIT.id)]),
    "event_units_removed": UnitsRemoved(
        seq=61, ts=WHEN, context_id="build-42", unit_ids=[UNIT.id], seqs=[7],
        archive="/d/archive/build-42.20261123T202225Z.7.jsonl.gz", policy="build-*"),
}


def test_every_message_and_event_type_has_golden_bytes() -> None:
    """A new message or event type fails here until it has a line in the golden file."""
    covered = {type(example) for example in
               [*CLIENT_MESSAGES.values(), *SERVER_MESSAGES.values(), *EVENTS.values()]}
    every = {*get_args(AnyClientMessage), *get_args(AnyServerMessage), *get_args(AnyEvent)}
    assert not every - covered, sorted(cls.__name__ for cls in every - covered)
    names = set(golden())
    assert set(CLIENT_MESSAGES) | set(SERVER_MESSAGES) | set(EVENTS) <= names


def golden() -> dict[str, str]:
    lines = GOLDEN.read_text().split("\n")
    return dict(line.split(" ", 1) for line in lines if line and not line.startswith("#"))


@pytest.mark.parametrize("name", [*CLIENT_MESSAGES, *SERVER_MESSAGES])
def test_message_bytes_match_golden(name: str) -> None:
    message = {**CLIENT_MESSAGES, **SERVER_MESSAGES}[name]
    assert encode_message(message).hex() == golden()[name]


@pytest.mark.parametrize("name", CLIENT_MESSAGES)
def test_golden_client_bytes_decode_back(name: str) -> None:
    body = bytes.fromhex(golden()[name])[4:]
    assert msgspec.msgpack.decode(body, type=AnyClientMessage) == CLIENT_MESSAGES[name]


@pytest.mark.parametrize("name", SERVER_MESSAGES)
def test_golden_server_bytes_decode_back(name: str) -> None:
    body = bytes.fromhex(golden()[name])[4:]
    assert msgspec.msgpack.decode(body, type=AnyServerMessage) == SERVER_MESSAGES[name]


@pytest.mark.parametrize("name", EVENTS)
def test_event_bytes_match_golden(name: str) -> None:
    assert msgspec.msgpack.encode(EVENTS[name]).hex() == golden()[name]


def test_leases_journaled_before_sessions_still_decode() -> None:
    """A daemon upgraded over an older journal reads its leases (with no session)."""
    body = bytes.fromhex(golden()["event_lock_acquired_before_sessions"])
    event = msgspec.msgpack.decode(body, type=LockAcquired)
    assert event.lease == LEASE_BEFORE_SESSIONS


def test_leases_journaled_before_groups_still_decode() -> None:
    """Leases journaled before they could carry a process group read as having none."""
    body = bytes.fromhex(golden()["event_lock_acquired_before_groups"])
    event = msgspec.msgpack.decode(body, type=LockAcquired)
    assert event.lease == LEASE and event.lease.pgid is None


def test_an_acquire_that_spells_out_its_defaults_still_decodes() -> None:
    """Before ``pgid``, an acquire sent every field; an older client's still reads the same."""
    body = bytes.fromhex(golden()["lock_acquire_defaults_spelled_out"])[4:]
    assert msgspec.msgpack.decode(body, type=AnyClientMessage) == \
        CLIENT_MESSAGES["lock_acquire_unbounded"]


def test_wal_record_bytes_match_golden() -> None:
    entry = Entry(first_seq=7, events=[EVENTS["event_unit_created"]],
                  idempotency_keys={"k1": UNIT.id})
    assert encode_record(entry).hex() == golden()["wal_record"]
    assert SegmentHeader(7, b"\x01" * 8).encode().hex() == golden()["wal_header"]
    assert SegmentHeader(7, b"\x01" * 8, flags=1).encode().hex() == \
        golden()["wal_header_after_gap"]


def test_a_push_built_from_shared_event_bytes_is_the_golden_push() -> None:
    from engramd.server import encode_event_push

    event = SERVER_MESSAGES["event_push"].event  # type: ignore[attr-defined]
    body = encode_event_push(8, msgspec.msgpack.encode(event))
    assert body.hex() == golden()["event_push"][8:]  # without the length prefix


@pytest.mark.parametrize("name", SERVER_MESSAGES)
def test_the_client_reads_each_golden_server_message_by_its_tag(name: str) -> None:
    from engramd.protocol.client import _ServerDecoder

    decoder = _ServerDecoder()
    body = bytes.fromhex(golden()[name])[4:]
    assert decoder._kind(body) is type(SERVER_MESSAGES[name])  # no union decoder needed
    assert decoder.decode(body) == SERVER_MESSAGES[name]


def test_the_clients_decoder_refuses_what_the_union_refuses() -> None:
    from engramd.protocol.client import _ServerDecoder

    decoder = _ServerDecoder()
    welcome = bytes.fromhex(golden()["welcome"])[4:]
    as_pong = welcome.replace(b"\xa7welcome", b"\xa4pong")  # a pong with welcome's fields
    for body in (b"", b"\x81\xa3msg\xa4nope", as_pong, b"\xc0"):
        with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
            decoder.decode(body)
