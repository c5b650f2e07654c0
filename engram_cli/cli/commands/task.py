"""``engram task add|ready|claim|done|release|show|list``: tasks that cannot be claimed twice."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from engram_cli.cli import completion, context
from engram_cli.cli.commands.unit import MetaOption
from engram_cli.cli.hot.unit import parse_pairs, whole_id, whole_ids
from engram_cli.cli.options import JsonOption
from engram_cli.cli.output import Output
from engram_cli.client.errors import UsageProblem
from engram_cli.client.session import session_pid
from engram_cli.formats.text import format_duration, timestamp
from engramd.protocol import Task
from engramd.protocol.bounds import MIN_TTL

app = typer.Typer(
    help="Tasks with dependencies and priorities; a claim is a lease, so a task is never "
         "claimed twice and a dead claimer's task is ready again at once.",
    no_args_is_help=True, add_completion=False)

TaskArg = Annotated[str, typer.Argument(
    metavar="ID", help="The task (its id, or a prefix of 8+ characters).")]
ContextsOption = Annotated[list[str] | None, typer.Option(
    "--context", "-c", metavar="CTX", autocompletion=completion.contexts,
    help="Only tasks of this context (repeatable).")]
PidOption = Annotated[int | None, typer.Option(
    "--pid", metavar="PID", min=1,
    help="The claiming session's process (default: $ENGRAM_SESSION_PID, else the nearest "
         "ancestor that is not a shell).")]
TokenOption = Annotated[int | None, typer.Option(
    "--token", metavar="N",
    help="The claim's fencing token, to act for a claim made in another session.")]
LimitOption = Annotated[int, typer.Option(
    "--limit", "-n", min=1, max=10_000, metavar="N", help="At most N tasks.")]

COLUMNS = ["id", "pri", "state", "title", "context", "claimed by", "waits for"]


def _row(task: Task) -> list[str]:
    claimer = ""
    if task.claim is not None:
        claimer = task.claim.holder + (f" (pid {task.claim.holder_pid})"
                                       if task.claim.holder_pid else "")
    return [task.id, f"P{task.priority}", task.state, task.title, task.context_id, claimer,
            ",".join(task.open_dependencies)]


def _tasks(out: Output, tasks: list[Task], title: str) -> None:
    if out.json:
        for task in tasks:
            out.json_line(task)
        return
    out.table(title, COLUMNS, [_row(task) for task in tasks], header=False)


@app.command()
def add(
    ctx: typer.Context,
    title: Annotated[str, typer.Argument(metavar="TITLE", help="One line: what to do.")],
    context_id: Annotated[str | None, typer.Option(
        "--context", "-c", metavar="CTX", autocompletion=completion.contexts,
        help="The context (default: 'tasks').")] = None,
    priority: Annotated[int, typer.Option(
        "--priority", "-P", min=0, max=4, metavar="P",
        help="0 (most urgent) to 4.")] = 2,
    depends_on: Annotated[list[str] | None, typer.Option(
        "--depends-on", "-d", metavar="ID",
        help="A task that must be done first (repeatable).")] = None,
    detail: Annotated[str, typer.Option(
        "--detail", metavar="TEXT", help="More text, after the title.")] = "",
    meta: MetaOption = None,
    json: JsonOption = False,
) -> None:
    """Add a task and print its id.

    Examples:

      engram task add "fix the flaky lease test" -P 1
      engram task add "release 0.3" -d 01a2338c-c421 -d 01a2338c-c429
    """
    cli = context.get(ctx)
    out = cli.output(json)
    client = cli.client()
    task = client.add_task(title, context_id=context_id, priority=priority,
                           depends_on=whole_ids(client, depends_on or []), detail=detail,
                           meta=parse_pairs(meta))
    if out.json:
        out.json_line(task)
    else:
        out.line(task.id)


@app.command()
def ready(ctx: typer.Context, contexts: ContextsOption = None, limit: LimitOption = 20,
          json: JsonOption = False) -> None:
    """List the tasks ready to claim, most urgent first, oldest first among equals.

    Ready: open, not claimed, and every task it depends on done. Piped, one
    tab-separated line per task: id, priority, state, title, context, claimed by,
    waits for.
    """
    cli = context.get(ctx)
    _tasks(cli.output(json),
           cli.client().list_tasks(ready=True, contexts=contexts or [], limit=limit), "ready")


@app.command("list")
def list_tasks(
    ctx: typer.Context,
    states: Annotated[list[str] | None, typer.Option(
        "--state", "-s", metavar="STATE", help="open, claimed or done (repeatable).")] = None,
    contexts: ContextsOption = None,
    limit: LimitOption = 100,
    json: JsonOption = False,
) -> None:
    """List tasks: open and claimed first (most urgent first), then done."""
    cli = context.get(ctx)
    _tasks(cli.output(json), cli.client().list_tasks(states=states or [],
                                                     contexts=contexts or [], limit=limit),
           "tasks")


@app.command()
def claim(
    ctx: typer.Context,
    task_id: Annotated[str | None, typer.Argument(
        metavar="[ID]", help="The task to claim (or --next).")] = None,
    next_: Annotated[bool, typer.Option(
        "--next", help="Claim the most urgent ready task.")] = False,
    contexts: ContextsOption = None,
    ttl: Annotated[float | None, typer.Option(
        "--ttl", min=MIN_TTL, metavar="SECONDS",
        help="How long the claim lasts at most (default: locks.max_ttl).")] = None,
    pid: PidOption = None,
    json: JsonOption = False,
) -> None:
    """Claim a task and print its id; no two sessions ever hold the same task.

    The claim is a lease on task:ID held by your session's process: when that process
    exits, or the ttl runs out, the task is ready again at once. Exit 3 when no task
    is ready (--next), 4 when the task is claimed by someone else.

    Examples:

      id=$(engram task claim --next) && ... && engram task done "$id"
      engram task claim --next -c build-42 --json
    """
    if (task_id is None) == (not next_):
        raise UsageProblem("give a task ID or --next (one of them)")
    if task_id is not None and contexts:
        raise UsageProblem("-c/--context chooses among ready tasks: use it with --next")
    cli = context.get(ctx)
    out = cli.output(json)
    client = cli.client()
    task = client.claim_task(whole_id(client, task_id) if task_id else None,
                             contexts=contexts or [], ttl=ttl,
                             pid=pid if pid is not None else session_pid())
    if out.json:
        out.json_line(task)
    elif out.is_terminal and task.claim is not None:
        left = (task.claim.expires_at - dt.datetime.now(dt.UTC)).total_seconds()
        out.line(f"{task.id}  {task.title}  (claimed by pid {task.claim.holder_pid}, "
                 f"fencing token {task.claim.fencing_token}, for "
                 f"{format_duration(left)} at most)")
    else:
        out.line(task.id)


def _finish(ctx: typer.Context, task_id: str, pid: int | None, token: int | None,
            json: bool, done: bool) -> None:
    cli = context.get(ctx)
    out = cli.output(json)
    client = cli.client()
    whole = whole_id(client, task_id)
    session = pid if pid is not None else session_pid()
    task = (client.finish_task(whole, pid=session, token=token) if done
            else client.release_task(whole, pid=session, token=token))
    if out.json:
        out.json_line(task)
    else:
        out.line(f"{task.id} {task.state}")


@app.command()
def done(ctx: typer.Context, task_id: TaskArg, pid: PidOption = None,
         token: TokenOption = None, json: JsonOption = False) -> None:
    """Mark a task you have claimed done (its claim ends).

    Only the session holding the claim may (or its agent with --token); the change is
    written fenced by the claim, so a claim lost meanwhile cannot mark it. Exit 4
    when you do not hold the claim.
    """
    _finish(ctx, task_id, pid, token, json, done=True)


@app.command()
def release(ctx: typer.Context, task_id: TaskArg, pid: PidOption = None,
            token: TokenOption = None, json: JsonOption = False) -> None:
    """Give a task you have claimed back: it is ready again. Exit 4 when you do not
    hold the claim."""
    _finish(ctx, task_id, pid, token, json, done=False)


@app.command()
def show(ctx: typer.Context, task_id: TaskArg, json: JsonOption = False) -> None:
    """Show a task: its state, priority, dependencies and claim."""
    cli = context.get(ctx)
    out = cli.output(json)
    client = cli.client()
    task = client.get_task(whole_id(client, task_id))
    if out.json:
        out.json_line(task)
        return
    claim = task.claim
    out.fields("task", [
        ("id", task.id), ("title", task.title), ("state", task.state),
        ("priority", f"P{task.priority}"), ("context", task.context_id),
        ("created", f"{timestamp(task.created_at)} by {task.created_by}"),
        ("depends on", ", ".join(task.depends_on) or "-"),
        ("waits for", ", ".join(task.open_dependencies) or "-"),
        ("claimed by", "-" if claim is None else
         f"{claim.holder} (pid {claim.holder_pid}, fencing token {claim.fencing_token}, "
         f"until {timestamp(claim.expires_at)})"),
        ("done by", task.done_by or "-"),
    ])
