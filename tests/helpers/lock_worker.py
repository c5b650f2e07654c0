"""A lease user for the kill loop: critical sections on a counter file, across crashes.

Usage: python -m tests.helpers.lock_worker SOCKET NAME COUNTER

Forever: take the lease on ``kill/counter`` (waiting), read the file, pause,
write the value plus one and print ``inc TOKEN``, then release, retrying the
release through daemon restarts until it is done or the lease is gone. The
leases are bound to this process, so that after a reconnect it is still their
holder: a grant whose reply was lost to a crash is found again (``conflict``:
this process already holds it). If two holders ever overlapped, an update would
be lost and the file would end below the number of ``inc`` lines.

SIGTERM stops it between critical sections, never inside one (where it would
have written the file without saying ``inc``).
"""

from __future__ import annotations

import os
import signal
import sys
import time

from engram_cli.client import Client
from engram_cli.client.errors import (
    ClientTimeout,
    Conflict,
    EngramError,
    NotFound,
    Timeout,
    Unavailable,
)

GONE = (Unavailable, Unavailable, ClientTimeout)


def connected(socket_path: str, name: str) -> Client:
    while True:
        client = Client(socket_path, agent_id=name, autostart=False, timeout=5)
        try:
            client.connect()
            return client
        except GONE:
            client.close()
            time.sleep(0.02)


def release(client: Client, socket_path: str, name: str, lock_id: str) -> Client:
    while True:
        try:
            client.release_lock(lock_id)
            return client
        except NotFound:
            return client  # expired while the daemon was away
        except GONE:
            client.close()
            client = connected(socket_path, name)


class Section:
    """Whether a critical section is under way, and whether a stop waits for its end."""

    active = False
    stop_after = False

    @classmethod
    def on_sigterm(cls, signum: int, frame: object) -> None:
        if not cls.active:
            raise SystemExit(0)
        cls.stop_after = True


def main() -> None:
    socket_path, name, path = sys.argv[1], sys.argv[2], sys.argv[3]
    signal.signal(signal.SIGTERM, Section.on_sigterm)
    client = connected(socket_path, name)
    while True:
        try:
            (lease,) = client.acquire_lock("kill/counter", ttl=5, wait=10, pid=os.getpid())
        except Timeout:
            continue
        except Conflict:
            # Granted, but the daemon died before the reply came: the lease is ours.
            held = client.get_lock("kill/counter").lease
            if held is None or held.session != f"pid:{os.getpid()}":
                continue
            lease = held
        except GONE:
            client.close()
            client = connected(socket_path, name)
            continue
        except EngramError as exc:
            print(f"error {exc}", flush=True)
            raise
        Section.active = True
        with open(path) as file:
            value = int(file.read())
        time.sleep(0.002)
        with open(path, "w") as file:
            file.write(str(value + 1))
        print(f"inc {lease.fencing_token}", flush=True)
        Section.active = False
        if Section.stop_after:
            return  # the lease is bound to this process: it ends with it
        client = release(client, socket_path, name, lease.lock_id)


if __name__ == "__main__":
    main()
