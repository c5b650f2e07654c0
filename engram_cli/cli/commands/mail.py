"""``engram send``, ``engram inbox``, ``engram ack``: messages between agents."""

from __future__ import annotations

from typing import Annotated

import typer

from engram_cli.cli import completion, context
from engram_cli.cli.commands.unit import MetaOption
from engram_cli.cli.hot import mail as hot
from engram_cli.cli.hot.unit import whole_id
from engram_cli.cli.options import JsonOption
from engram_cli.formats.jsonforms import unit_to_json


def send(
    ctx: typer.Context,
    to: Annotated[str, typer.Option(
        "--to", metavar="AGENT[,AGENT...]|*",
        help="The recipients, comma-separated; * for every agent (also ones that come later).")],
    context_id: Annotated[str | None, typer.Option(
        "--context", "-c", metavar="CTX", autocompletion=completion.contexts,
        help="The context to write it in (default: the replied message's, else "
             "'messages').")] = None,
    thread: Annotated[str | None, typer.Option(
        "--thread", metavar="ID", help="A conversation to file it under (default: the "
        "replied message's thread).")] = None,
    reply_to: Annotated[str | None, typer.Option(
        "--reply-to", metavar="ID", help="The message this answers (linked RESPONDS_TO).")
    ] = None,
    ack_required: Annotated[bool, typer.Option(
        "--ack-required", help="Ask each recipient to acknowledge it (engram ack).")] = False,
    payload: Annotated[str | None, typer.Option(
        "--payload", "-p", metavar="TEXT", help="The message (default: stdin).")] = None,
    meta: MetaOption = None,
    new: Annotated[bool, typer.Option(
        "--new", help="The recipients may be agents not seen yet (else a name no agent "
        "has used is refused: a typo).")] = False,
    json: JsonOption = False,
) -> int | None:
    """Send a message to other agents and print its id.

    Each recipient gets it once, from its own 'engram inbox', however many sessions
    it runs; the daemon keeps what each has read.

    Examples:

      engram send --to bob -p "the build is green, your turn"
      git diff | engram send --to '*' --thread review-42 --ack-required
      engram send --to alice --reply-to 01a2338c-c421 -p "done"
    """
    return hot.send(context.get(ctx), to=to, context_id=context_id, thread=thread,
                    reply_to=reply_to, ack_required=ack_required, payload=payload, meta=meta,
                    new=new, json=json)


def inbox(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(
        "--limit", "-n", min=1, max=1000, metavar="N", help="At most N messages.")] = 20,
    wait: Annotated[float, typer.Option(
        "--wait", min=0.0, max=3600.0, metavar="SECONDS",
        help="When nothing is unread, wait this long for a message.")] = 0.0,
    peek: Annotated[bool, typer.Option(
        "--peek", help="Show without marking them read.")] = False,
    pending: Annotated[bool, typer.Option(
        "--pending", help="Show instead the messages waiting for your acknowledgement.")
    ] = False,
    count: Annotated[bool, typer.Option(
        "--count", help="Print only how many are unread (and waiting for an ack).")] = False,
    json: JsonOption = False,
) -> int | None:
    """Show your unread messages, oldest first, and mark them read.

    Prints nothing when there are none (exit 0), also after --wait runs out. Piped, one
    tab-separated line per message: time, from, id, to, flags, text.

    Examples:

      engram inbox
      engram inbox --wait 300 --json     # block until a message comes
      engram inbox --count
    """
    return hot.inbox(context.get(ctx), limit=limit, wait=wait, peek=peek, pending=pending,
                     count=count, json=json)


def ack(
    ctx: typer.Context,
    message_id: Annotated[str, typer.Argument(
        metavar="ID", help="The message (an id or a prefix of 8+ characters).")],
    json: JsonOption = False,
) -> None:
    """Acknowledge a message that asked for it; prints the acknowledgement's id.

    The acknowledgement is a unit linked to the message (RESPONDS_TO), so the sender
    sees it in 'engram trace ID'. Acknowledging again changes nothing.
    """
    cli = context.get(ctx)
    out = cli.output(json)
    client = cli.client()
    acknowledgement = client.ack_message(whole_id(client, message_id))
    if out.json:
        out.json_line(unit_to_json(acknowledgement))
    else:
        out.line(acknowledgement.id)
