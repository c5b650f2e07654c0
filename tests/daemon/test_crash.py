"""Damaged logs against the real engramd process (SIGKILL loops: test_kill_loop.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engram_cli.client import Client
from tests.conftest import WAIT, spawn_engramd
from tests.crashkit import start_daemon

pytestmark = pytest.mark.slow  # every test here runs processes

ROOT = Path(__file__).parent.parent.parent


def corrupt_middle_record(data_dir: str) -> Path:
    segment = sorted(Path(data_dir, "wal").glob("*.wal"))[-1]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    return segment


def write_units(env: dict[str, str], count: int) -> None:
    daemon = start_daemon(env)
    with Client(env["ENGRAM_SOCKET"], autostart=False) as engram:
        engram.wait_ready()
        for index in range(count):
            engram.create_unit("c", "MESSAGE", f"unit {index}")
    daemon.send_signal(signal.SIGKILL)  # no clean stop: the store must replay the log
    daemon.wait(WAIT)
    daemon.communicate()


def test_a_corrupted_record_stops_the_start_with_file_and_offset(env: dict[str, str]) -> None:
    write_units(env, 40)
    segment = corrupt_middle_record(env["ENGRAM_DATA_DIR"])
    process = spawn_engramd(env)
    _, err = process.communicate(timeout=WAIT)
    assert process.returncode == 1
    message = err.decode()
    assert f"WAL damaged in {segment} at offset" in message
    assert "engramd --repair" in message


def test_repair_cuts_the_log_and_the_daemon_starts(env: dict[str, str]) -> None:
    write_units(env, 40)
    corrupt_middle_record(env["ENGRAM_DATA_DIR"])
    refused = subprocess.run([sys.executable, "-m", "engramd", "--repair"], env=env,
                             capture_output=True, text=True, timeout=WAIT, check=False,
                             stdin=subprocess.DEVNULL)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    repaired = subprocess.run([sys.executable, "-m", "engramd", "--repair", "--yes"], env=env,
                              capture_output=True, text=True, timeout=WAIT, check=False)
    assert repaired.returncode == 0, repaired.stderr
    assert "Cutting the log there loses" in repaired.stdout
    daemon = start_daemon(env)
    try:
        with Client(env["ENGRAM_SOCKET"], autostart=False) as engram:
            engram.wait_ready()
            units = engram.list_units("c").units
            assert 0 < len(units) < 40
            assert [u.payload for u in units] == [f"unit {i}".encode() for i in range(len(units))]
            engram.create_unit("c", "MESSAGE", "writes go on")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(WAIT) == 0
        daemon.communicate()
    intact = subprocess.run([sys.executable, "-m", "engramd", "--repair"], env=env,
                            capture_output=True, text=True, timeout=WAIT, check=False)
    assert intact.returncode == 0 and "intact" in intact.stdout


