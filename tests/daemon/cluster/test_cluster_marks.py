"""Cluster mode: an agent's inbox and brief marks and its named cursors are the same
on every machine (the marks bucket, SPECS §9), and `engram agents` says which machine
each session is on."""

from __future__ import annotations

import json
import threading

import pytest

from engramd.protocol import UnitCreated
from tests.clustermachines import Machine
from tests.conftest import run_cli, wait_until

pytest.importorskip("nats", reason="cluster mode needs the engram-journal[cluster] extra")
pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def unread_on(machine: Machine, agent: str) -> int:
    with machine.client(agent) as engram:
        return engram.unread().unread


def test_messages_read_on_one_machine_are_read_on_every_machine(
        machines: list[Machine]) -> None:
    a, b, c = machines
    with a.client("bob") as bob:
        sent = [bob.send_message("alice", f"note {number}", new_recipients=True).id
                for number in range(3)]
    for machine in machines:
        wait_until(lambda m=machine: unread_on(m, "alice") == 3,  # type: ignore[misc]
                   f"machine {machine.name} to file the messages")
    with a.client("alice") as alice:
        page = alice.inbox(limit=2)
    assert [unit.id for unit in page.messages] == sent[:2]
    wait_until(lambda: unread_on(b, "alice") == 1, "machine b to see alice's mark")
    primed = run_cli({**b.env, "ENGRAM_AGENT": "alice"}, "prime", "--format", "json")
    assert primed.returncode == 0, primed.stderr
    brief = json.loads(primed.stdout)
    assert brief["unread"] == 1, brief
    with b.client("alice") as alice:
        page = alice.inbox()
    assert [unit.id for unit in page.messages] == sent[2:]
    wait_until(lambda: unread_on(c, "alice") == 0, "machine c to see alice's mark")
    with c.client("alice") as alice:
        assert alice.inbox().messages == []


def test_two_machines_reading_one_inbox_at_once_hand_each_message_out_once(
        machines: list[Machine]) -> None:
    a, b, _ = machines
    count = 30
    with a.client("bob") as bob:
        sent = {bob.send_message("carol", f"job {number}", new_recipients=True).id
                for number in range(count)}
    for machine in (a, b):
        wait_until(lambda m=machine: unread_on(m, "carol") == count,  # type: ignore[misc]
                   f"machine {machine.name} to file the messages")
    taken: dict[str, list[str]] = {"a": [], "b": []}

    def read(machine: Machine) -> None:
        with machine.client("carol") as carol:
            while True:
                page = carol.inbox(limit=1)
                if not page.messages:
                    return
                taken[machine.name] += [unit.id for unit in page.messages]

    threads = [threading.Thread(target=read, args=(machine,)) for machine in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    together = taken["a"] + taken["b"]
    assert sorted(together) == sorted(sent)  # each once, none lost


def test_a_cursor_acknowledged_on_one_machine_resumes_on_another(
        machines: list[Machine]) -> None:
    a, b, _ = machines
    with a.client("dana") as dana:
        written = [dana.create_unit("feed", "REASONING", f"item {n}") for n in range(4)]
    wait_until(lambda: b.view_seq() >= a.view_seq(), "machine b to catch up")
    first: list[UnitCreated] = []
    with a.client("dana") as dana:
        feed = dana.subscribe(contexts=["feed"], kinds=["unit.created"], types=["REASONING"],
                              after=0, cursor="reader")
        for event in feed:
            if isinstance(event, UnitCreated):
                first.append(event)
            if len(first) == 2:
                break
        feed.close()
        dana.ack_cursor("reader", first[-1].seq)
    assert [event.unit.id for event in first] == [unit.id for unit in written[:2]]
    # On b, at once: the acknowledgement was shared before it was answered.
    resumed = run_cli({**b.env, "ENGRAM_AGENT": "dana"}, "wait", "-c", "feed", "-t", "REASONING",
                      "--cursor", "reader", "--json", "--timeout", "20")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["unit"]["id"] == written[2].id
    # ... and that wait's acknowledgement reaches a.
    again = run_cli({**a.env, "ENGRAM_AGENT": "dana"}, "wait", "-c", "feed", "-t", "REASONING",
                    "--cursor", "reader", "--json", "--timeout", "20")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["unit"]["id"] == written[3].id


def test_agents_says_which_machine_each_session_is_on(machines: list[Machine]) -> None:
    a, b, _ = machines
    with a.client("erin") as erin:
        erin.announce_session(harness="test")
        (info,) = [agent for agent in erin.list_agents() if agent.agent == "erin"]
    machine_ids = {session.machine for session in info.sessions}
    assert len(machine_ids) == 1 and "" not in machine_ids
    with b.client() as engram:
        status = engram.status()
    assert status.cluster is not None and status.cluster.machine not in machine_ids
