"""``engram ping``, ``engram status``, ``engram version``."""

# (No postponed annotations: see engram_cli/app.py.)

from typing import Annotated

import typer

from engram_cli import __version__
from engram_cli.cli import context
from engram_cli.cli.hot import info as hot
from engram_cli.cli.options import JsonOption
from engram_cli.client.errors import EngramError
from engram_cli.formats.jsonforms import to_plain_data
from engram_cli.formats.text import format_duration
from engramd.protocol import PROTOCOL_VERSION, resolve_data_dir


def ping(
    ctx: typer.Context,
    count: Annotated[int, typer.Option("--count", "-n", min=1,
                                       help="Send this many pings.")] = 1,
    json: JsonOption = False,
) -> int | None:
    """Check that the daemon answers, and how fast (round trip over the socket)."""
    return hot.ping(context.get(ctx), count=count, json=json)


def help_(
    ctx: typer.Context,
    words: Annotated[list[str] | None, typer.Argument(
        metavar="[COMMAND]...", help="The command to explain (none: engram itself).")] = None,
) -> None:
    """Show the help of a command: ``engram help unit create`` is ``engram unit create
    --help``."""
    from engram_cli.cli.app import main  # the root, to parse the words as it would

    raise typer.Exit(main([*(words or []), "--help"]))


def status(ctx: typer.Context, json: JsonOption = False) -> None:
    """Show the daemon's state, paths, counts and limits."""
    cli = context.get(ctx)
    out = cli.output(json)
    reply = cli.client(admin=True).status()
    if out.json:
        out.json_line(reply)
        return
    data = to_plain_data(reply)
    data["uptime"] = format_duration(reply.uptime)
    out.fields("engramd", data.items())


def version(ctx: typer.Context, json: JsonOption = False) -> None:
    """Show the versions of engram and of the running daemon (never starts one)."""
    cli = context.get(ctx)
    out = cli.output(json)
    daemon: dict[str, object] | None
    try:
        client = cli.client(autostart=False, admin=True)
        welcome = client.status()
        daemon = {"daemon_version": welcome.daemon_version,
                  "protocol_version": welcome.protocol_version, "pid": welcome.pid}
    except EngramError:
        daemon = None
    if out.json:
        out.json_line({"version": __version__, "protocol_version": PROTOCOL_VERSION,
                       "daemon": daemon})
        return
    out.line(f"engram {__version__} (protocol {PROTOCOL_VERSION})")
    if daemon is None:
        out.line("engramd not running")
    else:
        out.line(f"engramd {daemon['daemon_version']} (protocol {daemon['protocol_version']}, "
                 f"pid {daemon['pid']})")


def stats(
    ctx: typer.Context,
    json: JsonOption = False,
    prometheus: Annotated[bool, typer.Option(
        "--prometheus", help="Print the Prometheus text exposition format.")] = False,
) -> None:
    """Show the daemon's counters, gauges and latency histograms (p50, p99)."""
    cli = context.get(ctx)
    out = cli.output(json)
    reply = cli.client(admin=True).stats()
    from engram_cli.formats.prometheus import prometheus_text, quantile  # only this command

    if prometheus:
        out.write(prometheus_text(reply))
        return
    if out.json:
        out.json_line({**to_plain_data(reply), "gauges": {
            name: _count_or_float(value) for name, value in reply.gauges.items()}})
        return
    out.fields("counters", ((name, str(value)) for name, value in reply.counters.items()))
    out.fields("gauges", ((name, _gauge(name, value) if out.is_terminal
                           else str(_count_or_float(value)))
                          for name, value in reply.gauges.items()))
    from engram_cli.formats.diskview import disk_rows

    out.table("disk", ["part", "bytes", "per_unit", "holds"],
              disk_rows(reply.gauges, human=out.is_terminal), numeric=("bytes", "per_unit"))
    # People read milliseconds; a program gets the unit the names end in (_seconds),
    # as Prometheus has it. The unit is in the column names either way.
    unit, scale, places = ("ms", 1000, 3) if out.is_terminal else ("seconds", 1, 6)
    columns = ["count", f"mean_{unit}", f"p50_{unit}", f"p99_{unit}"]
    rows = []
    for name, histogram in reply.histograms.items():
        p50, p99 = quantile(histogram, 0.5), quantile(histogram, 0.99)
        mean = histogram.sum / histogram.count if histogram.count else None
        rows.append([name, str(histogram.count),
                     *("-" if value is None else f"{value * scale:.{places}f}"
                       for value in (mean, p50, p99))])
    out.table("latency", ["histogram", *columns], rows, numeric=tuple(columns))


def _count_or_float(value: float) -> int | float:
    """Gauges travel as floats; the many that count things read better as integers."""
    return int(value) if float(value).is_integer() else value


def _gauge(name: str, value: float) -> str:
    if name.split("{", 1)[0].endswith("_bytes"):  # (disk_bytes{part="wal"} too)
        return f"{value / 2**20:.1f} MiB" if value >= 2**20 else f"{value:.0f} B"
    return f"{value:g}"


def doctor(ctx: typer.Context, json: JsonOption = False, deep: Annotated[bool, typer.Option(
        "--deep", help="Also walk the whole store against the log (engram verify).")] = False,
        ) -> None:
    """Check the daemon, its files and its health; one line per check, with a fix.

    Exits 0 when every check is ok, 1 otherwise. Never starts the daemon.
    """
    cli = context.get(ctx)
    out = cli.output(json)
    client = cli.unconnected_client()
    findings = []
    import dataclasses

    from engram_cli.cli.doctor import Doctor  # only this command needs them

    for finding in Doctor(client, resolve_data_dir(None, cli.env), deep=deep).run():
        findings.append(finding)
        if out.json:
            out.json_line(dataclasses.asdict(finding))
            continue
        fix = f" (fix: {finding.fix})" if finding.fix else ""
        style = {"ok": "green", "warn": "yellow", "fail": "bold red"}.get(finding.status)
        out.line(f"{finding.status:<4}  {finding.check:<12}  {finding.detail}{fix}", style=style)
    if any(finding.status in ("warn", "fail") for finding in findings):
        raise typer.Exit(1)
