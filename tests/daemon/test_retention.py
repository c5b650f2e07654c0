"""Retention through the real daemon: policies from the config file, `engram gc`, the
archive and its import, what stays, a removal replayed after kill -9, and age-based
policies on trio's virtual clock (SPECS §3.4 *Retention*)."""

from __future__ import annotations

import errno
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from engram_cli.client import Client
from engram_cli.client.asynchronous import open_client
from engramd.integrity import log_first_seq
from engramd.main import run_daemon
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

DAY = 86400.0


def write_config(env: dict[str, str], text: str) -> None:
    folder = Path(env["XDG_CONFIG_HOME"]) / "engram"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(text)


def indexed(engram: Client) -> bool:
    journal = engram.status().journal
    assert journal is not None
    return journal.indexed_seq == journal.last_seq


def payloads(engram: Client, context_id: str) -> list[bytes]:
    return [unit.payload for unit in engram.list_units(context_id, limit=1000).units]


def gc(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = run_cli(env, "gc", "--json", *args)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.fixture
def counted(env: dict[str, str]) -> DaemonProcess:
    """engramd keeping the newest 3 units of each ``ci/`` context."""
    write_config(env, '[[retention.policy]]\ncontext = "ci/*"\nmax_units = 3\n')
    handle = DaemonProcess(start_engramd(env), env["ENGRAM_SOCKET"], env)
    yield handle  # type: ignore[misc]
    handle.stop()


def test_a_count_policy_archives_the_oldest_then_removes_them_and_import_brings_them_back(
        counted: DaemonProcess, env: dict[str, str]) -> None:
    with connect(counted.socket) as engram:
        units = [engram.create_unit("ci/build", "REASONING", f"zebra step {n}")
                 for n in range(5)]
        kept_elsewhere = engram.create_unit("notes", "REASONING", "zebra outside any policy")
        # A kept unit that points at one retention takes: the edge stays on its side.
        pointer = engram.create_unit("ci/build", "REASONING", "zebra pointer",
                                     relationships=[("REFERENCES", units[1].id)])
        wait_until(lambda: indexed(engram), "the index to catch up")
        assert engram.search("zebra").total == 7

    report = gc(env)

    assert report["units"] == 3 and not report["dry_run"]
    (context,) = report["policies"][0]["contexts"]
    assert context["context_id"] == "ci/build" and context["kept"] == 3
    archive = Path(context["archive"])
    assert archive.parent == Path(env["ENGRAM_DATA_DIR"]) / "archive"
    with gzip.open(archive, "rt") as file:
        archived = [json.loads(line) for line in file]
    assert [line["id"] for line in archived] == [unit.id for unit in units[:3]]
    assert archived[0]["payload"] == "zebra step 0" and archived[0]["seq"] == units[0].seq
    with connect(counted.socket) as engram:
        assert payloads(engram, "ci/build") == [b"zebra step 3", b"zebra step 4",
                                                b"zebra pointer"]
        found = engram.get_units([units[0].id, units[4].id])
        assert found.missing == [units[0].id]
        wait_until(lambda: indexed(engram), "the index to take the removal")
        hits = {hit.unit_id for hit in engram.search("zebra").hits}
        assert hits == {units[3].id, units[4].id, pointer.id, kept_elsewhere.id}
        related = engram.related_units(pointer.id, direction="out")
        assert [edge.target for edge in related.edges] == [units[1].id]
        assert [unit.id for unit in related.units] == [pointer.id]  # the target is gone
        journal = engram.status().journal
        assert journal is not None and journal.units == 4
    # A replay from before the removal: the kept units, then the removal; no removed unit.
    watched = run_cli(env, "watch", "--since", "start", "-c", "ci/build", "--count", "5")
    assert watched.returncode == 0, watched.stderr
    rows = [line.split("\t") for line in watched.stdout.splitlines()]
    assert [row[2] for row in rows] == ["context.created", *["unit.created"] * 3,
                                        "units.removed"]
    assert rows[-1][4] == f"3 unit(s) removed by retention (ci/*), archived in {archive}"
    removal = ("watch", "--since", "start", "-k", "units.removed", "--count", "1")
    line = run_cli(env, *removal, "--format", "line")
    assert line.returncode == 0 and "ci/build: 3 unit(s) removed" in line.stdout, line
    event = json.loads(run_cli(env, *removal, "--json").stdout)
    assert event["unit_ids"] == [unit.id for unit in units[:3]]
    assert event["seqs"] == [unit.seq for unit in units[:3]] and event["archive"] == str(archive)
    traced = run_cli(env, "trace", pointer.id)
    assert traced.returncode == 0, traced.stderr
    assert f"{units[1].id} (archived: no longer in the journal)" in traced.stdout
    lost = run_cli(env, "trace", units[0].id)
    assert lost.returncode == 3  # not_found, as SPECS §6 says
    assert f"retention removed it; it is archived in {archive}" in lost.stderr, lost.stderr
    got = run_cli(env, "unit", "get", units[0].id)
    assert got.returncode == 3 and f"it is archived in {archive}" in got.stderr, got.stderr

    imported = run_cli(env, "unit", "import", str(archive))

    assert imported.returncode == 0, imported.stderr
    assert "imported 3 unit(s)" in imported.stderr
    with connect(counted.socket) as engram:
        back = engram.get_units([unit.id for unit in units[:3]])
        assert back.missing == [] and [unit.payload for unit in back.units] == [
            b"zebra step 0", b"zebra step 1", b"zebra step 2"]
        wait_until(lambda: indexed(engram), "the index to take the import")
        assert engram.search("zebra").total == 7
    checked = run_cli(env, "verify")
    assert checked.returncode == 0 and "intact" in checked.stdout, checked.stdout


def test_a_dry_run_says_what_would_go_and_changes_nothing(
        counted: DaemonProcess, env: dict[str, str]) -> None:
    with connect(counted.socket) as engram:
        units = [engram.create_unit("ci/lint", "TOOL_RESULT", f"run {n}") for n in range(5)]
        before = engram.status().journal

    report = gc(env, "--dry-run")
    said = run_cli(env, "gc", "--dry-run")

    assert report["dry_run"] and report["units"] == 2 and report["bytes"] > 0
    (context,) = report["policies"][0]["contexts"]
    assert (context["units"], context["kept"], context["archive"]) == (2, 5 - 2, "")
    assert context["oldest"] == units[0].ts.isoformat().replace("+00:00", "Z")
    assert context["newest"] == units[1].ts.isoformat().replace("+00:00", "Z")
    assert said.returncode == 0
    assert "ci/lint: would archive and remove 2 unit(s)" in said.stdout, said.stdout
    assert not (Path(env["ENGRAM_DATA_DIR"]) / "archive").exists()
    with connect(counted.socket) as engram:
        after = engram.status().journal
        assert len(payloads(engram, "ci/lint")) == 5
    assert before is not None and after is not None
    assert (after.last_seq, after.units) == (before.last_seq, before.units)


def test_a_policy_shadowed_by_an_earlier_one_is_said_at_start_and_by_a_dry_run(
        env: dict[str, str]) -> None:
    write_config(env, '[[retention.policy]]\ncontext = "*"\nmax_units = 100\n'
                      '[[retention.policy]]\ncontext = "keep/x"\nmax_units = 5\n'
                      '[[retention.policy]]\ncontext = "ci/*"\nmax_units = 5\n')
    daemon = DaemonProcess(start_engramd(env), env["ENGRAM_SOCKET"], env)
    try:
        report = gc(env, "--dry-run")
        said = run_cli(env, "gc", "--dry-run")
    finally:
        daemon.stop()

    assert [policy["shadowed_by"] for policy in report["policies"]] == [None, "*", "*"]
    assert said.stdout.count("covers no context: the earlier policy * covers every context "
                             "it could") == 2, said.stdout
    logged = engramd_log(env).read_text()
    assert logged.count("retention policy keep/x covers no context") == 1, logged
    assert logged.count("retention policy ci/* covers no context") == 1, logged


def test_pinned_units_open_tasks_and_unacknowledged_messages_stay(
        env: dict[str, str]) -> None:
    write_config(env, '[[retention.policy]]\ncontext = "work"\nmax_units = 0\n')
    daemon = DaemonProcess(start_engramd(env), env["ENGRAM_SOCKET"], env)
    try:
        check_what_stays(env)
    finally:
        assert daemon.stop() == 0


def check_what_stays(env: dict[str, str]) -> None:
    with connect(env["ENGRAM_SOCKET"]) as alice, connect(env["ENGRAM_SOCKET"], "bob") as bob:
        plain = alice.create_unit("work", "REASONING", "plain")
        pinned = alice.create_unit("work", "REASONING", "pinned")
        alice.update_context("work", pin=[pinned.id])
        open_task = alice.add_task("still to do", context_id="work")
        done_task = alice.add_task("finished", context_id="work")
        bob.claim_task(done_task.id)
        bob.finish_task(done_task.id)
        waiting = alice.send_message("bob", "please confirm", context_id="work",
                                     ack_required=True)
        answered = alice.send_message("bob", "confirmed already", context_id="work",
                                      ack_required=True)
        bob.ack_message(answered.id)

        report = gc(env)

        left = {unit.payload for unit in alice.list_units("work", limit=1000).units}
        assert left == {b"pinned", b"still to do", b"please confirm"}
        (context,) = report["policies"][0]["contexts"]
        assert context["held"] == 3 and context["kept"] == 3
        assert alice.get_units([plain.id, answered.id]).missing == [plain.id, answered.id]
        assert alice.get_task(open_task.id).state == "open"
        assert [task.id for task in bob.list_tasks(ready=True)] == [open_task.id]
        assert alice.get_task(done_task.id).state == "done"  # the task's record stays
        assert waiting.id in {message.id for message in bob.inbox(peek=True).messages}


def test_a_removal_is_replayed_after_kill_9_before_a_checkpoint(
        counted: DaemonProcess, env: dict[str, str]) -> None:
    with connect(counted.socket) as engram:
        units = [engram.create_unit("ci/nightly", "REASONING", f"yak {n}") for n in range(6)]
    report = gc(env)
    assert report["units"] == 3
    with connect(counted.socket) as engram:
        journal = engram.status().journal
        assert journal is not None and journal.checkpoint_seq < journal.last_seq

    counted.process.send_signal(signal.SIGKILL)
    counted.process.wait(WAIT)
    counted.process = start_engramd(env)

    with connect(counted.socket) as engram:
        assert payloads(engram, "ci/nightly") == [b"yak 3", b"yak 4", b"yak 5"]
        assert engram.get_units([units[0].id]).missing == [units[0].id]
        journal = engram.status().journal
        assert journal is not None and journal.units == 3
        wait_until(lambda: indexed(engram), "the index to catch up")
        assert {hit.unit_id for hit in engram.search("yak").hits} == {
            unit.id for unit in units[3:]}
    checked = run_cli(env, "verify")
    assert checked.returncode == 0 and "intact" in checked.stdout, checked.stdout


@pytest.fixture
def virtual_days() -> trio.testing.MockClock:
    """Virtual time that jumps once every task has waited 50 ms of real time (a commit's
    fsync in the journal thread is done by then)."""
    return trio.testing.MockClock(autojump_threshold=0.05)


async def days_of_runs(retention: Any, days: int) -> None:
    """Let *days* virtual days pass, a day at a time, each ending once that day's run is
    done: a run's work in a worker thread can outlast the 50 ms (a loaded machine), and
    the clock would then jump to the next deadline past it, the runs falling behind."""
    for _ in range(days):
        runs = retention.runs
        await trio.sleep(DAY)
        deadline = time.monotonic() + WAIT  # (real time: the virtual clock barely moves)
        while retention.runs == runs:
            assert time.monotonic() < deadline, "the day's retention run did not end"
            await trio.sleep(0.001)


async def test_an_age_policy_removes_units_once_they_are_older_on_the_virtual_clock(
        env: dict[str, str], virtual_days: trio.testing.MockClock) -> None:
    # (The disk's measures too run on the virtual clock: once a day, not 44,640 times.)
    write_config(env, '[retention]\ninterval = 86400\n\n[disk]\nsample_seconds = 86400\n\n'
                      '[[retention.policy]]\ncontext = "chat/*"\nmax_age = "30d"\n')
    config = make_config(env)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(lambda task_status: run_daemon(
            config, handle_signals=False, task_status=task_status))
        for _ in range(int(WAIT / 0.01)):  # (bounded: virtual seconds pass here too)
            if server.engine.state == "ready":
                break
            await trio.sleep(0.01)
        else:
            pytest.fail("the journal did not open")
        retention = server.engine.ready().retention
        async with open_client(config.socket, autostart=False, agent_id="alice") as alice:
            old = [await alice.create_unit("chat/general", "MESSAGE", f"old {n}")
                   for n in range(2)]
            await alice.create_unit("elsewhere", "MESSAGE", "never covered")
        await days_of_runs(retention, 20)
        async with open_client(config.socket, autostart=False, agent_id="alice") as alice:
            new = await alice.create_unit("chat/general", "MESSAGE", "new")
            # Stamped on the daemon's clock, which the virtual days moved on.
            assert (new.ts - old[0].ts).total_seconds() > 20 * DAY - 60
        assert retention.runs == 20
        await days_of_runs(retention, 9)  # day 29: nothing is 30 days old yet
        async with open_client(config.socket, autostart=False, agent_id="alice") as alice:
            page = await alice.list_units("chat/general")
            assert [unit.payload for unit in page.units] == [b"old 0", b"old 1", b"new"]
        await days_of_runs(retention, 2)  # day 31: the first two are past 30 days
        async with open_client(config.socket, autostart=False, agent_id="alice") as alice:
            page = await alice.list_units("chat/general")
            assert [unit.payload for unit in page.units] == [b"new"]
            assert [unit.payload for unit in (await alice.list_units("elsewhere")).units] \
                == [b"never covered"]
        archives = os.listdir(config.archive_path)
        assert len(archives) == 1 and archives[0].startswith("chat%2Fgeneral.")
        server.engine.request_shutdown()


@pytest.mark.parametrize("policy, said", [
    ('context = "ci/*"\nmax_age = "30 days"', "retention.policy #1 (ci/*): max_age must be a "
                                              "duration"),
    ('context = "ci/*"', "retention.policy #1 (ci/*): give max_age, max_units or both"),
    ('context = "c*i"\nmax_units = 5', "may hold '*' only at its end"),
    ('context = "ci/*"\nmax_units = -1', "max_units must be an integer from 0 to"),
    ('context = "ci/*"\nmax_units = 99999999999999999999', "max_units must be an integer"),
    ('context = "ci/*"\nmax_age = nan', "max_age must be more than 0 and finite"),
    ('context = "ci/*"\nmax_age = inf', "max_age must be more than 0 and finite"),
    ('context = "ci/*"\nmax_age = 1e300', "max_age must be at most 100 years"),
    ('context = "ci/*"\nmax_age = "999999999999999d"', "max_age must be at most 100 years"),
    ('context = "ci/*"\nmax_age = "99999999999w"', "max_age must be at most 100 years"),
    ('context = "ci/*"\nmax_age = "\u0661\u0662d"', "max_age must be a duration"),
    ('context = "ci/*"\nmax_units = 5\nkeep = true', "unknown key 'keep'"),
])
def test_a_bad_policy_stops_engramd_at_start_with_one_line(
        env: dict[str, str], policy: str, said: str) -> None:
    write_config(env, f"[[retention.policy]]\n{policy}\n")

    done = subprocess.run([sys.executable, "-m", "engramd"], env=env, capture_output=True,
                          text=True, timeout=WAIT, check=False)

    assert done.returncode == 2
    assert said in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_removed_units_leave_the_vector_index(env: dict[str, str]) -> None:
    pytest.importorskip("wordllama")
    from tests.daemon.test_semantic import CORPUS, caught_up, write_corpus

    write_config(env, '[[retention.policy]]\ncontext = "build-42"\nmax_units = 0\n')
    config = make_config(env, **{"search.semantic": "auto"})
    state = Path(config.data_dir) / "vectors" / "state.json"
    with start_threaded(config), connect(config) as engram:
        ids = write_corpus(engram)
        wait_until(lambda: caught_up(engram), "the indexes to catch up", timeout=60)
        meant = engram.search("storage full", mode="semantic", limit=3).hits
        assert meant[0].unit_id == ids["disk quota exceeded while writing the build log"]
        removed = state.parent / "removed.i64"
        before = removed.stat().st_size if removed.exists() else 0

        assert engram.run_retention().units == 3

        wait_until(lambda: caught_up(engram), "the indexes to take the removal")
        gone = {ids[text] for context, text in CORPUS if context == "build-42"}
        hits = engram.search("storage full", mode="semantic", limit=10).hits
        assert hits and not gone & {hit.unit_id for hit in hits}
        assert removed.stat().st_size == before + 3 * 8  # (their rows zeroed, listed)


def test_a_rebuilt_store_keeps_removals_whose_log_was_checkpointed_away(
        env: dict[str, str]) -> None:
    from tests.daemon.test_rebuild import SMALL_LOG, rebuild, started, verified

    small = {**env, **SMALL_LOG}
    write_config(small, '[[retention.policy]]\ncontext = "ci/*"\nmax_units = 10\n')
    daemon = started(small)
    try:
        with connect(daemon.socket) as engram:
            for n in range(40):
                engram.create_unit("ci/long", "REASONING", f"step {n} " + "x" * 200)
        assert gc(small)["units"] == 30
        with connect(daemon.socket) as engram:
            for n in range(40):  # enough log for checkpoints to drop the removal's segments
                engram.create_unit("notes", "REASONING", f"later {n} " + "x" * 200)
    finally:
        assert daemon.stop() == 0
    first = log_first_seq(small["ENGRAM_DATA_DIR"] + "/wal")
    assert first is not None and first > 45, "checkpoints deleted the removal's segment"

    done = rebuild(small)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "missing" not in done.stdout, done.stdout
    daemon = started(small)
    try:
        with connect(daemon.socket) as engram:
            assert len(engram.list_units("ci/long", limit=1000).units) == 10
        report = verified(daemon.socket)
        assert report.ok and report.units == 50, report.problems
    finally:
        assert daemon.stop() == 0


def test_with_required_tokens_only_the_admin_runs_gc_and_agents_may_dry_run(
        env: dict[str, str]) -> None:
    from engram_cli.client.errors import Forbidden
    from tests.daemon.test_auth import connected

    write_config(env, '[[retention.policy]]\ncontext = "ci/*"\nmax_units = 1\n')
    strict = make_config(env, **{"auth.require_tokens": "true"})
    with start_threaded(strict), connected(strict, "admin", admin=True) as admin:
        alice_token = admin.create_token("alice").token
        with connected(strict, "alice", token=alice_token) as alice:
            for n in range(3):
                alice.create_unit("ci/x", "MESSAGE", f"m{n}")
            assert alice.run_retention(dry_run=True).units == 2
            with pytest.raises(Forbidden, match="gc needs the admin token"):
                alice.run_retention()
            assert len(alice.list_units("ci/x").units) == 3
        assert admin.run_retention().units == 2


def test_an_archive_that_cannot_be_written_removes_nothing(env: dict[str, str]) -> None:
    blocker = Path(env["ENGRAM_DATA_DIR"]).parent / "not-a-directory"
    blocker.write_text("")
    write_config(env, f'[retention]\narchive_dir = "{blocker}/archive"\n\n'
                      '[[retention.policy]]\ncontext = "ci/*"\nmax_units = 1\n')
    daemon = DaemonProcess(start_engramd(env), env["ENGRAM_SOCKET"], env)
    try:
        with connect(daemon.socket) as engram:
            for n in range(3):
                engram.create_unit("ci/x", "MESSAGE", f"m{n}")

        done = run_cli(env, "gc")

        assert done.returncode == 69, done  # unavailable (SPECS §6)
        assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
        assert "retention removed nothing from ci/x: its archive could not be written" \
            in done.stderr
        with connect(daemon.socket) as engram:
            assert len(engram.list_units("ci/x").units) == 3
    finally:
        assert daemon.stop() == 0


def test_an_idempotency_key_of_a_removed_unit_writes_a_new_unit(env: dict[str, str]) -> None:
    write_config(env, '[[retention.policy]]\ncontext = "ci/*"\nmax_units = 1\n')
    config = make_config(env)
    with start_threaded(config), connect(config) as engram:
        first = engram.create_unit("ci/k", "MESSAGE", "once", idempotency_key="job-1")
        assert engram.create_unit("ci/k", "MESSAGE", "again", idempotency_key="job-1") == first
        engram.create_unit("ci/k", "MESSAGE", "newer")
        assert engram.run_retention().units == 1

        again = engram.create_unit("ci/k", "MESSAGE", "after", idempotency_key="job-1")

        assert again.id != first.id and again.payload == b"after"
        assert engram.create_unit("ci/k", "MESSAGE", "x", idempotency_key="job-1") == again


def test_in_cluster_mode_gc_is_refused_with_one_line(machines: list[Any]) -> None:
    machine = machines[0]
    with machine.client() as engram:
        engram.create_unit("ci/c", "MESSAGE", "kept")

    done = run_cli(machine.env, "gc", "--dry-run")

    assert done.returncode == 2, done
    assert done.stderr.startswith("engram: error: retention cannot run: the journal is the "
                                  "cluster's stream"), done.stderr
    assert len(done.stderr.splitlines()) == 1
    with machine.client() as engram:
        assert [unit.payload for unit in engram.list_units("ci/c").units] == [b"kept"]


def test_a_live_subscriber_is_told_of_a_removal(env: dict[str, str]) -> None:
    from engramd.protocol import UnitsRemoved

    write_config(env, '[[retention.policy]]\ncontext = "ci/*"\nmax_units = 1\n'
                      'max_age = "30d"\n')
    config = make_config(env)
    with start_threaded(config), connect(config) as engram, connect(config, "bob") as bob:
        old = engram.create_unit("ci/live", "MESSAGE", "old")
        engram.create_unit("ci/live", "MESSAGE", "new")
        events = iter(bob.subscribe(contexts=["ci/live"]))  # from now on

        engram.run_retention()

        event = next(events)
        assert isinstance(event, UnitsRemoved)
        assert (event.context_id, event.unit_ids, event.seqs) == ("ci/live", [old.id], [old.seq])
        assert event.policy == "ci/*" and event.archive.endswith(".jsonl.gz")
        said = run_cli(env, "gc", "--dry-run")
        assert said.stdout.startswith("policy ci/* (max_age 30d, max_units 1)\n  nothing "
                                      "past it"), said.stdout


def test_a_run_without_room_for_its_archive_and_entries_removes_nothing_and_says_why(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from engramd import retention

    write_config(env, '[[retention.policy]]\ncontext = "ci/*"\nmax_units = 0\n')
    monkeypatch.setattr(retention, "free_bytes", lambda path: 2 * 1024 * 1024, raising=False)
    config = make_config(env, **{"search.reserve_bytes": str(4 * 1024 * 1024)})
    with start_threaded(config), connect(config.socket) as engram:
        for n in range(20):
            engram.create_unit("ci/x", "MESSAGE", f"m{n}")

        done = run_cli(env, "gc")

        assert done.returncode == 75, done  # disk_full (SPECS §6)
        assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
        assert "retention removed nothing: 20 unit(s) need about" in done.stderr
        assert "search.reserve_bytes 4.0 MiB kept free) and 2.0 MiB is free" in done.stderr
        assert len(payloads(engram, "ci/x")) == 20
        assert not Path(config.archive_path).exists()


def test_a_run_that_the_disk_stops_midway_says_what_it_archived_and_removed(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from engramd import retention
    from engramd.wal import log as wal_log

    write_config(env, '[[retention.policy]]\ncontext = "ci/*"\nmax_units = 0\n')
    monkeypatch.setattr(retention, "PER_ENTRY", 10)
    config = make_config(env)
    real_write_all = wal_log._write_all
    written_since_archive = [0]

    def full_once_archived(fd: int, data: bytes) -> None:
        # (the room check passed: the disk fills up under the run, after its first entry)
        if list(Path(config.archive_path).glob("*.jsonl.gz")):
            written_since_archive[0] += 1
            if written_since_archive[0] > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_write_all(fd, data)

    with start_threaded(config), connect(config.socket) as engram:
        for n in range(30):
            engram.create_unit("ci/x", "MESSAGE", f"m{n}")
        monkeypatch.setattr(wal_log, "_write_all", full_once_archived)

        done = run_cli(env, "gc")

        assert done.returncode == 75, done
        assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
        assert "nothing was written" not in done.stderr
        (archive,) = Path(config.archive_path).glob("*.jsonl.gz")
        assert (f"retention stopped midway (the disk is full): 10 unit(s) of ci/x archived "
                f"in {archive} and removed (its other 20 are in that archive too, and stay "
                "in the journal)") in done.stderr, done.stderr
        assert "run gc again once there is room" in done.stderr
        assert len(payloads(engram, "ci/x")) == 20
        monkeypatch.setattr(wal_log, "_write_all", real_write_all)
        assert engram.run_retention().units == 20
        assert payloads(engram, "ci/x") == []
