"""Cluster mode: engramd "machines" (processes with their own sockets and data dirs) on
one NATS JetStream cluster of three real nats-server processes on loopback.

Marked ``cluster`` (and ``slow``): ``pytest -m "not slow"`` skips them; CI runs them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from engram_cli.bench.natslab import NatsCluster
from engram_cli.client import Client
from engram_cli.client.errors import EngramError, NotFound
from tests.clustermachines import Machine, deployment_of, machine_on, running
from tests.conftest import WAIT, engramd_log, run_cli, wait_until

pytest.importorskip("nats", reason="cluster mode needs the engram-journal[cluster] extra")
pytestmark = [pytest.mark.cluster, pytest.mark.slow]

import nats  # noqa: E402


def units_of(machine: Machine, context: str) -> list[tuple[int, str, str]]:
    """(seq, id, payload) of every unit of *context* on *machine*, oldest first."""
    found = []
    cursor = None
    with machine.client() as engram:
        while True:
            try:
                page = engram.list_units(context, limit=500, after=cursor)
            except NotFound:
                return found
            found += [(unit.seq, unit.id, unit.payload.decode()) for unit in page.units]
            cursor = page.next_cursor
            if cursor is None:
                return found


def test_units_written_on_every_machine_are_on_every_machine_in_one_order(
        machines: list[Machine]) -> None:
    per_machine = 40

    def write(machine: Machine) -> None:
        with machine.client(agent=f"agent-{machine.name}") as engram:
            for number in range(per_machine):
                engram.create_unit("shared", "MESSAGE", f"{machine.name}{number}")

    threads = [threading.Thread(target=write, args=(machine,)) for machine in machines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    expected = len(machines) * per_machine
    for machine in machines:
        wait_until(lambda m=machine: len(units_of(m, "shared")) == expected,  # type: ignore[misc]
                   f"machine {machine.name} to have every unit")
    seen = [units_of(machine, "shared") for machine in machines]
    assert seen[0] == seen[1] == seen[2]
    payloads = sorted(payload for _, _, payload in seen[0])
    assert payloads == sorted(f"{m.name}{n}" for m in machines for n in range(per_machine))
    seqs = [seq for seq, _, _ in seen[0]]
    assert seqs == sorted(set(seqs))
    ids = [unit_id for _, unit_id, _ in seen[0]]
    for machine in machines:
        with machine.client() as engram:
            assert engram.get_units(ids).missing == []
            wait_until(lambda e=engram: e.search("b7").total == 1,  # type: ignore[misc]
                       f"machine {machine.name}'s search index")
        # The whole journal, as each machine's watch delivers it: the same events.
        watched = machine.cli("watch", "--json", "--since", "start", "--count",
                              str(expected + 3))  # + the context, 2 agents joining it
        assert watched.returncode == 0, watched.stderr
        events = [(e["seq"], e["kind"], e.get("unit", {}).get("id"))
                  for e in map(json.loads, watched.stdout.splitlines())]
        if machine is machines[0]:
            first = events
        assert events == first
        assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))


def test_a_write_on_one_machine_reaches_a_watcher_on_another(machines: list[Machine]) -> None:
    a, b = machines[0], machines[1]
    watcher = subprocess.Popen(
        [sys.executable, "-m", "engram_cli", "watch", "--json", "-c", "feed", "--since",
         "start", "--count", "4"], env=b.env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        with a.client() as engram:
            for number in range(3):
                engram.create_unit("feed", "MESSAGE", f"hello {number}")
        out, err = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 0, err  # the context's creation, then the units
    payloads = [json.loads(line)["unit"]["payload"] for line in out.splitlines()
                if json.loads(line).get("kind") == "unit.created"]
    assert payloads == ["hello 0", "hello 1", "hello 2"]
    on_a = [seq for seq, _, _ in units_of(a, "feed")]
    assert [json.loads(line)["seq"] for line in out.splitlines()][-3:] == on_a


def test_an_idempotent_retry_on_another_machine_writes_once(machines: list[Machine]) -> None:
    a, b = machines[0], machines[1]
    first = a.cli("unit", "create", "-c", "once", "-p", "x", "--idempotency-key", "k1",
                  "--json")
    assert first.returncode == 0, first.stderr
    wait_until(lambda: b.view_seq() >= a.view_seq(), "b to catch up")
    again = b.cli("unit", "create", "-c", "once", "-p", "x", "--idempotency-key", "k1",
                  "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(first.stdout)["id"] == json.loads(again.stdout)["id"]
    assert len(units_of(a, "once")) == len(units_of(b, "once")) == 1


def test_a_machine_with_a_new_data_dir_rebuilds_its_view(machines: list[Machine]) -> None:
    a, c = machines[0], machines[2]
    with a.client() as engram:
        for number in range(20):
            engram.create_unit("keep", "MESSAGE", f"k{number}")
    before = units_of(a, "keep")
    wait_until(lambda: units_of(c, "keep") == before, "c to have the units")
    c.stop()
    shutil.rmtree(c.env["ENGRAM_DATA_DIR"])
    c.start()
    wait_until(lambda: units_of(c, "keep") == before, "c to rebuild its view")
    search = c.cli("search", "k7", "--json")
    assert search.returncode == 0, search.stderr
    c.stop()  # and a store damaged beyond opening is moved aside and built again
    with open(os.path.join(c.env["ENGRAM_DATA_DIR"], "store", "CURRENT"), "w") as current:
        current.write("MANIFEST-999999\n")
    c.start()
    wait_until(lambda: units_of(c, "keep") == before, "c to rebuild its damaged view")
    assert any(name.startswith("store.damaged-")
               for name in os.listdir(c.env["ENGRAM_DATA_DIR"]))



@pytest.fixture
def own_cluster(tmp_path: os.PathLike[str]) -> Iterator[NatsCluster]:
    """A NATS cluster of the test's own: the test stops and kills its nodes."""
    with NatsCluster(os.path.join(str(tmp_path), "nats")) as cluster:
        yield cluster


@pytest.fixture
def pair(env: dict[str, str], scratch: str, own_cluster: NatsCluster
         ) -> Iterator[list[Machine]]:
    """Two machines on a NATS cluster of the test's own."""
    with running([machine_on(own_cluster, env, scratch, name) for name in ("a", "b")]) as two:
        yield two


class Writer(threading.Thread):
    """Writes units one at a time until stopped; remembers what it was told was written."""

    def __init__(self, machine: Machine, context: str) -> None:
        super().__init__(daemon=True)
        self.machine, self.context = machine, context
        self.acknowledged: list[str] = []
        self.refused: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        number = 0
        while not self.halt.is_set():
            try:
                with self.machine.client() as engram:
                    while not self.halt.is_set():
                        unit = engram.create_unit(self.context, "MESSAGE", f"w{number}")
                        self.acknowledged.append(unit.id)
                        number += 1
            except (EngramError, OSError) as exc:
                self.refused.append(str(exc))
                number += 1
                self.halt.wait(0.05)

    def stop(self) -> None:
        self.halt.set()
        self.join(WAIT)


def held_by(machine: Machine, unit_ids: list[str]) -> list[str]:
    """The ids of *unit_ids* that *machine* does not have."""
    with machine.client() as engram:
        found = engram.get_units(unit_ids)
    return found.missing


def test_losing_one_nats_node_loses_nothing_and_writes_go_on(
        pair: list[Machine], own_cluster: NatsCluster) -> None:
    a, b = pair
    writer = Writer(a, "k1")
    writer.start()
    wait_until(lambda: len(writer.acknowledged) >= 20, "writes before the kill")
    own_cluster.stop(0, kill=True)
    count = len(writer.acknowledged)
    wait_until(lambda: len(writer.acknowledged) >= count + 50, "writes after the kill",
               timeout=30)
    writer.stop()
    wait_until(lambda: not held_by(b, writer.acknowledged), "b to have every write",
               timeout=30)
    assert not held_by(a, writer.acknowledged)


def test_without_a_quorum_writes_are_refused_and_resume_after(
        pair: list[Machine], own_cluster: NatsCluster) -> None:
    a, b = pair
    with a.client() as engram:
        engram.create_unit("q", "MESSAGE", "before")
    wait_until(lambda: units_of(b, "q") != [], "b to have the first write")
    own_cluster.stop(1)
    own_cluster.stop(2)
    refused = a.cli("unit", "create", "-c", "q", "-p", "during")
    assert refused.returncode != 0
    assert "unavailable" in refused.stderr or "cluster" in refused.stderr
    # Reads go on, locally, and say they may be stale (once b has noticed: its next
    # announcement fails, within 5 s).
    wait_until(lambda: "may be stale" in b.cli("unit", "list", "-c", "q").stderr,
               "b to say its reads may be stale", timeout=30)
    listed = b.cli("unit", "list", "-c", "q", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["payload"] for line in listed.stdout.splitlines()] == [
        "before"]
    report = b.cli("cluster", "status", "--json")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["status"]["reachable"] is False
    doctor = b.cli("doctor", "--json")
    cluster = [json.loads(line) for line in doctor.stdout.splitlines()
               if json.loads(line)["check"] == "cluster"]
    assert doctor.returncode == 1 and cluster[0]["status"] == "fail", cluster
    own_cluster.start(1, 2)
    own_cluster.wait_healthy()

    def writes() -> bool:
        return a.cli("unit", "create", "-c", "q", "-p", "after").returncode == 0

    wait_until(writes, "writes to resume", timeout=60)
    wait_until(lambda: [p for _, _, p in units_of(b, "q")][-1] == "after",
               "b to see the write")
    payloads = [p for _, _, p in units_of(b, "q")]
    assert payloads[0] == "before" and "after" in payloads


def test_a_killed_engramd_loses_no_acknowledged_write(pair: list[Machine]) -> None:
    a, b = pair
    writers = [Writer(a, "kill") for _ in range(3)]
    for writer in writers:
        writer.start()
    wait_until(lambda: sum(len(w.acknowledged) for w in writers) >= 60, "writes")
    a.kill()
    for writer in writers:
        writer.stop()
    acknowledged = [unit for writer in writers for unit in writer.acknowledged]
    wait_until(lambda: not held_by(b, acknowledged), "b to have every acknowledged write",
               timeout=30)
    a.start()  # and a, back, has them too, once each
    wait_until(lambda: not held_by(a, acknowledged), "a to have them after its restart")
    seqs = [seq for seq, _, _ in units_of(a, "kill")]
    assert seqs == sorted(set(seqs))
    assert units_of(a, "kill") == units_of(b, "kill")


def test_cluster_status_shows_the_stream_the_view_and_the_machines(
        machines: list[Machine]) -> None:
    a = machines[0]
    with a.client() as engram:
        engram.create_unit("s", "MESSAGE", "x")

    def report() -> dict[str, Any]:
        done = a.cli("cluster", "status", "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    wait_until(lambda: len(report()["machines"]) == 3, "every machine to announce itself")
    found = report()
    state = found["status"]
    assert state["reachable"] and state["replicas"] == 3 and len(state["peers"]) == 2
    assert state["lag"] == 0 and state["view_stream_seq"] == state["stream_last_seq"] >= 1
    assert state["leases_synced"] is True
    assert {m["socket"] for m in found["machines"]} == {m.socket for m in machines}
    plain = a.cli("cluster", "status")
    assert plain.returncode == 0 and state["stream"] in plain.stdout
    assert "leases" in plain.stdout and "NOT read" not in plain.stdout


def test_cluster_status_on_one_machine_says_it_is_not_clustered(engramd: Any) -> None:
    done = run_cli(engramd.env, "cluster", "status")
    assert done.returncode == 2, done.stderr
    assert "not in cluster mode" in done.stderr


def test_doctor_checks_the_cluster_and_warns_on_a_stream_of_one_replica(
        env: dict[str, str], scratch: str, nats_cluster: NatsCluster) -> None:
    alone = machine_on(nats_cluster, env, scratch, "r1", ENGRAM_CLUSTER_REPLICAS="1",
                       ENGRAM_CLUSTER_DEPLOYMENT="r" + uuid.uuid4().hex[:8])
    with running([alone]):
        with alone.client() as engram:
            engram.create_unit("d", "MESSAGE", "x")
        done = alone.cli("doctor", "--json")
        findings = {f["check"]: f for f in map(json.loads, done.stdout.splitlines())}
        assert findings["cluster"]["status"] == "warn", findings["cluster"]
        assert "1 replica" in findings["cluster"]["detail"]
        assert findings["leases"]["status"] == "ok", findings["leases"]
        stats = json.loads(alone.cli("stats", "--json").stdout)
        assert stats["gauges"]["cluster_reachable"] == 1, stats["gauges"]
        assert stats["gauges"]["cluster_view_lag_messages"] == 0, stats["gauges"]
        # No log of its own in cluster mode: the store and indexes are its parts on disk.
        assert 'disk_bytes{part="wal"}' not in stats["gauges"]
        assert stats["gauges"]['disk_bytes{part="store"}'] > 0


def test_a_single_machine_journal_moves_into_a_cluster(
        engramd: Any, machines: list[Machine], tmp_path: os.PathLike[str]) -> None:
    """docs/cluster.md's migration: ``unit export --all`` on the old machine, ``unit
    import`` on one machine of the cluster; every machine then has the units, with their
    ids, times, agents and relationships (one across contexts)."""
    with Client(engramd.socket, agent_id="alice", autostart=False, env={}) as old:
        first = old.create_unit("design", "MESSAGE", "the plan")
        second = old.create_unit("build", "TOOL_RESULT", "built it",
                                 relationships=[("DEPENDS_ON", first.id)])
        old.create_unit("design", "MESSAGE", "looks good")
    dump = os.path.join(str(tmp_path), "journal.jsonl")
    with open(dump, "w") as file:
        exported = subprocess.run([sys.executable, "-m", "engram_cli", "unit", "export",
                                   "--all"], env=engramd.env, stdout=file, text=True,
                                  timeout=WAIT * 3, check=False)
    assert exported.returncode == 0
    a, b, _ = machines
    imported = a.cli("unit", "import", dump)
    assert imported.returncode == 0, imported.stderr
    wait_until(lambda: len(units_of(b, "design")) == 2 and len(units_of(b, "build")) == 1,
               "b to have the imported units")
    (built,) = units_of(b, "build")
    assert built[1] == second.id
    with b.client() as engram:
        moved = engram.get_unit(second.id)
    assert moved.ts == second.ts and moved.agent_id == "alice"
    assert [rel.target for rel in moved.relationships] == [first.id]


def test_a_deployment_name_with_upper_case_is_refused_in_one_line(
        env: dict[str, str], nats_cluster: NatsCluster) -> None:
    """The stream's name is the upper-cased deployment's and the buckets' the name as
    given: "try" and "TRY" shared a journal and not leases (the cluster's trial took one
    lease on both machines at once)."""
    upper = {**env, "ENGRAM_CLUSTER_SERVERS": nats_cluster.servers,
             "ENGRAM_CLUSTER_DEPLOYMENT": "TRY"}
    refused = subprocess.run([sys.executable, "-m", "engramd"], env=upper,
                             capture_output=True, text=True, timeout=WAIT * 3, check=False)
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert "level=error" in line and "cluster.deployment 'TRY'" in line, line
    assert "lowercase" in line, line


def test_a_data_dir_of_the_other_mode_is_refused(
        engramd: Any, env: dict[str, str], scratch: str, nats_cluster: NatsCluster) -> None:
    """A single machine's journal is not a view of a cluster's stream (its seqs would not
    follow the stream's), nor the reverse: engramd refuses to start on it, and `daemon
    start` says why."""
    with Client(engramd.socket, agent_id="alice", autostart=False, env={}) as engram:
        engram.create_unit("c", "MESSAGE", "written on one machine")
    assert engramd.stop() == 0
    clustered = {**engramd.env, "ENGRAM_CLUSTER_SERVERS": nats_cluster.servers,
                 "ENGRAM_CLUSTER_DEPLOYMENT": "r" + uuid.uuid4().hex[:8]}
    refused = subprocess.run([sys.executable, "-m", "engramd"], env=clustered,
                             capture_output=True, text=True, timeout=WAIT * 3, check=False)
    assert refused.returncode == 1
    assert "holds a single machine's journal" in refused.stderr, refused.stderr
    started = run_cli(clustered, "daemon", "start")
    assert started.returncode == 69
    assert "stopped while starting" in started.stderr
    assert "single machine's journal" in started.stderr, started.stderr

    (view,) = deployment_of(nats_cluster, env, scratch, ("v",))
    with running([view]), view.client() as engram:
        engram.create_unit("c", "MESSAGE", "written in a cluster")
    alone = {k: v for k, v in view.env.items() if k != "ENGRAM_CLUSTER_SERVERS"}
    refused = subprocess.run([sys.executable, "-m", "engramd"], env=alone,
                             capture_output=True, text=True, timeout=WAIT * 3, check=False)
    assert refused.returncode == 1
    assert "view of a cluster's journal" in refused.stderr, refused.stderr


def test_a_view_is_checkpointed_as_it_applies_so_a_kill_does_not_replay_it_all(
        env: dict[str, str], scratch: str, nats_cluster: NatsCluster) -> None:
    a, b = deployment_of(nats_cluster, env, scratch, ("a", "b"),
                         b={"ENGRAM_WAL_CHECKPOINT_BYTES": "4096"})
    with running([a, b]):
        with a.client() as engram:  # written on a: b only applies them
            for number in range(60):
                engram.create_unit("many", "MESSAGE", f"unit {number} " + "x" * 200)
        wait_until(lambda: b.view_seq() >= a.view_seq(), "b to apply them")

        def checkpointed() -> int:
            with b.client() as engram:
                journal = engram.status().journal
            assert journal is not None
            return journal.checkpoint_seq

        wait_until(lambda: checkpointed() > 0, "b's store to be flushed")
        b.kill()
        b.start()
        following = [line for line in engramd_log(b.env).read_text().splitlines()
                     if "following stream" in line]
        assert following and " from message 1 " not in following[-1], following[-1]
        assert units_of(b, "many") == units_of(a, "many")


def test_daemon_stop_in_cluster_mode_logs_no_traceback(machines: list[Machine]) -> None:
    """engramd stops with a watcher, a waiter in line and a follower of the stream: the
    requests to the cluster cancelled as its connection closes end quietly (nats-py's
    ConnectionClosedError was logged as a "Task exception was never retrieved")."""
    a, b, _ = machines
    with b.client("holder") as engram:
        engram.acquire_lock("res", ttl=30)
        engram.create_unit("c", "MESSAGE", "before the stop")
    quiet = {"env": a.env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    others = [subprocess.Popen([sys.executable, "-m", "engram_cli", "watch"], **quiet),
              subprocess.Popen([sys.executable, "-m", "engram_cli", "lock", "acquire", "res",
                                "--wait", "60"], **quiet)]
    try:
        with a.client("observer") as engram:
            wait_until(lambda: len(engram.get_lock("res").waiters) == 1, "a waiter in line")
        stopped = a.cli("daemon", "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert a.process is not None
        a.process.wait(WAIT * 2)
    finally:
        for process in others:
            process.kill()
            process.wait()
    said = engramd_log(a.env).read_text()
    assert "Traceback" not in said and "never retrieved" not in said, said


def test_a_data_dir_of_another_deployment_is_refused_in_one_line(
        env: dict[str, str], scratch: str, nats_cluster: NatsCluster) -> None:
    """A machine's view holds its deployment's units and stream position: started with
    another deployment's name its units were taken for the new stream's (or, ahead of
    that stream, every write failed as too contended). engramd refuses to start on it."""
    (first,) = deployment_of(nats_cluster, env, scratch, ("v",))
    with running([first]), first.client() as engram:
        engram.create_unit("c", "MESSAGE", "written in the first deployment")
    old = first.env["ENGRAM_CLUSTER_DEPLOYMENT"]
    other = {**first.env, "ENGRAM_CLUSTER_DEPLOYMENT": "r" + uuid.uuid4().hex[:8]}
    refused = subprocess.run([sys.executable, "-m", "engramd"], env=other,
                             capture_output=True, text=True, timeout=WAIT * 3, check=False)
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert "level=error" in line and f"deployment '{old}'" in line, line
    assert other["ENGRAM_CLUSTER_DEPLOYMENT"] in line and "data dir of its own" in line, line
    with running([first]):  # (its own deployment's name still starts it)
        assert len(units_of(first, "c")) == 1


def test_a_view_of_a_stream_made_anew_stops_following_and_says_so(
        env: dict[str, str], scratch: str, nats_cluster: NatsCluster) -> None:
    """The deployment's stream deleted and made again under the same name is another
    journal: a machine's view of the old one stops following (status, doctor and every
    write say to start with an empty data dir), instead of mixing its units into the new
    one's or failing every write as contended."""
    (view,) = deployment_of(nats_cluster, env, scratch, ("v",))
    with running([view]), view.client() as engram:
        for number in range(3):
            engram.create_unit("c", "MESSAGE", f"written in the first stream {number}")
    stream = "ENGRAM_" + view.env["ENGRAM_CLUSTER_DEPLOYMENT"].upper()

    async def delete_stream() -> None:
        nc = await nats.connect(servers=nats_cluster.servers.split(","))
        try:
            await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()

    asyncio.run(delete_stream())
    view.reaches_cluster = False
    with running([view]), view.client() as engram:
        wait_until(lambda: engram.status().cluster.failure is not None,  # type: ignore[union-attr]
                   "the view to stop following")
        failure = engram.status().cluster.failure  # type: ignore[union-attr]
        assert "made anew" in failure and "empty data dir" in failure, failure
        with pytest.raises(EngramError, match="made anew"):
            engram.create_unit("c", "MESSAGE", "written in the second stream")


def test_a_message_that_is_not_an_engram_batch_is_passed_over_by_every_view(
        env: dict[str, str], scratch: str, nats_cluster: NatsCluster) -> None:
    """Bytes written on the journal's subject (or a machine's record) by hand with the
    cluster's credentials, an empty batch far ahead among them: each view logs them once
    and goes on. A view stopped at such
    a message stopped every write on every machine, for good; a record of the machines
    bucket that was not a machine's made `cluster status` an internal error."""
    a, b = deployment_of(nats_cluster, env, scratch, ("a", "b"))
    deployment = a.env["ENGRAM_CLUSTER_DEPLOYMENT"]
    with running([a, b]):
        with a.client() as engram:
            engram.create_unit("c", "MESSAGE", "before")

        async def write_junk() -> None:
            nc = await nats.connect(servers=nats_cluster.servers.split(","))
            try:
                js = nc.jetstream()
                await js.publish(f"engram.{deployment}.journal", b"\xff")
                await js.publish(f"engram.{deployment}.journal", b"\x93\x01\x02",
                                 headers={"Engram-Fences": "not base64 at all!"})
                await js.publish(f"engram.{deployment}.journal", b"\x93\xcd\x03\xe8\x90\x80")
                await js.publish(f"$KV.engram_{deployment}_machines.forged", b"{not json")
                await js.publish(f"$KV.engram_{deployment}_machines.huge", json.dumps(dict(
                    machine="huge", host="h", socket="s", stream_seq=2**64, applied_seq=1,
                    version="x")).encode())
            finally:
                await nc.close()

        asyncio.run(write_junk())
        for machine in (a, b):
            with machine.client() as engram:
                engram.create_unit("c", "MESSAGE", f"after, on {machine.name}")
        wait_until(lambda: len(units_of(a, "c")) == len(units_of(b, "c")) == 3,
                   "both views past the junk")
        assert units_of(a, "c") == units_of(b, "c")
        status = a.cli("cluster", "status")
        assert status.returncode == 0, status.stderr
        said = engramd_log(a.env).read_text()
        assert said.count("is not an engram batch") == 3 and "Traceback" not in said, said


def test_a_view_killed_and_restarted_replays_a_long_stream_whole(
        env: dict[str, str], scratch: str, nats_cluster: NatsCluster) -> None:
    """A kill -9 before the store's first checkpoint replays the stream from message 1:
    thousands of messages pushed faster than the view applied them overflowed the
    subscription's queue, nats-py dropped the overflow after counting it as delivered,
    and the view stalled short of the stream's end (writes refused as "behind and not
    catching up", status saying writes accepted) or took the hole for a journal gap."""
    a, b = deployment_of(nats_cluster, env, scratch, ("a", "b"))
    count = 6000
    lines = os.path.join(scratch, "bulk.jsonl")
    with open(lines, "w") as file:
        for number in range(count):
            file.write(json.dumps({"context_id": "bulk", "payload": f"unit {number}"}) + "\n")
    with running([a, b]):
        importing = subprocess.Popen(
            [sys.executable, "-m", "engram_cli", "unit", "import", "--batch", "1", lines],
            env=a.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            # (A twentieth: the import writes one unit at a time, 2,000 took over 30 s in
            # a full run beside other work; the replay after the kill is the test's load.)
            wait_until(lambda: b.view_seq() > count // 20, "b to apply some", WAIT * 6)
            b.kill()  # in the middle of the import: b's view was applying
            b.start()
        finally:
            _, said = importing.communicate(timeout=WAIT * 6)
        assert importing.returncode == 0, said
        for kill in range(2):  # (the second one while idle)
            if kill:
                b.kill()
                b.start()
            # (Bounded generously: 6,000 messages replayed on a loaded machine.)
            wait_until(lambda: b.view_seq() >= a.view_seq(), "b to replay the stream",
                       WAIT * 6)
            with b.client() as engram:
                assert engram.status().cluster.failure is None  # type: ignore[union-attr]
        with b.client() as engram:
            engram.create_unit("bulk", "MESSAGE", "written after the restart")
        wait_until(lambda: a.view_seq() >= b.view_seq(), "a to apply it")
        assert units_of(b, "bulk") == units_of(a, "bulk")
        for machine in (a, b):
            with machine.client() as engram:
                assert engram.status().journal.units == count + 1  # type: ignore[union-attr]


def test_a_stalled_view_is_told_by_status_and_doctor_until_it_catches_up(
        env: dict[str, str], scratch: str, nats_cluster: NatsCluster) -> None:
    """A view behind the stream and not moving said nothing: cluster status said writes
    accepted and doctor found no failure while every write timed out (rc 69)."""
    stall = os.path.join(scratch, "stall")
    a, b = deployment_of(nats_cluster, env, scratch, ("a", "b"),
                         b={"STALL_FILE": stall})
    b.module = "tests.helpers.stalled_view_engramd"
    with running([a, b]):
        open(stall, "w").close()
        with a.client() as engram:
            engram.create_unit("c", "MESSAGE", "b does not see this one yet")

        def refused() -> str | None:
            with b.client() as engram:
                return engram.status().journal.write_error  # type: ignore[union-attr]

        wait_until(lambda: "not catching up" in (refused() or ""), "b to say it stalled",
                   WAIT * 3)
        said = b.cli("cluster", "status")
        assert "not catching up" in said.stdout, said.stdout
        doctor = b.cli("doctor")
        assert doctor.returncode != 0 and "not catching up" in doctor.stdout, doctor.stdout
        os.unlink(stall)

        def cluster_of(machine: Machine) -> object:
            with machine.client() as engram:
                return engram.status().cluster

        wait_until(lambda: b.view_seq() >= a.view_seq(), "b to catch up", WAIT * 2,
                   seen=lambda: (cluster_of(a), cluster_of(b)))
        # (Polled: on a loaded machine b's next look at the servers may come a moment late.)
        wait_until(lambda: refused() is None, "b to take writes again", WAIT * 2,
                   seen=lambda: (cluster_of(a), cluster_of(b)))
        with b.client() as engram:
            engram.create_unit("c", "MESSAGE", "written once b caught up")
        assert units_of(b, "c") == units_of(a, "c")
