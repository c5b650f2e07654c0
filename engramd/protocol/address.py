"""Where things live: the rules that find the socket, data dir and config file.

Pure functions of an environment mapping, so that the daemon, the blocking
client and the tests all resolve paths the same way without touching the disk.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

# sun_path holds 108 bytes on Linux, one of them the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107
SOCKET_NAME = "engramd.sock"


class SocketPathTooLong(ValueError):
    """A socket path that bind(2)/connect(2) could not take."""

    def __init__(self, path: str) -> None:
        length = len(os.fsencode(path))
        super().__init__(
            f"socket path is {length} bytes, over the limit of {MAX_SOCKET_PATH_BYTES}: "
            f"{path} (choose a shorter --socket or ENGRAM_SOCKET)"
        )
        self.path = path


def check_socket_path(path: str) -> str:
    """Return *path* if a Unix socket can live there, else raise :class:`SocketPathTooLong`."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise SocketPathTooLong(path)
    return path


def resolve_socket_path(explicit: str | None, env: Mapping[str, str], uid: int) -> str:
    """The socket path: *explicit* (a flag), else ``ENGRAM_SOCKET``, else the default.

    The default is ``$XDG_RUNTIME_DIR/engram/engramd.sock`` when that variable
    is set, else ``/tmp/engram-$UID/engramd.sock``.
    """
    if explicit:
        path = explicit
    elif env.get("ENGRAM_SOCKET"):
        path = env["ENGRAM_SOCKET"]
    elif env.get("XDG_RUNTIME_DIR"):
        path = os.path.join(env["XDG_RUNTIME_DIR"], "engram", SOCKET_NAME)
    else:
        path = os.path.join("/tmp", f"engram-{uid}", SOCKET_NAME)
    return check_socket_path(os.path.abspath(path))


def _home(env: Mapping[str, str]) -> str:
    return env.get("HOME") or os.path.expanduser("~")


def resolve_data_dir(explicit: str | None, env: Mapping[str, str]) -> str:
    """The data dir: *explicit*, else ``ENGRAM_DATA_DIR``, else ``$XDG_DATA_HOME/engram``."""
    if explicit:
        return os.path.abspath(explicit)
    if env.get("ENGRAM_DATA_DIR"):
        return os.path.abspath(env["ENGRAM_DATA_DIR"])
    base = env.get("XDG_DATA_HOME") or os.path.join(_home(env), ".local", "share")
    return os.path.join(base, "engram")


def default_config_file(env: Mapping[str, str]) -> str:
    """``$XDG_CONFIG_HOME/engram/config.toml`` (read only when it exists)."""
    base = env.get("XDG_CONFIG_HOME") or os.path.join(_home(env), ".config")
    return os.path.join(base, "engram", "config.toml")


LOG_NAME = "engramd.log"


def log_file_in(data_dir: str) -> str:
    """Where a detached daemon writes its log."""
    return os.path.join(data_dir, LOG_NAME)


def admin_token_path(socket_path: str) -> str:
    """Where the daemon leaves its admin token for the socket's owner: beside the socket."""
    return socket_path + ".admin-token"


def unusable_dir(path: str, what: str, info: os.stat_result, *, euid: int, writable: bool,
                 private: bool, setting: str) -> str | None:
    """Why the directory at *path* (its ``lstat`` *info*) cannot be engramd's *what*, as
    one line that names the problem and the fix; None when it can be.

    *private*: others may not even read it (the data dir holds every payload); otherwise
    only writing is refused. *setting* names how to choose another (``ENGRAM_DATA_DIR``).
    The daemon refuses to start with it and the client that would start one says it first.
    """
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISLNK(info.st_mode):
        return (f"{what} {path} is a symbolic link; refusing it (set {setting} to the "
                "directory it points at)")
    if not stat.S_ISDIR(info.st_mode):
        return f"{what} {path} is not a directory: move it away, or set {setting} elsewhere"
    if info.st_uid != euid:
        return (f"{what} {path} belongs to uid {info.st_uid}, not to you (uid {euid}): "
                f"set {setting} to a directory of your own")
    if not writable:
        return f"{what} {path} is not writable by you (mode {mode:04o}): chmod u+rwx {path}"
    if mode & (0o077 if private else 0o022):
        seen = "readable" if private and not mode & 0o022 else "writable"
        return f"{what} {path} is {seen} by others (mode {mode:04o}): chmod 700 {path}"
    return None


__all__ = [
    "admin_token_path", "check_socket_path", "default_config_file", "log_file_in",
    "MAX_SOCKET_PATH_BYTES", "resolve_data_dir", "resolve_socket_path", "SocketPathTooLong",
    "unusable_dir",
]
