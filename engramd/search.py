"""Full-text search: an SQLite FTS5 index of units, fed from the event log.

Synchronous and trio-free; one connection, used from one worker thread at a
time (the engine's limiter). The index remembers the last seq it took in, so it
catches up after a restart, and can be rebuilt from the store at any time.

Tokenising: FTS5's ``unicode61`` tokenizer (case and diacritics folded) splits
on anything but letters and digits, so prose, ``snake_case`` parts, path parts
(``src/engram/app.py`` -> src, engram, app, py) and the words of error messages
are all terms. CamelCase is one token to unicode61, so a second column holds
each identifier's parts (``FrameTooLarge`` -> frame, too, large) next to the
whole word: ``TooLarge`` and ``large`` find it as well as ``FrameTooLarge``.
Metadata keys and values, agent, type and context are indexed in columns of
their own.
"""

from __future__ import annotations

import os
import re
import sqlite3
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    seq INTEGER PRIMARY KEY, unit_id TEXT NOT NULL, context_id TEXT NOT NULL,
    agent_id TEXT NOT NULL, type TEXT NOT NULL, ts INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS docs_context ON docs (context_id, seq);
CREATE INDEX IF NOT EXISTS docs_unit ON docs (unit_id);
CREATE TABLE IF NOT EXISTS meta_kv (seq INTEGER NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS meta_kv_pair ON meta_kv (key, value, seq);
CREATE INDEX IF NOT EXISTS meta_kv_seq ON meta_kv (seq);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5 (
    body, parts, meta, agent, type, context,
    tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# Column weights for bm25: words in the payload count most, then identifier parts.
WEIGHTS = (10.0, 4.0, 2.0, 1.0, 1.0, 1.0)
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")
# A lower-case letter or digit followed by a capital: a CamelCase hump. (Simple
# patterns only: text comes from users, and a backtracking pattern over a long
# word would stall the indexer.)
_HUMP = re.compile(r"[a-z0-9][A-Z]")
_TERM = re.compile(r"\w+", re.UNICODE)
MARK_OPEN, MARK_CLOSE = "**", "**"


class QueryError(ValueError):
    """An advanced-mode query that FTS5 cannot read; the message says why."""


@dataclass(frozen=True)
class Document:
    seq: int
    unit_id: str
    context_id: str
    agent_id: str
    type: str
    ts_us: int
    text: str | None
    meta: dict[str, str]


@dataclass(frozen=True)
class Hit:
    unit_id: str
    seq: int
    score: float
    snippet: str


def identifier_parts(text: str) -> str:
    """The CamelCase identifiers of *text* split into their words."""
    return " ".join(" ".join(_CAMEL.findall(word)) for word in _WORD.findall(text)
                    if _HUMP.search(word))


def plain_query(text: str) -> str | None:
    """User words as a safe FTS5 query: every term quoted, all required (None: no terms).

    A CamelCase term also matches as the phrase of its parts, so ``TooLarge``
    finds ``FrameTooLarge``. A term has a letter or a digit: the tokenizer indexes
    nothing else (``___`` is no term).
    """
    clauses = []
    for term in _TERM.findall(text):
        if not any(char.isalnum() for char in term):
            continue
        parts = _CAMEL.findall(term) if _HUMP.search(term) else []
        if len(parts) > 1:
            clauses.append(f'("{term}" OR parts : "{" ".join(parts)}")')
        else:
            clauses.append(f'"{term}"')
    # AND spelt out: FTS5 joins bare phrases by juxtaposition, not a parenthesised group.
    return " AND ".join(clauses) if clauses else None


def _filters(*, contexts: list[str], agents: list[str], types: list[str],
             meta: dict[str, str], since_us: int | None, until_us: int | None,
             unit_ids: set[str] | None, per_match: bool = False,
             ) -> tuple[list[str], list[object]] | None:
    """SQL conditions on ``docs d`` for the filters; None when nothing can match.

    *per_match*: checked for each match of a query by words (a metadata pair looked up
    for that unit), rather than listing every unit with the pair first."""
    where: list[str] = []
    args: list[object] = []
    for column, values in (("d.context_id", contexts), ("d.agent_id", agents),
                           ("d.type", types)):
        if values:
            where.append(f"{column} IN ({','.join('?' * len(values))})")
            args += values
    for key, value in meta.items():
        where.append("EXISTS (SELECT 1 FROM meta_kv WHERE key = ? AND value = ? AND seq = d.seq)"
                     if per_match else
                     "d.seq IN (SELECT seq FROM meta_kv WHERE key = ? AND value = ?)")
        args += [key, value]
    if since_us is not None:
        where.append("d.ts >= ?")
        args.append(since_us)
    if until_us is not None:
        where.append("d.ts <= ?")
        args.append(until_us)
    if unit_ids is not None:
        if not unit_ids:
            return None
        where.append(f"d.unit_id IN ({','.join('?' * len(unit_ids))})")
        args += sorted(unit_ids)
    return where, args


RANK_WINDOW = 500
"""Matches ranked by BM25: the newest this many; older ones follow, newest first. Keeps a
query's cost flat as the journal grows (SPECS §2.8)."""

WAL_LIMIT = 4 * 1024 * 1024
"""SQLite's own log is checkpointed and cut back to this size: derived data must not
fill the disk the journal needs."""


class SearchIndex:
    def __init__(self, path: str, *, read_only: bool = False) -> None:
        """*read_only*: as its file says, writing nothing (not even a lock or its log's
        index): for engramd on a full disk.

        Raises:
            sqlite3.Error: the file cannot be opened or is not an index.
        """
        self.path = path
        if read_only:
            uri = "file:" + urllib.parse.quote(path) + "?immutable=1"
            self.db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
            self.db.executescript(SCHEMA)
        row = self.db.execute("SELECT value FROM state WHERE key='indexed_seq'").fetchone()
        self.indexed_seq: int = row[0] if row else 0

    def add(self, documents: Iterable[Document], up_to: int) -> int:
        """Index *documents* and record *up_to* as taken in, in one transaction."""
        documents = list(documents)
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR REPLACE INTO docs VALUES (?, ?, ?, ?, ?, ?)",
                [(d.seq, d.unit_id, d.context_id, d.agent_id, d.type, d.ts_us)
                 for d in documents])
            self.db.executemany(
                "INSERT INTO fts (rowid, body, parts, meta, agent, type, context)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(d.seq, d.text or "", identifier_parts(d.text or ""),
                  " ".join(f"{k} {v}" for k, v in d.meta.items()), d.agent_id, d.type,
                  d.context_id) for d in documents])
            self.db.executemany("INSERT INTO meta_kv VALUES (?, ?, ?)",
                                [(d.seq, k, v) for d in documents for k, v in d.meta.items()])
            self.db.execute("INSERT OR REPLACE INTO state VALUES ('indexed_seq', ?)", (up_to,))
        self.indexed_seq = up_to
        self._trim_log()
        return len(documents)

    def remove(self, seqs: list[int]) -> None:
        """Take the units *seqs* out (retention removed them), in one transaction; seqs
        not indexed are passed over. The seq taken in is :meth:`add`'s to record, after:
        a crash in between takes the removal again, which changes nothing."""
        if not seqs:
            return
        rows = [(seq,) for seq in seqs]
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("DELETE FROM docs WHERE seq = ?", rows)
            self.db.executemany("DELETE FROM fts WHERE rowid = ?", rows)
            # (By meta_kv_seq: without it each delete scanned every unit's metadata.)
            self.db.executemany("DELETE FROM meta_kv WHERE seq = ?", rows)

    def _trim_log(self) -> None:
        """Checkpoint SQLite's log and cut it back once it outgrows :data:`WAL_LIMIT`
        (its automatic checkpoints reuse the file but never shrink it)."""
        try:
            size = os.path.getsize(self.path + "-wal")
        except OSError:
            return
        if size > 2 * WAL_LIMIT:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def search(
        self, query: str | None, *, contexts: list[str], agents: list[str], types: list[str],
        meta: dict[str, str], since_us: int | None, until_us: int | None,
        unit_ids: set[str] | None, limit: int, offset: int,
    ) -> tuple[int, list[Hit]]:
        """``(total, hits)``: ranked by BM25 then newest first, or newest first without words.

        Raises:
            QueryError: FTS5 could not parse *query* (advanced mode).
        """
        found = _filters(contexts=contexts, agents=agents, types=types, meta=meta,
                         since_us=since_us, until_us=until_us, unit_ids=unit_ids,
                         per_match=query is not None)
        if found is None:
            return 0, []
        where, args = found
        try:
            if query is None:
                clause = " AND ".join(where) or "1"
                total = self.db.execute(f"SELECT count(*) FROM docs d WHERE {clause}",
                                        args).fetchone()[0]
                rows = self.db.execute(
                    f"SELECT d.unit_id, d.seq, 0.0, '' FROM docs d WHERE {clause} "
                    "ORDER BY d.seq DESC LIMIT ? OFFSET ?", [*args, limit, offset]).fetchall()
            else:
                clause = " AND ".join(["fts MATCH ?", *where])
                params = [query, *args]
                # The matches drive (CROSS JOIN keeps SQLite from walking a filter's
                # units and starting the match over for each, 0.2 ms a unit); the filters
                # are checked per match. Without filters the FTS table alone; the page's
                # unit ids are looked up afterwards.
                source = "fts CROSS JOIN docs d ON d.seq = fts.rowid" if where else "fts"
                ranked = self._ranked(source, clause, params, limit, offset)
                total = self.db.execute(f"SELECT count(*) FROM {source} WHERE {clause}",
                                        params).fetchone()[0]
                seqs = [row[0] for row in ranked]
                ids_by_seq = self.unit_ids(seqs)
                snippets = self._snippets(query, seqs)
                rows = [(ids_by_seq[seq], seq, score, snippets.get(seq, ""))
                        for seq, score in ranked]
        except sqlite3.OperationalError as exc:
            raise QueryError(str(exc)) from None
        # bm25() is lower for better matches; `or 0.0` keeps a filter-only 0 from being -0.0.
        return total, [Hit(unit_id, seq, -score or 0.0, snippet)
                       for unit_id, seq, score, snippet in rows]

    def _ranked(self, source: str, clause: str, params: list[object], limit: int,
                offset: int) -> list[tuple[int, float]]:
        """The page ``(seq, bm25)``: the newest :data:`RANK_WINDOW` matches ranked by BM25
        (then newest first), and after them the older matches, newest first.

        Scoring costs about 2 µs a match and a common pair of words matches a share of
        the whole journal, so ranking every match grows with the journal; counting and
        walking matches newest first (FTS5 reads its lists in rowid order) stay cheap."""
        score = f"bm25(fts, {', '.join(str(w) for w in WEIGHTS)})"
        floor = self.db.execute(
            f"SELECT fts.rowid FROM {source} WHERE {clause} ORDER BY fts.rowid DESC "
            "LIMIT 1 OFFSET ?", [*params, RANK_WINDOW - 1]).fetchone()
        if floor is None:  # fewer matches than the window: rank them all
            return self.db.execute(
                f"SELECT fts.rowid, {score} AS score FROM {source} WHERE {clause} "
                "ORDER BY score, fts.rowid DESC LIMIT ? OFFSET ?",
                [*params, limit, offset]).fetchall()
        rows: list[tuple[int, float]] = []
        if offset < RANK_WINDOW:
            rows = self.db.execute(
                f"SELECT fts.rowid, {score} AS score FROM {source} WHERE {clause} "
                "AND fts.rowid >= ? ORDER BY score, fts.rowid DESC LIMIT ? OFFSET ?",
                [*params, floor[0], min(limit, RANK_WINDOW - offset), offset]).fetchall()
        if len(rows) < limit:
            rows += self.db.execute(
                f"SELECT fts.rowid, {score} FROM {source} WHERE {clause} AND fts.rowid < ? "
                "ORDER BY fts.rowid DESC LIMIT ? OFFSET ?",
                [*params, floor[0], limit - len(rows), max(0, offset - RANK_WINDOW)]
            ).fetchall()
        return rows

    def _snippets(self, query: str, seqs: list[int]) -> dict[int, str]:
        """The page's snippets, by seq. One pass over the matches between the page's seqs
        (a window's worth at most): ``rowid IN (...)`` beside MATCH would make SQLite start
        the match over for each seq, about 0.2 ms each."""
        if not seqs:
            return {}
        page = ",".join("?" * len(seqs))
        return {seq: snippet for seq, snippet in self.db.execute(
            f"SELECT rowid, CASE WHEN rowid IN ({page}) THEN snippet(fts, 0, '{MARK_OPEN}', "
            f"'{MARK_CLOSE}', '…', 16) END FROM fts WHERE fts MATCH ? AND rowid >= ? "
            "AND rowid <= ?", [*seqs, query, min(seqs), max(seqs)]) if snippet is not None}

    def matching_seqs(self, **filters: object) -> set[int] | None:
        """The seqs that pass *filters* (those of :meth:`search`); None when there are none."""
        found = _filters(**filters)  # type: ignore[arg-type]
        if found is None:
            return set()
        where, args = found
        if not where:
            return None
        clause = " AND ".join(where)
        return {row[0] for row in self.db.execute(f"SELECT d.seq FROM docs d WHERE {clause}",
                                                  args)}

    def unit_ids(self, seqs: Iterable[int]) -> dict[int, str]:
        seqs = list(seqs)
        if not seqs:
            return {}
        return dict(self.db.execute(
            f"SELECT seq, unit_id FROM docs WHERE seq IN ({','.join('?' * len(seqs))})",
            seqs).fetchall())

    def close(self) -> None:
        self.db.close()

    @staticmethod
    def destroy(path: str) -> None:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)

