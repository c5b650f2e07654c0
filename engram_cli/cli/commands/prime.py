"""``engram prime`` (the brief at an agent's session start) and ``engram agents``."""

from __future__ import annotations

import datetime as dt
import os
from typing import Annotated

import typer

from engram_cli.cli import completion, context
from engram_cli.cli.options import JsonOption
from engram_cli.client import gitinfo
from engram_cli.client.errors import EngramError, UsageProblem
from engram_cli.client.session import harness, session_pid
from engram_cli.formats import briefview
from engram_cli.formats.text import format_duration

PRIME_TIMEOUT = 1.5
"""Seconds prime waits for any answer: a session start must never hang on engram."""
START_TIMEOUT = 0.7
"""Seconds a daemon prime starts may take to answer, and then to be ready."""


def prime(
    ctx: typer.Context,
    contexts: Annotated[list[str] | None, typer.Option(
        "--context", "-c", metavar="CTX", autocompletion=completion.contexts,
        help="Brief on these contexts (repeatable; default: those you are a member of).")
    ] = None,
    max_chars: Annotated[int, typer.Option(
        "--max-chars", min=200, metavar="N", help="Print at most N characters.")] = 8000,
    items: Annotated[int, typer.Option(
        "--items", min=0, max=100, metavar="N",
        help="At most N entries in each list.")] = 5,
    format_: Annotated[str, typer.Option(
        "--format", metavar="md|json", help="Markdown for an agent to read, or JSON.")
    ] = "md",
    json: JsonOption = False,
) -> None:
    """Print what a session needs to know at its start, in one call.

    Who you are, unread messages, your claimed tasks and leases, others' leases on
    the files git shows as changed here, the top ready tasks, what happened in your
    contexts since your last prime, pinned units, and the commands that matter.
    Empty sections are left out. It announces this session (see engram agents).
    When engramd cannot be reached it prints one line and exits 0, so that it
    never breaks a session's start.

    Examples:

      engram prime                       # in a SessionStart hook
      engram prime -c build-42 --max-chars 4000
      engram prime --format json
    """
    if format_ not in ("md", "json"):
        raise UsageProblem(f"--format is md or json, not {format_!r}")
    cli = context.get(ctx)
    out = cli.output(json)
    as_json = out.json or format_ == "json"
    try:
        client = cli.client(timeout=PRIME_TIMEOUT, start_timeout=START_TIMEOUT)
        pid = session_pid()
        client.announce_session(pid=pid, harness=harness(pid=pid))
        brief = client.brief(contexts=contexts or [], files=_changed_files(), items=items)
    except EngramError as exc:
        note = f"engram: no brief ({exc})"
        if as_json:
            out.json_line({"error": {"code": str(exc.code), "message": str(exc)}})
        else:
            out.line(note)
        return
    if as_json:
        out.json_line(briefview.as_json(brief, max_chars))
    else:
        from engram_cli.client import paths

        out.write(briefview.markdown(brief, max_chars,
                                     name=paths.display))


def _changed_files() -> list[str]:
    """The files ``git status`` shows changed here, named as leases on them are."""
    from engram_cli.client import paths

    try:
        here = os.getcwd()
        return list(paths.in_repository(here, gitinfo.changed_files(here)).values())
    except OSError:
        return []


def agents(ctx: typer.Context, json: JsonOption = False) -> None:
    """List the agents: their sessions, when last seen, contexts, leases, unread messages.

    A session is a process an agent announced (engram prime does), one connected to
    engramd, or one holding a pid-bound lease, with how long it has run (in cluster
    mode pid@machine: this machine's sessions, and other machines' through their
    leases); one whose process has exited shows as gone. Piped, one
    tab-separated line per agent: agent, sessions, last seen, contexts, leases, unread.
    """
    cli = context.get(ctx)
    out = cli.output(json)
    found = cli.client().list_agents()
    if out.json:
        for agent in found:
            out.json_line(agent)
        return
    now = dt.datetime.now(dt.UTC)
    rows = []
    for agent in found:
        sessions = ", ".join(
            f"{session.pid}" + (f"@{session.machine}" if session.machine else "")
            + (f" {session.harness}" if session.harness else "")
            + (" (gone)" if session.gone_at is not None else
               f" ({format_duration((now - session.started_at).total_seconds())})")
            for session in agent.sessions)
        seen = ("-" if agent.last_seen is None else
                format_duration((now - agent.last_seen).total_seconds()) + " ago")
        rows.append([agent.agent, sessions or "-", seen, ",".join(agent.contexts) or "-",
                     str(agent.leases), str(agent.unread)])
    out.table("agents", ["agent", "sessions", "last seen", "contexts", "leases", "unread"],
              rows, numeric=("leases", "unread"), header=False)
