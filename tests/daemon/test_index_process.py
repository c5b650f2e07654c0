"""The search indexes in a process of their own (``search.indexer = "process"``, the
default), against engramd as a real process: it is started again when it dies, it ends
with engramd, and the daemon's own interpreter does no indexing or embedding."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engram_cli.client import Client
from engram_cli.client.errors import Unavailable
from engramd import indexer, indexproc
from tests.conftest import (
    DaemonProcess,
    connect,
    engramd_log,
    make_config,
    start_engramd,
    start_threaded,
    wait_until,
)


def index_processes(parent: int) -> list[int]:
    """The live index processes whose parent is *parent*."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == parent and state != "Z" and b"engramd.indexproc" in command:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def the_index_process(daemon: int) -> int:
    wait_until(lambda: len(index_processes(daemon)) == 1, "one index process")
    (pid,) = index_processes(daemon)
    return pid


def test_a_killed_index_process_is_started_again_and_nothing_is_missed(
        engramd: DaemonProcess) -> None:
    with connect(engramd.socket) as client:
        daemon = client.status().pid
        first = the_index_process(daemon)
        client.create_unit("ops", "MESSAGE", "before the kill: walrus")
        wait_until(lambda: client.search("walrus").total == 1, "the first unit indexed")
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: not alive(first), "the index process to die")
        # Writes never waited on the indexes, and a search right away starts another.
        client.create_unit("ops", "MESSAGE", "after the kill: narwhal")
        wait_until(lambda: client.search("narwhal").total == 1, "the second unit indexed")
        assert client.search("walrus").total == 1
        second = the_index_process(daemon)
        assert second != first
        journal = client.status().journal
        assert journal is not None
        wait_until(lambda: client.status().journal.indexed_seq  # type: ignore[union-attr]
                   == journal.last_seq, "the index to hold the whole journal")
    assert "the index process" in engramd_log(engramd.env).read_text()


def test_the_index_process_ends_with_engramd(env: dict[str, str]) -> None:
    process = start_engramd(env)
    try:
        child = the_index_process(process.pid)
        process.kill()  # no chance to stop it: its socket's end is what it goes by
        process.wait()
        wait_until(lambda: not alive(child), "the index process to end")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def maps_numpy(pid: int) -> bool:
    return "numpy" in Path(f"/proc/{pid}/maps").read_text()


def test_with_semantic_search_the_daemon_embeds_nothing_itself(env: dict[str, str]) -> None:
    pytest.importorskip("wordllama")
    semantic = {**env, "ENGRAM_SEARCH_SEMANTIC": "auto"}
    daemon = DaemonProcess(start_engramd(semantic), env["ENGRAM_SOCKET"], semantic)
    try:
        with connect(daemon.socket) as client:
            client.create_unit("ops", "MESSAGE", "the disk quota was exceeded")

            def embedded() -> bool:
                journal = client.status().journal
                return journal is not None and journal.vector_seq == journal.last_seq

            wait_until(embedded, "the vector index to take the unit")
            assert client.search("storage full", mode="semantic").hits
            index = the_index_process(client.status().pid)
            assert maps_numpy(index), "the model runs in the index process"
            assert not maps_numpy(daemon.process.pid), "and not in engramd"
    finally:
        assert daemon.stop() == 0
    # What the index process logged is in engramd's log, in its one format.
    lines = engramd_log(semantic).read_text().splitlines()
    assert any("vector index open" in line and line.startswith("ts=") for line in lines)
    assert not [line for line in lines if not line.startswith("ts=")]


def walrus_indexed(client: Client) -> int:
    """A unit written and found; the index process that holds it."""
    pid = the_index_process(os.getpid())
    client.create_unit("ops", "MESSAGE", "before the stop: walrus")
    wait_until(lambda: client.search("walrus").total == 1, "the first unit indexed")
    return pid


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """Process *pid* SIGSTOPped for the block, and killed after it if engramd did not."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_stopped_index_process_costs_searches_a_bounded_wait_and_is_replaced(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGSTOP the index process: writes never wait on it, a search is answered
    ``unavailable`` (not left to the client's timeout), the stuck process is killed and
    another takes its place, and nothing written is missed."""
    monkeypatch.setattr(indexproc, "SEARCH_SECONDS", 0.5)
    monkeypatch.setattr(indexproc, "WORK_SECONDS", 2.0)
    monkeypatch.setattr(indexer, "SEARCH_WAIT_SECONDS", 0.5)
    config = make_config(env)
    with start_threaded(config), connect(config) as client:
        first = walrus_indexed(client)
        with stopped(first):
            client.create_unit("ops", "MESSAGE", "while it is stopped: narwhal")
            with pytest.raises(Unavailable, match="search is unavailable"):
                client.search("walrus")
            wait_until(lambda: not alive(first), "the stuck process to be killed")
        wait_until(lambda: client.search("narwhal").total == 1, "the second unit indexed")
        assert client.search("walrus").total == 1
        assert the_index_process(os.getpid()) != first


def test_an_index_process_stopped_during_a_batch_is_killed_by_the_next_search(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped while a batch is on its way to it, the index process would hold the indexes
    for as long as a batch may take (``WORK_SECONDS``): the search that finds them busy
    finds it stopped, kills it and says so; the batch goes to the next process."""
    monkeypatch.setattr(indexer, "SEARCH_WAIT_SECONDS", 0.5)
    batch_sent = threading.Event()
    ask = indexproc.IndexProcess._ask

    def observed_ask(self: indexproc.IndexProcess, request: indexproc.Request,
                     seconds: float | None = None) -> indexproc.Reply:
        if not isinstance(request, indexproc.Search):  # (the batch's first request)
            batch_sent.set()
        return ask(self, request, seconds)

    config = make_config(env)
    with start_threaded(config), connect(config) as client:
        first = walrus_indexed(client)
        monkeypatch.setattr(indexproc.IndexProcess, "_ask", observed_ask)
        with stopped(first):
            client.create_unit("ops", "MESSAGE", "while it is stopped: narwhal")
            wait_until(batch_sent.is_set, "the batch on its way to the stopped process")
            with pytest.raises(Unavailable, match="stopped while it indexed"):
                client.search("walrus")
            wait_until(lambda: not alive(first), "the stopped process killed")
        wait_until(lambda: client.search("narwhal").total == 1, "the batch indexed")
        assert the_index_process(os.getpid()) != first
