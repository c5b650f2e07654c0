"""``engram lock acquire|release|renew|show|list|break|run``: leases on shared resources.

A resource is a plain name (``deploy:prod``) or, with ``--path``, a file, a directory
or a glob, resolved once into its canonical name (:mod:`engram_cli.client.paths`) and
shown back as a path relative to where the command runs."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from engram_cli.cli import context
from engram_cli.cli.hot import lock as hot
from engram_cli.cli.hot.lock import names, one_name, shown
from engram_cli.cli.options import JsonOption
from engram_cli.formats.text import format_duration, one_line, timestamp
from engramd.protocol import Lease, LockState

app = typer.Typer(help="Take and manage leases on shared resources.", no_args_is_help=True,
                  add_completion=False)

ResourcesArg = Annotated[list[str] | None, typer.Argument(
    metavar="[RES]...", show_default=False,
    help="Plain resource names, such as deploy:prod (a file: name is taken as it is).")]
ResourceArg = Annotated[str | None, typer.Argument(
    metavar="[RES]", show_default=False, help="A resource name (or --path).")]
PathsOption = Annotated[list[str] | None, typer.Option(
    "--path", "-p", metavar="PATH", show_default=False,
    help="A file, a directory (ending in /, or one on disk now: decided when named, a "
         "path not there yet is a file; covers what is under it) or "
         "a glob (src/**/*.py), relative to here, symlinks resolved; inside a git "
         "repository named by the repository's remote and the path in it. A path that "
         "exists is itself whatever its characters; else *, ? and [ make a glob unless "
         "escaped in brackets ('a[*].txt' is the file a*.txt). Repeatable.")]
PathOption = Annotated[str | None, typer.Option(
    "--path", "-p", metavar="PATH", show_default=False,
    help="The file, directory or glob the lease is on (as acquire --path takes it).")]
SharedOption = Annotated[bool, typer.Option(
    "--shared", help="Shared (readers') leases: they coexist with each other; an "
                     "exclusive lease waits for them, and they wait behind it.")]
TtlOption = Annotated[float | None, typer.Option(
    "--ttl", metavar="SECONDS",
    help="How long the lease lasts: at least 0.1, at most the daemon's locks.max_ttl (3600) "
         "(default: the daemon's, 60).")]
WaitOption = Annotated[float | None, typer.Option(
    "--wait", "-w", metavar="SECONDS", min=0.0,
    help="Wait at most this long in line for a held resource, then exit 5 "
         "(default: as long as it takes; 0 tries once).")]
NoWaitOption = Annotated[bool, typer.Option(
    "--no-wait", "-n", help="Try once: exit 4 at once when a resource is held.")]
LockIdOption = Annotated[str, typer.Option("--lock-id", metavar="ID",
                                           help="The lock id acquire printed.")]


def holder(agent: str, pid: int) -> str:
    return one_line(f"{agent} (pid {pid})" if pid else agent)


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
        waiters = ", ".join(f"{w.position}:{holder(w.agent, w.pid)}" for w in state.waiters)
        held = state.leases or ([state.lease] if state.lease else [])
        if not held:
            rows.append([shown(state.resource), "-", "-", "-", "-", waiters or "-", "-", "-",
                         "-"])
        for lease in held:  # several when shared
            rows.append([shown(state.resource), lease.holder, str(lease.fencing_token),
                         timestamp(lease.expires_at), _left(lease),
                         waiters or "-", str(lease.holder_pid or "-"), _held(lease),
                         "shared" if lease.shared else "exclusive"])
    return rows


@app.command()
def acquire(
    ctx: typer.Context,
    resources: ResourcesArg = None,
    path: PathsOption = None,
    shared: SharedOption = False,
    ttl: TtlOption = None,
    wait: WaitOption = None,
    no_wait: NoWaitOption = False,
    pid: Annotated[int | None, typer.Option(
        "--pid", metavar="PID",
        help="Held by this process, and released as soon as it exits "
             "(a shell script: --pid $$); one of yours that runs, not 1.")] = None,
    json: JsonOption = False,
) -> int | None:
    """Lease every resource together (or none) and print the lock ids.

    Waits in line while something in the way is held, first come first served
    (another session of the same agent waits like anyone). A lease on a directory
    is in the way of a lease on anything in it and the reverse; a glob of what it
    matches; shared leases only of exclusive ones. Exit 4 with --no-wait when
    something is in the way, 5 when --wait runs out, naming the holder. A daemon
    restart meanwhile does not end the wait: it asks again once the daemon is back.

    Examples:

      engram lock acquire deploy:prod --ttl 300
      engram lock acquire --path src/app.py --path docs/ -n
      engram lock acquire --path 'src/**/*.py' --shared
    """
    return hot.acquire(context.get(ctx), resources=resources, path=path, shared=shared,
                       ttl=ttl, wait=wait, no_wait=no_wait, pid=pid, json=json)


@app.command()
def release(ctx: typer.Context, lock_id: LockIdOption, resource: ResourceArg = None,
            path: PathOption = None, json: JsonOption = False) -> int | None:
    """End your lease on RES (only its agent can; the lock id proves it), and say which.

    Exit 3 when RES has no lease with that lock id.
    """
    return hot.release(context.get(ctx), lock_id=lock_id, resource=resource, path=path,
                       json=json)


@app.command()
def renew(ctx: typer.Context, lock_id: LockIdOption, resource: ResourceArg = None,
          path: PathOption = None, ttl: TtlOption = None, json: JsonOption = False) -> int | None:
    """Extend a lease that is still held, by its ttl (or --ttl) from now.

    Exit 3 when RES has no lease with that lock id.
    """
    return hot.renew(context.get(ctx), lock_id=lock_id, resource=resource, path=path,
                     ttl=ttl, json=json)


@app.command()
def show(ctx: typer.Context, resource: ResourceArg = None, path: PathOption = None,
         json: JsonOption = False) -> None:
    """Who holds a resource, until when, and who waits in line; and the leases on
    what overlaps it (a directory it is in, paths under it, globs matching it)."""
    cli = context.get(ctx)
    out = cli.output(json)
    resource = one_name(resource, path)
    state = cli.client().get_lock(resource)
    if out.json:
        out.json_line(state)
        return
    fields: list[tuple[str, str]] = []
    if shown(resource) != resource:
        fields.append(("name", resource))
    for row in _rows([state]):
        fields += list(zip(["resource", "holder", "fencing_token", "expires_at", "left",
                            "waiters", "pid", "held", "mode"], row, strict=True))
    if state.lease is not None and state.lease.pgid is not None:  # lock run's CMD
        fields.append(("process_group", str(state.lease.pgid)))
    if state.lease is not None and state.lease.machine:  # cluster mode: granted where
        fields.append(("machine", state.lease.machine))
    for lease in state.overlapping:
        fields.append(("overlapping", f"{shown(lease.resource)} by "
                       f"{holder(lease.holder, lease.holder_pid)}"
                       f"{' (shared)' if lease.shared else ''} until "
                       f"{timestamp(lease.expires_at)}"))
    out.fields(shown(resource), fields)


@app.command("list")
def list_(
    ctx: typer.Context,
    agent: Annotated[str | None, typer.Option("--agent", metavar="AGENT",
                                              help="Only leases held or awaited by AGENT.")
                     ] = None,
    prefix: Annotated[str, typer.Option("--prefix", help="Only resources starting so.")] = "",
    path: Annotated[list[str] | None, typer.Option(
        "--path", "-p", metavar="PATH", show_default=False,
        help="Only leases that overlap PATH (a file, directory or glob): what stands in "
             "the way of it, by the lock manager's rule. Repeatable.")] = None,
    json: JsonOption = False,
) -> None:
    """Every lease held or awaited, with the time left (paths relative to here; --json
    gives the canonical names)."""
    cli = context.get(ctx)
    out = cli.output(json)
    states = cli.client().list_locks(agent=agent, prefix=prefix)
    if path:
        from engramd.protocol import resources as rule

        wanted = names([], path)
        states = [state for state in states
                  if any(rule.overlaps(state.resource, name) for name in wanted)]
    if out.json:
        for state in states:
            out.json_line(state)
        return
    out.table("leases", ["resource", "holder", "token", "expires", "left", "waiting", "pid",
                         "held", "mode"], _rows(states), header=False)


@app.command("break")
def break_(ctx: typer.Context,
           reason: Annotated[str, typer.Option("--reason", help="Why (recorded).")],
           resource: ResourceArg = None, path: PathOption = None,
           lock_id: Annotated[str | None, typer.Option(
               "--lock-id", metavar="ID",
               help="Only the lease with this lock id (lock list --json shows it); "
                    "exit 4 when RES is held by another lease now.")] = None,
           token: Annotated[int | None, typer.Option(
               "--token", metavar="N",
               help="Only the lease with this fencing token (lock list shows it); "
                    "exit 4 when RES is held by another lease now.")] = None,
           json: JsonOption = False) -> None:
    """End someone else's lease (every shared one on RES), and say whose; who did it and
    why go into the journal. With --lock-id or --token, only the lease they name: when
    its holder has let go since and another holds RES, nothing is broken (exit 4).

    Exit 3 when RES has no lease.
    """
    cli = context.get(ctx)
    resource = one_name(resource, path)
    client = cli.client(admin=True)
    # The lease as held a moment before the break: it is the one broken unless its
    # holder let go in between and the next in line got RES (then that one is; with
    # --lock-id or --token, then none is).
    state = client.get_lock(resource)
    named = [held for held in state.leases or ([state.lease] if state.lease else [])
             if (lock_id is None or held.lock_id == lock_id)
             and (token is None or held.fencing_token == token)]
    lease = named[0] if named else state.lease
    client.break_lock(resource, reason, lock_id=lock_id, token=token)
    out = cli.output(json)
    if out.json:
        out.json_line(lease if lease is not None else {"resource": resource})
    elif lease is not None:
        out.line(f"broke {one_line(shown(resource))}: the lease of {lease.holder} (lock id "
                 f"{lease.lock_id}, fencing token {lease.fencing_token})")
    else:
        out.line(f"broke {one_line(shown(resource))}")


@app.command(context_settings={"allow_interspersed_args": False})
def run(
    ctx: typer.Context,
    resources: Annotated[list[str], typer.Argument(
        metavar="[RES]... -- CMD [ARGS...]",
        help="Resources (and --path PATH options), then -- and the command to run while "
             "holding them.")],
    path: PathsOption = None,
    shared: SharedOption = False,
    ttl: TtlOption = None,
    wait: WaitOption = None,
    no_wait: NoWaitOption = False,
    json: Annotated[bool, typer.Option(
        "--json", help="engram's own errors as JSON (CMD's output is CMD's).")] = False,
) -> int | None:
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
      engram lock run -n --path README.md -- ./regen-docs.sh
      engram lock run --path src/ -- make fmt
      engram lock run --path 'docs/**/*.md' --shared -- make docs
    """
    return hot.run(context.get(ctx), resources=resources, path=path, shared=shared, ttl=ttl,
                   wait=wait, no_wait=no_wait)
