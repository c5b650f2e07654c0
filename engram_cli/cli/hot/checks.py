"""Values of the command line that Click takes and the protocol cannot: a number of
seconds that is not finite (nan, inf, 1e309) or past ``MAX_SECONDS``, a lease's ttl under
``MIN_TTL``, an integer too large for MessagePack.
Each is a usage error (exit 2, one line) on both paths, before anything is sent. Imports
nothing at the start (the client library's errors only when one is raised)."""

from __future__ import annotations

WIRE_INT_MIN = -(2**63)
WIRE_INT_MAX = 2**64 - 1
"""The integers MessagePack holds (what msgspec and the lean wire can send)."""


def _usage(message: str) -> Exception:
    from engram_cli.client.errors import UsageProblem

    return UsageProblem(message)


MAX_SECONDS = 1e9
"""The most seconds a wait or timeout takes (about 31 years): beyond it a socket's
timeout overflows the platform's time_t."""


def seconds(value: float | None, option: str) -> float | None:
    """*value* (seconds given to *option*) if it is a finite number, or None."""
    if value is not None and value - value != 0:  # nan and ±inf (inf - inf is nan)
        raise _usage(f"{option} expects a finite number of seconds, got {value!r}")
    if value is not None and value > MAX_SECONDS:
        raise _usage(f"{option} takes at most {MAX_SECONDS:.0f} seconds, got {value:g}")
    return value


MIN_TTL = 0.1
"""engramd.protocol.bounds.MIN_TTL (checked likewise): the shortest ttl a lease takes."""


def ttl(value: float | None, option: str = "--ttl") -> float | None:
    """*value* (a lease's seconds, given to *option*) if a daemon may grant it, or None:
    finite and at least ``MIN_TTL`` (the most, ``locks.max_ttl``, is each daemon's own
    to say)."""
    seconds(value, option)
    if value is not None and not value >= MIN_TTL:
        raise _usage(f"{option} takes at least {MIN_TTL:g} seconds, got {value:g}")
    return value


def wire_int(value: int | None, option: str) -> int | None:
    """*value* (given to *option*) if MessagePack can hold it, or None."""
    if value is not None and not WIRE_INT_MIN <= value <= WIRE_INT_MAX:
        raise _usage(f"{option} is out of range: {value}")
    return value
