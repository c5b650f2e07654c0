"""engram's data as short plain text: times, durations, a payload on one line, and
any text made safe to show on a terminal.

The forms every face shares (the command line's tables and plain rows, the brief an
agent reads, the gateway's pages), so that a time or a preview reads the same
everywhere.
"""

from __future__ import annotations

import datetime as dt

from engramd.protocol import Unit

# What a terminal would act on rather than show: C0 controls but tab and newline (an
# escape sequence starts with ESC; a carriage return overwrites the line), DEL, C1
# controls (an 8-bit CSI), and the bidirectional overrides and isolates that make text
# read in another order than it is stored.
_CONTROLS = [*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0)]
_REORDERING = [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
# A file name's bytes that are not UTF-8 reach Python as lone surrogates
# (surrogateescape): shown as the bytes they stand for.
_UNDECODED = {0xDC00 + byte: f"\\x{byte:02x}" for byte in range(0x80, 0x100)}
UNPRINTABLE = {code: f"\\x{code:02x}" for code in _CONTROLS} | \
    {code: f"\\u{code:04x}" for code in _REORDERING} | _UNDECODED
_PRINTABLE = str.maketrans(UNPRINTABLE)


def printable(text: str) -> str:
    """*text* as a terminal shows it safely: every character a terminal would act on
    written as an escape (``\\x1b``, ``\\u202e``); tabs and newlines stay."""
    return text.translate(_PRINTABLE)


_CELL = str.maketrans(
    {**UNPRINTABLE, "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def cell(text: str) -> str:
    """*text* in a table on a terminal: :func:`printable`, with tabs, newlines and carriage
    returns written as :func:`one_line` writes them so that a row is one line;
    backslashes stay as a person reads them (piped rows, which programs read, escape them
    as well: :func:`one_line`)."""
    return text.translate(_CELL)


_ONE_LINE = str.maketrans(
    {**UNPRINTABLE, "\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def one_line(text: str) -> str:
    """*text* (a name: a resource, a path) on one line whatever it holds: a backslash,
    tab, newline or carriage return written ``\\\\``, ``\\t``, ``\\n``, ``\\r``, as
    :func:`printable` writes the rest, so a name never makes a line of its own."""
    return text.translate(_ONE_LINE)


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
