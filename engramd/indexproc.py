"""The index process: the search indexes (:class:`engramd.indexing.Indexes`) in a Python
process of their own, so that decoding, indexing and embedding take no turn of the
interpreter lock the daemon's request path needs (SPECS §8.1).

engramd starts it (``python -m engramd.indexproc``) with one end of a socket pair as its
stdin, and talks to it through :class:`IndexProcess`, which has the methods of
:class:`~engramd.indexing.Indexes`: one request, one reply, from one thread at a time.
Replies carry the indexes' seqs (which ``engram status`` shows without asking) and what
the process logged (engramd logs it, so one log has everything). The process exits when
its socket closes, so it never outlives engramd; if it dies, the next call starts another.
Errors cross as what they were (a damaged or busy SQLite file, an OSError with its errno,
an unreadable query), so the indexer treats them as it would in its own thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import msgspec

from engramd.indexing import is_damage
from engramd.search import Hit, QueryError

log = logging.getLogger("engramd.indexer")

_LENGTH = struct.Struct(">I")
_STOP_SECONDS = 5.0
SEARCH_SECONDS = 10.0
"""How long a search may take the index process before it counts as stuck (stopped,
or looping): a client waits 30 s for its answer, and must get one."""
START_SECONDS = 120.0
"""How long a new index process may take to start and open the indexes."""
WORK_SECONDS = 120.0
"""The same for the rest (a batch to index, with the model's load on the first): the
indexer's batches are bounded in events and bytes (engramd.indexer.BATCH, BATCH_BYTES)."""


class Open(msgspec.Struct, tag=True):
    data_dir: str
    embedding: str | None
    """None: no semantic search."""
    rebuild: bool
    applied_seq: int
    exact_rows: int = 10_000


class WantedAfter(msgspec.Struct, tag=True):
    applied_seq: int
    """The store's, for the vector index opened now: ahead of it, it starts over."""


class Take(msgspec.Struct, tag=True):
    stored: list[tuple[int, bytes]]


class Search(msgspec.Struct, tag=True):
    query: str | None
    filters: dict[str, Any]


class Nearest(msgspec.Struct, tag=True):
    text: str
    limit: int
    min_similarity: float | None
    filters: dict[str, Any]
    exact: bool = False


class StartOver(msgspec.Struct, tag=True):
    pass


class CatchUp(msgspec.Struct, tag=True):
    """A slice of the approximate graph built while it is behind (idle indexer)."""


Request = Open | WantedAfter | Take | Search | Nearest | StartOver | CatchUp


class Reply(msgspec.Struct):
    keyword_seq: int = 0
    vector_seq: int | None = None
    approximate_lag: int = 0
    semantic: bool = False
    wanted_after: int = 0
    more: bool = False
    total: int = 0
    hits: list[tuple[str, int, float, str]] = []
    failure: str | None = None
    """What went wrong, by kind: query, sqlite-busy, sqlite-damaged, os, internal."""
    message: str = ""
    errno: int | None = None
    logs: list[tuple[int, str]] = []
    """(level, message) of what the process logged while answering."""


class IndexProcessGone(OSError):
    """The index process exited or stopped answering; the next call starts another."""


class IndexProcessStuck(IndexProcessGone):
    """The index process did not answer in time; it was killed."""


class IndexProcessFailed(OSError):
    """The index process met an error it could not name (its log says more)."""


def _send(sock: socket.socket, body: bytes) -> None:
    sock.sendall(_LENGTH.pack(len(body)) + body)


def _receive(sock: socket.socket) -> bytes | None:
    """One frame's body, or None at the end of the stream."""
    head = _exactly(sock, _LENGTH.size)
    if head is None:
        return None
    body = _exactly(sock, _LENGTH.unpack(head)[0])
    if body is None:
        raise EOFError("the stream ended within a frame")
    return body


def _exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks, wanted = [], size
    while wanted:
        chunk = sock.recv(min(wanted, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        wanted -= len(chunk)
    return b"".join(chunks)


def _filters_out(filters: dict[str, object]) -> dict[str, Any]:
    """Search filters as msgpack carries them (a set as a list)."""
    return {key: sorted(value) if isinstance(value, set) else value
            for key, value in filters.items()}


def _filters_in(filters: dict[str, Any]) -> dict[str, Any]:
    unit_ids = filters.get("unit_ids")
    return {**filters, "unit_ids": None if unit_ids is None else set(unit_ids)}


class IndexProcess:
    """The indexes in a process of their own; the methods and properties of
    :class:`~engramd.indexing.Indexes`, called from one thread at a time."""

    def __init__(self, data_dir: str, embedding: str | None, *, rebuild: bool,
                 applied_seq: Callable[[], int], exact_rows: int) -> None:
        """Start the process and open the indexes in it.

        Raises:
            sqlite3.Error: the keyword index cannot be opened (as :class:`SearchIndex`).
            OSError: the process cannot start or its indexes cannot be opened.
        """
        self.path = os.path.join(data_dir, "search.db")
        self._open = Open(data_dir, embedding, rebuild, 0, exact_rows)
        self._applied_seq = applied_seq
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(Reply)
        self._process: subprocess.Popen[bytes] | None = None
        self._socket: socket.socket | None = None
        self.keyword_seq = 0
        self.vector_seq: int | None = None
        self.approximate_lag = 0
        self.semantic = embedding is not None
        self._start()
        self._open.rebuild = False  # a process started again after a crash keeps the index

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        # Exactly engramd's own modules: its import path, and none from the directory it
        # runs in (-P), which may hold another engramd (a checkout, a project).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-P", "-m", "engramd.indexproc"], stdin=theirs.fileno(),
                stdout=subprocess.DEVNULL, env=env, close_fds=True)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self._socket = ours
        try:
            self._ask(msgspec.structs.replace(self._open, applied_seq=self._applied_seq()),
                      START_SECONDS)
        except BaseException:
            self._stop()
            raise

    def _call(self, request: Request) -> Reply:
        """*request* answered; a process found gone is started again and asked once more
        (every request may be asked twice: the indexes skip what they hold already)."""
        if self._socket is None:
            self._start()
            return self._ask(request)
        try:
            return self._ask(request)
        except IndexProcessStuck:
            raise  # (asked again, it would keep its caller as long again)
        except IndexProcessGone as exc:
            log.warning("%s; starting another", exc)
        self._start()
        return self._ask(request)

    def _ask(self, request: Request, seconds: float | None = None) -> Reply:
        assert self._socket is not None
        if seconds is None:
            seconds = SEARCH_SECONDS if isinstance(request, Search | Nearest) else WORK_SECONDS
        self._socket.settimeout(seconds)
        try:
            _send(self._socket, self._encoder.encode(request))
            body = _receive(self._socket)
        except TimeoutError:
            self._stop(kill=True)
            message = f"the index process did not answer within {seconds:g}s; it was killed"
            log.warning("%s", message)
            raise IndexProcessStuck(message) from None
        except (OSError, EOFError) as exc:
            self._gone(f"the index process stopped answering ({exc})")
        if body is None:
            return self._gone("the index process exited")
        reply = self._decoder.decode(body)
        for level, message in reply.logs:
            log.log(level, "%s", message)
        self.keyword_seq, self.vector_seq = reply.keyword_seq, reply.vector_seq
        self.approximate_lag = reply.approximate_lag
        self.semantic = reply.semantic
        if reply.failure is not None:
            raise _error(reply)
        return reply

    def _gone(self, why: str) -> NoReturn:
        code = self._stop()
        raise IndexProcessGone(why + ("" if code is None else f" (exit status {code})"))

    def _stop(self, *, kill: bool = False) -> int | None:
        """Close the socket (the process exits at its end; *kill*: killed first); its
        exit status, or None."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        process, self._process = self._process, None
        if process is None:
            return None
        if kill:
            process.kill()
        try:
            return process.wait(_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def kill_if_stopped(self) -> bool:
        """Kill the process if it is stopped (SIGSTOP, a debugger), from any thread: the
        one waiting on it then finds it gone, and the next call starts another. (Stopped
        while it works on a batch, it would otherwise hold the indexes for
        ``WORK_SECONDS``.)"""
        process = self._process
        if process is None:
            return False
        try:
            with open(f"/proc/{process.pid}/stat", "rb") as stat:
                fields = stat.read()
        except OSError:
            return False  # (gone already, or no /proc here)
        if fields[fields.rindex(b")") + 2:][:1] not in (b"T", b"t"):
            return False
        process.kill()
        log.warning("the index process was stopped while engramd waited on it; it was "
                    "killed and starts again")
        return True

    def wanted_after(self) -> int:
        return self._call(WantedAfter(self._applied_seq())).wanted_after

    def take(self, stored: list[tuple[int, bytes]]) -> None:
        if stored:
            self._call(Take(stored))

    def catch_up(self) -> bool:
        return self._call(CatchUp()).more

    def search(self, query: str | None, **filters: object) -> tuple[int, list[Hit]]:
        reply = self._call(Search(query, _filters_out(filters)))
        return reply.total, [Hit(*hit) for hit in reply.hits]

    def nearest(self, text: str, *, limit: int, min_similarity: float | None,
                exact: bool = False, **filters: object) -> tuple[int, list[Hit]]:
        reply = self._call(Nearest(text, limit, min_similarity, _filters_out(filters), exact))
        return reply.total, [Hit(*hit) for hit in reply.hits]

    def start_over(self) -> None:
        self._call(StartOver())

    def close(self) -> None:
        self._stop()


def _error(reply: Reply) -> Exception:
    """The exception *reply* names, as the indexes would have raised it in this process."""
    match reply.failure:
        case "query":
            return QueryError(reply.message)
        case "sqlite-busy":
            return sqlite3.OperationalError(reply.message)
        case "sqlite-damaged":
            return sqlite3.DatabaseError(reply.message)
        case "os":
            return OSError(reply.errno or 0, reply.message)
        case _:
            return IndexProcessFailed(f"the index process failed: {reply.message}")


def _failure(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, QueryError):
        return {"failure": "query", "message": str(exc)}
    if is_damage(exc):
        return {"failure": "sqlite-damaged", "message": str(exc)}
    if isinstance(exc, sqlite3.Error):
        return {"failure": "sqlite-busy", "message": str(exc)}
    if isinstance(exc, OSError):
        return {"failure": "os", "message": exc.strerror or str(exc), "errno": exc.errno}
    log.exception("the index process failed")
    return {"failure": "internal", "message": f"{type(exc).__name__}: {exc}"}


class _Kept(logging.Handler):
    """Keeps what the process logs for the next reply."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        self.records.append((record.levelno, message))

    def take(self) -> list[tuple[int, str]]:
        records, self.records = self.records, []
        return records


def serve(sock: socket.socket) -> None:
    """Answer engramd's requests on *sock* until it closes."""
    from engramd.indexing import Indexes, open_indexes

    # Everything logged here goes back to engramd, its own lines and a library's warnings
    # alike; with a handler in place, a library's logging.basicConfig() (wordllama calls
    # it on import) adds none that would write lines of another format to engramd's log.
    kept = _Kept()
    root = logging.getLogger()
    root.handlers[:] = [kept]
    root.setLevel(logging.WARNING)
    logging.getLogger("engramd").setLevel(logging.INFO)
    decoder = msgspec.msgpack.Decoder(Request)
    encoder = msgspec.msgpack.Encoder()
    indexes: Indexes | None = None
    applied_seq = 0

    def answer(request: Request) -> dict[str, Any]:
        nonlocal indexes, applied_seq
        if isinstance(request, Open):
            applied_seq = request.applied_seq
            indexes = open_indexes(request.data_dir, request.embedding,
                                   rebuild=request.rebuild, applied_seq=lambda: applied_seq,
                                   exact_rows=request.exact_rows)
            return {}
        if indexes is None:
            raise RuntimeError("asked before the indexes were opened")
        match request:
            case WantedAfter(applied_seq=seq):
                applied_seq = seq
                return {"wanted_after": indexes.wanted_after()}
            case Take(stored=stored):
                indexes.take(stored)
            case Search(query=query, filters=filters):
                total, hits = indexes.search(query, **_filters_in(filters))
                return {"total": total, "hits": [_hit(hit) for hit in hits]}
            case Nearest(text=text, limit=limit, min_similarity=similarity, filters=filters,
                         exact=exact):
                total, hits = indexes.nearest(text, limit=limit, min_similarity=similarity,
                                              exact=exact, **_filters_in(filters))
                return {"total": total, "hits": [_hit(hit) for hit in hits]}
            case StartOver():
                indexes.start_over()
            case CatchUp():
                return {"more": indexes.catch_up()}
        return {}

    while (body := _receive(sock)) is not None:
        try:
            fields = answer(decoder.decode(body))
        except Exception as exc:
            fields = _failure(exc)
        state: dict[str, Any] = {} if indexes is None else {
            "keyword_seq": indexes.keyword_seq, "vector_seq": indexes.vector_seq,
            "approximate_lag": indexes.approximate_lag, "semantic": indexes.semantic}
        _send(sock, encoder.encode(Reply(**state, **fields, logs=kept.take())))
    if indexes is not None:
        indexes.close()


def _hit(hit: Hit) -> tuple[str, int, float, str]:
    return hit.unit_id, hit.seq, hit.score, hit.snippet


def main() -> None:
    # engramd decides when this process ends (by closing its socket); a ^C at the
    # terminal that started engramd is engramd's to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=os.dup(0))
    with contextlib.suppress(EOFError, ConnectionError), sock:
        serve(sock)


if __name__ == "__main__":
    main()
