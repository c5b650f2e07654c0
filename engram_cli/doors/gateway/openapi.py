"""``/openapi.json``: the HTTP API described from the definitions the endpoints use.

Each operation's parts come from what its handler reads and answers, by msgspec's
JSON Schema:

* its query string is the Struct it reads it as (:data:`.routes.QUERY`, :mod:`.query`),
  one ``form``/``explode`` object parameter whose properties are the parameters and
  which refuses any other (``additionalProperties: false``, as the endpoint does);
* its body is the type it decodes (a form of :mod:`.forms`, or the protocol request
  without ``msg`` and ``id``, without the fields its path gives, and with the seed's
  names for fields); required when an empty body is refused;
* its answers are the types it builds them from (:mod:`.views`, or the protocol reply
  without its envelope), with the status it answers (201 where it creates), and the
  one error shape for every status it can give;
* the bounds the daemon holds each field to come from :mod:`engramd.protocol.bounds`
  (:data:`.catalog.BOUNDS`), where the daemon's checks take them from.

What each endpoint takes and answers is tabled in :mod:`.catalog`.

The two streams are described as what they are: ``/stream-sse`` a ``text/event-stream``
response with its events' data, ``/stream`` a WebSocket handshake (101) with the
messages each side sends.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import msgspec
import trio
from starlette.requests import Request
from starlette.responses import Response

from engram_cli import __version__
from engram_cli.doors.gateway import ui, views
from engram_cli.doors.gateway.catalog import (
    AGENT_HEADER,
    BASE,
    BOUNDS,
    CALLER,
    ERROR_HEADERS,
    ERRORS,
    HANDSHAKE,
    OPERATIONS,
    PATH_PARAMS,
    PROPERTIES,
    RULES,
    STREAM_ITEMS,
    WITH_BODY,
    WITHOUT_SEMANTIC,
    Acknowledgement,
    ErrorBody,
    ErrorView,
)
from engram_cli.doors.gateway.forms import ENVELOPE, SEED_ALIASES
from engram_cli.doors.gateway.query import SseQuery, WebSocketQuery
from engram_cli.doors.gateway.routes import QUERY, ROUTES
from engram_cli.doors.gateway.state import Gateway, Handler
from engramd.protocol import EngramError, GetStatus
from engramd.protocol import bounds as b


def _strip(schema: dict[str, Any], fields: tuple[str, ...] | list[str]) -> None:
    properties = schema.get("properties", {})
    for key in fields:
        properties.pop(key, None)
    if "required" in schema:
        schema["required"] = [k for k in schema["required"] if k not in fields]
        if not schema["required"]:
            del schema["required"]


def _merge_rule(schema: dict[str, Any], rule: dict[str, Any]) -> None:
    """Add *rule*'s keywords to *schema*, under ``allOf`` where one is there already."""
    for key, value in rule.items():
        if key in schema:
            schema.setdefault("allOf", []).append({key: value})
        else:
            schema[key] = value


def _with_seed_names(schema: dict[str, Any], tag: str) -> dict[str, Any]:
    """*schema* taking the seed's names for its fields (:data:`SEED_ALIASES`) as well."""
    schema = msgspec.json.decode(msgspec.json.encode(schema))
    for seed, (name, listed) in SEED_ALIASES.get(tag, {}).items():
        own = schema["properties"][name]
        alias = {"anyOf": [own["items"], own]} if listed and "items" in own else dict(own)
        alias.pop("default", None)
        alias["description"] = f"The seed's name for {name}"
        schema["properties"][seed] = alias
        if name in schema.get("required", []):
            schema["required"].remove(name)
            if not schema["required"]:
                del schema["required"]
            _merge_rule(schema, {"oneOf": [{"required": [name]}, {"required": [seed]}]})
        else:
            _merge_rule(schema, {"not": {"required": [name, seed]}})
    return schema


class _Components:
    """The document's ``components.schemas``, from every type it names."""

    def __init__(self, types: list[Any], bounds: dict[str, dict[str, Any]]) -> None:
        overlaid = [t for fields in bounds.values() for t in fields.values()]
        schemas, self.schemas = msgspec.json.schema_components(
            [*types, *overlaid], ref_template="#/components/schemas/{name}")
        self._by_type = dict(zip(map(repr, types), schemas, strict=False))
        extra = dict(zip(map(repr, overlaid), schemas[len(types):], strict=True))
        for name, component in self.schemas.items():
            _strip(component, ENVELOPE)
            for field, bound in bounds.get(name, {}).items():
                assert field in component["properties"], f"{name} has no field {field}"
                default = component["properties"][field].get("default")
                component["properties"][field] = dict(extra[repr(bound)])
                if default is not None:  # None: absent (the bound may take no null)
                    component["properties"][field]["default"] = default
            for field, keywords in PROPERTIES.get(name, {}).items():
                assert field in component["properties"], f"{name} has no field {field}"
                component["properties"][field].update(keywords)
            _merge_rule(component, RULES.get(name, {}))
        for kind in types:
            rules = getattr(kind, "rules", None)
            if isinstance(rules, dict) and rules:
                _merge_rule(self.schemas[kind.__name__], rules)

    def ref(self, kind: Any) -> dict[str, Any]:
        return dict(self._by_type[repr(kind)])

    def body(self, kind: Any, omit: list[str], tag: str) -> dict[str, Any]:
        """The body schema of *kind* less *omit*, inline when it differs from the type's."""
        schema = self.ref(kind)
        if not omit and tag not in SEED_ALIASES:
            return schema
        name = schema["$ref"].rsplit("/", 1)[1]
        inline = msgspec.json.decode(msgspec.json.encode(self.schemas[name]))
        _strip(inline, omit)
        return _with_seed_names(inline, tag) if tag in SEED_ALIASES else inline


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(statuses: tuple[int, ...]) -> dict[str, Any]:
    error = {"$ref": "#/components/schemas/ErrorView"}
    answers: dict[str, Any] = {}
    for status in sorted(set(statuses)):
        answer: dict[str, Any] = {"description": ERRORS[status], "content": _json(error)}
        header = ERROR_HEADERS.get(status)
        if header:
            answer["headers"] = {header[0]: {"required": True, "description": header[1],
                                             "schema": {"type": "string"}}}
        answers[str(status)] = answer
    return answers


def _query_parameter(components: _Components, kind: Any) -> dict[str, Any]:
    """A query Struct as one object parameter, each field a parameter of its own."""
    required = any(field.required for field in msgspec.structs.fields(kind))
    return {"name": "query", "in": "query", "required": required, "style": "form",
            "explode": True, "description": (kind.__doc__ or "").strip() +
            " Any other query parameter is refused (400).",
            "schema": components.ref(kind)}


def _bare(kind: msgspec.inspect.Type) -> msgspec.inspect.Type:
    """*kind* without its metadata, and without None when it may be None."""
    while isinstance(kind, msgspec.inspect.Metadata):
        kind = kind.type
    if isinstance(kind, msgspec.inspect.UnionType):
        rest = [t for t in kind.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(rest) == 1:
            return _bare(rest[0])
    return kind


def _query_schemas(components: _Components, kinds: list[Any]) -> None:
    """The wire forms of query fields: no null (a query string has none: a parameter is
    given or not), and where a type is not its text, the text: a time (also relative),
    ``KEY=VALUE`` pairs (repeated)."""
    for kind in kinds:
        schema = components.schemas[kind.__name__]
        for field in msgspec.structs.fields(kind):
            shown = schema["properties"][field.name]
            branches = [s for s in shown.get("anyOf", []) if s != {"type": "null"}]
            if "anyOf" in shown and len(branches) == 1:
                del shown["anyOf"]
                shown.update({**branches[0], **shown})  # its own description first
            if shown.get("default", 0) is None:
                del shown["default"]
            info = _bare(msgspec.inspect.type_info(field.type))
            if isinstance(info, msgspec.inspect.DateTimeType):
                replaced: dict[str, Any] = {"anyOf": [
                    {"type": "string", "format": "date-time"},
                    {"type": "string",
                     "pattern": f"^[{b.WHITESPACE}]*(?:now|[0-9]+(?:\\.[0-9]+)?"
                                f"[{b.WHITESPACE}]*[smhdw])[{b.WHITESPACE}]*$"}]}
            elif isinstance(info, msgspec.inspect.DictType):
                replaced = {"type": "array", "items": {"type": "string", "pattern": "^[^=]+="}}
            elif isinstance(info, msgspec.inspect.ListType):
                item = _bare(info.item_type)
                if isinstance(item, msgspec.inspect.LiteralType):
                    one = "(?:" + "|".join(map(re.escape, map(str, item.values))) + ")"
                elif isinstance(item, msgspec.inspect.StrType) and item.pattern:
                    one = "(?:" + item.pattern.removeprefix("^").removesuffix("$") + ")"
                else:
                    one = "[^,]+"
                replaced = {"type": "array", "items": {
                    "type": "string", "pattern": f"^{one}(?:,{one})*$",
                    "description": "One value, or several comma-separated"}}
            else:
                continue
            for keep in ("description", "default"):
                if keep in shown:
                    replaced[keep] = shown[keep]
            schema["properties"][field.name] = replaced


def _operation(components: _Components, path: str, handler: Handler) -> dict[str, Any]:
    op = OPERATIONS[handler.__name__]
    operation: dict[str, Any] = {"summary": op.summary, "operationId": handler.__name__}
    parameters = [{"name": name, "in": "path", "required": True,
                   "schema": components.ref(kind)}
                  for name, kind in PATH_PARAMS.items() if "{" + name in path]
    query = QUERY.get(handler.__name__)
    if query is not None:
        parameters.append(_query_parameter(components, query))
    if op.caller and op.agent:
        parameters.append(AGENT_HEADER)
    if not op.caller:
        operation["security"] = []
    if parameters:
        operation["parameters"] = parameters
    statuses = CALLER if op.caller else BASE
    if op.body is not None:
        omit = [*op.omit, *(name for name in PATH_PARAMS if "{" + name in path)]
        tag = str(getattr(getattr(op.body, "__struct_config__", None), "tag", ""))
        schema = components.body(op.body, omit, tag)
        operation["requestBody"] = {"required": _required(schema, components),
                                    "content": _json(schema)}
        statuses = (*statuses, *WITH_BODY)
    ok: dict[str, Any] = {"description": "success"}
    if handler.__name__ == "metrics":
        ok["content"] = {"text/plain; version=0.0.4; charset=utf-8": {
            "schema": {"type": "string"}}}
    elif handler.__name__ == "console_page":
        ok["content"] = {"text/html; charset=utf-8": {"schema": {"type": "string"}}}
    elif handler.__name__ == "console_asset":
        ok["content"] = {kind: {"schema": {"type": "string"}}
                         for kind in sorted(set(ui.ASSETS.values()))}
    elif handler.__name__ == "openapi_json":
        ok["content"] = _json({"type": "object"})
    elif op.answer is not None:
        ok["content"] = _json(components.ref(op.answer))
    operation["responses"] = {str(op.status): ok, **_errors((*statuses, *op.errors))}
    if handler.__name__ == "readyz":
        operation["responses"]["503"] = {"description": "not ready: the daemon's state, or "
                                         "unavailable and the reason",
                                         "content": _json(components.ref(views.Readiness))}
    return operation


def _required(schema: dict[str, Any], components: _Components) -> bool:
    """An empty body is ``{}``: required when ``{}`` is not one."""
    if "$ref" in schema:
        schema = components.schemas[schema["$ref"].rsplit("/", 1)[1]]
    return bool(schema.get("required") or schema.get("oneOf") or "anyOf" in schema)


def _streams(components: _Components) -> dict[str, Any]:
    events = components.ref(STREAM_ITEMS)
    sse = {
        "summary": "Server-Sent Events: the journal's events as they happen, resumable",
        "description": "A text/event-stream: first `retry: 2000`; then per event `id:` its "
                       "seq, `event:` its kind (with events=seed: workunit, context, lock) and "
                       "`data:` its JSON (x-events); `event: heartbeat` when idle; "
                       "`event: error` with {code, message} before the stream ends on an "
                       "error (a JWT's exp, a revoked token). A client reconnecting with "
                       "Last-Event-ID gets the events after it (one beyond the newest "
                       "event is 400). Errors before the stream starts are statuses "
                       "(413: a filter with more values than a subscription holds).",
        "parameters": [_query_parameter(components, SseQuery),
                       {"name": "Last-Event-ID", "in": "header", "required": False,
                        "description": "Resume after this seq (it takes precedence over "
                                       "after)",
                        "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"}},
                       AGENT_HEADER],
        "responses": {"200": {"description": "the stream",
                              "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                      **_errors((*CALLER, 413))},
        "x-events": {"<kind>": events, "heartbeat": components.ref(views.HeartbeatView),
                     "error": components.ref(ErrorBody)},
    }
    websocket = {
        "summary": "WebSocket: the journal's events as they happen, acknowledged under a "
                   "named cursor",
        "operationId": "stream_ws",
        "description": "A WebSocket (RFC 6455) handshake: the gateway answers 101 and sends "
                       "one text message per event and per heartbeat (x-messages.server); "
                       "the client sends {\"ack\": SEQ} as text to acknowledge under its "
                       "cursor (x-messages.client; anything else, a binary message too, gets "
                       "an error message and the stream goes on). Errors before the "
                       "handshake are statuses; after it, an error message and close code "
                       "1008 when the credentials end (a JWT's exp, a revoked token), else "
                       "1011 (1001 when the gateway stops). A request that is no handshake "
                       "gets 426.",
        "parameters": [_query_parameter(components, WebSocketQuery),
                       *({"name": name, "in": "header", "required": True,
                          "schema": {"type": "string", **schema}}
                         for name, schema in HANDSHAKE),
                       AGENT_HEADER],
        "responses": {"101": {"description": "Switching Protocols: the WebSocket"},
                      **_errors((*CALLER, 413, 426))},
        "x-messages": {"server": {"anyOf": [events, components.ref(views.HeartbeatView),
                                            components.ref(views.StreamError)]},
                       "client": components.ref(Acknowledgement)},
    }
    return {"/stream-sse": {"get": {**sse, "operationId": "stream_sse"}},
            "/stream/sse": {"get": {**sse, "operationId": "stream_sse_path"}},
            "/stream": {"get": websocket}}


@functools.cache
def document(semantic: bool = True) -> bytes:
    """The document; *semantic*: whether the daemon has semantic search (without it,
    ``/search/vector`` is none of its endpoints and a search's mode is keyword)."""
    types: list[Any] = [ErrorView, ErrorBody, Acknowledgement, views.HeartbeatView,
                         views.StreamError, STREAM_ITEMS, SseQuery, WebSocketQuery, *QUERY.values(),
                         *PATH_PARAMS.values()]
    for op in OPERATIONS.values():
        types += [t for t in (op.body, op.answer) if t is not None]
    types = list({repr(t): t for t in types}.values())
    components = _Components(types, BOUNDS if semantic else WITHOUT_SEMANTIC)
    _query_schemas(components, [SseQuery, WebSocketQuery, *QUERY.values()])
    paths: dict[str, dict[str, Any]] = {}
    for path, methods, handler in [*ROUTES, ROUTE]:
        clean = path.replace(":path}", "}")
        if handler.__name__ == "search_vector" and not semantic:
            continue
        for method in methods:
            operation = _operation(components, path, handler)
            if path == "/tasks/{task_id}/claim":
                operation["operationId"] = "claim_task_by_id"
            paths.setdefault(clean, {})[method.lower()] = operation
    paths.update(_streams(components))
    return msgspec.json.encode({
        "openapi": "3.1.0",
        "info": {"title": "engram gateway", "version": __version__,
                 "description": "engram over HTTP (SPECS §6.3). Every error is "
                 "{\"error\": {\"code\", \"message\"}}; a path that is no endpoint is 404, a "
                 "method an endpoint does not take 405 (with Allow). Request bodies refuse "
                 "unknown fields and endpoints unknown query parameters (400)."},
        "components": {"schemas": components.schemas,
                       "securitySchemes": {"bearer": {
                           "type": "http", "scheme": "bearer",
                           "description": "An engram agent token (egt_…), or a JWT with "
                                          "--auth jwt; with --auth none, optional"}}},
        "security": [{"bearer": []}, {}],
        "paths": paths,
    })


async def openapi_json(gw: Gateway, request: Request) -> Response:
    return Response(document(await _semantic(gw)), media_type="application/json")


async def _semantic(gw: Gateway) -> bool:
    """Whether the daemon has semantic search (when it cannot say: as if it had)."""
    try:
        with trio.fail_after(1.0):
            status = await gw.link.request(GetStatus())
    except (EngramError, trio.TooSlowError, OSError):
        return True
    return status.journal is None or status.journal.vector_seq is not None


ROUTE: tuple[str, list[str], Handler] = ("/openapi.json", ["GET"], openapi_json)
