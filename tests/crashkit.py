"""Shared parts of the crash tests: writer processes that log acknowledgements, a daemon
that can be killed, and the check that the journal kept every acknowledged write."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

from engram_cli.client import Client
from tests.conftest import WAIT, socket_answers, spawn_engramd, wait_until
from tests.helpers.crash_writer import payload

ROOT = Path(__file__).parent.parent


class LineLog:
    """Collects the output lines of a helper process as they come, split into words."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[list[str]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.split())

    def of(self, kind: str) -> list[list[str]]:
        return [words[1:] for words in list(self.lines) if words[0] == kind]

    def stop(self, signum: int = signal.SIGKILL) -> None:
        self.process.send_signal(signum)
        self.process.wait(WAIT)
        self._thread.join(WAIT)


class AckLog(LineLog):
    """A crash_writer's ``ack KEY ID`` lines."""

    @property
    def acks(self) -> dict[str, str]:
        return {key: unit_id for key, unit_id in self.of("ack")}


def start_helper(env: dict[str, str], module: str, *args: str) -> LineLog:
    return LineLog(subprocess.Popen([sys.executable, "-m", f"tests.helpers.{module}", *args],
                                    env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True))


def start_daemon(env: dict[str, str],
                 command: list[str] | None = None) -> subprocess.Popen[bytes]:
    """engramd (or *command*, a wrapper around it) listening on the env's socket."""
    if command is None:
        process = spawn_engramd(env)
    else:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(lambda: socket_answers(env["ENGRAM_SOCKET"]) or process.poll() is not None,
               "engramd to listen")
    assert process.poll() is None, process.communicate()[1].decode()
    return process


def start_writers(env: dict[str, str], count: int) -> list[AckLog]:
    return [AckLog(subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.crash_writer", env["ENGRAM_SOCKET"], f"w{n}"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)) for n in range(count)]


def acked_total(writers: list[AckLog]) -> int:
    return sum(len(writer.acks) for writer in writers)


def kill(daemon: subprocess.Popen[bytes]) -> None:
    daemon.kill()
    daemon.wait(WAIT)
    for stream in (daemon.stdout, daemon.stderr):
        if stream:
            stream.close()


def check_journal(engram: Client, acked: dict[str, str], names: list[str]) -> None:
    """Every acknowledged unit is there and intact; nothing is doubled, torn or missing
    in between (each writer's keys are 0..n-1, in order)."""
    found = engram.get_units(list(acked.values()))
    assert found.missing == []
    for unit in found.units:
        assert unit.payload == payload(unit.meta["key"]), "intact"
        assert acked[unit.meta["key"]] == unit.id
    for name in names:
        keys: list[str] = []
        cursor = 0
        while True:
            page = engram.list_units(f"crash-{name}", after=cursor, limit=1000)
            keys += [unit.meta["key"] for unit in page.units]
            for unit in page.units:
                assert unit.payload == payload(unit.meta["key"]), "no half-written unit"
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert len(keys) == len(set(keys)), "no key written twice"
        indexes = sorted(int(key.split("-")[1]) for key in keys)
        assert indexes == list(range(len(indexes))), "written in order, no gap"
