"""``engram hook ...``: what a harness runs at its hook events (``engram setup`` installs
them); see :mod:`engram_cli.doors.harness` for the formats and
:mod:`engram_cli.cli.hot.hook` for the code. Each reads the hook's JSON on stdin,
answers on stdout, and fails open."""

from __future__ import annotations

from typing import Annotated

import typer

from engram_cli.cli import completion, context
from engram_cli.cli.hot import hook as hot

app = typer.Typer(
    help="What a harness runs (engram setup installs them): read the hook's JSON on stdin, "
         "answer in the harness's format, and exit 0 with no output when engramd cannot "
         "be reached.", no_args_is_help=True, add_completion=False)

HarnessOption = Annotated[str, typer.Option(
    "--harness", metavar="|".join(completion.HARNESSES), autocompletion=completion.harnesses,
    help="Which harness runs the hook (its format).")]


@app.command("session-start")
def session_start(ctx: typer.Context, runner: HarnessOption = "claude-code",
                  max_chars: Annotated[int, typer.Option("--max-chars", min=500)] = 8000
                  ) -> int | None:
    """SessionStart: the session brief as context.

    Also announces the session and exports ENGRAM_AGENT, ENGRAM_SESSION_PID and where
    the daemon is (ENGRAM_SOCKET, ENGRAM_DATA_DIR: the hook's own) to the session's
    shell commands (Claude Code: through $CLAUDE_ENV_FILE; Cursor: the answer's env),
    so that the agent's engram commands reach the daemon its hooks reach.
    """
    return hot.session_start(context.get(ctx), runner=runner, max_chars=max_chars)


@app.command("prompt")
def prompt(ctx: typer.Context, runner: HarnessOption = "claude-code") -> int | None:
    """UserPromptSubmit (Gemini CLI: BeforeAgent): one line of context when messages are
    unread; nothing otherwise."""
    return hot.prompt(context.get(ctx), runner=runner)


@app.command("pre-edit")
def pre_edit(ctx: typer.Context, runner: HarnessOption = "claude-code",
             guard: Annotated[str, typer.Option("--guard", metavar="warn|block")] = "warn"
             ) -> int | None:
    """PreToolUse on file edits (Gemini CLI: BeforeTool, AfterTool to warn): the lease guard.

    A lease of another session on the file (another agent's, or another running
    session's of the same agent; on it, on a directory it is in, a glob that matches
    it, shared or not: the lock manager's rule) adds a warning naming the holder, or
    with --guard block denies the edit with that reason.
    """
    return hot.pre_edit(context.get(ctx), runner=runner, guard=guard)


@app.command("stop")
def stop(ctx: typer.Context, runner: HarnessOption = "claude-code",
         wait: Annotated[float, typer.Option("--wait", min=0.0, max=86400.0,
                                             metavar="SECONDS")] = 3600.0) -> int | None:
    """Stop: the wake path.

    Claude Code (run in the background): wait up to --wait for a message and exit 2
    when one comes (the harness wakes the agent), else 0; one waiter per agent.
    The others (Gemini CLI: AfterAgent): when mail waits, the turn goes on, never
    twice in a row.
    """
    return hot.stop(context.get(ctx), runner=runner, wait=wait)
