"""What each endpoint of the gateway takes and answers, for ``/openapi.json``
(:mod:`.openapi` builds the document from these tables and the types they name).

* :data:`OPERATIONS`: per handler, its summary, body type, answer type and status, and
  the error statuses it can give beyond those every endpoint can;
* :data:`BOUNDS`: per body type, the daemon's bounds on its fields, as the constrained
  types of :mod:`engramd.protocol.bounds` (where the daemon's checks take them from);
* :data:`RULES` and :data:`PROPERTIES`: what a field's type cannot say (fields that
  exclude or need each other, patterns over a union).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from engram_cli.doors.gateway import views
from engram_cli.doors.gateway.forms import ClaimProof, DraftForm, LockForm, MessageForm, RenewForm
from engramd.protocol import (
    AddTask,
    AgentPage,
    BreakLock,
    ClaimTask,
    ContextCreated,
    ContextFound,
    ContextPage,
    ContextUpdated,
    CreateContext,
    LockAcquired,
    LockExpired,
    LockReleased,
    LockRenewed,
    LockState,
    RelatedUnits,
    Relationship,
    Search,
    TaskFound,
    TaskPage,
    UnitsRemoved,
    UnreadCount,
    UpdateContext,
)
from engramd.protocol import bounds as b


class ErrorBody(msgspec.Struct):
    code: str
    """A stable code (SPECS §2.9, and the gateway's own: ``unauthenticated``,
    ``method_not_allowed``, ``upgrade_required``)."""
    message: str


class ErrorView(msgspec.Struct):
    """Every error, whatever its status."""

    error: ErrorBody


class Acknowledgement(msgspec.Struct):
    """What a WebSocket client sends: everything up to ``ack`` (a seq) is processed."""

    ack: b.Seq


Drafts = Annotated[list[DraftForm], msgspec.Meta(
    min_length=1, max_length=b.DEFAULT_MAX_BATCH_UNITS,
    description=f"Written all or nothing; at most {b.DEFAULT_MAX_BATCH_UNITS} "
                "(limits.max_batch_units)")]


@dataclass(frozen=True)
class Op:
    """What one handler takes and answers."""

    summary: str
    answer: Any = None
    """The type of the success answer's JSON (None: described in words)."""
    status: int = 200
    body: Any = None
    errors: tuple[int, ...] = ()
    """Statuses beyond those of every endpoint that acts for a caller (:data:`CALLER`)."""
    omit: tuple[str, ...] = ()
    """Fields of the body's type the endpoint sets itself (refused when they differ)."""
    caller: bool = True
    """Whether it acts for a caller (credentials, the daemon)."""
    agent: bool = True
    """Whether ``X-Agent-ID`` names who it acts for (with ``--auth none``)."""


OPERATIONS: dict[str, Op] = {
    "healthz": Op("The gateway is up", views.Health, caller=False),
    "readyz": Op("The daemon is ready (503 with the reason otherwise)", views.Readiness,
                 caller=False),
    "metrics": Op("Prometheus text 0.0.4: the daemon's statistics and the gateway's "
                  "(credentials checked when authentication is on)", agent=False),
    "openapi_json": Op("This document", caller=False),
    "create_units": Op("Write one unit or a list, all or nothing (one fsync)",
                       views.UnitsWritten, 201, DraftForm | Drafts, (409, 413)),
    "get_unit": Op("One unit by id", views.UnitView, errors=(404,)),
    "list_units": Op("A context's units, newest first unless paging forward",
                     views.UnitsPage, errors=(404,)),
    "list_contexts": Op("Contexts by id", ContextPage),
    "create_context": Op("Create a context (409 when it exists)", ContextFound, 201,
                         CreateContext, (409, 413)),
    "get_context": Op("A context and who is watching it", ContextFound, errors=(404,)),
    "update_context": Op("Change a context", ContextFound, body=UpdateContext,
                         errors=(404, 413)),
    "list_locks": Op("Leases held", views.LockList),
    "lock_history": Op("Leases granted and ended, as journaled (none in cluster mode)",
                       views.LockHistoryView),
    "acquire_locks": Op("Lease resources together or not at all; the lease lasts until "
                        "released or its ttl", views.LeasesGranted, 201, LockForm,
                        (409, 413, 504)),
    "renew_lock": Op("Extend a lease", views.LeaseView, body=RenewForm, errors=(404,)),
    "get_lock": Op("A resource's lease and waiters", LockState),
    "release_lock": Op("Release a lease", views.Released, errors=(404,)),
    "break_lock": Op("Break another's lease (admins only: journaled with who and why)",
                     views.Broken, body=BreakLock, errors=(404, 409, 413)),
    "list_agents": Op("Agents known: their sessions, leases held, unread messages",
                      AgentPage),
    "console_page": Op("The web console (HTML; its script and style at /ui/ASSET)",
                       caller=False),
    "console_redirect": Op("To the web console: 307 to /ui", status=307, caller=False),
    "console_asset": Op("A file of the web console (console.js, console.css, favicon.svg)",
                        caller=False, errors=(404,)),
    "stream_ticket": Op("A single-use ticket for one stream (?ticket=), within 30 s",
                        views.Ticket, 201, errors=(413,)),
    "search": Op("Search: keyword (BM25), semantic or hybrid, with filters",
                 views.SearchPage, body=Search, errors=(404, 413)),
    "search_vector": Op("Semantic search (POST /search in mode semantic)",
                        views.SearchPage, body=Search, errors=(404, 413), omit=("mode",)),
    "search_relationships": Op("Units related to a unit", views.Related, body=RelatedUnits,
                               errors=(404, 413)),
    "send_message": Op("Send a message to agents", views.UnitView, 201, MessageForm,
                       (404, 409, 413)),
    "read_inbox": Op("The caller's unread messages (marked read unless peek)",
                     views.InboxPage),
    "count_inbox": Op("The caller's unread and pending-acknowledgement counts",
                      UnreadCount),
    "ack_message": Op("Acknowledge a message to the caller", views.UnitView, 201,
                      errors=(404, 409)),
    "list_tasks": Op("Tasks, most urgent first", TaskPage),
    "add_task": Op("Add a task", TaskFound, 201, AddTask, (404, 409, 413)),
    "claim_task": Op("Claim a task (at /tasks/claim: the most urgent ready one); the claim "
                     "lasts until done, released or its ttl", TaskFound, 201, ClaimTask,
                     (404, 409, 413), omit=("pid",)),
    "get_task": Op("One task", TaskFound, errors=(404,)),
    "finish_task": Op("Mark a claimed task done (the claim's fencing token)", TaskFound,
                      body=ClaimProof, errors=(404, 409)),
    "release_task": Op("Give a claimed task back (the claim's fencing token)", TaskFound,
                       body=ClaimProof, errors=(404, 409)),
}

BASE = (400, 403)
"""What any request may get: a query parameter the endpoint does not take (400), a
``Host`` or ``Origin`` refused (403)."""
CALLER = (*BASE, 401, 429, 503, 504)
"""What any request made for a caller may get besides: credentials refused (401), the
daemon's refusal (403), its rate limit (429), the daemon away (503), no answer (504)."""
WITH_BODY = (408, 413)
"""A body not whole within ``--body-timeout`` (408), or over ``--max-body`` (413)."""

AbsolutePath = Annotated[str, msgspec.Meta(
    min_length=1, max_length=b.MAX_RESOURCE_BYTES - len("file:"), pattern=r"^/[^\u0000]*$",
    description="An absolute path on the gateway's machine (a file, a directory ending in / "
                "or on disk, a glob), named as the CLI names it")]
AbsolutePaths = Annotated[list[AbsolutePath], msgspec.Meta(
    min_length=1, max_length=b.MAX_RESOURCES,
    description=f"With resources, at most {b.MAX_RESOURCES} together")]

BreakReason = Annotated[str, msgspec.Meta(
    min_length=1, max_length=1024,
    pattern=rf"^[^\u0000]*[^{b.INVISIBLE}][^\u0000]*$",
    description="Why the lease is broken (journaled): 1 to 1024 characters, without NUL, "
                "not blank (whitespace, control and format characters alone show nothing)")]

BOUNDS: dict[str, dict[str, Any]] = {
    "DraftForm": {"context_id": b.ContextId, "type": b.UnitType,
                  "payload_base64": str | None, "meta": b.Meta,
                  "relationships": list[Relationship],
                  "idempotency_key": b.IdempotencyKey | None},
    "Relationship": {"type": b.RelationshipType, "target": b.UnitId, "meta": b.Meta},
    "Fence": {"resource": b.Resource, "token": b.Int64},
    "MessageForm": {"context_id": b.ContextId | None, "thread": b.Name | None,
                    "reply_to": b.UnitId | None, "meta": b.Meta,
                    "payload_base64": str | None},
    "LockForm": {"resources": b.Resource | b.Resources, "resource_path": b.Resource,
                 "paths": AbsolutePath | AbsolutePaths, "ttl": b.Ttl | None,
                 "wait": b.Wait},
    "RenewForm": {"ttl": b.Ttl | None, "resource": b.Resource | None},
    "ClaimProof": {"token": b.Int64},
    "CreateContext": {"context_id": b.ContextId | None,
                      "display_name": b.DisplayName | None, "meta": b.Meta},
    "UpdateContext": {"display_name": b.Name | None, "add_agents": list[b.AgentId],
                      "remove_agents": list[b.AgentId], "pin": list[b.UnitId],
                      "unpin": list[b.UnitId], "set_meta": b.Meta},
    "Search": {"query": b.Query, "types": list[b.UnitType], "related_to": b.UnitId | None,
               "related_types": list[b.RelationshipType], "related_direction": b.Direction,
               "related_depth": b.Depth, "limit": b.SearchLimit, "offset": b.Offset,
               "mode": b.SearchMode, "min_similarity": b.Similarity | None,
               "since": b.Timestamp | None, "until": b.Timestamp | None},
    "BreakLock": {"resource": b.Resource, "reason": BreakReason,
                  "token": b.Int64 | None},
    "RelatedUnits": {"unit_id": b.UnitId, "types": list[b.RelationshipType],
                     "direction": b.Direction, "depth": b.Depth},
    "AddTask": {"title": b.TaskTitle, "context_id": b.ContextId | None,
                "priority": b.Priority, "depends_on": list[b.UnitId], "meta": b.Meta},
    "ClaimTask": {"task_id": b.UnitId | None, "contexts": list[b.ContextId],
                  "ttl": b.Ttl | None},
}
"""The daemon's bounds on the fields of each body, by the body type's name."""

_WORD = {"pattern": f"[^{b.WHITESPACE}]"}
BASE64 = {"pattern": r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
          "contentEncoding": "base64"}
_RECIPIENT = f"^[{b.WHITESPACE}]*(?:{b.AGENT_ID_PATTERN}|\\*)[{b.WHITESPACE}]*$"
_BROADCAST = {"pattern": f"^[{b.WHITESPACE}]*\\*[{b.WHITESPACE}]*$"}
RULES: dict[str, dict[str, Any]] = {
    "DraftForm": {"not": {"required": ["payload", "payload_base64"]}},
    "MessageForm": {"not": {"required": ["payload", "payload_base64"]}},
    "LockForm": {"oneOf": [
        {"anyOf": [{"required": ["resources"]}, {"required": ["paths"]}]},
        {"required": ["resource_path"]}]},
    "Search": {"allOf": [
        {"if": {"properties": {"mode": {"const": "keyword"}}},
         "then": {"properties": {"min_similarity": {"type": "null"},
                                 "exact": {"const": False}}}},
        {"if": {"required": ["mode"], "properties": {"mode": {"enum": ["semantic", "hybrid"]}}},
         "then": {"required": ["query"], "properties": {"query": _WORD}}},
        {"if": {"required": ["advanced"], "properties": {"advanced": {"const": True}}},
         "then": {"required": ["query"], "properties": {"query": _WORD}}}]},
}
"""What a field's type cannot say: fields that exclude or need each other."""

PROPERTIES: dict[str, dict[str, dict[str, Any]]] = {
    "DraftForm": {"payload_base64": BASE64,
                  "payload": {"description": f"Text (UTF-8) of at most "
                              f"{b.DEFAULT_MAX_PAYLOAD_BYTES} bytes "
                              "(limits.max_payload_bytes)"}},
    "MessageForm": {"payload_base64": BASE64, "to": {
        "anyOf": [{"type": "string", "pattern": _RECIPIENT},
                  {"type": "array", "minItems": 1,
                   "items": {"type": "string", "pattern": _RECIPIENT},
                   "anyOf": [{"not": {"contains": _BROADCAST}}, {"items": _BROADCAST}]}],
        "description": "Agents by name, or \"*\" (alone) for every agent; names no agent "
                       "has used are refused (404) unless new_recipients"}},
    "Search": {"mode": {"description": "semantic and hybrid need engramd's semantic search "
                        "(the engram-journal[semantic] extra): 400 naming it otherwise"},
               "advanced": {"description": "query is FTS5 syntax (phrases, prefix*, NEAR, "
                            "AND/OR/NOT): 400 when it cannot be read"}},
}
"""Whole property schemas where a type says too little (patterns over a union)."""


WITHOUT_SEMANTIC: dict[str, dict[str, Any]] = {
    **BOUNDS, "Search": {**BOUNDS["Search"], "mode": Literal["keyword"], "min_similarity": None,
                         "exact": Literal[False]}}
"""The bounds in front of a daemon without semantic search (the mode is keyword)."""


ERRORS = {
    400: "bad_request: the request is malformed or invalid (also a query parameter the "
         "endpoint does not take)",
    401: "unauthenticated: no credentials, or credentials refused",
    403: "forbidden: the caller may not (also a Host or Origin this gateway does not answer)",
    404: "not_found: the named thing does not exist",
    408: "request_timeout: the body did not come whole within --body-timeout",
    409: "conflict, lock_held or deadlock: the request contradicts the current state; "
         "timeout: the wait it asked for ran out (the lease is held still)",
    413: "too_large: a body over --max-body, or a daemon limit",
    426: "upgrade_required: not a WebSocket handshake",
    429: "rate_limited: retry after Retry-After seconds",
    503: "unavailable: the daemon is away, stopping or recovering (retry after "
         "Retry-After seconds)",
    504: "timeout: engramd did not answer within 30 s beyond the request's wait",
}
ERROR_HEADERS = {401: ("WWW-Authenticate", "Bearer"),
                  429: ("Retry-After", "Whole seconds"),
                  503: ("Retry-After", "Whole seconds")}

AGENT_HEADER = {"name": "X-Agent-ID", "in": "header", "required": False,
                 "description": "With --auth none: the agent the request is made for (else "
                                "the gateway's; one header, not empty, else 400); ignored "
                                "with authentication on",
                 "schema": {"type": "string", "pattern": f"^(?:{b.AGENT_ID_PATTERN})$"}}
PATH_PARAMS = {"asset": Annotated[str, msgspec.Meta(
                    min_length=1, description="A file of the web console")],
               "unit_id": b.UnitId, "context_id": b.ContextId, "resource": b.Resource,
                "task_id": b.UnitId}


STREAM_ITEMS = (views.UnitCreatedView | ContextCreated | ContextUpdated | LockAcquired
                | LockRenewed | LockReleased | LockExpired | UnitsRemoved)


HANDSHAKE: tuple[tuple[str, dict[str, Any]], ...] = (
    ("Upgrade", {"enum": ["websocket"]}),
    ("Connection", {"pattern": "[Uu][Pp][Gg][Rr][Aa][Dd][Ee]"}),
    ("Sec-WebSocket-Key", {}), ("Sec-WebSocket-Version", {"enum": ["13"]}))
