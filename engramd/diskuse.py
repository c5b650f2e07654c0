"""The journal's bytes on disk, part by part, and how fast they grow.

``engram stats`` shows what each part holds (the log, the store, the search index, the
vectors, the archive) and ``engram doctor`` warns when the data dir's disk would fill at
the current rate. A measure is one ``stat`` per file of the parts (tens of files:
RocksDB's tables are tens of MiB each), made in a worker thread: every
``disk.sample_seconds`` for the growth rate, and for ``stats`` when the last one is older
than :data:`FRESH_SECONDS`, so that no request walks anything twice in a row.

The rate is the slope of a least-squares line through the samples of the last
``disk.growth_window`` seconds of the parts' total. The total moves in steps both ways
(a checkpoint turns log segments into store files; a compaction writes its output before
it deletes its input): a line through many samples follows the trend, where the first and
last sample alone would measure whichever step fell between them.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
from trio import TaskStatus

from engramd.runtime import free_bytes

log = logging.getLogger("engramd.diskuse")

PARTS = ("wal", "store", "search", "vectors", "archive")
"""The parts of a journal on disk (the archive only when one is configured)."""
SEARCH_FILES = ("search.db", "search.db-wal", "search.db-shm")
FRESH_SECONDS = 1.0
"""A measure this recent answers ``stats`` as it is."""
MIN_SAMPLES = 5
"""Samples a growth rate needs: fewer say little about a trend."""
MAX_SAMPLES = 1000
"""Samples kept at most (the window is shorter when it holds more intervals than this),
so that a rate, taken at each ``stats``, costs a millisecond at most."""


@dataclass(frozen=True)
class DiskUse:
    parts: dict[str, int]
    """Bytes allocated on disk by part (see :data:`PARTS`)."""
    free: int
    """Bytes still free for engramd on the data dir's file system."""
    growing: int
    """The parts' total on the data dir's file system (an archive elsewhere fills
    another disk): what the growth rate follows."""


@dataclass(frozen=True)
class Growth:
    bytes_per_second: float
    seconds: float
    """The span of the samples the rate was taken over."""


def _allocated(path: str) -> int:
    try:
        return os.lstat(path).st_blocks * 512
    except OSError:  # (gone meanwhile: a segment dropped, a table compacted away)
        return 0


def _tree(path: str) -> int:
    """Bytes allocated to the files under *path* (symbolic links not followed)."""
    total, directories = 0, [path]
    while directories:
        try:
            entries = list(os.scandir(directories.pop()))
        except OSError:  # (gone meanwhile, or not ours to read)
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    directories.append(entry.path)
                else:
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
    return total


def _device(path: str) -> int | None:
    try:
        return os.stat(path).st_dev
    except OSError:
        return None


def measure(data_dir: str, archive_dir: str = "", *, local_log: bool = True) -> DiskUse:
    """The journal's parts in *data_dir* (and the archive in *archive_dir*, if any;
    without *local_log*, in cluster mode, no log: the journal is the cluster's stream)."""
    parts = {"wal": _tree(os.path.join(data_dir, "wal"))} if local_log else {}
    parts.update({
        "store": _tree(os.path.join(data_dir, "store")),
        "search": sum(_allocated(os.path.join(data_dir, name)) for name in SEARCH_FILES),
        "vectors": _tree(os.path.join(data_dir, "vectors")),
    })
    growing = sum(parts.values())
    if archive_dir:
        archive = os.path.join(data_dir, archive_dir)  # (an absolute one stays as it is)
        parts["archive"] = _tree(archive)
        if _device(archive) == _device(data_dir):
            growing += parts["archive"]
    try:
        free = free_bytes(data_dir)
    except OSError:
        free = 0
    return DiskUse(parts=parts, free=free, growing=growing)


def slope(samples: collections.abc.Sequence[tuple[float, int]]) -> float:
    """The least-squares slope of ``(time, bytes)`` samples (at least two times)."""
    count = len(samples)
    mean_t = sum(t for t, _ in samples) / count
    mean_b = sum(b for _, b in samples) / count
    spread = sum((t - mean_t) ** 2 for t, _ in samples)
    return sum((t - mean_t) * (b - mean_b) for t, b in samples) / spread


class DiskWatch:
    """Measures the journal's parts now and then and keeps the growth rate.

    *measure* is run by *run_sync* (a worker thread, one measure at a time).
    """

    def __init__(self, measure: Callable[[], DiskUse], *, interval: float, window: float,
                 run_sync: Callable[..., Awaitable[Any]] | None = None) -> None:
        self._measure = measure
        self.interval = interval
        self.window = window
        self._limiter = trio.CapacityLimiter(1)
        self._run_sync = run_sync or (lambda fn: trio.to_thread.run_sync(
            fn, limiter=self._limiter))
        self._samples: collections.deque[tuple[float, int]] = collections.deque(
            maxlen=MAX_SAMPLES)
        self._latest: tuple[float, DiskUse] | None = None
        self._said = ""

    async def _take(self) -> DiskUse:
        use: DiskUse = await self._run_sync(self._measure)
        self._latest = (trio.current_time(), use)
        return use

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                use = await self._take()
            except Exception as exc:  # a measure is no reason to stop the daemon
                self._failed(exc)
            else:
                now = trio.current_time()
                self._samples.append((now, use.growing))
                while self._samples[0][0] < now - self.window:
                    self._samples.popleft()
            await trio.sleep(self.interval)

    async def now(self) -> DiskUse | None:
        """The parts as of at most :data:`FRESH_SECONDS` ago (or the last measure, when
        one fails; None when none has been made)."""
        if self._latest is None or trio.current_time() - self._latest[0] > FRESH_SECONDS:
            try:
                return await self._take()
            except Exception as exc:
                self._failed(exc)
        return None if self._latest is None else self._latest[1]

    def _failed(self, exc: Exception) -> None:
        if str(exc) != self._said:  # once, not at every measure
            self._said = str(exc)
            log.warning("the journal's size could not be measured: %s", exc)

    def growth_known_in(self) -> float:
        """Seconds until :meth:`growth` has its measures (``disk.sample_seconds`` apart)."""
        return max(1, MIN_SAMPLES - len(self._samples)) * self.interval

    def growth(self) -> Growth | None:
        """The growth rate over the window; None until there are enough samples."""
        samples = self._samples
        if len(samples) < MIN_SAMPLES or samples[-1][0] <= samples[0][0]:
            return None
        return Growth(bytes_per_second=slope(samples),
                      seconds=samples[-1][0] - samples[0][0])
