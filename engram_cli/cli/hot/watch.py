"""``engram wait`` and the filters it shares with ``engram watch`` (see :mod:`..hot`)."""

from __future__ import annotations

import time
from typing import Any

from engram_cli.cli import output
from engram_cli.cli.consumer import Stopped, StopSignals
from engram_cli.cli.context import CliContext
from engram_cli.cli.exits import Exit
from engram_cli.cli.hot.checks import seconds, wire_int
from engram_cli.cli.hot.unit import parse_pairs
from engram_cli.client import Client
from engram_cli.client.errors import ClientTimeout, NotFound, UsageProblem
from engramd.protocol import Heartbeat


def _after(since: str) -> int | None:
    if since == "now":
        return None
    if since == "start":
        return 0
    if since.isdigit():
        return wire_int(int(since), "--since")
    raise UsageProblem(f"--since takes now, start or a sequence number, got {since!r}")


def _filters(contexts: list[str] | None, types: list[str] | None, agents: list[str] | None,
             kinds: list[str] | None, meta: list[str] | None) -> dict[str, Any]:
    return {"contexts": contexts or [], "types": types or [], "agents": agents or [],
            "kinds": kinds or [], "meta": parse_pairs(meta)}


def _warn_unknown_contexts(client: Client, contexts: list[str]) -> None:
    """A context not there yet may be created later, so waiting on it is fine; but a
    misspelt one would wait forever in silence."""
    for context_id in contexts:
        try:
            client.get_context(context_id)
        except NotFound:
            output.note(f"no context {context_id} yet; waiting for it to appear")


def wait(cli: CliContext, *, contexts: list[str] | None, types: list[str] | None,
         agents: list[str] | None, kinds: list[str] | None, meta: list[str] | None,
         since: str, timeout: float | None, cursor: str | None, json: bool) -> int | None:
    """``engram wait``."""
    seconds(timeout, "--timeout")
    after = _after(since)
    out = cli.output(json)
    client = cli.client()
    deadline = None if timeout is None else time.monotonic() + timeout
    heartbeat = 1.0 if timeout is None else max(0.05, min(1.0, timeout / 4))
    filters = _filters(contexts, types, agents, kinds, meta)
    _warn_unknown_contexts(client, filters["contexts"])
    with StopSignals() as stops:
        try:
            for item in client.watch(after=after, cursor=cursor, heartbeat=heartbeat,
                                     **filters):
                if not isinstance(item, Heartbeat):
                    with stops.held():  # printed and acknowledged, or neither
                        if out.is_terminal and not out.json:
                            out.console.print(output.event_text(item, out.console.width))
                        else:
                            output.LiveFeed(out).show(item)
                        if cursor is not None:
                            # Handed out: a loop of waits under one name misses nothing
                            # between them.
                            client.ack_cursor(cursor, item.seq)
                    return None
                if deadline is not None and time.monotonic() >= deadline:
                    raise ClientTimeout(f"no matching event within {timeout:g}s")
        except Stopped as stop:
            raise Exit(128 + stop.signum) from None
    return None
