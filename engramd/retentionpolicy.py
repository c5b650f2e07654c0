"""Retention policies as the config file writes them (SPECS §3.7, §3.4 *Retention*).

Pure: TOML values in, :class:`Policy` out, or a ``ValueError`` that says which policy
and why (the loader makes it a configuration error: exit 2 at start)::

    [retention]
    archive_dir = "/srv/engram-archive"   # default: <data dir>/archive
    interval = 3600                        # seconds between runs

    [[retention.policy]]
    context = "ci/*"        # an id, or a prefix ending in *
    max_age = "30d"         # units older than this go (s, m, h, d, w; or seconds)
    max_units = 100000      # beyond the newest this many, the oldest go
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from engramd.protocol import bounds

_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)\s*", re.ASCII)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_DURATION = 100 * 365.25 * 86400
"""The longest duration taken (100 years): a cutoff of now minus it stays a time."""
MAX_UNITS = 2**63 - 1
_FIELDS = ("context", "max_age", "max_units")
_CONTEXT = re.compile(bounds.CONTEXT_ID_PATTERN)


@dataclass(frozen=True)
class Policy:
    context: str
    """A context id, or a prefix of ids ending in ``*`` (``*`` alone: every context)."""
    max_age: float | None
    """Seconds: a unit older than this (by its time) goes; None: no age limit."""
    max_units: int | None
    """A context keeps its newest this many; None: no count limit."""

    def covers(self, context_id: str) -> bool:
        if self.context.endswith("*"):
            return context_id.startswith(self.context[:-1])
        return context_id == self.context


def shadowed(policies: tuple[Policy, ...]) -> list[tuple[Policy, Policy]]:
    """``(later, earlier)`` for each policy that covers no context because an earlier one
    covers every context it could (``*`` first, then ``keep/x``): the first that covers a
    context is its own, so the later one never applies."""
    found = []
    for number, later in enumerate(policies):
        wider = next((earlier for earlier in policies[:number] if _covers_all(earlier, later)),
                     None)
        if wider is not None:
            found.append((later, wider))
    return found


def _covers_all(earlier: Policy, later: Policy) -> bool:
    if earlier.context.endswith("*"):
        return later.context.removesuffix("*").startswith(earlier.context[:-1])
    return earlier.context == later.context


def format_duration(seconds: float) -> str:
    """``"30d"``, ``"12h"``, ``"90m"`` or ``"45s"``: the largest unit that divides it."""
    for unit in ("w", "d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def parse_duration(value: Any, what: str) -> float:
    """Seconds from ``"30d"``, ``"12h"``, ``"90m"``, ``"45s"``, ``"2w"`` or a number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    else:
        raise ValueError(f"{what} must be a duration such as \"30d\", \"12h\", \"90m\" or a "
                         f"number of seconds, got {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{what} must be more than 0 and finite, got {value!r}")
    if seconds > MAX_DURATION:
        raise ValueError(f"{what} must be at most 100 years, got {value!r}")
    return seconds


def parse_policies(value: Any) -> tuple[Policy, ...]:
    """The ``[[retention.policy]]`` tables, checked; the first that covers a context is
    the one applied to it, so a narrower policy goes before a wider one."""
    if not isinstance(value, list):
        raise ValueError("retention.policy must be an array of tables ([[retention.policy]])")
    policies = []
    for number, table in enumerate(value, start=1):
        what = f"retention.policy #{number}"
        if not isinstance(table, dict):
            raise ValueError(f"{what} must be a table")
        unknown = sorted(set(table) - set(_FIELDS))
        if unknown:
            raise ValueError(f"{what}: unknown key {unknown[0]!r} (known: "
                             f"{', '.join(_FIELDS)})")
        context = table.get("context")
        if not isinstance(context, str) or not context:
            raise ValueError(f"{what}: context must be a context id or a prefix ending in "
                             "'*' (\"ci/*\"; \"*\" for every context)")
        if "*" in context[:-1]:
            raise ValueError(f"{what}: context {context!r} may hold '*' only at its end")
        if context != "*" and not _CONTEXT.fullmatch(context.removesuffix("*")):
            raise ValueError(f"{what}: context {context!r} is not a context id or a prefix "
                             "of one followed by '*'")
        max_age = table.get("max_age")
        max_units = table.get("max_units")
        if max_age is None and max_units is None:
            raise ValueError(f"{what} ({context}): give max_age, max_units or both")
        if max_units is not None and (isinstance(max_units, bool)
                                      or not isinstance(max_units, int) or max_units < 0
                                      or max_units > MAX_UNITS):
            raise ValueError(f"{what} ({context}): max_units must be an integer from 0 to "
                             f"{MAX_UNITS}, got {max_units!r}")
        policies.append(Policy(
            context=context,
            max_age=None if max_age is None else parse_duration(
                max_age, f"{what} ({context}): max_age"),
            max_units=max_units))
    return tuple(policies)
