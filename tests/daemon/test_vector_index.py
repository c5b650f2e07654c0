"""The vector index's approximate graph: its recall against exact search on a fixed
seed, its snapshot (saved, loaded, damaged), removals, filters, and the int8 rows.

Vectors come from a deterministic stand-in embedder that looks each text up in a table
of clustered vectors (the index's own logic is under test, not a model's); the real
model's recall is measured when the engram-journal[semantic] extra is installed."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

np = pytest.importorskip("numpy", reason="the engram-journal[semantic] extra is not installed")
pytest.importorskip("usearch", reason="the engram-journal[semantic] extra is not installed")

from engramd import vectors as vectors_module  # noqa: E402
from engramd.vectors import VectorIndex, quantize  # noqa: E402

DIM = 64
UNITS = 12_000
QUERIES = 200
EXACT_ROWS = 2_000


class TableEmbedder:
    """Each text's vector looked up in a table: ``u<n>`` a unit's, ``q<n>`` a query's."""

    identity = "table-64"
    dim = DIM

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.table[text] for text in texts]).astype(np.float32)


def clustered(rng: np.random.Generator, centers: np.ndarray, count: int) -> np.ndarray:
    """Unit vectors around random *centers*: neighbours that are close, but not alike."""
    vectors = centers[rng.integers(0, len(centers), count)] \
        + 0.5 * rng.standard_normal((count, centers.shape[1]))
    normed: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return normed


@pytest.fixture(scope="module")
def embedder() -> TableEmbedder:
    rng = np.random.default_rng(40)
    centers = rng.standard_normal((300, DIM))
    units, queries = clustered(rng, centers, UNITS), clustered(rng, centers, QUERIES)
    table = {f"u{seq}": units[seq - 1] for seq in range(1, UNITS + 1)}
    table.update({f"q{n}": queries[n] for n in range(QUERIES)})
    return TableEmbedder(table)


def fill(index: VectorIndex, first: int, last: int, batch: int = 1_000) -> None:
    """Units *first*..*last* added in batches, the graph then built to the end."""
    for start in range(first, last + 1, batch):
        seqs = list(range(start, min(last, start + batch - 1) + 1))
        index.add(seqs, [f"u{seq}" for seq in seqs], seqs[-1])
    while index.catch_up():
        pass


@pytest.fixture
def built(tmp_path: Path, embedder: TableEmbedder) -> Iterator[VectorIndex]:
    index = VectorIndex(str(tmp_path / "vectors"), embedder, exact_rows=EXACT_ROWS)
    fill(index, 1, UNITS)
    yield index


def recall(index: VectorIndex, **options: object) -> float:
    found = 0
    for n in range(QUERIES):
        approximate = index.nearest(f"q{n}", limit=10, **options)[1]  # type: ignore[arg-type]
        exact = index.nearest(f"q{n}", limit=10, exact=True, **options)[1]  # type: ignore[arg-type]
        found += len({seq for seq, _ in approximate} & {seq for seq, _ in exact})
    return found / (QUERIES * 10)


def test_the_graph_finds_what_exact_search_finds(built: VectorIndex) -> None:
    assert built.graph is not None and len(built.graph) == UNITS
    assert recall(built) >= 0.95, recall(built)
    # A filter that allows a third of the units: the graph asked for more, then filtered.
    allowed = set(range(1, UNITS + 1, 3))
    assert recall(built, allowed=allowed) >= 0.95
    hits = built.nearest("q0", limit=10, allowed=allowed)[1]
    assert len(hits) == 10 and all(seq in allowed for seq, _ in hits)
    # One that allows few: exact over just those.
    few = set(range(5, UNITS + 1, 997))
    assert built.nearest("q0", limit=50, allowed=few) == \
        built.nearest("q0", limit=50, allowed=few, exact=True)
    # min_similarity: what passes is what exact search finds, best first.
    floor = built.nearest("q1", limit=30, exact=True)[1][-1][1]
    close = built.nearest("q1", limit=30, min_similarity=floor)[1]
    assert all(similarity >= floor for _, similarity in close)
    assert close[:5] == built.nearest("q1", limit=30, exact=True)[1][:5]


def test_small_indexes_have_no_graph_and_are_exact(tmp_path: Path,
                                                   embedder: TableEmbedder) -> None:
    index = VectorIndex(str(tmp_path / "vectors"), embedder, exact_rows=EXACT_ROWS)
    fill(index, 1, EXACT_ROWS - 1)
    assert index.graph is None
    assert not [name for name in os.listdir(index.directory) if name.startswith("ann")]
    assert index.nearest("q3", limit=10) == index.nearest("q3", limit=10, exact=True)
    fill(index, EXACT_ROWS, EXACT_ROWS + 10)
    assert index.graph is not None and index.graph.rows == index.rows


def test_the_snapshot_is_loaded_and_the_rows_past_it_added(
        tmp_path: Path, embedder: TableEmbedder, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = str(tmp_path / "vectors")
    index = VectorIndex(directory, embedder, exact_rows=EXACT_ROWS)
    fill(index, 1, 6_000)
    index.close()  # saved on close
    pointer = json.loads(Path(directory, "ann.json").read_text())
    assert pointer["rows"] == 6_000 and pointer["library"].startswith("usearch ")

    index = VectorIndex(directory, embedder, exact_rows=EXACT_ROWS)
    assert index.graph is not None and index.graph.rows == 6_000  # loaded, not rebuilt
    monkeypatch.setattr(vectors_module, "SAVE_EVERY_ROWS", 3_000)
    fill(index, 6_001, 10_000)  # saved when 3,000 rows past the snapshot
    assert json.loads(Path(directory, "ann.json").read_text())["rows"] >= 9_000
    assert [name for name in os.listdir(directory) if name.endswith(".usearch")] == \
        [json.loads(Path(directory, "ann.json").read_text())["file"]]  # the old one gone
    # A crash after more rows (no close): they are added again from the rows on open.
    fill(index, 10_001, 11_000)
    del index
    index = VectorIndex(directory, embedder, exact_rows=EXACT_ROWS)
    assert index.graph is not None and index.graph.rows < 11_000
    before = index.nearest("q7", limit=10)
    while index.catch_up():
        pass
    assert index.graph.rows == 11_000 and len(index.graph) == 11_000
    assert index.nearest("q7", limit=10) == before  # rows not in the graph were scored exactly


@pytest.mark.parametrize("damage", ["truncated", "garbage", "flipped", "missing", "pointer"])
def test_a_damaged_snapshot_is_built_again(tmp_path: Path, embedder: TableEmbedder,
                                           damage: str, caplog: pytest.LogCaptureFixture) -> None:
    directory = Path(tmp_path / "vectors")
    index = VectorIndex(str(directory), embedder, exact_rows=EXACT_ROWS)
    fill(index, 1, 4_000)
    index.close()
    expected = index.nearest("q9", limit=10, exact=True)
    snapshot = directory / json.loads((directory / "ann.json").read_text())["file"]
    if damage == "truncated":
        os.truncate(snapshot, snapshot.stat().st_size // 2)
    elif damage == "garbage":
        snapshot.write_bytes(os.urandom(snapshot.stat().st_size))
    elif damage == "flipped":  # the middle only, the size kept: it loaded, then crashed
        data = bytearray(snapshot.read_bytes())
        for offset in range(len(data) // 10, len(data) * 9 // 10, len(data) // 40):
            data[offset] ^= 0x40
        snapshot.write_bytes(bytes(data))
    elif damage == "missing":
        snapshot.unlink()
    else:
        (directory / "ann.json").write_text("{not json")
    index = VectorIndex(str(directory), embedder, exact_rows=EXACT_ROWS)
    assert index.graph is not None and index.graph.rows == 0  # opened, to be built again
    assert index.nearest("q9", limit=10) == expected  # exact meanwhile
    caplog.set_level("INFO", "engramd.indexer")
    while index.catch_up():
        pass
    assert len(index.graph) == 4_000
    assert "the approximate index has every row (4000)" in caplog.text
    assert {seq for seq, _ in index.nearest("q9", limit=10)[1]} & \
        {seq for seq, _ in expected[1]}


def test_removed_units_are_gone_from_results_files_and_memory(
        tmp_path: Path, embedder: TableEmbedder) -> None:
    directory = tmp_path / "vectors"
    index = VectorIndex(str(directory), embedder, exact_rows=EXACT_ROWS)
    fill(index, 1, 5_000)
    index.close()  # a snapshot from before the removal
    best = [seq for seq, _ in index.nearest("q4", limit=5)[1]]
    gone = [*best, 3, 4_999, 123_456]  # and a seq it never had
    assert index.remove(gone) == 7
    assert index.remove(gone) == 0  # idempotent
    assert index.live == 4_993 and index.graph is not None and len(index.graph) == 4_993
    for exact in (False, True):
        hits = index.nearest("q4", limit=50, exact=exact)[1]
        assert not {seq for seq, _ in hits} & set(gone)
    rows = np.fromfile(directory / "vectors.i8", dtype=np.int8).reshape(-1, DIM)
    seqs = np.fromfile(directory / "seqs.i64", dtype=np.int64)
    assert not rows[np.isin(seqs, gone)].any()  # zeroed on disk
    assert rows[~np.isin(seqs, gone)].any(axis=1).all()

    # After a restart, with the snapshot of before the removal loaded: still gone.
    index = VectorIndex(str(directory), embedder, exact_rows=EXACT_ROWS)
    assert index.graph is not None and index.graph.rows == 5_000 and len(index.graph) == 4_993
    assert not {seq for seq, _ in index.nearest("q4", limit=50)[1]} & set(gone)
    assert index.nearest("q4", limit=50, allowed=set(best))[1] == []
    assert index.remove(best) == 0


def test_int8_rows_keep_the_cosine_and_earlier_float_rows_are_converted(
        tmp_path: Path, embedder: TableEmbedder) -> None:
    floats = embedder.embed([f"u{seq}" for seq in range(1, 301)])
    query = embedder.embed(["q0"])[0]
    rows = quantize(floats).astype(np.float32)
    cosines = rows @ query / np.linalg.norm(rows, axis=1)
    assert np.abs(cosines - floats @ query).max() < 0.01

    directory = tmp_path / "vectors"
    directory.mkdir()
    floats.tofile(directory / "vectors.f32")
    np.arange(1, 301, dtype=np.int64).tofile(directory / "seqs.i64")
    (directory / "state.json").write_text(json.dumps(
        {"model": embedder.identity, "dim": DIM, "rows": 300, "indexed_seq": 300}))
    index = VectorIndex(str(directory), embedder, exact_rows=EXACT_ROWS)
    assert index.rows == 300 and index.indexed_seq == 300
    assert not (directory / "vectors.f32").exists()
    assert (directory / "vectors.i8").stat().st_size == 300 * DIM
    best = int(np.argmax(floats @ query)) + 1
    assert index.nearest("q0", limit=1)[1][0][0] == best


def test_the_real_models_recall_on_the_journals_kind_of_text(tmp_path: Path) -> None:
    pytest.importorskip("wordllama", reason="the engram-journal[semantic] extra is not installed")
    from engramd.embedding import load_embedder

    rng = np.random.default_rng(7)
    words = ["disk", "quota", "lease", "deploy", "parser", "unicode", "login", "memory",
             "network", "upload", "tests", "readme", "release", "branch", "build", "cache",
             "timeout", "retry", "socket", "frame", "index", "search", "vector", "token",
             "agent", "context", "message", "task", "error", "warning", "crash", "restart"]
    texts = [" ".join(rng.choice(words, 8)) for _ in range(6_000)]
    queries = [" ".join(rng.choice(words, 3)) for _ in range(100)]
    index = VectorIndex(str(tmp_path / "vectors"), load_embedder(), exact_rows=EXACT_ROWS)
    for start in range(0, len(texts), 1_000):
        seqs = list(range(start + 1, start + 1_001))
        index.add(seqs, texts[start:start + 1_000], seqs[-1])
    while index.catch_up():
        pass
    found = 0
    for query in queries:
        approximate = {seq for seq, _ in index.nearest(query, limit=10)[1]}
        found += len(approximate & {seq for seq, _ in index.nearest(query, limit=10,
                                                                    exact=True)[1]})
    assert found / (len(queries) * 10) >= 0.95, found / (len(queries) * 10)


@pytest.mark.parametrize("copies", [20, 60])
def test_exact_search_of_a_large_index_keeps_ties_newest_first(
        built: VectorIndex, embedder: TableEmbedder, copies: int) -> None:
    # Twenty copies are all among what usearch's exact search fetches; sixty reach past
    # it, and every row is then scored with numpy: either way the newest come first.
    embedder.table["same"] = embedder.table["q5"]
    seqs = list(range(UNITS + 1, UNITS + copies + 1))
    built.add(seqs, ["same"] * copies, seqs[-1])
    total, hits = built.nearest("same", limit=5, exact=True)
    assert total == UNITS + copies
    assert [seq for seq, _ in hits] == seqs[::-1][:5]
    # And what it finds is what scoring every row finds.
    query = embedder.embed(["q6"])[0]
    rows = np.fromfile(Path(built.directory, "vectors.i8"), dtype=np.int8).reshape(-1, DIM)
    rows = rows.astype(np.float32)
    scores = rows @ query / np.linalg.norm(rows, axis=1)
    expected = [int(row) + 1 for row in np.argsort(-scores, kind="stable")[:10]]
    assert [seq for seq, _ in built.nearest("q6", limit=10, exact=True)[1]] == expected
