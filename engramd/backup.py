"""Online backup: a consistent copy of the running daemon's journal, and checking one.

A backup is a data dir of its own (``engramd --data-dir DEST`` starts on it)::

    DEST/store/       a RocksDB checkpoint of the store: units, contexts, leases,
                      tasks, mailboxes, named cursors and read marks (the last two
                      are not in the log at all)
    DEST/wal/         the log's segments, cut at the last record of the backup
    DEST/tokens.json  the agent tokens, when there are any
    DEST/backup.json  the manifest: :class:`~engramd.protocol.BackupInfo` and each
                      file's size and SHA-256

Why the store and not the log alone: segments are deleted once a checkpoint of
the store covers them, so the log no longer holds the beginning of the journal.

Consistency without stopping writers: the journal thread runs one job between
two group commits (:meth:`engramd.commit.JournalThread.run`), so the store and
the log are at the same seq while it runs. The job makes a RocksDB checkpoint
(hard links: the store's files never change once written) and hard links of
the log's segments, noting the last segment's length, into
``<data dir>/backup.staging``; writers wait for that job only. The store is
flushed just before, outside the job, so that little is left to flush in it.
Copying out of the staging directory into ``DEST`` happens after, in a worker
thread, while the daemon goes on; the copy is built as a hidden sibling of
``DEST`` and renamed into place once it is whole and fsynced, so ``DEST``
either is a complete backup or does not exist.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
import trio
from rocksdict import AccessType, Checkpoint, Options, Rdict

from engramd.errors import EXIT_DAMAGED
from engramd.protocol import (
    BackupChecked,
    BackupInfo,
    BackupMade,
    BadRequest,
    Conflict,
    Unavailable,
)
from engramd.storage import Store, seq_from
from engramd.tokens import TOKENS_FILE
from engramd.wal.log import WriteAheadLog, fsync_dir
from engramd.wal.salvage import plan_salvage

if TYPE_CHECKING:
    from engramd.engine import Parts

EXIT_OK = 0
MANIFEST = "backup.json"
STAGING = "backup.staging"
FORMAT = 1
_CHUNK = 1 << 20


class ManifestFile(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    """Relative to the backup's directory."""
    bytes: int
    sha256: str


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    format: int
    backup: BackupInfo
    files: list[ManifestFile]


_manifest_decoder = msgspec.json.Decoder(Manifest)


@dataclass(frozen=True)
class Snapshot:
    """What the journal thread took: the log and the store at one seq."""

    seq: int
    store_seq: int
    segments: list[tuple[str, int]]
    """Each segment's file name and the length that belongs to the backup."""
    paused: float


async def make_backup(parts: Parts, data_dir: str, version: str, dest: str,
                      request_id: int) -> BackupMade:
    """Copy the journal of *parts* to *dest* (see the module)."""
    wal = parts.wal
    if wal is None:
        raise BadRequest("in cluster mode the journal is the cluster's stream: back the "
                         "stream up (NATS), not one machine's view of it")
    check_destination(dest, data_dir)
    started = time.monotonic()
    staging = os.path.join(data_dir, STAGING)
    await trio.to_thread.run_sync(_remove, staging)  # left by a daemon that died mid-way
    try:
        await trio.to_thread.run_sync(parts.store.flush)
        snap = await parts.committer.thread.run(lambda: snapshot(parts.store, wal, staging))
        try:
            info = await trio.to_thread.run_sync(copy_out, staging, snap, dest, data_dir,
                                                 version)
        except OSError as exc:
            problem = f"cannot write the backup to {dest}: {exc.strerror or exc}"
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
                raise Unavailable(problem) from None
            raise BadRequest(problem) from None
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_remove, staging)
    return BackupMade(id=request_id, backup=info, paused_seconds=round(snap.paused, 6),
                      seconds=round(time.monotonic() - started, 6))


def check_destination(dest: str, data_dir: str) -> None:
    """Refuse a destination that is not a new directory beside the journal."""
    if not os.path.isabs(dest):
        raise BadRequest(f"the backup path must be absolute, not {dest!r} (the daemon "
                         "does not share the caller's working directory)")
    dest = os.path.normpath(dest)
    if os.path.lexists(dest):
        raise Conflict(f"{dest} exists; a backup goes to a new directory")
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        raise BadRequest(f"{parent} is not a directory; create it first")
    inside = os.path.realpath(parent) + os.sep
    if inside.startswith(os.path.realpath(data_dir) + os.sep):
        raise BadRequest(f"{dest} is inside the data dir {data_dir}; choose a place "
                         "outside it")


def snapshot(store: Store, wal: WriteAheadLog, staging: str) -> Snapshot:
    """In the journal thread, between two commits: the store and the log at one seq."""
    started = time.perf_counter()
    os.makedirs(os.path.join(staging, "wal"), mode=0o700)
    Checkpoint(store.db).create_checkpoint(os.path.join(staging, "store"))
    segments = []
    for segment in wal.segments:
        name = os.path.basename(segment.path)
        target = os.path.join(staging, "wal", name)
        try:
            os.link(segment.path, target)
        except OSError:  # a file system without hard links: copy what belongs to the backup
            _copy(segment.path, target, segment.size)
        segments.append((name, segment.size))
    return Snapshot(wal.last_seq, store.applied_seq, segments, time.perf_counter() - started)


def copy_out(staging: str, snap: Snapshot, dest: str, data_dir: str,
             version: str) -> BackupInfo:
    """Copy the staged snapshot into *dest* (whole, or not at all)."""
    dest = os.path.normpath(dest)
    partial = os.path.join(os.path.dirname(dest),
                           f".{os.path.basename(dest)}.partial-{secrets.token_hex(4)}")
    os.mkdir(partial, 0o700)
    try:
        files: list[ManifestFile] = []
        for relative in _files_under(os.path.join(staging, "store")):
            files.append(_copy(os.path.join(staging, "store", relative),
                               os.path.join(partial, "store", relative), name=relative,
                               prefix="store"))
        for name, size in snap.segments:
            files.append(_copy(os.path.join(staging, "wal", name),
                               os.path.join(partial, "wal", name), size, name=name,
                               prefix="wal"))
        tokens = os.path.join(data_dir, TOKENS_FILE)
        with contextlib.suppress(FileNotFoundError):  # rewritten by rename: read whole
            files.append(_copy(tokens, os.path.join(partial, TOKENS_FILE), name=TOKENS_FILE))
        counts = count_store(os.path.join(partial, "store"))
        info = BackupInfo(path=dest, made_at=dt.datetime.now(dt.UTC), daemon_version=version,
                          seq=snap.seq, store_seq=snap.store_seq, units=counts.units,
                          contexts=counts.contexts, leases=counts.leases, tasks=counts.tasks,
                          files=len(files), bytes=sum(item.bytes for item in files))
        manifest = Manifest(format=FORMAT, backup=info, files=files)
        with open(os.path.join(partial, MANIFEST), "wb") as file:
            file.write(msgspec.json.format(msgspec.json.encode(manifest)))
            file.flush()
            os.fsync(file.fileno())
        for directory in ("store", "wal", ""):
            if os.path.isdir(os.path.join(partial, directory)):
                fsync_dir(os.path.join(partial, directory))
        os.rename(partial, dest)
        fsync_dir(os.path.dirname(dest))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return info


def _files_under(root: str) -> Iterator[str]:
    for directory, _, names in os.walk(root):
        for name in sorted(names):
            yield os.path.relpath(os.path.join(directory, name), root)


def _copy(source: str, target: str, size: int | None = None, *, name: str = "",
          prefix: str = "") -> ManifestFile:
    """Copy *source* (its first *size* bytes) to *target*, fsynced; its manifest line."""
    os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
    digest = hashlib.sha256()
    left = size
    copied = 0
    with open(source, "rb") as reader, open(target, "wb") as writer:
        while left is None or left > 0:
            chunk = reader.read(_CHUNK if left is None else min(_CHUNK, left))
            if not chunk:
                break
            writer.write(chunk)
            digest.update(chunk)
            copied += len(chunk)
            if left is not None:
                left -= len(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    if size is not None and copied != size:
        raise OSError(errno.EIO, f"{source} is shorter than the {size} bytes it had")
    return ManifestFile(path=os.path.join(prefix, name) if prefix else name, bytes=copied,
                        sha256=digest.hexdigest())


def _remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


# -- reading a copy's store, and checking a backup ----------------------------------------


@dataclass(frozen=True)
class StoreCounts:
    applied: int
    units: int
    contexts: int
    leases: int
    tasks: int
    counted_units: int = -1
    """Units found by walking every key (-1: not walked)."""
    counted_contexts: int = -1


@contextlib.contextmanager
def _read_only(path: str) -> Iterator[Rdict]:
    """The store at *path*, opened so that nothing in its directory changes (RocksDB's
    own info log goes to a temporary directory)."""
    if not os.path.isfile(os.path.join(path, "CURRENT")):
        raise FileNotFoundError(errno.ENOENT, "not a store (no CURRENT file)", path)
    with tempfile.TemporaryDirectory(prefix="engram-verify-") as logs:
        options = Options(raw_mode=True)
        options.set_db_log_dir(logs)
        db = Rdict(path, options, access_type=AccessType.read_only())
        try:
            yield db
        finally:
            db.close()


def count_store(path: str, *, walk: bool = False) -> StoreCounts:
    """The counts a store keeps, and with *walk* those found by reading every key (which
    also reads, and so checks the checksum of, every block)."""
    with _read_only(path) as db:
        def counter(key: bytes) -> int:
            raw = db.get(key)
            return 0 if raw is None else seq_from(raw)

        found = {b"u/": 0, b"x/": 0, b"l/": 0, b"j/": 0}
        iterator = db.iter()
        if walk:
            iterator.seek_to_first()
            while iterator.valid():
                prefix = iterator.key()[:2]
                if prefix in found:
                    found[prefix] += 1
                iterator.next()
        else:
            for prefix in (b"l/", b"j/"):
                iterator.seek(prefix)
                while iterator.valid() and iterator.key().startswith(prefix):
                    found[prefix] += 1
                    iterator.next()
        iterator.status()  # raises when reading stopped at damage, not at the end
        return StoreCounts(applied=counter(b"m/applied"), units=counter(b"m/units"),
                           contexts=counter(b"m/contexts"), leases=found[b"l/"],
                           tasks=found[b"j/"],
                           counted_units=found[b"u/"] if walk else -1,
                           counted_contexts=found[b"x/"] if walk else -1)


def verify_backup(path: str, request_id: int = 0) -> BackupChecked:
    """Check the backup at *path* without changing it: every file of its manifest (size,
    SHA-256), its log (checksums, seqs up to the backup's), its store (read whole; its
    counts against the manifest's)."""
    try:
        with open(os.path.join(path, MANIFEST), "rb") as file:
            manifest = _manifest_decoder.decode(file.read())
    except (OSError, msgspec.MsgspecError) as exc:
        return BackupChecked(id=request_id, ok=False, backup=None,
                             problems=[f"{path} has no readable {MANIFEST}: {exc}"])
    info = manifest.backup
    problems = list(_check_files(path, manifest.files))
    problems += _check_log(os.path.join(path, "wal"), info)
    problems += _check_store(os.path.join(path, "store"), info)
    return BackupChecked(id=request_id, ok=not problems, backup=info, problems=problems)


def _check_files(path: str, files: list[ManifestFile]) -> Iterator[str]:
    for item in files:
        full = os.path.join(path, item.path)
        try:
            digest = hashlib.sha256()
            size = 0
            with open(full, "rb") as file:
                while chunk := file.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
        except OSError as exc:
            yield f"{item.path}: {exc.strerror or exc}"
            continue
        if size != item.bytes:
            yield f"{item.path}: {size} bytes, the backup wrote {item.bytes}"
        elif digest.hexdigest() != item.sha256:
            yield f"{item.path}: its content changed since the backup was made (SHA-256)"


def _check_log(directory: str, info: BackupInfo) -> list[str]:
    if not os.path.isdir(directory):
        return [f"{directory} is missing"]
    try:
        plan = plan_salvage(directory, info.store_seq)
    except OSError as exc:
        return [f"log: {exc.strerror or exc} ({exc.filename or directory})"]
    problems = [f"log damaged: {os.path.basename(drop.segment)} at offset {drop.offset} "
                f"({drop.reason})" for drop in plan.drops]
    last = plan.last_seq if plan.last_seq is not None else info.store_seq
    if not plan.drops and last != info.seq:
        problems.append(f"the log ends at seq {last}, the backup's is {info.seq}")
    return problems


def _check_store(directory: str, info: BackupInfo) -> list[str]:
    try:
        counts = count_store(directory, walk=True)
    except Exception as exc:  # rocksdict reports damage as a plain Exception
        return [f"store: {exc}"]
    expected = {"applied seq": (counts.applied, info.store_seq),
                "units": (counts.units, info.units),
                "units found": (counts.counted_units, info.units),
                "contexts": (counts.contexts, info.contexts),
                "contexts found": (counts.counted_contexts, info.contexts),
                "leases": (counts.leases, info.leases), "tasks": (counts.tasks, info.tasks)}
    return [f"store: {what} {found}, the backup recorded {recorded}"
            for what, (found, recorded) in expected.items() if found != recorded]


def verify_command(path: str) -> int:
    """``engramd --verify-backup DIR``: the check, one line each, for people and scripts."""
    checked = verify_backup(path)
    info = checked.backup
    if info is not None:
        print(f"backup {path}: seq {info.seq}, {info.units} units, {info.contexts} contexts, "
              f"{info.leases} leases, {info.tasks} tasks, {info.files} files "
              f"({info.bytes} bytes), made {info.made_at:%Y-%m-%d %H:%M:%S} UTC")
    for problem in checked.problems:
        print(f"damaged: {problem}")
    print("intact" if checked.ok else "the backup is damaged")
    return EXIT_OK if checked.ok else EXIT_DAMAGED
