"""Rows of search: keyword queries over a filled journal, index throughput, vectors
and hybrid search."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator

from engram_cli.bench.harness import (
    BenchTarget,
    Measurement,
    SemanticMissing,
    bench_daemon,
    timed_loop,
    wait_indexed,
)
from engram_cli.bench.journal import daemon_rss_mib, fill, fill_text
from engram_cli.client import Client


def two_word_queries() -> Iterator[str]:
    """Endless two-word queries whose words occur together in the fill's sentences."""
    sentences = [fill_text(i * 997).decode().split()[2:] for i in range(200)]
    return itertools.cycle(f"{words[1]} {words[7]}" for words in sentences)


def bench_search_query(target: BenchTarget) -> Measurement:
    """A two-word query, limit 20, over 1,000,000 (scaled) units."""
    total = fill(target)
    queries = two_word_queries()
    hits = []
    with target.client() as client:
        def query() -> None:
            hits.append(client.search(next(queries), limit=20).total)

        measurement = timed_loop(target, target.count(500), query)
    measurement.note = (f"{total:,} units indexed; median matches per query "
                        f"{sorted(hits)[len(hits) // 2]:,}")
    return measurement


def bench_index_throughput(target: BenchTarget) -> Measurement:
    """Rebuild the index over 1,000,000 (scaled) units: units indexed per second."""
    total = fill(target)
    with target.client() as client:
        started = time.perf_counter()
        client.reindex()
    wait_indexed(target)
    seconds = time.perf_counter() - started
    return Measurement([seconds], seconds,
                       note=f"{total / seconds:,.0f} units/s over {total:,} units (wall in p50)")


SEMANTIC_UNITS = 100_000


@contextlib.contextmanager
def _semantic_store(target: BenchTarget) -> Iterator[tuple[BenchTarget, float, int]]:
    """A daemon of its own over SEMANTIC_UNITS (scaled) fill units, written with semantic
    search off, then restarted with it on: yields it, the seconds from that restart
    until its vector index had every unit (the model's load included), and the units."""
    with bench_daemon() as own:
        units = fill(own, target.count(SEMANTIC_UNITS, minimum=1000))
        assert own.restart is not None
        assert isinstance(own.env, dict)  # the environment restart() starts the daemon with
        own.env["ENGRAM_SEARCH_SEMANTIC"] = "auto"
        started = time.perf_counter()
        own.restart(False)
        wait_indexed(own, vectors=True, interval=0.01)
        yield own, time.perf_counter() - started, units


def bench_vector_backfill(target: BenchTarget) -> Measurement:
    """A daemon with semantic search opening a store of 100,000 (scaled) units without a
    vector index: from its start until every unit is embedded and indexed."""
    try:
        with _semantic_store(target) as (own, seconds, units):
            rss = daemon_rss_mib(own)
    except SemanticMissing as exc:
        return Measurement([], 0.0, note=f"not run: {exc}")
    return Measurement([seconds], seconds, ops=units, note=(
        f"{units / seconds:,.0f} units/s over {units:,} units (wall in p50, the model's load "
        f"included); daemon RSS {rss:.0f} MiB"))


def bench_search_hybrid(target: BenchTarget) -> Measurement:
    """A two-word hybrid query (BM25 and vector ranks fused), limit 20, over 100,000
    (scaled) units."""
    queries = two_word_queries()
    try:
        with _semantic_store(target) as (own, _, units), own.client() as client:
            def query() -> None:
                client.search(next(queries), mode="hybrid", limit=20)

            for _ in range(20):
                query()
            measurement = timed_loop(own, target.count(500), query)
            rss = daemon_rss_mib(own)
            recall = semantic_recall(client, [next(queries) for _ in range(50)])
    except SemanticMissing as exc:
        return Measurement([], 0.0, note=f"not run: {exc}")
    measurement.note = (f"{units:,} units; daemon RSS {rss:.0f} MiB; semantic recall@10 "
                        f"{recall:.3f} against exact")
    return measurement


def semantic_recall(client: Client, queries: list[str], limit: int = 10) -> float:
    """The share of exact semantic search's top *limit* (``exact``: every vector scored)
    that the search as served (the approximate index on a large journal) finds too."""
    found = wanted = 0
    for query in queries:
        exact = {hit.seq for hit in client.search(query, mode="semantic", limit=limit,
                                                   exact=True).hits}
        served = {hit.seq for hit in client.search(query, mode="semantic", limit=limit).hits}
        found += len(exact & served)
        wanted += len(exact)
    return found / wanted if wanted else 1.0
