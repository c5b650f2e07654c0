"""``engram lock acquire|release|renew|show|list|break|run``: leases on shared resources."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import threading
import time
from typing import Annotated

import typer

from engram_cli import context, output
from engram_cli.client import Client
from engram_cli.context import JsonOption
from engram_cli.errors import EngramError, ExitCode, UsageProblem
from engramd.protocol import Lease, LeaseLost, LockState

app = typer.Typer(help="Take and manage leases on shared resources.", no_args_is_help=True)

ResourcesArg = Annotated[list[str], typer.Argument(
    metavar="RES...", help="Resource paths, such as repo/README.md or deploy:prod.")]
ResourceArg = Annotated[str, typer.Argument(metavar="RES", help="A resource path.")]
TtlOption = Annotated[float | None, typer.Option(
    "--ttl", metavar="SECONDS", help="How long the lease lasts (default: the daemon's, 60).")]
WaitOption = Annotated[float, typer.Option(
    "--wait", "-w", metavar="SECONDS", min=0.0,
    help="Wait this long in line for a held resource (default: do not wait).")]
LockIdOption = Annotated[str, typer.Option("--lock-id", metavar="ID",
                                           help="The lock id acquire printed.")]

GRACE_SECONDS = 5.0
"""How long CMD gets between SIGTERM and SIGKILL when its lease is lost."""


def _left(lease: Lease) -> str:
    seconds = (lease.expires_at - dt.datetime.now(dt.UTC)).total_seconds()
    return f"{max(0.0, seconds):.1f}s"


def _rows(states: list[LockState]) -> list[list[str]]:
    rows = []
    for state in states:
        lease = state.lease
        waiters = ",".join(f"{w.position}:{w.agent}" for w in state.waiters) or "-"
        if lease is None:
            rows.append([state.resource, "-", "-", "-", "-", waiters])
        else:
            rows.append([state.resource, lease.holder, str(lease.fencing_token),
                         lease.expires_at.isoformat(timespec="seconds"), _left(lease), waiters])
    return rows


@app.command()
def acquire(
    ctx: typer.Context,
    resources: ResourcesArg,
    ttl: TtlOption = None,
    wait: WaitOption = 0.0,
    pid: Annotated[int | None, typer.Option(
        "--pid", metavar="PID",
        help="Release as soon as this process exits (a shell script: --pid $$).")] = None,
    json: JsonOption = False,
) -> None:
    """Lease every resource together (or none) and print the lock ids.

    Exit 4 when a resource stays held (5 after --wait runs out), naming the holder.
    """
    cli = context.get(ctx)
    out = cli.output(json)
    leases = cli.client().acquire_lock(resources, ttl=ttl, wait=wait, pid=pid)
    for lease in leases:
        if out.json:
            out.json_line(lease)
        else:
            out.line(lease.lock_id)


@app.command()
def release(ctx: typer.Context, resource: ResourceArg, lock_id: LockIdOption) -> None:
    """End your lease (only its holder can)."""
    client = context.get(ctx).client()
    _check_resource(client, resource, lock_id)
    client.release_lock(lock_id)


def _check_resource(client: Client, resource: str, lock_id: str) -> None:
    state = client.get_lock(resource)
    if state.lease is not None and state.lease.lock_id != lock_id:
        holder = "you" if state.lease.holder == client.agent_id else state.lease.holder
        raise EngramError(f"{resource} is held by {holder} under another lock id")


@app.command()
def renew(ctx: typer.Context, resource: ResourceArg, lock_id: LockIdOption,
          ttl: TtlOption = None, json: JsonOption = False) -> None:
    """Extend a lease that is still held, by its ttl (or --ttl) from now."""
    cli = context.get(ctx)
    client = cli.client()
    _check_resource(client, resource, lock_id)
    lease = client.renew_lock(lock_id, ttl)
    out = cli.output(json)
    if out.json:
        out.json_line(lease)
    else:
        out.line(lease.expires_at.isoformat())


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
    out.fields(resource, zip(["resource", "holder", "fencing_token", "expires_at", "left",
                              "waiters"], row, strict=True))


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
    out.table("leases", ["resource", "holder", "token", "expires", "left", "waiting"],
              _rows(states), header=False)


@app.command("break")
def break_(ctx: typer.Context, resource: ResourceArg,
           reason: Annotated[str, typer.Option("--reason", help="Why (recorded).")]) -> None:
    """End someone else's lease; who did it and why go into the journal."""
    context.get(ctx).client(admin=True).break_lock(resource, reason)


class _Keeper(threading.Thread):
    """Renews the leases while CMD runs and notices the moment one is lost."""

    def __init__(self, client: Client, leases: list[Lease], child: subprocess.Popen[bytes]
                 ) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.leases = leases
        self.child = child
        self.stop = threading.Event()
        self.lost: str | None = None
        self.interval = max(0.05, min(lease.ttl for lease in leases) / 3)
        self._last = time.monotonic()  # just granted: the first renewal is due later

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                # Short slices: when CMD ends, engram exits without waiting long.
                notice = self.client.lease_lost(min(self.interval, 0.02))
                if notice is not None:
                    self._lose(_lost(notice))
                    return
                if self.stop.is_set():
                    return
                if self._due():
                    for lease in self.leases:
                        self.client.renew_lock(lease.lock_id)
        except EngramError as exc:
            # A renewal that finds the lease gone usually has the daemon's notice
            # right behind it, which says why; wait a moment for it.
            notice = None
            with contextlib.suppress(EngramError):
                notice = self.client.lease_lost(0.5)
            if notice is not None:
                self._lose(_lost(notice))
            else:
                self._lose(f"lease lost: {exc}")

    def _due(self) -> bool:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            return True
        return False

    def _lose(self, why: str) -> None:
        if self.stop.is_set():
            return
        self.lost = why
        output.error(f"{why}; stopping the command")
        _terminate(self.child)


def _lost(notice: LeaseLost) -> str:
    return f"lease on {notice.lease.resource} {notice.reason} (by {notice.by})"


def _terminate(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        child.kill()


def _run_options(words: list[str], ttl: float | None, wait: float
                 ) -> tuple[list[str], float | None, float]:
    """Resources, with ``--ttl``/``--wait`` picked out from among them.

    Everything after the first resource reaches ``run`` as plain words (so that
    CMD's own options are never taken for ours); the two options may still
    follow the resources, as in ``engram lock run RES --ttl 30 -- CMD``.
    """
    names: list[str] = []
    values = iter(words)
    for word in values:
        option, equals, inline = word.partition("=")
        if option in ("--ttl", "--wait", "-w"):
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
    return names, ttl, wait


@app.command(context_settings={"allow_interspersed_args": False})
def run(
    ctx: typer.Context,
    resources: Annotated[list[str], typer.Argument(
        metavar="RES... -- CMD [ARGS...]",
        help="Resources, then -- and the command to run while holding them.")],
    ttl: TtlOption = None,
    wait: WaitOption = 0.0,
) -> None:
    """Run CMD holding leases (like flock): renewed while it runs, released when it ends.

    CMD gets ENGRAM_LOCK_ID, ENGRAM_FENCING_TOKEN and ENGRAM_FENCE (RES:TOKEN, which
    `engram unit create` uses as its fence). Its exit status is passed through; if
    a lease is lost, CMD gets SIGTERM (SIGKILL 5 s later) and engram exits 6.
    """
    if "--" not in resources:
        raise UsageProblem("usage: engram lock run RES... [--ttl S] [--wait S] -- CMD [ARGS...]")
    split = resources.index("--")
    names, ttl, wait = _run_options(resources[:split], ttl, wait)
    command = resources[split + 1:]
    if not names or not command:
        raise UsageProblem("usage: engram lock run RES... [--ttl S] [--wait S] -- CMD [ARGS...]")
    client = context.get(ctx).client()
    leases = client.acquire_lock(names, ttl=ttl, wait=wait, bind_connection=True)
    env = {**os.environ,
           "ENGRAM_LOCK_ID": ",".join(lease.lock_id for lease in leases),
           "ENGRAM_FENCING_TOKEN": ",".join(str(lease.fencing_token) for lease in leases),
           "ENGRAM_FENCE": ",".join(f"{lease.resource}:{lease.fencing_token}"
                                    for lease in leases)}
    try:
        child = subprocess.Popen(command, env=env)
    except OSError as exc:
        for lease in leases:
            client.release_lock(lease.lock_id)
        raise EngramError(f"cannot run {command[0]}: {exc.strerror}") from None
    forwarded = {signum: signal.signal(signum, lambda n, _f: child.send_signal(n))
                 for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    keeper = _Keeper(client, leases, child)
    keeper.start()
    try:
        status = child.wait()
    finally:
        keeper.stop.set()
        keeper.join()
        for signum, previous in forwarded.items():
            signal.signal(signum, previous)
    if keeper.lost is not None:
        raise typer.Exit(int(ExitCode.LEASE_LOST))
    for lease in leases:
        client.release_lock(lease.lock_id)
    raise typer.Exit(status if status >= 0 else 128 - status)

