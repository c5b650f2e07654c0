"""engram's data as short plain text: times, durations, a payload on one line.

The forms every face shares (the command line's tables and plain rows, the brief an
agent reads, the gateway's pages), so that a time or a preview reads the same
everywhere.
"""

from __future__ import annotations

import datetime as dt

from engramd.protocol import Unit


def timestamp(value: dt.datetime) -> str:
    """The one form of a time in plain and JSON output: RFC 3339, UTC, ``Z``."""
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def preview(unit: Unit, width: int = 200) -> str:
    """The payload on one line: text with newlines and tabs flattened, or its size."""
    try:
        text = unit.payload.decode("utf-8")
    except UnicodeDecodeError:
        return f"<{len(unit.payload)} bytes>"
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
