"""``engramd`` whose store cannot be flushed while a file exists: no checkpoint is made.

Run as ``python -m tests.helpers.unflushed_engramd`` in place of ``python -m engramd``,
with ``FLUSH_FAILS`` naming the file. While it exists every flush of the store raises,
as RocksDB does when it cannot write a table file, so no checkpoint covers the log and
the store's newest changes are in its memtables only.
"""

from __future__ import annotations

import os

from engramd.main import main
from engramd.storage import Store

_flush = Store.flush


def _flush_unless_told_to_fail(self: Store) -> bool:
    if os.path.exists(os.environ["FLUSH_FAILS"]):
        raise OSError("injected: the store's table file could not be written")
    return _flush(self)


def install() -> None:
    """Patch this process's engramd (never done on import)."""
    Store.flush = _flush_unless_told_to_fail  # type: ignore[method-assign]


if __name__ == "__main__":
    install()
    raise SystemExit(main())
