"""``engram ping`` (see :mod:`..hot`)."""

from __future__ import annotations

import time

from engram_cli.cli.context import CliContext
from engram_cli.formats.jsonforms import to_plain_data


def ping(cli: CliContext, *, count: int, json: bool) -> int | None:
    """``engram ping``."""
    out = cli.output(json)
    client = cli.client()
    rtts = []
    for _ in range(count):
        started = time.perf_counter()
        pong = client.ping()
        rtt_ms = (time.perf_counter() - started) * 1000
        rtts.append(rtt_ms)
        if out.json:
            out.json_line({**to_plain_data(pong), "rtt_ms": round(rtt_ms, 3)})
        else:
            out.line(f"pong from engramd {pong.daemon_version} (pid {client.daemon_pid}) "
                     f"in {rtt_ms:.3f} ms")
    if count > 1 and not out.json:
        # As ping(8) ends.
        out.line(f"{count} pings, rtt min/avg/max = {min(rtts):.3f}/"
                 f"{sum(rtts) / count:.3f}/{max(rtts):.3f} ms")
    return None
