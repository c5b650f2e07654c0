"""engram stats: the daemon counts what it does, and the CLI shows it in three forms."""

from __future__ import annotations

import json
import re

import pytest

from engram_cli.client import Client
from engram_cli.client.errors import NotFound
from engram_cli.formats.prometheus import prometheus_text, quantile
from engramd.config import DaemonConfig
from engramd.protocol import DaemonStats, HistogramData, UnitCreated
from engramd.protocol.logline import at_least, format_line, parse_line
from tests.conftest import DaemonProcess, ThreadedDaemon, run_cli


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
