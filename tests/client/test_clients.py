"""The blocking and the trio client: one contract and the same operations, against a daemon."""

from __future__ import annotations

import inspect
import signal

import pytest
import trio

from engram_cli.client import Client
from engram_cli.client.asynchronous import AsyncClient, open_client
from engram_cli.client.errors import (
    ClientTimeout,
    Forbidden,
    NotFound,
    RateLimited,
    Unavailable,
)
from engram_cli.client.operations import Operations, operation
from engramd.config import DaemonConfig
from engramd.protocol import LeaseLost, Pong, reply_type
from engramd.protocol.messages import AnyClientMessage
from engramd.server import Server
from tests.conftest import WAIT, DaemonProcess, make_config, start_threaded

# How each client talks to its transport, beside the operations they share.
BLOCKING_ONLY = {"close", "interrupt", "send", "receive", "next_id", "reply_timeout",
                 "autostart", "timeout", "start_timeout"}
TRIO_ONLY = {"aclose", "connect_timeout", "usable", "call_on"}  # for connections shared by tasks


def public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def test_both_clients_offer_the_same_operations() -> None:
    assert public(Client) - BLOCKING_ONLY == public(AsyncClient) - TRIO_ONLY
    for name in public(Client) - BLOCKING_ONLY:
        blocking, trio_flavour = getattr(Client, name), getattr(AsyncClient, name)
        if isinstance(blocking, property):
            assert isinstance(trio_flavour, property), name
        elif not isinstance(blocking, operation):
            assert inspect.iscoroutinefunction(trio_flavour) or \
                inspect.isasyncgenfunction(trio_flavour), f"AsyncClient.{name} is not async"


def test_every_operation_is_written_once() -> None:
    """The operations are the shared class's, not redefined by either client."""
    shared = {name for name, value in vars(Operations).items() if isinstance(value, operation)}
    assert len(shared) >= 25
    for cls in (Client, AsyncClient):
        assert not shared & set(vars(cls)), f"{cls.__name__} redefines {shared & set(vars(cls))}"


def test_every_request_names_its_reply() -> None:
    for request in AnyClientMessage.__args__:  # type: ignore[attr-defined]
        assert reply_type(request).__struct_config__.tag  # a real, tagged server message


async def test_the_trio_client_runs_leases_tokens_and_hears_a_lost_lease(
        daemon: Server, config: DaemonConfig) -> None:
    with trio.fail_after(WAIT):
        async with open_client(config.socket, autostart=False, agent_id="t") as engram, \
                open_client(config.socket, autostart=False, agent_id="ops",
                            admin=True) as ops:
            assert isinstance(await engram.ping(), Pong)
            (lease,) = await engram.acquire_lock("res", ttl=30)
            assert (await engram.get_lock("res")).lease == lease
            renewed = await engram.renew_lock(lease.lock_id, ttl=60, resource="res")
            assert renewed.fencing_token == lease.fencing_token
            await ops.break_lock("res", "testing")
            notice = await engram.lease_lost(WAIT)
            assert isinstance(notice, LeaseLost) and notice.reason == "broken"
            assert notice.lease.lock_id == lease.lock_id
            assert await engram.lease_lost(0.05) is None
            with pytest.raises(NotFound):
                await engram.release_lock(lease.lock_id)
            created = await ops.create_token("t")
            assert [info.agent for info in await ops.list_tokens()] == ["t"]
            assert created.info in await ops.revoke_tokens(agent="t")
            with pytest.raises(Forbidden):
                await engram.create_token("x")
            unit = await engram.create_unit("ctx", "MESSAGE", "hello there")
            assert (await engram.get_unit(unit.id)).payload == b"hello there"
            with pytest.raises(NotFound):
                await engram.get_unit("0" * 36)
            assert (await engram.get_context("ctx")).agent_ids == ["t"]


async def test_a_trio_call_after_the_daemon_closed_raises_unavailable(
        daemon: Server, config: DaemonConfig) -> None:
    with trio.fail_after(WAIT):
        async with open_client(config.socket, autostart=False, agent_id="t") as engram:
            await engram.ping()
            daemon.engine.request_shutdown()
            with pytest.raises(Unavailable):
                for _ in range(100):  # the goodbye may take a moment
                    await engram.lease_lost(0.05)


def test_the_trio_client_starts_the_daemon_it_needs(env: dict[str, str]) -> None:
    """Autostart on, no daemon: the trio client starts one and is served (it waits for
    the daemon's readiness outside the lock its connection is made under)."""
    from engram_cli import open_client

    async def ping_through_autostart() -> str:
        async with open_client(env=env, autostart=True, agent_id="trio") as engram:
            return (await engram.status()).state

    try:
        assert trio.run(ping_through_autostart) == "ready"
    finally:
        with Client(env["ENGRAM_SOCKET"], autostart=False, env=env) as engram:
            engram.shutdown()


async def test_a_trio_call_on_a_closed_conversation_raises_unavailable(
        daemon: Server, config: DaemonConfig) -> None:
    """The daemon hung up and the reader has seen it: the next call is Unavailable (an
    EngramError a caller can handle), never the protocol object's own state error."""
    with trio.fail_after(WAIT):
        async with open_client(config.socket, autostart=False, agent_id="t") as engram:
            await engram.ping()
            daemon.engine.request_shutdown()
            while engram.usable:  # the reader files the end of the conversation
                await trio.sleep(0.01)
            with pytest.raises(Unavailable):
                await engram.ping()


async def test_trio_calls_racing_a_close_raise_unavailable(
        daemon: Server, config: DaemonConfig) -> None:
    """Calls in flight, or about to be sent, while another task closes the connection
    (what the gateway's tasks do when the daemon restarts) each end in Unavailable, and
    a later call makes a fresh connection."""
    with trio.fail_after(WAIT):
        async with open_client(config.socket, autostart=False, agent_id="t") as engram:
            outcomes: list[BaseException | None] = []

            async def ping() -> None:
                try:
                    await engram.ping()
                    outcomes.append(None)
                except Unavailable as exc:
                    outcomes.append(exc)

            for _ in range(30):
                outcomes.clear()
                async with trio.open_nursery() as nursery:
                    for _ in range(4):
                        nursery.start_soon(ping)
                    nursery.start_soon(engram.aclose)
                    for _ in range(4):
                        nursery.start_soon(ping)
                assert len(outcomes) == 8
            assert isinstance(await engram.ping(), Pong)


def test_both_clients_wait_for_readiness_through_a_low_request_rate(
        env: dict[str, str]) -> None:
    """A daemon that allows 2 requests a second: a wait for its readiness after the
    burst is spent is slowed down by the rate, never failed by it (the gateway's tests
    met that on a loaded machine: their engramd "did not start")."""
    limited = make_config({**env, "ENGRAM_LIMITS_RATE_PER_SECOND": "2",
                           "ENGRAM_LIMITS_RATE_BURST": "2"})

    async def spent_then_ready() -> str:
        async with open_client(limited.socket, autostart=False, env={}) as engram:
            with pytest.raises(RateLimited):
                for _ in range(3):
                    await engram.ping()
            return (await engram.wait_ready(WAIT)).state

    with start_threaded(limited), Client(limited.socket, autostart=False, env={}) as engram:
        with pytest.raises(RateLimited):
            for _ in range(3):
                engram.ping()
        assert engram.wait_ready(WAIT).state == "ready"
        assert trio.run(spent_then_ready) == "ready"


def test_a_timeout_is_told_in_seconds_a_person_reads(engramd: DaemonProcess) -> None:
    """A daemon that does not answer (stopped) within a timeout of 10/3 s is told as
    "3.3s", not "3.3333333333333335s" (lock run's keeper waits ttl/3)."""
    engramd.process.send_signal(signal.SIGSTOP)
    try:
        client = Client(engramd.socket, agent_id="a", autostart=False, env={}, timeout=10 / 3)
        with pytest.raises(ClientTimeout) as raised:
            client.connect()
        assert str(raised.value) == "engramd did not answer within 3.3s"
    finally:
        engramd.process.send_signal(signal.SIGCONT)
