"""Everything the CLI prints: the only module that imports rich.

Three audiences: people at a terminal (rich tables and colour, ``NO_COLOR``
honoured), scripts reading a pipe (plain tab-separated text, no colour) and
programs asking for ``--json`` (the daemon's own field names, one JSON value
per line). Errors are one line on stderr in every case.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import sys
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any

import msgspec

from engram_cli.cli import remarks
from engram_cli.formats.jsonforms import event_json, to_plain_data
from engram_cli.formats.text import cell, one_line, preview, printable, timestamp
from engramd.protocol import (
    Context,
    ContextCreated,
    ContextUpdated,
    Event,
    LockAcquired,
    LockEvent,
    LockExpired,
    LockReleased,
    LockRenewed,
    RelatedEdge,
    RelatedFound,
    SearchHit,
    Unit,
    UnitCreated,
    UnitsRemoved,
)

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

_json_encoder = msgspec.json.Encoder()




def tsv_line(fields: Iterable[str]) -> str:
    """One record of tab-separated values. A backslash, tab, newline or carriage return
    inside a field is written ``\\\\``, ``\\t``, ``\\n``, ``\\r`` (as PostgreSQL's text
    format does), so every line is one record of the same width whatever the data; any
    other character a terminal would act on is ``\\xHH`` (``\\u202e`` for a reordering
    one), so a pipe to a terminal shows it rather than obeys it."""
    return "\t".join(map(one_line, fields)) + "\n"


class Output:
    """Where a command's results go, and in which form."""

    def __init__(self, *, json: bool, stream: IO[str] | None = None) -> None:
        self.json = json
        self.stream = stream if stream is not None else sys.stdout
        self.is_terminal = self.stream.isatty()
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            # No markup, no emoji codes: what the daemon holds is shown, never obeyed
            # (a payload's "[link=...]" would otherwise become a terminal hyperlink).
            self._console = Console(file=self.stream, highlight=False, markup=False,
                                    emoji=False)
        return self._console

    def json_line(self, value: Any) -> None:
        """One JSON value on one line, flushed (for pipes that follow along)."""
        self.stream.write(_json_encoder.encode(to_plain_data(value)).decode() + "\n")
        self.stream.flush()

    def write(self, text: str) -> None:
        """Text exactly as given (a format of its own, such as Prometheus')."""
        self.stream.write(text)
        self.stream.flush()

    def line(self, text: str, *, style: str | None = None) -> None:
        text = printable(text)
        if self.is_terminal and style:
            self.console.print(text, style=style, markup=False)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def fields(self, title: str, rows: Iterable[tuple[str, Any]]) -> None:
        """Named values: a two-column table on a terminal, ``key<TAB>value`` lines otherwise."""
        rows = [(key, _text(value)) for key, value in rows]
        if not self.is_terminal:
            for key, value in rows:
                self.stream.write(tsv_line((key, value)))
            self.stream.flush()
            return
        from rich.table import Table

        table = Table(title=cell(title), show_header=False, title_justify="left",
                      box=None, pad_edge=False)
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column(overflow="fold")
        for key, value in rows:
            table.add_row(cell(key), cell(value))
        self.console.print(table)

    def table(self, title: str, columns: list[str], rows: Iterable[list[str]], *,
              numeric: Collection[str] = (), header: bool = True) -> None:
        """Rows: a rich table on a terminal, tab-separated lines otherwise.

        Columns named in *numeric* are right-aligned on a terminal; *header*
        says whether piped output starts with a line of column names.
        """
        rows = list(rows)
        if not self.is_terminal:
            if header:
                self.stream.write(tsv_line(columns))
            for row in rows:
                self.stream.write(tsv_line(row))
            self.stream.flush()
            return
        from rich.table import Table

        table = Table(title=cell(title), title_justify="left")
        for column in columns:
            table.add_column(column, justify="right" if column in numeric else "left")
        for row in rows:
            table.add_row(*map(cell, row))
        self.console.print(table)


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_text(v)}" for k, v in value.items())
    return str(value)


@contextlib.contextmanager
def progress(out: Output, what: str, total: int | None = None
             ) -> Iterator[Callable[[int], None]]:
    """A running count (a bar when the *total* is known) on a terminal's stderr, nothing
    when piped or with --json.

    Yields a function to call with how many more items are done.
    """
    if out.json or not sys.stderr.isatty():
        yield lambda count: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(transient=True, console=Console(file=sys.stderr)) as bar:
        task = bar.add_task(what, total=total)
        yield lambda count: bar.advance(task, count)


def error(message: str, *, code: str = "", exit_status: int = 1, as_json: bool = False
          ) -> None:
    """The CLI's one line on stderr for a failure: English (:func:`.remarks.error`), or
    with ``--json`` one JSON object ``{"error": {"code", "message", "exit"}}`` that a
    program can read."""
    if not as_json:
        remarks.error(message)
        return
    stream = sys.stderr
    # A file name given in bytes that are not UTF-8 is named by those bytes, escaped.
    message = message.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    line = {"error": {"code": code, "message": message, "exit": exit_status}}
    stream.write(_json_encoder.encode(line).decode() + "\n")
    stream.flush()


note = remarks.note


# -- units and contexts -----------------------------------------------------


def _local_time(value: dt.datetime) -> str:
    """Local time of day for today's times; the date too for any other day's."""
    local = value.astimezone()
    if local.date() != dt.date.today():
        return local.strftime("%Y-%m-%d %H:%M:%S")
    return local.strftime("%H:%M:%S.%f")[:-3]


def _meta_text(meta: Mapping[str, str]) -> str:
    return " ".join(f"{key}={value}" for key, value in meta.items())


def _meta_field(meta: Mapping[str, str]) -> str:
    # JSON, not k=v pairs: keys and values may hold spaces and '='.
    return _json_encoder.encode(meta).decode() if meta else ""


def unit_row(unit: Unit) -> list[str]:
    """The plain, tab-separated form of a unit (``unit list`` when piped)."""
    return [str(unit.seq), timestamp(unit.ts), unit.context_id, unit.agent_id, unit.type,
            unit.id, preview(unit), _meta_field(unit.meta)]


def units(out: Output, found: list[Unit]) -> None:
    """A list of units: a table on a terminal, tab-separated rows otherwise."""
    if not out.is_terminal:
        for unit in found:
            out.stream.write(tsv_line(unit_row(unit)))
        out.stream.flush()
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_edge=False)
    for column, style in (("seq", "dim"), ("time", "dim"), ("id", "dim"), ("agent", "bold"),
                          ("type", "magenta"), ("payload", ""), ("meta", "cyan")):
        table.add_column(column, style=style or None, no_wrap=column != "payload",
                         overflow="ellipsis", justify="right" if column == "seq" else "left",
                         min_width=len(column) if column != "payload" else 10)
    short = short_ids(unit.id for unit in found)
    for unit in found:
        table.add_row(str(unit.seq), _local_time(unit.ts), short[unit.id],
                      printable(unit.agent_id), unit.type, printable(preview(unit, 500)),
                      printable(_meta_text(unit.meta)))
    out.console.print(table)


def unit_panels(out: Output, found: list[Unit]) -> None:
    """Units in full, one panel each (``unit get`` on a terminal)."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    for unit in found:
        fields = Table.grid(padding=(0, 2))
        fields.add_column(style="bold cyan")
        fields.add_column()
        for key, value in (("id", unit.id), ("seq", str(unit.seq)),
                           ("context", unit.context_id), ("agent", unit.agent_id),
                           ("time", timestamp(unit.ts)),
                           ("from", f"uid {unit.uid}, pid {unit.pid}")):
            fields.add_row(key, printable(value))
        for key, value in unit.meta.items():
            fields.add_row(printable(f"meta {key}"), printable(value))
        for rel in unit.relationships:
            fields.add_row(rel.type.lower(), printable(rel.target))
        try:
            body = Text(printable(unit.payload.decode("utf-8")))
        except UnicodeDecodeError:
            body = Text(f"<{len(unit.payload)} bytes of binary payload; use --raw>", style="dim")
        from rich.console import Group

        out.console.print(Panel(Group(fields, Text(""), body), title=unit.type,
                                title_align="left", border_style="magenta"))


def context_fields(out: Output, context: Context) -> None:
    out.fields(context.id, [
        ("id", context.id), ("name", context.display_name),
        ("agents", ", ".join(context.agent_ids) or "-"),
        ("pinned", ", ".join(context.pinned_units) or "-"),
        ("meta", _meta_text(context.meta) or "-"),
        ("created", timestamp(context.created_at)), ("updated", timestamp(context.updated_at)),
    ])


# -- events -------------------------------------------------------------------

_TYPE_STYLES = {
    "MESSAGE": ("»", "white"), "REASONING": ("∴", "blue"), "TOOL_CALL": ("→", "yellow"),
    "TOOL_RESULT": ("←", "green"), "FILE_CHANGE": ("±", "magenta"),
    "TASK_STATUS": ("■", "cyan"), "ERROR": ("✗", "bold red"), "SYSTEM": ("⚙", "dim"),
}
_AGENT_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_green",
                  "bright_blue", "bright_magenta", "bright_cyan")


def agent_colour(agent: str) -> str:
    """One colour per agent name, the same in every run (not Python's salted hash)."""
    return _AGENT_COLOURS[zlib.crc32(agent.encode()) % len(_AGENT_COLOURS)]


def _changes_text(event: ContextUpdated) -> str:
    words = {"agent_joined": "{} joined", "agent_left": "{} left",
             "unit_pinned": "pinned {}", "unit_unpinned": "unpinned {}",
             "renamed": "renamed to {}", "meta_set": "set {}", "meta_unset": "unset {}"}
    return ", ".join(words.get(change.kind, change.kind + " {}").format(change.value)
                     for change in event.changes)


def _lock_text(event: LockEvent) -> str:
    lease = event.lease
    if isinstance(event, LockAcquired):
        return (f"{lease.resource} acquired by {lease.holder} (token {lease.fencing_token}, "
                f"ttl {lease.ttl:g}s)")
    if isinstance(event, LockRenewed):
        return f"{lease.resource} renewed by {lease.holder} (ttl {lease.ttl:g}s)"
    if isinstance(event, LockReleased):
        return f"{lease.resource} released by {event.by}: {event.reason}"
    return f"{lease.resource} expired (held by {lease.holder})"


def _removed_text(event: UnitsRemoved) -> str:
    return (f"{len(event.unit_ids)} unit(s) removed by retention ({event.policy}), archived "
            f"in {event.archive}")


def event_row(event: Event) -> list[str]:
    """The plain, tab-separated form of an event (``watch`` when piped)."""
    stamp = timestamp(event.ts)
    kind = type(event).__struct_config__.tag
    if isinstance(event, LockAcquired | LockRenewed | LockReleased | LockExpired):
        return [str(event.seq), stamp, str(kind), event.lease.resource, _lock_text(event)]
    if isinstance(event, UnitCreated):
        return [str(event.seq), stamp, str(kind), *unit_row(event.unit)[2:]]
    if isinstance(event, ContextCreated):
        return [str(event.seq), stamp, str(kind), event.context_id,
                ",".join(event.context.agent_ids)]
    if isinstance(event, UnitsRemoved):
        return [str(event.seq), stamp, str(kind), event.context_id, _removed_text(event)]
    assert isinstance(event, ContextUpdated)
    return [str(event.seq), stamp, str(kind), event.context_id, _changes_text(event)]


def event_text(event: Event, width: int) -> Text:
    """One line of the live feed on a terminal."""
    from rich.text import Text

    line = Text(no_wrap=True, overflow="ellipsis")
    line.append(_local_time(event.ts) + " ", style="dim")
    if isinstance(event, LockAcquired | LockRenewed | LockReleased | LockExpired):
        style = "bold red" if isinstance(event, LockExpired) else "bold blue"
        line.append("⚿ " + printable(_lock_text(event)), style=style)
        line.truncate(width, overflow="ellipsis")
        return line
    line.append(printable(event.context_id) + " ", style="bold")
    if isinstance(event, UnitCreated):
        unit = event.unit
        marker, style = _TYPE_STYLES.get(unit.type, ("·", "white"))
        line.append(printable(unit.agent_id) + " ", style=agent_colour(unit.agent_id))
        line.append(f"{marker} {unit.type:<11} ", style=style)
        meta = printable(_meta_text(unit.meta))
        room = max(10, width - line.cell_len - len(meta) - 2)
        line.append(printable(preview(unit, room)))
        if meta:
            line.append("  " + meta, style="cyan")
    elif isinstance(event, ContextCreated):
        line.append("◆ context created", style="bold yellow")
        if event.context.agent_ids:
            line.append(" by " + printable(", ".join(event.context.agent_ids)), style="yellow")
    elif isinstance(event, UnitsRemoved):
        line.append("◆ " + printable(_removed_text(event)), style="dim yellow")
    else:
        assert isinstance(event, ContextUpdated)
        line.append("◆ " + printable(_changes_text(event)), style="yellow")
    line.truncate(width, overflow="ellipsis")
    return line


LINE_WIDTH = 200


def event_line(event: Event) -> str:
    """One short plain line (``watch --format line``), for harness tools that wake the
    model on each line a background command prints."""
    if isinstance(event, LockAcquired | LockRenewed | LockReleased | LockExpired):
        text = f"{timestamp(event.ts)} lock {_lock_text(event)}"
    elif isinstance(event, UnitCreated):
        unit = event.unit
        text = (f"{timestamp(event.ts)} {unit.agent_id} {unit.type} [{unit.context_id}] "
                f"{unit.id}: {preview(unit, LINE_WIDTH)}")
    elif isinstance(event, ContextUpdated):
        text = f"{timestamp(event.ts)} context {event.context_id}: {_changes_text(event)}"
    elif isinstance(event, UnitsRemoved):
        text = f"{timestamp(event.ts)} context {event.context_id}: {_removed_text(event)}"
    else:
        text = f"{timestamp(event.ts)} context {event.context_id} created"
    text = printable(" ".join(text.split()))
    return text if len(text) <= LINE_WIDTH else text[:LINE_WIDTH - 1] + "…"


class LiveFeed:
    """Prints events for people (rich, with a status line) or for programs."""

    def __init__(self, out: Output, *, lines: bool = False) -> None:
        self.out = out
        self.lines = lines
        """One short line per event (``--format line``), whatever the output is."""
        self.rich = out.is_terminal and not out.json and not lines
        self._live: Any = None
        self._status = ""

    @contextlib.contextmanager
    def running(self) -> Iterator[LiveFeed]:
        if not self.rich:
            yield self
            return
        from rich.live import Live

        with Live(console=self.out.console, auto_refresh=False, transient=True,
                  redirect_stdout=False) as live:
            self._live = live
            yield self

    def status(self, text: str, *, announce: bool = False) -> None:
        """Update the status line; *announce* also tells a non-terminal reader, on stderr."""
        if announce and self._live is None:
            note(text.lstrip("●○ "))
        if self._live is not None and text != self._status:
            from rich.text import Text

            self._status = text
            self._live.update(Text(text, style="dim"), refresh=True)

    def show(self, event: Event) -> None:
        if self.lines:
            self.out.stream.write(event_line(event) + "\n")
            self.out.stream.flush()
        elif self.out.json:
            self.out.json_line(event_json(event))
        elif self._live is not None:
            self._live.console.print(event_text(event, self.out.console.width))
            self._live.refresh()
        else:
            self.out.stream.write(tsv_line(event_row(event)))
            self.out.stream.flush()


def _marked(snippet: str) -> Text:
    """A snippet with its ``**``-marked matches highlighted."""
    from rich.text import Text

    text = Text()
    # Whitespace is flattened over the whole snippet, not per part: the spaces around
    # a highlighted word belong to its neighbours.
    flat = printable(" ".join(snippet.split()))
    for index, part in enumerate(flat.split("**")):
        text.append(part, style="bold yellow" if index % 2 else None)
    return text


def search_hits(out: Output, hits: list[SearchHit], units: Mapping[str, Unit], *,
                ranked: bool) -> None:
    """Search results: a table on a terminal, tab-separated rows when piped. Without
    *ranked* (no words, filters alone) there is no score to show: ``-``."""
    if not out.is_terminal:
        for hit in hits:
            unit = units.get(hit.unit_id)
            row = [f"{hit.score:.3f}" if ranked else "-", str(hit.seq),
                   unit.context_id if unit else "", unit.agent_id if unit else "",
                   unit.type if unit else "", hit.unit_id,
                   " ".join(hit.snippet.split()) or (preview(unit) if unit else "")]
            out.stream.write(tsv_line(row))
        out.stream.flush()
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("score", "time", "id", "context", "agent", "type", "match"):
        table.add_column(column, justify="right" if column == "score" else "left",
                         no_wrap=column != "match", style="dim" if column == "id" else None)
    short = short_ids(hit.unit_id for hit in hits)
    for hit in hits:
        unit = units.get(hit.unit_id)
        if unit is None:
            continue
        match = _marked(hit.snippet) if hit.snippet else printable(preview(unit, 200))
        table.add_row(f"{hit.score:.2f}" if ranked else "-", _local_time(unit.ts),
                      short[unit.id], printable(unit.context_id), printable(unit.agent_id),
                      unit.type, match)
    out.console.print(table)


SHORT_ID_LENGTH = 13
"""A UUIDv7 up to the end of its millisecond timestamp (``01a232c5-5441``): two units
share it only when written in the same millisecond, so it names one unit in the whole
journal nearly always, where the 8 characters a prefix may have span 65 seconds."""


def short_ids(ids: Iterable[str], minimum: int = SHORT_ID_LENGTH) -> dict[str, str]:
    """Each id cut to one prefix length, the shortest (at least *minimum* characters) that
    still tells these ids apart, as git abbreviates hashes: ids of one burst, written in
    the same millisecond, need more."""
    unique = sorted(set(ids))
    length = minimum
    for before, after in itertools.pairwise(unique):
        shared = next((i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b),
                      min(len(before), len(after)))
        length = max(length, shared + 1)
    return {unit_id: unit_id[:length] for unit_id in unique}


def trace_tree(out: Output, found: RelatedFound, label: Callable[[Unit], str]) -> None:
    """The relationships around a unit as a tree, each unit once, at its shortest distance
    from the root (breadth first); an edge between units already drawn is a leaf that
    names the other unit by its short id."""
    units = {unit.id: unit for unit in found.units}
    # Short ids for people; a program reading the piped tree gets them whole.
    short = (short_ids([found.root, *units]) if out.is_terminal
             else {unit_id: unit_id for unit_id in [found.root, *units]})
    neighbours: dict[str, list[tuple[str, str, RelatedEdge]]] = {}
    for edge in found.edges:
        neighbours.setdefault(edge.source, []).append((f"→ {edge.type}", edge.target, edge))
        neighbours.setdefault(edge.target, []).append((f"← {edge.type} from", edge.source, edge))

    def name(unit_id: str) -> str:
        unit = units.get(unit_id)
        # (Every relationship's target existed when it was written: one that is not in
        # the journal now was removed by retention, SPECS §3.4.)
        return printable(f"{short[unit_id]} {label(unit)}" if unit
                         else f"{unit_id} (archived: no longer in the journal)")

    children: dict[str, list[tuple[str, str | None]]] = {}  # (line, unit drawn below it)
    placed = {found.root}
    used: set[tuple[str, str, str]] = set()  # edges drawn, as (source, type, target)
    level = [found.root]
    while level:
        following = []
        for unit_id in level:
            for arrow, other, edge in neighbours.get(unit_id, []):
                if (edge.source, edge.type, edge.target) in used:
                    continue
                used.add((edge.source, edge.type, edge.target))
                if other in placed:
                    children.setdefault(unit_id, []).append(
                        (f"{arrow} {short.get(other, other)} (elsewhere in this tree)", None))
                    continue
                placed.add(other)
                following.append(other)
                children.setdefault(unit_id, []).append((f"{arrow} {name(other)}", other))
        level = following

    lines: list[tuple[int, str]] = []

    def draw(unit_id: str, depth: int) -> None:
        for text, below in children.get(unit_id, []):
            lines.append((depth, text))
            if below is not None:
                draw(below, depth + 1)

    draw(found.root, 1)
    if not out.is_terminal:
        out.stream.write(name(found.root) + "\n")
        for depth, text in lines:
            out.stream.write("  " * depth + text + "\n")
        out.stream.flush()
        return
    from rich.tree import Tree

    root = Tree(name(found.root), guide_style="dim")
    stack = [root]
    for depth, text in lines:
        del stack[depth:]
        stack.append(stack[-1].add(text, highlight=False))
    out.console.print(root)
