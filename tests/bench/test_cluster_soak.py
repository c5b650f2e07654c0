"""``engram bench --soak DURATION --cluster``: its checks, and a short soak with NATS nodes
killed under it (marked ``cluster`` and ``slow``)."""

from __future__ import annotations

import json

import pytest

from engram_cli.bench import clustersoak
from engram_cli.bench.clustersoak import Section


def test_overlapping_sections_and_tokens_that_do_not_rise_are_counted() -> None:
    sections = [Section("a", 10, 1.0, 2.0), Section("b", 12, 2.0, 3.0),
                Section("a", 11, 2.5, 4.0), Section("b", 13, 5.0, None),
                Section("a", 14, 9.0, 9.5)]
    # b@2.0 starts as a@1.0 ends (not an overlap); a@2.5 overlaps it and its token 11 is
    # below 12; a section without an end overlaps whatever starts after it.
    assert clustersoak._judge(sections) == (2, 1)
    assert clustersoak._judge(sections[:2]) == (0, 0)


def test_a_task_done_twice_in_the_journal_is_counted() -> None:
    def status(task: str, state: str) -> bytes:
        return json.dumps({"type": "TASK_STATUS", "meta": {"task": task, "state": state}}
                          ).encode()

    export = b"\n".join([status("t1", "claimed"), status("t1", "done"), status("t2", "done"),
                         status("t1", "done"), b'{"type": "MESSAGE", "meta": {}}'])
    assert clustersoak._done_twice(export) == 1


@pytest.fixture(scope="module")
def soaked() -> clustersoak.ClusterSoakReport:
    """One short soak (24 s, a node killed every 6 s, the quorum lost for 4 s), shared by
    the tests below."""
    pytest.importorskip("nats", reason="cluster mode needs the engram-journal[cluster] extra")
    return clustersoak.run_cluster_soak(24, lambda _: None, chaos_every=6, quorum_seconds=4)


@pytest.mark.cluster
@pytest.mark.slow
def test_a_short_soak_with_nodes_killed_loses_nothing_and_never_overlaps(
        soaked: clustersoak.ClusterSoakReport) -> None:
    report = soaked
    assert len(report.outages) >= 2, report.outages
    assert any(len(outage.nodes) == 2 for outage in report.outages), report.outages
    assert report.writes_acknowledged > 0
    assert report.missing == {"a": 0, "b": 0}
    assert report.converged
    assert report.exports_identical, report.export_sha256
    assert report.lock_sections > 0
    assert (report.overlaps, report.token_not_rising, report.lock_sections_unended) == (0, 0, 0)
    assert report.tasks_done > 0
    assert report.watch_short == 0
    assert all(machine.running for machine in report.machines), report.machines


@pytest.mark.cluster
@pytest.mark.slow
def test_a_short_soak_does_no_task_twice_and_every_watcher_sees_every_write(
        soaked: clustersoak.ClusterSoakReport) -> None:
    report = soaked
    assert report.tasks_done_twice == {}
    assert (report.tasks_done_twice_acked, report.tasks_done_twice_journal) == (0, 0)
    assert (report.watch_gaps, report.watch_duplicates) == (0, 0), report.watch_gap_details
    assert report.ok
