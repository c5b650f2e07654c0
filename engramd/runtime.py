"""The daemon's footprint on the file system: private dirs, lock files, the socket file.

Synchronous and trio-free; :mod:`engramd.main` calls these before serving.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Callable, Iterator

from engramd.errors import StartupError
from engramd.protocol import unusable_dir


def ensure_private_dir(path: str, *, what: str, private: bool = False,
                       setting: str = "ENGRAM_SOCKET") -> None:
    """Create *path* (mode 0700) if needed, then refuse it unless it is safe.

    Safe means: a real directory (not a symlink), owned by us, writable by us and by no
    one else, and with *private* readable by no one else either. Anything else could let
    another user replace our socket or read our data.

    Raises:
        StartupError: one line that names the directory, its problem and the fix
            (:func:`engramd.protocol.unusable_dir`, which the client uses too).
    """
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except FileExistsError:
        pass  # not a directory: told below
    except OSError as exc:
        raise StartupError(f"cannot create {what} {path}: {exc.strerror} (create it, or set "
                           f"{setting} elsewhere)") from None
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise StartupError(f"cannot use {what} {path}: {exc.strerror}") from None
    problem = unusable_dir(path, what, info, euid=os.geteuid(),
                           writable=os.access(path, os.W_OK | os.X_OK), private=private,
                           setting=setting)
    if problem is not None:
        raise StartupError(problem)


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still put on *path*'s file system."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


class LockFile:
    """An exclusive ``flock`` held for the daemon's lifetime, naming its holder's pid
    (and, for the data dir, the socket it serves: a second daemon refused says where the
    first one is reached)."""

    def __init__(self, path: str, *, what: str, socket_path: str = "") -> None:
        self.path = path
        self._what = what
        self._socket_path = socket_path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Raises :class:`StartupError` when another process holds the lock."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            said = os.pread(fd, 4096, 0).decode(errors="replace").split(maxsplit=1)
            os.close(fd)
            pid = said[0] if said else "unknown"
            where = said[1].strip() if len(said) > 1 else ""
            reach = (f", serving {where}: set ENGRAM_SOCKET={where} to use it, or stop it "
                     "first" if where else "")
            raise StartupError(
                f"{self._what} is in use by another engramd (pid {pid}{reach})") from None
        with contextlib.suppress(OSError):  # it only informs; a full disk may refuse it
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {self._socket_path}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _socket_answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def bind_socket(path: str) -> socket.socket:
    """Bind a listening Unix socket at *path*, mode 0600, replacing a stale one.

    The caller holds the socket's lock file, so a socket file found here was
    left behind by a daemon that died, unless something answers on it.

    Raises:
        StartupError: another server answers on *path*, or bind fails.
    """
    if os.path.lexists(path):
        if _socket_answers(path):
            raise StartupError(f"another server is already listening on {path}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # The directory is already 0700; the umask closes the window between
        # bind() and chmod() anyway.
        old_umask = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {path}: {exc.strerror}") from None
    return sock


@contextlib.contextmanager
def claim_runtime(socket_path: str, data_dir: str,
                  before_listen: Callable[[], None] = lambda: None) -> Iterator[socket.socket]:
    """Own the data dir and the socket for as long as the context lasts.

    Order matters: the data dir lock first (two daemons must never share
    one), then the socket lock (two daemons must never fight over one path),
    then *before_listen* (what a client may read as soon as it can connect),
    then the socket itself. On exit the socket file is removed before the
    locks are released, so the next daemon finds a clean place.
    """
    ensure_private_dir(data_dir, what="data dir", private=True, setting="ENGRAM_DATA_DIR")
    ensure_private_dir(os.path.dirname(socket_path), what="socket directory")
    data_lock = LockFile(os.path.join(data_dir, "engramd.lock"), what=f"data dir {data_dir}",
                         socket_path=socket_path)
    socket_lock = LockFile(socket_path + ".lock", what=f"socket {socket_path}")
    data_lock.acquire()
    try:
        socket_lock.acquire()
        try:
            before_listen()
            sock = bind_socket(socket_path)
            try:
                yield sock
            finally:
                sock.close()
                try:
                    os.unlink(socket_path)
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        raise
        finally:
            socket_lock.release()
    finally:
        data_lock.release()
