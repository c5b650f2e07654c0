"""``engram bench``: rows beside their floors, the daemon's CPU per operation, --compare."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engram_cli.bench import harness, rows
from engram_cli.bench.harness import BenchResult
from engram_cli.client.errors import EngramError
from tests.conftest import connect, run_cli, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def row(name: str, p50: float, **fields: object) -> BenchResult:
    return BenchResult(name=name, ops=10, p50_ms=p50, p99_ms=fields.pop("p99", p50),
                       max_ms=p50, throughput=fields.pop("throughput", 1.0),
                       daemon_cpu_ms=fields.pop("cpu", None))  # type: ignore[arg-type]


def test_targets_bring_their_floors_transitively_in_catalogue_order() -> None:
    assert rows.with_floors(["stream.fanout10"]) == [
        "floor.fdatasync", "floor.durable", "write.single", "stream.fanout10"]
    assert rows.with_floors(["cli.ping", "ping"]) == ["ping", "cli.ping", "floor.python",
                                                      "floor.import"]


def test_a_row_is_judged_against_the_floor_of_the_same_run() -> None:
    floor = row("floor.fdatasync", 0.10)
    design = row("floor.durable", 0.20, cpu=0.05)
    fast = row("write.single", 0.24, p99=0.9, cpu=0.1)
    slow = row("write.single", 0.26, p99=0.9, cpu=0.1)
    hungry = row("write.single", 0.20, p99=0.9, cpu=0.3)
    assert [r.met for r in rows.judged([floor, design, fast])] == [None, None, True]
    judged = rows.judged([floor, design, slow])[2]
    assert judged.met is False and "0.250 (floor.fdatasync 0.100 + 0.15)" in judged.target
    assert "this design's floor: floor.durable p50 0.200, cpu 0.050" in judged.target
    assert rows.judged([floor, design, hungry])[2].met is False
    # Without its floors a row has no target rather than a made-up one.
    assert rows.judged([fast])[0].met is None and rows.judged([fast])[0].target == ""
    assert rows.judged([floor, fast])[1].target == ""


def test_cpu_seconds_reads_proc() -> None:
    spent = harness.cpu_seconds(os.getpid())
    assert spent is not None and spent > 0
    assert harness.cpu_seconds(2**22 + 1) is None  # beyond pid_max: no such process


def test_bench_reports_the_daemons_cpu_and_the_target_beside_its_floor(
        env: dict[str, str]) -> None:
    result = run_cli(env, "bench", "--only", "write.single", "--scale", "0.02", "--json",
                     timeout=120)
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert list(rows) == ["floor.fdatasync", "floor.durable", "write.single"]
    write = rows["write.single"]
    assert write["ops"] == 60 and write["daemon_cpu_ms"] > 0
    floor = rows["floor.fdatasync"]["p50_ms"]
    assert f"floor.fdatasync {floor:.3f}" in write["target"]
    design = rows["floor.durable"]
    assert design["ops"] == 60 and design["daemon_cpu_ms"] is not None
    assert f"this design's floor: floor.durable p50 {design['p50_ms']:.3f}" in write["target"]
    assert write["met"] in (True, False)


def test_a_bench_under_a_long_tmpdir_puts_only_its_socket_elsewhere(
        env: dict[str, str], tmp_path: Path) -> None:
    """A TMPDIR deeper than a socket path may be (107 bytes) stopped the bench at once."""
    temporary = tmp_path / ("t" * 100)
    temporary.mkdir()
    result = run_cli({**env, "TMPDIR": str(temporary)}, "bench", "--only", "write.single",
                     "--scale", "0.02", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "write.single" in result.stdout
    assert not list(temporary.iterdir()), "its scratch dir is left"


def test_the_design_floors_run_a_server_of_engramds_shape(env: dict[str, str]) -> None:
    result = run_cli(env, "bench", "--only", "floor.roundtrip", "--only",
                     "floor.roundtrip.8procs", "--only", "floor.handoff.thread", "--only",
                     "floor.handoff.process", "--scale", "0.01", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert rows["floor.roundtrip"]["ops"] == 50
    assert rows["floor.roundtrip.8procs"]["ops"] == 160  # 8 clients, 20 requests each
    assert rows["floor.handoff.thread"]["ops"] == rows["floor.handoff.process"]["ops"] == 50
    assert all(r["daemon_cpu_ms"] is not None and r["p50_ms"] > 0 for r in rows.values())


@pytest.mark.skipif(shutil.which("git") is None
                    or not os.path.isdir(os.path.join(ROOT, ".git")),
                    reason="--compare needs git and a checkout")
def test_compare_runs_both_sides_and_prints_ratios(env: dict[str, str]) -> None:
    worktrees_before = worktrees()
    result = run_cli(env, "bench", "--compare", "HEAD", "--rounds", "2", "--only", "ping",
                     "--scale", "0.01", "--json", timeout=180)
    assert result.stderr.count("bench --compare: round") == 4  # the sides took turns
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    pair = json.loads(line)
    (label,) = set(pair) - {"name", "this tree"}
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert head.startswith(label)
    assert pair["name"] == "ping"
    assert pair[label]["ops"] == pair["this tree"]["ops"] == 50
    assert worktrees() == worktrees_before  # its worktree is gone again


def worktrees() -> str:
    return subprocess.run(["git", "-C", ROOT, "worktree", "list"], capture_output=True,
                          text=True, check=True).stdout


def test_compare_takes_the_median_of_each_figure_over_the_rounds() -> None:
    from engram_cli.bench.compare import median_of

    rounds = [{"w": row("w", p50, cpu=cpu, throughput=t)}
              for p50, cpu, t in ((1.0, 0.3, 10.0), (9.0, None, 30.0), (2.0, 0.1, 20.0))]
    merged = median_of(rounds)["w"]
    assert (merged.p50_ms, merged.throughput, merged.daemon_cpu_ms) == (2.0, 20.0, 0.2)


def test_compare_refuses_what_is_not_a_commit(env: dict[str, str]) -> None:
    result = run_cli(env, "bench", "--compare", "no-such-ref-anywhere", "--only", "ping")
    assert result.returncode == 2
    assert "no-such-ref-anywhere is not a commit" in result.stderr


def test_the_agent_rows_run(env: dict[str, str]) -> None:
    result = run_cli(env, "bench", "--only", "inbox", "--only", "inbox.wake", "--only",
                     "task.claim.8procs", "--scale", "0.05", "--json", timeout=180)
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert rows["inbox"]["ops"] == 49 and rows["inbox.wake"]["ops"] == 15
    assert rows["task.claim.8procs"]["ops"] == 40  # 8 workers, 5 claims each
    assert "claims/s" in rows["task.claim.8procs"]["note"]


def test_the_deep_lease_row_runs_beside_the_lock_cycle(env: dict[str, str]) -> None:
    result = run_cli(env, "bench", "--only", "lock.deep8", "--scale", "0.02", "--json",
                     timeout=180)
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert rows["lock.deep8"]["ops"] == 40 and "lock.cycle" in rows  # its floor runs too
    assert "lock.cycle" in rows["lock.deep8"]["target"]


def test_the_gateway_and_semantic_rows_run(env: dict[str, str]) -> None:
    pytest.importorskip("hypercorn")
    pytest.importorskip("wordllama")
    result = run_cli(env, "bench", "--only", "http.write", "--only", "sse.fanout10",
                     "--only", "http.identities300", "--only", "vector.backfill",
                     "--only", "search.hybrid", "--scale", "0.01", "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert rows["http.write"]["ops"] == 30 and "(write.single" in rows["http.write"]["target"]
    assert rows["sse.fanout10"]["ops"] == 200  # 20 writes, 10 SSE clients
    assert rows["http.identities300"]["ops"] == 30
    assert "gateway cpu ms/req" in rows["http.identities300"]["note"]
    assert rows["vector.backfill"]["ops"] == 1000 and "units/s" in rows["vector.backfill"]["note"]
    assert rows["search.hybrid"]["ops"] == 5 and "RSS" in rows["search.hybrid"]["note"]
    # 1,000 units: exact search both ways, so all of it found.
    assert "semantic recall@10 1.000 against exact" in rows["search.hybrid"]["note"]


def test_the_console_row_runs_in_a_real_browser(env: dict[str, str]) -> None:
    pytest.importorskip("hypercorn")
    pytest.importorskip("playwright.sync_api", reason="playwright is missing")
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("no chromium here (apt-get install chromium)")
    result = run_cli(env, "bench", "--only", "console.feed10", "--scale", "0.02", "--json",
                     timeout=300)
    assert result.returncode == 0, result.stderr
    (row,) = map(json.loads, result.stdout.splitlines())
    assert row["name"] == "console.feed10" and row["ops"] == 60  # 6 writes, 10 consoles
    assert "in all 10: p50" in row["note"]


def test_the_scale_fill_is_varied_linked_and_deterministic() -> None:
    from engram_cli.bench import scale

    texts = [scale.text(n) for n in range(5_000)]
    assert texts == [scale.text(n) for n in range(5_000)]
    assert len(set(texts)) == len(texts)  # no two units alike, so recall is well defined
    assert {scale.context_of(n) for n in range(0, 100, 10)} == {scale.BIG_CONTEXTS[0]}
    assert len({scale.context_of(n) for n in range(5_000)}) > 1_000
    assert scale.stages(10_000_000) == [1_000_000, 10_000_000]
    assert scale.stages(20_000) == [2_000, 20_000]
    assert [scale.label(n) for n in (1_000_000, 2_000, 1_234)] == ["1M", "2k", "1234"]
    filler = scale.Filler(harness.BenchTarget(socket_path="", env={}, scale=1.0))
    filler.ids.extend(["a", "b"])
    filler.written = 102
    assert (filler.id_of(100), filler.id_of(101), filler.id_of(99),
            filler.id_of(102)) == ("a", "b", None, None)


def test_the_scale_rows_run_at_two_sizes_and_judge_the_second(env: dict[str, str]) -> None:
    result = run_cli(env, "bench", "--units", "3k", "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    rows_ = {line["name"]: line for line in lines if "name" in line}
    parts = [line for line in lines if "units" in line]
    for size in ("300", "3k"):
        assert {f"scale.{name}@{size}" for name in (
            "fill", "write.single", "list.last100", "search.words", "search.phrase",
            "search.filtered", "trace", "restart.clean", "restart.crash")} <= set(rows_)
    assert rows_["scale.search.words@3k"]["target"].startswith("p99 <= 2 x @300 p99")
    assert rows_["scale.restart.crash@3k"]["met"] in (True, False)
    assert "log entries in" in rows_["scale.restart.crash@3k"]["note"]
    assert rows_["scale.fill@3k"]["ops"] > 2_000
    assert [part["units"] for part in parts] == [300, 3_000]
    assert all(part["store"] > 0 and part["wal"] > 0 and part["rss_engramd_mib"] > 0
               for part in parts)
    assert run_cli(env, "bench", "--units", "12").returncode == 2


def _writing(socket_path: str) -> bool:
    try:
        with connect(socket_path) as client:
            journal = client.status().journal
    except EngramError:
        return False
    return journal is not None and journal.units > 0


@pytest.mark.parametrize("when", ["starting", "writing"])
def test_a_bench_stopped_by_sigterm_stops_its_daemon(env: dict[str, str], scratch: str,
                                                      when: str) -> None:
    temporary = Path(scratch) / "t"  # the bench's own temporary dir goes in here
    temporary.mkdir()
    bench = subprocess.Popen([sys.executable, "-m", "engram_cli", "bench", "--units", "1M"],
                             env={**env, "TMPDIR": str(temporary)}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    locks = str(temporary / "engram-bench-*" / "data" / "engramd.lock")
    try:
        def started() -> bool:
            assert bench.poll() is None, bench.stderr.read() if bench.stderr else ""
            return bool(glob.glob(locks))

        wait_until(started, "the bench's daemon", timeout=120)
        lock = Path(glob.glob(locks)[0])
        wait_until(lambda: lock.read_text().split()[:1] != [], "its pid in the lock")
        pid = int(lock.read_text().split()[0])
        if when == "writing":
            socket_path = str(lock.parent.parent / "engramd.sock")
            wait_until(lambda: _writing(socket_path), "the fill", timeout=120)

        bench.send_signal(signal.SIGTERM)

        assert bench.wait(timeout=60) == 130, bench.stderr.read() if bench.stderr else ""
    finally:
        if bench.poll() is None:
            bench.kill()
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), "the daemon to stop")
    assert not glob.glob(str(temporary / "engram-bench-*")), "its scratch dir is left"
