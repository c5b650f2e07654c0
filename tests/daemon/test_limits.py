"""Every configured limit is enforced with a clear error, and only on the request over it."""

from __future__ import annotations

import re
import threading

import pytest

from engram_cli.client.errors import BadRequest, EngramError, TooLarge
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
