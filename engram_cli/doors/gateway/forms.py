"""The JSON bodies of the HTTP API that are not protocol messages as they stand.

Units travel as ``engram unit get --json`` prints them: a payload that is text is
``payload``, anything else ``payload_base64`` (:mod:`engram_cli.formats.jsonforms`). Every
other request body is the protocol message itself, its fields by their protocol
names (SPECS §2.2), without ``msg`` and ``id``. These are msgspec types, so the
same definitions decode the bodies and describe them in ``/openapi.json``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from engramd.protocol import (
    AcquireLock,
    BadRequest,
    ClientMessage,
    Fence,
    Relationship,
    RenewLock,
    SendMessage,
    UnitDraft,
)
from engramd.protocol.bounds import MAX_RESOURCES

T = TypeVar("T")


def payload_bytes(text: str | None, encoded: str | None) -> bytes:
    if text is not None and encoded is not None:
        raise BadRequest("give payload or payload_base64, not both")
    if encoded is None:
        return (text or "").encode()
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("payload_base64 is not valid base64") from None


class DraftForm(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A unit to write (``POST /workunit``, alone or in a list)."""

    context_id: str
    type: str = "MESSAGE"
    payload: str | None = None
    payload_base64: str | None = None
    meta: dict[str, str] = {}
    relationships: list[Relationship] = []
    idempotency_key: str | None = None
    fence: Fence | None = None

    def draft(self) -> UnitDraft:
        return UnitDraft(context_id=self.context_id, type=self.type,
                         payload=payload_bytes(self.payload, self.payload_base64),
                         meta=self.meta, relationships=self.relationships,
                         idempotency_key=self.idempotency_key, fence=self.fence)


class MessageForm(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A message to agents (``POST /messages``); ``to``: names, or ``"*"`` for everyone."""

    to: list[str] | str
    payload: str | None = None
    payload_base64: str | None = None
    context_id: str | None = None
    thread: str | None = None
    reply_to: str | None = None
    ack_required: bool = False
    meta: dict[str, str] = {}
    new_recipients: bool = False

    def request(self) -> SendMessage:
        return SendMessage(to=[self.to] if isinstance(self.to, str) else self.to,
                           payload=payload_bytes(self.payload, self.payload_base64),
                           context_id=self.context_id, thread=self.thread,
                           reply_to=self.reply_to, ack_required=self.ack_required,
                           meta=self.meta, new_recipients=self.new_recipients)


def _listed(field: str, given: list[str] | str | None) -> list[str]:
    if given == []:
        raise BadRequest(f"{field}: an empty list (leave it out)")
    return [given] if isinstance(given, str) else given or []


class LockForm(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Leases to take together (``POST /locks``); ``wait`` seconds in line (0: once).
    ``resources`` are names (``resource_path``: the seed's name for one); ``paths``
    absolute paths on the gateway's machine (files, directories ending in ``/`` or on
    disk, globs), resolved to their names; ``shared``: shared (readers') leases."""

    resources: list[str] | str | None = None
    ttl: float | None = None
    wait: float = 0.0
    paths: list[str] | str | None = None
    shared: bool = False
    resource_path: str | None = None

    def request(self, resolve: Callable[[list[str]], list[str]]) -> AcquireLock:
        """The acquire, with *resolve* naming the paths (it asks git: call it off the
        event loop)."""
        resources, paths = _listed("resources", self.resources), _listed("paths", self.paths)
        if self.resource_path is not None:
            if resources or paths:
                raise BadRequest("give resources and paths, or the seed's resource_path, "
                                 "not both")
            resources = [self.resource_path]
        if not resources and not paths:
            raise BadRequest("give resources or paths (or the seed's resource_path)")
        if len(resources) + len(paths) > MAX_RESOURCES:
            raise BadRequest(f"at most {MAX_RESOURCES} resources and paths together")
        return AcquireLock(resources=[*resources, *resolve(paths)], ttl=self.ttl,
                           wait=self.wait, shared=self.shared)


class RenewForm(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Extend a lease (``POST /locks/renew``)."""

    lock_id: str
    ttl: float | None = None
    resource: str | None = None

    def request(self) -> RenewLock:
        return RenewLock(lock_id=self.lock_id, ttl=self.ttl, resource=self.resource)


class ClaimProof(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Finish or release a claimed task: the claim's fencing token (``task claim`` gave it)."""

    token: int


def decode(body: bytes, kind: type[T]) -> T:
    """*body* as *kind*, or :class:`BadRequest` naming what is wrong and where.

    JSON has numbers, not integers and floats: ``2.0`` is the integer 2 (as JSON Schema,
    and so ``/openapi.json``, says), ``2.5`` is none."""
    try:
        try:
            return msgspec.json.decode(body or b"{}", type=kind)
        except msgspec.ValidationError as exc:
            if "got `float`" not in str(exc):
                raise
            return msgspec.convert(_integral(msgspec.json.decode(body)), kind)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"request body: {exc}") from None
    except RecursionError:
        raise BadRequest("request body: nested too deep") from None


def _integral(data: Any) -> Any:
    """*data* with every float that is a whole number made an int."""
    if isinstance(data, float) and data.is_integer():
        return int(data)
    if isinstance(data, list):
        return [_integral(item) for item in data]
    if isinstance(data, dict):
        return {key: _integral(value) for key, value in data.items()}
    return data


M = TypeVar("M", bound="ClientMessage[Any]")  # a string: generic to the type checker only


SEED_ALIASES: dict[str, dict[str, tuple[str, bool]]] = {
    "search": {"context_id": ("contexts", True), "agent_id": ("agents", True)},
    "unit.related": {"target_id": ("unit_id", False)},
    "context.update": {"pin_units": ("pin", False), "unpin_units": ("unpin", False)},
}
"""Engram v3's names for a request's fields: (engram's name, whether a single value
becomes a list of one). Given both, the request is refused."""


ENVELOPE = ("msg", "id")
"""A protocol request's wire envelope: the gateway's to set, never a body's."""


def decode_request(body: bytes, kind: type[M], **fields: Any) -> M:
    """A protocol request from its JSON fields, *fields* (from the path, or set by the
    endpoint) on top, the seed's names for fields (:data:`SEED_ALIASES`) taken as
    engram's. A body may repeat a field the path gives, not contradict it; the
    envelope (``msg``, ``id``) is no body field."""
    aliases = SEED_ALIASES.get(str(kind.__struct_config__.tag), {})
    data = decode(body, dict[str, Any])
    for key in ENVELOPE:
        if key in data:
            raise BadRequest(f"request body: unknown field `{key}`")
    for seed, (name, listed) in aliases.items():
        if seed in data:
            if name in data:
                raise BadRequest(f"give {name} or {seed}, not both")
            value = data.pop(seed)
            data[name] = [value] if listed and isinstance(value, str) else value
    for key, value in fields.items():
        if key in data and data[key] != value:
            raise BadRequest(f"request body: {key} is {value!r:.60} here (the path says so), "
                             f"not {data[key]!r:.60}")
    return decode(msgspec.json.encode({**data, **fields}), kind)
