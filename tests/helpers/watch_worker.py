"""A follower for the kill loop: prints the seq and key of every unit of one context.

Usage: python -m tests.helpers.watch_worker SOCKET CONTEXT

Uses ``Client.watch`` from the start of the log, which reconnects across
daemon restarts and resumes after the last event it saw.
"""

from __future__ import annotations

import sys

from engram_cli.client import Client
from engramd.protocol import UnitCreated


def main() -> None:
    socket_path, context = sys.argv[1], sys.argv[2]
    client = Client(socket_path, agent_id="watcher", autostart=False, timeout=30)
    for item in client.watch(contexts=[context], kinds=["unit.created"], after=0):
        if isinstance(item, UnitCreated):
            print(f"event {item.seq} {item.unit.meta['key']}", flush=True)


if __name__ == "__main__":
    main()
