"""An agent's marks and named cursors, shared by every machine of the deployment.

Agents move between machines: what an agent has read of its inbox, how far its brief
has got and where its named cursors are must not start again on another machine.
They live in a key-value bucket of their own, ``engram_<deployment>_marks`` (history
1, file storage, replicated like the journal), one key each:

* ``q.<kind>.<agent>``: the agent's mark *kind* (``inbox``, ``brief``);
* ``n.<agent>.<name>``: the agent's cursor *name*;

(``<agent>``, ``<name>``: their UTF-8 in unpadded base64url), the value the seq in
decimal. Not the journal: a mark moves at every read of an inbox and a cursor at
every acknowledgement, and neither is news for anyone's watch.

Every machine watches the bucket and writes what it sees into its store, so the
reads of one machine (``inbox --count``, the brief, a cursor's start) see every
machine's marks, milliseconds behind. Writes:

* the inbox mark moves only by compare-and-set from the revision the mark was read
  at, so every message is handed to each recipient once across machines, as within
  one (a move refused means another session moved it: the inbox is read again);
  an inbox that cannot reach the cluster hands nothing out (``unavailable``);
* a cursor and the brief mark are the last value written (as on one machine): the
  store takes it at once, and it is written to the bucket, at once for an
  acknowledgement when the cluster answers within a moment, else as soon as it does
  (what this machine has not shared yet wins over what its watch brings meanwhile).
  A subscription that starts from a cursor reads the cursor at the bucket's leader
  first (for a moment at most), so a cursor acknowledged on one machine resumes on
  another.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors
import trio
from nats.js import api
from trio import TaskStatus

from engramd.cluster.bucket import KeyChanged, KeyUpdate, LeaseBucket
from engramd.cluster.bucket import decode_resource as _text  # (a key's part, as the
from engramd.cluster.bucket import encode_resource as _token  # leases' keys write one)
from engramd.cluster.journal import ClusterJournal
from engramd.cluster.outage import Patience, cluster_away, transient, worth_waiting
from engramd.marks import INBOX_MARK
from engramd.protocol import Unavailable
from engramd.storage import Store

log = logging.getLogger("engramd.cluster.marks")

T = TypeVar("T")
MARK = "q"
CURSOR = "n"


def mark_key(kind: str, agent: str) -> str:
    return f"{MARK}.{kind}.{_token(agent)}"


def cursor_key(agent: str, name: str) -> str:
    return f"{CURSOR}.{_token(agent)}.{_token(name)}"


class MarkBucket(LeaseBucket):
    """The marks bucket: the leases bucket's operations on a bucket of its own."""

    BATCHES = False  # (nothing writes several marks at once)

    def __init__(self, journal: ClusterJournal) -> None:
        super().__init__(journal.link)
        self.name = f"engram_{journal.settings.deployment}_marks"
        self.stream = f"KV_{self.name}"

    def config(self) -> api.KeyValueConfig:
        return api.KeyValueConfig(
            bucket=self.name, description="engram marks and cursors", history=1,
            storage=api.StorageType.FILE, replicas=self.link.settings.replicas,
            direct=False)


class SharedMarks:
    """:class:`engramd.marks.Marks` in cluster mode (see the module)."""

    ATTEMPT_SECONDS = 2.0
    FRESH_SECONDS = 1.0
    PUSH_SECONDS = 1.0

    def __init__(self, journal: ClusterJournal, store: Store,
                 inbox_changed: Callable[[str], None] = lambda agent: None) -> None:
        self.local = False
        self.journal = journal
        self.store = store
        self.bucket = MarkBucket(journal)
        self._inbox_changed = inbox_changed
        self.revisions: dict[str, int] = {}
        """Key -> the last revision this machine has of it."""
        self.unshared: dict[str, int] = {}
        """Key -> a seq the store holds and the bucket does not yet (the last wins)."""
        self.synced = trio.Event()
        self._opened = trio.Event()
        self._pushing = trio.Lock()
        self._more = trio.Event()

    # -- the watch ---------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            nursery.start_soon(self._share_forever)
            patience = Patience("watching the marks bucket")
            while True:
                try:
                    await self.journal.connected()
                    await self.journal.bridge.run(self.bucket.open)
                    self._opened.set()
                    await self.journal.bridge.run(self.bucket.watch)
                    patience.succeeded()
                    await self._watch()
                except Exception as exc:  # the cluster away, or anything else: again
                    await patience.failed(exc)

    async def _watch(self) -> None:
        while True:
            try:
                updates = await self.journal.bridge.run(
                    lambda: self.bucket.next_updates(256, wait=5.0))
            except TimeoutError:
                continue
            for update in updates:
                if update is None:
                    self.synced.set()
                else:
                    self.apply(update)

    def apply(self, update: KeyUpdate) -> None:
        """Write *update* into the store, unless this machine has it already or has a
        later value of its own to share."""
        key = update.key
        if update.deleted or update.revision <= self.revisions.get(key, 0):
            return
        self.revisions[key] = update.revision
        if key in self.unshared:
            return
        try:
            seq = int(update.value)
            kind, first, second = key.split(".")
            if kind == MARK:
                agent = _text(second)
                self.store.set_mark(first, agent, seq)
                if first == INBOX_MARK:
                    self._inbox_changed(agent)
            elif kind == CURSOR:
                self.store.set_cursor(_text(first), _text(second), seq)
            else:
                raise ValueError("neither a mark nor a cursor")
        except ValueError as exc:
            log.warning("cluster marks: key %s revision %d is not engram's (%s); ignored",
                        key[:80], update.revision, exc)

    # -- the inbox: compare-and-set ----------------------------------------------------

    async def take_inbox(self, agent: str, mark: int, seq: int) -> bool:
        key = mark_key(INBOX_MARK, agent)
        await self._opened_or_away("no message was handed out or marked read")
        # The revision the write expects is the one of *mark*: read together, with no
        # checkpoint in between (the watch may have moved both since the caller read).
        if self.store.mark(INBOX_MARK, agent) != mark:
            return False
        last = self.revisions.get(key, 0)
        try:
            revision = await self._call(functools.partial(
                self.bucket.write, key, str(seq).encode(), last=last,
                msg_id=secrets.token_hex(12)),
                "no message was handed out or marked read; try again")
        except KeyChanged:
            await self._read(key)  # another machine moved it (or the watch is behind)
            return False
        if revision > self.revisions.get(key, 0):  # (else the watch brought a later move)
            self.revisions[key] = revision
            self.store.set_mark(INBOX_MARK, agent, seq)
        return True

    # -- cursors and the brief: the last value wins ------------------------------------

    def mark_moved(self, kind: str, agent: str, seq: int) -> None:
        self._unshared(mark_key(kind, agent), seq)

    def cursor_moved(self, agent: str, name: str, seq: int) -> None:
        self._unshared(cursor_key(agent, name), seq)

    async def cursor_shared(self, agent: str, name: str) -> None:
        if not self.journal.reachable or not self._opened.is_set():
            return  # shared once the cluster answers
        with trio.move_on_after(self.ATTEMPT_SECONDS):
            await self._share(cursor_key(agent, name))

    async def fresh_cursor(self, agent: str, name: str) -> None:
        key = cursor_key(agent, name)
        if key in self.unshared or not self.journal.reachable or not self._opened.is_set():
            return  # this machine's copy is the newest it can have
        with trio.move_on_after(self.FRESH_SECONDS):
            try:
                await self._read(key)
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                log.info("cluster marks: cursor read from this machine's copy (%s)", exc)

    def _unshared(self, key: str, seq: int) -> None:
        self.unshared[key] = seq
        self._more.set()

    async def _share_forever(self) -> None:
        patience = Patience("sharing marks and cursors")
        while True:
            await self._more.wait()
            self._more = trio.Event()
            while self.unshared:
                try:
                    await self._opened.wait()
                    for key in list(self.unshared):
                        await self._share(key)
                    patience.succeeded()
                except Exception as exc:
                    await patience.failed(exc)

    async def _share(self, key: str) -> None:
        """Write the key's unshared value (the newest, one write at a time)."""
        async with self._pushing:
            seq = self.unshared.get(key)
            if seq is None:
                return
            with trio.fail_after(self.ATTEMPT_SECONDS):
                revision = await self.journal.bridge.run(functools.partial(
                    self.bucket.write, key, str(seq).encode(), last=None))
            self.revisions[key] = max(revision, self.revisions.get(key, 0))
            if self.unshared.get(key) == seq:
                del self.unshared[key]

    # -- talking to the bucket ---------------------------------------------------------

    async def _read(self, key: str) -> None:
        found = await self.journal.bridge.run(functools.partial(self.bucket.read, key))
        if found is not None:
            self.apply(found)

    async def _opened_or_away(self, did: str) -> None:
        with trio.move_on_after(self.journal.settings.timeout):
            await self._opened.wait()
        if not self._opened.is_set():
            if self.journal.link.refused:
                raise Unavailable(f"{self.journal.unreachable()}: {did}")
            raise (await cluster_away(self.journal.settings.servers,
                                      TimeoutError("the marks bucket is not open yet"), did))

    async def _call(self, coroutine: Callable[[], Awaitable[T]], did: str) -> T:
        """A bucket operation, again while the cluster does not answer, for at most the
        write timeout, or longer while a quorum of the servers answers (an election:
        :func:`.outage.worth_waiting`); each attempt a few seconds."""
        settings = self.journal.settings
        started = trio.current_time()
        while True:
            try:
                with trio.fail_after(min(settings.timeout, self.ATTEMPT_SECONDS)):
                    return await self.journal.bridge.run(coroutine)
            except (nats.errors.Error, OSError, TimeoutError, trio.TooSlowError) as exc:
                if not transient(exc):
                    raise Unavailable(f"the cluster refused: {exc}") from None
                if not await worth_waiting(settings.servers, started, settings.timeout):
                    raise (await cluster_away(settings.servers, exc, did)) from None
                await trio.sleep(0.1)
