"""``engram lock acquire|release|renew|show|list|break|run``: leases on shared resources."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from engram_cli.cli import context
from engram_cli.cli.context import JsonOption
from engram_cli.client.errors import UsageProblem
from engram_cli.formats.text import format_duration, timestamp
from engramd.protocol import Lease, LockState

app = typer.Typer(help="Take and manage leases on shared resources.", no_args_is_help=True,
                  add_completion=False)

ResourcesArg = Annotated[list[str], typer.Argument(
    metavar="RES...", help="Resource paths, such as repo/README.md or deploy:prod.")]
ResourceArg = Annotated[str, typer.Argument(metavar="RES", help="A resource path.")]
TtlOption = Annotated[float | None, typer.Option(
    "--ttl", metavar="SECONDS", help="How long the lease lasts (default: the daemon's, 60).")]
WaitOption = Annotated[float | None, typer.Option(
    "--wait", "-w", metavar="SECONDS", min=0.0,
    help="Wait at most this long in line for a held resource, then exit 5 "
         "(default: as long as it takes; 0 tries once).")]
NoWaitOption = Annotated[bool, typer.Option(
    "--no-wait", "-n", help="Try once: exit 4 at once when a resource is held.")]
LockIdOption = Annotated[str, typer.Option("--lock-id", metavar="ID",
                                           help="The lock id acquire printed.")]


def _wait(wait: float | None, no_wait: bool) -> float | None:
    """Seconds to wait in line (None: as long as it takes), like flock's -w and -n."""
    if no_wait and wait not in (None, 0):
        raise UsageProblem("--no-wait and --wait exclude each other")
    return 0.0 if no_wait else wait


def holder(agent: str, pid: int) -> str:
    return f"{agent} (pid {pid})" if pid else agent


def _left(lease: Lease) -> str:
    seconds = (lease.expires_at - dt.datetime.now(dt.UTC)).total_seconds()
    return f"{max(0.0, seconds):.1f}s"


def _held(lease: Lease) -> str:
    """How long it has been held: a holder alive but stuck shows here (``lock break``)."""
    held = format_duration((dt.datetime.now(dt.UTC) - lease.acquired_at).total_seconds())
    return held + (" (while its session lives)" if lease.while_alive else "")


def _rows(states: list[LockState]) -> list[list[str]]:
    rows = []
    for state in states:
        lease = state.lease
        waiters = ", ".join(f"{w.position}:{holder(w.agent, w.pid)}" for w in state.waiters)
        if lease is None:
            rows.append([state.resource, "-", "-", "-", "-", waiters or "-", "-", "-"])
        else:
            rows.append([state.resource, lease.holder, str(lease.fencing_token),
                         timestamp(lease.expires_at), _left(lease),
                         waiters or "-", str(lease.holder_pid or "-"), _held(lease)])
    return rows


@app.command()
def acquire(
    ctx: typer.Context,
    resources: ResourcesArg,
    ttl: TtlOption = None,
    wait: WaitOption = None,
    no_wait: NoWaitOption = False,
    pid: Annotated[int | None, typer.Option(
        "--pid", metavar="PID",
        help="Held by this process, and released as soon as it exits "
             "(a shell script: --pid $$).")] = None,
    json: JsonOption = False,
) -> None:
    """Lease every resource together (or none) and print the lock ids.

    Waits in line while a resource is held, first come first served (another
    session of the same agent waits like anyone). Exit 4 with --no-wait when a
    resource is held, 5 when --wait runs out, naming the holder.
    """
    cli = context.get(ctx)
    out = cli.output(json)
    leases = cli.client().acquire_lock(resources, ttl=ttl, wait=_wait(wait, no_wait), pid=pid)
    for lease in leases:
        if out.json:
            out.json_line(lease)
        else:
            out.line(lease.lock_id)


@app.command()
def release(ctx: typer.Context, resource: ResourceArg, lock_id: LockIdOption,
            json: JsonOption = False) -> None:
    """End your lease on RES (only its agent can; the lock id proves it), and say which.

    Exit 3 when RES has no lease with that lock id.
    """
    cli = context.get(ctx)
    client = cli.client()
    # The release names the lease by its lock id, which no other lease ever has: the
    # lease seen here under that id is the one the release ends, if it succeeds.
    lease = client.get_lock(resource).lease
    client.release_lock(lock_id, resource=resource)
    out = cli.output(json)
    released = lease if lease is not None and lease.lock_id == lock_id else None
    if out.json:
        out.json_line(released if released is not None else {"resource": resource,
                                                                "lock_id": lock_id})
    elif released is not None:
        held = (dt.datetime.now(dt.UTC) - released.acquired_at).total_seconds()
        out.line(f"released {resource} (lock id {lock_id}, fencing token "
                 f"{released.fencing_token}, held {format_duration(held)})")
    else:
        out.line(f"released {resource} (lock id {lock_id})")


@app.command()
def renew(ctx: typer.Context, resource: ResourceArg, lock_id: LockIdOption,
          ttl: TtlOption = None, json: JsonOption = False) -> None:
    """Extend a lease that is still held, by its ttl (or --ttl) from now.

    Exit 3 when RES has no lease with that lock id.
    """
    cli = context.get(ctx)
    lease = cli.client().renew_lock(lock_id, ttl, resource=resource)
    out = cli.output(json)
    if out.json:
        out.json_line(lease)
    else:
        out.line(timestamp(lease.expires_at))


@app.command()
def show(ctx: typer.Context, resource: ResourceArg, json: JsonOption = False) -> None:
    """Who holds a resource, until when, and who waits in line."""
    cli = context.get(ctx)
    out = cli.output(json)
    state = cli.client().get_lock(resource)
    if out.json:
        out.json_line(state)
        return
    (row,) = _rows([state])
    fields = list(zip(["resource", "holder", "fencing_token", "expires_at", "left",
                       "waiters", "pid", "held"], row, strict=True))
    if state.lease is not None and state.lease.pgid is not None:  # lock run's CMD
        fields.append(("process_group", str(state.lease.pgid)))
    if state.lease is not None and state.lease.machine:  # cluster mode: granted where
        fields.append(("machine", state.lease.machine))
    out.fields(resource, fields)


@app.command("list")
def list_(
    ctx: typer.Context,
    agent: Annotated[str | None, typer.Option("--agent", metavar="AGENT",
                                              help="Only leases held or awaited by AGENT.")
                     ] = None,
    prefix: Annotated[str, typer.Option("--prefix", help="Only resources starting so.")] = "",
    json: JsonOption = False,
) -> None:
    """Every lease held or awaited, with the time left."""
    cli = context.get(ctx)
    out = cli.output(json)
    states = cli.client().list_locks(agent=agent, prefix=prefix)
    if out.json:
        for state in states:
            out.json_line(state)
        return
    out.table("leases", ["resource", "holder", "token", "expires", "left", "waiting", "pid",
                         "held"], _rows(states), header=False)


@app.command("break")
def break_(ctx: typer.Context, resource: ResourceArg,
           reason: Annotated[str, typer.Option("--reason", help="Why (recorded).")],
           json: JsonOption = False) -> None:
    """End someone else's lease, and say whose; who did it and why go into the journal.

    Exit 3 when RES has no lease.
    """
    cli = context.get(ctx)
    client = cli.client(admin=True)
    # The lease as held a moment before the break: it is the one broken unless its
    # holder let go in between and the next in line got RES (then that one is).
    lease = client.get_lock(resource).lease
    client.break_lock(resource, reason)
    out = cli.output(json)
    if out.json:
        out.json_line(lease if lease is not None else {"resource": resource})
    elif lease is not None:
        out.line(f"broke {resource}: the lease of {lease.holder} (lock id {lease.lock_id}, "
                 f"fencing token {lease.fencing_token})")
    else:
        out.line(f"broke {resource}")


def _run_options(words: list[str], ttl: float | None, wait: float | None, no_wait: bool
                 ) -> tuple[list[str], float | None, float | None]:
    """Resources, with ``--ttl``, ``--wait`` and ``--no-wait`` picked out from among them.

    Everything after the first resource reaches ``run`` as plain words (so that
    CMD's own options are never taken for ours); our options may still follow
    the resources, as in ``engram lock run RES --ttl 30 -- CMD``.
    """
    names: list[str] = []
    values = iter(words)
    for word in values:
        option, equals, inline = word.partition("=")
        if option in ("--no-wait", "-n") and not equals:
            no_wait = True
        elif word == "--json":
            pass  # engram's own errors as JSON: main() saw it already
        elif option in ("--ttl", "--wait", "-w"):
            text = inline if equals else next(values, None)
            try:
                number = float(text)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise UsageProblem(f"{option} expects seconds, got {text!r}") from None
            if number < 0:
                raise UsageProblem(f"{option} must not be negative")
            if option == "--ttl":
                ttl = number
            else:
                wait = number
        elif word.startswith("-"):
            raise UsageProblem(f"unknown option {word} for lock run")
        else:
            names.append(word)
    return names, ttl, _wait(wait, no_wait)


RUN_USAGE = "usage: engram lock run RES... [--ttl S] [--wait S | --no-wait] -- CMD [ARGS...]"


@app.command(context_settings={"allow_interspersed_args": False})
def run(
    ctx: typer.Context,
    resources: Annotated[list[str], typer.Argument(
        metavar="RES... -- CMD [ARGS...]",
        help="Resources, then -- and the command to run while holding them.")],
    ttl: TtlOption = None,
    wait: WaitOption = None,
    no_wait: NoWaitOption = False,
    json: Annotated[bool, typer.Option(
        "--json", help="engram's own errors as JSON (CMD's output is CMD's).")] = False,
) -> None:
    """Run CMD holding leases (like flock): renewed while it runs, released when it ends.

    Waits in line for the leases as acquire does. The leases belong to this
    process and outlive a daemon restart. CMD gets ENGRAM_LOCK_ID,
    ENGRAM_FENCING_TOKEN and ENGRAM_FENCE (RES:TOKEN, which `engram unit create`
    uses as its fence). Its exit status is passed through (126 when it cannot
    be run, 127 when it is not found). CMD runs in a process group of its own
    (with the terminal's foreground, if engram had it alone), and no process of that
    group outlives the leases: what CMD leaves running gets SIGTERM, then
    SIGKILL, before they are released; if a lease is lost or cannot be renewed
    in time, the whole group is stopped before the lease ends, and engram exits
    6; if engram is killed, the daemon stops the group before the leases end.
    A process that leaves the group (setsid, a daemonizing double fork) is not
    stopped.

    Examples:

      engram lock run deploy:prod -- ./deploy.sh
      engram lock run deploy:prod --wait 300 -- make release
      engram lock run -n repo/README.md -- ./regen-docs.sh
    """
    if "--" not in resources:
        raise UsageProblem(RUN_USAGE)
    split = resources.index("--")
    names, ttl, wait = _run_options(resources[:split], ttl, wait, no_wait)
    command = resources[split + 1:]
    if not names or not command:
        raise UsageProblem(RUN_USAGE)
    from engram_cli.cli.lockrun import run_holding  # threads and signals: only lock run

    client = context.get(ctx).client()
    raise typer.Exit(run_holding(client, names, command, ttl=ttl, wait=wait))
