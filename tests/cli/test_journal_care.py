"""The journal's care from the command line, against engramd as a process: a log tail cut
at start-up is told (first command, status, doctor, `daemon cuts`) until acknowledged;
`backup`, `verify` and `restore` while writers go on."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path

import pytest

from engram_cli.client import Client
from tests.conftest import WAIT, run_cli, start_engramd, wait_until

pytestmark = pytest.mark.slow  # engramd processes, killed and restarted


def test_a_cut_log_tail_is_told_until_acknowledged(env: dict[str, str]) -> None:
    assert run_cli(env, "unit", "create", "-c", "c", "-p", "unit 0").returncode == 0
    with Client(env["ENGRAM_SOCKET"], autostart=False) as engram:
        for index in range(1, 5):
            engram.create_unit("c", "MESSAGE", f"unit {index}")
        pid = engram.status().pid
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), "the daemon to go")
    segment = sorted(Path(env["ENGRAM_DATA_DIR"], "wal").glob("*.wal"))[-1]
    data = bytearray(segment.read_bytes())
    data[data.rindex(b"unit 4") + 2] ^= 0x40  # the last record, acknowledged, damaged
    segment.write_bytes(bytes(data))

    first = run_cli(env, "ping")  # starts the daemon: the first client hears of the cut
    assert first.returncode == 0, first.stderr
    assert "warning: the last " in first.stderr
    assert "bytes of the log were cut at start-up (record at offset" in first.stderr
    assert "engram daemon cuts" in first.stderr
    again = run_cli(env, "ping")
    assert again.returncode == 0 and again.stderr == ""
    (cut,) = json.loads(run_cli(env, "--json", "status").stdout)["wal_cuts"]
    doctor = run_cli(env, "doctor")
    assert "log tails" in doctor.stdout and cut["summary"] in doctor.stdout
    listed = run_cli(env, "daemon", "cuts")
    assert cut["id"] in listed.stdout and cut["saved"] in listed.stdout
    cleared = run_cli(env, "--json", "daemon", "cuts", "--acknowledge")
    assert [json.loads(line)["id"] for line in cleared.stdout.splitlines()] == [cut["id"]]
    assert json.loads(run_cli(env, "--json", "status").stdout)["wal_cuts"] == []
    assert "nothing was cut" in run_cli(env, "doctor").stdout
    assert run_cli(env, "daemon", "stop").returncode == 0


def test_backup_verify_and_restore_while_writers_go_on(env: dict[str, str],
                                                       tmp_path: Path) -> None:
    daemon = start_engramd(env)
    try:
        with Client(env["ENGRAM_SOCKET"], autostart=False) as engram:
            engram.wait_ready()
            for index in range(50):
                engram.create_unit("kept", "MESSAGE", f"before {index}")
        stop = threading.Event()

        def write() -> None:
            with Client(env["ENGRAM_SOCKET"], autostart=False, agent_id="writer") as writer:
                index = 0
                while not stop.is_set():
                    writer.create_unit("busy", "MESSAGE", f"during {index}")
                    index += 1

        writers = [threading.Thread(target=write) for _ in range(2)]
        for writer in writers:
            writer.start()
        dest = tmp_path / "backup"
        made = run_cli(env, "--json", "backup", str(dest))
        stop.set()
        for writer in writers:
            writer.join(WAIT)
        assert made.returncode == 0, made.stderr
        info = json.loads(made.stdout)["backup"]
        assert info["path"] == str(dest) and info["units"] >= 50
        checked = run_cli(env, "verify", str(dest))
        assert checked.returncode == 0 and checked.stdout.rstrip().endswith("intact")
        with Client(env["ENGRAM_SOCKET"], autostart=False) as engram:
            kept = engram.list_units("kept", limit=1000).units
            busy = [unit for unit in engram.list_units("busy", limit=10000).units
                    if unit.seq <= info["seq"]]
        again = run_cli(env, "backup", str(dest))
        assert again.returncode == 4 and "exists" in again.stderr  # never over a backup
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(WAIT)

    # A changed file is found and named; the restore refuses it.
    damaged = tmp_path / "damaged"
    shutil.copytree(dest, damaged)
    victim = max((p for p in damaged.rglob("*") if p.is_file() and p.name != "backup.json"),
                 key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    daemon = start_engramd(env)
    try:
        with Client(env["ENGRAM_SOCKET"], autostart=False) as engram:
            engram.wait_ready()
        refused = run_cli(env, "verify", str(damaged))
        assert refused.returncode == 74 and "damaged:" in refused.stdout
        busy_restore = run_cli(env, "restore", str(dest))
        assert busy_restore.returncode == 4 and "daemon stop" in busy_restore.stderr
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(WAIT)

    # The restore: the journal as it was at the backup's seq, unit by unit.
    os.rename(env["ENGRAM_DATA_DIR"], env["ENGRAM_DATA_DIR"] + ".old")
    assert run_cli(env, "restore", str(damaged)).returncode == 74
    assert not Path(env["ENGRAM_DATA_DIR"]).exists()  # nothing restored from a bad copy
    restored = run_cli(env, "restore", str(dest))
    assert restored.returncode == 0, restored.stderr
    with Client(env["ENGRAM_SOCKET"], autostart=True, env=env) as engram:
        assert engram.list_units("kept", limit=1000).units == kept
        assert engram.list_units("busy", limit=10000).units == busy
        engram.shutdown()
