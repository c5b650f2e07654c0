"""``engram cluster status``: the cluster's journal stream and this machine's view of it."""

from __future__ import annotations

import typer

from engram_cli.cli import context
from engram_cli.cli.context import JsonOption

app = typer.Typer(help="Cluster mode: the journal shared by every machine of a deployment.",
                  no_args_is_help=True, add_completion=False)


@app.command("status")
def status(ctx: typer.Context, json: JsonOption = False) -> None:
    """Show the journal stream (its replicas and their lag), this machine's view of it
    (its lag), and the engramd instances of the deployment seen in the last 30 s."""
    cli = context.get(ctx)
    out = cli.output(json)
    report = cli.client(admin=True).cluster()
    if out.json:
        out.json_line(report)
        return
    state = report.status
    lag = "unknown" if state.lag is None else str(state.lag)
    out.fields("cluster", [
        ("deployment", state.deployment), ("stream", state.stream),
        ("servers", ", ".join(state.servers)),
        ("reachable", "yes" if state.reachable
         else f"NO: refused: {state.refused}" if state.refused
         else "NO: writes are refused"),
        ("stream last message", "unknown" if state.stream_last_seq is None
         else str(state.stream_last_seq)),
        ("this machine", state.machine),
        ("view at message", str(state.view_stream_seq)), ("view lag (messages)", lag),
        ("replicas", str(state.replicas)), ("leader", state.leader or "unknown"),
        ("leases", "read" if state.leases_synced
         else "NOT read yet: leases cannot be taken or ended"),
        *([("view stopped", state.failure)] if state.failure else []),
    ])
    out.table("replicas", ["replica", "role", "current", "lag", "last active"],
              [[state.leader or "?", "leader", "yes", "0", "-"]]
              + [[peer.name, "offline" if peer.offline else "follower",
                  "yes" if peer.current else "NO", str(peer.lag),
                  f"{peer.active_seconds:.3f}s ago"] for peer in state.peers],
              numeric=("lag",))
    out.table("machines seen", ["machine", "host", "socket", "view at", "lag", "version"],
              [[m.machine, m.host, m.socket, str(m.stream_seq),
                "?" if state.stream_last_seq is None
                else str(max(0, state.stream_last_seq - m.stream_seq)), m.version]
               for m in report.machines], numeric=("view at", "lag"))
