"""What the web console asks of the gateway, over real HTTP (httpx2) against a real
``engram gateway`` and a real ``engramd``: breaking the lease it was shown, the pages'
addresses, and the bounds one agent cannot take from the others."""

from __future__ import annotations

import datetime as dt
from contextlib import ExitStack
from typing import Any, cast

import pytest

pytest.importorskip("hypercorn")

import httpx2
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.conftest import WAIT, DaemonProcess, connect, run_cli, wait_until
from tests.doors.test_gateway import Gateway, as_agent, error_code, gateway, open_gateway

__all__ = ["open_gateway"]  # a fixture, used by name


def test_a_break_names_the_lease_the_console_showed(open_gateway: Gateway,
                                                    engramd: DaemonProcess) -> None:
    """The page shows alice's lease; alice lets go and bob takes the resource before
    the person confirms: the break names alice's lease, and bob's is left alone."""
    http = open_gateway.http
    with connect(engramd.socket, "alice") as alice, connect(engramd.socket, "bob") as bob:
        (shown,) = alice.acquire_lock("deploy:prod", ttl=60)
        alice.release_lock(shown.lock_id)
        (now,) = bob.acquire_lock("deploy:prod", ttl=60)
        refused = http.post("/locks/break", json={
            "resource": "deploy:prod", "reason": "its holder hung", "lock_id": shown.lock_id})
        assert refused.status_code == 409, refused.text
        assert error_code(refused) == "conflict"
        assert "no longer held by the lease" in refused.json()["error"]["message"]
        by_token = http.post("/locks/break", json={
            "resource": "deploy:prod", "reason": "its holder hung",
            "token": shown.fencing_token})
        assert by_token.status_code == 409, by_token.text
        held = http.get("/locks/deploy:prod").json()
        assert held["lease"]["lock_id"] == now.lock_id  # bob holds it still
        broken = http.post("/locks/break", json={
            "resource": "deploy:prod", "reason": "its holder hung", "lock_id": now.lock_id})
        assert broken.status_code == 200, broken.text
        assert http.get("/locks/deploy:prod").json()["lease"] is None


@pytest.mark.parametrize("reason", ["", " ", "\t\n ", "\u3000"])
def test_a_blank_reason_breaks_nothing(open_gateway: Gateway, engramd: DaemonProcess,
                                       reason: str) -> None:
    http = open_gateway.http
    with connect(engramd.socket, "alice") as alice:
        (lease,) = alice.acquire_lock("stuck:job", ttl=60)
        refused = http.post("/locks/break", json={"resource": "stuck:job", "reason": reason})
        assert refused.status_code == 400, refused.text
        assert error_code(refused) == "bad_request"
        assert "reason" in refused.json()["error"]["message"]
        assert http.get("/locks/stuck:job").json()["lease"]["lock_id"] == lease.lock_id
        # The same through the CLI: one line, exit 2, the lease held.
        said = run_cli(engramd.env, "lock", "break", "stuck:job", "--reason", reason or " ")
        assert said.returncode == 2, said.stderr
        assert len(said.stderr.strip().splitlines()) == 1 and "reason" in said.stderr
        assert alice.get_lock("stuck:job").lease is not None


def test_the_cli_breaks_only_the_lease_it_names(engramd: DaemonProcess) -> None:
    with connect(engramd.socket, "alice") as alice, connect(engramd.socket, "bob") as bob:
        (shown,) = alice.acquire_lock("job", ttl=60)
        alice.release_lock(shown.lock_id)
        (now,) = bob.acquire_lock("job", ttl=60)
        for option in (["--lock-id", shown.lock_id], ["--token", str(shown.fencing_token)]):
            said = run_cli(engramd.env, "lock", "break", "job", "--reason", "hung", *option)
            assert said.returncode == 4, said.stderr
            assert len(said.stderr.strip().splitlines()) == 1
            assert "no longer held" in said.stderr
        assert bob.get_lock("job").lease.lock_id == now.lock_id  # type: ignore[union-attr]
        said = run_cli(engramd.env, "lock", "break", "job", "--reason", "hung",
                       "--lock-id", now.lock_id)
        assert said.returncode == 0, said.stderr
        assert "the lease of bob" in said.stdout
        assert bob.get_lock("job").lease is None


@pytest.mark.parametrize("path", ["/", "/ui/"])
def test_the_console_is_found_from_the_root_and_with_a_slash(open_gateway: Gateway,
                                                             path: str) -> None:
    answer = open_gateway.http.get(path)
    assert answer.status_code in (301, 302, 307, 308), answer.text
    assert answer.headers["location"] == "/ui"
    followed = open_gateway.http.get(path, follow_redirects=True)
    assert followed.status_code == 200
    assert followed.headers["content-type"].startswith("text/html")


def test_the_agents_are_those_the_daemon_knows_not_any_header(open_gateway: Gateway,
                                                              engramd: DaemonProcess) -> None:
    http = open_gateway.http
    looked = http.get("/agents", headers=as_agent("made-up-by-a-header"))
    assert looked.status_code == 200, looked.text
    names = [agent["agent"] for agent in looked.json()["agents"]]
    assert "made-up-by-a-header" not in names
    with connect(engramd.socket, "writer") as writer:
        writer.create_unit("ctx", "MESSAGE", "here")
    names = [agent["agent"] for agent in http.get("/agents").json()["agents"]]
    assert "writer" in names


def test_one_agent_cannot_take_every_stream(engramd: DaemonProcess) -> None:
    """Past its share (``--streams-per-agent``), an agent's next stream is 429 at once;
    another agent's is served, and a stream closed gives its place back."""
    with gateway(engramd.env, "--streams-per-agent", "2") as gw, ExitStack() as streams:
        def sse(agent: str) -> httpx2.Response:
            return streams.enter_context(gw.http.stream(
                "GET", "/stream-sse", params={"context": "shares"}, headers=as_agent(agent)))

        first, second = sse("hog"), sse("hog")
        assert (first.status_code, second.status_code) == (200, 200)
        refused = sse("hog")
        assert refused.status_code == 429
        refused.read()
        assert error_code(refused) == "rate_limited"
        assert "--streams-per-agent" in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after"]) >= 1
        with pytest.raises(InvalidStatus) as denied:
            ws_connect(f"{gw.ws_url}/stream?context=shares", additional_headers=as_agent("hog"),
                       open_timeout=WAIT)
        assert denied.value.response.status_code == 429
        assert sse("someone-else").status_code == 200
        first.close()
        wait_until(lambda: sse("hog").status_code == 200, "hog's place given back")


def test_one_agent_cannot_fill_the_ticket_table(engramd: DaemonProcess) -> None:
    with gateway(engramd.env, "--tickets-per-agent", "3") as gw:
        def ticket(agent: str) -> httpx2.Response:
            return gw.http.post("/stream/ticket", headers=as_agent(agent))

        issued = [ticket("hog") for _ in range(3)]
        assert [answer.status_code for answer in issued] == [201] * 3
        refused = ticket("hog")
        assert refused.status_code == 429, refused.text
        assert error_code(refused) == "rate_limited"
        assert "--tickets-per-agent" in refused.json()["error"]["message"]
        assert ticket("someone-else").status_code == 201
        # A ticket used is no longer held: the agent may have another.
        with gw.http.stream("GET", "/stream-sse", params={
                "ticket": issued[0].json()["ticket"]}) as opened:
            assert opened.status_code == 200
        assert ticket("hog").status_code == 201


def test_the_lease_history_reads_grants_and_ends_by_time(open_gateway: Gateway,
                                                         engramd: DaemonProcess) -> None:
    """What the console's Timeline draws past leases from: the journal's lease grants and
    ends from a time on (renewals left out, units passed over), paged by seq."""
    http = open_gateway.http
    with connect(engramd.socket, "alice") as alice, connect(engramd.socket, "bob") as bob:
        (early,) = alice.acquire_lock("history:early", ttl=60)
        alice.release_lock(early.lock_id)
        for n in range(30):  # (the bisection by time crosses units too)
            alice.create_unit("history", "MESSAGE", f"note {n}")
        since = dt.datetime.now(dt.UTC)
        wait_until(lambda: dt.datetime.now(dt.UTC) > since, "the clock moved on")
        (held,) = alice.acquire_lock("history:job", ttl=60)
        alice.renew_lock(held.lock_id, ttl=120)
        bob.create_unit("history", "MESSAGE", "between")
        alice.release_lock(held.lock_id)
        (later,) = bob.acquire_lock("history:job", ttl=60)

    def read(**params: Any) -> dict[str, Any]:
        answer = http.get("/lock-history", params=params)
        assert answer.status_code == 200, answer.text
        return cast(dict[str, Any], answer.json())

    page = read(since=since.isoformat())
    assert [(e["kind"], e["lease"]["lock_id"]) for e in page["events"]] == [
        ("lock.acquired", held.lock_id), ("lock.released", held.lock_id),
        ("lock.acquired", later.lock_id)]
    assert page["next_cursor"] is None
    whole = read()  # from the journal's start
    assert [e["lease"]["lock_id"] for e in whole["events"]][:2] == [early.lock_id] * 2
    # Paged: one event a page, each page after the last one's cursor.
    seen, after = [], None
    while True:
        page = read(since=since.isoformat(), limit=1, **({} if after is None else {
            "after": after}))
        seen += [e["seq"] for e in page["events"]]
        after = page["next_cursor"]
        if after is None:
            break
    assert len(seen) == 3 and seen == sorted(seen)
    assert read(since=(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()) == {
        "events": [], "next_cursor": None}
    until = read(since=since.isoformat(), until=since.isoformat())
    assert until == {"events": [], "next_cursor": None}
    refused = http.get("/lock-history", params={"limit": 0})
    assert refused.status_code == 400 and error_code(refused) == "bad_request"
