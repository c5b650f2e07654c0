"""Crash tests against the real engramd process: SIGKILL, torn logs, corrupted records."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

from engram_cli.client import Client
from tests.conftest import WAIT, socket_answers, spawn_engramd, wait_until
from tests.helpers.crash_writer import payload

ROOT = Path(__file__).parent.parent


class AckLog:
    """Collects the ``ack`` lines of one writer process as they come."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.acks: dict[str, str] = {}
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            kind, key, unit_id = line.split()
            if kind == "ack":
                self.acks[key] = unit_id

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(WAIT)
        self._thread.join(WAIT)


def start_daemon(env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = spawn_engramd(env)
    wait_until(lambda: socket_answers(env["ENGRAM_SOCKET"]) or process.poll() is not None,
               "engramd to listen")
    assert process.poll() is None, process.communicate()[1].decode()
    return process


def test_acknowledged_units_survive_sigkill(env: dict[str, str]) -> None:
    rng = random.Random(1234)
    daemon = start_daemon(env)
    writers = [AckLog(subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.crash_writer", env["ENGRAM_SOCKET"], f"w{n}"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)) for n in range(3)]
    try:
        for _ in range(4):
            target = sum(len(w.acks) for w in writers) + rng.randint(50, 400)
            wait_until(lambda: sum(len(w.acks) for w in writers) >= target,  # noqa: B023
                       "writers to make progress", timeout=60)
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(WAIT)
            daemon.stdout.close() if daemon.stdout else None  # type: ignore[func-returns-value]
            daemon.stderr.close() if daemon.stderr else None  # type: ignore[func-returns-value]
            daemon = start_daemon(env)
        target = sum(len(w.acks) for w in writers) + 100
        wait_until(lambda: sum(len(w.acks) for w in writers) >= target, "writes after restart",
                   timeout=60)
    finally:
        for writer in writers:
            writer.stop()
    acked = {key: unit_id for writer in writers for key, unit_id in writer.acks.items()}
    with Client(env["ENGRAM_SOCKET"], autostart=False, timeout=30) as engram:
        found = engram.get_units(list(acked.values()))
        assert found.missing == []
        for unit in found.units:
            assert unit.payload == payload(unit.meta["key"]), "intact"
            assert acked[unit.meta["key"]] == unit.id
        for n in range(3):
            keys: list[str] = []
            cursor = 0
            while True:
                page = engram.list_units(f"crash-w{n}", after=cursor, limit=1000)
                keys += [unit.meta["key"] for unit in page.units]
                for unit in page.units:
                    assert unit.payload == payload(unit.meta["key"]), "no half-written unit"
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            assert len(keys) == len(set(keys)), "no key written twice"
            indexes = sorted(int(key.split("-")[1]) for key in keys)
            assert indexes == list(range(len(indexes))), "written in order, no gap"
        engram.shutdown()
    assert daemon.wait(WAIT) == 0


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


