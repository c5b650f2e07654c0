"""``engram unit create`` and what other commands share of it: parsing the pairs,
relationships, fence and payload given on the command line (see :mod:`..hot`).

The parsing helpers import nothing at the start (the client library's errors only when
they raise one): the fast start (:mod:`engram_cli.cli.fast`) parses with them before it
knows whether it needs msgspec."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from engram_cli.cli.context import CliContext
    from engram_cli.client import Client


def _usage(message: str) -> Exception:
    from engram_cli.client.errors import UsageProblem

    return UsageProblem(message)


def parse_pairs(pairs: list[str] | None, what: str = "--meta") -> dict[str, str]:
    result = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise _usage(f"{what} expects KEY=VALUE, got {pair!r}")
        result[key] = value
    return result


def parse_relationships(values: list[str] | None) -> list[tuple[str, str]]:
    result = []
    for value in values or []:
        kind, sep, target = value.partition(":")
        if not sep or not kind or not target:
            from engramd.protocol import RELATIONSHIP_TYPES

            raise _usage(f"-r expects TYPE:ID (TYPE one of {', '.join(RELATIONSHIP_TYPES)}),"
                         f" got {value!r}")
        result.append((kind, target))
    return result


def whole_ids(client: Client, given: list[str]) -> list[str]:
    """Unit ids as given, with any prefix (shorter than a whole id) made whole by the
    daemon: one round trip, and none when every id is whole already."""
    from engramd.protocol import UNIT_ID_LENGTH

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
        raise _usage(f"--fence expects RES:TOKEN, got {value!r}")
    from engram_cli.cli.hot.checks import wire_int

    number = int(token)
    wire_int(number, "--fence's TOKEN")
    return resource, number


def require_context(value: str | None) -> str:
    if not value:
        raise _usage("give a context with -c/--context (or ENGRAM_CONTEXT)")
    return value


def payload_of(payload: str | None, file: str | None, empty: bool) -> bytes:
    """The payload from -p, else --file, else piped stdin; an empty one only with --empty,
    so that a forgotten payload (an unset variable, stdin that was never fed) writes
    nothing."""
    if sum(given is not None for given in (payload, file)) + empty > 1:
        raise _usage("give one of --payload, --file and --empty")
    if empty:
        return b""
    if payload is not None:
        data = payload.encode()
    elif file is not None:
        try:
            with open(file, "rb") as source:
                data = source.read()
        except OSError as exc:
            from engram_cli.client.errors import EngramError

            raise EngramError(f"cannot read {file}: {exc.strerror}") from None
    else:
        data = b"" if sys.stdin.isatty() else sys.stdin.buffer.read()
    if not data:
        raise _usage("no payload: give -p, --file or pipe stdin (or --empty)")
    return data


def create(cli: CliContext, *, context_id: str | None, type_: str, payload: str | None,
           file: str | None, meta: list[str] | None, relationship: list[str] | None,
           idempotency_key: str | None, fence: str | None, empty: bool,
           json: bool, data: bytes | None = None) -> int | None:
    """``engram unit create`` (*data*: the payload, read already)."""
    from engram_cli.formats.jsonforms import unit_to_json

    if data is None:
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
