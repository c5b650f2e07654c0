"""``engramd --rebuild-store``: the store rebuilt from the log, nothing lost unsaid."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from engramd.integrity import log_first_seq
from engramd.protocol import Verify, VerifyReport
from tests.conftest import WAIT, DaemonProcess, connect, start_engramd
from tests.daemon.test_integrity import UNITS, flip_data_byte, start_fails, write_units

SMALL_LOG = {"ENGRAM_WAL_SEGMENT_BYTES": "4096", "ENGRAM_WAL_CHECKPOINT_BYTES": "4096"}
"""A log whose segments are checkpointed away every few units."""


def rebuild(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engramd", "--rebuild-store", *args],
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=WAIT * 3, check=False)


def started(env: dict[str, str]) -> DaemonProcess:
    return DaemonProcess(start_engramd(env), env["ENGRAM_SOCKET"], env)


def verified(socket: str) -> VerifyReport:
    with connect(socket, admin=True) as engram:
        report = engram.call(Verify())
    assert isinstance(report, VerifyReport)
    return report


def test_a_damaged_store_is_rebuilt_whole_from_the_log(engramd: DaemonProcess) -> None:
    units = write_units(engramd)
    with connect(engramd.socket) as engram:
        engram.ack_cursor("reader", 7)
    assert engramd.stop() == 0
    data_dir = Path(engramd.env["ENGRAM_DATA_DIR"])
    flip_data_byte(data_dir)
    done = rebuild(engramd.env)
    assert done.returncode == 0, done.stderr
    assert "kept at" in done.stdout and "1 cursor(s) and mark(s) kept" in done.stdout
    [aside] = data_dir.glob("store.damaged-*")
    assert list(aside.glob("*.sst")), "the damaged store is kept, not deleted"
    daemon = started(engramd.env)
    try:
        with connect(daemon.socket) as engram:
            assert engram.list_units("ctx", limit=1000).units == units
            first = next(iter(engram.subscribe(cursor="reader", after=0)))
            assert first.seq == 8, "the named cursor was kept"
        report = verified(daemon.socket)
        assert report.ok and report.units == UNITS
    finally:
        assert daemon.stop() == 0


def test_entries_the_log_no_longer_holds_come_from_the_old_store(env: dict[str, str]) -> None:
    small = {**env, **SMALL_LOG}
    daemon = started(small)
    units = write_units(daemon)
    assert daemon.stop() == 0
    first = log_first_seq(small["ENGRAM_DATA_DIR"] + "/wal")
    assert first is not None and first > 1, "checkpoints deleted the log's first segments"
    done = rebuild(small)
    assert done.returncode == 0, done.stderr
    assert f"seqs 1-{first - 1}" in done.stdout
    daemon = started(small)
    try:
        with connect(daemon.socket) as engram:
            assert engram.list_units("ctx", limit=1000).units == units
        assert verified(daemon.socket).ok
    finally:
        assert daemon.stop() == 0


def test_a_rebuild_that_would_lose_entries_says_which_and_needs_yes(env: dict[str, str]) -> None:
    small = {**env, **SMALL_LOG}
    daemon = started(small)
    units = write_units(daemon)
    assert daemon.stop() == 0
    first = log_first_seq(small["ENGRAM_DATA_DIR"] + "/wal")
    assert first is not None and first > 1
    store = Path(small["ENGRAM_DATA_DIR"], "store")
    shutil.rmtree(store)
    said = start_fails(small)
    [line] = [line for line in said.splitlines() if "level=error" in line]
    assert "the store is empty but the log begins later" in line
    assert "engramd --rebuild-store" in line
    refused = rebuild(small)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert f"seqs 1-{first - 1} are in neither the log" in refused.stdout
    assert not store.exists(), "nothing changed"
    done = rebuild(small, "--yes")
    assert done.returncode == 0, done.stderr
    daemon = started(small)
    try:
        with connect(daemon.socket) as engram:
            kept = [unit for unit in units if unit.seq >= first]
            assert engram.get_units([unit.id for unit in units]).units == kept
        report = verified(daemon.socket)
        assert not report.ok and not report.rebuild_complete
        assert report.unrecoverable == [[1, first - 1]]
    finally:
        assert daemon.stop() == 0


def test_a_rebuild_under_a_running_daemon_is_refused(engramd: DaemonProcess) -> None:
    write_units(engramd, 2)
    refused = rebuild(engramd.env)
    assert refused.returncode == 1 and "stop the daemon first" in refused.stderr
    with connect(engramd.socket) as engram:
        assert len(engram.list_units("ctx").units) == 2
