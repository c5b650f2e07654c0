"""``engram bench --units N``: one journal grown to N units (ten million by design), its
rows measured at 1,000,000 units and again at N, so the growth shows as a ratio.

The fill is what a team's agents leave after months: thousands of contexts and three
very large ones, six unit types, metadata on every unit, a relationship on every fourth
(a chain through the journal that ``trace`` walks), sentences drawn by topic from a
vocabulary of 4,096 made-up words (so searches by word and by meaning both have work),
and a long unit now and then. It is written by the fastest honest path: batches of
1,000 units per request, four requests in flight, four agents in turn.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import time
from collections.abc import Callable, Iterator

import msgspec

from engram_cli.bench.harness import (
    BenchResult,
    BenchTarget,
    Measurement,
    bench_daemon,
    summarize,
    timed_loop,
    wait_indexed,
)
from engram_cli.bench.journal import VOCABULARY, resident_mib
from engram_cli.bench.search import semantic_recall
from engram_cli.client import Client, requests
from engram_cli.client.errors import EngramError
from engramd.protocol import UnitsCreated, log_file_in, result

BIG_CONTEXTS = ("scale-big-0", "scale-big-1", "scale-big-2")
"""10%, 5% and 5% of the units."""
CONTEXTS = 2_000
"""The rest of the units are spread over this many contexts."""
AGENTS = 4
BATCH = 1_000
IN_FLIGHT = 4
LINK_BACK = 5_000
"""Every fourth unit responds to the unit this many before it (whose id is known by
then: at most IN_FLIGHT batches are unanswered)."""
FIRST_STAGE = 1_000_000
HELD_OUT = 1 << 40
"""Sentences numbered from here are never written: the semantic queries."""
CRASH_AFTER = 100_000
"""Units written before each kill -9: about 37 MiB of log, past several checkpoints."""
TYPES = ("MESSAGE",) * 8 + ("REASONING",) * 4 + ("TOOL_CALL",) * 3 + ("TOOL_RESULT",) * 3 \
    + ("FILE_CHANGE", "ERROR")
_MASK = (1 << 64) - 1


def _mix(n: int) -> int:
    """A 64-bit hash of *n* (splitmix64's finaliser): cheap, and no two units alike."""
    n = (n + 0x9E3779B97F4A7C15) & _MASK
    n = ((n ^ (n >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    n = ((n ^ (n >> 27)) * 0x94D049BB133111EB) & _MASK
    return n ^ (n >> 31)


def words(n: int) -> list[str]:
    """Unit *n*'s twelve words: eight from one of 64 topics (64 words each), four from
    the whole vocabulary. Units of a topic are near each other by meaning."""
    first, second = _mix(n), _mix(n ^ 0x5DEECE66D)
    topic = (first >> 58) * 64
    local = [VOCABULARY[topic + ((first >> (6 * i)) & 63)] for i in range(8)]
    spread = [VOCABULARY[(second >> (12 * i)) & 4095] for i in range(4)]
    return local[:3] + spread[:2] + local[3:6] + spread[2:] + local[6:]


def text(n: int) -> str:
    sentence = " ".join(words(n))
    if n % 100 == 99:  # now and then a long unit: a log, a diff, a design note
        sentence = ". ".join([sentence, *(" ".join(words(n * 31 + i)) for i in range(20))])
    return sentence


def context_of(n: int) -> str:
    if n % 10 == 0:
        return BIG_CONTEXTS[0]
    if n % 20 in (1, 3):
        return BIG_CONTEXTS[1 if n % 20 == 1 else 2]
    return f"scale-{_mix(n) % CONTEXTS}"


def meta_of(n: int) -> dict[str, str]:
    meta = {"n": str(n)}
    if n % 3 == 0:
        meta["file"] = f"src/module{n % 500}.py"
    if n % 7 == 0:
        meta["status"] = "failed" if n % 2 else "ok"
    return meta


class Filler:
    """Writes fill units, numbered from 0 across calls, and keeps the ids of the newest
    answered (the targets of the next relationships)."""

    def __init__(self, target: BenchTarget) -> None:
        self.target = target
        self.written = 0
        """Fill units written (and answered) so far: the next one's number."""
        self.ids: collections.deque[str] = collections.deque(maxlen=2 * LINK_BACK)

    def id_of(self, n: int) -> str | None:
        first = self.written - len(self.ids)
        return self.ids[n - first] if first <= n < self.written else None

    def fill(self, count: int) -> None:
        """Write the next *count* fill units."""
        clients = [Client(self.target.socket_path, agent_id=f"scale-agent-{i}",
                          autostart=False, timeout=600) for i in range(AGENTS)]
        try:
            sent, end = self.written, self.written + count
            pending: collections.deque[tuple[Client, int]] = collections.deque()
            while sent < end:
                drafts = []
                for n in range(sent, min(end, sent + BATCH)):
                    link = self.id_of(n - LINK_BACK) if n % 4 == 0 else None
                    drafts.append(requests.draft(
                        context_of(n), TYPES[n % len(TYPES)], text(n), meta=meta_of(n),
                        relationships=[("RESPONDS_TO", link)] if link else []))
                client = clients[(sent // BATCH) % AGENTS]
                pending.append((client, client.send(requests.create_units(drafts))))
                sent += len(drafts)
                if len(pending) >= IN_FLIGHT:
                    self._settle(*pending.popleft())
            while pending:
                self._settle(*pending.popleft())
        finally:
            for client in clients:
                client.close()

    def _settle(self, client: Client, request_id: int) -> None:
        units = result(client.receive(request_id), UnitsCreated).units
        self.ids.extend(unit.id for unit in units)
        self.written += len(units)


def two_words(n: int) -> str:
    """Two words that occur together in fill unit *n*."""
    chosen = words(n)
    return f"{chosen[1]} {chosen[7]}"


def phrase(n: int) -> str:
    chosen = words(n)
    return f'"{chosen[3]} {chosen[4]}"'


@dataclasses.dataclass
class Stage:
    units: int
    label: str
    rows: list[BenchResult] = dataclasses.field(default_factory=list)
    parts: dict[str, float] = dataclasses.field(default_factory=dict)
    """Bytes on disk by part, and RSS in MiB, at this stage."""
    recall: float | None = None
    """Semantic search's recall@10 against exact (None: not measured)."""


def label(units: int) -> str:
    if units % 1_000_000 == 0:
        return f"{units // 1_000_000}M"
    if units % 1_000 == 0:
        return f"{units // 1_000}k"
    return str(units)


def stages(units: int) -> list[int]:
    """1M then *units*; a tenth of *units* first when that is less (a quick trial)."""
    return [min(FIRST_STAGE, units // 10), units]


def run_scale(units: int, progress: Callable[[str], None]) -> list[Stage]:
    """Grow one journal (semantic search on) through the stages, measuring at each."""
    done = []
    with bench_daemon(semantic="auto") as target:
        filler = Filler(target)
        for size in stages(units):
            stage = Stage(size, label(size))
            progress(f"scale: fill to {size:,} units")
            started = time.perf_counter()
            written = size - filler.written
            filler.fill(written)
            wrote = time.perf_counter() - started
            semantic = _semantic(target)
            wait_indexed(target, timeout=6 * 3600, vectors=semantic, approximate=semantic,
                         interval=1.0)
            indexed = time.perf_counter() - started
            stage.rows.append(summarize(f"scale.fill@{stage.label}", Measurement(
                [wrote], wrote, ops=written,
                note=f"{written:,} units written in {wrote:,.0f} s; every index had them "
                     f"after {indexed:,.0f} s")))
            measure(target, filler, stage, progress)
            done.append(stage)
    return done


def _semantic(target: BenchTarget) -> bool:
    with target.client() as client:
        journal = client.status().journal
    return journal is not None and journal.vector_seq is not None


def measure(target: BenchTarget, filler: Filler, stage: Stage,
            progress: Callable[[str], None]) -> None:
    size = stage.units
    picks = [(_mix(i) % filler.written) for i in range(1, 1000)]

    def row(name: str, count: int, operation: Callable[[], object], note: str = "") -> None:
        progress(f"scale: {name}@{stage.label}")
        measurement = timed_loop(target, count, operation)
        measurement.note = note
        stage.rows.append(summarize(f"{name}@{stage.label}", measurement))

    with target.client() as client:
        for _ in range(50):
            client.create_unit("scale-writes", "MESSAGE", b"x" * 256)
        row("scale.write.single", 2000,
            lambda: client.create_unit("scale-writes", "MESSAGE", b"x" * 256))
        row("scale.list.last100", 2000,
            lambda: client.list_units(BIG_CONTEXTS[0], limit=100),
            f"the newest 100 of {BIG_CONTEXTS[0]} ({size // 10:,} units)")
        queries = iter(picks * 10)
        totals: list[int] = []
        row("scale.search.words", 500,
            lambda: totals.append(client.search(two_words(next(queries)), limit=20).total))
        stage.rows[-1] = msgspec.structs.replace(
            stage.rows[-1], note=f"median matches {sorted(totals)[len(totals) // 2]:,}")
        row("scale.search.phrase", 300,
            lambda: client.search(phrase(next(queries)), advanced=True, limit=20))
        row("scale.search.filtered", 300,
            lambda: client.search(two_words(next(queries)), contexts=[BIG_CONTEXTS[1]],
                                  types=["MESSAGE"], meta={"status": "failed"}, limit=20),
            "two words, a context, a type and a metadata pair")
        if _semantic(target):
            held_out = iter(range(HELD_OUT, HELD_OUT + 10_000))
            stage.recall, measured = recall_of(client)
            row("scale.search.semantic", 300,
                lambda: client.search(text(next(held_out)), mode="semantic", limit=10),
                "held-out sentences, limit 10" + measured)
            row("scale.search.hybrid", 300,
                lambda: client.search(two_words(next(queries)), mode="hybrid", limit=20))
        linked = [unit_id_of(client, n - n % 4) for n in picks[:100]]
        chain = iter([unit_id for unit_id in linked if unit_id] * 10)
        row("scale.trace", 500, lambda: client.related_units(next(chain), depth=3),
            "depth 3 both ways along the RESPONDS_TO chain")
    stage.parts = {**disk_parts(target), **memory(target)}
    progress(f"scale: scale.restart.clean@{stage.label}")
    restart = target.restart
    assert restart is not None
    seconds = [restart(False) for _ in range(3)]
    stage.rows.append(summarize(f"scale.restart.clean@{stage.label}", Measurement(
        seconds, sum(seconds), note="a clean stop, then spawn to ready, 3 times")))
    progress(f"scale: scale.restart.crash@{stage.label}")
    seconds, replayed = [], []
    load = min(CRASH_AFTER, stage.units // 10)
    for _ in range(3):  # each after a load, so there is log to replay
        filler.fill(load)
        seconds.append(restart(True))
        replayed.append(replay_of(target))
    stage.rows.append(summarize(f"scale.restart.crash@{stage.label}", Measurement(
        seconds, sum(seconds), note=f"SIGKILL after {load:,} more units written, then "
                                    f"spawn to ready, 3 times; replayed: {', '.join(replayed)}")))


def replay_of(target: BenchTarget) -> str:
    """What the daemon's last start replayed, from its log's "journal open" line."""
    assert target.data_dir is not None
    try:
        with open(log_file_in(target.data_dir), encoding="utf-8", errors="replace") as log:
            lines = [line for line in log if "journal open:" in line]
    except OSError:
        return "?"
    match = re.search(r"(\d+) entries replayed.*?([\d.]+)s", lines[-1]) if lines else None
    return f"{match[1]} log entries in {float(match[2]):.2f} s" if match else "?"


def unit_id_of(client: Client, n: int) -> str | None:
    """The id of fill unit *n*, found by its metadata."""
    found = client.search("", meta={"n": str(n)}, limit=1)
    return found.hits[0].unit_id if found.hits else None


def recall_of(client: Client) -> tuple[float | None, str]:
    """Recall@10 of semantic search against brute force, on 100 held-out sentences, and
    the note that says it."""
    try:
        recall = semantic_recall(client, [text(n) for n in range(HELD_OUT + 50_000,
                                                                 HELD_OUT + 50_100)])
    except EngramError as exc:  # (an exact search of millions may be refused as too long)
        return None, f"; recall not measured: {exc}"
    return recall, f"; recall@10 {recall:.3f} against exact"


def disk_parts(target: BenchTarget) -> dict[str, float]:
    """Bytes on disk of each part of the data dir."""
    assert target.data_dir is not None
    parts: dict[str, float] = collections.defaultdict(float)
    for root, _, files in os.walk(target.data_dir):
        relative = os.path.relpath(root, target.data_dir).split(os.sep)[0]
        for name in files:
            part = {"wal": "wal", "store": "store", "vectors": "vectors"}.get(relative)
            if part is None:
                part = "fts" if name.startswith("search.db") else "other"
            try:
                parts[part] += os.stat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return dict(parts)


def memory(target: BenchTarget) -> dict[str, float]:
    """RSS in MiB of engramd and of its index process."""
    with target.client() as client:
        pid = client.status().pid
    children = []  # (each thread's children: the index process is started by a worker)
    for task in os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else []:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as listing:
                children += [int(child) for child in listing.read().split()]
        except OSError:
            continue
    return {"rss_engramd_mib": resident_mib(pid),
            "rss_index_mib": sum(resident_mib(child) for child in children)}


def judged(stages_: list[Stage]) -> list[BenchResult]:
    """Every row; the last stage's beside the first's, with the issue's targets."""
    rows = [row for stage in stages_ for row in stage.rows]
    if len(stages_) < 2:
        return rows
    first = {row.name.split("@")[0]: row for row in stages_[0].rows}
    out = [row for row in stages_[0].rows]
    for row in stages_[-1].rows:
        base = first.get(row.name.split("@")[0])
        out.append(_judge(row, base, stages_[-1].recall) if base is not None else row)
    return out


def _judge(row: BenchResult, base: BenchResult, recall: float | None) -> BenchResult:
    name = row.name.split("@")[0]
    at = base.name.split("@")[1]
    rules: dict[str, tuple[str, bool]] = {
        "scale.write.single": (f"p50 <= 1.1 x @{at} p50 {base.p50_ms:.3f}",
                               row.p50_ms <= 1.1 * base.p50_ms),
        "scale.list.last100": ("p99 <= 1", row.p99_ms <= 1.0),
        "scale.search.words": (f"p99 <= 2 x @{at} p99 {base.p99_ms:.3f}",
                               row.p99_ms <= 2 * base.p99_ms),
        "scale.search.semantic": ("p99 <= 50, recall@10 >= 0.95",
                                  row.p99_ms <= 50 and (recall or 0.0) >= 0.95),
        "scale.restart.crash": ("max <= 1000 (kill -9 to ready)", row.max_ms <= 1000),
    }
    if name == "scale.fill":
        return row
    ratio = f"x{row.p99_ms / base.p99_ms:.2f} p99 of @{at}" if base.p99_ms else ""
    if name not in rules:
        return msgspec.structs.replace(row, target=f"({ratio})") if ratio else row
    text_, met = rules[name]
    return msgspec.structs.replace(row, target=f"{text_} ({ratio})", met=met)


def part_rows(stages_: list[Stage]) -> Iterator[list[str]]:
    """A line per stage: memory, and bytes per unit of each part on disk."""
    for stage in stages_:
        parts = stage.parts
        per_unit = {part: parts.get(part, 0.0) / stage.units
                    for part in ("wal", "store", "fts", "vectors", "other")}
        yield [stage.label, f"{parts.get('rss_engramd_mib', 0):.0f}",
               f"{parts.get('rss_index_mib', 0):.0f}",
               *(f"{value:.0f}" for value in per_unit.values()),
               f"{sum(per_unit.values()):.0f}"]


def memory_verdict(stages_: list[Stage]) -> str:
    if len(stages_) < 2:
        return ""
    first, last = stages_[0].parts, stages_[-1].parts
    base, now = first.get("rss_engramd_mib", 0.0), last.get("rss_engramd_mib", 0.0)
    met = "yes" if base and now <= 2 * base else "NO"
    return (f"engramd RSS at {stages_[-1].label} {now:.0f} MiB <= 2 x @{stages_[0].label} "
            f"{base:.0f} MiB: {met}")

