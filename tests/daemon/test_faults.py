"""Injected faults: a failing fsync and a full disk never yield a false acknowledgement."""

from __future__ import annotations

import errno
import resource
from pathlib import Path

import pytest

from engram_cli.client import Client
from engram_cli.errors import Unavailable
from engramd.wal import log as wal_log
from tests.conftest import DaemonProcess, make_config, start_threaded


def test_failed_fsync_stops_writes_but_not_reads(env: dict[str, str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(env)
    with start_threaded(config), Client(config.socket, autostart=False) as engram:
        kept = engram.create_unit("f", "MESSAGE", "before the fault")

        def failing_fdatasync(fd: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(wal_log.os, "fdatasync", failing_fdatasync)
        with pytest.raises(Unavailable, match="journal writes stopped"):
            engram.create_unit("f", "MESSAGE", "lost in the fault")
        monkeypatch.undo()
        with pytest.raises(Unavailable, match="restart engramd"):
            engram.create_unit("f", "MESSAGE", "refused after the fault")
        assert engram.get_unit(kept.id) == kept
        journal = engram.status().journal
        assert journal is not None and journal.write_error is not None
    with start_threaded(config), Client(config.socket, autostart=False) as engram:
        assert engram.get_unit(kept.id) == kept
        payloads = [unit.payload for unit in engram.list_units("f").units]
        assert b"refused after the fault" not in payloads
        engram.create_unit("f", "MESSAGE", "after the restart")


def test_full_disk_refuses_writes_keeps_reads_and_recovers(engramd: DaemonProcess) -> None:
    with Client(engramd.socket, autostart=False) as engram:
        kept = engram.create_unit("d", "MESSAGE", "fits")
        segment = sorted(Path(engramd.env["ENGRAM_DATA_DIR"], "wal").glob("*.wal"))[-1]
        limit = segment.stat().st_size + 64  # no room for another record
        _, hard = resource.prlimit(engramd.process.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(engramd.process.pid, resource.RLIMIT_FSIZE, (limit, hard))
        try:
            with pytest.raises(Unavailable, match="write refused"):
                engram.create_unit("d", "MESSAGE", "x" * 500)
            assert segment.stat().st_size <= limit, "the failed write was cut back off"
            assert engram.get_unit(kept.id) == kept
        finally:
            resource.prlimit(engramd.process.pid, resource.RLIMIT_FSIZE, (hard, hard))
        resumed = engram.create_unit("d", "MESSAGE", "space is back")
        assert [u.id for u in engram.list_units("d").units] == [kept.id, resumed.id]
