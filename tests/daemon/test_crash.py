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


def test_a_corrupted_record_stops_the_start_with_one_line_and_status_3(
        env: dict[str, str]) -> None:
    write_units(env, 40)
    segment = corrupt_middle_record(env["ENGRAM_DATA_DIR"])
    process = spawn_engramd(env)
    _, err = process.communicate(timeout=WAIT)
    assert process.returncode == 3  # the journal is damaged (SPECS §3.5)
    said = [line for line in err.decode().splitlines() if "WAL damaged" in line]
    assert len(said) == 1, err.decode()
    assert f"WAL damaged in {segment} at offset" in said[0]
    assert "engramd --repair" in said[0]
    assert "Traceback" not in err.decode()
    # With a log file (how engram starts it), stderr holds that one line and nothing else.
    log = Path(env["ENGRAM_DATA_DIR"], "engramd.log")
    process = spawn_engramd(env, "--log-file", str(log))
    _, err = process.communicate(timeout=WAIT)
    assert process.returncode == 3
    (line,) = err.decode().splitlines()
    assert line.startswith(f"engramd: error: WAL damaged in {segment} at offset")
    assert "engramd --repair" in line


def test_repair_keeps_every_intact_record_and_the_daemon_starts(env: dict[str, str]) -> None:
    write_units(env, 40)
    corrupt_middle_record(env["ENGRAM_DATA_DIR"])
    refused = subprocess.run([sys.executable, "-m", "engramd", "--repair"], env=env,
                             capture_output=True, text=True, timeout=WAIT, check=False,
                             stdin=subprocess.DEVNULL)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    repaired = subprocess.run([sys.executable, "-m", "engramd", "--repair", "--yes"], env=env,
                              capture_output=True, text=True, timeout=WAIT, check=False)
    assert repaired.returncode == 0, repaired.stderr
    lost = [line for line in repaired.stdout.splitlines() if line.endswith(" lost")]
    assert len(lost) == 1, repaired.stdout  # one damaged record: its seq, nothing else
    (aside,) = Path(env["ENGRAM_DATA_DIR"], "wal").glob("damaged-*.bin")
    assert f"set aside: {aside}" in repaired.stdout
    daemon = start_daemon(env)
    try:
        with Client(env["ENGRAM_SOCKET"], autostart=False) as engram:
            engram.wait_ready()
            units = engram.list_units("c").units
            payloads = [unit.payload.decode() for unit in units]
            assert len(units) == 39  # all but the damaged one, those after it included
            (gone,) = {f"unit {i}" for i in range(40)} - set(payloads)
            assert payloads == [f"unit {i}" for i in range(40) if f"unit {i}" != gone]
            engram.create_unit("c", "MESSAGE", "writes go on")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(WAIT) == 0
        daemon.communicate()
    intact = subprocess.run([sys.executable, "-m", "engramd", "--repair"], env=env,
                            capture_output=True, text=True, timeout=WAIT, check=False)
    assert intact.returncode == 0 and "intact" in intact.stdout




def test_a_damaged_log_met_through_autostart_is_told_as_the_daemon_told_it(
        env: dict[str, str]) -> None:
    write_units(env, 40)
    corrupt_middle_record(env["ENGRAM_DATA_DIR"])
    for args in (["ping"], ["unit", "list", "-c", "c"], ["daemon", "start"]):
        result = subprocess.run([sys.executable, "-m", "engram_cli", *args], env=env,
                                capture_output=True, text=True, timeout=WAIT * 3,
                                check=False)
        assert result.returncode == 69, (args, result)
        (line,) = result.stderr.splitlines()
        assert "Broken pipe" not in line and "engramd stopped while starting" in line, line
        assert "WAL damaged in" in line and "engramd --repair" in line, line
