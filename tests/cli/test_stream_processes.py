"""The stream with real processes: ten ``engram watch`` watchers, and a daemon restart."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from engram_cli.client import Client, requests
from tests.conftest import WAIT, DaemonProcess, socket_answers, spawn_engramd, wait_until

pytestmark = pytest.mark.slow  # every test here runs processes

STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    """A failing test must not leave watchers behind (they would follow the next daemon)."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait(WAIT)


def watcher(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-m", "engram_cli", "watch", "--json", *args],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    STARTED.append(process)
    return process


def seqs_of(output: str) -> list[int]:
    return [json.loads(line)["seq"] for line in output.splitlines()]


def test_ten_watchers_see_every_event_once_in_order(engramd: DaemonProcess) -> None:
    writers, per_writer = 4, 2500
    with Client(engramd.socket, autostart=False) as engram:
        for number in range(writers):  # contexts and memberships first: then only units
            with Client(engramd.socket, agent_id=f"w{number}", autostart=False) as writer:
                writer.create_unit("fan", "MESSAGE", "hello")
        start = engram.status().journal.last_seq  # type: ignore[union-attr]
    expected = writers * per_writer
    watchers = [watcher(engramd.env, "-c", "fan", "--since", str(start), "--count",
                        str(expected)) for _ in range(10)]

    def write(number: int) -> None:
        with Client(engramd.socket, agent_id=f"w{number}", autostart=False) as writer:
            for _ in range(per_writer // 10):
                writer.create_units([requests.draft("fan", "MESSAGE", f"{number}")] * 10)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    outputs = [process.communicate(timeout=120) for process in watchers]
    wanted = list(range(start + 1, start + expected + 1))
    for process, (out, err) in zip(watchers, outputs, strict=True):
        assert process.returncode == 0, err
        assert seqs_of(out) == wanted


def test_watch_resumes_across_a_daemon_restart(engramd: DaemonProcess) -> None:
    env = engramd.env
    with Client(engramd.socket, autostart=False) as engram:
        for number in range(5):
            engram.create_unit("r", "MESSAGE", f"before {number}")
    follower = watcher(env, "-c", "r", "--since", "start", "--count", "11")  # 1 + 5 + 5
    wait_until(lambda: _watching(engramd.socket, "r"), "the watcher to subscribe")
    engramd.process.send_signal(signal.SIGTERM)
    assert engramd.process.wait(WAIT) == 0
    restarted = spawn_engramd(env)
    try:
        wait_until(lambda: socket_answers(engramd.socket), "the restarted daemon")
        with Client(engramd.socket, autostart=False) as engram:
            engram.wait_ready()
            for number in range(5):
                engram.create_unit("r", "MESSAGE", f"after {number}")
        out, err = follower.communicate(timeout=60)
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(WAIT)
        restarted.communicate()
    assert follower.returncode == 0, err
    assert "reconnecting to engramd" in err and "watching" in err
    payloads = [json.loads(line).get("unit", {}).get("payload") for line in out.splitlines()]
    units = [p for p in payloads if p is not None]
    assert units == [f"before {n}" for n in range(5)] + [f"after {n}" for n in range(5)]
    assert seqs_of(out) == sorted(set(seqs_of(out)))


def _watching(socket_path: str, context_id: str) -> bool:
    with Client(socket_path, autostart=False) as engram:
        return bool(engram.context_info(context_id).watching)


def test_wait_exits_0_on_a_match_and_5_on_timeout(engramd: DaemonProcess) -> None:
    env = engramd.env
    with Client(engramd.socket, autostart=False) as engram:
        engram.create_context("w")
    waiting = subprocess.Popen([sys.executable, "-m", "engram_cli", "wait", "-c", "w",
                                "-t", "task_status", "-m", "state=done", "--timeout", "30",
                                "--json"], env=env, stdout=subprocess.PIPE, text=True)
    STARTED.append(waiting)
    wait_until(lambda: _watching(engramd.socket, "w"), "the waiter to subscribe")
    with Client(engramd.socket, autostart=False) as engram:
        engram.create_unit("w", "TASK_STATUS", "half", meta={"state": "running"})
        done = engram.create_unit("w", "TASK_STATUS", "all", meta={"state": "done"})
    out, _ = waiting.communicate(timeout=30)
    assert waiting.returncode == 0
    assert json.loads(out)["unit"]["id"] == done.id
    timed_out = subprocess.run([sys.executable, "-m", "engram_cli", "wait", "-c", "none",
                                "--timeout", "0.2"], env=env, capture_output=True, text=True,
                               timeout=30, check=False)
    assert timed_out.returncode == 5
    assert timed_out.stderr.splitlines() == [
        "engram: no context none yet; waiting for it to appear",
        "engram: error: no matching event within 0.2s"]


def test_a_loop_of_waits_under_one_cursor_misses_nothing_between_them(
        engramd: DaemonProcess) -> None:
    with Client(engramd.socket, agent_id="tester", autostart=False) as engram:  # the CLI's
        engram.create_context("loop")
        engram.ack_cursor("looper", engram.status().journal.last_seq)  # type: ignore[union-attr]
        # Written while no wait runs: each must still come, once, in order.
        sent = [engram.create_unit("loop", "MESSAGE", f"note {n}".encode()).id
                for n in range(3)]

    def wait_once(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "engram_cli", "wait", "-c", "loop",
                               "--cursor", "looper", "--json", *extra], env=engramd.env,
                              capture_output=True, text=True, timeout=30, check=False)

    got = []
    for _ in sent:
        result = wait_once("--timeout", "10")
        assert result.returncode == 0, result.stderr
        got.append(json.loads(result.stdout)["unit"]["id"])
    assert got == sent
    assert wait_once("--timeout", "0.2").returncode == 5  # nothing handed out twice
    # watch under the same name moves it past every event it showed, the last too.
    with Client(engramd.socket, agent_id="tester", autostart=False) as engram:
        later = [engram.create_unit("loop", "MESSAGE", text).id for text in (b"a", b"b")]
    watched = subprocess.run([sys.executable, "-m", "engram_cli", "watch", "-c", "loop",
                              "--cursor", "looper", "--count", "2", "--json"],
                             env=engramd.env, capture_output=True, text=True, timeout=30,
                             check=False)
    assert watched.returncode == 0, watched.stderr
    assert [json.loads(line)["unit"]["id"] for line in watched.stdout.splitlines()] == later
    assert wait_once("--timeout", "0.2").returncode == 5
