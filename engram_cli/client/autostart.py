"""Starting engramd on demand, detached, with its log in the data dir.

Used by the clients when nothing answers on the socket (unless
``ENGRAM_NO_AUTOSTART=1``) and by ``engram daemon start``. Clients that race to
start a daemon take turns through a lock file beside the socket, so exactly one
daemon is spawned.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from engram_cli.client.errors import Unavailable
from engramd.protocol import log_file_in, resolve_data_dir, unusable_dir

START_TIMEOUT = 10.0
_POLL_INTERVAL = 0.01
_GOING_AWAY = 3.0
"""How long a daemon that closed a new connection may take to stop answering."""
if TYPE_CHECKING:
    import subprocess

_started: dict[str, subprocess.Popen[bytes]] = {}
"""The daemon this process started on each socket."""


def process_gone(pid: int) -> bool:
    """True when *pid* has exited (a zombie counts as gone: it runs no more).

    Its main thread turns zombie before the other threads have exited, and those still
    hold the files (a listening socket that accepts): gone means none is left."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # The state letter follows the parenthesised command name.
            if stat.read().rsplit(b")", 1)[1].split()[0] != b"Z":
                return False
        return len(os.listdir(f"/proc/{pid}/task")) <= 1
    except (FileNotFoundError, IndexError):
        return True
    except OSError:
        return False


def daemon_answers(socket_path: str) -> bool:
    """True when something accepts connections on *socket_path*."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(socket_path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _usable_dir(path: str, what: str, *, private: bool, setting: str) -> None:
    """Create *path* (0700) if need be, and say in one line, as the daemon would, why a
    daemon could not use it (it could not even write its log there)."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except FileExistsError:
        pass  # not a directory: told below
    except OSError as exc:
        raise Unavailable(f"cannot create {what} {path}: {exc.strerror} (create it, or set "
                          f"{setting} elsewhere)") from None
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise Unavailable(f"cannot use {what} {path}: {exc.strerror}") from None
    problem = unusable_dir(path, what, info, euid=os.geteuid(),
                           writable=os.access(path, os.W_OK | os.X_OK), private=private,
                           setting=setting)
    if problem is not None:
        raise Unavailable(problem)


@contextlib.contextmanager
def _start_lock(socket_path: str) -> Iterator[None]:
    _usable_dir(os.path.dirname(socket_path), "socket directory", private=False,
                setting="ENGRAM_SOCKET")
    fd = os.open(socket_path + ".start", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def why_it_stopped(env: Mapping[str, str] | None = None) -> str:
    """Where the daemon's log is, and its last line: what a daemon that stopped while
    starting said last (a journal it refuses to open, say)."""
    log_path = log_file_in(resolve_data_dir(None, dict(os.environ if env is None else env)))
    last = last_line(log_path)
    return f"see {log_path}" + (f": {last}" if last else "")


def lost_while_starting(socket_path: str, env: Mapping[str, str] | None,
                        lost: Unavailable) -> Unavailable:
    """What to say when the connection to a daemon this client just started is lost: the
    daemon stopped while it recovered its journal (a damaged log, say), and its log says
    why; *lost* as it is when the daemon still answers."""
    if not gone_away(socket_path):
        return lost
    started = _started.get(socket_path)
    if started is not None:
        import subprocess  # (imported by start_daemon already)

        # Its socket goes before its last line is written (that follows the unwinding
        # of its start-up): the line is read once the process has ended.
        with contextlib.suppress(subprocess.TimeoutExpired):
            started.wait(_GOING_AWAY)
    return Unavailable(f"engramd stopped while starting; {why_it_stopped(env)}")


def started_process(socket_path: str) -> subprocess.Popen[bytes] | None:
    """The engramd this process started on *socket_path*, if it did."""
    return _started.get(socket_path)


def ready_polls() -> Iterator[float]:
    """The pauses between polls of a recovering daemon's state: 10 ms at first, then
    longer, up to half a second (a daemon with a request rate of 2/s still answers)."""
    pause = 0.01
    while True:
        yield pause
        pause = min(pause * 1.5, 0.5)


def refused_after_start(socket_path: str, exc: OSError) -> Unavailable:
    """What a daemon that answered once, then refused the connection, is (unless it went)."""
    return Unavailable(f"engramd started but {socket_path} refuses connections "
                       f"({exc.strerror})")


def gone_away(socket_path: str) -> bool:
    """Whether the daemon that just closed a connection is going away: it stops
    answering within a few seconds (a daemon that stops closes connections first)."""
    deadline = time.monotonic() + _GOING_AWAY
    while daemon_answers(socket_path):
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_INTERVAL)
    return True


def last_line(path: str) -> str:
    try:
        with open(path, "rb") as file:
            file.seek(max(0, os.path.getsize(path) - 4096))
            lines = file.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def start_daemon(
    socket_path: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> bool:
    """Start engramd on *socket_path* unless one already answers there.

    Returns:
        True if this call started a daemon, False if one was already running.

    Raises:
        Unavailable: the daemon did not come up within *timeout*; the
            message names the log file and quotes its last line.
    """
    import subprocess  # only here: starting a daemon is rare, start-up time is not

    env = dict(os.environ if env is None else env)
    data_dir = resolve_data_dir(None, env)
    log_path = log_file_in(data_dir)
    with _start_lock(socket_path):
        if daemon_answers(socket_path):
            return False
        _usable_dir(data_dir, "data dir", private=True, setting="ENGRAM_DATA_DIR")
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with open(log_fd, "ab") as log:
            process = subprocess.Popen(
                # -P: the engramd installed beside this client, never one in the
                # caller's directory (a checkout of engram, say)
                [sys.executable, "-P", "-m", "engramd", "--socket", socket_path,
                 "--log-file", log_path],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        _started[socket_path] = process
        deadline = time.monotonic() + timeout
        while not daemon_answers(socket_path):
            status = process.poll()
            if status is not None or time.monotonic() > deadline:
                # Worded as `daemon start` words a daemon that stops after it answered.
                why = (f"stopped while starting (exit status {status})" if status is not None
                       else f"did not answer within {timeout:g}s")
                raise Unavailable(f"engramd {why}; {why_it_stopped(env)}")
            time.sleep(_POLL_INTERVAL)
    return True
