"""Named cursors with the real ``engram`` and ``engramd``: each event once per consumer,
in order, across daemon restarts; what a consumer showed before a clean stop is
acknowledged; after a consumer's crash the next one starts right after the last
acknowledgement; a new name starts where its first subscription did."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from engram_cli.client import Client, ClientTimeout, Unavailable, requests
from tests.conftest import WAIT, DaemonProcess, connect, run_cli, start_engramd, wait_until

pytestmark = pytest.mark.slow  # every test here runs processes

STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait(WAIT)


class Consumer:
    """``engram watch --json --cursor NAME -c cur -k unit.created ARGS`` as a process;
    the seqs it prints are read as they come."""

    def __init__(self, env: dict[str, str], name: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "engram_cli", "watch", "--json", "--cursor", name,
             "-c", "cur", "-k", "unit.created", *args], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        STARTED.append(self.process)
        self.seqs: list[int] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.seqs.append(json.loads(line)["seq"])

    def printed(self, count: int) -> None:
        wait_until(lambda: len(self.seqs) >= count or self.process.poll() is not None,
                   f"{count} events printed")
        assert len(self.seqs) >= count, self.finish()

    def stop(self, signum: signal.Signals) -> int:
        self.process.send_signal(signum)
        return self.finish()

    def finish(self) -> int:
        """Wait for the end; the exit status (the output is all read by then)."""
        status = self.process.wait(WAIT)
        self._reader.join(WAIT)
        return status

    @property
    def said(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read()


def watching(socket: str) -> bool:
    with connect(socket) as engram:
        return bool(engram.context_info("cur").watching)


def stored_cursor(socket: str, name: str) -> int:
    """Where the CLI's cursor *name* stands (a subscription under it starts there): the
    CLI's agent's (``ENGRAM_AGENT`` of the tests' environment), whose names they are."""
    with connect(socket, "tester") as engram:
        subscription = engram.subscribe(cursor=name)
        subscription.close()
        return subscription.cursor


def write(socket: str, count: int, tag: str = "u") -> list[int]:
    with connect(socket) as engram:
        return [engram.create_unit("cur", "MESSAGE", f"{tag}{n}").seq for n in range(count)]


def unit_seqs(socket: str) -> list[int]:
    with connect(socket) as engram:
        return [unit.seq for unit in engram.list_units("cur", limit=1000).units]


def restart(daemon: DaemonProcess, how: str) -> None:
    if how == "kill -9":
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(WAIT)
    else:
        assert daemon.stop() == 0
    daemon.process = start_engramd(daemon.env)


def nothing_more_for(env: dict[str, str], name: str) -> bool:
    """True if a wait under *name* finds nothing left to hand out."""
    return run_cli(env, "wait", "-c", "cur", "-k", "unit.created", "--cursor", name,
                   "--timeout", "0.3").returncode == 5


@pytest.mark.parametrize("how", ["restart", "kill -9"])
def test_a_watcher_under_a_cursor_prints_each_seq_once_across_a_daemon_restart(
        engramd: DaemonProcess, how: str) -> None:
    socket = engramd.socket
    run_cli(engramd.env, "context", "create", "cur")
    consumer = Consumer(engramd.env, "c1")
    wait_until(lambda: watching(socket), "the watcher to subscribe")
    before = write(socket, 5)
    consumer.printed(5)
    restart(engramd, how)
    after = write(socket, 3)
    consumer.printed(8)
    status = consumer.stop(signal.SIGTERM)
    assert consumer.seqs == before + after  # not 1 2 3 4 5 2 3 4 5 6 7 8
    assert status == 0
    assert "reconnecting to engramd" in consumer.said
    assert stored_cursor(socket, "c1") == after[-1]
    assert nothing_more_for(engramd.env, "c1")


def test_a_watcher_under_a_cursor_prints_each_seq_once_while_the_daemon_restarts_under_load(
        engramd: DaemonProcess) -> None:
    socket = engramd.socket
    run_cli(engramd.env, "context", "create", "cur")
    consumer = Consumer(engramd.env, "busy")
    wait_until(lambda: watching(socket), "the watcher to subscribe")
    total, written = 300, []
    failure: list[BaseException] = []

    def writer() -> None:
        client = Client(socket, agent_id="writer", autostart=False, timeout=WAIT)
        try:
            for number in range(total):
                while True:  # a write the restart cut short is tried again, at most once
                    try:
                        unit = client.create_unit("cur", "MESSAGE", f"n{number}",
                                                  idempotency_key=f"n{number}")
                        written.append(unit.seq)
                        break
                    except (Unavailable, ClientTimeout):
                        client.close()
                        wait_until(lambda: ready(socket), "the daemon back")
        except BaseException as exc:  # reported by the test below
            failure.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    consumer.printed(60)
    restart(engramd, "restart")
    consumer.printed(150)
    restart(engramd, "kill -9")
    thread.join(WAIT * 6)
    assert not failure, failure
    journal = unit_seqs(socket)
    consumer.printed(len(journal))
    status = consumer.stop(signal.SIGTERM)
    assert consumer.seqs == journal
    assert status == 0
    assert sorted(set(written)) == journal


def ready(socket: str) -> bool:
    try:
        with Client(socket, autostart=False, timeout=WAIT) as engram:
            engram.wait_ready()
            return True
    except (Unavailable, ClientTimeout):
        return False


@pytest.mark.usefixtures("interruptible")  # (its consumer inherits SIGINT's disposition)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_consumer_stopped_cleanly_leaves_the_next_exactly_what_it_did_not_print(
        engramd: DaemonProcess, signum: signal.Signals) -> None:
    socket = engramd.socket
    run_cli(engramd.env, "context", "create", "cur")
    first = Consumer(engramd.env, "c2")
    wait_until(lambda: watching(socket), "the first consumer to subscribe")
    writer = threading.Thread(target=write, args=(socket, 200))
    writer.start()
    first.printed(10)
    assert first.stop(signum) == 0  # stopped while the events still come
    writer.join(WAIT * 3)
    journal = unit_seqs(socket)
    rest = journal[len(first.seqs):]
    assert first.seqs == journal[:len(first.seqs)] and rest
    assert stored_cursor(socket, "c2") == first.seqs[-1]
    second = Consumer(engramd.env, "c2", "--count", str(len(rest)))
    assert second.finish() == 0
    assert second.seqs == rest
    assert nothing_more_for(engramd.env, "c2")


def test_a_consumer_killed_outright_is_followed_from_its_last_acknowledgement(
        engramd: DaemonProcess) -> None:
    socket = engramd.socket
    run_cli(engramd.env, "context", "create", "cur")
    first = Consumer(engramd.env, "c3")
    wait_until(lambda: watching(socket), "the first consumer to subscribe")
    before = write(socket, 5)
    first.printed(5)
    # Acknowledged while it runs (when the stream goes quiet at the latest).
    wait_until(lambda: stored_cursor(socket, "c3") == before[-1], "the acknowledgement")
    with connect(socket) as engram:
        after = [unit.seq for unit in engram.create_units(
            [requests.draft("cur", "MESSAGE", f"batch {n}") for n in range(3)]).units]
    first.printed(8)
    first.stop(signal.SIGKILL)
    assert first.seqs == before + after
    acknowledged = stored_cursor(socket, "c3")
    assert acknowledged in after or acknowledged == before[-1]
    again = [seq for seq in before + after if seq > acknowledged]  # at least once
    if again:
        second = Consumer(engramd.env, "c3", "--count", str(len(again)))
        assert second.finish() == 0
        assert second.seqs == again
    assert nothing_more_for(engramd.env, "c3")


def test_wait_under_a_new_cursor_starts_where_its_first_call_did(
        engramd: DaemonProcess) -> None:
    env = engramd.env
    with connect(engramd.socket) as engram:
        engram.create_unit("X", "MESSAGE", "the context and its member first")
    timed_out = run_cli(env, "wait", "--cursor", "NEW", "-c", "X", "--timeout", "1")
    assert timed_out.returncode == 5, timed_out.stderr
    with connect(engramd.socket) as engram:
        sent = [engram.create_unit("X", "MESSAGE", f"note {n}").id for n in range(3)]
    got = []
    for _ in sent:
        result = run_cli(env, "wait", "--cursor", "NEW", "-c", "X", "--timeout", "1",
                         "--json")
        assert result.returncode == 0, result.stderr
        got.append(json.loads(result.stdout)["unit"]["id"])
    assert got == sent
    again = run_cli(env, "wait", "--cursor", "NEW", "-c", "X", "--timeout", "0.3")
    assert again.returncode == 5


def test_a_wait_stopped_by_sigterm_exits_143_and_hands_out_nothing(
        engramd: DaemonProcess) -> None:
    env = engramd.env
    run_cli(env, "context", "create", "cur")
    waiting = subprocess.Popen([sys.executable, "-m", "engram_cli", "wait", "-c", "cur",
                                "-k", "unit.created", "--cursor", "c4", "--timeout", "60"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    STARTED.append(waiting)
    wait_until(lambda: watching(engramd.socket), "the wait to subscribe")
    waiting.send_signal(signal.SIGTERM)
    out, err = waiting.communicate(timeout=WAIT)
    assert (waiting.returncode, out, err) == (143, "", "")
    (sent,) = write(engramd.socket, 1)  # after the stopped wait began: the next gets it
    result = run_cli(env, "wait", "-c", "cur", "-k", "unit.created", "--cursor", "c4",
                     "--timeout", "5", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["seq"] == sent
