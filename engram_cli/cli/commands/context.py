"""``engram context create|get|list|update|pin|unpin|join|leave``."""

from __future__ import annotations

from typing import Annotated

import typer

from engram_cli.cli import completion, output
from engram_cli.cli import context as cli_context
from engram_cli.cli.hot.unit import parse_pairs, whole_ids
from engram_cli.cli.options import JsonOption
from engram_cli.formats.text import timestamp
from engramd.protocol import Context

app = typer.Typer(help="Create, inspect and change contexts.", no_args_is_help=True,
                  add_completion=False)

ContextArg = Annotated[str, typer.Argument(metavar="CTX", help="The context id.",
                                           autocompletion=completion.contexts)]


def _show(ctx: typer.Context, found: Context, json: bool, *, id_only: bool = False) -> None:
    out = cli_context.get(ctx).output(json)
    if out.json:
        out.json_line(found)
    elif id_only:
        out.line(found.id)
    else:
        output.context_fields(out, found)


@app.command()
def create(
    ctx: typer.Context,
    context_id: Annotated[str | None, typer.Argument(
        metavar="[CTX]", help="A slug such as build-42 or git:engram/main (default: generated).")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Display name.")] = None,
    meta: Annotated[list[str] | None, typer.Option(
        "--meta", "-m", metavar="KEY=VALUE", help="Metadata (repeatable).")] = None,
    json: JsonOption = False,
) -> None:
    """Create a context and print its id; exit 4 if it exists."""
    cli = cli_context.get(ctx)
    found = cli.client().create_context(context_id, display_name=name, meta=parse_pairs(meta))
    _show(ctx, found, json, id_only=True)


@app.command()
def get(ctx: typer.Context, context_id: ContextArg, json: JsonOption = False) -> None:
    """Show a context: name, agents, pinned units, metadata."""
    _show(ctx, cli_context.get(ctx).client().get_context(context_id), json)


@app.command("list")
def list_(
    ctx: typer.Context,
    prefix: Annotated[str, typer.Option("--prefix", help="Only ids starting with this.")] = "",
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=10_000)] = 1000,
    json: JsonOption = False,
) -> None:
    """List contexts by id."""
    cli = cli_context.get(ctx)
    out = cli.output(json)
    page = cli.client().list_contexts(prefix=prefix, limit=limit)
    if out.json:
        for found in page.contexts:
            out.json_line(found)
        return
    out.table("contexts", ["id", "name", "agents", "updated"],
              ([found.id, found.display_name, ",".join(found.agent_ids),
                timestamp(found.updated_at)] for found in page.contexts), header=False)


@app.command()
def update(
    ctx: typer.Context,
    context_id: ContextArg,
    name: Annotated[str | None, typer.Option("--name", help="Rename.")] = None,
    meta: Annotated[list[str] | None, typer.Option(
        "--meta", "-m", metavar="KEY=VALUE", help="Set metadata (repeatable).")] = None,
    unset: Annotated[list[str] | None, typer.Option(
        "--unset", metavar="KEY", help="Remove metadata (repeatable).")] = None,
    json: JsonOption = False,
) -> None:
    """Rename a context or change its metadata."""
    found = cli_context.get(ctx).client().update_context(
        context_id, display_name=name, set_meta=parse_pairs(meta), unset_meta=unset or [])
    _show(ctx, found, json)


UnitsArg = Annotated[list[str], typer.Argument(metavar="UNIT...", help="Unit ids.")]
AgentsArg = Annotated[list[str] | None, typer.Argument(
    metavar="[AGENT...]", help="Agents (default: yourself, --agent).")]


@app.command()
def pin(ctx: typer.Context, context_id: ContextArg, units: UnitsArg,
        json: JsonOption = False) -> None:
    """Pin units to a context (always relevant)."""
    client = cli_context.get(ctx).client()
    _show(ctx, client.update_context(context_id, pin=whole_ids(client, units)), json)


@app.command()
def unpin(ctx: typer.Context, context_id: ContextArg, units: UnitsArg,
          json: JsonOption = False) -> None:
    """Unpin units from a context."""
    client = cli_context.get(ctx).client()
    _show(ctx, client.update_context(context_id, unpin=whole_ids(client, units)), json)


@app.command()
def join(ctx: typer.Context, context_id: ContextArg, agents: AgentsArg = None,
         json: JsonOption = False) -> None:
    """Add agents to a context's members."""
    client = cli_context.get(ctx).client()
    _show(ctx, client.update_context(context_id, add_agents=agents or [client.agent_id]), json)


@app.command()
def leave(ctx: typer.Context, context_id: ContextArg, agents: AgentsArg = None,
          json: JsonOption = False) -> None:
    """Remove agents from a context's members."""
    client = cli_context.get(ctx).client()
    _show(ctx, client.update_context(context_id, remove_agents=agents or [client.agent_id]),
          json)
