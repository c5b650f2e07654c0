"""Requests that wait (``GET /inbox?wait=``, a lease's wait in line) hold a daemon place
for as long as they ask: they may take only some of the places, one agent only a share
of those, so that one identity's long-polls never keep out another's write or
``/readyz``. The real ``engram gateway`` and ``engramd`` as processes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx2
import pytest

pytest.importorskip("hypercorn")

from engram_cli.doors.gateway.link import (
    IN_FLIGHT,
    WAITS_PER_AGENT_SHARE,
    WAITS_PER_CONNECTION,
)
from tests.conftest import WAIT, DaemonProcess, wait_until
from tests.doors.test_gateway import Gateway, as_agent, error_code, gateway

pytestmark = pytest.mark.slow

SHARE = WAITS_PER_CONNECTION // WAITS_PER_AGENT_SHARE
"""Waits one agent may hold with one daemon connection."""


class LongPolls:
    """*count* concurrent ``GET /inbox?wait=60&peek=true`` of *agent*, each on a client
    (an HTTP connection) of its own; their answers as they come."""

    def __init__(self, gw: Gateway, agent: str, count: int) -> None:
        self.answers: list[httpx2.Response] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._poll, args=(gw.url, agent))
                         for _ in range(count)]
        for thread in self._threads:
            thread.start()

    def _poll(self, url: str, agent: str) -> None:
        with httpx2.Client(base_url=url, timeout=90) as client:
            answer = client.get("/inbox", params={"wait": "60", "peek": "true"},
                                headers=as_agent(agent))
        with self._lock:
            self.answers.append(answer)

    def statuses(self) -> list[int]:
        with self._lock:
            return sorted(answer.status_code for answer in self.answers)

    def join(self) -> None:
        for thread in self._threads:
            thread.join(WAIT)
            assert not thread.is_alive(), "a long-poll never ended"


@contextmanager
def long_polls(gw: Gateway, agent: str, count: int) -> Iterator[LongPolls]:
    polls = LongPolls(gw, agent, count)
    try:
        yield polls
    finally:
        # A message ends every wait of the agent (peek: each of them sees it).
        gw.http.post("/messages", json={"to": agent, "payload": "enough"},
                     headers=as_agent("ender"))
        polls.join()


def test_one_agents_long_polls_leave_room_for_others_writes_and_readyz(
        engramd: DaemonProcess) -> None:
    # One daemon connection, so that a few dozen waits would take every place on it.
    with gateway(engramd.env, "--daemon-connections", "1") as gw:
        gw.http.post("/messages", json={"to": "hog", "payload": "hello",
                                        "new_recipients": True}, headers=as_agent("ender"))
        assert gw.http.get("/inbox", headers=as_agent("hog")).status_code == 200
        hogs = IN_FLIGHT + SHARE  # more than every place
        with long_polls(gw, "hog", hogs) as polls:
            # Those past the agent's share are refused at once, the rest wait.
            wait_until(lambda: len(polls.statuses()) == hogs - SHARE,
                       "the waits past the agent's share to be refused")
            assert polls.statuses() == [429] * (hogs - SHARE)
            refused = polls.answers[0]
            assert error_code(refused) == "rate_limited"
            assert int(refused.headers["retry-after"]) >= 1

            # Another agent's write, its own wait and readiness are answered.
            write = gw.http.post("/workunit", json={"context_id": "busy", "payload": "x"},
                                 headers=as_agent("victim"))
            assert write.status_code == 201, write.text
            assert gw.http.get("/inbox", params={"wait": "0.1"},
                               headers=as_agent("victim")).status_code == 200
            ready = gw.http.get("/readyz")
            assert ready.status_code == 200, ready.text
        assert polls.statuses().count(200) == SHARE


def test_when_every_place_for_waits_is_taken_a_wait_is_503_and_the_rest_goes_on(
        engramd: DaemonProcess) -> None:
    with gateway(engramd.env, "--daemon-connections", "1") as gw:
        agents = [f"poller-{n}" for n in range(WAITS_PER_AGENT_SHARE)]
        for agent in [*agents, "late"]:
            gw.http.post("/messages", json={"to": agent, "payload": "hello",
                                            "new_recipients": True}, headers=as_agent(agent))
            gw.http.get("/inbox", headers=as_agent(agent))  # read: nothing unread
        with ExitStack() as stack:
            # Each agent its share and one more: that one is refused (429) once the
            # share holds its places, so all the places for waits are then taken.
            polls = [stack.enter_context(long_polls(gw, agent, SHARE + 1))
                     for agent in agents]
            wait_until(lambda: all(p.statuses() == [429] for p in polls),
                       "each agent's wait past its share to be refused")
            refused = gw.http.get("/inbox", params={"wait": "5"}, headers=as_agent("late"))
            assert refused.status_code == 503 and error_code(refused) == "unavailable"
            assert int(refused.headers["retry-after"]) >= 1
            # Requests that answer at once still have their places.
            assert gw.http.get("/inbox", headers=as_agent("late")).status_code == 200
            assert gw.http.get("/readyz").status_code == 200
        assert all(p.statuses() == [200] * SHARE + [429] for p in polls)
