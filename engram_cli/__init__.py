"""engram: the command line, the Python client library and the doors of engramd.

From Python::

    from engram_cli import Client

    with Client() as engram:
        print(engram.ping().uptime)

or, with trio, ``async with engram_cli.open_client() as engram``. The rooms:
:mod:`.client` (the library), :mod:`.formats` (engram's data as JSON and text),
:mod:`.cli` (the ``engram`` command line), :mod:`.doors` (engram for other programs:
MCP, harness hooks, git hooks, the HTTP gateway) and :mod:`.bench` (measuring and
showing).

May import: only what its face names, and that lazily (``engram --version`` and the
hooks' fast paths load none of it); each room's docstring says what it may import.
"""

from __future__ import annotations

from engramd import __version__ as __version__

TYPE_CHECKING = False  # (typing itself costs every start ~2 ms)
if TYPE_CHECKING:
    from typing import Any

    from engram_cli.client import (
        AsyncClient,
        Client,
        ClientTimeout,
        EngramError,
        Unavailable,
        open_client,
    )

_LIBRARY = ("AsyncClient", "Client", "ClientTimeout", "EngramError", "Unavailable",
            "open_client")


def __getattr__(name: str) -> Any:
    # Loaded on first use: `engram --version` and the hooks' fast paths need none of it.
    if name in _LIBRARY:
        import engram_cli.client

        return getattr(engram_cli.client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AsyncClient", "Client", "ClientTimeout", "EngramError", "Unavailable",
           "__version__", "open_client"]
