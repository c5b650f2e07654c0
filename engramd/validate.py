"""Checks on what clients write, each failing with one clear :class:`BadRequest`.

Pure functions over protocol data; the limits come from the configuration, the fixed
bounds from :mod:`engramd.protocol.bounds` (which the gateway's ``/openapi.json`` states).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engramd.protocol import BadRequest, TooLarge, bounds
from engramd.protocol.bounds import AGENT_ID_PATTERN, CONTEXT_ID_PATTERN, MAX_ID, MAX_KEY, MAX_NAME
from engramd.protocol.messages import UnitDraft
from engramd.protocol.model import (
    MIN_UNIT_ID_PREFIX,
    RELATIONSHIP_TYPES,
    UNIT_TYPES,
    UUID_TEXT,
    Relationship,
)

CONTEXT_ID = re.compile(CONTEXT_ID_PATTERN)
AGENT_ID = re.compile(AGENT_ID_PATTERN)
PAYLOAD_LIMIT_SETTING = "limits.max_payload_bytes in engramd's configuration raises it"


@dataclass(frozen=True, kw_only=True)
class WriteLimits:
    """The configured limits on writes (``limits.*`` in the configuration)."""

    max_payload_bytes: int
    max_batch_units: int
    max_meta_entries: int
    max_meta_key_bytes: int
    max_meta_value_bytes: int
    max_relationships: int


def unit_type(text: str) -> str:
    upper = text.upper()
    if upper not in UNIT_TYPES:
        raise BadRequest(f"unknown unit type {text!r} (one of {', '.join(UNIT_TYPES)})")
    return upper


def relationship_type(text: str) -> str:
    upper = text.upper()
    if upper not in RELATIONSHIP_TYPES:
        raise BadRequest(
            f"unknown relationship type {text!r} (one of {', '.join(RELATIONSHIP_TYPES)})")
    return upper


def context_id(text: str) -> str:
    if not CONTEXT_ID.fullmatch(text):
        raise BadRequest(
            f"bad context id {text!r:.80}: 1 to 128 characters, letters, digits and "
            ". _ : / @ + -, starting with a letter or digit")
    return text


def agent_id(text: str) -> str:
    if not AGENT_ID.fullmatch(text):
        raise BadRequest(
            f"bad agent id {text!r:.80}: 1 to 256 characters, letters, digits and "
            ". _ : / @ + - | $ ~ =, starting with a letter or digit")
    return text


def name(text: str, what: str, limit: int = MAX_NAME) -> str:
    if not text or len(text) > limit or "\0" in text:
        raise BadRequest(f"{what} must be 1 to {limit} characters without NUL, got {text!r:.60}")
    return text


MAX_REASON = 1024
_VISIBLE = re.compile(f"[^{bounds.INVISIBLE}]")


def reason(text: str) -> str:
    """Why something was done, for the record (a lease broken): words, not blank."""
    name(text, "reason", MAX_REASON)
    if _VISIBLE.search(text) is None:  # (zero-width and bidi characters show nothing)
        raise BadRequest("reason must say why in words: it is blank")
    return text


def unit_id(text: str) -> str:
    return name(text, "unit id", MAX_ID)


def origin_id(text: str) -> str:
    """The id an imported unit keeps: a UUID's text, as every id engramd makes is, so
    that prefixes and short ids work for it as for any other."""
    if not UUID_TEXT.fullmatch(text):
        raise BadRequest(f"an imported unit's id must be a UUID (36 characters, lowercase "
                         f"hex), got {text!r:.60}")
    return text


def unit_id_prefix(text: str) -> str:
    if len(text) < MIN_UNIT_ID_PREFIX:
        raise BadRequest(f"a unit id prefix needs at least {MIN_UNIT_ID_PREFIX} characters, "
                         f"got {text!r:.60}")
    return unit_id(text).lower()  # ids are lowercase hex; a prefix copied from elsewhere may not be


def meta(values: dict[str, str], limits: WriteLimits) -> dict[str, str]:
    if len(values) > limits.max_meta_entries:
        raise TooLarge(f"{len(values)} metadata entries, limit {limits.max_meta_entries}")
    for key, value in values.items():
        if not key or "\0" in key or len(key.encode()) > limits.max_meta_key_bytes:
            raise BadRequest(f"metadata key {key!r:.60} must be 1 to "
                             f"{limits.max_meta_key_bytes} bytes without NUL")
        if "\0" in value or len(value.encode()) > limits.max_meta_value_bytes:
            raise BadRequest(f"metadata value of {key!r:.60} must be at most "
                             f"{limits.max_meta_value_bytes} bytes without NUL")
    return values


def draft(unit: UnitDraft, limits: WriteLimits) -> UnitDraft:
    """A checked draft, with its types in canonical upper case."""
    if len(unit.payload) > limits.max_payload_bytes:
        raise TooLarge(f"payload of {len(unit.payload)} bytes exceeds the limit of "
                       f"{limits.max_payload_bytes} bytes ({PAYLOAD_LIMIT_SETTING})")
    if len(unit.relationships) > limits.max_relationships:
        raise TooLarge(f"{len(unit.relationships)} relationships, limit "
                       f"{limits.max_relationships}")
    if unit.idempotency_key is not None:
        name(unit.idempotency_key, "idempotency key", MAX_KEY)
    relationships = [
        Relationship(type=relationship_type(rel.type), target=unit_id(rel.target),
                     meta=meta(rel.meta, limits))
        for rel in unit.relationships
    ]
    return UnitDraft(
        context_id=context_id(unit.context_id),
        type=unit_type(unit.type),
        payload=unit.payload,
        meta=meta(unit.meta, limits),
        relationships=relationships,
        idempotency_key=unit.idempotency_key,
        fence=unit.fence,
    )
