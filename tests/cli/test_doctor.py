"""engram doctor: one line per check, a fix for each problem, exit 0 only when all is well."""

from __future__ import annotations

import json
import os

import pytest

from engram_cli.cli.doctor import Doctor
from engram_cli.client import Client
from engramd.config import DaemonConfig
from tests.conftest import ThreadedDaemon, run_cli

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
        assert {row["status"] for row in rows.values()} == {"ok"}
        assert set(rows) == {"daemon", "version", "socket", "data dir", "disk", "journal",
                             "log tails", "log", "search index", "leases"}
        text = run_cli(env, "doctor")
        assert text.returncode == 0 and len(text.stdout.splitlines()) == 12
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
