"""``engram unit create|get|list|import|export|related``: the journal of work units."""

# (No postponed annotations: see engram_cli/app.py.)

import datetime as dt
import io
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, NoReturn, cast

import typer

from engram_cli.cli import completion, context, output
from engram_cli.cli.hot import unit as hot
from engram_cli.cli.hot.unit import (
    require_context,
    whole_id,
)
from engram_cli.cli.options import JsonOption
from engram_cli.client import Client, requests
from engram_cli.client.errors import EngramError, NotFound, UsageProblem
from engram_cli.formats.jsonforms import (
    BadLine,
    draft_from_json,
    origin_from_json,
    related_json,
    unit_to_json,
)
from engram_cli.formats.text import preview
from engram_cli.formats.timeparse import parse_time
from engramd.protocol import (
    DEFAULT_MAX_FRAME,
    UNIT_ID_LENGTH,
    UNIT_TYPES,
    Unit,
    UnitDraft,
    UnitOrigin,
)

if TYPE_CHECKING:
    import gzip

app = typer.Typer(help="Write and read work units.", no_args_is_help=True,
                  add_completion=False)

ContextOption = Annotated[str | None, typer.Option(
    "--context", "-c", metavar="CTX", envvar="ENGRAM_CONTEXT", show_envvar=True,
    autocompletion=completion.contexts, help="The context (a slug such as build-42).")]
MetaOption = Annotated[list[str] | None, typer.Option(
    "--meta", "-m", metavar="KEY=VALUE", help="Metadata (repeatable).")]


def _time(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None


@app.command()
def create(
    ctx: typer.Context,
    context_id: ContextOption = None,
    type_: Annotated[str, typer.Option(
        "--type", "-t", metavar="TYPE", autocompletion=completion.unit_types,
        help=f"Unit type: {', '.join(UNIT_TYPES)} (any case).")] = "MESSAGE",
    payload: Annotated[str | None, typer.Option(
        "--payload", "-p", metavar="TEXT", help="The payload (else --file, else stdin).")] = None,
    file: Annotated[str | None, typer.Option(
        "--file", "-f", metavar="PATH", help="Read the payload from this file.")] = None,
    meta: MetaOption = None,
    relationship: Annotated[list[str] | None, typer.Option(
        "--rel", "-r", metavar="TYPE:ID", autocompletion=completion.relationships,
        help="A relationship to an existing unit (repeatable).")] = None,
    idempotency_key: Annotated[str | None, typer.Option(
        "--idempotency-key", metavar="KEY",
        help="A retry with the same key returns the first unit instead of writing again.")
    ] = None,
    fence: Annotated[str | None, typer.Option(
        "--fence", metavar="RES:TOKEN", envvar="ENGRAM_FENCE", show_envvar=True,
        help="Write only while the lease with TOKEN holds RES (exit 4 otherwise).")] = None,
    empty: Annotated[bool, typer.Option(
        "--empty", help="Write a unit with no payload (else one is required).")] = False,
    json: JsonOption = False,
) -> int | None:
    """Write one unit and print its id (or the whole unit with --json).

    The payload comes from -p, --file or piped stdin; an empty one needs --empty.

    Examples:

      engram unit create -c build-42 -p "tests pass"
      make test 2>&1 | engram unit create -c build-42 -t TOOL_RESULT -m cmd="make test"
      id=$(engram unit create -c build-42 -t ERROR -p "disk full on /var")
      engram unit create -c build-42 -p "rotated the logs" -r RESPONDS_TO:$id
    """
    return hot.create(context.get(ctx), context_id=context_id, type_=type_, payload=payload,
                      file=file, meta=meta, relationship=relationship,
                      idempotency_key=idempotency_key, fence=fence, empty=empty, json=json)


@app.command()
def get(
    ctx: typer.Context,
    ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Unit ids.")],
    raw: Annotated[bool, typer.Option("--raw", help="Write the payload bytes only.")] = False,
    json: JsonOption = False,
) -> None:
    """Show units by id; exit 3 if any is missing (the others are still shown)."""
    cli = context.get(ctx)
    out = cli.output(json)
    client = cli.client()
    found = client.get_units([_whole_or_missing(client, unit_id) for unit_id in ids])
    if raw:
        for unit in found.units:
            sys.stdout.buffer.write(unit.payload)
        sys.stdout.buffer.flush()
    elif out.json:
        for unit in found.units:
            out.json_line(unit_to_json(unit))
    elif out.is_terminal:
        output.unit_panels(out, found.units)
    else:
        output.units(out, found.units)
    if found.missing:
        raise NotFound(_why_missing(client, found.missing))


def _why_missing(client: Client, missing: list[str]) -> str:
    """"no unit ID", or for one whole id the daemon's reason (retention archived it)."""
    if len(missing) == 1 and len(missing[0]) == UNIT_ID_LENGTH:
        try:
            client.resolve_unit_ids(missing)
        except NotFound as exc:
            return str(exc)
    return f"no unit {', '.join(missing)}"


def _whole_or_missing(client: Client, given: str) -> str:
    """A prefix made whole; one no unit has stays as given, to be reported missing with
    the others while the units found are still shown."""
    try:
        return whole_id(client, given)
    except NotFound:
        return given


def _list_options(agent: list[str] | None, type_: list[str] | None, since: str | None,
                  until: str | None) -> dict[str, Any]:
    return {"agents": agent or [], "types": type_ or [], "since": _time(since),
            "until": _time(until)}


AgentFilter = Annotated[list[str] | None, typer.Option(
    "--agent", metavar="AGENT", help="Only units of this agent (repeatable).")]
TypeFilter = Annotated[list[str] | None, typer.Option(
    "--type", "-t", metavar="TYPE", autocompletion=completion.unit_types,
    help="Only units of this type (repeatable).")]
SinceOption = Annotated[str | None, typer.Option(
    "--since", metavar="TIME", help="Only units from TIME on (10m, 2h, 3d, ISO 8601).")]
UntilOption = Annotated[str | None, typer.Option(
    "--until", metavar="TIME", help="Only units up to TIME.")]


@app.command("list")
def list_(
    ctx: typer.Context,
    context_id: ContextOption = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=10_000,
                                       help="How many units.")] = 100,
    before: Annotated[int | None, typer.Option(
        "--before", metavar="SEQ", help="Page back: units before this sequence number.")
    ] = None,
    after: Annotated[int | None, typer.Option(
        "--after", metavar="SEQ", help="Page forward: units after this sequence number.")
    ] = None,
    reverse: Annotated[bool, typer.Option("--reverse", help="Newest first.")] = False,
    agent: AgentFilter = None,
    type_: TypeFilter = None,
    since: SinceOption = None,
    until: UntilOption = None,
    json: JsonOption = False,
) -> None:
    """A context's units in order: the newest N, oldest first (like tail)."""
    cli = context.get(ctx)
    out = cli.output(json)
    page = cli.client().list_units(require_context(context_id), limit=limit, before=before,
                                   after=after, reverse=reverse,
                                   **_list_options(agent, type_, since, until))
    if out.json:
        for unit in page.units:
            out.json_line(unit_to_json(unit))
    else:
        output.units(out, page.units)
    if page.next_cursor is not None and out.is_terminal and not out.json:
        flag = "--after" if after is not None else "--before"
        output.note(f"more: {flag} {page.next_cursor}")


def _all_units(client: Client, context_id: str, **options: Any) -> Iterator[Unit]:
    cursor = 0
    while True:
        page = client.list_units(context_id, after=cursor, limit=1000, **options)
        yield from page.units
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


@app.command()
def export(
    ctx: typer.Context,
    context_id: ContextOption = None,
    agent: AgentFilter = None,
    type_: TypeFilter = None,
    since: SinceOption = None,
    until: UntilOption = None,
    every: Annotated[bool, typer.Option(
        "--all", help="Every context's units, in journal order: the whole journal (to "
                      "move it into another, a cluster's for one).")] = False,
    json: Annotated[bool, typer.Option(
        "--json", help="Accepted for symmetry: export always writes JSON lines.")] = False,
) -> None:
    """Write a context's units as JSON lines, oldest first (what import reads)."""
    cli = context.get(ctx)
    out = cli.output(True)
    client, options = cli.client(), _list_options(agent, type_, since, until)
    if every:
        import heapq

        if context_id:
            raise UsageProblem("--all and -c/--context exclude each other")
        # Each context's units come in seq order: merged, the journal's order, so a
        # unit's relationship targets come before it (as import needs them).
        units: Iterable[Unit] = heapq.merge(
            *(_all_units(client, found, **options) for found in _all_contexts(client)),
            key=lambda unit: unit.seq)
    else:
        units = _all_units(client, require_context(context_id), **options)
    for unit in units:
        out.json_line(unit_to_json(unit))


def _all_contexts(client: Client) -> list[str]:
    found: list[str] = []
    cursor = None
    while True:
        page = client.list_contexts(limit=1000, after=cursor)
        found += [each.id for each in page.contexts]
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


MAX_LINE_BYTES = DEFAULT_MAX_FRAME
"""A line longer than the largest request frame could not be written anyway."""


BATCH_BYTES = DEFAULT_MAX_FRAME // 2
"""A batch ends before its lines pass this many bytes, whatever ``--batch`` says: a
request (a frame) holds at most :data:`DEFAULT_MAX_FRAME`, and 500 units of 100 KB do not
fit. (A line's JSON is about the size of its unit in the request, base64 a third more.)"""


def _read_lines(source: BinaryIO, context_id: str | None, keep_ids: bool
                ) -> Iterator[tuple[int, int, UnitDraft, str | None, UnitOrigin | None]]:
    """``(line number, its bytes, draft, agent, origin)`` of each line."""
    import json as jsonlib  # only an import reads JSON; `unit create` starts without it
    import zlib

    number = 0
    while True:
        number += 1
        try:
            line = source.readline(MAX_LINE_BYTES + 1)
        except (OSError, EOFError, zlib.error) as exc:  # a damaged or cut gzip archive
            raise EngramError(f"line {number}: cannot read the input: {exc}") from None
        if not line:
            return
        if len(line) > MAX_LINE_BYTES:  # read no further: it may never end (a gzip bomb)
            _too_long(number)
        if not line.strip():
            continue
        try:
            data = jsonlib.loads(line)
            draft, agent = draft_from_json(data, context_id=context_id)
            origin = origin_from_json(data) if keep_ids else None
        except (ValueError, BadLine) as exc:
            raise EngramError(f"line {number}: {exc}") from None
        yield number, len(line), draft, agent, origin


def _remap(draft: UnitDraft, new_ids: dict[str, str]) -> UnitDraft:
    """Point relationships at the ids this import's units got in place of the old."""
    if not any(rel.target in new_ids for rel in draft.relationships):
        return draft
    relationships = [requests.relationship(rel.type, new_ids.get(rel.target, rel.target),
                                           rel.meta) for rel in draft.relationships]
    return requests.draft(draft.context_id, draft.type, draft.payload, meta=draft.meta,
                          relationships=relationships, idempotency_key=draft.idempotency_key)


def _unpacked(source: BinaryIO) -> BinaryIO:
    """*source*, read through gzip when it is gzip's (a retention archive, SPECS §3.4).

    An archive in a file is read through once before anything is written: gzip checks
    its CRC and length only at the end, and a damaged archive should write nothing
    rather than its units up to the damage. (From stdin it cannot be read twice: the
    check comes at the end, as for a bad line.)"""
    import gzip

    try:
        if source.seekable():
            if source.read(2) != b"\x1f\x8b":
                source.seek(0)
                return source
            source.seek(0)
            _check_archive(gzip.GzipFile(fileobj=source, mode="rb"))
            source.seek(0)
            return cast(BinaryIO, gzip.GzipFile(fileobj=source, mode="rb"))
        # A pipe: its first read may bring a single byte, which peek would stop at.
        head = source.read(2)
    except OSError as exc:
        raise EngramError(f"cannot read the input: {exc.strerror or exc}") from None
    joined = cast(BinaryIO, io.BufferedReader(_Rejoined(head, source)))
    return cast(BinaryIO, gzip.GzipFile(fileobj=joined, mode="rb")) \
        if head == b"\x1f\x8b" else joined


class _Rejoined(io.RawIOBase):
    """*head*, read off a stream to look at it, then the rest of the stream."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            taken, self._head = self._head[:len(buffer)], self._head[len(buffer):]
        else:
            taken = self._rest.read1(len(buffer)) if hasattr(self._rest, "read1") \
                else self._rest.read(len(buffer))
        buffer[:len(taken)] = taken
        return len(taken)


def _check_archive(archive: "gzip.GzipFile") -> None:
    """Read *archive* to its end, where gzip checks it, stopping at a line too long."""
    import zlib

    number, line_bytes = 1, 0
    try:
        while chunk := archive.read(1 << 20):
            ends = chunk.count(b"\n")
            line_bytes = len(chunk) - chunk.rfind(b"\n") - 1 if ends else line_bytes + len(chunk)
            number += ends
            if line_bytes > MAX_LINE_BYTES:  # _read_lines' bound, found before reading on
                _too_long(number)
    except (OSError, EOFError, zlib.error) as exc:
        raise EngramError(f"the archive is damaged, nothing imported: {exc}") from None


def _too_long(number: int) -> NoReturn:
    raise EngramError(f"line {number}: longer than {MAX_LINE_BYTES >> 20} MiB, more than a "
                      "unit's request can carry")


@app.command("import")
def import_(
    ctx: typer.Context,
    file: Annotated[str | None, typer.Argument(
        metavar="[FILE]", help="JSON lines to read (default: stdin).")] = None,
    context_id: Annotated[str | None, typer.Option(
        "--context", "-c", metavar="CTX", autocompletion=completion.contexts,
        help="Put every unit in this context instead.")
    ] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, max=1000,
                                       help="Units written per request (all or nothing); "
                                            "fewer when they pass 8 MiB.")
    ] = 500,
    new_ids: Annotated[bool, typer.Option(
        "--new-ids", help="Write copies: new ids and times (a second import of the same "
        "file still writes nothing).")] = False,
    json: JsonOption = False,
) -> None:
    """Write units from JSON lines (as export writes them), in batches.

    Units keep their id, their time and their agent (a line without an agent is
    yours; one without id and ts gets new ones); their seq is this journal's. A unit
    whose id is here already is not written again, so export then import into the
    same journal writes nothing and a restore into an empty one gives back the same
    units. A batch holds the lines of every agent, in file order. A bad line stops
    the import with its line number; earlier batches stay written, nothing of the bad
    one is. A gzip archive (a retention archive) in FILE is checked whole first: a
    damaged one imports nothing.
    """
    cli = context.get(ctx)
    out = cli.output(json)
    try:
        source: BinaryIO = open(file, "rb") if file else sys.stdin.buffer  # noqa: SIM115
    except OSError as exc:
        raise EngramError(f"cannot read {file}: {exc.strerror}") from None
    source = _unpacked(source)
    client = cli.client()
    # The id each line's unit has here, where it is not the line's own (a new id).
    renamed: dict[str, str] = {}
    written = reused = 0
    run: list[UnitDraft] = []
    run_agents: list[str] = []
    run_origins: list[UnitOrigin | None] = []
    run_renamed: set[str] = set()
    run_start = 0

    def flush(next_line: int) -> None:
        """Write the run of lines, all or nothing, each as its agent."""
        nonlocal written, reused
        drafts = [_remap(draft, renamed) for draft in run]
        try:
            created = client.import_units(drafts, run_agents,
                                          run_origins if any(run_origins) else ())
        except EngramError as exc:
            exc.args = (f"lines {run_start}-{next_line - 1}: {exc}",)
            raise
        for draft, origin, unit in zip(drafts, run_origins, created.units, strict=True):
            old_id = origin.id if origin else draft.idempotency_key
            if old_id and old_id != unit.id:
                renamed[old_id] = unit.id
        written += len(created.units) - len(created.reused)
        reused += len(created.reused)
        run.clear()
        run_agents.clear()
        run_origins.clear()
        run_renamed.clear()

    try:
        with output.progress(out, "importing") as advance:
            number = 0
            run_bytes = 0
            for number, size, draft, agent, origin in _read_lines(source, context_id,
                                                                  not new_ids):
                # A relationship to a unit of the current run that gets a new id needs
                # that id, which only exists once the run is written. (A unit that
                # keeps its id is found by it within the run.)
                refers_back = any(rel.target in run_renamed for rel in draft.relationships)
                if run and (len(run) >= batch or refers_back
                            or run_bytes + size > BATCH_BYTES):
                    count = len(run)
                    flush(number)
                    advance(count)
                if not run:
                    run_start, run_bytes = number, 0
                run_bytes += size
                run.append(draft)
                run_agents.append(agent or client.agent_id)
                run_origins.append(origin)
                if origin is None and draft.idempotency_key:
                    run_renamed.add(draft.idempotency_key)
            if run:
                count = len(run)
                flush(number + 1)
                advance(count)
    finally:
        if file:
            source.close()
    if out.json:
        out.json_line({"written": written, "reused": reused})
    else:
        output.note(f"imported {written} unit(s), {reused} already present")


@app.command()
def related(
    ctx: typer.Context,
    unit_id: Annotated[str, typer.Argument(metavar="ID", help="The unit to start from.")],
    type_: Annotated[list[str] | None, typer.Option(
        "--type", "-t", metavar="TYPE", autocompletion=completion.relationship_types,
        help="Only these relationship types (repeatable).")
    ] = None,
    direction: Annotated[str, typer.Option(
        "--direction", "-d", help="out (its relationships), in (pointing at it) or both.")
    ] = "both",
    depth: Annotated[int, typer.Option("--depth", min=1, max=16,
                                       help="How many hops to follow.")] = 1,
    json: JsonOption = False,
) -> None:
    """Units linked to a unit by relationships, to a depth."""
    cli = context.get(ctx)
    out = cli.output(json)
    client = cli.client()
    found = client.related_units(whole_id(client, unit_id), types=type_ or [],
                                 direction=direction, depth=depth)
    if out.json:
        out.json_line(related_json(found))
        return
    by_id = {unit.id: unit for unit in found.units}
    # Whole ids when piped; on a terminal, short ones that leave room for the payload.
    ids = (output.short_ids([found.root, *by_id]) if out.is_terminal
           else {unit_id: unit_id for unit_id in [found.root, *by_id]})
    rows = [[ids.get(edge.source, edge.source), edge.type, ids.get(edge.target, edge.target),
             str(edge.depth),
             preview(by_id[edge.target], 80) if edge.target in by_id else ""]
            for edge in found.edges]
    if not rows and out.is_terminal:
        output.note("no related units")
    out.table(f"related to {found.root}", ["source", "type", "target", "depth", "target payload"],
              rows, header=False)

