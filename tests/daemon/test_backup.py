"""Online backup against real daemons: made while writers write, checked, restored by
starting engramd on the copy, and compared unit by unit (engramd.backup)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from engram_cli.client import Client
from engram_cli.client.errors import BadRequest, Conflict, Forbidden
from engramd.protocol import BackupChecked, BackupMade, MakeBackup, Unit, VerifyBackup
from tests.conftest import WAIT, DaemonProcess, connect, start_engramd, wait_until

WRITERS = 4


def all_units(client: Client, contexts: list[str]) -> dict[str, Unit]:
    units: dict[str, Unit] = {}
    for context_id in contexts:
        cursor = 0
        while True:
            page = client.list_units(context_id, after=cursor, limit=1000)
            units.update((unit.id, unit) for unit in page.units)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    return units


def backup(socket: str, path: str) -> BackupMade:
    with connect(socket, admin=True) as admin:
        return admin.call(MakeBackup(path=path))


def verify(socket: str, path: str) -> BackupChecked:
    with connect(socket, admin=True) as admin:
        return admin.call(VerifyBackup(path=path))


class Writers:
    """Clients that each write units in a loop until stopped, each on its own connection."""

    def __init__(self, socket: str, count: int) -> None:
        self.socket = socket
        self.written = [0] * count
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._write, args=(index,), daemon=True)
                        for index in range(count)]

    def _write(self, index: int) -> None:
        try:
            with connect(self.socket, f"writer-{index}") as client:
                while not self.stop.is_set():
                    client.create_unit(f"ctx-{index % 2}", "MESSAGE",
                                       f"writer {index} unit {self.written[index]}",
                                       meta={"writer": str(index),
                                             "n": str(self.written[index])})
                    self.written[index] += 1
        except BaseException as exc:
            self.errors.append(exc)

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(WAIT)
        assert not self.errors, self.errors

    @property
    def total(self) -> int:
        return sum(self.written)


def restored(env: dict[str, str], data_dir: str, scratch: str) -> DaemonProcess:
    """engramd started on a backup: its data dir is the copy, its socket one of its own."""
    copy_env = {**env, "ENGRAM_DATA_DIR": data_dir,
                "ENGRAM_SOCKET": os.path.join(scratch, "restored", "engramd.sock")}
    return DaemonProcess(start_engramd(copy_env), copy_env["ENGRAM_SOCKET"], copy_env)


def test_a_backup_made_while_writers_write_restores_unit_by_unit(
        engramd: DaemonProcess, scratch: str) -> None:
    socket = engramd.socket
    dest = os.path.join(scratch, "backup-1")
    with connect(socket, "alice") as alice:
        lease = alice.acquire_lock(["repo/README.md"], ttl=3600)[0]
        task = alice.add_task("ship the backup", context_id="tasks")
        claimed = alice.claim_task(task.id, pid=os.getpid())
        alice.send_message("bob", "read me", ack_required=True, new_recipients=True)
        alice.ack_cursor("auditor", 3)
    with connect(socket, "bob") as bob:
        assert len(bob.inbox().messages) == 1  # bob's read mark moves
    with Writers(socket, WRITERS) as writers:
        wait_until(lambda: all(writers.written) and writers.total > 300,
                   "every writer to have written")
        before = writers.total
        made = backup(socket, dest)
        during = writers.total - before
        wait_until(lambda: writers.total > before + during + 20, "writes after the backup")
    info = made.backup
    # The writers went on during the backup; they waited for one journal job at most.
    assert made.paused_seconds < 1.0, made
    contexts = ["ctx-0", "ctx-1", "tasks", "messages"]
    with connect(socket, "alice") as alice:
        original = all_units(alice, contexts)
        original_locks = alice.list_locks()
        original_tasks = alice.list_tasks()
    kept = {unit_id: unit for unit_id, unit in original.items() if unit.seq <= info.seq}
    assert len(kept) == info.units
    assert len(original) > len(kept)  # written after the backup: not in it
    checked = verify(socket, dest)
    assert checked.ok, checked.problems
    assert checked.backup == info

    copy = restored(engramd.env, dest, scratch)
    try:
        with connect(copy.socket, "alice") as client:
            status = client.status()
            assert status.journal is not None and status.journal.last_seq == info.seq
            assert all_units(client, contexts) == kept  # unit by unit, every field
            assert client.list_locks() == [state for state in original_locks
                                           if state.lease is not None
                                           and state.lease.fencing_token <= info.seq]
            assert lease.lock_id in {state.lease.lock_id for state in client.list_locks()
                                     if state.lease is not None}
            assert client.list_tasks() == original_tasks
            assert client.get_task(task.id).claim == claimed.claim
            subscription = client.subscribe(cursor="auditor", after=None)
            assert subscription.cursor == 3  # a named cursor is in the copy
            subscription.close()
            assert client.unread().pending_acks == 0
            written = client.create_unit("ctx-0", "MESSAGE", "the copy is a journal")
            assert written.seq > info.seq  # (alice joins ctx-0 first: seq info.seq + 1)
        with connect(copy.socket, "bob") as bob:
            assert bob.inbox().messages == []  # bob had read it before the backup
    finally:
        assert copy.stop() == 0
    assert not Path(engramd.env["ENGRAM_DATA_DIR"], "backup.staging").exists()
    assert sorted(os.listdir(scratch)).count("backup-1") == 1
    assert not [name for name in os.listdir(scratch) if ".partial-" in name]


def test_backup_requests_that_cannot_be_served_are_refused_and_the_daemon_goes_on(
        engramd: DaemonProcess, scratch: str) -> None:
    socket = engramd.socket
    data_dir = engramd.env["ENGRAM_DATA_DIR"]
    with pytest.raises(BadRequest, match="absolute"):
        backup(socket, "relative/backup")
    with pytest.raises(Conflict, match="exists"):
        backup(socket, scratch)
    with pytest.raises(BadRequest, match="not a directory"):
        backup(socket, os.path.join(scratch, "no", "such", "dir"))
    with pytest.raises(BadRequest, match="inside the data dir"):
        backup(socket, os.path.join(data_dir, "backup"))
    with connect(socket, "mallory") as agent:
        with pytest.raises(Forbidden, match="admin token"):
            agent.call(MakeBackup(path=os.path.join(scratch, "stolen")))
        with pytest.raises(Forbidden):
            agent.call(VerifyBackup(path=os.path.join(scratch, "stolen")))
    assert not os.path.exists(os.path.join(scratch, "stolen"))
    missing = verify(socket, os.path.join(scratch, "nothing-here"))
    assert not missing.ok and "backup.json" in missing.problems[0]
    with connect(socket) as client:
        client.create_unit("c", "MESSAGE", "still serving")


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_verify_names_what_changed_in_a_backup(engramd: DaemonProcess, scratch: str) -> None:
    socket = engramd.socket
    with connect(socket) as client:
        for index in range(30):
            client.create_unit("c", "MESSAGE", f"unit {index}")
    dest = Path(scratch, "backup")
    info = backup(socket, str(dest)).backup
    assert verify(socket, str(dest)).ok
    segment = sorted((dest / "wal").glob("*.wal"))[-1]
    flip(segment, segment.stat().st_size // 2)
    checked = verify(socket, str(dest))
    assert not checked.ok and checked.backup == info
    assert any(problem.startswith(f"wal/{segment.name}: its content changed")
               for problem in checked.problems), checked.problems
    assert any(problem.startswith("log damaged") for problem in checked.problems)
    flip(segment, segment.stat().st_size // 2)
    (table,) = (dest / "store").glob("*.sst")
    flip(table, table.stat().st_size // 3)
    checked = verify(socket, str(dest))
    assert any(problem.startswith(f"store/{table.name}") for problem in checked.problems)


def test_the_daemon_can_check_a_backup_without_running(engramd: DaemonProcess,
                                                      scratch: str) -> None:
    import subprocess
    import sys

    with connect(engramd.socket) as client:
        client.create_unit("c", "MESSAGE", "one")
    dest = os.path.join(scratch, "offline")
    backup(engramd.socket, dest)
    checked = subprocess.run([sys.executable, "-m", "engramd", "--verify-backup", dest],
                             capture_output=True, text=True, timeout=WAIT, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.splitlines()[-1] == "intact"
    os.unlink(os.path.join(dest, "backup.json"))
    checked = subprocess.run([sys.executable, "-m", "engramd", "--verify-backup", dest],
                             capture_output=True, text=True, timeout=WAIT, check=False)
    assert checked.returncode == 3 and "no readable backup.json" in checked.stdout
