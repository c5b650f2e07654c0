"""The kill loop: engramd SIGKILLed again and again under writers, lease users and
watchers. After every restart the leases are consistent; at the end nothing
acknowledged is lost, no critical section overlapped another, and the watcher saw
every unit exactly once, in order."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engram_cli.client import Client
from tests.conftest import WAIT, wait_until
from tests.crashkit import (
    AckLog,
    LineLog,
    acked_total,
    check_journal,
    kill,
    start_daemon,
    start_helper,
    start_writers,
)

pytestmark = pytest.mark.slow  # every test here runs processes

KILLS = 20


@contextlib.contextmanager
def stopping(helper: LineLog) -> Iterator[None]:
    try:
        yield
    finally:
        helper.stop()


def check_leases(socket_path: str, lock_workers: set[str]) -> None:
    """Right after a restart: at most one lease per resource, held by a lease user."""
    with Client(socket_path, autostart=False, timeout=30) as engram:
        engram.wait_ready()
        states = engram.list_locks()
        assert len({state.resource for state in states}) == len(states)
        for state in states:
            assert state.lease is None or state.lease.holder in lock_workers


def test_twenty_sigkills_lose_nothing(env: dict[str, str], tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("ENGRAM_TEST_SEED", "8")))
    counter = tmp_path / "counter"
    counter.write_text("0")
    socket_path = env["ENGRAM_SOCKET"]
    daemon = start_daemon(env)
    writers: list[AckLog] = start_writers(env, 2)
    lockers = [start_helper({**env, "ENGRAM_AGENT": f"l{n}"}, "lock_worker", socket_path,
                            f"l{n}", str(counter)) for n in range(2)]
    watcher = start_helper(env, "watch_worker", socket_path, "crash-w0")
    with stopping(watcher):
        run_kill_loop(env, rng, daemon, writers, lockers, watcher, counter)


def run_kill_loop(env: dict[str, str], rng: random.Random, daemon: subprocess.Popen[bytes],
                  writers: list[AckLog], lockers: list[LineLog], watcher: LineLog,
                  counter: Path) -> None:
    socket_path = env["ENGRAM_SOCKET"]

    def sections() -> int:
        return sum(len(locker.of("inc")) for locker in lockers)

    try:
        for _ in range(KILLS):
            writes, entered = acked_total(writers) + rng.randint(20, 120), sections() + 1
            wait_until(lambda: acked_total(writers) >= writes  # noqa: B023
                       and sections() >= entered, "progress before the kill", timeout=60)  # noqa: B023
            kill(daemon)
            daemon = start_daemon(env)
            check_leases(socket_path, {"l0", "l1"})
        final = acked_total(writers) + 50
        wait_until(lambda: acked_total(writers) >= final, "writes after the last kill",
                   timeout=60)
    finally:
        for writer in writers:
            writer.stop()
        for locker in lockers:
            locker.stop(signal.SIGTERM)  # between critical sections, not inside one
    assert not any(locker.of("error") for locker in lockers)
    acked = {key: unit_id for writer in writers for key, unit_id in writer.acks.items()}
    with Client(socket_path, autostart=False, timeout=30) as engram:
        check_journal(engram, acked, ["w0", "w1"])
        stored = []
        cursor = 0
        while True:
            page = engram.list_units("crash-w0", after=cursor, limit=1000)
            stored += [(unit.seq, unit.meta["key"]) for unit in page.units]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        wait_until(lambda: len(watcher.of("event")) >= len(stored), "the watcher to catch up",
                   timeout=60)
        watcher.stop()
        seen = [(int(seq), key) for seq, key in watcher.of("event")]
        assert seen == stored, "every unit exactly once, in order, across the restarts"
        engram.shutdown()
    assert int(counter.read_text()) == sum(len(locker.of("inc")) for locker in lockers), \
        "no two lease holders at once"
    tokens = [int(token) for locker in lockers for (token,) in locker.of("inc")]
    assert len(set(tokens)) == len(tokens), "fencing tokens never reused"
    print(f"kill loop: {KILLS} kills, {len(acked)} acknowledged writes, "
          f"{len(tokens)} critical sections, {len(seen)} events followed", file=sys.stderr)
    assert daemon.wait(WAIT) == 0
