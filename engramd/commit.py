"""Group commit: one writer turns the requests that arrive together into one fsync.

Requests hand the committer a *build* function. The committer runs the builds
of a batch in arrival order (each gets the next sequence number and the commit
time, and sees every change built before it), writes their records with one
``write`` and one ``fdatasync`` in the journal's own thread (:class:`JournalThread`),
applies them to the store in the same thread, and only then wakes the requests.
Nothing is acknowledged before the fsync that covers it. The event loop never
waits on the disk: a slow fsync holds only the requests it covers.

Batching: a request that arrives while the log is idle is written at once.
Requests that arrive while a write is in flight form the next batch (up to
``batch_size``). Under load (the previous batch held more than one request)
the committer waits up to ``window`` seconds for the batch to hold as many as
the previous one did: with N writers each waiting for its answer before it
writes again, a batch waits for the N, not for ``batch_size`` requests that
will never come (which made every batch wait the whole window).

Failure: a failed write (disk full) fails its batch, which is cut back off the
log; the log stays writable and later requests are tried again. A failed
fsync, or a store that cannot apply what the log holds, fails the committer for
good: every later request gets ``unavailable`` until a restart replays the log.
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import trio
from trio import TaskStatus

from engramd.metrics import Histogram
from engramd.protocol import DiskFull, EngramError, Unavailable
from engramd.storage import Store
from engramd.wal.log import SyncFailed, WriteAheadLog, WriteFailed
from engramd.wal.record import Entry, encode_batch

log = logging.getLogger("engramd.commit")

T = TypeVar("T")
Build = Callable[[int, dt.datetime], tuple[Entry | None, T]]
"""``build(first_seq, ts) -> (entry or None, result)``; may raise EngramError."""


@dataclass(eq=False)
class _Submission(Generic[T]):
    build: Build[T]
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: EngramError | None = None
    rebuilds: int = 0


class JournalThread:
    """One long-lived thread that runs the journal's blocking work (write, fsync, apply,
    checkpoint), one job at a time in the order given.

    Cheaper than a trip through ``trio.to_thread`` per batch (no thread cache, limiter
    or context copy): a job is a queue put, and its end comes back through an eventfd of
    its own that its task waits on in the event loop's epoll, which wakes that task
    directly (``run_sync_soon`` would wake trio's system task first, which then wakes
    the waiting task: ``floor.handoff.thread`` measures the difference, SPECS §8). The
    wait is shielded: a write that has started cannot be taken back.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._idle_wakers: list[_Waker] = []
        """Wakers of jobs that ended, for the next jobs (one per job in flight)."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="engramd-journal",
                                        daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def stop(self) -> None:
        """Let the thread end once the jobs given so far are done."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None
        while self._idle_wakers:
            self._idle_wakers.pop().close()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job.result = job.function()
            except BaseException as exc:  # handed to the waiting task, which raises it
                job.error = exc
            job.waker.wake()

    async def run(self, function: Callable[[], T]) -> T:
        """Run *function* in the journal thread after the jobs before it; its result."""
        assert self._thread is not None, "the journal thread is not running"
        waker = self._idle_wakers.pop() if self._idle_wakers else _Waker()
        job = _Job(function, waker)
        self._jobs.put(job)
        with trio.CancelScope(shield=True):
            await waker.wait()
        self._idle_wakers.append(waker)
        if job.error is not None:
            raise job.error
        result: T = job.result
        return result


class _Waker:
    """An eventfd (a pipe where there is none): written once by the journal thread when a
    job ends, waited on by the job's task in the event loop."""

    def __init__(self) -> None:
        if hasattr(os, "eventfd"):
            self._read = self._write = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        else:  # pragma: no cover - not Linux
            self._read, self._write = os.pipe()
            os.set_blocking(self._read, False)

    def wake(self) -> None:
        os.write(self._write, (1).to_bytes(8, sys.byteorder))

    async def wait(self) -> None:
        await trio.lowlevel.wait_readable(self._read)
        os.read(self._read, 8)

    def close(self) -> None:
        os.close(self._read)
        if self._write != self._read:
            os.close(self._write)


@dataclass(eq=False)
class _Job:
    function: Callable[[], Any]
    waker: _Waker
    result: Any = None
    error: BaseException | None = None


@dataclass
class CommitStatistics:
    batches: int = 0
    entries: int = 0
    fsync_seconds: float = 0.0
    bytes_written: int = 0

    @property
    def mean_batch(self) -> float:
        return self.entries / self.batches if self.batches else 0.0


class ApplyFailed(Exception):
    """The store refused a batch the log already holds: writes stop until a restart."""


class Behind(Exception):
    """The journal has entries this machine has not applied yet (cluster mode: another
    machine wrote first). The batch is built again once :meth:`caught_up` returns."""

    def __init__(self, caught_up: Callable[[], Awaitable[None]], *, solo: bool = False) -> None:
        super().__init__("the journal moved on")
        self.caught_up = caught_up
        self.solo = solo
        """Build the next batches one request each (the batch was too large to send)."""


class GroupCommitter:
    """Group commit onto the local WAL. :class:`engramd.cluster.journal.ClusterCommitter`
    commits onto the cluster's stream instead, through the three methods marked below."""

    MAX_REBUILDS = 100
    """Times a request is built again because the journal moved on under it."""

    def __init__(
        self,
        wal: WriteAheadLog | None,
        store: Store,
        *,
        batch_size: int,
        window: float,
        checkpoint_bytes: int,
        on_applied: Callable[[list[Entry]], None],
        on_aborted: Callable[[], None],
        fsync: Histogram | None = None,
    ) -> None:
        self.wal = wal
        self.store = store
        self.batch_size = batch_size
        self.window = window
        self.checkpoint_bytes = checkpoint_bytes
        self._on_applied = on_applied
        self._on_aborted = on_aborted
        self._queue: collections.deque[_Submission[Any]] = collections.deque()
        self._wakeup = trio.Event()
        self._arrival = trio.Event()
        """Set by every new request (what a batch that fills waits on)."""
        self._last_batch = 0
        self._solo = 0
        """Batches still to be made of one request (after a batch too large to send)."""
        self._last_ts = dt.datetime.now(dt.UTC)
        self.clock: Callable[[], dt.datetime] = functools.partial(dt.datetime.now, dt.UTC)
        """What commits are stamped with (engramd gives it :mod:`engramd.clock`'s)."""
        self.failure: str | None = None
        """Why every write is refused until a restart (a failed fsync), or None."""
        self.refusing: str | None = None
        """Why the last write was refused for want of space, until a write succeeds."""
        self.thread = JournalThread()
        """Where every use of the WAL file and every store write happen, in order."""
        self.stats = CommitStatistics()
        self.fsync = fsync if fsync is not None else Histogram()
        """How long each batch's write + fdatasync took."""
        self.bytes_since_checkpoint = 0
        self.checkpoint_wanted = trio.Event()

    @property
    def queue_depth(self) -> int:
        """Changes waiting for the next batch."""
        return len(self._queue)

    async def commit(self, build: Build[T]) -> T:
        """Build, write and apply one change; return what *build* returned with it.

        Raises:
            EngramError: from *build* (validation), or ``unavailable`` when the
                write failed or the committer has failed.
        """
        if self.failure is not None:
            raise Unavailable(self.failure)
        submission: _Submission[T] = _Submission(build)
        self._queue.append(submission)
        self._wakeup.set()
        self._arrival.set()
        await submission.done.wait()
        if submission.error is not None:
            raise submission.error
        result: T = submission.result
        return result

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.thread.start()
        try:
            task_status.started()
            while True:
                await self._wakeup.wait()
                if self.window > 0 and self._last_batch > 1:
                    await self._fill(min(self.batch_size, self._last_batch))
                size = 1 if self._solo else self.batch_size
                self._solo = max(0, self._solo - 1)
                batch = [self._queue.popleft() for _ in range(min(size, len(self._queue)))]
                if not self._queue:
                    self._wakeup = trio.Event()
                self._last_batch = len(batch)
                await self._commit_batch(batch)
        finally:
            self._stopped()
            self.thread.stop()

    def _stopped(self) -> None:
        """The loop has ended (the daemon stops): what is queued will never be written.
        Its callers hear so now, and later ones at once; a shielded caller (a lease's end)
        would otherwise wait for good and hold the daemon's stop up."""
        if self.failure is None:
            self.failure = "engramd is stopping"
        for submission in self._queue:
            submission.error = Unavailable(self.failure)
            submission.done.set()
        self._queue.clear()

    async def _fill(self, wanted: int) -> None:
        """Wait up to the window until *wanted* requests are queued."""
        with trio.move_on_after(self.window):
            while len(self._queue) < wanted:
                self._arrival = trio.Event()
                await self._arrival.wait()

    def _now(self) -> dt.datetime:
        now = self.clock()
        self._last_ts = max(now, self._last_ts)
        return self._last_ts

    # -- where the batch goes: overridden in cluster mode -------------------------------

    @property
    def last_seq(self) -> int:
        """The seq of the journal's last event."""
        assert self.wal is not None
        return self.wal.last_seq

    def _basis(self) -> int:
        """What a batch built now is built on (cluster mode: the stream position)."""
        return 0

    async def _write_entries(self, entries: list[Entry], basis: int) -> tuple[list[Entry], int]:
        """Make *entries* durable and apply them to the store; the entries to publish
        and the bytes written."""
        data = encode_batch(entries)
        await self.thread.run(lambda: self._write(entries, data))
        return entries, len(data)

    # ------------------------------------------------------------------------------

    async def _commit_batch(self, batch: list[_Submission[Any]]) -> None:
        entries: list[Entry] = []
        built: list[_Submission[Any]] = []
        basis = self._basis()
        seq = self.last_seq + 1
        for submission in batch:
            try:
                entry, submission.result = submission.build(seq, self._now())
            except EngramError as exc:
                submission.error = exc
                submission.done.set()
                continue
            except Exception:
                log.exception("internal error while building a commit")
                submission.error = EngramError("internal error; see the daemon log")
                submission.done.set()
                continue
            built.append(submission)
            if entry is not None and entry.events:
                entries.append(entry)
                seq = entry.last_seq + 1
        if entries:
            try:
                applied, written = await self._write_entries(entries, basis)
            except Behind as exc:
                if exc.solo:
                    self._solo = len(built)
                self._rebuild(built)
                try:
                    await exc.caught_up()
                except EngramError as error:  # (cluster mode: the view did not catch up)
                    self._fail_queued(built, error)
                return
            except WriteFailed as exc:
                self._abort(built, exc, fatal=False)
                return
            except EngramError as exc:  # cluster mode: the cluster did not take the batch
                self._on_aborted()
                for submission in built:
                    submission.result, submission.error = None, exc
                    submission.done.set()
                return
            except (SyncFailed, Exception) as exc:
                self._abort(built, exc, fatal=True)
                return
            self.refusing = None
            self.stats.batches += 1
            self.stats.entries += len(entries)
            self.stats.bytes_written += written
            self._toward_checkpoint(written)
            if applied:
                self._on_applied(applied)
        for submission in built:
            submission.done.set()

    def _toward_checkpoint(self, written: int) -> None:
        """Count *written* bytes toward the next flush of the store (a checkpoint)."""
        self.bytes_since_checkpoint += written
        if self.bytes_since_checkpoint >= self.checkpoint_bytes:
            self.checkpoint_wanted.set()

    def _rebuild(self, built: list[_Submission[Any]]) -> None:
        """Queue *built* again, first, to be built against what the journal holds now."""
        self._on_aborted()
        again = []
        for submission in built:
            submission.rebuilds += 1
            if submission.rebuilds > self.MAX_REBUILDS:
                submission.result = None
                submission.error = Unavailable("the journal is too contended: other machines "
                                               "kept writing first; try again")
                submission.done.set()
            else:
                again.append(submission)
        self._queue.extendleft(reversed(again))
        if self._queue:
            self._wakeup.set()

    def _fail_queued(self, built: list[_Submission[Any]], error: EngramError) -> None:
        """Answer *error* to those of *built* still queued (nothing of them was written);
        the committer goes on with the requests after them."""
        failed = set(map(id, built))
        for submission in [s for s in self._queue if id(s) in failed]:
            self._queue.remove(submission)
            submission.result, submission.error = None, error
            submission.done.set()
        if not self._queue:
            self._wakeup = trio.Event()

    def _write(self, entries: list[Entry], data: bytes) -> None:
        assert self.wal is not None
        started = time.perf_counter()
        self.wal.append(entries[0].first_seq, entries[-1].last_seq, data)
        took = time.perf_counter() - started
        self.stats.fsync_seconds += took
        self.fsync.observe(took)
        try:
            self.store.apply(entries)
        except Exception as exc:  # in the log but not the store: never just the batch's error
            raise ApplyFailed(f"the store could not apply seqs {entries[0].first_seq}-"
                              f"{entries[-1].last_seq} that the log holds: {exc}") from exc

    def _abort(self, built: list[_Submission[Any]], exc: BaseException, *, fatal: bool) -> None:
        """Fail this batch; when *fatal*, also everything still queued."""
        failed = list(built)
        if fatal:
            self.failure = f"journal writes stopped: {exc}; restart engramd to recover"
            log.error("%s", self.failure)
            message = self.failure
            failed += self._queue
            self._queue.clear()
            self._wakeup = trio.Event()
        else:
            message = f"write refused: {exc}"
            log.warning("%s", message)
        error = Unavailable(message)
        if isinstance(exc, WriteFailed) and exc.disk_full:
            self.refusing = (f"write refused: the disk is full ({exc}); nothing was written. "
                             "Writes resume by themselves once there is space")
            error = DiskFull(self.refusing)
        # Queued requests are built after this, against what really is stored.
        self._on_aborted()
        for submission in failed:
            submission.result = None
            submission.error = error
            submission.done.set()

    @property
    def write_error(self) -> str | None:
        """Why writes are refused now (status' ``write_error``), or None."""
        return self.failure or self.refusing


class ReadOnlyCommitter(GroupCommitter):
    """engramd started read-only (a full disk): every write is refused, nothing runs."""

    def __init__(self, why: str, store: Store, **options: Any) -> None:
        super().__init__(None, store, **options)
        self.failure = why

    @property
    def last_seq(self) -> int:
        return self.store.applied_seq

    async def commit(self, build: Build[T]) -> T:
        assert self.failure is not None
        raise DiskFull(self.failure)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
