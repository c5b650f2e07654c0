"""Writing a file whole: a reader (the daemon's spool delivery, a harness reading its
settings) sees the old file or the new one, never half of either."""

from __future__ import annotations

import os
import shutil


def write_whole(path: str, data: bytes) -> None:
    """Replace *path* with *data* atomically and durably, keeping its mode when it exists."""
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    if os.path.exists(path):
        shutil.copymode(path, temporary)
    os.replace(temporary, path)
