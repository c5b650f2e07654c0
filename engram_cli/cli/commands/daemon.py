"""``engram daemon start|stop|restart|status|logs``: the daemon's lifecycle."""

from __future__ import annotations

import enum
import os
import sys
import time
from typing import Annotated

import msgspec
import typer

from engram_cli.cli import context, output
from engram_cli.cli.options import JsonOption
from engram_cli.cli.output import note
from engram_cli.client.autostart import (
    START_TIMEOUT,
    lost_while_starting,
    process_gone,
    start_daemon,
)
from engram_cli.client.errors import ClientTimeout, Unavailable
from engram_cli.formats.jsonforms import to_plain_data
from engram_cli.formats.text import format_duration, timestamp
from engramd.protocol import log_file_in, resolve_data_dir
from engramd.protocol.logline import at_least, parse_line


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


app = typer.Typer(help="Start, stop and inspect the engram daemon.", no_args_is_help=True,
                  add_completion=False)

TimeoutOption = Annotated[
    float, typer.Option("--timeout", min=0.1, help="Seconds to wait for the daemon.")
]
_POLL_INTERVAL = 0.02
_REINDEX_POLL = 0.1


def _stop(cli: context.CliContext, timeout: float) -> int | None:
    """Stop the daemon if one runs; returns its pid, or None if none ran."""
    client = cli.unconnected_client()
    try:
        client.connect()
    except Unavailable:
        return None
    pid = client.daemon_pid
    assert pid is not None
    client.shutdown()
    client.close()
    deadline = time.monotonic() + timeout
    while os.path.exists(client.socket_path) or not process_gone(pid):
        if time.monotonic() > deadline:
            raise ClientTimeout(f"engramd (pid {pid}) did not stop within {timeout:g}s")
        time.sleep(_POLL_INTERVAL)
    return pid


def _start(cli: context.CliContext, timeout: float, json: bool) -> None:
    client = cli.unconnected_client()
    started = start_daemon(client.socket_path, env=cli.env, timeout=timeout)
    try:
        client.connect()
        status = client.wait_ready(timeout)
        if client.notice:
            note(f"warning: {client.notice}")
    except Unavailable as lost:
        if not started:
            raise
        # It answered, then stopped before it was ready: the error it logs on its way
        # out says why.
        raise lost_while_starting(client.socket_path, cli.env, lost) from None
    finally:
        client.close()
    out = cli.output(json)
    if out.json:
        out.json_line({"started": started, **to_plain_data(status)})
    elif started:
        out.line(f"started engramd (pid {status.pid}) on {status.socket}")
    else:
        out.line(f"engramd is already running (pid {status.pid}) on {status.socket}")


@app.command()
def start(ctx: typer.Context, timeout: TimeoutOption = START_TIMEOUT,
          json: JsonOption = False) -> None:
    """Start the daemon in the background (log in the data dir), unless it runs."""
    _start(context.get(ctx), timeout, json)


@app.command()
def stop(ctx: typer.Context, timeout: TimeoutOption = 10.0, json: JsonOption = False) -> None:
    """Stop the daemon gracefully and wait until it has gone (exit 0 when none ran)."""
    cli = context.get(ctx)
    pid = _stop(cli, timeout)
    out = cli.output(json)
    if out.json:
        out.json_line({"stopped": pid is not None, "pid": pid})
    else:
        out.line("engramd is not running" if pid is None else f"stopped engramd (pid {pid})")


@app.command()
def restart(ctx: typer.Context, timeout: TimeoutOption = 10.0,
            json: JsonOption = False) -> None:
    """Stop the daemon if it runs, then start it."""
    cli = context.get(ctx)
    _stop(cli, timeout)
    _start(cli, timeout, json)


@app.command()
def status(ctx: typer.Context, json: JsonOption = False) -> None:
    """Say whether the daemon runs (never starts it); exit 69 when it does not."""
    cli = context.get(ctx)
    out = cli.output(json)
    client = cli.unconnected_client()
    try:
        client.connect()
    except Unavailable:
        raise Unavailable(f"engramd is not running on {client.socket_path}") from None
    reply = client.status()
    client.close()
    if out.json:
        out.json_line(reply)
        return
    out.fields("engramd", [
        ("state", f"running ({reply.state})"),
        ("pid", reply.pid),
        ("version", reply.daemon_version),
        ("uptime", format_duration(reply.uptime)),
        ("socket", reply.socket),
        ("data_dir", reply.data_dir),
        ("log_file", reply.log_file or "standard error"),
    ])


@app.command()
def cuts(
    ctx: typer.Context,
    acknowledge: Annotated[bool, typer.Option(
        "--acknowledge", help="Clear these notes (all of them without IDs): you have read "
        "them and kept what you needed of the bytes set aside.")] = False,
    ids: Annotated[list[str] | None, typer.Argument(
        metavar="[ID]...", help="The notes to clear (with --acknowledge).")] = None,
    json: JsonOption = False,
) -> None:
    """Show the log tails engramd cut at start-up (a torn write, or damage to a record
    already acknowledged), kept until acknowledged; with --acknowledge, clear them."""
    cli = context.get(ctx)
    out = cli.output(json)
    client = cli.client(admin=True)
    shown = client.acknowledge_cuts(ids or []) if acknowledge else client.status().wal_cuts
    if out.json:
        for cut in shown:
            out.json_line(cut)
        return
    if not shown:
        out.line("no log tail was cut" if not acknowledge else "nothing to acknowledge")
        return
    out.table("log tails cut at start-up" + (" (acknowledged)" if acknowledge else ""),
              ["id", "at", "segment", "offset", "bytes", "seqs", "was acknowledged", "saved"],
              ([cut.id, timestamp(cut.at), cut.segment, str(cut.offset), str(cut.bytes),
                _seqs(cut.seq, cut.last_seq), cut.acknowledged, cut.saved] for cut in shown),
              numeric=("offset", "bytes"))
    if not acknowledge and out.is_terminal:
        for cut in shown:
            note(cut.summary)


def _seqs(first: int | None, last: int | None) -> str:
    if first is None:
        return "-"
    return str(first) if last in (None, first) else f"{first}-{last}"


def _log_path(cli: context.CliContext) -> str:
    client = cli.unconnected_client()
    try:
        client.connect()
    except Unavailable:
        return log_file_in(resolve_data_dir(None, cli.env))
    reply = client.status()
    client.close()
    if reply.log_file is None:
        raise Unavailable(
            "engramd logs to its standard error (under systemd: "
            "journalctl --user -u engramd)"
        )
    return reply.log_file


@app.command()
def logs(
    ctx: typer.Context,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0,
                                       help="Show this many last lines.")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f",
                                         help="Keep printing new lines until Ctrl-C.")] = False,
    level: Annotated[LogLevel, typer.Option(
        "--level", "-l", help="Show only lines at this level or more severe.")] = LogLevel.DEBUG,
    json: JsonOption = False,
) -> None:
    """Show the log of a daemon started by engram (in the data dir), in logfmt (with
    --json one object per line, its keys and values)."""
    cli = context.get(ctx)
    path = _log_path(cli)
    as_json = cli.output(json).json
    try:
        file = open(path, "rb")  # noqa: SIM115 (kept open while following)
    except FileNotFoundError:
        raise Unavailable(f"no daemon log at {path}") from None
    with file:
        kept = [line for line in file.read().splitlines(keepends=True)
                if at_least(line.decode(errors="replace"), level.value)]
        out = sys.stdout.buffer
        out.writelines(_shown(line, as_json) for line in (kept[-lines:] if lines else []))
        out.flush()
        if not follow:
            return
        partial = b""
        try:
            while True:
                chunk = file.read()
                if not chunk:
                    time.sleep(0.2)
                    continue
                *complete, partial = (partial + chunk).split(b"\n")
                for line in complete:
                    if at_least(line.decode(errors="replace"), level.value):
                        out.write(_shown(line + b"\n", as_json))
                out.flush()
        except KeyboardInterrupt:
            return


def _shown(line: bytes, as_json: bool) -> bytes:
    """A log line as it is, or as one JSON object of its pairs (``{"line": ...}`` for a
    line in another format, such as a traceback's)."""
    if not as_json:
        return line
    text = line.decode(errors="replace").rstrip("\n")
    return msgspec.json.encode(parse_line(text) or {"line": text}) + b"\n"


@app.command()
def reindex(
    ctx: typer.Context,
    wait: Annotated[bool, typer.Option(
        "--wait/--no-wait", help="Wait until the index has caught up (default), or not.")
    ] = True,
    json: JsonOption = False,
) -> None:
    """Rebuild the search index from the store, with a progress bar on a terminal;
    searches find less until it has caught up."""
    cli = context.get(ctx)
    out = cli.output(json)
    client = cli.client(admin=True)
    began = time.monotonic()
    client.reindex()
    journal = client.status().journal
    assert journal is not None  # the reindex was answered: the journal is ready
    target = journal.last_seq
    indexed = journal.indexed_seq
    with output.progress(out, "reindexing", total=target) as advance:
        while wait and indexed < target:
            time.sleep(_REINDEX_POLL)
            journal = client.status().journal
            assert journal is not None
            advance(journal.indexed_seq - indexed)
            indexed = journal.indexed_seq
    seconds = time.monotonic() - began
    if out.json:
        out.json_line({"indexed_seq": indexed, "last_seq": target, "units": journal.units,
                       "done": indexed >= target, "seconds": round(seconds, 3)})
    elif indexed >= target:
        out.line(f"search index rebuilt: {journal.units:,} units, events up to seq "
                 f"{target:,}, in {seconds:.1f}s")
    else:
        out.line(f"search index rebuilding in the background: events up to seq {target:,} "
                 "(engram status shows indexed_seq)")
