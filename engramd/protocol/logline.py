"""The daemon log's line format (logfmt), shared by engramd and ``engram daemon logs``.

One event per line, ``key=value`` pairs in a fixed order::

    ts=2026-11-23T20:22:25.170Z level=info pid=4242 logger=engramd.server msg="..."

Values with spaces, quotes or ``=`` are double-quoted with backslash escapes;
newlines (a traceback) are escaped, so a line is always one event.
"""

from __future__ import annotations

import re

LEVELS = ("debug", "info", "warning", "error", "critical")
_BARE = re.compile(r'^[^\s"=\\]+$')
_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def quote(value: str) -> str:
    if value and _BARE.match(value):
        return value
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"')
               .replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t"))
    return f'"{escaped}"'


def format_line(pairs: list[tuple[str, str]]) -> str:
    return " ".join(f"{key}={quote(value)}" for key, value in pairs)


def _unquote(value: str) -> str:
    if not value.startswith('"'):
        return value
    out = []
    chars = iter(value[1:-1])
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            out.append({"n": "\n", "r": "\r", "t": "\t"}.get(following, following))
        else:
            out.append(char)
    return "".join(out)


def parse_line(line: str) -> dict[str, str]:
    """The pairs of one line; a line in another format gives ``{}``."""
    return {key: _unquote(value) for key, value in _PAIR.findall(line)}


def at_least(line: str, level: str) -> bool:
    """Whether *line* is at *level* or more severe (lines without a level pass)."""
    found = parse_line(line).get("level")
    if found not in LEVELS:
        return True
    return LEVELS.index(found) >= LEVELS.index(level)
