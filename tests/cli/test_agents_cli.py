"""``engram send|inbox|ack``, ``engram task``, ``engram prime`` and ``engram agents`` as
processes, against ``engramd`` as a process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from engram_cli.client import paths
from tests.conftest import DaemonProcess, connect, run_cli, start_engramd, wait_until


def as_agent(env: dict[str, str], agent: str) -> dict[str, str]:
    return {**env, "ENGRAM_AGENT": agent}


def cli_ok(env: dict[str, str], *args: str) -> str:
    result = run_cli(env, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def sleeper() -> subprocess.Popen[bytes]:
    """A process to stand for an agent session."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def inbox_texts(env: dict[str, str], agent: str) -> list[str]:
    out = cli_ok(as_agent(env, agent), "inbox", "--json")
    return [json.loads(line)["payload"] for line in out.splitlines()]


# -- tasks ------------------------------------------------------------------------------


def test_twenty_claimers_take_ten_tasks_once_each_and_a_dead_ones_is_ready_again(
        engramd: DaemonProcess) -> None:
    env = engramd.env
    with connect(engramd.socket, "planner") as planner:
        tasks = {planner.add_task(f"task {n}").id for n in range(10)}
    sessions = [sleeper() for _ in range(20)]
    try:
        claimers = [subprocess.Popen(
            [sys.executable, "-m", "engram_cli", "task", "claim", "--next", "--pid",
             str(session.pid)], env=as_agent(env, f"w{n}"), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True) for n, session in enumerate(sessions)]
        outcomes = [(claimer.wait(60), *claimer.communicate()) for claimer in claimers]
        claimed = [out.strip() for status, out, _ in outcomes if status == 0]
        assert sorted(claimed) == sorted(tasks)  # exactly ten, none twice
        refused = [(status, err) for status, _, err in outcomes if status != 0]
        assert len(refused) == 10
        assert all(status == 3 and "no task is ready" in err for status, err in refused)

        victim = next(n for n, (status, _, _) in enumerate(outcomes) if status == 0)
        victim_task = outcomes[victim][1].strip()
        sessions[victim].kill()
        sessions[victim].wait()
        with connect(engramd.socket, "planner") as planner:
            wait_until(lambda: [t.id for t in planner.list_tasks(ready=True)] == [victim_task],
                       "the dead claimer's task to be ready", timeout=1.0)
    finally:
        for session in sessions:
            session.kill()
            session.wait()


def test_done_needs_the_claim_and_a_dependency_keeps_a_task_waiting(
        engramd: DaemonProcess) -> None:
    env = engramd.env
    first = cli_ok(env, "task", "add", "build", "-P", "1").strip()
    second = cli_ok(env, "task", "add", "deploy", "-P", "0", "--depends-on", first[:13]).strip()
    ready = cli_ok(env, "task", "ready")
    assert first in ready and second not in ready
    refused = run_cli(env, "task", "done", first)
    assert refused.returncode == 4 and refused.stderr.count("\n") == 1
    assert "not claimed" in refused.stderr
    session = sleeper()
    try:
        mine = ["--pid", str(session.pid)]
        assert cli_ok(env, "task", "claim", first, *mine).strip() == first
        other = run_cli(as_agent(env, "mallory"), "task", "done", first, *mine)
        assert other.returncode == 4 and "claimed by tester" in other.stderr
        assert second not in cli_ok(env, "task", "ready")
        assert cli_ok(env, "task", "done", first, *mine).strip() == f"{first} done"
    finally:
        session.kill()
        session.wait()
    assert cli_ok(env, "task", "ready").split("\t")[0] == second
    shown = json.loads(cli_ok(env, "task", "show", second, "--json"))
    assert shown["state"] == "open" and shown["open_dependencies"] == []


# -- messages ---------------------------------------------------------------------------


def test_a_message_is_read_once_also_across_a_restart_and_a_broadcast_reaches_all(
        engramd: DaemonProcess) -> None:
    env = engramd.env
    alice = as_agent(env, "alice")
    first = cli_ok(alice, "send", "--to", "bob", "--new", "-p", "before the restart").strip()
    assert len(first) == 36
    subprocess.run([sys.executable, "-m", "engram_cli", "send", "--to", "bob,carol", "--new"],
                   input=b"from stdin", env=alice, check=True, capture_output=True)
    assert inbox_texts(env, "bob") == ["before the restart", "from stdin"]
    cli_ok(alice, "send", "--to", "bob", "-p", "unread at the restart")
    assert engramd.stop() == 0
    engramd.process = start_engramd(env)
    assert inbox_texts(env, "bob") == ["unread at the restart"]
    assert inbox_texts(env, "bob") == []
    cli_ok(alice, "send", "--to", "*", "-p", "all hands")
    for agent in ("bob", "carol", "dave"):
        assert inbox_texts(env, agent)[-1:] == ["all hands"]
        assert inbox_texts(env, agent) == []
    assert inbox_texts(env, "alice") == []
    count = run_cli(as_agent(env, "bob"), "inbox", "--count")
    assert count.stdout == "0\n"


def test_a_waiting_inbox_returns_as_soon_as_a_message_comes(engramd: DaemonProcess) -> None:
    env = engramd.env
    waiting = subprocess.Popen([sys.executable, "-m", "engram_cli", "inbox", "--wait", "5",
                                "--json"], env=as_agent(env, "bob"), stdout=subprocess.PIPE,
                               text=True)
    with connect(engramd.socket, "probe") as probe:
        wait_until(lambda: probe.stats().gauges["requests_in_flight"] > 1,
                   "the inbox to wait in the daemon")
        with connect(engramd.socket, "alice") as alice:
            sent = time.monotonic()
            alice.send_message("bob", "now")
    out, _ = waiting.communicate(timeout=30)
    returned = time.monotonic() - sent
    assert waiting.returncode == 0 and json.loads(out)["payload"] == "now"
    # Woken by the message, not by the end of its wait (5 s): the figure itself is
    # engram bench's (inbox row), a test only tells the two apart.
    assert returned < 2.5


def test_an_ack_required_message_is_pending_until_acked_and_the_ack_is_traced(
        engramd: DaemonProcess) -> None:
    env = engramd.env
    bob = as_agent(env, "bob")
    message = cli_ok(as_agent(env, "alice"), "send", "--to", "bob", "--new", "--ack-required",
                     "--thread", "review-1", "-p", "please review").strip()
    assert inbox_texts(env, "bob") == ["please review"]
    pending = cli_ok(bob, "inbox", "--pending", "--json")
    assert json.loads(pending)["id"] == message
    ack = cli_ok(bob, "ack", message[:13]).strip()
    assert cli_ok(bob, "inbox", "--pending") == ""
    trace = json.loads(cli_ok(env, "trace", message, "--json"))
    assert {"source": ack, "type": "RESPONDS_TO", "target": message, "depth": 1} \
        in trace["edges"]
    reply = cli_ok(bob, "send", "--to", "alice", "--reply-to", message, "-p", "done").strip()
    replied = json.loads(cli_ok(env, "unit", "get", reply, "--json"))
    assert replied["meta"]["thread"] == "review-1"


# -- prime and agents --------------------------------------------------------------------


def test_prime_on_an_empty_journal_is_short_and_a_second_prime_has_nothing_new(
        engramd: DaemonProcess) -> None:
    env = engramd.env
    empty = run_cli(env, "prime")
    assert empty.returncode == 0 and empty.stderr == ""
    assert "# engram: you are tester" in empty.stdout and len(empty.stdout) <= 1500
    assert "engram task claim --next" in empty.stdout  # the cheat sheet
    with connect(engramd.socket, "alice") as alice:
        alice.create_unit("build-42", "REASONING", "alice found the bug")
    cli_ok(env, "unit", "create", "-c", "build-42", "-t", "REASONING", "-p", "mine")
    first = cli_ok(env, "prime")
    assert "## Since your last prime: 1 new" in first and "alice found the bug" in first
    second = cli_ok(env, "prime")
    assert "Since your last prime" not in second


def test_prime_on_a_busy_journal_shows_every_section_within_its_budget(
        engramd: DaemonProcess, tmp_path: Path) -> None:
    env = engramd.env
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "app.py").write_text("changed\n")
    session = sleeper()
    try:
        with connect(engramd.socket, "alice") as alice, connect(engramd.socket,
                                                                "tester") as tester:
            tester.create_unit("build-42", "REASONING", "joined")
            for n in range(30):
                alice.send_message("tester", f"message {n} " + "x" * 100, ack_required=n == 0)
                alice.create_unit("build-42", "TOOL_RESULT", f"result {n} " + "y" * 100)
            pinned = alice.create_unit("build-42", "REASONING", "always read this")
            alice.update_context("build-42", pin=[pinned.id])
            alice.acquire_lock(paths.resource(str(repo / "app.py")), ttl=300)
            tester.acquire_lock("deploy:prod", ttl=300)
            for n in range(8):
                alice.add_task(f"task {n}", context_id="build-42")
            tester.claim_task(pid=session.pid)
        result = subprocess.run([sys.executable, "-m", "engram_cli", "prime", "--max-chars",
                                 "2500"], env={**env, "ENGRAM_SESSION_PID": str(session.pid)},
                                cwd=repo, capture_output=True, text=True, check=True)
        brief = result.stdout
        assert len(brief) <= 2500
        assert "cut to 2500 characters" in brief
        for heading in ("## Messages: 30 unread", "1 waiting for your ack",
                        "## Your claimed tasks", "## Your leases",
                        "## Held by others: files you have changed", "## Ready tasks: 7",
                        "## Since your last prime", "## Pinned", "## engram commands"):
            assert heading in brief, heading
        assert "`app.py` by alice" in brief  # as a path from where prime ran
        whole = json.loads(cli_ok(env, "prime", "--format", "json", "--max-chars", "100000"))
        assert whole["unread"] == 30 and whole["cut"] is False
        with connect(engramd.socket, "probe") as probe:
            tester = next(agent for agent in probe.list_agents() if agent.agent == "tester")
        assert session.pid in [s.pid for s in tester.sessions]
    finally:
        session.kill()
        session.wait()


def test_prime_without_a_daemon_exits_0_at_once(env: dict[str, str]) -> None:
    started = time.monotonic()
    result = run_cli({**env, "ENGRAM_NO_AUTOSTART": "1"}, "prime")
    assert time.monotonic() - started < 2.0
    assert result.returncode == 0
    assert result.stdout.startswith("engram: no brief (") and result.stdout.count("\n") == 1
    as_json = run_cli({**env, "ENGRAM_NO_AUTOSTART": "1"}, "prime", "--format", "json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["error"]["code"]


def test_agents_lists_sessions_and_shows_a_dead_one_gone(engramd: DaemonProcess) -> None:
    env = engramd.env
    session = sleeper()
    cli_ok({**env, "ENGRAM_SESSION_PID": str(session.pid), "CLAUDECODE": "1"}, "prime")
    cli_ok(as_agent(env, "alice"), "send", "--to", "tester", "-p", "hi")

    def rows() -> dict[str, dict[str, object]]:
        out = cli_ok(env, "agents", "--json")
        return {row["agent"]: row for row in map(json.loads, out.splitlines())}

    tester = rows()["tester"]
    assert tester["unread"] == 1
    assert [(s["pid"], s["harness"], s["gone_at"]) for s in tester["sessions"]
            if s["announced"]] == [(session.pid, "claude-code", None)]
    plain = cli_ok(env, "agents")
    (row,) = [line for line in plain.splitlines() if line.startswith("tester\t")]
    assert f"{session.pid} claude-code" in row
    session.kill()
    session.wait()
    with connect(engramd.socket, "probe") as probe:
        wait_until(lambda: all(s.gone_at is not None for agent in probe.list_agents()
                               if agent.agent == "tester" for s in agent.sessions),
                   "the session to be gone", timeout=1.0)
    assert "(gone)" in cli_ok(env, "agents")
