"""Semantic and hybrid search, against a real daemon with the bundled embedding model
(the engram-journal[semantic] extra), and without the extra."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("wordllama")

from engram_cli.client import Client
from engram_cli.client.errors import BadRequest
from engramd.config import DaemonConfig
from tests.conftest import (
    WAIT,
    DaemonProcess,
    connect,
    engramd_log,
    make_config,
    run_cli,
    start_engramd,
    start_threaded,
    wait_until,
)

CORPUS = [
    ("build-42", "disk quota exceeded while writing the build log"),
    ("deploy", "lease expired before the deploy finished"),
    ("build-42", "the parser now handles unicode identifiers"),
    ("web", "refactored the login page styles"),
    ("ops", "memory usage grew until the process was killed by the OOM killer"),
    ("ops", "network connection reset by peer during upload"),
    ("build-42", "unit tests pass on python 3.12"),
    ("docs", "updated the README with install steps"),
    ("social", "cat pictures from the team offsite"),
    ("release", "merged the pull request for the release branch"),
]
# Each query shares no word with the unit it means.
MEANT = {"storage full": CORPUS[0][1], "lock timeout": CORPUS[1][1]}


@pytest.fixture
def semantic(env: dict[str, str]) -> DaemonConfig:
    return make_config(env, **{"search.semantic": "auto"})


def write_corpus(client: Client) -> dict[str, str]:
    """The corpus written; its unit ids by text."""
    return {text: client.create_unit(context, "MESSAGE", text).id for context, text in CORPUS}


def caught_up(client: Client) -> bool:
    journal = client.status().journal
    return journal is not None and journal.vector_seq == journal.last_seq \
        and journal.indexed_seq == journal.last_seq


def texts(client: Client, query: str, **options: object) -> list[str]:
    hits = client.search(query, **options).hits  # type: ignore[arg-type]
    units = {unit.id: unit for unit in client.get_units([hit.unit_id for hit in hits]).units}
    return [units[hit.unit_id].text or "" for hit in hits]


def test_semantic_and_hybrid_find_what_keyword_search_cannot(semantic: DaemonConfig) -> None:
    with start_threaded(semantic), connect(semantic) as client:
        write_corpus(client)
        wait_until(lambda: caught_up(client), "both indexes to catch up")
        for query, meant in MEANT.items():
            assert client.search(query).hits == [], "keyword search shares no word"
            assert texts(client, query, mode="semantic", limit=3)[0] == meant
            assert texts(client, query, mode="hybrid", limit=3)[0] == meant
        # Hybrid: a unit both sides find ranks first, with both scores reported.
        hit = client.search("disk quota", mode="hybrid").hits[0]
        assert hit.bm25 is not None and hit.similarity is not None
        assert hit.score > 0
        semantic_hit = client.search("storage full", mode="semantic").hits[0]
        assert semantic_hit.bm25 is None and semantic_hit.similarity == semantic_hit.score


def test_filters_and_min_similarity_combine_with_semantic_mode(semantic: DaemonConfig) -> None:
    with start_threaded(semantic), connect(semantic) as client:
        write_corpus(client)
        wait_until(lambda: caught_up(client), "both indexes to catch up")
        in_ops = texts(client, "storage full", mode="semantic", contexts=["ops"])
        assert in_ops and set(in_ops) <= {text for ctx, text in CORPUS if ctx == "ops"}
        assert texts(client, "storage full", mode="semantic", types=["ERROR"]) == []
        everything = client.search("storage full", mode="semantic", limit=50)
        assert everything.total == len(CORPUS)
        close = client.search("storage full", mode="semantic", min_similarity=0.18)
        assert 0 < close.total < len(CORPUS)
        assert all(hit.score >= 0.18 for hit in close.hits)
        assert texts(client, "storage full", mode="semantic", min_similarity=0.18)[0] == \
            MEANT["storage full"]
        with pytest.raises(BadRequest, match="needs words"):
            client.search("", mode="semantic")
        with pytest.raises(BadRequest, match="mode must be"):
            client.search("x", mode="fuzzy")
        with pytest.raises(BadRequest, match="applies to semantic"):
            client.search("x", min_similarity=0.5)


def test_the_vector_index_is_rebuilt_when_deleted_or_its_model_changes(
        semantic: DaemonConfig) -> None:
    vectors = Path(semantic.data_dir, "vectors")
    with start_threaded(semantic), connect(semantic) as client:
        write_corpus(client)
        wait_until(lambda: caught_up(client), "both indexes to catch up")
    state = json.loads((vectors / "state.json").read_text())
    assert state["rows"] == len(CORPUS) and state["model"].startswith("wordllama")
    assert (vectors / "vectors.i8").stat().st_size == len(CORPUS) * state["dim"]

    # Another model's index: started over, never mixed.
    (vectors / "state.json").write_text(json.dumps({**state, "model": "another-model"}))
    with start_threaded(semantic), connect(semantic) as client:
        wait_until(lambda: caught_up(client), "the vector index to be rebuilt")
        assert texts(client, "lock timeout", mode="semantic", limit=1) == [MEANT["lock timeout"]]
    assert json.loads((vectors / "state.json").read_text())["model"] == state["model"]
    assert json.loads((vectors / "state.json").read_text())["rows"] == len(CORPUS)

    # Damaged (counts that are not numbers): started over, the daemon unharmed.
    (vectors / "state.json").write_text(json.dumps({**state, "rows": "many"}))
    with start_threaded(semantic), connect(semantic) as client:
        wait_until(lambda: caught_up(client), "the damaged vector index to be rebuilt")
    assert json.loads((vectors / "state.json").read_text())["rows"] == len(CORPUS)

    # Deleted: rebuilt from the store; and reindex rebuilds it too.
    for path in vectors.iterdir():
        path.unlink()
    vectors.rmdir()
    with start_threaded(semantic), connect(semantic) as client:
        wait_until(lambda: caught_up(client), "the deleted vector index to be rebuilt")
        assert texts(client, "storage full", mode="semantic", limit=1) == [MEANT["storage full"]]
        client.reindex()
        wait_until(lambda: caught_up(client), "the reindex to finish")
        assert client.stats().gauges["vector_lag_events"] == 0
        assert texts(client, "storage full", mode="hybrid", limit=1) == [MEANT["storage full"]]


def test_the_cli_modes_and_their_json(engramd_semantic: DaemonProcess) -> None:
    env = engramd_semantic.env
    for _, text in CORPUS:
        assert run_cli(env, "unit", "create", "-c", "cli", "-p", text).returncode == 0
    with connect(engramd_semantic.socket) as client:
        wait_until(lambda: caught_up(client), "both indexes to catch up")
    keyword = run_cli(env, "search", "storage full")
    assert keyword.returncode == 3
    found = run_cli(env, "search", "--mode", "hybrid", "storage full", "-n", "2", "--json")
    assert found.returncode == 0, found.stderr
    first = json.loads(found.stdout.splitlines()[0])
    assert first["unit"]["payload"] == MEANT["storage full"]
    assert {"score", "bm25", "similarity"} <= set(first)
    bad = run_cli(env, "search", "--mode", "semantic", "x", "--min-similarity", "2")
    assert bad.returncode == 2
    doctor = run_cli(env, "doctor", "--json")
    checks = {json.loads(line)["check"]: json.loads(line) for line in doctor.stdout.splitlines()}
    assert checks["vector index"]["status"] == "ok"


@pytest.fixture
def engramd_semantic(env: dict[str, str]) -> DaemonProcess:
    env = {**env, "ENGRAM_SEARCH_SEMANTIC": "auto"}
    handle = DaemonProcess(start_engramd(env), env["ENGRAM_SOCKET"], env)
    yield handle  # type: ignore[misc]
    handle.stop()


HIDE_EXTRA = '''
import sys

class _WithoutSemanticExtra:
    """As on a machine without engram-journal[semantic]: numpy and wordllama cannot be found."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("numpy", "wordllama"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _WithoutSemanticExtra())
'''


def test_without_the_extra_semantic_search_says_how_to_install_it(
        env: dict[str, str], scratch: str) -> None:
    hide = Path(scratch, "hide")
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_EXTRA)
    bare = {**env, "ENGRAM_SEARCH_SEMANTIC": "auto", "PYTHONPATH": str(hide)}
    daemon = DaemonProcess(start_engramd(bare), bare["ENGRAM_SOCKET"], bare)
    try:
        assert run_cli(bare, "unit", "create", "-c", "c", "-p", "disk full").returncode == 0
        with connect(daemon.socket) as client:
            journal = client.status().journal
            assert journal is not None and journal.vector_seq is None
            assert "vector_lag_events" not in client.stats().gauges
            wait_until(lambda: client.search("disk").total == 1, "keyword search as before")
        result = run_cli(bare, "search", "--mode", "semantic", "storage full")
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1
        assert "pip install 'engram-journal[semantic]'" in result.stderr
        doctor = run_cli(bare, "doctor", "--json")
        checks = {json.loads(line)["check"]: json.loads(line)
                  for line in doctor.stdout.splitlines()}
        assert checks["vector index"]["status"] == "skip"
    finally:
        assert daemon.stop() == 0


def test_the_daemon_imports_no_numpy_until_the_indexer_opens_the_vectors() -> None:
    code = ("import sys, engramd.main, engramd.engine, engramd.indexer, engramd.queries, "
            "engramd.embedding; print(sorted(m for m in ('numpy', 'wordllama') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=WAIT * 3, check=True, env={**os.environ})
    assert result.stdout.strip() == "[]"


def test_semantic_search_of_a_missing_context_is_empty_not_an_error(
        semantic: DaemonConfig) -> None:
    with start_threaded(semantic), connect(semantic) as client:
        write_corpus(client)
        wait_until(lambda: caught_up(client), "both indexes to catch up")
        assert client.search("storage full", mode="semantic", contexts=["nowhere"]).hits == []


async def test_the_same_modes_over_http_and_mcp(engramd_semantic: DaemonProcess) -> None:
    """POST /search (mode) and upstream's POST /search/vector through the gateway, and
    the MCP search tool's mode, on one daemon."""
    pytest.importorskip("hypercorn")
    pytest.importorskip("mcp")
    from tests.doors.test_gateway import gateway
    from tests.doors.test_mcp import call, mcp_session

    with connect(engramd_semantic.socket) as client:
        write_corpus(client)
        wait_until(lambda: caught_up(client), "both indexes to catch up")
    with gateway(engramd_semantic.env) as gw:
        vector = gw.http.post("/search/vector", json={"query": "lock timeout", "limit": 1})
        assert vector.status_code == 200, vector.text
        assert vector.json()["hits"][0]["unit"]["payload"] == MEANT["lock timeout"]
        hybrid = gw.http.post("/search", json={"query": "storage full", "mode": "hybrid"})
        assert hybrid.json()["hits"][0]["unit"]["payload"] == MEANT["storage full"]
        assert gw.http.post("/search", json={"query": "x", "mode": "fuzzy"}).status_code == 400
    async with mcp_session(engramd_semantic.env) as session:
        failed, text = await call(session, "search", query="storage full", mode="semantic",
                                  limit=1)
        assert not failed and MEANT["storage full"] in text


def test_a_configured_model_is_used_and_one_that_fails_turns_semantic_search_off(
        env: dict[str, str]) -> None:
    config = make_config(env, **{"search.semantic": "auto",
                                 "search.embedding": "tests.helpers.embedders:poisoned"})
    with start_threaded(config), connect(config) as client:
        client.create_unit("c", "MESSAGE", "disk quota exceeded")
        wait_until(lambda: caught_up(client), "both indexes to catch up")
        assert texts(client, "storage full", mode="semantic") == ["disk quota exceeded"]
        state = json.loads(Path(config.data_dir, "vectors", "state.json").read_text())
        assert state["model"].startswith("poisoned-wordllama")
        client.create_unit("c", "MESSAGE", "poison pill")
        wait_until(lambda: client.status().journal.vector_seq is None,  # type: ignore[union-attr]
                   "semantic search to turn off")
        with pytest.raises(BadRequest, match="not available"):
            client.search("storage full", mode="semantic")
        wait_until(lambda: client.search("pill").total == 1, "keyword search to go on")
        client.ping()


def test_one_long_payload_among_short_ones_is_embedded_in_bounded_memory() -> None:
    """The model pads a call to its longest text: a 900 KB payload among 30 short notes
    once asked for 6.65 GiB. Texts are cut and grouped by length now."""
    import tracemalloc

    import numpy as np

    from engramd.embedding import load_embedder

    embedder = load_embedder()
    short = [f"small note {n}" for n in range(30)]
    tracemalloc.start()
    try:
        vectors = embedder.embed(["disk quota exceeded " * 45_000, *short])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 2**20, peak
    assert vectors.shape == (31, embedder.dim)
    assert np.allclose(vectors[1:], embedder.embed(short), atol=1e-6)  # order kept


def test_semantic_search_after_a_restart_answers_from_the_saved_approximate_index(
        env: dict[str, str]) -> None:
    # Four units or more: the approximate index answers (SPECS §3.7, search.exact_rows).
    env = {**env, "ENGRAM_SEARCH_SEMANTIC": "auto", "ENGRAM_SEARCH_EXACT_ROWS": "4"}
    vectors = Path(env["ENGRAM_DATA_DIR"], "vectors")
    daemon = DaemonProcess(start_engramd(env), env["ENGRAM_SOCKET"], env)
    try:
        with connect(daemon.socket) as client:
            write_corpus(client)
            wait_until(lambda: caught_up(client), "both indexes to catch up")
            first = client.search("storage full", mode="semantic", limit=5)
            assert first.hits and first.hits == \
                client.search("storage full", mode="semantic", limit=5, exact=True).hits
    finally:
        assert daemon.stop() == 0
    pointer = json.loads((vectors / "ann.json").read_text())  # saved as the process closed
    assert pointer["rows"] == len(CORPUS) and (vectors / pointer["file"]).exists()

    daemon = DaemonProcess(start_engramd(env), env["ENGRAM_SOCKET"], env)
    try:
        with connect(daemon.socket) as client:
            assert texts(client, "storage full", mode="semantic", limit=1) == \
                [MEANT["storage full"]]
            assert client.search("storage full", mode="semantic", limit=5).hits == first.hits
            assert texts(client, "lock timeout", mode="hybrid", limit=1) == \
                [MEANT["lock timeout"]]
            with pytest.raises(BadRequest, match="exact applies to semantic"):
                client.search("x", exact=True)
        said = engramd_log(env).read_text()
        assert f"approximate index of {len(CORPUS)} rows loaded" in said
    finally:
        assert daemon.stop() == 0


def test_the_approximate_index_in_engramds_own_thread_is_saved_and_loaded(
        env: dict[str, str]) -> None:
    config = make_config(env, **{"search.semantic": "auto", "search.indexer": "thread",
                                 "search.exact_rows": "4"})
    with start_threaded(config), connect(config) as client:
        write_corpus(client)
        wait_until(lambda: caught_up(client), "both indexes to catch up")
        first = client.search("lock timeout", mode="semantic", limit=3).hits
    pointer = json.loads(Path(config.data_dir, "vectors", "ann.json").read_text())
    assert pointer["rows"] == len(CORPUS)
    with start_threaded(config), connect(config) as client:
        assert client.search("lock timeout", mode="semantic", limit=3).hits == first
        assert texts(client, "lock timeout", mode="semantic", limit=1) == \
            [MEANT["lock timeout"]]
