"""The session brief as text an agent reads at its start: Markdown, within a budget.

Pure functions over a :class:`~engramd.protocol.Brief`: sections in the order an
agent needs them (what waits for it, what it holds, what others hold that it is
touching, what it could take, what happened, what is pinned), empty ones left
out, and the command cheat sheet always last. When the whole does not fit in
``max_chars`` the sections lose their last lines first and a line says so.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import msgspec

from engram_cli.formats.jsonforms import to_plain_data, unit_to_json
from engram_cli.formats.text import format_duration, one_line, preview, printable, timestamp
from engramd.protocol import Brief, Lease, Task, Unit, agentwork

CHEAT_SHEET = """## engram commands
- `engram inbox` (read and mark), `engram send --to AGENT|'*' -p TEXT`, `engram ack ID`
- `engram task ready`, `engram task claim --next`, `engram task done ID`, \
`engram task add TITLE`
- `engram lock run --path PATH -- CMD` (hold a lease on a file, directory or glob \
while CMD runs; `--shared` to read), `engram lock list`
- `engram search WORDS`, `engram trace ID`, `engram agents`, `engram prime` (this brief)"""


def _left(lease: Lease, now: dt.datetime) -> str:
    """How long the lease has been held, and how long it may still be."""
    held = f"held {format_duration(max(0.0, (now - lease.acquired_at).total_seconds()))}"
    if lease.while_alive:
        return f"{held}, while its session lives"
    return f"{held}, {format_duration(max(0.0, (lease.expires_at - now).total_seconds()))} left"


def _message(unit: Unit) -> str:
    ack = " (asks for an ack)" if agentwork.wants_ack(unit.meta) else ""
    return f"- {unit.agent_id}, {timestamp(unit.ts)}, `{unit.id}`{ack}: {preview(unit, 160)}"


def _task(task: Task) -> str:
    return f"- P{task.priority} `{task.id}` {task.title} ({task.context_id})"


def sections(brief: Brief, now: dt.datetime,
             name: Callable[[str], str] = str) -> list[list[str]]:
    """Each section's lines, its heading first; empty sections left out. *name* shows
    a lease's resource as the reader would give it (a path relative to where it is)."""
    found: list[list[str]] = []

    def named(resource: str) -> str:  # (one line, whatever a resource's name holds)
        return one_line(name(resource))

    def section(heading: str, lines: list[str]) -> None:
        if lines:
            found.append([heading, *lines])

    waiting = f"{brief.unread} unread (engram inbox)"
    if brief.pending_acks:
        waiting += f", {brief.pending_acks} waiting for your ack (engram inbox --pending)"
    section(f"## Messages: {waiting}",
            [_message(unit) for unit in brief.messages]
            or (["- none unread"] if brief.pending_acks else []))
    section("## Your claimed tasks (engram task done ID when finished)",
            [_task(task) for task in brief.claimed])
    section("## Your leases",
            [f"- `{named(lease.resource)}`{' (shared)' if lease.shared else ''} (fencing "
             f"token {lease.fencing_token}, {_left(lease, now)})"
             for lease in brief.leases])
    section("## Held by others: files you have changed",
            [f"- `{named(lease.resource)}` by {lease.holder}"
             + (f" (pid {lease.holder_pid})" if lease.holder_pid else "")
             + (", shared" if lease.shared else "")
             + f", {_left(lease, now)}" for lease in brief.others_leases])
    shown = len(brief.ready)
    section(f"## Ready tasks: {brief.ready_total}"
            + (f" (top {shown}; engram task ready)" if brief.ready_total > shown else ""),
            [_task(task) for task in brief.ready])
    section(f"## Since your last prime: {brief.since_total} new"
            + (f" (newest {len(brief.since)})" if brief.since_total > len(brief.since) else ""),
            [f"- {timestamp(unit.ts)} {unit.agent_id} {unit.type} in {unit.context_id}: "
             f"{preview(unit, 120)}" for unit in brief.since])
    section("## Pinned", [f"- `{unit.id}` {unit.type} by {unit.agent_id}: "
                          f"{preview(unit, 160)}" for unit in brief.pinned])
    return found


def markdown(brief: Brief, max_chars: int, now: dt.datetime | None = None,
             name: Callable[[str], str] = str) -> str:
    """The brief as Markdown of at most *max_chars* characters (see the module); *name*
    shows a lease's resource (see :func:`sections`)."""
    now = now or dt.datetime.now(dt.UTC)
    contexts = ", ".join(brief.contexts) if brief.contexts else "none yet"
    head = f"# engram: you are {brief.agent}\nContexts: {contexts}"
    body = sections(brief, now, name)
    whole = printable(_join(head, body, CHEAT_SHEET))
    if len(whole) <= max_chars:
        return whole
    note = f"(brief cut to {max_chars} characters: engram prime --max-chars N shows more)"
    budget = max_chars - len(head) - len(CHEAT_SHEET) - len(note) - 8
    # Take lines from the end of the longest section until the rest fits.
    while body and sum(len(line) + 1 for part in body for line in part) + 2 * len(body) \
            > budget:
        longest = max(body, key=lambda part: sum(len(line) for line in part))
        longest.pop()
        if len(longest) <= 1:
            body.remove(longest)
    cut = printable(_join(head, body, note, CHEAT_SHEET))
    return cut if len(cut) <= max_chars else cut[:max_chars - 1] + "…"


def _join(*parts: Any) -> str:
    blocks: list[str] = []
    for part in parts:
        if isinstance(part, list):
            blocks += ["\n".join(lines) for lines in part]
        else:
            blocks.append(part)
    return "\n\n".join(blocks) + "\n"


def as_json(brief: Brief, max_chars: int) -> dict[str, Any]:
    """The brief as JSON data; lists lose their last items until it fits, and ``cut``
    says whether any did."""
    data: dict[str, Any] = to_plain_data(brief)
    for name in ("messages", "since", "pinned"):
        data[name] = [unit_to_json(unit) for unit in getattr(brief, name)]
    data["cut"] = False
    lists = ("since", "ready", "pinned", "messages", "others_leases", "claimed", "leases")
    while len(msgspec.json.encode(data)) > max_chars and any(data[name] for name in lists):
        longest = max(lists, key=lambda name: len(msgspec.json.encode(data[name])))
        data[longest].pop()
        data["cut"] = True
    return data
