"""``engram agent token create|list|revoke``: the tokens that bind connections to agents."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from engram_cli.cli import context
from engram_cli.cli.options import JsonOption
from engram_cli.client.errors import NotFound, UsageProblem
from engram_cli.formats.jsonforms import to_plain_data
from engram_cli.formats.text import timestamp

app = typer.Typer(help="Manage agents' identities.", no_args_is_help=True,
                  add_completion=False)
token_app = typer.Typer(
    help="Issue and revoke agent tokens (with auth.require_tokens, every connection needs "
         "one). These commands use the daemon's admin token, found beside its socket.",
    no_args_is_help=True)
app.add_typer(token_app, name="token")

AgentArg = Annotated[str, typer.Argument(metavar="NAME", help="The agent's name.")]


@token_app.command("create")
def create(ctx: typer.Context, agent: AgentArg, json: JsonOption = False) -> None:
    """Issue a token for agent NAME and print it (the only time it is shown).

    Give it to the agent as ENGRAM_TOKEN, with ENGRAM_AGENT=NAME.
    """
    cli = context.get(ctx)
    out = cli.output(json)
    created = cli.client(admin=True).create_token(agent)
    if out.json:
        out.json_line(created)
    else:
        out.line(created.token)


@token_app.command("list")
def list_tokens(ctx: typer.Context, json: JsonOption = False) -> None:
    """List the tokens issued (their ids and agents, never the secrets)."""
    cli = context.get(ctx)
    out = cli.output(json)
    tokens = cli.client(admin=True).list_tokens()
    if out.json:
        for token in tokens:
            out.json_line(token)
        return
    out.table("tokens", ["id", "agent", "created"],
              [[token.id, token.agent, timestamp(token.created_at)]
               for token in tokens])


_TOKEN_ID = re.compile(r"[0-9a-f]{12}")
"""What a token's id looks like (12 hex digits: ``engram agent token list``)."""


@token_app.command("revoke")
def revoke(
    ctx: typer.Context,
    agent: Annotated[str | None, typer.Argument(
        metavar="[NAME]", help="Revoke every token of this agent.")] = None,
    token_id: Annotated[str | None, typer.Option(
        "--id", metavar="ID", help="Revoke only the token with this id.")] = None,
    json: JsonOption = False,
) -> None:
    """Revoke tokens; connections that use them are closed at once."""
    if (agent is None) == (token_id is None):
        raise UsageProblem("give an agent NAME or --id ID (one of them)")
    cli = context.get(ctx)
    out = cli.output(json)
    try:
        revoked = cli.client(admin=True).revoke_tokens(agent=agent, token_id=token_id)
    except NotFound as exc:
        if agent is None:
            raise
        # NAME is an agent's: a token's id (what `token list` shows first) goes with --id.
        raise NotFound(f"{exc} (a token by its id: engram agent token revoke --id "
                       f"{agent if _TOKEN_ID.fullmatch(agent) else 'ID'}; engram agent token "
                       "list shows the tokens and their ids)") from None
    if out.json:
        out.json_line({"revoked": [to_plain_data(token) for token in revoked]})
    else:
        out.line(f"revoked {len(revoked)} token(s): "
                 + ", ".join(f"{token.id} ({token.agent})" for token in revoked))
