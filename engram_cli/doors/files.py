"""Writing a file whole: a reader (the daemon's spool delivery, a harness reading its
settings) sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import os


def write_whole(path: str, data: bytes, *, like: str | None = None) -> None:
    """Replace *path* with *data* atomically and durably.

    The file gets the mode and owner of *like* when given, else of *path* when it
    exists, else the mode a new file gets (the umask's). The data is written under
    mode 0600 until then, so the contents of a private file (``~/.claude.json`` holds
    API keys) are never readable by others, not even for a moment.
    """
    model = like if like is not None else path
    try:
        stat: os.stat_result | None = os.stat(model)
    except FileNotFoundError:
        stat = None
    temporary = f"{path}.{os.getpid()}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                         0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            if stat is None:
                os.fchmod(file.fileno(), 0o666 & ~_umask())
            else:
                if (stat.st_uid, stat.st_gid) != (os.getuid(), os.getgid()):
                    # Root editing a user's file leaves it the user's; anyone else
                    # cannot give a file away, and keeps what the system allows.
                    with contextlib.suppress(PermissionError):
                        os.fchown(file.fileno(), stat.st_uid, stat.st_gid)
                os.fchmod(file.fileno(), stat.st_mode & 0o7777)
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _umask() -> int:
    """The process's umask (Linux says it in /proc; elsewhere set and put back)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
