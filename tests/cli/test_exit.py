"""How the ``engram`` process ends: its output flushed, its status kept, and the
interpreter's teardown skipped only when a normal exit would have done nothing more."""

from __future__ import annotations

import subprocess
import sys

END = "from engram_cli.cli.app import end_process; "


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)


def test_buffered_output_is_flushed_and_the_status_kept() -> None:
    ended = python(END + "import sys; print('out', end=''); "
                   "sys.stderr.write('err'); end_process(3)")
    assert (ended.returncode, ended.stdout, ended.stderr) == (3, "out", "err")


def test_an_exit_handler_still_runs() -> None:
    ended = python(END + "import atexit; atexit.register(print, 'handler ran'); "
                   "end_process(4)")
    assert (ended.returncode, ended.stdout) == (4, "handler ran\n")


def test_another_thread_is_still_waited_for() -> None:
    ended = python(END + "import threading, time; "
                   "threading.Thread(target=lambda: (time.sleep(0.2), print('joined'))).start(); "
                   "end_process(0)")
    assert (ended.returncode, ended.stdout) == (0, "joined\n")
