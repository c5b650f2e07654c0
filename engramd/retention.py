"""Retention: units past a policy are archived, then removed by a journal entry.

Each run (every ``retention.interval`` seconds, and on ``gc``) walks every context a
policy covers (:mod:`engramd.retentionpolicy`: the first policy that covers a context is
its own), oldest first, and picks the units older than ``max_age`` or beyond the newest
``max_units``, except those held: units pinned in the context, a task's units until it
is done, a message that asks for acknowledgements until each recipient has given one
(every broadcast that asks for them). The picked units are written to one archive per
context and run (:mod:`engramd.archive`), and only then removed by
:class:`~engramd.protocol.model.UnitsRemoved` entries (a run first checks that the disk
has room for both: it removes nothing rather than stop midway): durable, replayed after a crash,
pushed to subscribers and taken by the search indexes as any entry is. A dry run picks
and counts, writing nothing.

"Now" is the daemon's clock (:mod:`engramd.clock`), the one units are stamped with.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import trio

from engramd.archive import write_archive
from engramd.clock import anchored_clock
from engramd.commit import GroupCommitter
from engramd.protocol import (
    BadRequest,
    DiskFull,
    RetentionContext,
    RetentionPolicyReport,
    RetentionReport,
    Unavailable,
    agentwork,
)
from engramd.protocol.model import Context, UnitsRemoved
from engramd.retentionpolicy import Policy, shadowed
from engramd.runtime import free_bytes
from engramd.storage import Store
from engramd.wal.record import Entry

log = logging.getLogger("engramd.retention")

PER_ENTRY = 1000
"""Units one removal entry names at most (one WAL record stays small)."""
PER_RUN = 100_000
"""Units one run removes from one context at most; the next run goes on."""
ARCHIVE_BYTES_PER_STORED_BYTE = 1.25
"""An archive's bytes per stored byte of its units, at most: JSON and gzip shrink text
several times, but a payload that does not compress is base64'd (4/3) and gzip gets
that back only in part."""
ARCHIVE_FILE_BYTES = 64 * 1024
"""An archive file's own cost (gzip's header, the file system's blocks) in the room check."""
REMOVAL_BYTES_PER_UNIT = 256
"""Disk one unit's removal takes: its id and seq in a units.removed WAL entry (about
50 bytes), then the store's tombstones and archive key for it (a few times that)."""
_context = msgspec.msgpack.Decoder(Context)


class _Head(msgspec.Struct):
    """What a pick reads of a stored unit."""

    id: str
    seq: int
    type: str
    ts: dt.datetime
    meta: dict[str, str]


_head = msgspec.msgpack.Decoder(_Head)


@dataclass
class Pick:
    """The units one policy removes from one context (a dry run: would remove)."""

    policy: Policy
    context_id: str
    unit_ids: list[str] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    held: int = 0
    kept: int = 0
    bytes: int = 0
    oldest: dt.datetime | None = None
    newest: dt.datetime | None = None
    archive: str = ""
    removed: int = 0
    """Units whose removal entries were written (a run that stops midway says so)."""
    pending: int = 0

    def take(self, head: _Head, size: int) -> None:
        self.unit_ids.append(head.id)
        self.seqs.append(head.seq)
        self.bytes += size
        self.oldest = head.ts if self.oldest is None else min(self.oldest, head.ts)
        self.newest = head.ts if self.newest is None else max(self.newest, head.ts)

    def report(self) -> RetentionContext:
        return RetentionContext(context_id=self.context_id, units=len(self.unit_ids),
                                held=self.held, kept=self.kept, bytes=self.bytes,
                                oldest=self.oldest, newest=self.newest, archive=self.archive)


def _held(store: Store, head: _Head, pinned: set[str]) -> bool:
    """Whether a unit past its policy stays all the same."""
    if head.id in pinned:
        return True
    meta = head.meta
    if head.type == "TASK_STATUS" and agentwork.STATE in meta:
        task = store.task(meta.get(agentwork.TASK_OF) or head.id)
        return task is not None and task.state != "done"
    if head.type == "MESSAGE" and agentwork.wants_ack(meta):
        recipients = agentwork.recipients(meta)
        return agentwork.BROADCAST in recipients or not all(
            store.acknowledged(head.id, recipient) for recipient in recipients)
    return False


def pick(store: Store, policy: Policy, context: Context, now: dt.datetime) -> Pick:
    """The units of *context* past *policy* at *now*, oldest first (at most PER_RUN)."""
    picked = Pick(policy, context.id)
    total = sum(1 for _ in store.scan_context(context.id, newest_first=False))
    excess = 0 if policy.max_units is None else max(0, total - policy.max_units)
    cutoff = None if policy.max_age is None else now - dt.timedelta(seconds=policy.max_age)
    pinned = set(context.pinned_units)
    for position, (_, raw) in enumerate(store.scan_context(context.id, newest_first=False)):
        if position >= excess and cutoff is None:
            break  # (by count alone, the rest are the newest: kept)
        head = _head.decode(raw)
        if position >= excess and head.ts >= cutoff:  # type: ignore[operator]
            continue
        if _held(store, head, pinned):
            picked.held += 1
            continue
        picked.take(head, len(raw))
        if len(picked.unit_ids) == PER_RUN:
            break
    picked.kept = total - len(picked.unit_ids)
    return picked


def pick_all(store: Store, policies: tuple[Policy, ...], now: dt.datetime) -> list[Pick]:
    """Every context's pick, by the first policy that covers it, in context id order."""
    picks = []
    for raw in store.contexts():
        context = _context.decode(raw)
        policy = next((each for each in policies if each.covers(context.id)), None)
        if policy is not None:
            found = pick(store, policy, context, now)
            if found.unit_ids or found.held:
                picks.append(found)
    return picks


class Retention:
    """Runs the policies now and then, and on request; one run at a time."""

    def __init__(self, store: Store, committer: GroupCommitter,
                 context_of: Callable[[str], Context | None], policies: tuple[Policy, ...],
                 archive_dir: str, interval: float, *, refused: str | None = None,
                 now: Callable[[], dt.datetime] | None = None, data_dir: str = "",
                 reserve_bytes: int = 0) -> None:
        self.store = store
        self.committer = committer
        self.context_of = context_of
        """The context as the journal has it, the batch being built included."""
        self.policies = policies
        self.archive_dir = archive_dir
        self.interval = interval
        self.refused = refused
        """Why retention cannot run here (cluster mode, a read-only start), or None."""
        self.now = now or anchored_clock()
        self.data_dir = data_dir or store.path
        """Where the removal entries go (the WAL and the store): its disk is checked."""
        self.reserve_bytes = reserve_bytes
        """search.reserve_bytes: kept free on the data dir's disk by a run."""
        self.runs = 0
        """Runs finished since the start (tests wait for one)."""
        self._one_at_a_time = trio.Lock()
        self.shadowed_by = {id(later): earlier for later, earlier in shadowed(policies)}
        """Policies that never apply, by the earlier policy that takes all their contexts."""
        for later, earlier in shadowed(policies):
            log.warning("retention policy %s covers no context: the earlier policy %s covers "
                        "every context it could (put the narrower policy first)",
                        later.context, earlier.context)

    async def run(self) -> None:
        """Apply the policies every ``interval`` seconds (none configured: never)."""
        if not self.policies or self.refused is not None:
            return
        while True:
            await trio.sleep(self.interval)
            try:
                report = await self.apply(dry_run=False)
            except Exception as exc:  # (a full disk, a damaged store: said, tried again)
                log.warning("retention run failed (%s); trying again in %gs", exc,
                            self.interval)
                continue
            if report.units:
                log.info("retention: %d unit(s) archived and removed (%d bytes) in %.3fs",
                         report.units, report.bytes, report.seconds)

    async def apply(self, *, dry_run: bool, request_id: int = 0) -> RetentionReport:
        if self.refused is not None:
            raise BadRequest(f"retention cannot run: {self.refused}")
        async with self._one_at_a_time:
            started = time.monotonic()
            now = self.now()
            picks = await trio.to_thread.run_sync(pick_all, self.store, self.policies, now)
            if not dry_run and any(picked.unit_ids for picked in picks):
                await trio.to_thread.run_sync(self._check_room, picks)
                for picked in picks:
                    if picked.unit_ids:
                        try:
                            await self._remove(picked, now)
                        except (DiskFull, Unavailable) as exc:
                            raise type(exc)(_stopped_midway(picks, exc)) from None
            self.runs += 1
        return self._report(picks, dry_run, request_id, time.monotonic() - started)

    def _check_room(self, picks: list[Pick]) -> None:
        """DiskFull, before anything is written, when the archives and the removal
        entries would not fit with search.reserve_bytes still free."""
        removing = [picked for picked in picks if picked.unit_ids]
        units = sum(len(picked.unit_ids) for picked in removing)
        archives = (int(sum(picked.bytes for picked in removing)
                        * ARCHIVE_BYTES_PER_STORED_BYTE) + ARCHIVE_FILE_BYTES * len(removing))
        entries = units * REMOVAL_BYTES_PER_UNIT
        archive_disk = _existing(self.archive_dir)
        same_disk = os.stat(archive_disk).st_dev == os.stat(self.data_dir).st_dev
        needs = [(self.data_dir, entries + self.reserve_bytes + (archives if same_disk else 0))]
        if not same_disk:
            needs.append((archive_disk, archives))
        for path, needed in needs:
            free = free_bytes(path)
            if free < needed:
                raise DiskFull(
                    f"retention removed nothing: {units:,} unit(s) need about "
                    f"{_mib(needed)} free on the disk of {path} ({_mib(archives)} of "
                    f"archives in {self.archive_dir}, {_mib(entries)} of removal entries"
                    + (f", search.reserve_bytes {_mib(self.reserve_bytes)} kept free"
                       if path == self.data_dir else "")
                    + f") and {_mib(free)} is free; free some space and run gc again")

    async def _remove(self, picked: Pick, now: dt.datetime) -> None:
        try:
            picked.archive = await trio.to_thread.run_sync(
                write_archive, self.store, self.archive_dir, picked.context_id,
                picked.unit_ids, picked.seqs[0], now)
        except OSError as exc:  # nothing is removed without its archive
            error = DiskFull if exc.errno in (errno.ENOSPC, errno.EDQUOT) else Unavailable
            raise error(f"retention removed nothing from {picked.context_id}: its archive "
                        f"could not be written in {self.archive_dir} ({exc.strerror or exc})"
                        ) from None
        for start in range(0, len(picked.unit_ids), PER_ENTRY):
            await self.committer.commit(self._removal(
                picked, picked.unit_ids[start:start + PER_ENTRY],
                picked.seqs[start:start + PER_ENTRY]))
            picked.removed += picked.pending

    def _removal(self, picked: Pick, unit_ids: list[str], seqs: list[int]
                 ) -> Callable[[int, dt.datetime], tuple[Entry | None, None]]:
        def build(first_seq: int, ts: dt.datetime) -> tuple[Entry | None, None]:
            # Pinned since the pick (its archive holds it all the same: an import of
            # the archive passes over a unit the journal still has).
            context = self.context_of(picked.context_id)
            pinned = set(context.pinned_units) if context is not None else set()
            kept = [(unit_id, seq) for unit_id, seq in zip(unit_ids, seqs, strict=True)
                    if unit_id not in pinned]
            picked.pending = len(kept)
            if not kept:
                return None, None
            event = UnitsRemoved(seq=first_seq, ts=ts, context_id=picked.context_id,
                                 unit_ids=[unit_id for unit_id, _ in kept],
                                 seqs=[seq for _, seq in kept], archive=picked.archive,
                                 policy=picked.policy.context)
            return Entry(first_seq=first_seq, events=[event]), None

        return build

    def _report(self, picks: list[Pick], dry_run: bool, request_id: int,
                seconds: float) -> RetentionReport:
        policies = [RetentionPolicyReport(
            context=policy.context, max_age=policy.max_age, max_units=policy.max_units,
            contexts=[picked.report() for picked in picks if picked.policy is policy],
            shadowed_by=earlier.context if (earlier := self.shadowed_by.get(id(policy)))
            else None)
            for policy in self.policies]
        return RetentionReport(
            id=request_id, dry_run=dry_run, policies=policies,
            units=sum(len(picked.unit_ids) for picked in picks),
            bytes=sum(picked.bytes for picked in picks), archive_dir=self.archive_dir,
            seconds=round(seconds, 3))


def _existing(path: str) -> str:
    """*path*, or its nearest parent that exists (an archive dir not made yet)."""
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):,.1f} MiB"


def _stopped_midway(picks: list[Pick], exc: Exception) -> str:
    """What a run that stopped did: a write refused after others went through did not
    leave "nothing written" behind."""
    done = [picked for picked in picks if picked.archive]
    if not done:
        return str(exc)
    why = "the disk is full" if isinstance(exc, DiskFull) else str(exc)
    said = "; ".join(_done(picked) for picked in done)
    return (f"retention stopped midway ({why}): {said}; the rest stays in the journal: run "
            "gc again once there is room")


def _done(picked: Pick) -> str:
    archived = len(picked.unit_ids)
    if not picked.removed:
        return (f"{archived:,} unit(s) of {picked.context_id} archived in {picked.archive} "
                "but none removed")
    return (f"{picked.removed:,} unit(s) of {picked.context_id} archived in {picked.archive} "
            "and removed" + (f" (its other {archived - picked.removed:,} are in that archive "
                             "too, and stay in the journal)"
                             if picked.removed < archived else ""))
