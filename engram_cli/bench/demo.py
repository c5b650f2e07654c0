"""``make demo``: engram's main job, end to end, on a throwaway daemon.

Starts engramd on a temporary socket and data dir, has two agents (alice and
bob) record their work in one context with real ``engram`` commands, the way a
script or an agent would, while a live ``engram watch`` shows each event as it
happens; then reads it back and stops the daemon. Every command is
printed before it runs, so the demo doubles as a tour.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time

from engram_cli.bench.cli import engram_command
from engram_cli.bench.harness import sockets_beside


class Demo:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.engram = engram_command()

    def run(self, *args: str, agent: str | None = None, stdin: str | None = None,
            capture: bool = False, quiet: bool = False, may_fail: bool = False) -> str:
        shown = f"engram {shlex.join(args)}"
        if agent:
            shown = f"ENGRAM_AGENT={agent} {shown}"
        if stdin is not None:
            shown = f"echo {shlex.quote(stdin.strip())} | {shown}"
        if not quiet:
            print(f"\n$ {shown}", flush=True)
        env = {**self.env, "ENGRAM_AGENT": agent or self.env["ENGRAM_AGENT"]}
        result = subprocess.run([*self.engram, *args], env=env, input=stdin, text=True,
                                stdout=subprocess.PIPE if capture else None, check=False)
        if result.returncode != 0 and not may_fail:
            raise SystemExit(f"demo: '{shown}' exited {result.returncode}")
        if capture:
            if not quiet:
                print(result.stdout, end="", flush=True)
            return result.stdout.strip()
        return ""


def watch_in_background(demo: Demo, count: int) -> tuple[subprocess.Popen[str], threading.Thread]:
    """A live ``engram watch`` whose lines the demo prints as they come, marked [watch]."""
    head = json.loads(demo.run("--json", "status", capture=True, quiet=True))["journal"]["last_seq"]
    args = ["watch", "--since", str(head), "--count", str(count)]
    print(f"\n$ engram {shlex.join(args)} &    # a live feed, printed below as [watch]",
          flush=True)
    process = subprocess.Popen([*demo.engram, *args], env=demo.env, stdout=subprocess.PIPE,
                               text=True)

    def relay() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            print(f"  [watch] {line}", end="", flush=True)

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    return process, thread


def contend_for_a_lock(demo: Demo) -> None:
    """alice holds the merge lock while her command runs; bob waits in line for it."""
    args = ["lock", "run", "build-42/merge", "--ttl", "30", "--", "sleep", "1"]
    print(f"\n$ ENGRAM_AGENT=alice engram {shlex.join(args)} &", flush=True)
    holder = subprocess.Popen([*demo.engram, *args],
                              env={**demo.env, "ENGRAM_AGENT": "alice"})
    while '"lease":null' in demo.run("--json", "lock", "show", "build-42/merge", capture=True,
                                     quiet=True).replace(" ", ""):
        time.sleep(0.02)
    lock_id = demo.run("lock", "acquire", "build-42/merge", "--wait", "10", agent="bob",
                       capture=True)
    demo.run("lock", "release", "build-42/merge", "--lock-id", lock_id, agent="bob")
    holder.wait(30)


def tour(demo: Demo) -> None:
    demo.run("daemon", "start")
    watcher, relay = watch_in_background(demo, count=11)
    started = demo.run("unit", "create", "-c", "build-42", "-t", "task_status",
                       "-m", "step=build", stdin="build 42 started\n", agent="alice",
                       capture=True)
    call = demo.run("unit", "create", "-c", "build-42", "-t", "tool_call", "-p", "pytest -q",
                    "-r", f"RESPONDS_TO:{started}", agent="bob", capture=True)
    demo.run("unit", "create", "-c", "build-42", "-t", "tool_result", "-m", "exit=0",
             "-p", "179 passed in 7.2s", "-r", f"CAUSES:{call}", agent="bob", capture=True)
    demo.run("unit", "create", "-c", "build-42", "-t", "reasoning", "-p",
             "tests pass; safe to merge", "-r", f"DEPENDS_ON:{call}", agent="alice",
             capture=True)
    demo.run("context", "pin", "build-42", started)
    contend_for_a_lock(demo)
    watcher.wait(30)
    relay.join(5)
    demo.run("unit", "list", "-c", "build-42")
    demo.run("unit", "related", call)
    demo.run("--json", "unit", "list", "-c", "build-42", "--agent", "bob", "-n", "1")
    demo.run("search", "tests pass")
    demo.run("trace", call)
    demo.run("doctor", may_fail=True)  # a warning (say, a nearly full disk) is no failure here
    demo.run("stats")
    demo.run("daemon", "stop")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="engram-demo-") as scratch, \
            sockets_beside(scratch) as sockets:
        os.chmod(scratch, 0o700)
        env = {
            **os.environ,
            "ENGRAM_SOCKET": os.path.join(sockets, "engramd.sock"),
            "ENGRAM_DATA_DIR": os.path.join(scratch, "data"),
            "ENGRAM_AGENT": "demo",
        }
        print(f"# a throwaway daemon: socket {env['ENGRAM_SOCKET']}, data {env['ENGRAM_DATA_DIR']}")
        demo = Demo(env)
        try:
            tour(demo)
        except SystemExit as exc:
            print(exc, file=sys.stderr)
            return 1
        finally:
            subprocess.run([*demo.engram, "daemon", "stop"], env=env, check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print("\n# done: the daemon is stopped and its temporary data removed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
