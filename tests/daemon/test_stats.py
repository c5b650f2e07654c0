"""engram stats: the daemon counts what it does, and the CLI shows it in three forms."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from engram_cli.client import Client
from engram_cli.client.errors import NotFound
from engram_cli.formats.prometheus import prometheus_text, quantile
from engramd.config import DaemonConfig
from engramd.protocol import DaemonStats, HistogramData, UnitCreated, UnitDraft
from engramd.protocol.logline import at_least, format_line, parse_line
from tests.conftest import (
    DaemonProcess,
    ThreadedDaemon,
    make_config,
    on_a_terminal,
    run_cli,
    start_threaded,
    wait_until,
)


def test_stats_count_requests_errors_latencies_and_fanout(threaded_daemon: ThreadedDaemon,
                                                           config: DaemonConfig) -> None:
    with Client(config.socket, autostart=False) as writer, \
            Client(config.socket, autostart=False) as watcher:
        subscription = watcher.subscribe(contexts=["s"], kinds=["unit.created"])
        for number in range(5):
            writer.create_unit("s", "MESSAGE", f"unit {number}")
        received = [item for _, item in zip(range(5), subscription, strict=False)]
        assert all(isinstance(event, UnitCreated) for event in received)
        writer.search("unit")
        with pytest.raises(NotFound):
            writer.release_lock("no-such-lock")
        stats = writer.stats()
    assert stats.counters['requests_total{op="unit.create"}'] == 5
    assert stats.counters['requests_total{op="search"}'] == 1
    assert stats.counters['errors_total{code="not_found"}'] == 1
    assert stats.counters["events_delivered_total"] >= 5
    assert stats.histograms["fsync_seconds"].count >= 1
    assert stats.histograms["fanout_seconds"].count >= 5
    assert stats.histograms['request_seconds{op="unit.create"}'].count == 5
    assert stats.gauges["units"] == 5 and stats.gauges["subscribers"] == 1
    assert stats.gauges["resident_memory_bytes"] > 10 * 2**20
    assert stats.gauges["index_lag_events"] >= 0 and stats.gauges["connections"] == 2


PROMETHEUS_LINE = re.compile(
    r'^(# TYPE engram_\w+ (counter|gauge|histogram)'
    r'|engram_\w+(\{(\w+="[^"]*",?)+\})? -?[0-9.e+-]+|.*le="\+Inf".*)$')


def test_cli_stats_in_text_json_and_prometheus(engramd: DaemonProcess) -> None:
    env = engramd.env
    assert run_cli(env, "unit", "create", "-c", "s", "-p", "x").returncode == 0
    as_json = json.loads(run_cli(env, "stats", "--json").stdout)
    assert as_json["counters"]['requests_total{op="unit.create"}'] == 1
    text = run_cli(env, "stats")
    assert text.returncode == 0 and "fsync_seconds" in text.stdout
    exposition = run_cli(env, "stats", "--prometheus")
    assert exposition.returncode == 0
    lines = exposition.stdout.splitlines()
    assert all(PROMETHEUS_LINE.match(line) for line in lines), lines
    assert 'engram_requests_total{op="unit.create"} 1' in lines
    assert any(line.startswith('engram_fsync_seconds_bucket{le="+Inf"} ') for line in lines)


def histogram(counts: list[int]) -> HistogramData:
    return HistogramData(bounds=[0.001, 0.01, 0.1], counts=counts, count=sum(counts),
                         sum=0.0)


def test_quantiles_interpolate_inside_buckets() -> None:
    assert quantile(histogram([0, 0, 0, 0]), 0.5) is None
    assert quantile(histogram([10, 0, 0, 0]), 0.5) == pytest.approx(0.0005)
    assert quantile(histogram([0, 10, 0, 0]), 0.99) == pytest.approx(0.001 + 0.009 * 0.99)
    assert quantile(histogram([0, 0, 0, 3]), 0.5) == 0.1  # beyond the last bound


def test_prometheus_histogram_buckets_are_cumulative() -> None:
    stats = DaemonStats(id=1, counters={'errors_total{code="x"}': 2}, gauges={"units": 3.0},
                        histograms={'request_seconds{op="ping"}': histogram([1, 2, 0, 1])})
    text = prometheus_text(stats)
    assert 'engram_errors_total{code="x"} 2' in text
    assert "engram_units 3" in text
    assert 'engram_request_seconds_bucket{op="ping",le="0.01"} 3' in text
    assert 'engram_request_seconds_bucket{op="ping",le="+Inf"} 4' in text
    assert 'engram_request_seconds_count{op="ping"} 4' in text


def test_log_lines_round_trip_and_filter_by_level() -> None:
    line = format_line([("level", "warning"), ("msg", 'a "quoted"\nline'), ("pid", "1")])
    assert "\n" not in line
    assert parse_line(line) == {"level": "warning", "msg": 'a "quoted"\nline', "pid": "1"}
    assert at_least(line, "info") and not at_least(line, "error")
    assert at_least("not logfmt at all", "error")


def part(stats: DaemonStats, name: str) -> float:
    return stats.gauges[f'disk_bytes{{part="{name}"}}']


def test_stats_say_what_each_part_of_the_journal_holds(engramd: DaemonProcess) -> None:
    data_dir = Path(engramd.env["ENGRAM_DATA_DIR"])
    with Client(engramd.socket, autostart=False) as client:
        client.create_units([UnitDraft(context_id="parts", type="REASONING",
                                                payload=b"a line of text %d" % n * 40)
                                      for n in range(200)])

        written = sum(segment.stat().st_size for segment in (data_dir / "wal").glob("*.wal"))
        # (A measure is at most a second old.)
        wait_until(lambda: part(client.stats(), "wal") >= written, "the log to be measured")
        stats = client.stats()
    gauges = stats.gauges
    assert part(stats, "store") > 0 and part(stats, "search") > 0
    assert part(stats, "vectors") == 0  # (semantic search is off in the tests)
    assert 'disk_bytes{part="archive"}' not in gauges  # none configured
    assert gauges["disk_free_bytes"] > 0
    assert gauges["store_keys"] >= 200 and gauges["store_memtable_bytes"] > 0
    assert 0 < gauges["store_block_cache_bytes"] <= gauges["store_block_cache_capacity_bytes"]
    table = run_cli(engramd.env, "stats").stdout.splitlines()
    rows = {line.split("\t")[0]: line.split("\t") for line in table
            if line.count("\t") == 3}
    assert rows["part"] == ["part", "bytes", "per_unit", "holds"]
    assert set(rows) >= {"wal", "store", "search", "vectors", "total", "free"}
    assert "segment(s)" in rows["wal"][3] and "keys" in rows["store"][3]
    assert int(rows["total"][1]) == sum(int(rows[name][1])
                                        for name in ("wal", "store", "search", "vectors"))
    assert int(rows["total"][2]) == round(int(rows["total"][1]) / 200)  # bytes per unit
    assert "200 units" in rows["total"][3]
    exposition = run_cli(engramd.env, "stats", "--prometheus").stdout
    assert 'engram_disk_bytes{part="store"} ' in exposition


def test_memory_bounds_are_the_configured_ones(env: dict[str, str]) -> None:
    """The store's cache and memtables, and the recent units kept, as configured."""
    config = make_config(env, **{"store.block_cache_bytes": str(8 * 2**20),
                                 "store.write_buffer_bytes": str(4 * 2**20),
                                 "store.write_buffers": "3", "cache.recent_units": "4",
                                 "cache.recent_contexts": "2"})
    with start_threaded(config), Client(config.socket, autostart=False) as client:
        for context in ("a", "b", "c"):
            client.create_units([
                UnitDraft(context_id=context, type="REASONING", payload=b"%s %d" % (
                    context.encode(), n)) for n in range(6)])
        for context in ("a", "b", "c"):
            newest = client.list_units(context, limit=3).units
            assert [unit.payload for unit in newest] == [b"%s %d" % (context.encode(), n)
                                                         for n in (3, 4, 5)]
        gauges = client.stats().gauges
        assert gauges["recent_cache_contexts"] == 2, "the least recently read went"
        assert gauges["recent_cache_units"] == 2 * 4
        assert gauges["store_block_cache_capacity_bytes"] == 8 * 2**20
        # More than the cache keeps is read from the store, whole.
        assert len(client.list_units("a", limit=5).units) == 5
    [options] = sorted(Path(config.data_dir, "store").glob("OPTIONS-*"))[-1:]
    written = options.read_text()
    assert "write_buffer_size=4194304" in written
    assert "max_write_buffer_number=3" in written
    assert "cache_index_and_filter_blocks=true" in written
    # Other bounds at the next start apply to the store as it is (not its first ones).
    again = make_config(env, **{"store.block_cache_bytes": str(16 * 2**20),
                                "store.write_buffer_bytes": str(6 * 2**20)})
    with start_threaded(again), Client(again.socket, autostart=False) as client:
        assert client.stats().gauges["store_block_cache_capacity_bytes"] == 16 * 2**20
    [options] = sorted(Path(config.data_dir, "store").glob("OPTIONS-*"))[-1:]
    assert "write_buffer_size=6291456" in options.read_text()


def test_the_recent_units_stay_within_their_byte_budget(env: dict[str, str]) -> None:
    config = make_config(env, **{"cache.recent_bytes": "12000"})
    with start_threaded(config), Client(config.socket, autostart=False) as client:
        for context in ("a", "b", "c"):  # some 5 KB of stored units each
            client.create_units([UnitDraft(context_id=context, type="REASONING",
                                           payload=b"%d" % n * 500) for n in range(8)])
        for context in ("a", "b", "c"):
            assert [unit.payload for unit in client.list_units(context, limit=5).units] == \
                [b"%d" % n * 500 for n in range(3, 8)]
        gauges = client.stats().gauges
        assert gauges["recent_cache_contexts"] == 2, "a, read least lately, went"
        assert 8_000 < gauges["recent_cache_bytes"] <= 12_000
        client.create_unit("c", "REASONING", "one more")  # followed: c is kept
        assert client.list_units("c", limit=2).units[-1].payload == b"one more"
        gauges = client.stats().gauges
        assert gauges["recent_cache_contexts"] == 2
        assert gauges["recent_cache_bytes"] <= 12_000


def test_rocksdbs_own_info_logs_do_not_pile_up_across_starts(env: dict[str, str]) -> None:
    config = make_config(env)
    for _ in range(8):
        start_threaded(config).stop()
    store = Path(config.data_dir, "store")
    assert len(list(store.glob("LOG.old.*"))) <= 4, "the LOG and four before it"
    assert "max_log_file_size=4194304" in sorted(store.glob("OPTIONS-*"))[-1].read_text()


def test_stats_on_a_terminal_show_disk_bytes_as_sizes_and_no_archive_per_unit(
        env: dict[str, str]) -> None:
    folder = Path(env["XDG_CONFIG_HOME"]) / "engram"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text('[[retention.policy]]\ncontext = "ci/*"\n'
                                        'max_units = 10\n')
    config = make_config(env)
    with start_threaded(config), Client(config.socket, autostart=False) as client:
        client.create_units([UnitDraft(context_id="ci/x", type="REASONING",
                                       payload=b"a line of text %d" % n * 40)
                             for n in range(100)])
        assert client.run_retention().units == 90
        wait_until(lambda: client.stats().gauges.get('disk_bytes{part="archive"}', 0) > 0,
                   "the archive to be measured")
        shown = on_a_terminal(env, "stats")
        piped = run_cli(env, "stats").stdout.splitlines()
    gauge_lines = [line for line in shown.splitlines() if 'disk_bytes{part="store"}' in line]
    assert gauge_lines and all(re.search(r"\d (B|KiB|MiB)\b", line) for line in gauge_lines), \
        shown
    assert "e+" not in shown
    rows = {line.split("\t")[0]: line.split("\t") for line in piped if line.count("\t") == 3}
    assert int(rows["archive"][1]) > 0 and rows["archive"][2] == "-", rows["archive"]
    assert int(rows["store"][2]) > 0
