"""The Python client library of engramd: what agents and scripts import.

A blocking client (:class:`Client`: the plain ``socket`` module, no trio) and a
trio flavour (:class:`AsyncClient`, opened with :func:`open_client`) run the same
operations (:mod:`.operations`, built from :mod:`.requests`), find the daemon the
same way (:mod:`.settings`), start it when allowed (:mod:`.autostart`), follow the
live stream (:mod:`.stream`) and raise the same errors (:mod:`.errors`). Two
helpers say where a caller stands: :mod:`.session` (which process is the agent's
session) and :mod:`.gitinfo` (what git says about a repository).

May import: the standard library, msgspec, :mod:`engramd.protocol`, and trio in
:mod:`.asynchronous` only. Never the command line, the doors, the bench tools,
typer or rich (``tests/test_layering.py``).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from engram_cli.client.asynchronous import AsyncClient, open_client
    from engram_cli.client.blocking import Client, Subscription
    from engram_cli.client.errors import ClientTimeout, EngramError, Unavailable
    from engram_cli.client.stream import LaggedBehind

_WHERE = {"AsyncClient": "asynchronous", "open_client": "asynchronous", "Client": "blocking",
          "Subscription": "blocking", "ClientTimeout": "errors", "EngramError": "errors",
          "Unavailable": "errors", "LaggedBehind": "stream"}


def __getattr__(name: str) -> Any:
    # Each loaded on first use: the trio flavour loads trio, which a blocking caller (every
    # `engram` command) never pays for, and the fast start of the hot commands
    # (engram_cli.cli.fast) imports .session before it knows whether it needs msgspec.
    module = _WHERE.get(name)
    if module is not None:
        import importlib

        return getattr(importlib.import_module(f"engram_cli.client.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AsyncClient", "Client", "ClientTimeout", "EngramError", "LaggedBehind",
           "Subscription", "Unavailable", "open_client"]
