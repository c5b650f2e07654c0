"""``engram send`` and ``engram inbox`` (see :mod:`..hot`)."""

from __future__ import annotations

from engram_cli.cli.context import CliContext
from engram_cli.cli.hot.checks import seconds
from engram_cli.cli.hot.unit import parse_pairs, payload_of, whole_id
from engram_cli.client.errors import UsageProblem
from engram_cli.formats.jsonforms import unit_to_json
from engram_cli.formats.text import preview, timestamp
from engramd.protocol import Unit, agentwork


def message_row(unit: Unit) -> list[str]:
    flags = []
    if agentwork.wants_ack(unit.meta):
        flags.append("ack-required")
    if agentwork.THREAD in unit.meta:
        flags.append(f"thread={unit.meta[agentwork.THREAD]}")
    return [timestamp(unit.ts), unit.agent_id, unit.id, unit.meta.get(agentwork.TO, ""),
            " ".join(flags), preview(unit)]


MESSAGE_COLUMNS = ["time", "from", "id", "to", "flags", "text"]


def send(cli: CliContext, *, to: str, context_id: str | None, thread: str | None,
         reply_to: str | None, ack_required: bool, payload: str | None,
         meta: list[str] | None, new: bool, json: bool) -> int | None:
    """``engram send``."""
    out = cli.output(json)
    names = [name.strip() for name in to.split(",") if name.strip()]
    if not names:
        raise UsageProblem("--to needs an agent (or * for every agent)")
    client = cli.client()
    message = client.send_message(
        names, payload_of(payload, None, False), context_id=context_id, thread=thread,
        reply_to=whole_id(client, reply_to) if reply_to else None,
        ack_required=ack_required, meta=parse_pairs(meta), new_recipients=new)
    if out.json:
        out.json_line(unit_to_json(message))
    else:
        out.line(message.id)
    return None


def inbox(cli: CliContext, *, limit: int, wait: float, peek: bool, pending: bool,
          count: bool, json: bool) -> int | None:
    """``engram inbox``."""
    seconds(wait, "--wait")
    out = cli.output(json)
    client = cli.client()
    if count:
        counted = client.unread()
        if out.json:
            out.json_line(counted)
        elif out.is_terminal:
            out.line(f"{counted.unread} unread, {counted.pending_acks} waiting for your ack")
        else:
            out.line(str(counted.unread))
        return None
    page = client.inbox(limit=limit, peek=peek, wait=wait, pending=pending)
    if out.json:
        for message in page.messages:
            out.json_line(unit_to_json(message))
        return None
    if page.messages:
        out.table("inbox", MESSAGE_COLUMNS, [message_row(unit) for unit in page.messages],
                  header=False)
    if page.unread and out.is_terminal:
        out.line(f"{page.unread} more unread (engram inbox -n N)", style="dim")
    return None
