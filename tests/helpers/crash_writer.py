"""A writer for the crash tests: writes units forever, printing each acknowledged one.

Usage: python -m tests.helpers.crash_writer SOCKET NAME

Every unit carries an idempotency key ``NAME-i`` and a payload derived from it.
A line ``ack KEY ID`` is printed (and flushed) only after the daemon
acknowledged the write. When the daemon vanishes mid-write the outcome is
uncertain, so the same key is retried after reconnecting: the journal must then
hold it exactly once.
"""

from __future__ import annotations

import sys
import time

from engram_cli.client import Client
from engram_cli.client.errors import ClientTimeout, Unavailable


def payload(key: str) -> bytes:
    return (key * 7).encode()


def main() -> None:
    socket_path, name = sys.argv[1], sys.argv[2]
    index = 0
    client: Client | None = None
    while True:
        key = f"{name}-{index}"
        try:
            if client is None:
                client = Client(socket_path, agent_id=name, autostart=False, timeout=5)
                client.connect()
            unit = client.create_unit(f"crash-{name}", "MESSAGE", payload(key),
                                      meta={"key": key}, idempotency_key=key)
        except (Unavailable, ClientTimeout):
            if client is not None:
                client.close()
            client = None
            time.sleep(0.01)  # the daemon is restarting: retry the same key
            continue
        print(f"ack {key} {unit.id}", flush=True)
        index += 1


if __name__ == "__main__":
    main()
