"""``engram unit create`` and what other commands share of it: parsing the pairs,
relationships, fence and payload given on the command line (see :mod:`..hot`)."""

from __future__ import annotations

import sys

from engram_cli.cli.context import CliContext
from engram_cli.client import Client
from engram_cli.client.errors import EngramError, UsageProblem
from engramd.protocol import RELATIONSHIP_TYPES, UNIT_ID_LENGTH


def parse_pairs(pairs: list[str] | None, what: str = "--meta") -> dict[str, str]:
    result = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageProblem(f"{what} expects KEY=VALUE, got {pair!r}")
        result[key] = value
    return result


def parse_relationships(values: list[str] | None) -> list[tuple[str, str]]:
    result = []
    for value in values or []:
        kind, sep, target = value.partition(":")
        if not sep or not kind or not target:
            raise UsageProblem(f"-r expects TYPE:ID (TYPE one of {', '.join(RELATIONSHIP_TYPES)}),"
                               f" got {value!r}")
        result.append((kind, target))
    return result


def whole_ids(client: Client, given: list[str]) -> list[str]:
    """Unit ids as given, with any prefix (shorter than a whole id) made whole by the
    daemon: one round trip, and none when every id is whole already."""
    prefixes = [unit_id for unit_id in given if len(unit_id) < UNIT_ID_LENGTH]
    if not prefixes:
        return given
    resolved = dict(zip(prefixes, client.resolve_unit_ids(prefixes), strict=True))
    return [resolved.get(unit_id, unit_id) for unit_id in given]


def whole_id(client: Client, given: str) -> str:
    return whole_ids(client, [given])[0]


def parse_fence(value: str | None) -> tuple[str, int] | None:
    """``RES:TOKEN`` (the first of a comma-separated list, as ``lock run`` sets it)."""
    if not value:
        return None
    first = value.split(",")[0]
    resource, sep, token = first.rpartition(":")
    if not sep or not resource or not token.isdigit():
        raise UsageProblem(f"--fence expects RES:TOKEN, got {value!r}")
    return resource, int(token)


def require_context(value: str | None) -> str:
    if not value:
        raise UsageProblem("give a context with -c/--context (or ENGRAM_CONTEXT)")
    return value


def payload_of(payload: str | None, file: str | None, empty: bool) -> bytes:
    """The payload from -p, else --file, else piped stdin; an empty one only with --empty,
    so that a forgotten payload (an unset variable, stdin that was never fed) writes
    nothing."""
    if sum(given is not None for given in (payload, file)) + empty > 1:
        raise UsageProblem("give one of --payload, --file and --empty")
    if empty:
        return b""
    if payload is not None:
        data = payload.encode()
    elif file is not None:
        try:
            with open(file, "rb") as source:
                data = source.read()
        except OSError as exc:
            raise EngramError(f"cannot read {file}: {exc.strerror}") from None
    else:
        data = b"" if sys.stdin.isatty() else sys.stdin.buffer.read()
    if not data:
        raise UsageProblem("no payload: give -p, --file or pipe stdin (or --empty)")
    return data


def create(cli: CliContext, *, context_id: str | None, type_: str, payload: str | None,
           file: str | None, meta: list[str] | None, relationship: list[str] | None,
           idempotency_key: str | None, fence: str | None, empty: bool,
           json: bool) -> int | None:
    """``engram unit create``."""
    from engram_cli.formats.jsonforms import unit_to_json

    data = payload_of(payload, file, empty)
    relationships = parse_relationships(relationship)
    client = cli.client()
    targets = whole_ids(client, [target for _, target in relationships])
    unit = client.create_unit(
        require_context(context_id), type_, data, meta=parse_pairs(meta),
        relationships=[(kind, target) for (kind, _), target in zip(relationships, targets,
                                                                   strict=True)],
        idempotency_key=idempotency_key, fence=parse_fence(fence))
    out = cli.output(json)
    if out.json:
        out.json_line(unit_to_json(unit))
    else:
        out.line(unit.id)
    return None
