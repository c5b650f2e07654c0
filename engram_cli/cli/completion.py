"""What the shell offers on <TAB> for the options that take a fixed vocabulary or a
context. Typer calls these only while completing (``_ENGRAM_COMPLETE`` set), never in an
ordinary run; a context is completed only from a daemon that runs already, since a <TAB>
must not start one."""

from __future__ import annotations

from engramd.protocol import EVENT_KINDS, RELATIONSHIP_TYPES, UNIT_TYPES

_CONTEXTS_SHOWN = 200
_COMPLETION_TIMEOUT = 1.0
"""Seconds a <TAB> may wait for the daemon's list of contexts before offering nothing."""


def _starting(words: tuple[str, ...], incomplete: str) -> list[str]:
    """The words that begin with *incomplete*, in its case: types are taken in any
    case, and the shell keeps only what begins with what was typed."""
    found = [word for word in words if word.startswith(incomplete.upper())]
    return [word.lower() for word in found] if incomplete.islower() else found


HARNESSES = ("claude-code", "codex", "gemini", "cursor")
"""The coding-agent harnesses ``engram setup`` wires (see :mod:`engram_cli.doors.harness`)."""


def harnesses(incomplete: str) -> list[str]:
    return [name for name in HARNESSES if name.startswith(incomplete)]


def unit_types(incomplete: str) -> list[str]:
    return _starting(UNIT_TYPES, incomplete)


def relationship_types(incomplete: str) -> list[str]:
    return _starting(RELATIONSHIP_TYPES, incomplete)


def relationships(incomplete: str) -> list[str]:
    """``TYPE:`` for ``-r TYPE:ID``, the id being the user's to give."""
    if ":" in incomplete:
        return []
    return [f"{kind}:" for kind in relationship_types(incomplete)]


def event_kinds(incomplete: str) -> list[str]:
    return [kind for kind in EVENT_KINDS if kind.startswith(incomplete.lower())]


def contexts(incomplete: str) -> list[str]:
    """Existing contexts starting with *incomplete*, if a daemon answers at once."""
    from engram_cli.client import Client
    from engram_cli.client.errors import EngramError

    try:
        with Client(autostart=False, timeout=_COMPLETION_TIMEOUT) as engram:
            page = engram.list_contexts(limit=_CONTEXTS_SHOWN, prefix=incomplete)
    except (EngramError, OSError):
        return []
    return [context.id for context in page.contexts]
