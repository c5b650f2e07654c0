"""A log segment is removed only once a checkpoint (a flush of the store) covers it: the
store's newest changes are in memory only until then, and the log is their one copy."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from engramd.integrity import log_first_seq
from tests.conftest import WAIT, connect, engramd_log, start_engramd, wait_until

pytestmark = pytest.mark.slow  # every test here runs processes

SMALL_LOG = {"ENGRAM_WAL_SEGMENT_BYTES": "4096", "ENGRAM_WAL_CHECKPOINT_BYTES": "4096"}
"""A checkpoint due every few units, a segment every few units."""
UNFLUSHED = "tests.helpers.unflushed_engramd"


def killed(daemon: subprocess.Popen[bytes]) -> None:
    """``kill -9``: no stop, so no flush: what the memtables held is lost."""
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(WAIT)


def write(socket: str, first: int, count: int) -> None:
    with connect(socket) as engram:
        for number in range(first, first + count):
            engram.create_unit("c", "MESSAGE", f"unit {number}")


def payloads(socket: str) -> list[bytes]:
    with connect(socket) as engram:
        return [unit.payload for unit in engram.list_units("c", limit=1000).units]


def test_segments_stay_while_the_store_cannot_be_flushed_and_go_once_it_is(
        env: dict[str, str], scratch: str) -> None:
    fails = Path(scratch, "flush-fails")
    fails.touch()
    small = {**env, **SMALL_LOG, "FLUSH_FAILS": str(fails)}
    wal = Path(small["ENGRAM_DATA_DIR"], "wal")
    socket = small["ENGRAM_SOCKET"]
    daemon = start_engramd(small, UNFLUSHED)
    write(socket, 0, 100)
    wait_until(lambda: "checkpoint skipped" in engramd_log(small).read_text(),
               "a checkpoint to be due, and to fail")
    assert len(list(wal.glob("*.wal"))) > 3, "the log rolled over to new segments"
    assert log_first_seq(str(wal)) == 1, "no checkpoint: every segment is kept"
    killed(daemon)  # after segments rolled, before any checkpoint covered them

    daemon = start_engramd(small, UNFLUSHED)
    assert payloads(socket) == [b"unit %d" % n for n in range(100)], "replayed from the log"
    fails.unlink()  # flushes work again: the next checkpoint covers the log so far
    write(socket, 100, 100)
    wait_until(lambda: (log_first_seq(str(wal)) or 0) > 1,
               "a checkpoint to remove the segments it covers")
    killed(daemon)

    daemon = start_engramd(small)
    try:
        assert payloads(socket) == [b"unit %d" % n for n in range(200)]
    finally:
        killed(daemon)
