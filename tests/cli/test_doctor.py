"""engram doctor: one line per check, a fix for each problem, exit 0 only when all is well."""

from __future__ import annotations

import json
import os
import re

import pytest

from engram_cli.cli.doctor import FILL_FAILURE_DAYS, FILL_WARNING_DAYS, Doctor
from engram_cli.client import Client
from engramd.config import DaemonConfig
from engramd.protocol import UnitDraft
from tests.conftest import ThreadedDaemon, make_config, run_cli, start_threaded, wait_until

pytestmark = pytest.mark.slow  # every test here runs processes


def findings(env: dict[str, str]) -> tuple[int, dict[str, dict[str, str]]]:
    result = run_cli(env, "doctor", "--json")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    return result.returncode, {row["check"]: row for row in rows}


def test_doctor_without_a_daemon_fails_and_says_how_to_fix_it(env: dict[str, str]) -> None:
    code, rows = findings(env)
    assert code == 1
    assert rows["daemon"]["status"] == "fail" and "engram daemon start" in rows["daemon"]["fix"]
    assert rows["journal"]["status"] == "skip"
    assert not os.path.exists(env["ENGRAM_SOCKET"])  # it never starts one


def test_doctor_is_happy_with_a_healthy_daemon_and_sees_log_errors(env: dict[str, str]) -> None:
    try:
        assert run_cli(env, "daemon", "start").returncode == 0
        code, rows = findings(env)
        assert code == 0, rows
        # Semantic search is off in the tests' environment: its check is skipped, not failed.
        assert rows.pop("vector index")["status"] == "skip"
        assert rows.pop("cluster")["status"] == "skip"  # one machine: no cluster to check
        # A daemon just started has not measured its growth for long enough.
        assert rows.pop("disk growth")["status"] == "skip"
        assert {row["status"] for row in rows.values()} == {"ok"}
        assert set(rows) == {"daemon", "version", "socket", "data dir", "disk", "journal",
                             "log tails", "log", "search index", "leases"}
        text = run_cli(env, "doctor")
        assert text.returncode == 0 and len(text.stdout.splitlines()) == 13
        log = os.path.join(env["ENGRAM_DATA_DIR"], "engramd.log")
        with open(log, "a") as file:  # as a failing daemon would have logged it
            file.write('ts=2026-11-23T20:00:00.000Z level=error pid=1 logger=engramd.commit '
                       'msg="journal writes stopped: injected"\n')
        code, rows = findings(env)
        assert code == 1
        assert rows["log"]["status"] == "warn" and "journal writes stopped" in rows["log"]["detail"]
        os.chmod(env["ENGRAM_DATA_DIR"], 0o755)
        code, rows = findings(env)
        assert rows["data dir"]["status"] == "warn" and "chmod 700" in rows["data dir"]["fix"]
    finally:
        os.chmod(env["ENGRAM_DATA_DIR"], 0o700)
        run_cli(env, "daemon", "stop")


def test_doctor_warns_of_a_lease_near_expiry(threaded_daemon: ThreadedDaemon,
                                             config: DaemonConfig) -> None:
    with Client(config.socket, autostart=False) as holder, \
            Client(config.socket, autostart=False) as client:
        doctor = Doctor(client, config.data_dir)
        assert doctor.daemon().status == "ok"
        assert doctor.leases().status == "ok"
        for _ in range(5):  # a busy machine may let one expire before the check
            holder.acquire_lock("deploy:prod", ttl=0.9)
            finding = doctor.leases()
            if finding.status == "warn":
                break
        assert finding.status == "warn" and "deploy:prod (" in finding.detail


def test_doctor_fails_when_the_journal_would_fill_the_disk_within_a_day(
        env: dict[str, str]) -> None:
    """A journal written as fast as it can: at that rate, any disk fills within hours."""
    config = make_config(env, **{"disk.sample_seconds": "0.05", "disk.growth_window": "60"})
    with start_threaded(config), Client(config.socket, autostart=False) as client:
        doctor = Doctor(client, config.data_dir)
        assert doctor.daemon().status == "ok"
        wait_until(lambda: "disk_growth_bytes_per_second" in client.stats().gauges,
                   "five measures of the journal's size")
        for _ in range(20):  # some 20 MiB of log in a second or so
            client.create_units([UnitDraft(context_id="big", type="REASONING",
                                           payload=bytes(50_000) + b"%d" % n)
                                 for n in range(20)])
        found = doctor.growth()
        gauges = client.stats().gauges
    free, rate = gauges["disk_free_bytes"], gauges["disk_growth_bytes_per_second"]
    assert found.status == "fail", f"{free} bytes free, growing {rate} a second"
    assert "grows" in found.detail and "lasts" in found.detail and "free under" in found.detail
    assert "retention" in found.fix and "bigger disk" in found.fix


@pytest.mark.parametrize(("days", "status", "lasts"), [
    (0.5, "fail", "12.0 hours"), (3, "warn", "3.0 days"), (30, "ok", "30.0 days")])
def test_doctor_judges_the_disk_by_the_days_it_lasts(
        threaded_daemon: ThreadedDaemon, config: DaemonConfig, days: float,
        status: str, lasts: str) -> None:
    assert FILL_FAILURE_DAYS < 3 < FILL_WARNING_DAYS < 30
    with Client(config.socket, autostart=False) as client:
        doctor = Doctor(client, config.data_dir)
        assert doctor.daemon().status == "ok"
        free = 100 * 2**30
        doctor._gauges = {"disk_free_bytes": free, "disk_growth_window_seconds": 3600,
                          "disk_growth_bytes_per_second": free / (days * 86_400)}
        found = doctor.growth()
    assert found.status == status
    assert f"the free space lasts {lasts}" in found.detail
    assert "100.0 GiB free" in found.detail and "over the last 60 min" in found.detail
    if status == "ok":
        assert found.fix == ""


def test_doctor_says_the_real_wait_for_the_growth_rate_and_that_semantic_search_is_off(
        env: dict[str, str]) -> None:
    config = make_config(env, **{"disk.sample_seconds": "600"})  # semantic off (conftest)
    with start_threaded(config), Client(config.socket, autostart=False) as client:
        doctor = Doctor(client, config.data_dir)
        assert doctor.daemon().status == "ok"
        growth, vectors = doctor.growth(), doctor.vectors()
    assert growth.status == "skip"
    # 5 measures 10 minutes apart, the first one taken at the start or about to be
    assert re.search(r"known in about (40|50) min", growth.detail), growth.detail
    assert "few minutes" not in growth.detail
    assert vectors.status == "skip" and "semantic search is off" in vectors.detail
    assert "pip install" not in vectors.fix
