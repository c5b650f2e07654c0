"""``make cluster-demo``: three engram "machines" on one NATS JetStream cluster, on loopback.

The topology of deploy/cluster/compose.yaml on one machine: three nats-server nodes
(a real JetStream cluster, :mod:`engram_cli.bench.natslab`, configured by
deploy/cluster/nats.conf when this runs from the source tree) and three engramd,
each with its own socket and data dir and ``cluster.servers`` pointing at the
three nodes: three machines as far as engram can tell. A live ``engram watch``
runs on machine B while units are written on machine A (and one on B); then a
lease taken through A excludes B and C, and C's ``lock run`` waits in line until
A's job is done; ``engram cluster status`` shows the stream, its replicas and the
machines' views. Every command is printed before it runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time

from engram_cli.bench.demo import Demo, watch_in_background
from engram_cli.bench.natslab import NatsCluster


def machine_env(home: str, servers: str) -> dict[str, str]:
    os.makedirs(home, mode=0o700)
    cleaned = {k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_")}
    return {**cleaned, "ENGRAM_SOCKET": os.path.join(home, "engramd.sock"),
            "ENGRAM_DATA_DIR": os.path.join(home, "data"), "ENGRAM_AGENT": "alice",
            "ENGRAM_CLUSTER_SERVERS": servers, "ENGRAM_SEARCH_SEMANTIC": "off",
            "XDG_CONFIG_HOME": os.path.join(home, "config")}


DEPLOY_CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "deploy", "cluster",
                             "nats.conf")
"""The nodes' configuration of the compose file, where the source tree is at hand."""


def main() -> None:
    config = os.path.abspath(DEPLOY_CONFIG) if os.path.exists(DEPLOY_CONFIG) else ""
    with tempfile.TemporaryDirectory(prefix="engram-cluster-") as scratch:
        print("Three NATS JetStream nodes on loopback (sync_interval: always), "
              f"configured by {config or 'natslab'} ...", flush=True)
        with NatsCluster(os.path.join(scratch, "nats"), config_file=config) as cluster:
            for node in cluster.nodes:
                print(f"  {node.name}: {node.url}")
            a, b, c = (Demo(machine_env(os.path.join(scratch, name), cluster.servers))
                       for name in "abc")
            for name, demo in zip("ABC", (a, b, c), strict=True):
                print(f"machine {name}: ENGRAM_SOCKET={demo.env['ENGRAM_SOCKET']}")
            print(f"all three: ENGRAM_CLUSTER_SERVERS={cluster.servers}")
            watcher = job = None
            try:
                print("\n# machines A, B and C each start their engramd")
                for demo in (a, b, c):
                    demo.run("daemon", "start")
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
                print("\n# a lease excludes across machines: alice runs a job on A under "
                      "deploy:prod")
                shown = "engram lock run deploy:prod --ttl 10 -- sleep 3 &"
                print(f"\n$ {shown}", flush=True)
                job = subprocess.Popen([*a.engram, "lock", "run", "deploy:prod", "--ttl",
                                        "10", "--", "sleep", "3"], env=a.env)
                wait_for_holder(b, "deploy:prod")
                b.run("lock", "show", "deploy:prod", agent="bob")
                b.run("lock", "acquire", "deploy:prod", "--no-wait", agent="bob", may_fail=True)
                print("\n# on machine C, carol's job waits in line until A's is done")
                c.run("lock", "run", "deploy:prod", "--wait", "30", "--", "echo",
                      "carol deploys after alice", agent="carol")
                job.wait(30)
                b.run("cluster", "status")
            finally:
                for process in (watcher, job):
                    if process is not None and process.poll() is None:
                        process.kill()
                for demo in (a, b, c):
                    demo.run("daemon", "stop", quiet=True, may_fail=True)
    print("\ncluster demo: done", flush=True)


def wait_for_holder(demo: Demo, resource: str) -> None:
    """Until *demo*'s machine sees a lease on *resource* (the job has started)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = json.loads(demo.run("--json", "lock", "show", resource, capture=True,
                                    quiet=True))
        if state.get("lease"):
            return
        time.sleep(0.05)
    raise SystemExit(f"cluster demo: no lease on {resource} after 30 s")


if __name__ == "__main__":
    main()
