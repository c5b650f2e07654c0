"""``make cluster-demo``: two engram "machines" on one NATS JetStream cluster, on loopback.

Starts three nats-server nodes (a real JetStream cluster, :mod:`engram_cli.natslab`)
and two engramd, each with its own socket and data dir and ``cluster.servers``
pointing at the three nodes: two machines as far as engram can tell. A live
``engram watch`` runs on machine B while units are written on machine A (and one
on B); then ``engram cluster status`` shows the stream, its replicas and both
machines' views. Every command is printed before it runs.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

from engram_cli.demo import Demo, watch_in_background
from engram_cli.natslab import NatsCluster


def machine_env(home: str, servers: str) -> dict[str, str]:
    os.makedirs(home, mode=0o700)
    cleaned = {k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_")}
    return {**cleaned, "ENGRAM_SOCKET": os.path.join(home, "engramd.sock"),
            "ENGRAM_DATA_DIR": os.path.join(home, "data"), "ENGRAM_AGENT": "alice",
            "ENGRAM_CLUSTER_SERVERS": servers, "ENGRAM_SEARCH_SEMANTIC": "off",
            "XDG_CONFIG_HOME": os.path.join(home, "config")}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="engram-cluster-") as scratch:
        print("Three NATS JetStream nodes on loopback (sync_interval: always) ...",
              flush=True)
        with NatsCluster(os.path.join(scratch, "nats")) as cluster:
            for node in cluster.nodes:
                print(f"  {node.name}: {node.url}")
            a = Demo(machine_env(os.path.join(scratch, "a"), cluster.servers))
            b = Demo(machine_env(os.path.join(scratch, "b"), cluster.servers))
            print(f"\nmachine A: ENGRAM_SOCKET={a.env['ENGRAM_SOCKET']}\nmachine B: "
                  f"ENGRAM_SOCKET={b.env['ENGRAM_SOCKET']}\nboth: ENGRAM_CLUSTER_SERVERS="
                  f"{cluster.servers}")
            watcher = None
            try:
                print("\n# machine A and machine B each start their engramd")
                a.run("daemon", "start")
                b.run("daemon", "start")
                print("\n# on machine B, a live feed of the deployment")
                watcher, relay = watch_in_background(b, count=5)
                time.sleep(0.5)  # the demo's pace: let the watch print its start
                print("\n# on machine A, alice records her work")
                a.run("unit", "create", "-c", "build-42", "-p", "build started on A")
                a.run("unit", "create", "-c", "build-42", "-t", "TOOL_RESULT", "-p",
                      "tests pass on A")
                print("\n# on machine B, bob answers")
                b.run("unit", "create", "-c", "build-42", "-p", "B saw it", agent="bob")
                try:
                    watcher.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    raise SystemExit("cluster demo: the watch on B did not see the units") from None
                relay.join(5)
                time.sleep(1.5)  # machines announce where their views are once a second
                print("\n# the same journal, in the same order, on both machines")
                a.run("unit", "list", "-c", "build-42")
                b.run("unit", "list", "-c", "build-42")
                b.run("cluster", "status")
            finally:
                if watcher is not None and watcher.poll() is None:
                    watcher.kill()
                for demo in (a, b):
                    demo.run("daemon", "stop", quiet=True, may_fail=True)
    print("\ncluster demo: done", flush=True)


if __name__ == "__main__":
    main()
