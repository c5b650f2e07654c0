"""A mutual-exclusion worker: N critical sections on a shared counter file.

Usage: python -m tests.helpers.counter_worker SOCKET NAME COUNTER N

Each section takes the lease on ``counter``, reads the file, pauses briefly
(the window in which a second holder would lose an update), writes the value
plus one, and releases.
"""

from __future__ import annotations

import sys
import time

from engram_cli.client import Client


def main() -> None:
    socket_path, name, path, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with Client(socket_path, agent_id=name, autostart=False, timeout=60) as client:
        for _ in range(count):
            (lease,) = client.acquire_lock("counter", ttl=30, wait=60)
            with open(path) as file:
                value = int(file.read())
            time.sleep(0.0005)
            with open(path, "w") as file:
                file.write(str(value + 1))
            client.release_lock(lease.lock_id)


if __name__ == "__main__":
    main()
