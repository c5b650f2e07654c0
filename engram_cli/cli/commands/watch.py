"""``engram watch`` (follow the live stream) and ``engram wait`` (block until one event)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from engram_cli.cli import completion, context, output
from engram_cli.cli.consumer import Acknowledgements, StopSignals
from engram_cli.cli.hot import watch as hot
from engram_cli.cli.hot.watch import _after, _filters, _warn_unknown_contexts
from engram_cli.cli.options import JsonOption
from engram_cli.client import Client, Subscription
from engram_cli.client.errors import NotFound, UsageProblem
from engramd.protocol import EVENT_KINDS, Heartbeat, Unit, UnitCreated

ContextsOption = Annotated[list[str] | None, typer.Option(
    "--context", "-c", metavar="CTX", autocompletion=completion.contexts,
    help="Only this context (repeatable; default: all).")]
TypesOption = Annotated[list[str] | None, typer.Option(
    "--type", "-t", metavar="TYPE", autocompletion=completion.unit_types,
    help="Only units of this type (repeatable).")]
AgentsOption = Annotated[list[str] | None, typer.Option(
    "--agent", metavar="AGENT", help="Only events of this agent (repeatable).")]
KindsOption = Annotated[list[str] | None, typer.Option(
    "--kind", "-k", metavar="KIND", autocompletion=completion.event_kinds,
    help=f"Only these events (repeatable): {', '.join(EVENT_KINDS)}.")]
MetaOption = Annotated[list[str] | None, typer.Option(
    "--meta", "-m", metavar="KEY=VALUE", help="Only units with this metadata (repeatable).")]
CursorOption = Annotated[str | None, typer.Option(
    "--cursor", metavar="NAME",
    help="A named cursor kept by the daemon, this agent's own: start after the last event "
    "handed out under NAME (a new NAME starts where --since says, and is kept from there), "
    "and move it past each event shown.")]
SinceOption = Annotated[str, typer.Option(
    "--since", metavar="now|start|SEQ",
    help="Start after this point: now (default), the start, or a sequence number.")]


def _last_units(client: Client, filters: dict[str, Any], count: int) -> list[Unit]:
    """The newest *count* units that match, across the watched contexts."""
    contexts = filters["contexts"] or [c.id for c in client.list_contexts(limit=10_000).contexts]
    units: list[Unit] = []
    for context_id in contexts:
        try:
            page = client.list_units(context_id, limit=count, types=filters["types"],
                                     agents=filters["agents"])
        except NotFound:
            continue
        units += [unit for unit in page.units
                  if all(unit.meta.get(k) == v for k, v in filters["meta"].items())]
    return sorted(units, key=lambda unit: unit.seq)[-count:]


def watch(
    ctx: typer.Context,
    contexts: ContextsOption = None,
    types: TypesOption = None,
    agents: AgentsOption = None,
    kinds: KindsOption = None,
    meta: MetaOption = None,
    since: SinceOption = "now",
    last: Annotated[int, typer.Option(
        "--last", "-n", min=0, metavar="N",
        help="First show the last N matching units (with --since now).")] = 0,
    count: Annotated[int | None, typer.Option("--count", min=1, metavar="N",
                                              help="Exit after N events.")] = None,
    cursor: CursorOption = None,
    format_: Annotated[str | None, typer.Option(
        "--format", metavar="line", help="line: one short plain line per event (at most "
        "200 characters, flushed), for harness tools that wake an agent on each line.")
    ] = None,
    json: JsonOption = False,
) -> None:
    """Follow the live stream of events; reconnects and resumes across daemon restarts.

    On a terminal one line per event under a status line; piped, tab-separated rows;
    with --json, one event per line, flushed; with --format line, one short line each.
    Ctrl-C, SIGTERM or SIGHUP end it (exit 0); with --cursor, every event it showed is
    acknowledged first, so the next consumer of NAME gets exactly what it did not show.

    Examples:

      engram watch -c build-42 -n 20
      engram watch -k lock.acquired -k lock.released --json | jq -r .lease.resource
      engram watch --cursor reviewer --since start --json
    """
    if format_ not in (None, "line"):
        raise UsageProblem(f"--format is line (or leave it out), not {format_!r}")
    cli = context.get(ctx)
    out = cli.output(json)
    client = cli.client()
    filters = _filters(contexts, types, agents, kinds, meta)
    after = _after(since)
    _warn_unknown_contexts(client, filters["contexts"])
    feed = output.LiveFeed(out, lines=format_ == "line")
    shown = 0
    acks = Acknowledgements(client, cursor)
    was_reconnecting = {"value": False}

    def on_status(kind: str, subscription: Subscription | None) -> None:
        if subscription is not None:
            feed.status(f"● watching · head {subscription.head_seq} · lag 0",
                        announce=was_reconnecting["value"])
            was_reconnecting["value"] = False
        else:
            feed.status("○ reconnecting to engramd …", announce=True)
            was_reconnecting["value"] = True

    # With a cursor, heartbeats come every second: what was shown just before the
    # stream went quiet is acknowledged then, not only at the end.
    heartbeat = None if cursor is None else 1.0
    with StopSignals() as stops:
        try:
            with feed.running():
                if last and cursor is None and after is None:
                    # The head first: a unit written while the last ones are read still
                    # comes.
                    after = client.status().journal.last_seq  # type: ignore[union-attr]
                    for unit in _last_units(client, filters, last):
                        if unit.seq <= after:
                            feed.show(UnitCreated(seq=unit.seq, ts=unit.ts,
                                                  context_id=unit.context_id, unit=unit))
                stream = client.watch(on_status=on_status, after=after, cursor=cursor,
                                      heartbeat=heartbeat, **filters)
                for item in stream:
                    # A stop signal ends the wait for the next item at once; one that
                    # comes while an item is handled waits until it is: an event is
                    # shown, counted and (in due course) acknowledged, or none of these.
                    with stops.held():
                        if isinstance(item, Heartbeat):
                            feed.status(f"● watching · head {item.head_seq} · "
                                        f"lag {item.head_seq - item.cursor}")
                            acks.tell()
                            continue
                        feed.show(item)
                        shown += 1
                        acks.show(item.seq)
                    if count is not None and shown >= count:
                        return
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM/SIGHUP as Stopped
            return
        finally:
            # Every event shown is handed out: the next watch or wait under this name
            # starts after the last of them, not after the last one acknowledged in
            # passing.
            acks.close()


def wait(
    ctx: typer.Context,
    contexts: ContextsOption = None,
    types: TypesOption = None,
    agents: AgentsOption = None,
    kinds: KindsOption = None,
    meta: MetaOption = None,
    since: SinceOption = "now",
    timeout: Annotated[float | None, typer.Option(
        "--timeout", min=0.0, metavar="SECONDS",
        help="Give up after this long: exit 5.")] = None,
    cursor: CursorOption = None,
    json: JsonOption = False,
) -> int | None:
    """Block until one matching event arrives, print it and exit 0 (exit 5 on timeout).

    Filters as for watch. A context that does not exist yet is waited for (a note on
    stderr says so).

    Examples:

      engram wait -c build-42 -t TASK_STATUS -m state=done --timeout 600
      engram wait -k lock.released --timeout 60 && ./deploy.sh
      engram wait --cursor deployer -t TASK_STATUS --json   # in a loop: misses nothing
    """
    return hot.wait(context.get(ctx), contexts=contexts, types=types, agents=agents,
                    kinds=kinds, meta=meta, since=since, timeout=timeout, cursor=cursor,
                    json=json)
