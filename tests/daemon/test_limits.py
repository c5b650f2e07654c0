"""Every configured limit is enforced with a clear error, and only on the request over it."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

import pytest

from engram_cli.client.errors import BadRequest, EngramError, TooLarge, Unavailable
from engramd.protocol import Relationship
from tests.conftest import WAIT, connect, make_config, start_threaded, wait_until


@pytest.mark.parametrize("setting, value, attempt, error, message", [
    ("limits.max_meta_entries", "2",
     lambda c: c.create_unit("l", "MESSAGE", "x", meta={"a": "1", "b": "2", "c": "3"}),
     TooLarge, "3 metadata entries, limit 2"),
    ("limits.max_meta_key_bytes", "4",
     lambda c: c.create_unit("l", "MESSAGE", "x", meta={"toolong": "1"}),
     BadRequest, "metadata key"),
    ("limits.max_meta_value_bytes", "4",
     lambda c: c.create_unit("l", "MESSAGE", "x", meta={"k": "too long"}),
     BadRequest, "metadata value"),
    ("limits.max_relationships", "1",
     lambda c: c.create_unit("l", "MESSAGE", "x", relationships=[
         Relationship(type="CAUSES", target=c.create_unit("l", "MESSAGE", "a").id),
         Relationship(type="CAUSES", target=c.create_unit("l", "MESSAGE", "b").id)]),
     TooLarge, "relationships"),
    ("limits.max_subscriptions_per_connection", "2",
     lambda c: [c.subscribe(contexts=["l"]) for _ in range(3)],
     TooLarge, "too many subscriptions on one connection (limit 2)"),
    ("limits.max_leases_per_agent", "1",
     lambda c: c.acquire_lock(["l/1", "l/2"]),
     TooLarge, "more than 1 leases"),
])
def test_a_request_over_a_limit_gets_a_clear_error(
        env: dict[str, str], setting: str, value: str, attempt: object,
        error: type[EngramError], message: str) -> None:
    config = make_config(env, **{setting: value})
    with start_threaded(config), connect(config.socket, "limits") as engram:
        with pytest.raises(error, match=re.escape(message)):
            attempt(engram)  # type: ignore[operator]
        engram.ping()  # the connection goes on
        engram.create_unit("l", "MESSAGE", "within the limits")


def test_waiters_beyond_the_limit_are_refused(env: dict[str, str]) -> None:
    config = make_config(env, **{"limits.max_waiters_per_resource": "1"})
    with start_threaded(config), connect(config.socket, "holder") as holder, \
            connect(config.socket, "second") as second, connect(config.socket, "third") as third:
        (lease,) = holder.acquire_lock("busy", ttl=30)
        waited: list[object] = []
        waiter = threading.Thread(
            target=lambda: waited.append(second.acquire_lock("busy", ttl=30, wait=WAIT)))
        waiter.start()
        wait_until(lambda: [w.agent for w in holder.get_lock("busy").waiters] == ["second"],
                   "second in line")
        with pytest.raises(TooLarge, match="1 requests already wait for busy"):
            third.acquire_lock("busy", ttl=30, wait=WAIT)
        holder.release_lock(lease.lock_id)
        waiter.join(WAIT)
        assert len(waited) == 1


GREEDY = """
import sys
from engram_cli.client import Client
from engram_cli.client.errors import Unavailable
held = []
try:
    for n in range(int(sys.argv[2])):
        client = Client(sys.argv[1], agent_id="greedy", autostart=False, env={})
        client.ping()
        held.append(client)
    print(f"held {len(held)}: none refused", flush=True)
except Unavailable as exc:
    print(f"held {len(held)}: {exc}", flush=True)
sys.stdin.read()
"""


def test_one_process_never_takes_the_connections_kept_in_reserve(env: dict[str, str]) -> None:
    config = make_config(env, **{"limits.max_connections": "8",
                                 "limits.connection_reserve": "3"})
    holders: list[subprocess.Popen[str]] = []

    def hold(count: int) -> str:
        """A process of its own that opens *count* connections and keeps them: what it
        says (how many it holds, and why it was refused one)."""
        holder = subprocess.Popen([sys.executable, "-c", GREEDY, config.socket, str(count)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        holders.append(holder)
        assert holder.stdout is not None
        return holder.stdout.readline()

    with start_threaded(config):
        try:
            told = hold(20)
            assert told.startswith("held 5: "), told
            assert "the last 3 are kept for processes that hold none" in told, told
            # Every other process still gets in, one connection each...
            assert hold(2).startswith("held 1: process"), "a second one is not for it"
            assert hold(1) == "held 1: none refused\n"
            assert hold(1) == "held 1: none refused\n"
            # ...until the limit itself, which refuses anyone.
            with pytest.raises(Unavailable, match=r"too many connections \(8, limit 8"), \
                    connect(config.socket, "ninth") as ninth:
                ninth.ping()
        finally:
            for holder in holders:
                holder.kill()
                holder.wait(WAIT)
