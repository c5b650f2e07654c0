"""Query-string parameters, read strictly: a malformed value is a 400 naming it."""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import HTTPConnection

from engram_cli.formats.timeparse import parse_time
from engramd.protocol import BadRequest

INT64 = 2**63
"""Integers are 64-bit signed on the wire (MessagePack): bigger ones are refused here."""


def known(request: HTTPConnection, names: frozenset[str] | set[str]) -> None:
    """Refuse a query parameter the endpoint does not take, as unknown body fields are."""
    unknown = sorted({key for key in request.query_params if key not in names})
    if unknown:
        allowed = ", ".join(sorted(names)) or "none"
        raise BadRequest(f"unknown query parameter {unknown[0]!r:.40} (this endpoint takes "
                         f"{allowed})")


def integer(request: HTTPConnection, name: str, default: int | None = None) -> int | None:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {text!r:.40}") from None
    if not -INT64 <= value < INT64:
        raise BadRequest(f"{name} is out of range (a 64-bit integer)")
    return value


def seconds(request: HTTPConnection, name: str, default: float) -> float:
    text = request.query_params.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{name} must be a number, not {text!r:.40}") from None
    if not math.isfinite(value) or value < 0:
        raise BadRequest(f"{name} must be a number of seconds >= 0")
    return value


def flag(request: HTTPConnection, name: str) -> bool:
    text = request.query_params.get(name, "").lower()
    if text in ("", "0", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    raise BadRequest(f"{name} must be true or false, not {text!r:.40}")


def time(request: HTTPConnection, name: str) -> Any:
    text = request.query_params.get(name)
    if not text:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}") from None


def names(request: HTTPConnection, name: str) -> list[str]:
    return [v for value in request.query_params.getlist(name) for v in value.split(",") if v]



def pairs(request: HTTPConnection, name: str) -> dict[str, str]:
    """Repeated ``name=KEY=VALUE`` parameters as a mapping."""
    found = {}
    for item in request.query_params.getlist(name):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadRequest(f"{name} must be KEY=VALUE, not {item!r:.40}")
        found[key] = value
    return found


def limit(request: HTTPConnection, default: int) -> int:
    """``limit`` as given (the daemon checks its range: 0 is refused, not the default)."""
    found = integer(request, "limit", default)
    return default if found is None else found
