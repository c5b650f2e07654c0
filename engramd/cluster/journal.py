"""The journal on the cluster's stream, and this machine's view of it.

Writing: the group committer builds a batch against the local view exactly as it
does on one machine (sequence numbers, idempotency keys, contexts), and
:class:`ClusterCommitter` publishes it as one message that JetStream stores only
if the stream's last message is still the one the view had applied
(``Nats-Expected-Last-Sequence``). So the stream is the one order every machine
agrees on, and an entry's sequence numbers are the global ones. If another
machine wrote first, the view catches up and the batch is built again. Only
after JetStream acknowledged the message (stored on a quorum of replicas) and
the local store applied it is a request answered.

Reading: :class:`ClusterJournal` follows the stream from the message after the
last one the store applied and applies every message in order, whoever wrote
it, publishing its events to the hub and the indexer as the local committer
does. The stream position is written with each applied batch, so a restart
resumes where the store is, and a new data dir replays the stream from its
start.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import re
import socket
import ssl
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
import nats.errors
import trio
from trio import TaskStatus

from engramd.cluster.bridge import AsyncioThread
from engramd.cluster.fences import (
    FenceMarks,
    Mark,
    decode_mark,
    encode_mark,
    from_header,
    header_value,
)
from engramd.cluster.nats import (
    ClusterSettings,
    NatsLink,
    StreamFacts,
    StreamMovedOn,
    credentials_option,
    tls_context,
)
from engramd.cluster.outage import (
    Patience,
    cluster_away,
    describe,
    servers_answering,
    worth_waiting,
)
from engramd.commit import Behind, GroupCommitter, JournalThread
from engramd.config import DaemonConfig
from engramd.errors import StartupError
from engramd.protocol import ClusterMachine, ClusterStatus, Unavailable
from engramd.storage import Store
from engramd.wal.log import WriteFailed
from engramd.wal.record import Entry, decode_entry, merge_entries

log = logging.getLogger("engramd.cluster")

_encoder = msgspec.msgpack.Encoder()


Message = tuple[int, bytes, str]
"""A journal message: its stream sequence, its body (an entry) and its fence marks
(the ``Engram-Fences`` header's value, empty when it has none)."""


class JournalGap(Exception):
    """The stream holds an entry that does not follow the view's last one."""


_machine_decoder = msgspec.json.Decoder(ClusterMachine)


class ClusterJournal:
    """The connection to the cluster, and the view that follows its stream."""

    RETRY_SECONDS = 0.5
    ATTEMPT_SECONDS = 2.0
    ANNOUNCE_SECONDS = 5.0
    ANNOUNCE_MIN_SECONDS = 1.0
    STALLED_SECONDS = 15.0
    """Behind the stream this long without applying a message: the view is stalled (it
    follows again every ANNOUNCE_SECONDS meanwhile), and status says so."""

    def __init__(self, settings: ClusterSettings, store: Store, thread: JournalThread,
                 *, machine: str, socket_path: str, version: str) -> None:
        self.settings = settings
        self.store = store
        self.thread = thread
        self.machine = machine
        self.socket_path = socket_path
        self.host = socket.gethostname()
        """This machine's host name, as its announcements give it."""
        self.version = version
        self.bridge = AsyncioThread()
        self.link = NatsLink(settings, name=f"engramd {machine}")
        self.position = (store.applied_seq, store.stream_seq)
        """(seq of the view's last event, stream sequence of its last message)."""
        self.on_applied: Callable[[list[Entry]], None] = lambda entries: None
        self.on_applied_bytes: Callable[[int], None] = lambda count: None
        """Told the size of the messages each apply took in (what checkpoints count)."""
        self._applying = trio.Lock()
        """Held from applying messages to handing their entries on: the follower and a
        local write both apply, and trio wakes waiting tasks in no set order, so without
        it a later seq could reach the hub first (and a watcher skip the earlier one)."""
        self.failure: str | None = None
        """Why the view stopped following (a gap in the journal): it needs a rebuild."""
        self._facts: StreamFacts | None = None
        self.behind_since: float | None = None
        """Since when the view has been behind the stream without moving (trio's clock;
        None: it is not behind, as last seen)."""
        self.facts_at: float | None = None
        """When :attr:`facts` were read (trio's clock; None: never)."""
        self.reachable = False
        self.unreachable_since: float | None = None
        """When the cluster stopped answering (trio's clock; None: it answers)."""
        self.why_unreachable = ""
        """What the last failure said (while :attr:`reachable` is false)."""
        self.machines_seen: list[ClusterMachine] = []
        self._unreadable: set[bytes] = set()
        """Records of the machines bucket logged as unreadable (once each)."""
        self.machines_at: float | None = None
        self.answering: int | None = None
        """How many of the servers accepted a connection at the last look."""
        self._advanced = trio.Event()
        self.fences = FenceMarks()
        """The fence marks of the messages the view applied (:mod:`.fences`)."""
        self.fences.load([decode_mark(raw) for raw in store.fence_marks()])

    @property
    def facts(self) -> StreamFacts | None:
        """The stream as last seen."""
        return self._facts

    @facts.setter
    def facts(self, facts: StreamFacts | None) -> None:
        self._facts = facts
        self._note_progress(moved=False)

    def _note_progress(self, *, moved: bool) -> None:
        if not self.lag:
            self.behind_since = None
        elif moved or self.behind_since is None:
            self.behind_since = trio.current_time()

    @property
    def stalled(self) -> bool:
        """Whether the view is behind the stream and has not moved for STALLED_SECONDS."""
        return (self.reachable and self.behind_since is not None
                and trio.current_time() - self.behind_since > self.STALLED_SECONDS)

    @property
    def stream_seq(self) -> int:
        return self.position[1]

    @property
    def lag(self) -> int | None:
        """Messages in the stream that the view has not applied (as last seen)."""
        if self.facts is None:
            return None
        return max(0, self.facts.last_seq - self.stream_seq)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.bridge.start()
        patience = Patience("following the journal stream")
        try:
            task_status.started()
            while True:
                # Whatever fails (the cluster, a message this view cannot apply), the
                # view starts following again from where its store is: never an end.
                try:
                    await self._connect()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._announce)
                        await self._follow(patience)
                except Exception as exc:  # (trio hands a task's error on in a group)
                    self._set_unreachable(exc)
                    await patience.failed(exc)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    with trio.move_on_after(2):
                        await self.bridge.run(self.link.close)
                except Exception:  # closing a broken connection: nothing to keep
                    pass
                self.bridge.stop()

    async def _connect(self) -> None:
        if self.link.nc is None:
            await self.bridge.run(self.link.connect)
        self.facts = await self.bridge.run(self.link.ensure_stream)
        self.facts_at = trio.current_time()
        self._check_stream(self.facts)
        await self.bridge.run(lambda: self.link.follow(self.stream_seq))
        self._set_reachable(True)
        log.info("cluster: following stream %s from message %d (last %d)",
                 self.settings.stream, self.stream_seq + 1, self.facts.last_seq)

    def _check_stream(self, facts: StreamFacts) -> None:
        """Stop following a stream made anew under the same name (deleted and made again):
        this view's units and position are of the one before, and would be taken for
        this one's (or, ahead of it, make every write fail)."""
        made, recorded = facts.created, self.store.stream_made()
        if not made or made == recorded:
            return
        if recorded and self.store.stream_seq > 0:
            self.failure = (f"the journal stream {self.settings.stream} was made anew (at "
                            f"{made}; this machine's view is of the one made at {recorded}): "
                            "start this engramd with an empty data dir to build its view "
                            "again")
            log.error("cluster: %s", self.failure)
            return
        self.store.set_stream_made(made)

    async def _follow(self, patience: Patience) -> None:
        """Apply the stream's messages as they come. Only following (not connecting
        again) ends the pauses of *patience*: a failure met at once after each new
        connection would otherwise be tried, and logged, four times a second."""
        warned_at = None  # the view's position when a follow again was last logged
        while self.failure is None:
            try:
                messages = await self.bridge.run(
                    lambda: self.link.next_messages(256, wait=self.ANNOUNCE_SECONDS))
            except TimeoutError:
                patience.succeeded()
                # Nothing for a while, and the stream holds more: messages dropped at
                # the end of what was pushed (nothing came after them to show a hole).
                if self.lag:
                    said, warned_at = warned_at == self.stream_seq, self.stream_seq
                    await self._follow_again("nothing came, the stream holds more",
                                             quiet=said)
                continue
            await self.apply(messages)
            patience.succeeded()
            if self.link.lost:
                await self._follow_again("the subscription dropped messages")

    async def _follow_again(self, why: str, *, quiet: bool = False) -> None:
        """Subscribe again from the message after the view's last one (said once a
        position: the stream's last messages may have been deleted)."""
        say = log.debug if quiet else log.warning
        say("cluster: %s; following stream %s again from message %d", why,
            self.settings.stream, self.stream_seq + 1)
        await self.bridge.run(lambda: self.link.follow(self.stream_seq))

    async def _announce(self) -> None:
        """Say where this machine's view is: every ANNOUNCE_SECONDS, and within a second
        of the view moving (at most once a second)."""
        patience = Patience("announcing this machine")
        while True:
            announced = self.stream_seq
            record = self._announcement()
            try:
                # (While unreachable, tried every 2 s at least: one attempt that waits
                # out 5 s would leave the machine unreachable that long past the return.)
                with trio.fail_after(self.ANNOUNCE_SECONDS if self.reachable
                                     else 2 * self.ANNOUNCE_MIN_SECONDS):
                    await self.bridge.run(functools.partial(self.link.announce, self.machine,
                                                            record))
                    self.facts = await self.bridge.run(self.link.stream_facts)
                self.facts_at = trio.current_time()
                self._set_reachable(self.link.connected)
                patience.succeeded()
            except Exception as exc:  # the cluster away (or anything else): said, again
                self._set_unreachable(exc)
                patience.note(exc)
            await trio.sleep(self.ANNOUNCE_MIN_SECONDS)
            if not self.reachable:
                continue  # looked at again every second: writes resume as soon as it is back
            with trio.move_on_after(self.ANNOUNCE_SECONDS - self.ANNOUNCE_MIN_SECONDS):
                while self.stream_seq == announced:
                    await self._advanced.wait()

    def _announcement(self) -> bytes:
        """This machine's record in the machines bucket: where its view is."""
        return msgspec.json.encode(ClusterMachine(
            machine=self.machine, host=self.host, socket=self.socket_path,
            stream_seq=self.stream_seq, applied_seq=self.position[0], version=self.version))

    async def connected(self) -> None:
        """Wait until the connection to the cluster is made (the first time)."""
        while self.link.js is None:
            await self._advanced.wait()

    def status(self) -> ClusterStatus:
        facts, settings = self.facts, self.settings
        now = trio.current_time()
        return ClusterStatus(
            deployment=settings.deployment, stream=settings.stream,
            servers=[without_secret(url) for url in settings.servers],
            machine=self.machine, reachable=self.reachable, view_stream_seq=self.stream_seq,
            stream_last_seq=facts.last_seq if facts else None, lag=self.lag,
            replicas=facts.replicas if facts else settings.replicas,
            leader=facts.leader if facts else "",
            peers=facts.peers if facts else [], storage=facts.storage if facts else "",
            failure=self.failure, refused=self.link.refused,
            facts_age=None if self.facts_at is None else round(now - self.facts_at, 3),
            unreachable_for=(None if self.unreachable_since is None
                             else round(now - self.unreachable_since, 3)),
            write_error=self.write_error, servers_answering=self.answering,
            machines_age=None if self.machines_at is None else round(now - self.machines_at, 3))


    def unreachable(self) -> str:
        """Why the cluster cannot be reached, in a few words: the servers' refusal of
        this machine (its TLS settings, its credentials) when that is why."""
        if self.link.refused:
            return f"the cluster refuses this machine ({self.link.refused})"
        return "the cluster is unreachable"

    @property
    def write_error(self) -> str | None:
        """Why writes are refused now (as far as this machine can tell), or None."""
        if self.failure is not None:
            return self.failure
        if self.link.js is None:
            return "the cluster has not been reached yet: writes are refused"
        if self.link.refused:
            return f"writes are refused: {self.unreachable()}"
        if not self.reachable:
            return f"writes are refused: the cluster does not answer ({self.why_unreachable})"
        if self.stalled and self.facts is not None and self.behind_since is not None:
            return (f"this machine's view of the cluster journal is behind and not "
                    f"catching up (at message {self.stream_seq} of {self.facts.last_seq}, "
                    f"for {trio.current_time() - self.behind_since:.0f} s): writes time out "
                    "waiting for it")
        return None

    async def look(self, within: float = 0.6) -> None:
        """Bring the facts, the machines seen and the servers answering up to date, each
        bounded by *within* seconds: what does not answer in time stays as last seen
        (the status says how old it is). While the cluster does not answer this
        machine, this machine is announced once more: stored (by a quorum), it says the
        cluster answers again (the announcements' own loop may be in the middle of an
        attempt). Facts alone do not: a server without a quorum may answer them."""
        async def facts() -> None:
            with trio.move_on_after(within):
                await self.refresh_facts(quiet=True)

        async def reach() -> None:
            if not self.reachable and self.link.js is not None:
                with trio.move_on_after(within), contextlib.suppress(
                        nats.errors.Error, TimeoutError, OSError):
                    await self.bridge.run(functools.partial(
                        self.link.announce, self.machine, self._announcement()))
                    self._set_reachable(self.link.connected)

        async def machines() -> None:
            with trio.move_on_after(within):
                await self.machines()

        async def servers() -> None:
            self.answering = await servers_answering(self.settings.servers,
                                                     min(within, 0.3))

        async with trio.open_nursery() as nursery:
            for job in (facts, reach, machines, servers):
                nursery.start_soon(job)

    async def machines(self) -> list[ClusterMachine]:
        """The machines that announced themselves within the bucket's ttl (as last seen,
        :attr:`machines_seen`, when the cluster does not answer in time)."""
        with trio.move_on_after(self.settings.timeout):
            try:
                found = await self.bridge.run(self.link.machines_seen)
            except (nats.errors.Error, TimeoutError):
                return self.machines_seen
            self.machines_seen = sorted(_readable_machines(found, self._unreadable),
                                        key=lambda record: record.machine)
            self.machines_at = trio.current_time()
        return self.machines_seen

    async def refresh_facts(self, *, quiet: bool = False) -> StreamFacts | None:
        """The stream as it is now (as last seen when the cluster does not answer; unless
        *quiet*, that failure also marks the cluster unreachable)."""
        if self.link.js is None:
            return self.facts
        try:
            with trio.fail_after(self.settings.timeout):
                self.facts = await self.bridge.run(self.link.stream_facts)
            self.facts_at = trio.current_time()
        except (nats.errors.Error, TimeoutError, trio.TooSlowError) as exc:
            if not quiet:
                self._set_unreachable(exc)
        return self.facts

    # -- applying ----------------------------------------------------------------------

    def _set_reachable(self, reachable: bool) -> None:
        if reachable and not self.reachable and self.behind_since is not None:
            self.behind_since = trio.current_time()  # not stalled while it was away
        self.reachable = reachable
        if reachable:
            self.unreachable_since, self.why_unreachable = None, ""
        elif self.unreachable_since is None:
            self.unreachable_since = trio.current_time()
        self._wake()

    def _set_unreachable(self, exc: BaseException) -> None:
        self.why_unreachable = describe(exc)
        if self.reachable or self.unreachable_since is None:
            self._set_reachable(False)

    def _wake(self) -> None:
        advanced, self._advanced = self._advanced, trio.Event()
        advanced.set()

    async def apply(self, messages: list[Message]) -> list[Entry]:
        """Apply the messages the view has not applied yet, in order (in the journal
        thread, after whatever the committer gave it before); the entries applied."""
        async with self._applying:
            applied, marks, size = await self.thread.run(lambda: self._apply(messages))
            self.on_applied_bytes(size)
            # The marks before the position: a batch built on a position sees its marks.
            self.fences.applied(marks)
            moved = self.position[1] != self.store.stream_seq
            self.position = (self.store.applied_seq, self.store.stream_seq)
            self._note_progress(moved=moved)
            self._wake()
            if applied:
                self.on_applied(applied)
        return applied

    def _apply(self, messages: list[Message]) -> tuple[list[Entry], list[Mark], int]:
        store = self.store
        fresh: list[Entry] = []
        marks: list[Mark] = []
        size = 0
        applied_seq, stream_seq = store.applied_seq, store.stream_seq
        for number, body, fenced in messages:
            if number <= stream_seq:
                continue  # applied already: the echo of this machine's own write
            try:
                entry, marks_of_it = decode_entry(body), from_header(fenced)
                if not entry.events:  # (engramd never writes an empty batch)
                    raise ValueError("a batch of no events")
            except Exception as exc:  # (msgspec's and the header's errors: untrusted bytes)
                # Not an engram batch (written by hand with the cluster's credentials):
                # it holds no seq, so passing it over loses nothing; stopping at it
                # would stop every machine's view, and so every write, for good.
                log.warning("cluster: message %d of %s is not an engram batch (%s); "
                            "passed over", number, self.settings.stream, exc)
                stream_seq = number
                continue
            if entry.first_seq != applied_seq + 1:
                if entry.last_seq <= applied_seq:
                    log.warning("cluster: message %d repeats seqs %d-%d; skipped", number,
                                entry.first_seq, entry.last_seq)
                    stream_seq = number
                    continue
                self.failure = (f"the journal has a gap: message {number} starts at seq "
                                f"{entry.first_seq}, the view is at seq {applied_seq}; "
                                "rebuild this machine's view (start with an empty data dir)")
                log.error("cluster: %s", self.failure)
                break
            fresh.append(entry)
            size += len(body)
            marks += marks_of_it
            applied_seq, stream_seq = entry.last_seq, number
        if fresh:
            kept: dict[bytes, tuple[int, bytes]] = {}
            for mark in marks:
                if mark.key not in kept or kept[mark.key][0] < mark.token:
                    kept[mark.key] = (mark.token, encode_mark(mark))
            store.apply(fresh, stream_seq=stream_seq, fences=kept)
        elif stream_seq != store.stream_seq:
            store.set_stream_seq(stream_seq)
        return fresh, marks, size

    async def caught_up(self, stream_seq: int | None) -> None:
        """Wait until the view has applied the stream through *stream_seq* (through
        its last message when None)."""
        with trio.move_on_after(self.settings.timeout) as scope:
            if stream_seq is None:
                facts = await self.refresh_facts()
                stream_seq = facts.last_seq if facts is not None else self.stream_seq
            while self.stream_seq < stream_seq and self.failure is None:
                await self._advanced.wait()
        if scope.cancelled_caught:
            if not self.reachable:
                raise (await cluster_away(
                    self.settings.servers, TimeoutError(self.why_unreachable),
                    "nothing was written (this machine's view could not catch up); "
                    "try again"))
            raise Unavailable("this machine's view of the cluster journal is behind and "
                              "not catching up: nothing was written; try again")

    # -- writing -----------------------------------------------------------------------

    async def publish(self, entries: list[Entry], after: int, marks: list[Mark] | None = None
                      ) -> int:
        """Append *entries* to the stream if its last message is still *after*, with the
        fence *marks* of the checks made while building them (:mod:`.fences`), then
        apply them here (unless the view got there first); the bytes sent."""
        if self.failure is not None:
            raise Unavailable(self.failure)
        if self.link.js is None:  # not connected yet: at start, or never reached since
            with trio.move_on_after(self.settings.timeout):
                while self.link.js is None:
                    await self._advanced.wait()
            if self.link.js is None:
                if self.link.refused:
                    raise Unavailable(f"{self.unreachable()}: nothing was written; reads "
                                      "answer from this machine's view, which may be stale")
                raise (await cluster_away(
                    self.settings.servers, TimeoutError("not connected"),
                    "nothing was written; reads answer from this machine's view, which "
                    "may be stale"))
        # Otherwise the publish is tried even while the cluster looks unreachable (an
        # announcement failed): its own timeout decides, and a success says it is back.
        body = _encoder.encode(merge_entries(entries))
        limit = getattr(self.link.nc, "max_payload", 0) or 0
        if limit and len(body) > limit:
            if len(entries) > 1:
                raise Behind(_nothing, solo=True)
            raise WriteFailed(f"the change is {len(body)} bytes, more than the cluster's "
                              f"max_payload ({limit})", disk_full=False)
        msg_id = uuid.uuid4().hex
        fenced = header_value(marks) if marks else ""
        number = await self._publish(body, msg_id, after, fenced)
        if not self.reachable:
            self._set_reachable(True)
        await self.apply([(number, body, fenced)])
        return len(body)

    async def _publish(self, body: bytes, msg_id: str, after: int, fenced: str) -> int:
        """Publish, sending the same message again while the answer is lost: for the
        write timeout, or longer while a quorum of the servers answers (an election:
        :func:`.outage.worth_waiting`)."""
        started = trio.current_time()
        while True:
            try:
                # A few seconds an attempt: one sent to a server that has just died
                # would otherwise wait out the whole timeout.
                with trio.fail_after(min(self.settings.timeout, self.ATTEMPT_SECONDS)):
                    return await self.bridge.run(
                        lambda: self.link.publish(body, msg_id, after, fenced))
            except StreamMovedOn as moved:
                raise Behind(functools.partial(self.caught_up, moved.last)) from None
            except (nats.errors.Error, TimeoutError, OSError, trio.TooSlowError) as exc:
                if not await worth_waiting(self.settings.servers, started,
                                           self.settings.timeout):
                    self._set_unreachable(exc)
                    raise (await cluster_away(
                        self.settings.servers, exc,
                        "the write was not confirmed (it may or may not be in the journal: "
                        "a retry with the same idempotency key writes it at most once)")
                    ) from None
                await trio.sleep(0.05)


async def _nothing() -> None:
    pass


class ClusterCommitter(GroupCommitter):
    """Group commit onto the cluster's stream (see the module)."""

    def __init__(self, journal: ClusterJournal, store: Store, **options: Any) -> None:
        super().__init__(None, store, **options)
        self.journal = journal
        self.thread = journal.thread
        journal.on_applied = self._on_applied
        # The view's store is flushed after so many bytes applied, whoever wrote them (the
        # stream is the log: without checkpoints a kill -9 replays it from the last stop).
        journal.on_applied_bytes = super()._toward_checkpoint

    @property
    def last_seq(self) -> int:
        return self.journal.position[0]

    def _basis(self) -> int:
        # A batch is about to be built: the marks noted are of the batch before, which
        # went (with its marks) or was refused (and is built again, noting them again).
        self.journal.fences.pending.clear()
        return self.journal.position[1]

    @property
    def write_error(self) -> str | None:
        return super().write_error or self.journal.write_error

    async def _write_entries(self, entries: list[Entry], basis: int) -> tuple[list[Entry], int]:
        # The journal published what it applied, as it does for other machines' writes.
        return [], await self.journal.publish(entries, basis, self.journal.fences.take())

    def _toward_checkpoint(self, written: int) -> None:
        pass  # counted as the view applies it (the echo of the publish included)


def _readable_machines(found: list[bytes], said: set[bytes]) -> list[ClusterMachine]:
    """The records of *found* that are machines' announcements: anything else (written
    by hand with the cluster's credentials) is left out, and logged once (*said* holds
    those logged already)."""
    machines = []
    for raw in found:
        try:
            machine = _machine_decoder.decode(raw)
            if not (0 <= machine.stream_seq < 2**63 and 0 <= machine.applied_seq < 2**63):
                raise ValueError("a position out of range")  # (JSON's ints are unbounded)
            machines.append(machine)
        except (msgspec.DecodeError, ValueError) as exc:
            if raw not in said and len(said) < 1000:
                said.add(raw)
                log.warning("cluster: a record of the machines bucket is not a machine's "
                            "(%s); left out", exc)
    return machines


def machine_id(data_dir: str) -> str:
    """This data dir's name in the cluster: made once, kept in ``machine-id``."""
    path = os.path.join(data_dir, "machine-id")
    try:
        with open(path) as file:
            found = file.read().strip()
            if found:
                return found
    except FileNotFoundError:
        pass
    made = f"{socket.gethostname().split('.')[0]}-{uuid.uuid4().hex[:8]}"
    with open(path + ".tmp", "w") as file:
        file.write(made + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(path + ".tmp", path)
    return made


def check_secrets(settings: ClusterSettings) -> None:
    """Refuse to start (one line) on TLS and credentials files that cannot be used:
    the connection would fail the same way for ever, and say less."""
    if settings.tls_key and not settings.tls_cert:
        raise StartupError("cluster.tls_key is set without cluster.tls_cert")
    try:
        tls_context(settings)
    except (OSError, ssl.SSLError) as exc:
        named = [f"{name} {path}" for name, path in (
            ("cluster.tls_ca", settings.tls_ca), ("cluster.tls_cert", settings.tls_cert),
            ("cluster.tls_key", settings.tls_key)) if path]
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else (
            getattr(exc, "reason", None) or str(exc))
        raise StartupError(f"{', '.join(named)}: cannot be used: {why}") from None
    if settings.credentials:
        try:
            credentials_option(settings.credentials)
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise StartupError(f"cluster.credentials {settings.credentials}: {why}") from None
        if importlib.util.find_spec("nkeys") is None:  # nats-py signs with it
            raise StartupError("cluster.credentials needs the nkeys package (NATS "
                               "signatures): pip install nkeys")


def without_secret(url: str) -> str:
    """*url* as status may show it: a password or token in it replaced by ``***``."""
    scheme, sep, rest = url.rpartition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:***" if colon else "***"  # user:password, or a token alone
    return f"{scheme}{sep}{shown}@{host}"


_DEPLOYMENT = re.compile(r"^[a-z0-9_-]{1,64}$")
"""Lower case: the stream's name is the upper-cased one, and the buckets' the name as
given, so two names that differ only in case would share a journal and not leases."""


def check_deployment(config: DaemonConfig, store: Store) -> None:
    """Refuse a data dir holding a view of another deployment's journal (its units would
    be taken for the new stream's, or its position, ahead of the new stream, would make
    every write fail); record the deployment in one that holds nothing yet."""
    recorded = store.deployment()
    if recorded == config.deployment:
        return
    if recorded and store.stream_seq > 0:
        raise StartupError(
            f"{config.data_dir} is a view of the journal of deployment {recorded!r}, not "
            f"of {config.deployment!r}: start with cluster.deployment={recorded}, or give "
            f"deployment {config.deployment!r} a data dir of its own")
    store.set_deployment(config.deployment)


def open_cluster_journal(config: DaemonConfig, store: Store, version: str) -> ClusterJournal:
    """The cluster journal *config* describes, for the store in its data dir."""
    if not _DEPLOYMENT.match(config.deployment):
        raise StartupError(f"cluster.deployment {config.deployment!r}: use 1-64 lowercase "
                           "letters, digits, - and _")
    check_deployment(config, store)
    settings = ClusterSettings(
        servers=config.cluster_servers, deployment=config.deployment,
        replicas=config.replicas, credentials=config.credentials, tls_ca=config.tls_ca,
        tls_cert=config.tls_cert, tls_key=config.tls_key, timeout=config.write_timeout)
    check_secrets(settings)
    return ClusterJournal(settings, store, JournalThread(),
                          machine=machine_id(config.data_dir), socket_path=config.socket,
                          version=version)
