"""``engram mcp``: serve engram to a coding agent over MCP
(see :mod:`engram_cli.doors.mcpserver`)."""

from __future__ import annotations

from typing import Annotated

import typer

from engram_cli.cli import context
from engram_cli.cli.options import JsonOption
from engram_cli.client.errors import EngramError
from engram_cli.client.session import agent_name, harness, session_pid


def mcp(
    ctx: typer.Context,
    runner: Annotated[str | None, typer.Option(
        "--harness", metavar="NAME", help="What runs the server (claude-code, codex, gemini, "
        "cursor; default: told by its variables, else its process name): the agent is "
        "NAME-PID.")
    ] = None,
    json: JsonOption = False,
) -> None:
    """Serve engram's tools to a coding agent: an MCP server on stdin/stdout.

    Tools: brief, agents, send, inbox, ack, pending, thread, post, recent, get, search,
    trace, lock, renew, unlock, locks, task_add, task_ready, task_claim, task_done,
    task_release; resources engram://brief, engram://inbox,
    engram://context/ID, engram://unit/ID. The agent is --agent/ENGRAM_AGENT, else
    HARNESS-PID of the process that started the server; leases and claims are bound to
    that process. Needs the MCP SDK: pip install 'engram-journal\\[mcp]'. (--json is
    accepted and changes nothing: stdout is JSON-RPC.)

    Examples:

      engram setup claude-code      # registers it, and the hooks
      claude mcp add --scope project engram -- engram mcp
      codex mcp add engram -- engram mcp      # setup merges it, adds no second
    """
    try:
        import trio

        from engram_cli.doors import mcpserver
    except ImportError as exc:
        raise EngramError(f"engram mcp needs the MCP SDK ({exc.name} is missing): "
                          "pip install 'engram-journal[mcp]'") from None
    cli = context.get(ctx)
    pid = session_pid()
    runner = runner or harness(pid=pid)
    identity = mcpserver.Identity(socket=cli.socket, agent=agent_name(cli.agent, pid, runner),
                                  session_pid=pid, harness=runner, env=cli.env)
    trio.run(mcpserver.serve, identity)
