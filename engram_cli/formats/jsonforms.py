"""engram's data as JSON: what ``--json``, ``unit export``, the gateway and the MCP
server write, and what ``unit import`` reads.

A daemon's answer keeps its protocol field names, without the wire envelope. In a
unit, a payload that is valid UTF-8 is the string ``payload``; any other payload is
base64 under ``payload_base64``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any

import msgspec

from engramd.protocol import (
    UUID_TEXT,
    Event,
    RelatedFound,
    Relationship,
    ServerMessage,
    Unit,
    UnitCreated,
    UnitDraft,
    UnitOrigin,
)

# Fields of the wire envelope, not of the answer itself.
_ENVELOPE = ("msg", "id")


class BadLine(ValueError):
    """A JSON line that is not a unit; the message says why."""


def unit_to_json(unit: Unit) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(unit)
    payload = data.pop("payload")
    try:
        data["payload"] = unit.payload.decode("utf-8")
    except UnicodeDecodeError:
        data["payload_base64"] = payload  # to_builtins already wrote base64
    return data


def to_plain_data(value: Any) -> Any:
    """JSON-ready data; a daemon message loses its wire envelope (``msg``, ``id``)."""
    data = msgspec.to_builtins(value)
    if isinstance(value, ServerMessage) and isinstance(data, dict):
        for key in _ENVELOPE:
            data.pop(key, None)
    return data


def event_json(event: Event) -> dict[str, Any]:
    """An event as JSON, with its unit's payload as text or base64."""
    data: dict[str, Any] = msgspec.to_builtins(event)
    if isinstance(event, UnitCreated):
        data["unit"] = unit_to_json(event.unit)
    return data


def related_json(found: RelatedFound) -> dict[str, Any]:
    """Relationships around a unit as JSON (``unit related`` and ``trace``)."""
    return {"root": found.root, "edges": [to_plain_data(edge) for edge in found.edges],
            "units": [unit_to_json(unit) for unit in found.units]}


def payload_text(unit: Unit) -> str | None:
    """The payload as text, or None when it is not UTF-8."""
    try:
        return unit.payload.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _strings(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise BadLine(f"{what} must be an object of strings")
    return value


def draft_from_json(data: Any, *, context_id: str | None = None) -> tuple[UnitDraft, str | None]:
    """A draft from one exported line, and the line's ``agent_id`` (if any).

    The line's ``id`` becomes the idempotency key (unless the line has its
    own), so importing the same file twice writes nothing the second time.
    """
    if not isinstance(data, dict):
        raise BadLine("each line must be a JSON object")
    context = context_id or data.get("context_id")
    if not isinstance(context, str):
        raise BadLine("missing context_id")
    kind = data.get("type", "MESSAGE")
    if not isinstance(kind, str):
        raise BadLine("type must be a string")
    if "payload_base64" in data:
        try:
            payload = base64.b64decode(data["payload_base64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise BadLine("payload_base64 is not valid base64") from None
    else:
        text = data.get("payload", "")
        if not isinstance(text, str):
            raise BadLine("payload must be a string (or use payload_base64)")
        payload = text.encode()
    relationships = []
    for rel in data.get("relationships") or []:
        if not isinstance(rel, dict) or not isinstance(rel.get("type"), str) \
                or not isinstance(rel.get("target"), str):
            raise BadLine("each relationship needs a type and a target")
        relationships.append(Relationship(type=rel["type"], target=rel["target"],
                                          meta=_strings(rel.get("meta"), "relationship meta")))
    key = data.get("idempotency_key") or data.get("id")
    if key is not None and not isinstance(key, str):
        raise BadLine("id must be a string")
    agent = data.get("agent_id")
    if agent is not None and not isinstance(agent, str):
        raise BadLine("agent_id must be a string")
    draft = UnitDraft(context_id=context, type=kind, payload=payload,
                      meta=_strings(data.get("meta"), "meta"), relationships=relationships,
                      idempotency_key=key)
    return draft, agent


def origin_from_json(data: dict[str, Any]) -> UnitOrigin | None:
    """The id and time an exported line had, for an import to keep; None for a line
    without both (written by hand: it gets a new id and the time of writing)."""
    unit_id, ts = data.get("id"), data.get("ts")
    if not isinstance(unit_id, str) or not UUID_TEXT.fullmatch(unit_id) or ts is None:
        return None
    if not isinstance(ts, str):
        raise BadLine("ts must be a string (RFC 3339)")
    try:
        when = dt.datetime.fromisoformat(ts)
    except ValueError:
        raise BadLine(f"ts is not an RFC 3339 time: {ts!r:.60}") from None
    return UnitOrigin(id=unit_id, ts=when if when.tzinfo else when.replace(tzinfo=dt.UTC))
