"""``engram lock acquire|release|renew|show|list|break|run``: leases on shared resources.

A resource is a plain name (``deploy:prod``) or, with ``--path``, a file, a directory
or a glob, resolved once into its canonical name (:mod:`engram_cli.client.paths`) and
shown back as a path relative to where the command runs."""

from __future__ import annotations

import datetime as dt
import sys
from typing import Annotated

import typer

from engram_cli.cli import context
from engram_cli.cli.context import JsonOption
from engram_cli.client.errors import UsageProblem
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
    return one_line(f"{agent} (pid {pid})" if pid else agent)


def _left(lease: Lease) -> str:
    seconds = (lease.expires_at - dt.datetime.now(dt.UTC)).total_seconds()
    return f"{max(0.0, seconds):.1f}s"


def _held(lease: Lease) -> str:
    """How long it has been held: a holder alive but stuck shows here (``lock break``)."""
    held = format_duration((dt.datetime.now(dt.UTC) - lease.acquired_at).total_seconds())
    return held + (" (while its session lives)" if lease.while_alive else "")


def names(resources: list[str] | None, paths: list[str] | None) -> list[str]:
    """The resources a command is about: plain names as given, paths resolved."""
    from engram_cli.client import paths as resolve

    found = list(resources or [])
    try:
        found += resolve.resources(paths or [])
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    if not found:
        raise UsageProblem("name a resource (RES) or a path (--path PATH)")
    return found


def one_name(resource: str | None, path: str | None) -> str:
    if resource is not None and path is not None:
        raise UsageProblem("give RES or --path, not both")
    (name,) = names([resource] if resource is not None else [], [path] if path else [])
    return name


def shown(name: str) -> str:
    """A resource as a person here gives it (a path relative to here). Tables and fields
    escape what it holds once (a newline in a name is shown ``\\n``); a line of text
    gives it to :func:`one_line` itself."""
    if not name.startswith("file:"):
        return name
    from engram_cli.client import paths as resolve

    return resolve.display(name)


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
) -> None:
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
    from engram_cli.cli.waiting import acquire_waiting

    cli = context.get(ctx)
    out = cli.output(json)
    leases = acquire_waiting(cli.client(), names(resources, path), ttl=ttl,
                             wait=_wait(wait, no_wait), pid=pid, shared=shared)
    for lease in leases:
        if out.json:
            out.json_line(lease)
        else:
            out.line(lease.lock_id)


@app.command()
def release(ctx: typer.Context, lock_id: LockIdOption, resource: ResourceArg = None,
            path: PathOption = None, json: JsonOption = False) -> None:
    """End your lease on RES (only its agent can; the lock id proves it), and say which.

    Exit 3 when RES has no lease with that lock id.
    """
    cli = context.get(ctx)
    resource = one_name(resource, path)
    client = cli.client()
    # The release names the lease by its lock id, which no other lease ever has: the
    # lease seen here under that id is the one the release ends, if it succeeds.
    state = client.get_lock(resource)
    lease = next((held for held in state.leases if held.lock_id == lock_id), state.lease)
    client.release_lock(lock_id, resource=resource)
    out = cli.output(json)
    released = lease if lease is not None and lease.lock_id == lock_id else None
    if out.json:
        out.json_line(released if released is not None else {"resource": resource,
                                                                "lock_id": lock_id})
    elif released is not None:
        held = (dt.datetime.now(dt.UTC) - released.acquired_at).total_seconds()
        out.line(f"released {one_line(shown(resource))} (lock id {lock_id}, fencing token "
                 f"{released.fencing_token}, held {format_duration(held)})")
    else:
        out.line(f"released {one_line(shown(resource))} (lock id {lock_id})")


@app.command()
def renew(ctx: typer.Context, lock_id: LockIdOption, resource: ResourceArg = None,
          path: PathOption = None, ttl: TtlOption = None, json: JsonOption = False) -> None:
    """Extend a lease that is still held, by its ttl (or --ttl) from now.

    Exit 3 when RES has no lease with that lock id.
    """
    cli = context.get(ctx)
    lease = cli.client().renew_lock(lock_id, ttl, resource=one_name(resource, path))
    out = cli.output(json)
    if out.json:
        out.json_line(lease)
    else:
        out.line(timestamp(lease.expires_at))


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
           json: JsonOption = False) -> None:
    """End someone else's lease (every shared one on RES), and say whose; who did it and
    why go into the journal.

    Exit 3 when RES has no lease.
    """
    cli = context.get(ctx)
    resource = one_name(resource, path)
    client = cli.client(admin=True)
    # The lease as held a moment before the break: it is the one broken unless its
    # holder let go in between and the next in line got RES (then that one is).
    lease = client.get_lock(resource).lease
    client.break_lock(resource, reason)
    out = cli.output(json)
    if out.json:
        out.json_line(lease if lease is not None else {"resource": resource})
    elif lease is not None:
        out.line(f"broke {one_line(shown(resource))}: the lease of {lease.holder} (lock id "
                 f"{lease.lock_id}, fencing token {lease.fencing_token})")
    else:
        out.line(f"broke {one_line(shown(resource))}")


def _run_options(words: list[str], ttl: float | None, wait: float | None, no_wait: bool,
                 shared: bool = False
                 ) -> tuple[list[str], float | None, float | None, bool]:
    """Resources (paths resolved), with ``--path``, ``--shared``, ``--ttl``, ``--wait``
    and ``--no-wait`` picked out from among them.

    Everything after the first resource reaches ``run`` as plain words (so that
    CMD's own options are never taken for ours); our options may still follow
    the resources, as in ``engram lock run RES --ttl 30 -- CMD``.
    """
    found: list[str] = []
    given: list[str] = []
    values = iter(words)
    for word in values:
        option, equals, inline = word.partition("=")
        if option in ("--no-wait", "-n") and not equals:
            no_wait = True
        elif word == "--shared":
            shared = True
        elif option in ("--path", "-p"):
            text = inline if equals else next(values, None)
            if not text:
                raise UsageProblem(f"{option} expects a path")
            given.append(text)
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
            found.append(word)
    return (names(found, given) if found or given else []), ttl, _wait(wait, no_wait), shared


def _split_command(words: list[str]) -> tuple[list[str], list[str]]:
    """What comes before ``--`` and CMD after it. The option parser keeps the ``--`` among
    the words once a resource came before it; with only options before it (``lock run
    --path src/ -- make``) it took it, and CMD is the words the command line had after it."""
    argv = sys.argv[1:]
    if argv.count("--") > words.count("--"):  # the parser took the first one
        after = len(argv) - argv.index("--") - 1
        if not 0 < after <= len(words):
            raise UsageProblem(RUN_USAGE)
        return words[:len(words) - after], words[len(words) - after:]
    if "--" not in words:
        raise UsageProblem(RUN_USAGE)
    split = words.index("--")
    return words[:split], words[split + 1:]


RUN_USAGE = ("usage: engram lock run [RES...] [--path PATH]... [--shared] [--ttl S] "
             "[--wait S | --no-wait] -- CMD [ARGS...]")


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
      engram lock run -n --path README.md -- ./regen-docs.sh
      engram lock run --path src/ -- make fmt
      engram lock run --path 'docs/**/*.md' --shared -- make docs
    """
    before, command = _split_command(resources)
    before = [*(word for given in path or [] for word in ("--path", given)),
              *(["--shared"] if shared else []), *before]
    found, ttl, wait, shared = _run_options(before, ttl, wait, no_wait)
    if not found or not command:
        raise UsageProblem(RUN_USAGE)
    from engram_cli.cli.lockrun import run_holding  # threads and signals: only lock run

    client = context.get(ctx).client()
    raise typer.Exit(run_holding(client, found, command, ttl=ttl, wait=wait, shared=shared))
