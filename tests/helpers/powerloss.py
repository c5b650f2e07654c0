"""A simulated power loss for the WAL: what was never fsynced may vanish or be garbled.

The daemon side (``python -m tests.helpers.powerloss LEDGER [engramd args]``)
runs engramd with the WAL module's ``os`` wrapped: after every fsync or
fdatasync returns, a line ``sync PATH SIZE`` (a directory: ``dirsync PATH``)
goes to the ledger, and every file the WAL creates is noted as ``create PATH``.
The ledger line is written before the WAL call returns, so anything the daemon
acknowledged is covered by it.

The test side (:func:`lose_power`), after SIGKILLing that daemon, keeps for
every segment the bytes up to its last synced size and a random part of what
followed (possibly garbled), and drops a segment created after its
directory's last fsync at random: what a disk without power would have kept.
"""

from __future__ import annotations

import os
import random
import sys
import time
from types import ModuleType
from typing import Any

from engramd.wal.log import SUFFIX

SYNC_DELAY = 0.002


class RecordingOS:
    """The ``os`` module, except that syncs and creations are written to a ledger."""

    def __init__(self, real: ModuleType, ledger: str) -> None:
        self._real = real
        self._ledger = real.open(ledger, real.O_WRONLY | real.O_CREAT | real.O_APPEND, 0o600)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def _note(self, line: str) -> None:
        self._real.write(self._ledger, (line + "\n").encode())

    def _path(self, fd: int) -> str:
        return self._real.readlink(f"/proc/self/fd/{fd}")

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        fd = self._real.open(path, flags, mode)
        if flags & self._real.O_CREAT and flags & self._real.O_EXCL:
            self._note(f"create {self._path(fd)}")
        return fd

    def _synced(self, fd: int) -> None:
        path = self._path(fd)
        if self._real.path.isdir(path):
            self._note(f"dirsync {path}")
        else:
            self._note(f"sync {path} {self._real.fstat(fd).st_size}")

    def fsync(self, fd: int) -> None:
        self._real.fsync(fd)
        self._synced(fd)

    def fdatasync(self, fd: int) -> None:
        # A slower "disk": more of the kills land between a write and its sync.
        time.sleep(SYNC_DELAY)
        self._real.fdatasync(fd)
        self._synced(fd)


def lose_power(ledger: str, wal_dir: str, rng: random.Random) -> dict[str, int]:
    """Damage *wal_dir* as a power loss could have; returns what was done, for the report."""
    synced: dict[str, int] = {}
    undurable_names: set[str] = set()
    with open(ledger) as file:
        for line in file:
            kind, path, *rest = line.split()
            if kind == "sync":
                synced[path] = int(rest[0])
            elif kind == "create":
                undurable_names.add(path)
            elif kind == "dirsync":
                undurable_names = {p for p in undurable_names if os.path.dirname(p) != path}
    done = {"bytes_dropped": 0, "bytes_garbled": 0, "segments_dropped": 0}
    for name in sorted(os.listdir(wal_dir)):
        path = os.path.join(wal_dir, name)
        if not name.endswith(SUFFIX):
            continue
        if path in undurable_names and rng.random() < 0.5:
            os.unlink(path)
            done["segments_dropped"] += 1
            continue
        size = os.path.getsize(path)
        durable = synced.get(path, size)
        if size <= durable:
            continue
        keep = rng.randint(durable, size)
        with open(path, "rb") as file:
            data = bytearray(file.read(keep))
        if keep > durable and rng.random() < 0.5:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(durable, keep)] ^= 1 << rng.randrange(8)
                done["bytes_garbled"] += 1
        with open(path, "wb") as file:
            file.write(data)
        done["bytes_dropped"] += size - keep
    return done


def main() -> int:
    from engramd.main import main as engramd_main
    from engramd.wal import log as wal_log

    wal_log.os = RecordingOS(os, sys.argv[1])  # type: ignore[assignment]
    return engramd_main(sys.argv[2:])


if __name__ == "__main__":
    raise SystemExit(main())
