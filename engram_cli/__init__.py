"""engram: the command line, the Python client library and the doors of engramd.

From Python::

    from engram_cli import Client

    with Client() as engram:
        print(engram.ping().uptime)

or, with trio, ``async with engram_cli.open_client() as engram``
(:mod:`engram_cli.client` is the library).
"""

from typing import TYPE_CHECKING, Any

from engramd import __version__ as __version__

if TYPE_CHECKING:
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
