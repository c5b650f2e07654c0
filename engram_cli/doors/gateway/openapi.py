"""``/openapi.json``: the HTTP API described from the msgspec types that decode its
bodies and encode its answers (protocol messages lose ``msg`` and ``id``, which the
gateway sets itself)."""

from __future__ import annotations

import functools
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from engram_cli import __version__
from engram_cli.doors.gateway.forms import ClaimProof, DraftForm, LockForm, MessageForm, RenewForm
from engram_cli.doors.gateway.routes import ROUTES
from engram_cli.doors.gateway.state import Gateway, Handler
from engramd.protocol import (
    AddTask,
    ClaimTask,
    Context,
    ContextFound,
    CreateContext,
    Lease,
    LockState,
    RelatedUnits,
    Relationship,
    Search,
    TaskFound,
    TaskPage,
    UnreadCount,
    UpdateContext,
)


class UnitView(msgspec.Struct, kw_only=True):
    """A unit as the API returns it: ``payload`` when it is text, else ``payload_base64``."""

    id: str
    seq: int
    context_id: str
    agent_id: str
    type: str
    ts: str
    meta: dict[str, str]
    payload: str | None = None
    payload_base64: str | None = None
    relationships: list[Relationship]
    uid: int
    pid: int


class ErrorBody(msgspec.Struct):
    code: str
    message: str


class ErrorView(msgspec.Struct):
    error: ErrorBody


# handler name: (summary, request body type or None, response type or None)
OPERATIONS: dict[str, tuple[str, Any, Any]] = {
    "healthz": ("The gateway is up", None, None),
    "readyz": ("The daemon is ready (503 otherwise)", None, None),
    "metrics": ("Prometheus text: the daemon's statistics and the gateway's", None, None),
    "openapi_json": ("This document", None, None),
    "create_units": ("Write one unit or a list, all or nothing", DraftForm | list[DraftForm],
                     None),
    "get_unit": ("One unit by id", None, UnitView),
    "list_units": ("A context's units: limit, before/after (seq), reverse, since, until, "
                   "agent, type", None, None),
    "list_contexts": ("Contexts: limit, after, prefix", None, None),
    "create_context": ("Create a context", CreateContext, ContextFound),
    "get_context": ("A context and who is watching it", None, ContextFound),
    "update_context": ("Change a context", UpdateContext, ContextFound),
    "list_locks": ("Leases held: agent, prefix", None, None),
    "acquire_locks": ("Lease resources together or not at all (wait: seconds in line)",
                      LockForm, None),
    "renew_lock": ("Extend a lease", RenewForm, None),
    "get_lock": ("A resource's lease and waiters", None, LockState),
    "release_lock": ("Release a lease: ?lock_id=", None, None),
    "stream_ticket": ("A single-use ticket for a browser's stream (?ticket=), valid 30 s",
                      None, None),
    "search": ("Search with filters: mode keyword (BM25), semantic or hybrid", Search, None),
    "search_vector": ("Semantic search (POST /search with mode semantic)", Search, None),
    "search_relationships": ("Units related to a unit", RelatedUnits, None),
    "send_message": ("Send a message to agents", MessageForm, UnitView),
    "read_inbox": ("Unread messages (marked read unless peek): limit, peek, wait, pending",
                   None, None),
    "count_inbox": ("Unread and pending-acknowledgement counts", None, UnreadCount),
    "ack_message": ("Acknowledge a message", None, UnitView),
    "list_tasks": ("Tasks: state, ready, context, limit", None, TaskPage),
    "add_task": ("Add a task", AddTask, TaskFound),
    "claim_task": ("Claim a task (or, at /tasks/claim, the most urgent ready one)",
                   ClaimTask, TaskFound),
    "get_task": ("One task", None, TaskFound),
    "finish_task": ("Mark a claimed task done (the claim's token)", ClaimProof, TaskFound),
    "release_task": ("Give a claimed task back (the claim's token)", ClaimProof, TaskFound),
}
_EXTRA_TYPES = [Lease, Context, ErrorView]
_PATH_PARAMS = ("unit_id", "context_id", "resource", "task_id")


def _strip_envelope(schema: dict[str, Any]) -> None:
    properties = schema.get("properties", {})
    for key in ("msg", "id"):
        properties.pop(key, None)
    if "required" in schema:
        schema["required"] = [k for k in schema["required"] if k not in ("msg", "id")]
        if not schema["required"]:
            del schema["required"]


@functools.cache
def document() -> bytes:
    types: list[Any] = [*_EXTRA_TYPES]
    for _, body, answer in OPERATIONS.values():
        types += [t for t in (body, answer) if t is not None]
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}")
    for component in components.values():
        _strip_envelope(component)
    by_type = dict(zip(map(repr, types), schemas, strict=True))
    error = {"description": "an error", "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ErrorView"}}}}
    paths: dict[str, dict[str, Any]] = {}
    for path, methods, handler in [*ROUTES, ROUTE]:
        summary, body, answer = OPERATIONS[handler.__name__]
        clean = path.replace(":path}", "}")
        operation: dict[str, Any] = {"summary": summary, "operationId": handler.__name__,
                                     "responses": {"default": error}}
        ok: dict[str, Any] = {"description": "success"}
        if answer is not None:
            ok["content"] = {"application/json": {"schema": by_type[repr(answer)]}}
        operation["responses"]["200"] = ok
        if body is not None:
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": by_type[repr(body)]}}}
        parameters = [{"name": name, "in": "path", "required": True,
                       "schema": {"type": "string"}}
                      for name in _PATH_PARAMS if "{" + name in path]
        if parameters:
            operation["parameters"] = parameters
        for method in methods:
            paths.setdefault(clean, {})[method.lower()] = operation
    for path in ("/stream-sse", "/stream/sse"):
        paths[path] = {"get": {"summary": "Server-Sent Events: engram watch's filters as "
                               "query parameters; resumes after Last-Event-ID",
                               "operationId": "stream_sse" + path.replace("/", "_"),
                               "responses": {"200": {"description": "text/event-stream"}}}}
    paths["/stream"] = {"get": {"summary": "WebSocket: the same filters, cursor=NAME, "
                                "acknowledgements {\"ack\": SEQ}", "operationId": "stream_ws",
                                "responses": {"101": {"description": "WebSocket"}}}}
    return msgspec.json.encode({
        "openapi": "3.1.0",
        "info": {"title": "engram gateway", "version": __version__},
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}, {}],
        "paths": paths,
    })


async def openapi_json(gw: Gateway, request: Request) -> Response:
    return Response(document(), media_type="application/json")


ROUTE: tuple[str, list[str], Handler] = ("/openapi.json", ["GET"], openapi_json)
