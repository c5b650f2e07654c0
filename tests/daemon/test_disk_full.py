"""A full disk: writes refused as disk_full and reported, derived data yields first, a
read-only start. Injected faults, and a real small file system where this sandbox lets
the test mount one."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from engram_cli.client import Client
from engram_cli.client.requests import draft
from engramd import engine, indexer
from engramd import search as search_module
from engramd.protocol import DiskFull, JournalStatus, Unavailable
from engramd.wal import log as wal_log
from tests.conftest import (
    DaemonProcess,
    connect,
    make_config,
    start_engramd,
    start_threaded,
    wait_until,
)

real_write_all = wal_log._write_all


def journal(engram: Client) -> JournalStatus:
    status = engram.status().journal
    assert status is not None
    return status


def test_a_full_disk_is_disk_full_in_the_reply_and_in_status(engramd: DaemonProcess) -> None:
    with Client(engramd.socket, autostart=False, env={}) as engram:
        kept = engram.create_unit("d", "MESSAGE", "fits")
        assert journal(engram).write_error is None
        segment = sorted(Path(engramd.env["ENGRAM_DATA_DIR"], "wal").glob("*.wal"))[-1]
        _, hard = resource.prlimit(engramd.process.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(engramd.process.pid, resource.RLIMIT_FSIZE,
                         (segment.stat().st_size + 64, hard))
        try:
            with pytest.raises(DiskFull, match="disk is full") as refused:
                engram.create_unit("d", "MESSAGE", "x" * 500)
            assert refused.value.code == "disk_full" and refused.value.exit_code == 75
            assert isinstance(refused.value, Unavailable), "clients that wait, wait for it"
            error = journal(engram).write_error
            assert error is not None and "disk is full" in error
            assert engram.stats().gauges["journal_failed"] == 1
            assert engram.get_unit(kept.id) == kept
        finally:
            resource.prlimit(engramd.process.pid, resource.RLIMIT_FSIZE, (hard, hard))
        engram.create_unit("d", "MESSAGE", "space is back")
        assert journal(engram).write_error is None, "cleared by the next write that works"


def test_an_enospc_at_a_new_segment_is_disk_full(env: dict[str, str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(env, **{"wal.segment_bytes": "4096"})
    with start_threaded(config), Client(config.socket, autostart=False, env={}) as engram:
        real_open = wal_log.os.open

        def no_space(path: str, flags: int, *args: int) -> int:
            if str(path).endswith(".wal") and flags & os.O_CREAT:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_open(path, flags, *args)

        monkeypatch.setattr(wal_log.os, "open", no_space)
        with pytest.raises(DiskFull, match="new WAL segment"):
            for n in range(40):
                engram.create_unit("seg", "MESSAGE", f"{n} " + "y" * 200)
        monkeypatch.undo()
        engram.create_unit("seg", "MESSAGE", "space is back")
        assert journal(engram).write_error is None


def test_the_indexer_stops_short_of_the_reserve_and_catches_up(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    free = {"bytes": 10 * 1024 * 1024}
    monkeypatch.setattr(indexer, "free_bytes", lambda path: free["bytes"])
    monkeypatch.setattr(indexer, "PAUSED_RETRY_SECONDS", 0.02)
    config = make_config(env, **{"search.reserve_bytes": str(64 * 1024 * 1024)})
    with start_threaded(config), Client(config.socket, autostart=False, env={}) as engram:
        for n in range(5):
            engram.create_unit("idx", "MESSAGE", f"needle number {n}")
        wait_until(lambda: journal(engram).index_paused is not None, "the indexer to pause")
        paused = journal(engram)
        assert "search.reserve_bytes" in (paused.index_paused or "")
        assert paused.indexed_seq < paused.last_seq
        assert engram.search("needle").total == 0
        free["bytes"] = 1024 * 1024 * 1024
        wait_until(lambda: journal(engram).indexed_seq == journal(engram).last_seq,
                   "the indexer to catch up")
        assert journal(engram).index_paused is None
        assert engram.search("needle").total == 5


def test_the_search_index_log_is_cut_back(env: dict[str, str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search_module, "WAL_LIMIT", 16 * 1024)
    # The limit is patched in this process: the indexes stay in it.
    config = make_config(env, **{"search.indexer": "thread"})
    with start_threaded(config), Client(config.socket, autostart=False, env={}) as engram:
        for batch in range(8):
            engram.create_units([draft("wal", "MESSAGE", f"words {batch} {n} " * 200)
                                 for n in range(20)])
            last = journal(engram).last_seq
            wait_until(lambda last=last: journal(engram).indexed_seq == last, "indexing")
        size = Path(config.data_dir, "search.db-wal").stat().st_size
        assert size <= 2 * 16 * 1024 + 256 * 1024, size


# -- a real small file system ---------------------------------------------------------


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of *size* at *where*; skips the test where mounting is not allowed."""
    where.mkdir(mode=0o700)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700",
                              "tmpfs", str(where)], capture_output=True, text=True,
                             check=False) if shutil.which("mount") else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of *disk*; returns the filler (delete it to free them)."""
    filler = disk / "filler"
    stats = os.statvfs(disk)
    with open(filler, "wb", buffering=0) as file:
        with contextlib.suppress(OSError):
            os.posix_fallocate(file.fileno(), 0, stats.f_bavail * stats.f_frsize)
        with contextlib.suppress(OSError):
            while True:
                file.write(b"\0" * 4096)
    assert os.statvfs(disk).f_bavail == 0
    return filler


def test_on_a_full_disk_engramd_starts_read_only_and_says_so(env: dict[str, str],
                                                             scratch: str) -> None:
    with small_disk(Path(scratch, "disk"), "8m") as disk:
        small = {**env, "ENGRAM_DATA_DIR": str(disk / "data"),
                 "ENGRAM_SEARCH_RESERVE_BYTES": str(1024 * 1024)}
        daemon = DaemonProcess(start_engramd(small), small["ENGRAM_SOCKET"], small)
        with connect(daemon.socket) as engram:
            units = [engram.create_unit("ro", "MESSAGE", f"kept {n}") for n in range(5)]
            wait_until(lambda: journal(engram).indexed_seq == journal(engram).last_seq,
                       "indexing")
        assert daemon.stop() == 0
        filler = fill(disk)
        daemon = DaemonProcess(start_engramd(small), small["ENGRAM_SOCKET"], small)
        try:
            with connect(daemon.socket) as engram:
                status = journal(engram)
                assert status.read_only and "read-only" in (status.write_error or "")
                assert engram.list_units("ro").units == units
                assert engram.search("kept").total == 5
                with pytest.raises(DiskFull, match="read-only"):
                    engram.create_unit("ro", "MESSAGE", "refused")
                with pytest.raises(DiskFull):
                    engram.acquire_lock(["res"], wait=0)
                with pytest.raises(DiskFull):
                    engram.ack_cursor("c", 1)
        finally:
            assert daemon.stop() == 0
        filler.unlink()
        daemon = DaemonProcess(start_engramd(small), small["ENGRAM_SOCKET"], small)
        try:
            with connect(daemon.socket) as engram:
                assert not journal(engram).read_only
                engram.create_unit("ro", "MESSAGE", "writable again")
        finally:
            assert daemon.stop() == 0


def test_a_disk_filling_up_refuses_writes_and_pauses_the_indexer_first(
        env: dict[str, str], scratch: str) -> None:
    with small_disk(Path(scratch, "disk"), "32m") as disk:
        small = {**env, "ENGRAM_DATA_DIR": str(disk / "data"),
                 "ENGRAM_SEARCH_RESERVE_BYTES": str(2 * 1024 * 1024)}
        # What is freed later: room for the index of every unit (it keeps their text,
        # and SQLite's log up to 4 MiB), whenever the indexer paused.
        filler = disk / "filler"
        filler.write_bytes(b"\0" * 24 * 1024 * 1024)
        daemon = DaemonProcess(start_engramd(small), small["ENGRAM_SOCKET"], small)
        try:
            with connect(daemon.socket) as engram:
                written = 0
                with pytest.raises(DiskFull):
                    for n in range(10_000):
                        engram.create_unit("full", "MESSAGE", f"unit {n} " + "z" * 8000)
                        written += 1
                status = journal(engram)
                assert status.write_error is not None and "disk is full" in status.write_error
                wait_until(lambda: journal(engram).index_paused is not None,
                           "the indexer to pause short of the reserve")
                assert journal(engram).indexed_seq < journal(engram).last_seq
                assert len(engram.list_units("full", limit=10_000).units) == written
                filler.unlink()
                engram.create_unit("full", "MESSAGE", "space is back")
                assert journal(engram).write_error is None
                wait_until(lambda: journal(engram).indexed_seq == journal(engram).last_seq,
                           "the indexer to catch up once there is room", timeout=30)
                # (a pause said by a look at the disk made before the room was back
                # ends at the indexer's next look)
                wait_until(lambda: journal(engram).index_paused is None,
                           "the indexer's pause to end", timeout=30)
        finally:
            assert daemon.stop() == 0


def test_a_lease_that_expires_on_a_full_disk_is_held_on_and_ended_later(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "LEASE_RETRY_SECONDS", 0.05)
    config = make_config(env)
    with start_threaded(config) as daemon, \
            Client(config.socket, autostart=False, env={}) as engram:
        [lease] = engram.acquire_lock(["res"], ttl=0.2, bind_connection=False)
        refused = []

        def full(fd: int, data: bytes) -> None:
            refused.append(len(data))
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(wal_log, "_write_all", full)
        wait_until(lambda: len(refused) >= 2, "the expiry to be tried again")
        assert daemon.thread.is_alive()
        assert engram.get_lock("res").lease == lease, "held on, as the journal says"
        monkeypatch.setattr(wal_log, "_write_all", real_write_all)
        wait_until(lambda: engram.get_lock("res").lease is None, "the expiry once there is room")
