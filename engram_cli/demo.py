"""``make demo``: engram's main job, end to end, on a throwaway daemon.

Starts engramd on a temporary socket and data dir, runs real ``engram``
commands against it the way a script or a person would, and stops it. Every
command is printed before it runs, so the demo doubles as a tour.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile

from engram_cli.bench import _engram_command


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="engram-demo-") as scratch:
        os.chmod(scratch, 0o700)
        env = {
            **os.environ,
            "ENGRAM_SOCKET": os.path.join(scratch, "engramd.sock"),
            "ENGRAM_DATA_DIR": os.path.join(scratch, "data"),
            "ENGRAM_AGENT": "demo",
        }
        engram = _engram_command()
        print(f"# a throwaway daemon: socket {env['ENGRAM_SOCKET']}, data {env['ENGRAM_DATA_DIR']}")
        steps = [
            ["daemon", "start"],
            ["ping", "--count", "3"],
            ["status"],
            ["--json", "ping"],
            ["daemon", "status"],
            ["daemon", "logs", "--lines", "5"],
            ["daemon", "stop"],
        ]
        try:
            for args in steps:
                print(f"\n$ engram {shlex.join(args)}", flush=True)
                result = subprocess.run([*engram, *args], env=env, check=False)
                if result.returncode != 0:
                    print(f"demo: 'engram {shlex.join(args)}' exited {result.returncode}",
                          file=sys.stderr)
                    return 1
        finally:
            subprocess.run([*engram, "daemon", "stop"], env=env, check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print("\n# done: the daemon is stopped and its temporary data removed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
