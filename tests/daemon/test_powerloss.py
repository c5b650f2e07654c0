"""Simulated power loss (tests/helpers/powerloss.py): the daemon is SIGKILLed and its log
then loses or garbles what was never fsynced. Every acknowledged write survives; no
unacknowledged one is half there."""

from __future__ import annotations

import os
import random
import sys

import pytest

from engram_cli.client import Client
from tests.conftest import WAIT, wait_until
from tests.crashkit import acked_total, check_journal, kill, start_daemon, start_writers
from tests.helpers.powerloss import lose_power

pytestmark = pytest.mark.slow  # every test here runs processes

POWER_CUTS = 6


def test_acknowledged_writes_survive_power_loss(env: dict[str, str]) -> None:
    rng = random.Random(int(os.environ.get("ENGRAM_TEST_SEED", "20261123")))
    ledger = os.path.join(env["ENGRAM_DATA_DIR"] + "-ledger")
    command = [sys.executable, "-m", "tests.helpers.powerloss", ledger]
    wal_dir = os.path.join(env["ENGRAM_DATA_DIR"], "wal")
    daemon = start_daemon(env, command)
    writers = start_writers(env, 3)
    damage = {"bytes_dropped": 0, "bytes_garbled": 0, "segments_dropped": 0}
    try:
        for _ in range(POWER_CUTS):
            target = acked_total(writers) + rng.randint(20, 200)
            wait_until(lambda: acked_total(writers) >= target,  # noqa: B023
                       "writers to make progress", timeout=60)
            kill(daemon)
            for key, value in lose_power(ledger, wal_dir, rng).items():
                damage[key] += value
            daemon = start_daemon(env, command)
        target = acked_total(writers) + 50
        wait_until(lambda: acked_total(writers) >= target, "writes after the last cut",
                   timeout=60)
    finally:
        for writer in writers:
            writer.stop()
    print(f"power loss damage over {POWER_CUTS} cuts: {damage}", file=sys.stderr)
    acked = {key: unit_id for writer in writers for key, unit_id in writer.acks.items()}
    with Client(env["ENGRAM_SOCKET"], autostart=False, timeout=30) as engram:
        check_journal(engram, acked, [f"w{n}" for n in range(3)])
        engram.shutdown()
    assert daemon.wait(WAIT) == 0
