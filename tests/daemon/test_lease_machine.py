"""A hypothesis state machine over the lease manager of a real daemon.

Agents acquire (one or several resources, bound to their connection or not),
renew, release, release what is not theirs, disconnect, let a short lease
expire, queue behind a holder, close a waiting cycle, and the daemon restarts.
Each agent has one connection at a time, and each connection is a session of
its own: after a reconnect the agent's old leases belong to a session that is
gone (another session of the same agent waits for them like anyone) until a
renewal adopts them. After every step the daemon's lock table is exactly the
model's: never two holders, waiters served first come first served, a cycle
refused with ``deadlock`` instead of waiting.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engram_cli.client import Client
from engram_cli.client.errors import Conflict, Deadlock, Forbidden, LockHeld
from engramd.protocol import Lease
from tests.conftest import WAIT, ThreadedDaemon, make_config, start_threaded, wait_until

AGENTS = ("ann", "bob", "cat")
RESOURCES = ("res/1", "res/2", "res/3")
TTL = 120.0


@dataclass
class Held:
    agent: str
    lease: Lease
    session: int
    """The model's number for the connection that holds it."""


class Waiter(threading.Thread):
    """One agent's waiting acquire, on a connection of its own."""

    def __init__(self, socket_path: str, agent: str, resource: str,
                 pid: int | None = None) -> None:
        super().__init__(daemon=True)
        self.client = Client(socket_path, agent_id=agent, autostart=False, timeout=WAIT)
        self.client.connect()
        self.resource = resource
        self.pid = pid
        self.outcome: Lease | BaseException | None = None

    def run(self) -> None:
        try:
            (self.outcome,) = self.client.acquire_lock(self.resource, ttl=TTL, wait=WAIT,
                                                       pid=self.pid)
        except BaseException as exc:  # handed to the test thread
            self.outcome = exc

    def result(self) -> Lease:
        self.join(WAIT)
        assert isinstance(self.outcome, Lease), self.outcome
        return self.outcome


class LeaseMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.scratch = tempfile.mkdtemp(prefix="eg-", dir="/tmp")
        env = {"ENGRAM_SOCKET": os.path.join(self.scratch, "s.sock"),
               "ENGRAM_DATA_DIR": os.path.join(self.scratch, "data")}
        self.config = make_config(env)
        self.daemon: ThreadedDaemon = start_threaded(self.config)
        self.clients: dict[str, Client] = {}
        self.sessions: dict[str, int] = {}
        self.connections = 0
        self.held: dict[str, Held] = {}
        self.last_token: dict[str, int] = {}

    def client(self, agent: str) -> Client:
        if agent not in self.clients:
            client = Client(self.config.socket, agent_id=agent, autostart=False, timeout=WAIT)
            client.connect()
            self.clients[agent] = client
            self.connections += 1
            self.sessions[agent] = self.connections
        return self.clients[agent]

    def session(self, agent: str) -> int:
        self.client(agent)
        return self.sessions[agent]

    def grant(self, agent: str, lease: Lease, session: int = 0) -> None:
        assert lease.fencing_token > self.last_token.get(lease.resource, 0), "token went back"
        self.last_token[lease.resource] = lease.fencing_token
        self.held[lease.resource] = Held(agent, lease, session)

    def free(self) -> list[str]:
        return [r for r in RESOURCES if r not in self.held]

    # -- rules --------------------------------------------------------------

    @rule(agent=st.sampled_from(AGENTS),
          wanted=st.lists(st.sampled_from(RESOURCES), min_size=1, max_size=2, unique=True),
          bind=st.booleans())
    def acquire(self, agent: str, wanted: list[str], bind: bool) -> None:
        holders = {(self.held[r].agent, self.held[r].session) for r in wanted if r in self.held}
        client = self.client(agent)
        if not holders:
            leases = client.acquire_lock(wanted, ttl=TTL, bind_connection=bind)
            assert sorted(lease.resource for lease in leases) == sorted(wanted)
            for lease in leases:
                assert lease.holder == agent and lease.bound_to_connection == bind
                self.grant(agent, lease, self.session(agent))
        elif (agent, self.session(agent)) in holders:  # asking again in the same session
            with pytest.raises(Conflict):
                client.acquire_lock(wanted, ttl=TTL)
        else:  # held by others, or by a session of this agent that is gone
            with pytest.raises(LockHeld):
                client.acquire_lock(wanted, ttl=TTL)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        resource = data.draw(st.sampled_from(sorted(self.held)))
        held = self.held.pop(resource)
        self.client(held.agent).release_lock(held.lease.lock_id)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        held = self.held[data.draw(st.sampled_from(sorted(self.held)))]
        renewed = self.client(held.agent).renew_lock(held.lease.lock_id, ttl=TTL)
        assert renewed.fencing_token == held.lease.fencing_token
        held.lease = renewed
        # A lease whose connection has gone is adopted by the renewing one (the
        # agent has one connection at a time: its own session, or a gone one).
        held.session = self.session(held.agent)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release_someone_elses(self, data: st.DataObject) -> None:
        held = self.held[data.draw(st.sampled_from(sorted(self.held)))]
        other = data.draw(st.sampled_from([a for a in AGENTS if a != held.agent]))
        with pytest.raises(Forbidden):
            self.client(other).release_lock(held.lease.lock_id)

    @rule(agent=st.sampled_from(AGENTS))
    def disconnect(self, agent: str) -> None:
        client = self.clients.pop(agent, None)
        if client is None:
            return
        client.close()
        session = self.sessions.pop(agent)
        for resource, held in list(self.held.items()):
            if held.session == session and held.lease.bound_to_connection:
                del self.held[resource]
                wait_until(lambda r=resource: self.lock_holder(r) is None,  # type: ignore[misc]
                           f"{resource} released with its connection")

    @precondition(lambda self: len(self.held) < len(RESOURCES))
    @rule(agent=st.sampled_from(AGENTS), data=st.data())
    def let_expire(self, agent: str, data: st.DataObject) -> None:
        resource = data.draw(st.sampled_from(self.free()))
        (lease,) = self.client(agent).acquire_lock(resource, ttl=0.2)
        self.grant(agent, lease, self.session(agent))
        del self.held[resource]
        wait_until(lambda: self.lock_holder(resource) is None, f"{resource} to expire")

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def queue_behind(self, data: st.DataObject) -> None:
        resource = data.draw(st.sampled_from(sorted(self.held)))
        holder = self.held[resource]
        # Waiters come on connections of their own: even the holder's own agent
        # waits in line like anyone, being another session.
        first, second = data.draw(st.permutations(AGENTS))[:2]
        waiters = []
        for agent in (first, second):
            waiter = Waiter(self.config.socket, agent, resource)
            waiter.start()
            waiters.append(waiter)
            wait_until(lambda a=agent: a in self.waiting(resource),  # type: ignore[misc]
                       f"{agent} in line")
        assert self.waiting(resource) == [first, second]
        self.client(holder.agent).release_lock(holder.lease.lock_id)
        for waiter in waiters:  # first come, first served
            lease = waiter.result()
            assert lease.holder == waiter.client.agent_id
            self.grant(waiter.client.agent_id, lease)
            waiter.client.release_lock(lease.lock_id)
            waiter.client.close()
        del self.held[resource]

    @precondition(lambda self: len(self.free()) >= 2)
    @rule(data=st.data())
    def close_a_cycle(self, data: st.DataObject) -> None:
        one, two = data.draw(st.permutations(self.free()))[:2]
        ann, bob = data.draw(st.permutations(AGENTS))[:2]
        me = os.getpid()  # ann's two connections are one session: this process's
        (mine,) = self.client(ann).acquire_lock(one, ttl=TTL, pid=me)
        (theirs,) = self.client(bob).acquire_lock(two, ttl=TTL)
        waiter = Waiter(self.config.socket, ann, two, pid=me)  # ann waits for bob's...
        waiter.start()
        wait_until(lambda: ann in self.waiting(two), "ann in line")
        with pytest.raises(Deadlock):  # ...so bob waiting for ann's would close a cycle
            self.client(bob).acquire_lock(one, ttl=TTL, wait=WAIT)
        self.client(bob).release_lock(theirs.lock_id)
        granted = waiter.result()
        waiter.client.release_lock(granted.lock_id)
        waiter.client.close()
        self.client(ann).release_lock(mine.lock_id)
        for lease in (mine, theirs, granted):
            self.last_token[lease.resource] = max(self.last_token.get(lease.resource, 0),
                                                  lease.fencing_token)

    @rule()
    def restart(self) -> None:
        # Closing the connections first is a disconnect of each: their bound leases end
        # (the daemon only keeps bound leases whose connection outlived it).
        for agent in list(self.clients):
            self.disconnect(agent)
        self.daemon.stop()
        self.daemon = start_threaded(self.config)

    # -- the daemon agrees with the model ------------------------------------

    def lock_holder(self, resource: str) -> str | None:
        with Client(self.config.socket, autostart=False, timeout=WAIT) as probe:
            lease = probe.get_lock(resource).lease
        return None if lease is None else lease.holder

    def waiting(self, resource: str) -> list[str]:
        with Client(self.config.socket, autostart=False, timeout=WAIT) as probe:
            return [waiter.agent for waiter in probe.get_lock(resource).waiters]

    @invariant()
    def table_matches_the_model(self) -> None:
        with Client(self.config.socket, autostart=False, timeout=WAIT) as probe:
            table = {state.resource: state.lease for state in probe.list_locks()
                     if state.lease is not None}
        assert {r: lease.lock_id for r, lease in table.items()} == \
            {r: held.lease.lock_id for r, held in self.held.items()}

    def teardown(self) -> None:
        for client in self.clients.values():
            client.close()
        self.daemon.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)


LeaseMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("ENGRAM_LEASE_MACHINE_EXAMPLES", "15")),
    stateful_step_count=20, deadline=None)
test_lease_state_machine = LeaseMachine.TestCase
