"""``engram cluster status``: the cluster's journal stream and this machine's view of it."""

from __future__ import annotations

import typer

from engram_cli.cli import context
from engram_cli.cli.options import JsonOption

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
    stale = not state.reachable or state.facts_age is None or state.facts_age > FRESH_SECONDS
    facts = _age(state.facts_age)
    out.fields("cluster", [
        ("deployment", state.deployment), ("stream", state.stream),
        ("servers", ", ".join(state.servers) + (
            "" if state.servers_answering is None
            else f" ({state.servers_answering} of {len(state.servers)} answer)")),
        ("reachable", "yes" if state.reachable else
         "NO" + (f" for {state.unreachable_for:.0f}s" if state.unreachable_for else "")
         + (f": refused: {state.refused}" if state.refused else "")),
        ("writes", (("accepted" + (f" ({facts})" if stale else ""))
                    if state.write_error is None else f"REFUSED: {state.write_error}")),
        ("stream last message", ("unknown" if state.stream_last_seq is None
                                 else str(state.stream_last_seq)) + (f" ({facts})" if stale
                                                                     else "")),
        ("this machine", state.machine),
        ("view at message", str(state.view_stream_seq)), ("view lag (messages)", lag),
        ("replicas", str(state.replicas)), ("leader", (state.leader or "unknown") + (
            f" ({facts})" if stale and state.leader else "")),
        ("leases", "read" if state.leases_synced
         else "NOT read yet: leases cannot be taken or ended"),
        *([("view stopped", state.failure)] if state.failure else []),
    ])
    # What the stream's leader said of its replicas: as of when it last answered. Not
    # heard from lately, nothing is claimed of them.
    out.table(f"replicas ({facts})" if stale else "replicas",
              ["replica", "role", "current", "lag", "last active"],
              [[state.leader or "?", "leader" if not stale else "leader?",
                "yes" if not stale else "unknown", "0" if not stale else "?", "-"]]
              + [[peer.name, "offline" if peer.offline else "follower",
                  "unknown" if stale else ("yes" if peer.current else "NO"),
                  "?" if stale else str(peer.lag),
                  "?" if stale else f"{peer.active_seconds:.3f}s ago"]
                 for peer in state.peers],
              numeric=("lag",))
    seen = "machines seen" + ("" if state.reachable or state.machines_age is None
                              else f" ({_age(state.machines_age)})")
    out.table(seen, ["machine", "host", "socket", "view at", "lag", "version"],
              [[m.machine, m.host, m.socket, str(m.stream_seq),
                "?" if state.stream_last_seq is None
                else str(max(0, state.stream_last_seq - m.stream_seq)), m.version]
               for m in report.machines], numeric=("view at", "lag"))


FRESH_SECONDS = 1.0
"""Facts older than this (or read before the cluster stopped answering) are shown with
their age, and the replicas' state as unknown: engramd reads them again for each status
(bounded by a moment), so older ones are of a cluster that did not answer then."""


def _age(seconds: float | None) -> str:
    return "never read" if seconds is None else f"as of {seconds:.0f}s ago"
