"""Query-string parameters, read strictly: a malformed value is a 400 naming it.

What each endpoint takes is a msgspec Struct below (:class:`UnitsQuery`, ...): the
endpoint reads its query string as that Struct (:func:`read`), any other parameter
is refused, and ``/openapi.json`` describes the same Struct (its JSON Schema is the
query's). A field's type says how its text is read (an integer, seconds, a flag, a
time, names repeated or comma-separated, ``KEY=VALUE`` pairs); its bounds are the
daemon's (:mod:`engramd.protocol.bounds`), which the daemon checks.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgspec
from starlette.requests import HTTPConnection

from engram_cli.formats.timeparse import parse_time
from engramd.protocol import BadRequest, TooLarge
from engramd.protocol import bounds as b
from engramd.protocol.messages import MAX_LIST_ITEMS
from engramd.protocol.model import MAX_MAP_ENTRIES

INT64 = 2**63
"""Integers are 64-bit signed on the wire (MessagePack): bigger ones are refused here."""
_INTEGER = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
"""Numbers as JSON writes them (not ``1_000``, `` 5``, ``inf`` or other digits than
0-9, which Python's ``int`` and ``float`` would take)."""


def known(request: HTTPConnection, names: frozenset[str] | set[str]) -> None:
    """Refuse a query parameter the endpoint does not take, as unknown body fields are."""
    unknown = sorted({key for key in request.query_params if key not in names})
    if unknown:
        allowed = ", ".join(sorted(names)) or "none"
        raise BadRequest(f"unknown query parameter {unknown[0]!r:.40} (this endpoint takes "
                         f"{allowed})")


def _single(request: HTTPConnection, name: str) -> str | None:
    """The one value of parameter *name* (None: not given); given twice, it is refused
    rather than one of them chosen."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise BadRequest(f"{name} given {len(values)} times: it takes one value")
    return values[0] if values else None


def integer(request: HTTPConnection, name: str, default: int | None = None) -> int | None:
    text = _single(request, name)
    if text is None:
        return default
    if not _INTEGER.fullmatch(text):
        raise BadRequest(f"{name} must be an integer, not {text!r:.40}")
    value = int(text)
    if not -INT64 <= value < INT64:
        raise BadRequest(f"{name} is out of range (a 64-bit integer)")
    return value


def seconds(request: HTTPConnection, name: str, default: float) -> float:
    text = _single(request, name)
    if text is None:
        return default
    if not _NUMBER.fullmatch(text):
        raise BadRequest(f"{name} must be a number, not {text!r:.40}")
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise BadRequest(f"{name} must be a number of seconds >= 0")
    return value


def flag(request: HTTPConnection, name: str) -> bool:
    given = _single(request, name)
    text = "false" if given is None else given.lower()
    if text in ("0", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    raise BadRequest(f"{name} must be true or false, not {text!r:.40}")


def time(request: HTTPConnection, name: str) -> Any:
    text = _single(request, name)
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}") from None


def names(request: HTTPConnection, name: str) -> list[str]:
    """Repeated or comma-separated values (none of them empty)."""
    found = [v for value in request.query_params.getlist(name) for v in value.split(",")]
    if "" in found:
        raise BadRequest(f"{name} must be one or more values, comma-separated, none empty")
    return found


def pairs(request: HTTPConnection, name: str) -> dict[str, str]:
    """Repeated ``name=KEY=VALUE`` parameters as a mapping."""
    found = {}
    for item in request.query_params.getlist(name):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadRequest(f"{name} must be KEY=VALUE, not {item!r:.40}")
        found[key] = value
    return found


def text(request: HTTPConnection, name: str) -> str | None:
    return _single(request, name)


P = TypeVar("P", bound=msgspec.Struct)
Reader = Callable[[HTTPConnection, str], Any]


def _reader(kind: msgspec.inspect.Type) -> Reader:
    """How a parameter of *kind* is read from its text."""
    while isinstance(kind, msgspec.inspect.Metadata):
        kind = kind.type
    if isinstance(kind, msgspec.inspect.UnionType):  # X | None: None is "not given"
        (kind,) = [t for t in kind.types if not isinstance(t, msgspec.inspect.NoneType)]
        return _reader(kind)
    match kind:
        case msgspec.inspect.BoolType():
            return flag
        case msgspec.inspect.IntType():
            return integer
        case msgspec.inspect.FloatType():
            return lambda request, name: seconds(request, name, 0.0)
        case msgspec.inspect.DateTimeType():
            return time
        case msgspec.inspect.ListType():
            return names
        case msgspec.inspect.DictType():
            return pairs
        case msgspec.inspect.LiteralType(values=values):
            return functools.partial(_one_of, values=tuple(map(str, values)))
        case _:
            return text


def _one_of(request: HTTPConnection, name: str, *, values: tuple[str, ...]) -> str | None:
    found = text(request, name)
    if found is not None and found not in values:
        raise BadRequest(f"{name} must be {' or '.join(values)}, not {found!r:.40}")
    return found


@functools.cache
def _readers(kind: type[msgspec.Struct]) -> tuple[tuple[str, Reader], ...]:
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    return tuple((field.name, _reader(field.type)) for field in info.fields)


def parameters(kind: type[msgspec.Struct] | None) -> frozenset[str]:
    """The parameters *kind* takes (None: none)."""
    return frozenset(kind.__struct_fields__) if kind is not None else frozenset()


@functools.cache
def _counted(kind: type[msgspec.Struct]) -> tuple[tuple[str, int], ...]:
    """The fields of *kind* that hold a number of values at most (``max_length``)."""
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    found = []
    for field in info.fields:
        kind_of = field.type
        while isinstance(kind_of, msgspec.inspect.Metadata):
            kind_of = kind_of.type
        if isinstance(kind_of, (msgspec.inspect.ListType, msgspec.inspect.DictType)) \
                and kind_of.max_length is not None:
            found.append((field.name, kind_of.max_length))
    return tuple(found)


def read(request: HTTPConnection, kind: type[P]) -> P:
    """The query string as *kind*: each parameter given read by its field's type (given
    empty, it is an empty text, an empty list, and no number, time or flag: 400). The
    number of a list's values is held to its bound here (413: the daemon would refuse
    the request whole); the other bounds are left to the daemon."""
    values = {name: reader(request, name) for name, reader in _readers(kind)
              if name in request.query_params}
    for name, bound in _counted(kind):
        if len(values.get(name, ())) > bound:
            raise TooLarge(f"{len(values[name])} values of {name}, at most {bound}")
    return kind(**values)


# -- what each endpoint takes --------------------------------------------------------

Names = Annotated[list[str], msgspec.Meta(
    description="Repeatable, or comma-separated; any of them matches")]
Time = Annotated[dt.datetime, msgspec.Meta(
    description="now, 30s, 10m, 2h, 3d, 1w (that long ago), or ISO 8601")]


class Query(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The base of the query Structs: an unknown parameter is refused (400)."""

    rules: ClassVar[dict[str, Any]] = {}
    """JSON Schema keywords on the whole query that a field's type cannot say (which
    parameters exclude each other); ``/openapi.json`` adds them."""


class UnitsQuery(Query):
    """A page of a context's units: the newest ``limit``, or back from ``before``
    (or ``cursor``), or forward from ``after``."""

    limit: b.PageLimit = 100
    before: b.Seq | None = None
    after: b.Seq | None = None
    cursor: Annotated[b.Seq | None, msgspec.Meta(
        description="The seed's name for before: the previous page's next_cursor")] = None
    reverse: Annotated[bool, msgspec.Meta(description="Newest first")] = False
    since: Time | None = None
    until: Time | None = None
    agent: Names = []
    type: Annotated[list[b.UnitType], msgspec.Meta(
        description="Unit types, repeatable or comma-separated (any case)")] = []

    rules: ClassVar[dict[str, Any]] = {"not": {"anyOf": [
        {"required": ["before", "after"]}, {"required": ["cursor", "before"]},
        {"required": ["cursor", "after"]}]}}


class ContextsQuery(Query):
    """A page of contexts by id."""

    limit: b.PageLimit = 100
    after: Annotated[str | None, msgspec.Meta(
        description="Page on from this context id (the previous page's next_cursor)")] = None
    cursor: Annotated[str | None, msgspec.Meta(
        description="The seed's name for after")] = None
    prefix: str = ""

    rules: ClassVar[dict[str, Any]] = {"not": {"required": ["after", "cursor"]}}


class LocksQuery(Query):
    """Leases held."""

    agent: Annotated[str | None, msgspec.Meta(description="Held by this agent")] = None
    prefix: Annotated[str, msgspec.Meta(description="Resources beginning so")] = ""


class LockHistoryQuery(Query):
    """The leases granted and ended, as journaled, oldest first: from ``since``, or
    after ``after`` (the previous page's next_cursor)."""

    since: Time | None = None
    until: Time | None = None
    after: Annotated[b.Seq | None, msgspec.Meta(
        description="The previous page's next_cursor")] = None
    limit: b.PageLimit = 1000


class ReleaseQuery(Query):
    lock_id: Annotated[str, msgspec.Meta(min_length=1, description="The lease's lock id")]


class InboxQuery(Query):
    """The caller's unread messages, oldest first."""

    limit: b.InboxLimit = 20
    peek: Annotated[bool, msgspec.Meta(description="Leave them unread")] = False
    wait: Annotated[b.InboxWait, msgspec.Meta(
        description="Seconds to wait for one when none is unread")] = 0.0
    pending: Annotated[bool, msgspec.Meta(
        description="Instead: the messages awaiting the caller's acknowledgement")] = False


class TasksQuery(Query):
    """Tasks, most urgent first."""

    state: Annotated[list[b.TaskState], msgspec.Meta(
        description="Repeatable or comma-separated")] = []
    ready: Annotated[bool, msgspec.Meta(description="Only tasks ready to claim")] = False
    context: Names = []
    limit: b.PageLimit = 100


class StreamQuery(Query):
    """``engram watch``'s filters, and where to start. Each filter holds as many values
    as a subscription may (engramd's bounds on a message's lists and maps)."""

    context: Annotated[list[b.ContextId], msgspec.Meta(
        max_length=MAX_LIST_ITEMS,
        description="Contexts, repeatable or comma-separated")] = []
    kind: Annotated[list[b.EventKind], msgspec.Meta(
        max_length=MAX_LIST_ITEMS,
        description="Event kinds, repeatable or comma-separated")] = []
    agent: Annotated[list[str], msgspec.Meta(
        max_length=MAX_LIST_ITEMS,
        description="Repeatable, or comma-separated; any of them matches")] = []
    type: Annotated[list[b.UnitType], msgspec.Meta(
        max_length=MAX_LIST_ITEMS,
        description="Unit types, repeatable or comma-separated (any case)")] = []
    meta: Annotated[dict[str, str], msgspec.Meta(
        max_length=MAX_MAP_ENTRIES,
        description="meta=KEY=VALUE, repeatable: units with all of them")] = {}
    after: Annotated[b.Seq | None, msgspec.Meta(
        description="The events after this seq (0: from the start; beyond the newest "
                    "event: 400); Last-Event-ID takes precedence")] = None
    heartbeat: Annotated[b.Heartbeat, msgspec.Meta(
        description="Seconds between heartbeats when idle")] = 15.0
    ticket: Annotated[str | None, msgspec.Meta(
        description="A stream ticket (POST /stream/ticket), for a browser")] = None


class SseQuery(StreamQuery):
    events: Annotated[Literal["engram", "seed"], msgspec.Meta(
        description="Event names: engram's kinds, or the seed's (workunit, context, "
                    "lock)")] = "engram"


class WebSocketQuery(StreamQuery):
    cursor: Annotated[b.Name | None, msgspec.Meta(
        description="A named cursor: resume after its last acknowledgement")] = None
