"""A connection that speaks for many agents (``as``, what the gateway holds): each
request proves its own agent, is a session of its own, and each subscription on it
pushes no further ahead than its grants (``Hello.window``)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from engram_cli.client import requests
from engram_cli.client.asynchronous import AsyncClient, connect_to
from engram_cli.client.errors import BadRequest, Conflict, Forbidden
from engram_cli.client.settings import Target
from engramd.config import DaemonConfig
from engramd.protocol import (
    AddTask,
    ClaimTask,
    CreateToken,
    CreateUnits,
    Ended,
    EventPush,
    FinishTask,
    GetTask,
    GrantPushes,
    Heartbeat,
    Ping,
    Pong,
    Push,
    ReleaseTask,
    SpeakFor,
    Subscribe,
    Subscribed,
    TaskFound,
    UnitsCreated,
)
from engramd.server import Server


def _target(config: DaemonConfig, agent: str, *, admin: bool = True, window: int = 0,
            token: str | None = None) -> Target:
    return Target(socket_path=config.socket, agent_id=agent, client_name="gateway-test",
                  autostart=False, token=token, admin=admin, env={}, window=window)


async def spoken(client: AsyncClient, request: Any, **who: Any) -> Any:
    return await client.call(SpeakFor(request=request, **who))


async def test_each_request_proves_its_own_agent(daemon: Server, config: DaemonConfig) -> None:
    async with connect_to(_target(config, "gw")) as gw:
        alice_token = (await gw.create_token("alice")).token
        draft = requests.draft("spoken", "MESSAGE", "hi")
        by_name = await spoken(gw, CreateUnits(units=[draft]), agent_id="carol",
                               delegated=True)
        assert isinstance(by_name, UnitsCreated)
        # Attributed to the agent, with no process of this machine (not the gateway's).
        assert (by_name.units[0].agent_id, by_name.units[0].pid) == ("carol", 0)
        by_token = await spoken(gw, CreateUnits(units=[draft]), token=alice_token)
        assert by_token.units[0].agent_id == "alice"
        with pytest.raises(Forbidden, match="unknown or revoked"):
            await spoken(gw, Ping(), token="egt_00_forged")
        with pytest.raises(Forbidden, match="belongs to agent alice"):
            await spoken(gw, Ping(), agent_id="bob", token=alice_token)
        with pytest.raises(BadRequest, match="bad agent id"):
            await spoken(gw, Ping(), agent_id="bob\x1b[31m", delegated=True)
        with pytest.raises(BadRequest, match="pid"):
            await spoken(gw, ClaimTask(pid=1), agent_id="carol", delegated=True)
        with pytest.raises(Forbidden, match="admin token"):
            await spoken(gw, CreateToken(agent="mallory"), agent_id="carol",
                         delegated=True)
        assert isinstance(await gw.call(Ping()), Pong)  # refusals left it serving
    async with connect_to(_target(config, "mallory", admin=False)) as plain:
        with pytest.raises(Forbidden, match="only a connection holding the admin token"):
            await spoken(plain, Ping(), agent_id="alice", delegated=True)


async def test_a_claim_made_for_an_agent_outlives_the_connection_and_needs_its_token(
        daemon: Server, config: DaemonConfig) -> None:
    who = {"agent_id": "bob", "delegated": True}
    async with connect_to(_target(config, "gw")) as gw:
        added = await spoken(gw, AddTask(title="ship it"), **who)
        claimed = await spoken(gw, ClaimTask(task_id=added.task.id), **who)
        assert isinstance(claimed, TaskFound) and claimed.task.claim is not None
        claim = claimed.task.claim
        assert not claim.bound_to_connection and claim.session.endswith("/3")  # hello 1
    # The connection that made it is gone: the claim is not.
    async with connect_to(_target(config, "gw")) as gw:
        again = await spoken(gw, GetTask(task_id=added.task.id), **who)
        assert again.task.state == "claimed" and again.task.claim.lock_id == claim.lock_id
        for wrong in (1, claim.fencing_token + 1):
            with pytest.raises(Conflict):
                await spoken(gw, FinishTask(task_id=added.task.id, token=wrong), **who)
            with pytest.raises(Conflict):
                await spoken(gw, ReleaseTask(task_id=added.task.id, token=wrong), **who)
        with pytest.raises(Conflict):  # another agent, even with the token
            await spoken(gw, FinishTask(task_id=added.task.id, token=claim.fencing_token),
                         agent_id="mallory", delegated=True)
        done = await spoken(gw, FinishTask(task_id=added.task.id,
                                           token=claim.fencing_token), **who)
        assert done.task.state == "done" and done.task.done_by == "bob"


async def _pushes(client: AsyncClient, subscription: int, count: int) -> list[Push]:
    found: list[Push] = []
    with trio.move_on_after(0.5):
        while len(found) < count:
            push = await client.next_push(subscription)
            assert push is not None
            found.append(push)
    return found


async def test_a_window_holds_each_subscription_to_its_grants(
        daemon: Server, config: DaemonConfig) -> None:
    async with connect_to(_target(config, "gw", window=4)) as gw, \
            connect_to(_target(config, "writer", admin=False)) as writer:
        subscribed = await spoken(gw, Subscribe(contexts=["paced"], after=0, heartbeat=60),
                                  agent_id="reader", delegated=True)
        assert isinstance(subscribed, Subscribed)
        sub = subscribed.subscription
        for _ in range(5):
            await writer.create_units([requests.draft("paced", "MESSAGE", "x")
                                       for _ in range(40)])
        seqs: list[int] = []
        first = await _pushes(gw, sub, 10)
        assert len(first) == 4  # no further than the window
        seqs += [p.event.seq for p in first if isinstance(p, EventPush)]
        while len(seqs) < 200:
            await gw.call(GrantPushes(subscription=sub, count=4))
            more = await _pushes(gw, sub, 4)
            assert 1 <= len(more) <= 4
            seqs += [p.event.seq for p in more if isinstance(p, EventPush)]
        assert seqs == sorted(set(seqs)) and len(seqs) == 200
        # Past the window's backlog, it is live again (a heartbeat or the next event).
        await gw.call(GrantPushes(subscription=sub, count=4))
        await writer.create_units([requests.draft("paced", "MESSAGE", "last")])
        (last,) = await _pushes(gw, sub, 1)
        assert isinstance(last, EventPush | Heartbeat)
        with pytest.raises(BadRequest):
            await gw.call(GrantPushes(subscription=sub, count=0))


async def test_revoking_a_token_ends_the_subscriptions_made_with_it(
        daemon: Server, config: DaemonConfig) -> None:
    async with connect_to(_target(config, "gw")) as gw:
        token = await gw.create_token("alice")
        subscribed = await spoken(gw, Subscribe(contexts=["x"]), token=token.token)
        other = await spoken(gw, Subscribe(contexts=["x"]), agent_id="bob", delegated=True)
        await gw.revoke_tokens(agent="alice")
        (ended,) = await _pushes(gw, subscribed.subscription, 1)
        assert isinstance(ended, Ended) and ended.code == "forbidden"
        assert await _pushes(gw, other.subscription, 1) == []  # bob's goes on
        assert isinstance(await gw.call(Ping()), Pong)  # and so does the connection
