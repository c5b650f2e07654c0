"""The deployment's leases bucket, on nats-py's asyncio loop (see :mod:`.bridge`).

One JetStream key-value bucket, ``engram_<deployment>_leases``, replicated like
the journal. Two kinds of keys live in it:

* ``l.<root>.<resource>.<holder>``: the lease of one session (``<holder>``: a hash of
  the agent and the session that took it) on a resource, while it is held (a session
  holds one lease per resource, and a session that takes a resource again writes the
  same key: a busy name leaves no trail of keys). ``<root>`` names what the resource
  shares with every resource it may overlap (its repository, the file system, a plain
  name alone: :mod:`engramd.protocol.resources`), hashed, so that one read of
  ``l.<root>.>`` finds every lease that may conflict with it. Written only with
  ``Nats-Expected-Last-Subject-Sequence`` (compare-and-set on the key's revision) and a
  per-message TTL (``Nats-TTL``), so the servers end a lease nobody renews: no
  machine's clock decides an expiry.
* ``w.<waiter>``: a waiter's ticket (its resources and mode, and the terms of the
  leases it waits for), while it waits. Its TTL is short and its machine puts it
  again while the waiter waits, so the tickets of a machine that went away leave the
  line by themselves.

A release that lets a waiter go writes, in one JetStream atomic batch (the stream
allows them: ``allow_atomic``), its own end, the waiter's leases and the waiter's
ticket consumed, each with its expectation (:meth:`LeaseBucket.write_batch`): all are
stored, or none.

Resources are any bytes but NUL; keys hold them as unpadded base64url. The bucket
places a marker when the servers expire a key (``limit_marker_ttl``), so every
watcher sees an expiry as it happens.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import math
import secrets
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.js import api
from nats.js.kv import KV_MARKER_REASON, KV_OP, KV_PURGE, KeyValue

from engramd.cluster.nats import WRONG_LAST_SEQUENCE, NatsLink
from engramd.cluster.outage import transient
from engramd.protocol import Lease
from engramd.protocol.resources import parse

WRONG_LAST_SEQUENCE_CONSTANT = 10164
ATOMIC_DISABLED = 10174
"""JetStream's error code for a batch sent to a stream that does not allow them."""
BATCH_DUPLICATE_ID = 10201
"""JetStream's error code for a batch with a message id it has stored already."""
MARKER_TTL = 60.0
"""How long the servers keep the marker of an expired key (watchers see it at once)."""
LEASE = "l"
TICKET = "w"
EXPECTED_UNDER = "Nats-Expected-Last-Subject-Sequence-Subject"
"""The subject (a wildcard) whose last message ``Nats-Expected-Last-Subject-Sequence``
then names, instead of the message's own subject's."""
log = logging.getLogger("engramd.cluster.leases")


def encode_resource(resource: str) -> str:
    return base64.urlsafe_b64encode(resource.encode()).decode().rstrip("=")


def decode_resource(token: str) -> str:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


def root_token(resource: str) -> str:
    """The key part that the leases of every resource *resource* may overlap share."""
    digest = hashlib.sha256(parse(resource).root.encode()).digest()[:12]
    return base64.urlsafe_b64encode(digest).decode()


def holder_token(agent: str, session: str) -> str:
    """The key part naming the session (of *agent*) that takes a lease."""
    digest = hashlib.sha256(f"{agent}\0{session}".encode()).digest()[:9]
    return base64.urlsafe_b64encode(digest).decode()


def lease_key(resource: str, holder: str) -> str:
    """The key of the lease of the session *holder* (:func:`holder_token`) on *resource*."""
    return f"{LEASE}.{root_token(resource)}.{encode_resource(resource)}.{holder}"


def root_filter(resource: str) -> str:
    """The keys of every lease that may overlap one on *resource* (a subject filter)."""
    return f"{LEASE}.{root_token(resource)}.>"


def root_of_key(key: str) -> str:
    """The ``<root>`` part of a lease key."""
    return key.split(".", 2)[1]


def ticket_key(waiter: str) -> str:
    return f"{TICKET}.{waiter}"


def parse_key(key: str) -> tuple[str, str, str]:
    """``(kind, resource, holder)`` of a lease key, ``(kind, "", waiter)`` of a ticket's;
    ValueError for a key that is neither (another engram version's)."""
    kind, _, rest = key.partition(".")
    if kind == TICKET and rest and "." not in rest:
        return kind, "", rest
    parts = rest.split(".")
    if kind != LEASE or len(parts) != 3 or not parts[2]:
        raise ValueError(f"not a key of this engram: {key[:80]}")
    return kind, decode_resource(parts[1]), parts[2]


def ttl_header(seconds: float) -> str:
    """Whole seconds, rounded up: the servers never end a key before *seconds*."""
    return f"{max(1, math.ceil(seconds))}s"


class Held(msgspec.Struct, tag="held", frozen=True):
    lease: Lease
    """Its fencing_token is 0 in the write that granted it: the token is that
    write's revision, known once it is stored (renewals write it out)."""
    waiter: str = ""
    """The waiter it was handed over to, by a release that wrote it in the same batch
    as its own end and the waiter's ticket consumed (its grant: no write of the
    waiter's machine); empty in a lease its own machine wrote."""


class Ended(msgspec.Struct, tag="ended", frozen=True):
    reason: str
    by: str


class Terms(msgspec.Struct, frozen=True):
    """What the leases a waiter waits for hold, as its ticket carries them: enough for a
    release on any machine to write them (:func:`handed_leases`)."""

    ttl: float
    lock_ids: list[str]
    """One a resource, in the ticket's order: chosen by the waiter's machine, which
    knows its grant by them."""
    boot_id: str
    sent: float
    """CLOCK_BOOTTIME on the waiter's machine just before this revision of the ticket
    was sent: a batch that expects this revision is stored after it."""
    pid: int | None = None
    pgid: int | None = None
    bind_connection: bool = False
    while_alive: bool = False


class Ticket(msgspec.Struct, tag="ticket", frozen=True):
    number: int
    """0 in a waiter's first ticket write: its number is that write's revision."""
    machine: str
    agent: str
    session: str
    pid: int
    resources: list[str]
    shared: bool = False
    terms: Terms | None = None
    """What its leases hold. A ticket without (an older engramd's) is not handed over
    to: its waiter takes its leases itself."""


ENDED_TTL = 1.0
"""How long an ended lease's record stays (then the servers remove it)."""
HANDOVER_SLACK = 3.0
"""What a lease handed over to a waiter lives on the servers beyond its ttl: the
ticket refresh (2 s) and a second. The servers' TTL starts when the batch is stored,
which is after the ticket revision it expects was sent (``Terms.sent``); the waiter's
machine promises its holder at most ``sent + ttl + HANDOVER_SLACK``, so never later
than the servers' expiry, and the full ttl whenever it sees the grant within the
slack of that ticket's sending."""


def handed_leases(ticket: Ticket, terms: Terms, ts: dt.datetime) -> list[Lease]:
    """The leases a release hands over to the waiter of *ticket* at *ts* (its wall
    clock), as the waiter's machine would have made them itself (tokens 0: the
    revisions of their writes)."""
    return [Lease(resource=resource, holder=ticket.agent, lock_id=lock_id, fencing_token=0,
                  acquired_at=ts, expires_at=ts + dt.timedelta(seconds=terms.ttl),
                  ttl=terms.ttl, boot_id=terms.boot_id,
                  deadline_boottime=terms.sent + terms.ttl + HANDOVER_SLACK, pid=terms.pid,
                  bound_to_connection=terms.bind_connection, session=ticket.session,
                  holder_pid=ticket.pid, machine=ticket.machine, pgid=terms.pgid,
                  while_alive=terms.while_alive, shared=ticket.shared)
            for resource, lock_id in zip(ticket.resources, terms.lock_ids, strict=True)]


encode_record = msgspec.msgpack.Encoder().encode
decode_lease_record = msgspec.msgpack.Decoder(Held | Ended).decode
decode_ticket = msgspec.msgpack.Decoder(Ticket).decode


class BucketGone(Exception):
    """The bucket's stream is not there (deleted while this machine used it)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the leases bucket {name} is gone (deleted?): this machine makes "
                         "it again, its fencing tokens above every one it knows of; the "
                         "leases it held are lost")


class KeyChanged(Exception):
    """The key's last revision is not the one the write expected."""


class BatchRefused(Exception):
    """The servers refused an atomic batch for another reason than an expectation:
    *disabled* when the stream does not allow batches, *repeated* when one of its
    message ids was stored already (an earlier copy of it, whose answer was lost)."""

    def __init__(self, why: str, *, disabled: bool = False, repeated: bool = False) -> None:
        super().__init__(why)
        self.disabled = disabled
        self.repeated = repeated


@dataclass(frozen=True)
class BatchWrite:
    """One message of an atomic batch: *value* as *key* if the key's last revision is
    *last*, or, with *under* (a key prefix such as ``l.<root>.``), if the last revision
    of any key under it is *last*; with a TTL when *ttl* is set."""

    key: str
    value: bytes
    last: int
    under: str = ""
    ttl: float | None = None
    msg_id: str = ""


@dataclass(frozen=True)
class KeyUpdate:
    """One revision of a key, as a watcher or a read sees it."""

    key: str
    revision: int
    value: bytes
    operation: str = ""
    """Empty for a value; ``DEL`` for a delete, ``PURGE`` for an expiry (a marker)."""
    msg_id: str = ""
    """The message id it was written with (a read tells it; a watch does not)."""

    @property
    def deleted(self) -> bool:
        return bool(self.operation)


class LeaseBucket:
    """Writes, reads and the watch of the leases bucket. Every method runs on the
    asyncio loop, on the journal's connection."""

    BATCHES = True
    """Whether :meth:`open` lets the bucket's stream take atomic batches."""

    def __init__(self, link: NatsLink) -> None:
        self.link = link
        self.name = f"engram_{link.settings.deployment}_leases"
        self.stream = f"KV_{self.name}"
        self._watcher: Any = None
        self.atomic = False
        """The stream takes atomic batches (a handover in one write); found out by
        :meth:`open`, and turned off when the servers say otherwise."""

    def config(self) -> api.KeyValueConfig:
        """The bucket as :meth:`open` makes it."""
        return api.KeyValueConfig(
            bucket=self.name, description="engram leases", history=1,
            storage=api.StorageType.FILE, replicas=self.link.settings.replicas,
            direct=False, limit_marker_ttl=MARKER_TTL)

    async def open(self, floor: int = 0) -> bool:
        """Create the bucket if it is not there, and let its stream take atomic batches
        (nats-server 2.12 and later: ``allow_atomic``, which nats-py's key-value config
        does not carry: a stream update turns it on, for a bucket made now or before).
        An older server keeps it off, and every release then takes the two-write path.
        Whether this call made it.

        A bucket made here numbers its messages from after *floor* (the highest token
        this machine knows of): fencing tokens are its revisions, and a bucket made
        again after one was deleted must not hand out tokens that were used already (a
        holder's fenced write would be refused as stale)."""
        js = self.link.js
        made = False
        try:
            await js.key_value(self.name)
        except nats.js.errors.BucketNotFoundError:
            try:
                await self._create(floor + 1)
                made = True
            except nats.js.errors.BadRequestError:
                await js.key_value(self.name)  # another machine created it meanwhile
        if not self.BATCHES:
            return made
        config = (await js.stream_info(self.stream)).config
        if not config.allow_atomic:
            config.allow_atomic = True
            try:
                config = (await js.update_stream(config)).config
            except nats.js.errors.APIError as exc:
                log.warning("cluster leases: the leases bucket cannot take atomic batches "
                            "(%s): a release and the next grant are two writes", exc)
        self.atomic = bool(config.allow_atomic)
        return made

    async def _create(self, first: int) -> None:
        """Make the bucket, its first message numbered *first*: nats-py's key-value
        stream (as ``create_key_value`` makes it) with a first sequence (and atomic
        batches at once: a bucket made again is in use, and an update of its stream
        right after would make its writes wait for a new leader)."""
        config = self.config()
        if first <= 1:
            await self.link.js.create_key_value(config)
            return
        await self.link.js.add_stream(api.StreamConfig(
            name=self.stream, description=config.description,
            subjects=[f"$KV.{self.name}.>"], allow_direct=config.direct,
            allow_rollup_hdrs=True, allow_msg_ttl=True, deny_delete=True,
            discard=api.DiscardPolicy.NEW, duplicate_window=120.0, max_consumers=-1,
            max_msgs=-1, max_msgs_per_subject=config.history, num_replicas=config.replicas,
            storage=config.storage, subject_delete_marker_ttl=config.limit_marker_ttl,
            first_seq=first, allow_atomic=self.BATCHES or None))

    async def gone(self) -> bool:
        """Whether the bucket's stream is not there (False when the leader says it is, or
        does not answer)."""
        try:
            await self.link.js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            return True
        except (nats.errors.Error, TimeoutError):
            return False
        return False

    async def write(self, key: str, value: bytes = b"", *, last: int | None,
                    ttl: float | None = None, msg_id: str = "") -> int:
        """Write *value* if the key's last revision is *last* (any when None); the new
        revision. KeyChanged when it is not. (Nothing is deleted: a KV delete leaves a
        marker for ever; an ended lease or a withdrawn ticket is a value with a TTL.)

        A write sent again with the same *msg_id* (its answer was lost) is answered
        with the first one's revision: the servers keep ids for two minutes.
        """
        headers: dict[str, str] = {}
        if msg_id:
            headers["Nats-Msg-Id"] = msg_id
        if last is not None:
            headers[api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(last)
        if ttl is not None:
            headers[api.Header.MSG_TTL] = ttl_header(ttl)
        try:
            ack = await self.link.js.publish(f"$KV.{self.name}.{key}", value,
                                             headers=headers or None,
                                             timeout=self.link.settings.timeout)
        except nats.js.errors.APIError as exc:
            if exc.err_code in (WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_CONSTANT):
                raise KeyChanged(key) from None
            raise
        return int(ack.seq)

    async def write_batch(self, writes: list[BatchWrite]) -> int:
        """Write *writes* in one atomic batch, each if its expectation holds: all of
        them, or none (KeyChanged when an expectation does not hold; BatchRefused when
        the servers refuse the batch otherwise). The revision of the last; the others
        are the ones before it, in order. One round trip: the messages before the last
        need no answer, the last commits the batch and is answered for all.

        Each attempt is a batch of its own (its id); a batch sent again with the same
        message ids after its answer was lost is refused (``repeated``) when the first
        was stored."""
        batch_id = secrets.token_urlsafe(12)
        prefix = f"$KV.{self.name}."
        ack = None
        for number, write in enumerate(writes, start=1):
            headers: dict[str, str] = {
                api.Header.BATCH_ID: batch_id, api.Header.BATCH_SEQUENCE: str(number),
                api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(write.last)}
            if write.under:
                headers[EXPECTED_UNDER] = f"{prefix}{write.under}>"
            if write.ttl is not None:
                headers[api.Header.MSG_TTL] = ttl_header(write.ttl)
            if write.msg_id:
                headers[api.Header.MSG_ID] = write.msg_id
            if number < len(writes):
                await self.link.nc.publish(prefix + write.key, write.value, headers=headers)
                continue
            headers[api.Header.BATCH_COMMIT] = "1"
            try:
                ack = await self.link.js.publish(prefix + write.key, write.value,
                                                 headers=headers,
                                                 timeout=self.link.settings.timeout)
            except nats.js.errors.APIError as exc:
                if exc.err_code in (WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_CONSTANT):
                    raise KeyChanged(write.key) from None
                if exc.err_code == ATOMIC_DISABLED:
                    self.atomic = False
                    raise BatchRefused(str(exc), disabled=True) from None
                if exc.err_code == BATCH_DUPLICATE_ID:
                    raise BatchRefused(str(exc), repeated=True) from None
                if transient(exc):
                    raise  # tried again (a leader being elected)
                raise BatchRefused(str(exc)) from None
        assert ack is not None, "a batch of at least one write"
        if ack.batch_size is not None and ack.batch_size != len(writes):
            raise BatchRefused(f"a batch of {len(writes)} stored as {ack.batch_size}")
        return int(ack.seq)

    async def keys(self, subjects: str) -> tuple[list[str], int]:
        """The keys matching *subjects* (``l.<root>.>``) that hold a message, as the
        stream's leader has them (every acknowledged write is there), and the bucket's
        last revision they are as of."""
        prefix = f"$KV.{self.name}."
        info = await self.link.js.stream_info(self.stream, subjects_filter=prefix + subjects)
        return ([subject[len(prefix):] for subject in (info.state.subjects or {})],
                int(info.state.last_seq or 0))

    async def read(self, key: str) -> KeyUpdate | None:
        """The key's last revision, from the stream's leader (None: no message)."""
        try:
            msg = await self.link.js.get_msg(self.stream, subject=f"$KV.{self.name}.{key}",
                                             direct=False)
        except nats.js.errors.NotFoundError:
            return None
        return KeyUpdate(key=key, revision=int(msg.seq), value=msg.data or b"",
                         operation=_operation(msg.headers),
                         msg_id=(msg.headers or {}).get(api.Header.MSG_ID, ""))

    async def watch(self) -> int:
        """Watch every key from its last revision (deletes included); the bucket's last
        revision just before (what the watch's first round covers at least)."""
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except nats.errors.Error:
                pass
        info = await self.link.js.stream_info(self.stream)
        kv = await self.link.js.key_value(self.name)
        self._watcher = await kv.watchall(inactive_threshold=300.0)
        return int(info.state.last_seq or 0)

    async def next_updates(self, limit: int, wait: float) -> list[KeyUpdate | None]:
        """The watch's next updates, at least one (TimeoutError after *wait* seconds
        without one); None stands for "every key's last revision has been seen"."""
        watcher = self._watcher
        found = [_update(await watcher.updates(timeout=wait))]
        while len(found) < limit and not watcher._updates.empty():
            found.append(_update(watcher._updates.get_nowait()))
        return found


def _operation(headers: dict[str, str] | None) -> str:
    if not headers:
        return ""
    if KV_OP in headers:
        return str(headers[KV_OP])
    if KV_MARKER_REASON in headers:
        return KV_PURGE
    return ""


def _update(entry: Any) -> KeyUpdate | None:
    if not isinstance(entry, KeyValue.Entry):
        return None  # the end of the initial values (or of the watch)
    return KeyUpdate(key=entry.key, revision=int(entry.revision or 0), value=entry.value or b"",
                     operation=entry.operation or "")
