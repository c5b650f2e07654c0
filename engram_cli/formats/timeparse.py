"""Times on the command line: ``now``, ``90s``, ``10m``, ``2h``, ``3d`` ago, or ISO 8601."""

from __future__ import annotations

import datetime as dt
import re

_RELATIVE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(s|m|h|d|w)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``10m``, ``2h``.

    Raises:
        ValueError: with a message that shows the accepted forms.
    """
    text = text.strip()
    match = _RELATIVE.fullmatch(text)
    try:
        seconds = float(match[1]) * _UNITS[match[2]] if match else float(text)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ValueError(f"cannot read duration {text!r}: use 90, 90s, 10m or 2h")
    return seconds


def parse_time(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """An aware UTC datetime; naive ISO times are taken as local time. A time beyond
    what a datetime holds (before year 1, after 9999: ``10000000d``) is the first or
    the last it holds: every unit is after the one and before the other.

    Raises:
        ValueError: with a message that shows the accepted forms.
    """
    now = now or dt.datetime.now(dt.UTC)
    text = text.strip()
    if text == "now":
        return now
    match = _RELATIVE.fullmatch(text)
    if match:
        try:
            return now - dt.timedelta(seconds=float(match[1]) * _UNITS[match[2]])
        except OverflowError:
            return dt.datetime.min.replace(tzinfo=dt.UTC)
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"cannot read time {text!r}: use now, 30s, 10m, 2h, 3d, 1w (ago) or ISO 8601 "
            "such as 2026-11-23T14:00"
        ) from None
    try:
        if parsed.tzinfo is None:
            parsed = parsed.astimezone()
        return parsed.astimezone(dt.UTC)
    except (OverflowError, ValueError):  # within a day of the ends: past them in UTC
        end = dt.datetime.min if parsed.year == 1 else dt.datetime.max
        return end.replace(tzinfo=dt.UTC)
