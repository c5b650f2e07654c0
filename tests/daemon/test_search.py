"""Search through the real daemon: ranking, snippets, filters, safety, catching up."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from engram_cli.client import Client, requests
from engram_cli.client.errors import BadRequest
from engramd.search import RANK_WINDOW
from tests.conftest import ThreadedDaemon, connect, make_config, start_threaded, wait_until


def indexed(engram: Client) -> bool:
    journal = engram.status().journal
    assert journal is not None
    return journal.indexed_seq == journal.last_seq


def ids(results) -> list[str]:  # type: ignore[no-untyped-def]
    return [hit.unit_id for hit in results.hits]


@pytest.fixture
def corpus(threaded_daemon: ThreadedDaemon) -> dict[str, str]:
    config = threaded_daemon.config
    units = {}
    with connect(config) as alice, connect(config, "bob") as bob:
        units["error"] = alice.create_unit(
            "build-1", "ERROR", "FrameTooLarge raised in src/engramd/protocol/framing.py: "
            "frame of 20000000 bytes exceeds the limit", meta={"exit": "1"}).id
        units["fix"] = bob.create_unit(
            "build-1", "REASONING", "raise max_frame_bytes in the config; the frame limit is "
            "too small for build logs", relationships=[("RESPONDS_TO", units["error"])]).id
        units["prose"] = bob.create_unit(
            "notes", "MESSAGE", "A long note about the weather, with the word frame once.").id
        units["deploy"] = alice.create_unit(
            "deploy", "TASK_STATUS", "deploy finished", meta={"env": "prod"}).id
        units["binary"] = alice.create_unit("deploy", "TOOL_RESULT", b"\xff\xfe\x00",
                                            meta={"env": "staging"}).id
        wait_until(lambda: indexed(alice), "the index to catch up")
    return units


def test_better_match_ranks_first_with_highlighted_snippets(
        threaded_daemon: ThreadedDaemon, corpus: dict[str, str]) -> None:
    with connect(threaded_daemon.config) as engram:
        results = engram.search("frame limit")
    assert results.total == 2
    assert set(ids(results)) == {corpus["error"], corpus["fix"]}
    assert results.hits[0].score >= results.hits[1].score
    assert all("**frame**" in hit.snippet and "**limit**" in hit.snippet for hit in results.hits)


def test_identifiers_paths_and_snake_case_are_findable(
        threaded_daemon: ThreadedDaemon, corpus: dict[str, str]) -> None:
    with connect(threaded_daemon.config) as engram:
        assert ids(engram.search("FrameTooLarge")) == [corpus["error"]]
        assert ids(engram.search("TooLarge")) == [corpus["error"]]
        assert ids(engram.search("TooLarge frame")) == [corpus["error"]]  # with more words
        assert ids(engram.search("limit TooLarge")) == [corpus["error"]]
        assert ids(engram.search("framing.py")) == [corpus["error"]]
        assert ids(engram.search("max_frame_bytes")) == [corpus["fix"]]
        assert ids(engram.search("src/engramd/protocol")) == [corpus["error"]]


def test_each_filter_alone_and_combined(threaded_daemon: ThreadedDaemon,
                                        corpus: dict[str, str]) -> None:
    with connect(threaded_daemon.config) as engram:
        assert set(ids(engram.search("frame", contexts=["build-1"]))) == {
            corpus["error"], corpus["fix"]}
        assert set(ids(engram.search("frame", agents=["bob"]))) == {corpus["fix"],
                                                                     corpus["prose"]}
        assert ids(engram.search("frame", types=["error"])) == [corpus["error"]]
        assert ids(engram.search("", meta={"env": "prod"})) == [corpus["deploy"]]
        assert ids(engram.search("frame", agents=["bob"], contexts=["notes"])) == [
            corpus["prose"]]
        assert ids(engram.search("frame", related_to=corpus["error"])) == [corpus["fix"]]
        future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        assert engram.search("frame", since=future).total == 0
        assert engram.search("frame", until=future).total == 3


def test_filters_without_words_list_newest_first(threaded_daemon: ThreadedDaemon,
                                                 corpus: dict[str, str]) -> None:
    with connect(threaded_daemon.config) as engram:
        results = engram.search(contexts=["deploy"])
        assert ids(results) == [corpus["binary"], corpus["deploy"]]
        page = engram.search(limit=2, offset=1)
        assert page.total == 5 and len(page.hits) == 2


@pytest.mark.parametrize("text", ["***", "🚀", "   ", "___", "-- ..."])
def test_words_with_nothing_to_index_match_nothing(threaded_daemon: ThreadedDaemon,
                                                   corpus: dict[str, str], text: str) -> None:
    with connect(threaded_daemon.config) as engram:
        found = engram.search(text)
        assert (found.total, found.hits) == (0, [])  # not every unit, with empty snippets
        assert engram.search("").total == 5  # no words asked for: filters alone
        assert ids(engram.search(f"{text} weather")) == [corpus["prose"]]


@pytest.mark.parametrize("text", ['"', "(", ")", "AND", "OR NOT", "NEAR(", "*", "^x",
                                  "a:b", "col:frame", "'; DROP TABLE docs; --", "\\", "{}"])
def test_any_user_text_is_safe(threaded_daemon: ThreadedDaemon, corpus: dict[str, str],
                               text: str) -> None:
    with connect(threaded_daemon.config) as engram:
        engram.search(text)  # an answer, perhaps empty; never an internal error
        engram.ping()


def test_advanced_mode_passes_fts5_syntax(threaded_daemon: ThreadedDaemon,
                                          corpus: dict[str, str]) -> None:
    with connect(threaded_daemon.config) as engram:
        assert ids(engram.search("fram*", advanced=True, types=["ERROR"])) == [corpus["error"]]
        assert ids(engram.search('"frame limit"', advanced=True)) == [corpus["fix"]]
        assert set(ids(engram.search("weather OR finished", advanced=True))) == {
            corpus["prose"], corpus["deploy"]}
        with pytest.raises(BadRequest, match="cannot read the query"):
            engram.search('"unbalanced', advanced=True)


def test_a_unit_is_findable_right_after_it_is_written(threaded_daemon: ThreadedDaemon) -> None:
    with connect(threaded_daemon.config) as engram:
        unit = engram.create_unit("fresh", "MESSAGE", "xylophone quartet")
        wait_until(lambda: ids(engram.search("xylophone")) == [unit.id], "findable", timeout=5)


def test_the_index_catches_up_after_a_restart_and_a_reindex(env: dict[str, str]) -> None:
    config = make_config(env)
    with start_threaded(config), connect(config) as engram:
        first = engram.create_unit("r", "MESSAGE", "zebra crossing")
        wait_until(lambda: indexed(engram), "indexed")
    index = f"{config.data_dir}/search.db"
    os.unlink(index)  # lose the index entirely: it must rebuild from the store
    for suffix in ("-wal", "-shm"):
        if os.path.exists(index + suffix):
            os.unlink(index + suffix)
    with start_threaded(config), connect(config) as engram:
        second = engram.create_unit("r", "MESSAGE", "zebra stripes")
        wait_until(lambda: engram.search("zebra").total == 2, "caught up")
        engram.reindex()
        wait_until(lambda: set(ids(engram.search("zebra"))) == {first.id, second.id},
                   "rebuilt")


def test_huge_words_do_not_stall_the_indexer(threaded_daemon: ThreadedDaemon) -> None:
    with connect(threaded_daemon.config) as engram:
        engram.create_unit("big", "MESSAGE", "p" * 1_000_000)
        engram.create_unit("big", "MESSAGE", "aB" * 400_000 + " needle")
        wait_until(lambda: engram.search("needle").total == 1, "the index past huge words")


def test_the_newest_matches_are_ranked_and_older_ones_follow_newest_first(
        threaded_daemon: ThreadedDaemon) -> None:
    """BM25 ranks the newest RANK_WINDOW matches only (a query's cost stays flat as the
    journal grows); older matches are still counted and paged to, newest first."""
    older, newer = 150, RANK_WINDOW
    with connect(threaded_daemon.config) as engram:
        # The older units are the better matches (the word three times), yet past the window.
        old_ids = [unit.id for unit in engram.create_units(
            [requests.draft("old", "MESSAGE", f"harbour harbour harbour {n}")
             for n in range(older)]).units]
        new_ids: list[str] = []
        for start in range(0, newer, 1000):
            new_ids += [unit.id for unit in engram.create_units(
                [requests.draft("new", "MESSAGE", f"harbour and a long sentence around it {n}"
                                + (" harbour harbour" if n == newer // 2 else ""))
                 for n in range(start, min(newer, start + 1000))]).units]
        wait_until(lambda: indexed(engram), "the index to catch up")
        first = engram.search("harbour", limit=5)
        straddling = engram.search("harbour", limit=100, offset=RANK_WINDOW - 50)
        past = engram.search("harbour", limit=100, offset=RANK_WINDOW + 100)
        filtered = engram.search("harbour", contexts=["old", "new"], limit=5)
    assert first.total == older + newer
    assert first.hits[0].unit_id == new_ids[newer // 2]  # the window's best
    assert set(ids(first)) <= set(new_ids)
    assert ids(filtered) == ids(first)
    assert set(ids(straddling)[:50]) <= set(new_ids)
    assert ids(straddling)[50:] == old_ids[::-1][:50]  # then the older ones, newest first
    assert ids(past) == old_ids[::-1][100:]
