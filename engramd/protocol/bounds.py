"""The bounds engramd holds requests to, each named once.

The daemon checks them (:mod:`engramd.validate`, and the modules that read, grant and
mail); a client may read them; the gateway's ``/openapi.json`` states them, through
the constrained msgspec types at the end of this module, whose JSON Schema is what
the document says. A bound that a configuration key moves (``limits.*``,
``locks.max_ttl``) is given here by its default, which ``engramd``'s configuration
takes from here too.

Lengths of metadata keys and values, and of resources, are counted in UTF-8 bytes by
the daemon; JSON Schema counts characters, so the types below say the same number in
characters and their descriptions say bytes.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec

from engramd.protocol.model import EVENT_KINDS, RELATIONSHIP_TYPES, TASK_STATES, UNIT_TYPES

CONTEXT_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:/@+\-]{0,127}"
"""A context id: 1 to 128 characters, letters, digits and ``. _ : / @ + -``."""
AGENT_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:/@+\-|$~=]{0,255}"
"""An agent id: a context id's characters and three more that names from elsewhere
carry: a JWT's subject (``auth0|42``), a machine account (``host$``); 256 at most."""
MAX_ID = 128
"""Longest unit id (or prefix of one)."""
MAX_NAME = 256
"""Longest name: a display name, a cursor, a thread."""
MAX_KEY = 256
"""Longest idempotency key."""

MAX_PAGE = 10_000
"""Most units, contexts or tasks in one page (``limit``), and ids in one ``unit.get``."""
MAX_PAGE_BYTES = 8 * 1024 * 1024
"""A page of units ends before its units pass this many bytes (``limit`` or not): the
reply is one frame, at most 16 MiB, and 200 units of 110 KB would not fit."""
MAX_INBOX_PAGE = 1_000
MAX_INBOX_WAIT = 3_600.0
"""Longest ``inbox`` wait, seconds."""
MAX_SEARCH_PAGE = 1_000
MAX_QUERY_CHARS = 4_096
SEARCH_MODES = ("keyword", "semantic", "hybrid")
DIRECTIONS = ("out", "in", "both")
"""Which way ``unit.related`` follows relationships."""
MAX_DEPTH = 16
"""Deepest ``unit.related`` walk."""
MAX_RESOURCE_BYTES = 1024
MAX_RESOURCES = 64
"""Most resources in one ``lock.acquire``."""
MAX_TITLE = 1_024
"""Longest task title (one line)."""
MIN_HEARTBEAT = 0.01
"""Shortest heartbeat a subscription may ask for, seconds."""

# Moved by engramd's configuration; these are its defaults.
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
DEFAULT_MAX_BATCH_UNITS = 1000
DEFAULT_MAX_META_ENTRIES = 64
DEFAULT_MAX_META_KEY_BYTES = 128
DEFAULT_MAX_META_VALUE_BYTES = 4096
DEFAULT_MAX_RELATIONSHIPS = 64
DEFAULT_TTL = 60.0
DEFAULT_MAX_TTL = 3600.0

MIN_TTL = 0.1
"""Shortest ttl a lease may ask for, seconds (not moved by the configuration): a lease
must outlive the round trips that grant and renew it (``lock run`` renews every ttl/3
and stops its command a margin before the expiry); one that expires as it is granted
(``--ttl 1e-300``) is a mistake, not a lease."""

WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029"
              "\u202f\u205f\u3000")
"""What Python's ``str.strip()`` removes, as a regular expression class body (a
pattern's ``\\s`` is another set)."""

INVISIBLE = (WHITESPACE + "\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f"
             "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e"
             "\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb")
"""What shows nothing: whitespace, control characters and the format characters of the
Basic Multilingual Plane (zero-width, bidi controls, the soft hyphen, BOM), as a
regular expression class body (one list, for the daemon's check and the schemas alike)."""

# -- as JSON Schema (msgspec types) ---------------------------------------------

_NO_NUL = r"^[^\u0000]*$"
INT64_MAX = 2**63 - 1


def _text(low: int, high: int, description: str) -> msgspec.Meta:
    return msgspec.Meta(min_length=low, max_length=high, pattern=_NO_NUL,
                        description=description)


ContextId = Annotated[str, msgspec.Meta(
    min_length=1, max_length=128, pattern=f"^{CONTEXT_ID_PATTERN}$",
    description="A context id: 1 to 128 characters, letters, digits and . _ : / @ + -, "
                "starting with a letter or digit")]
AgentId = Annotated[str, msgspec.Meta(
    min_length=1, max_length=256, pattern=f"^{AGENT_ID_PATTERN}$",
    description="An agent id: 1 to 256 characters, letters, digits and "
                ". _ : / @ + - | $ ~ =, starting with a letter or digit")]
UnitId = Annotated[str, _text(1, MAX_ID, "A unit id")]
Name = Annotated[str, _text(1, MAX_NAME, "A name, without NUL")]
DisplayName = Annotated[str, _text(0, MAX_NAME, "A display name, without NUL (empty: the id)")]
IdempotencyKey = Annotated[str, _text(1, MAX_KEY, "A retry with the same key returns the "
                                                  "unit first written with it")]
Resource = Annotated[str, _text(
    1, MAX_RESOURCE_BYTES, f"A resource path: 1 to {MAX_RESOURCE_BYTES} bytes (UTF-8), no NUL")]
Resources = Annotated[list[Resource], msgspec.Meta(min_length=1, max_length=MAX_RESOURCES)]
MetaKey = Annotated[str, _text(
    1, DEFAULT_MAX_META_KEY_BYTES,
    f"1 to {DEFAULT_MAX_META_KEY_BYTES} bytes (UTF-8; limits.max_meta_key_bytes), no NUL")]
MetaValue = Annotated[str, _text(
    0, DEFAULT_MAX_META_VALUE_BYTES,
    f"At most {DEFAULT_MAX_META_VALUE_BYTES} bytes (UTF-8; limits.max_meta_value_bytes), "
    "no NUL")]
Meta = Annotated[dict[MetaKey, MetaValue], msgspec.Meta(
    max_length=DEFAULT_MAX_META_ENTRIES,
    description=f"Metadata: at most {DEFAULT_MAX_META_ENTRIES} entries "
                "(limits.max_meta_entries)")]
UnitType = Literal[UNIT_TYPES]  # type: ignore[valid-type]
"""A unit type (the daemon takes any case; these are its canonical forms)."""
RelationshipType = Literal[RELATIONSHIP_TYPES]  # type: ignore[valid-type]
EventKind = Literal[EVENT_KINDS]  # type: ignore[valid-type]
TaskState = Literal[TASK_STATES]  # type: ignore[valid-type]
SearchMode = Literal[SEARCH_MODES]  # type: ignore[valid-type]
Direction = Literal[DIRECTIONS]  # type: ignore[valid-type]
Seq = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX, description="A sequence number")]
Int64 = Annotated[int, msgspec.Meta(ge=-INT64_MAX - 1, le=INT64_MAX)]
PageLimit = Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)]
InboxLimit = Annotated[int, msgspec.Meta(ge=1, le=MAX_INBOX_PAGE)]
SearchLimit = Annotated[int, msgspec.Meta(ge=1, le=MAX_SEARCH_PAGE)]
Offset = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
Depth = Annotated[int, msgspec.Meta(ge=1, le=MAX_DEPTH)]
Priority = Annotated[int, msgspec.Meta(ge=0, le=4, description="0 (most urgent) to 4")]
Ttl = Annotated[float, msgspec.Meta(
    ge=MIN_TTL, le=DEFAULT_MAX_TTL,
    description=f"Seconds, at least {MIN_TTL:g} and at most {DEFAULT_MAX_TTL:g} "
                "(locks.max_ttl)")]
Wait = Annotated[float, msgspec.Meta(ge=0, description="Seconds to wait in line (0: try once)")]
InboxWait = Annotated[float, msgspec.Meta(ge=0, le=MAX_INBOX_WAIT)]
Heartbeat = Annotated[float, msgspec.Meta(ge=MIN_HEARTBEAT, description="Seconds")]
Similarity = Annotated[float, msgspec.Meta(ge=-1, le=1)]
Timestamp = Annotated[dt.datetime, msgspec.Meta(
    extra_json_schema={"format": "date-time"},
    description="RFC 3339 (without an offset: the daemon's local time)")]
Query = Annotated[str, msgspec.Meta(max_length=MAX_QUERY_CHARS)]
_LINE = rf"[^{WHITESPACE}\u0000](?:[^\n\u0000]{{0,{MAX_TITLE - 2}}}[^{WHITESPACE}\u0000])?"
TaskTitle = Annotated[str, msgspec.Meta(
    pattern=rf"^[{WHITESPACE}]*{_LINE}[{WHITESPACE}]*$",
    description=f"One line of 1 to {MAX_TITLE} characters once stripped, no NUL")]


__all__ = [
    "AGENT_ID_PATTERN", "AgentId", "CONTEXT_ID_PATTERN", "ContextId", "DEFAULT_MAX_BATCH_UNITS",
    "DEFAULT_MAX_META_ENTRIES", "DEFAULT_MAX_META_KEY_BYTES", "DEFAULT_MAX_META_VALUE_BYTES",
    "DEFAULT_MAX_PAYLOAD_BYTES", "DEFAULT_MAX_RELATIONSHIPS", "DEFAULT_MAX_TTL", "DEFAULT_TTL",
    "Depth", "DIRECTIONS", "Direction", "DisplayName", "EventKind", "Heartbeat", "IdempotencyKey",
    "INT64_MAX", "InboxLimit", "InboxWait", "Int64", "MAX_DEPTH", "MAX_ID", "MAX_INBOX_PAGE",
    "MAX_INBOX_WAIT", "MAX_KEY", "MAX_NAME", "MAX_PAGE", "MAX_PAGE_BYTES", "MAX_QUERY_CHARS",
    "MAX_RESOURCE_BYTES", "MAX_RESOURCES", "MAX_SEARCH_PAGE", "MAX_TITLE", "MIN_HEARTBEAT",
    "MIN_TTL", "Meta", "MetaKey", "MetaValue", "Name", "Offset", "PageLimit", "Priority", "Query",
    "RelationshipType", "Resource", "Resources", "SEARCH_MODES", "SearchLimit", "SearchMode",
    "Seq", "Similarity", "TaskState", "TaskTitle", "Timestamp", "Ttl", "UnitId", "UnitType",
    "Wait", "WHITESPACE",
]
