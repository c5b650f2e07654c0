"""Injected faults: a failing fsync and a full disk never yield a false acknowledgement."""

from __future__ import annotations

import errno
import resource
import shutil
import subprocess
from pathlib import Path

import pytest

from engram_cli.client import Client
from engram_cli.client.errors import Unavailable
from engramd.wal import log as wal_log
from tests.conftest import (
    WAIT,
    DaemonProcess,
    make_config,
    socket_answers,
    spawn_engramd,
    start_threaded,
    wait_until,
)


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
        assert payloads == [b"before the fault"]
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


def traced(pid: int) -> bool:
    """Every thread of *pid* has a tracer."""
    tasks = Path(f"/proc/{pid}/task")
    for task in tasks.iterdir():
        status = (task / "status").read_text()
        if "TracerPid:\t0\n" in status:
            return False
    return True


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_an_eio_from_the_kernel_is_never_acknowledged(engramd: DaemonProcess,
                                                      tmp_path: Path) -> None:
    """The real interpreter, the real syscall: strace makes every fdatasync fail with EIO."""
    with Client(engramd.socket, autostart=False) as engram:
        kept = engram.create_unit("eio", "MESSAGE", "before the fault")
        tracer = subprocess.Popen(
            ["strace", "-f", "-qq", "-p", str(engramd.process.pid), "-e", "trace=fdatasync",
             "-e", "inject=fdatasync:error=EIO", "-o", str(tmp_path / "trace")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: traced(engramd.process.pid) or tracer.poll() is not None,
                       "strace to attach")
            if tracer.poll() is not None:
                pytest.skip(f"strace cannot attach here: {tracer.stderr.read().decode()[:200]}"
                            if tracer.stderr else "strace cannot attach here")
            with pytest.raises(Unavailable, match="journal writes stopped"):
                engram.create_unit("eio", "MESSAGE", "lost in the fault")
        finally:
            tracer.terminate()
            tracer.wait(WAIT)
        assert "EIO (Input/output error) (INJECTED)" in (tmp_path / "trace").read_text()
        with pytest.raises(Unavailable, match="restart engramd"):
            engram.create_unit("eio", "MESSAGE", "refused after the fault")
        assert engram.get_unit(kept.id) == kept
    assert engramd.stop() == 0
    restarted = spawn_engramd(engramd.env)
    try:
        wait_until(lambda: socket_answers(engramd.socket), "engramd to listen again")
        with Client(engramd.socket, autostart=False) as engram:
            engram.wait_ready()
            payloads = [unit.payload for unit in engram.list_units("eio").units]
            assert payloads == [b"before the fault"]
            engram.create_unit("eio", "MESSAGE", "after the restart")
    finally:
        restarted.terminate()
        restarted.communicate(timeout=WAIT)
