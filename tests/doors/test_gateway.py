"""``engram gateway`` as a process, in front of engramd as a process, driven by real HTTP
(httpx2), Server-Sent Events and WebSocket (websockets) clients."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("hypercorn")
pytest.importorskip("jwt")

import httpx2
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from engram_cli.client import requests
from tests.conftest import (
    WAIT,
    DaemonProcess,
    connect,
    run_cli,
    start_engramd,
    wait_until,
)

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


@dataclass
class Gateway:
    process: subprocess.Popen[str]
    url: str
    http: httpx2.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx2.Client(base_url=self.url, timeout=WAIT)

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")

    def stop(self) -> int:
        self.http.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(WAIT)
        finally:
            assert self.process.stdout is not None and self.process.stderr is not None
            self.process.stdout.close()
            self.process.stderr.close()


def _first_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], WAIT)
    if not ready:
        process.kill()
        pytest.fail("the gateway printed nothing in time")
    return process.stdout.readline()


@contextmanager
def gateway(env: dict[str, str], *args: str, open_files: int | None = None,
            listen: str = "127.0.0.1:0") -> Iterator[Gateway]:
    """``engram gateway`` on *listen* (a free port unless given: a restart needs the same
    one); *open_files*: its RLIMIT_NOFILE (soft and hard)."""
    command = [sys.executable, "-m", "engram_cli", "gateway", "--listen", listen,
               "--json", *args]
    if open_files is not None:
        command = ["sh", "-c", f'ulimit -n {open_files} && exec "$@"', "sh", *command]
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = _first_line(process)
    if not line:
        process.wait(WAIT)
        assert process.stderr is not None
        pytest.fail(f"the gateway did not start: {process.stderr.read()}")
    handle = Gateway(process, json.loads(line)["listening"][0])
    try:
        yield handle
    finally:
        assert handle.stop() == 0


@pytest.fixture
def open_gateway(engramd: DaemonProcess) -> Iterator[Gateway]:
    with gateway(engramd.env) as handle:
        yield handle


def as_agent(agent: str) -> dict[str, str]:
    return {"X-Agent-ID": agent}


def error_code(response: httpx2.Response) -> str:
    return str(response.json()["error"]["code"])


# -- the endpoints -------------------------------------------------------------

def test_units_and_contexts(open_gateway: Gateway) -> None:
    http = open_gateway.http
    one = http.post("/workunit", json={"context_id": "build-42", "type": "ERROR",
                                       "payload": "disk full", "meta": {"exit": "1"}},
                    headers=as_agent("ci"))
    assert one.status_code == 201, one.text
    (unit,) = one.json()["units"]
    assert (unit["agent_id"], unit["payload"], unit["meta"]) == ("ci", "disk full", {"exit": "1"})
    binary = base64.b64encode(b"\xff\x00").decode()
    many = http.post("/workunit", headers=as_agent("ci"), json=[
        {"context_id": "build-42", "payload": "next", "relationships": [
            {"type": "RESPONDS_TO", "target": unit["id"]}]},
        {"context_id": "build-42", "payload_base64": binary}])
    assert many.status_code == 201, many.text
    assert [u["seq"] for u in many.json()["units"]] == [unit["seq"] + 1, unit["seq"] + 2]
    assert many.json()["units"][1]["payload_base64"] == binary

    # All or nothing: one bad unit, nothing written.
    bad = http.post("/workunit", json=[{"context_id": "build-42", "payload": "lost"},
                                       {"context_id": "bad context!", "payload": "x"}])
    assert bad.status_code == 400 and error_code(bad) == "bad_request"
    listed = http.get("/workunits/build-42", params={"limit": 10})
    assert [u["payload"] for u in listed.json()["units"] if "payload" in u] == \
        ["disk full", "next"]
    page = http.get("/workunits/build-42", params={"limit": 2, "reverse": "true"}).json()
    assert [u["seq"] for u in page["units"]] == [unit["seq"] + 2, unit["seq"] + 1]
    older = http.get("/workunits/build-42",
                     params={"limit": 2, "before": page["units"][-1]["seq"]}).json()
    assert [u["id"] for u in older["units"]] == [unit["id"]]

    assert http.get(f"/workunit/{unit['id']}").json()["payload"] == "disk full"
    missing = http.get("/workunit/01a20000-0000-7000-8000-000000000000")
    assert missing.status_code == 404 and error_code(missing) == "not_found"
    assert http.get("/workunits/no-such-context").status_code == 404
    assert http.get("/workunits/build-42", params={"limit": "many"}).status_code == 400
    assert http.post("/workunit", content=b"{oops").status_code == 400
    assert http.post("/workunit", json={"context_id": "c", "colour": "red"}).status_code == 400

    found = http.get("/contexts/build-42").json()
    assert found["context"]["id"] == "build-42" and "ci" in found["context"]["agent_ids"]
    changed = http.patch("/contexts/build-42", json={"display_name": "Build 42",
                                                     "pin": [unit["id"]]})
    assert changed.status_code == 200, changed.text
    assert changed.json()["context"]["display_name"] == "Build 42"
    assert changed.json()["context"]["pinned_units"] == [unit["id"]]
    created = http.post("/contexts", json={"context_id": "fresh"})
    assert created.status_code == 201 and created.json()["created"] is True
    assert "fresh" in [c["id"] for c in http.get("/contexts").json()["contexts"]]

    def search() -> dict[str, Any]:
        return dict(http.post("/search", json={"query": "disk", "contexts": ["build-42"]}).json())

    wait_until(lambda: search()["total"] == 1, "the index to catch up")  # it trails the journal
    hits = search()
    assert hits["total"] == 1 and hits["hits"][0]["unit"]["id"] == unit["id"]
    assert hits["hits"][0]["score"] is not None
    related = http.post("/search/relationships", json={"unit_id": unit["id"]}).json()
    assert related["edges"][0]["type"] == "RESPONDS_TO"
    assert http.post("/search", json={"query": 5}).status_code == 400
    # Semantic search is off on this daemon: the answer says how to have it.
    vector = http.post("/search/vector", json={"query": "storage full"})
    assert vector.status_code == 400
    assert "engram-journal[semantic]" in vector.json()["error"]["message"]


def test_locks_name_the_holder_and_keep_others_out(open_gateway: Gateway) -> None:
    http = open_gateway.http
    taken = http.post("/locks", json={"resources": ["deploy:prod"], "ttl": 30},
                      headers=as_agent("alice"))
    assert taken.status_code == 201, taken.text
    (lease,) = taken.json()["leases"]
    assert lease["holder"] == "alice"
    held = http.post("/locks", json={"resources": "deploy:prod"}, headers=as_agent("bob"))
    assert held.status_code == 409 and error_code(held) == "lock_held"
    assert "alice" in held.json()["error"]["message"]
    # Another session of the same agent waits like anyone else: a second HTTP caller.
    again = http.post("/locks", json={"resources": "deploy:prod"}, headers=as_agent("alice"))
    assert again.status_code == 409
    waited = http.post("/locks", json={"resources": "deploy:prod", "wait": 0.2},
                       headers=as_agent("bob"))
    # The wait ran out: an answer (the lease is held still), not the gateway failing.
    assert waited.status_code == 409 and error_code(waited) == "timeout"
    state = http.get("/locks/deploy:prod").json()
    assert state["lease"]["lock_id"] == lease["lock_id"]
    assert [s["resource"] for s in http.get("/locks").json()["locks"]] == ["deploy:prod"]
    renewed = http.post("/locks/renew", json={"lock_id": lease["lock_id"], "ttl": 60},
                        headers=as_agent("alice"))
    assert renewed.status_code == 200 and renewed.json()["lease"]["ttl"] == 60
    theirs = http.delete("/locks/deploy:prod", params={"lock_id": lease["lock_id"]},
                         headers=as_agent("bob"))
    assert theirs.status_code == 403 and error_code(theirs) == "forbidden"
    assert http.delete("/locks/deploy:prod").status_code == 400
    mine = http.delete("/locks/deploy:prod", params={"lock_id": lease["lock_id"]},
                       headers=as_agent("alice"))
    assert mine.status_code == 200
    gone = http.delete("/locks/deploy:prod", params={"lock_id": lease["lock_id"]},
                       headers=as_agent("alice"))
    assert gone.status_code == 404
    nested = http.post("/locks", json={"resources": ["repo/src/a.py", "repo/src/b.py"]},
                       headers=as_agent("bob"))
    assert [s["resource"] for s in nested.json()["leases"]] == ["repo/src/a.py",
                                                                "repo/src/b.py"]
    assert http.get("/locks/repo/src/b.py").json()["lease"]["holder"] == "bob"


def test_locks_on_paths_are_named_canonically_and_judged_by_the_rule(
        open_gateway: Gateway, tmp_path: Path) -> None:
    http = open_gateway.http
    where = os.path.realpath(tmp_path)
    directory = http.post("/locks", json={"paths": f"{tmp_path}/data/", "ttl": 30,
                                          "shared": True}, headers=as_agent("alice"))
    assert directory.status_code == 201, directory.text
    (lease,) = directory.json()["leases"]
    assert lease["resource"] == f"file:{where}/data/" and lease["shared"]
    reader = http.post("/locks", json={"paths": [f"{tmp_path}/data/x.csv"], "shared": True},
                       headers=as_agent("bob"))
    assert reader.status_code == 201  # readers coexist
    writer = http.post("/locks", json={"paths": [f"{tmp_path}/data/x.csv"]},
                       headers=as_agent("carol"))
    assert writer.status_code == 409 and "alice" in writer.json()["error"]["message"]
    state = http.get(f"/locks/file:{where}/data/x.csv").json()
    assert [held["holder"] for held in state["overlapping"]] == ["alice"]
    relative = http.post("/locks", json={"paths": "data/x.csv"}, headers=as_agent("carol"))
    assert relative.status_code == 400 and "absolute" in relative.text


def test_messages_and_tasks(open_gateway: Gateway) -> None:
    http = open_gateway.http
    sent = http.post("/messages", json={"to": ["bob"], "payload": "review #12?",
                                        "ack_required": True, "new_recipients": True},
                     headers=as_agent("alice"))
    assert sent.status_code == 201, sent.text
    assert http.get("/inbox/count", headers=as_agent("bob")).json()["unread"] == 1
    inbox = http.get("/inbox", headers=as_agent("bob")).json()
    assert [m["payload"] for m in inbox["messages"]] == ["review #12?"]
    assert http.get("/inbox", headers=as_agent("bob")).json()["messages"] == []
    assert http.get("/inbox/count", headers=as_agent("bob")).json()["pending_acks"] == 1
    acked = http.post(f"/inbox/{sent.json()['id']}/ack", headers=as_agent("bob"))
    assert acked.status_code == 201
    assert http.get("/inbox/count", headers=as_agent("bob")).json()["pending_acks"] == 0
    assert http.post("/messages", json={"to": []}).status_code == 400

    added = http.post("/tasks", json={"title": "fix the build", "priority": 1},
                      headers=as_agent("alice"))
    assert added.status_code == 201, added.text
    task_id = added.json()["task"]["id"]
    assert [t["id"] for t in http.get("/tasks", params={"ready": "true"}).json()["tasks"]] \
        == [task_id]
    claimed = http.post("/tasks/claim", json={}, headers=as_agent("bob"))
    assert claimed.status_code == 201, claimed.text
    claim = claimed.json()["task"]["claim"]
    assert claimed.json()["task"]["id"] == task_id and claim["holder"] == "bob"
    twice = http.post(f"/tasks/{task_id}/claim", json={}, headers=as_agent("carol"))
    assert twice.status_code == 409
    wrong = http.post(f"/tasks/{task_id}/done", json={"token": claim["fencing_token"] - 1},
                      headers=as_agent("carol"))
    assert wrong.status_code == 409
    done = http.post(f"/tasks/{task_id}/done", json={"token": claim["fencing_token"]},
                     headers=as_agent("bob"))
    assert done.status_code == 200 and done.json()["task"]["state"] == "done"
    assert http.get(f"/tasks/{task_id}").json()["task"]["done_by"] == "bob"
    assert http.get("/tasks/01a20000-0000-7000-8000-000000000000").status_code == 404


def test_health_metrics_openapi_and_bounds(engramd: DaemonProcess) -> None:
    with gateway(engramd.env, "--max-body", "1000") as gw:
        http = gw.http
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").status_code == 200
        http.post("/workunit", json={"context_id": "m", "payload": "x"})
        http.get("/workunit/nope")
        too_big = http.post("/workunit", json={"context_id": "m", "payload": "x" * 2000})
        assert too_big.status_code == 413 and error_code(too_big) == "too_large"
        metrics = http.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        families = parse_prometheus(metrics.text)
        assert families["engram_gateway_daemon_up"] == "gauge"
        assert families["engram_gateway_http_requests_total"] == "counter"
        assert 'route="/workunit",status="201"' in metrics.text
        assert families["engram_connections_accepted_total"] == "counter"
        spec = http.get("/openapi.json").json()
        assert spec["openapi"].startswith("3.")
        assert {"/workunit", "/locks/{resource}", "/search", "/stream-sse"} <= set(spec["paths"])
        lock_body = spec["paths"]["/locks"]["post"]["requestBody"]["content"][
            "application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        assert "resources" in spec["components"]["schemas"][lock_body]["properties"]
        assert "msg" not in spec["components"]["schemas"]["Search"]["properties"]


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*"'
                     r'(,[a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*")*)?\})? '
                     r'(-?[0-9.e+-]+|\+Inf|-Inf|NaN)$')


def parse_prometheus(text: str) -> dict[str, str]:
    """The families of a Prometheus text exposition, checking every line's syntax."""
    families: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in families, f"{name} typed twice"
            families[name] = kind
        elif line.startswith("# HELP ") or not line:
            continue
        else:
            match = _SAMPLE.match(line)
            assert match, f"not a sample: {line!r}"
            name = match.group(1)
            assert any(name == family or name.startswith(family + "_")
                       for family in families), f"{name} has no TYPE"
    return families


def test_readyz_follows_the_daemon(engramd: DaemonProcess) -> None:
    with gateway(engramd.env) as gw:
        assert gw.http.get("/readyz").json()["status"] == "ready"
        engramd.stop()
        down = gw.http.get("/readyz")  # at once: nothing is cached
        assert down.status_code == 503
        assert gw.http.get("/healthz").status_code == 200
        unavailable = gw.http.post("/workunit", json={"context_id": "c", "payload": "x"})
        assert unavailable.status_code == 503 and error_code(unavailable) == "unavailable"
        engramd.process = start_engramd(engramd.env)
        wait_until(lambda: gw.http.get("/readyz").status_code == 200, "readyz to be 200")
        again = gw.http.post("/workunit", json={"context_id": "c", "payload": "x"})
        assert again.status_code == 201


# -- the live stream -------------------------------------------------------------

@dataclass
class Collected:
    events: list[dict[str, object]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    error: BaseException | None = None


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """The events of an SSE stream's lines (a minimal SSE parser: one value per field;
    a block that only sets ``retry`` is no event)."""
    event: dict[str, str] = {}
    for line in lines:
        if line:
            key, _, value = line.partition(":")
            event[key] = value.removeprefix(" ")
        elif event:
            if set(event) != {"retry"}:
                yield event
            event = {}


def read_sse(gw: Gateway, params: dict[str, str], count: int, into: Collected,
             headers: dict[str, str] | None = None) -> None:
    """Read *count* unit events from the SSE stream."""
    try:
        with httpx2.Client(base_url=gw.url, timeout=WAIT) as http, \
                http.stream("GET", "/stream-sse", params=params, headers=headers) as response:
            assert response.status_code == 200
            for event in sse_events(response.iter_lines()):
                if event.get("event") == "unit.created":
                    into.ids.append(event["id"])
                    into.events.append(json.loads(event["data"]))
                    if len(into.events) >= count:
                        return
    except BaseException as exc:  # reported by the test's thread join
        into.error = exc


def read_ws(gw: Gateway, query: str, count: int, into: Collected) -> None:
    try:
        with ws_connect(f"{gw.ws_url}/stream?{query}", open_timeout=WAIT) as ws:
            while len(into.events) < count:
                message = json.loads(ws.recv(timeout=WAIT))
                if message["kind"] == "unit.created":
                    into.events.append(message)
    except BaseException as exc:
        into.error = exc


def joined(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(WAIT * 3)
        assert not thread.is_alive(), "a stream reader is stuck"


def test_two_websocket_and_two_sse_clients_get_every_event_once_in_order(
        open_gateway: Gateway) -> None:
    writers, per_writer = 4, 25
    total = writers * per_writer
    readers = [Collected() for _ in range(4)]
    threads = [
        threading.Thread(target=read_sse, args=(open_gateway, {"context": "fan"}, total,
                                                readers[0])),
        threading.Thread(target=read_sse, args=(open_gateway, {"context": "fan"}, total,
                                                readers[1])),
        threading.Thread(target=read_ws, args=(open_gateway, "context=fan", total, readers[2])),
        threading.Thread(target=read_ws, args=(open_gateway, "context=fan", total, readers[3])),
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: open_gateway_streams(open_gateway) >= 4, "four streams open")
    written: list[int] = []
    lock = threading.Lock()

    def write(name: str) -> None:
        with httpx2.Client(base_url=open_gateway.url, timeout=WAIT) as http:
            for i in range(per_writer):
                reply = http.post("/workunit", json={"context_id": "fan", "payload": f"{i}"},
                                  headers=as_agent(name))
                assert reply.status_code == 201
                with lock:
                    written.append(reply.json()["units"][0]["seq"])

    writer_threads = [threading.Thread(target=write, args=(f"w{n}",)) for n in range(writers)]
    for thread in writer_threads:
        thread.start()
    joined(writer_threads)
    joined(threads)
    for reader in readers:
        assert reader.error is None, reader.error
        seqs = [event["seq"] for event in reader.events]
        assert seqs == sorted(written), "every event once, in order"
    assert readers[0].ids == [str(seq) for seq in sorted(written)]


def open_gateway_streams(gw: Gateway) -> int:
    match = re.search(r"^engram_gateway_streams_open (\d+)$", gw.http.get("/metrics").text,
                      re.MULTILINE)
    return int(match.group(1)) if match else 0


def test_sse_resumes_across_a_daemon_restart_and_from_last_event_id(
        engramd: DaemonProcess) -> None:
    with gateway(engramd.env) as gw:
        first = [gw.http.post("/workunit", json={"context_id": "r", "payload": f"a{i}"})
                 .json()["units"][0]["seq"] for i in range(3)]
        collected = Collected()
        reader = threading.Thread(target=read_sse, args=(gw, {"context": "r", "after": "0"}, 6,
                                                         collected))
        reader.start()
        wait_until(lambda: len(collected.events) >= 3, "the first three events")
        engramd.stop()
        engramd.process = start_engramd(engramd.env)
        wait_until(lambda: gw.http.get("/readyz").status_code == 200, "the daemon back")
        second = [gw.http.post("/workunit", json={"context_id": "r", "payload": f"b{i}"})
                  .json()["units"][0]["seq"] for i in range(3)]
        joined([reader])
        assert collected.error is None, collected.error
        assert [e["seq"] for e in collected.events] == first + second

        # A client that reconnects with Last-Event-ID gets what came after it, once.
        resumed = Collected()
        read_sse(gw, {"context": "r"}, 4, resumed, headers={"Last-Event-ID": str(first[1])})
        assert resumed.error is None, resumed.error
        assert [e["seq"] for e in resumed.events] == [first[2], *second]
        bad = gw.http.get("/stream-sse", headers={"Last-Event-ID": "yesterday"})
        assert bad.status_code == 400


def test_a_websocket_cursor_resumes_after_its_acknowledgement(open_gateway: Gateway) -> None:
    seqs = [open_gateway.http.post("/workunit", json={"context_id": "w", "payload": str(i)})
            .json()["units"][0]["seq"] for i in range(4)]
    url = f"{open_gateway.ws_url}/stream?context=w&kind=unit.created&after=0&cursor=dash"
    with ws_connect(url, open_timeout=WAIT) as ws:
        got = [json.loads(ws.recv(timeout=WAIT)) for _ in range(2)]
        assert [m["seq"] for m in got] == seqs[:2]
        ws.send(json.dumps({"ack": seqs[1]}))
        ws.send("not json")
        reply = json.loads(ws.recv(timeout=WAIT))
        while reply["kind"] == "unit.created":  # events may come before the error reply
            reply = json.loads(ws.recv(timeout=WAIT))
        assert reply["kind"] == "error" and reply["code"] == "bad_request"
    with ws_connect(url, open_timeout=WAIT) as ws:
        assert json.loads(ws.recv(timeout=WAIT))["seq"] == seqs[2]
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(f"{open_gateway.ws_url}/stream?after=soon", open_timeout=WAIT)
    assert refused.value.response.status_code == 400



def next_reply(ws: Any) -> dict[str, Any]:
    """The next message on *ws* that is not an event or a heartbeat."""
    while (message := json.loads(ws.recv(timeout=WAIT)))["kind"] in ("unit.created",
                                                                      "heartbeat"):
        pass
    return dict(message)


def test_a_binary_message_gets_an_error_message_and_the_stream_goes_on(
        engramd: DaemonProcess) -> None:
    with gateway(engramd.env) as gw:
        def post(payload: str) -> int:
            reply = gw.http.post("/workunit", json={"context_id": "bin", "payload": payload})
            return int(reply.json()["units"][0]["seq"])

        first = post("one")
        url = f"{gw.ws_url}/stream?context=bin&kind=unit.created&after=0&cursor=bin"
        with ws_connect(url, open_timeout=WAIT) as ws:
            assert json.loads(ws.recv(timeout=WAIT))["seq"] == first
            ws.send(b"\x00\xffnot text")
            reply = next_reply(ws)
            assert reply["code"] == "bad_request" and "text" in reply["message"], reply
            second = post("two")
            assert json.loads(ws.recv(timeout=WAIT))["seq"] == second
            ws.send(json.dumps({"ack": second}))
            wait_until(lambda: cursor_at(engramd, "bin") == second, "the ack after it")


def test_a_websocket_cursor_sends_each_event_once_across_a_daemon_restart(
        engramd: DaemonProcess) -> None:
    with gateway(engramd.env) as gw:
        def post(payload: str) -> int:
            reply = gw.http.post("/workunit", json={"context_id": "wr", "payload": payload})
            return int(reply.json()["units"][0]["seq"])

        first = [post(f"a{i}") for i in range(3)]
        url = f"{gw.ws_url}/stream?context=wr&kind=unit.created&after=0&cursor=wdash"
        with ws_connect(url, open_timeout=WAIT) as ws:
            got = [json.loads(ws.recv(timeout=WAIT))["seq"] for _ in range(3)]
            ws.send(json.dumps({"ack": first[0]}))  # the name now trails what was sent
            wait_until(lambda: cursor_at(engramd, "wdash") == first[0], "the ack")
            engramd.stop()
            engramd.process = start_engramd(engramd.env)
            wait_until(lambda: gw.http.get("/readyz").status_code == 200, "the daemon back")
            second = [post(f"b{i}") for i in range(3)]
            while len(got) < 6:
                message = json.loads(ws.recv(timeout=WAIT))
                if message["kind"] == "unit.created":
                    got.append(message["seq"])
        assert got == first + second  # resumed after what it sent, not after the ack
        with ws_connect(url, open_timeout=WAIT) as ws:  # a new client: from the ack
            assert json.loads(ws.recv(timeout=WAIT))["seq"] == first[1]


def test_a_websocket_cursor_is_its_agents_own(engramd: DaemonProcess) -> None:
    """Bob, with his own token, opens Alice's cursor name: he gets a cursor of his own
    (from now), never her position, and cannot move hers; nor can an ack beyond the
    newest event skip what is to come."""
    tokens = {agent: run_cli(engramd.env, "agent", "token", "create", agent).stdout.strip()
              for agent in ("alice", "bob")}
    with gateway(engramd.env, "--auth", "token") as gw:
        def bearer(agent: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {tokens[agent]}"}

        seqs = [gw.http.post("/workunit", json={"context_id": "own", "payload": str(n)},
                             headers=bearer("alice")).json()["units"][0]["seq"]
                for n in range(3)]
        url = f"{gw.ws_url}/stream?context=own&kind=unit.created&cursor=feed&heartbeat=0.05"
        with ws_connect(url + "&after=0", additional_headers=bearer("alice"),
                        open_timeout=WAIT) as ws:
            assert [json.loads(ws.recv(timeout=WAIT))["seq"] for _ in range(3)] == seqs
            ws.send(json.dumps({"ack": seqs[0]}))
            wait_until(lambda: cursor_at(engramd, "feed", "alice") == seqs[0], "her ack")
        with ws_connect(url, additional_headers=bearer("bob"), open_timeout=WAIT) as ws:
            first = json.loads(ws.recv(timeout=WAIT))
            assert first["kind"] == "heartbeat" and first["cursor"] == seqs[-1]
            for beyond in (seqs[-1] + 1, 10**12):
                ws.send(json.dumps({"ack": beyond}))
                reply = json.loads(ws.recv(timeout=WAIT))
                while reply["kind"] == "heartbeat":
                    reply = json.loads(ws.recv(timeout=WAIT))
                assert reply["kind"] == "error" and reply["code"] == "bad_request"
                assert "beyond the newest event" in reply["message"]
            ws.send(json.dumps({"ack": seqs[-1]}))
            wait_until(lambda: cursor_at(engramd, "feed", "bob") == seqs[-1], "his ack")
        assert cursor_at(engramd, "feed", "alice") == seqs[0]
        with ws_connect(url, additional_headers=bearer("alice"), open_timeout=WAIT) as ws:
            message = json.loads(ws.recv(timeout=WAIT))
            while message["kind"] == "heartbeat":
                message = json.loads(ws.recv(timeout=WAIT))
            assert message["seq"] == seqs[1]


def cursor_at(engramd: DaemonProcess, name: str, agent: str = "tester") -> int:
    """Where *agent*'s cursor *name* stands (the gateway's own agent by default)."""
    with connect(engramd.socket, agent) as engram:
        subscription = engram.subscribe(cursor=name)
        subscription.close()
        return subscription.cursor


# -- security ------------------------------------------------------------------------

def test_foreign_host_or_origin_is_refused(open_gateway: Gateway) -> None:
    http = open_gateway.http
    port = open_gateway.url.rsplit(":", 1)[1]
    rebound = http.get("/healthz", headers={"Host": f"attacker.example:{port}"})
    assert rebound.status_code == 403
    cross = http.post("/workunit", json={"context_id": "c", "payload": "x"},
                      headers={"Origin": "http://attacker.example"})
    assert cross.status_code == 403
    same = http.get("/healthz", headers={"Origin": open_gateway.url})
    assert same.status_code == 200
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(f"{open_gateway.ws_url}/stream",
                   additional_headers={"Origin": "http://attacker.example"},
                   open_timeout=WAIT)
    assert refused.value.response.status_code == 403


def test_what_another_sites_page_makes_a_browser_send_is_refused(
        open_gateway: Gateway, engramd: DaemonProcess) -> None:
    """An <img src=…/inbox> on another site's page sends no Origin, and GET /inbox
    consumes what it returns: the browser's Sec-Fetch-Site gives the request away (the
    console's trial read a user's unread messages away so)."""
    with connect(engramd.socket, "someone") as someone:
        someone.send_message(["tester"], "for tester's eyes")
    http = open_gateway.http
    for site in ("cross-site", "same-site"):
        image = http.get("/inbox", headers={"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "no-cors",
                                            "Sec-Fetch-Dest": "image"})
        assert image.status_code == 403 and "another site" in image.json()["error"]["message"]
    assert http.get("/inbox/count").json()["unread"] == 1  # nothing was read away
    followed = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    assert http.get("/ui", headers=followed).status_code == 200  # a link to the console
    assert http.get("/inbox", headers=followed).status_code == 403
    own = http.get("/inbox/count", headers={"Sec-Fetch-Site": "same-origin"})
    assert own.status_code == 200


def test_a_gateway_of_agents_breaks_no_lease(engramd: DaemonProcess) -> None:
    """Breaking is an admin's act: with tokens, the gateway's callers are agents (the
    daemon, trusting its user's connections, would break for any of them)."""
    token = run_cli(engramd.env, "agent", "token", "create", "viewer").stdout.strip()
    with connect(engramd.socket, "holder") as holder:
        holder.acquire_lock("deploy:prod", ttl=60)
        with gateway(engramd.env, "--auth", "token") as gw:
            refused = gw.http.post("/locks/break", json={"resource": "deploy:prod",
                                                         "reason": "x"},
                                   headers={"Authorization": f"Bearer {token}"})
            assert refused.status_code == 403 and "admin" in refused.json()["error"]["message"]
        assert holder.get_lock("deploy:prod").lease is not None


def test_cors_is_granted_to_configured_origins_only(engramd: DaemonProcess) -> None:
    with gateway(engramd.env, "--cors-origin", "http://dash.local:3000") as gw:
        allowed = gw.http.options("/workunit", headers={
            "Origin": "http://dash.local:3000", "Access-Control-Request-Method": "POST"})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "http://dash.local:3000"
        other = gw.http.get("/healthz", headers={"Origin": "http://elsewhere.local"})
        assert other.status_code == 403


@pytest.mark.parametrize("args, says", [
    (["--listen", "0.0.0.0:0"], "--allow-remote"),
    (["--listen", "0.0.0.0:0", "--allow-remote"], "needs authentication"),
    (["--listen", "nowhere"], "HOST:PORT"),
    (["--auth", "jwt"], "exactly one of"),
    (["--auth", "magic"], "--auth must be one of"),
    (["--listen", "[::1:8080"], "HOST:PORT"),
    (["--listen", "::1:8080"], "in brackets"),
    (["--listen", "10.255.255.1:0", "--allow-remote", "--auth", "token"],
     "cannot listen on 10.255.255.1:0"),
    (["--auth", "jwt", "--jwt-secret-file", "/no/such/secret"],
     "/no/such/secret: No such file or directory"),
    (["--auth", "jwt", "--jwt-public-key", "/"], "/: Is a directory"),
    (["--cors-origin", "junk"], "--cors-origin must be an origin"),
    (["--cors-origin", "*"], "name each origin"),
    (["--cors-origin", "https://dash.example/page"], "no path"),
    (["--cors-origin", "https://dash.example:99999"], "--cors-origin must be an origin"),
])
def test_unsafe_or_wrong_settings_exit_2_with_one_line(
        env: dict[str, str], args: list[str], says: str) -> None:
    result = run_cli({**env, "ENGRAM_NO_AUTOSTART": "1"}, "gateway", *args)
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1 and says in result.stderr, result.stderr


def test_a_port_in_use_is_one_line_and_exit_2(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli({**env, "ENGRAM_NO_AUTOSTART": "1"}, "gateway",
                         "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"port 127.0.0.1:{port} is in use" in result.stderr


def _hs256(claims: dict[str, object], key: str = SECRET, **headers: object) -> str:
    return jwt.encode(claims, key, algorithm="HS256", headers=headers or None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_signed(header: dict[str, object], claims: dict[str, object], key: bytes) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _claims(**changes: object) -> dict[str, object]:
    now = int(time.time())
    return {"sub": "alice", "iss": "https://id.example", "aud": "engram", "iat": now,
            "nbf": now - 5, "exp": now + 600, **changes}


def test_a_handshake_with_bytes_behind_it_ends_only_its_own_connection(
        engramd: DaemonProcess) -> None:
    """A WebSocket handshake refused (401) with a body, or a request sent behind it: the
    app's refusal and hypercorn's own 400 collided, and the error ended the gateway."""
    token = run_cli(engramd.env, "agent", "token", "create", "alice").stdout.strip()
    handshake = ("GET /stream HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\nAuthorization: Bearer nope\r\n")
    with gateway(engramd.env, "--auth", "token") as gw:
        host, port = gw.url.removeprefix("http://").rsplit(":", 1)
        head = handshake.format(host=host)
        for behind in ("Content-Length: 5\r\n\r\nhello",
                       f"\r\nGET /openapi.json HTTP/1.1\r\nHost: {host}\r\n\r\n") * 10:
            with socket.create_connection((host, int(port)), timeout=WAIT) as conn:
                conn.sendall((head + behind).encode())
                assert conn.recv(65536).startswith(b"HTTP/1.1 4")  # 401 or hypercorn's 400
            assert gw.process.poll() is None, gw.process.stderr.read()  # type: ignore[union-attr]
        # With a valid token, hypercorn's 400 left the connection open for good.
        valid = head.replace("Bearer nope", f"Bearer {token}")
        with socket.create_connection((host, int(port)), timeout=WAIT) as conn:
            conn.sendall((valid + "Content-Length: 5\r\n\r\nhello").encode())
            answer = b""
            while chunk := conn.recv(65536):  # to the close (a timeout fails the test)
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400") and b"carries no body" in answer, answer
        wrote = gw.http.post("/workunit", json={"context_id": "k", "payload": "x"},
                             headers={"Authorization": f"Bearer {token}"})
        assert wrote.status_code == 201, wrote.text


def test_jwt_only_a_valid_token_is_served(engramd: DaemonProcess, scratch: str) -> None:
    secret = Path(scratch, "jwt.secret")
    secret.write_text(SECRET)
    wrong_key = "another-secret-that-is-long-enough-too-xx"
    _, payload, _ = _hs256(_claims()).split(".")
    unsigned = _b64(b'{"alg":"none","typ":"JWT"}')
    cases = {
        "expired": _hs256(_claims(exp=int(time.time()) - 60)),
        "wrong audience": _hs256(_claims(aud="someone-else")),
        "wrong issuer": _hs256(_claims(iss="https://evil.example")),
        "not yet valid": _hs256(_claims(nbf=int(time.time()) + 600)),
        "wrong key": _hs256(_claims(), key=wrong_key),
        "alg none": f"{unsigned}.{payload}.",
        "no agent": _hs256({k: v for k, v in _claims().items() if k != "sub"}),
    }
    with gateway(engramd.env, "--auth", "jwt", "--jwt-secret-file", str(secret),
                 "--jwt-issuer", "https://id.example", "--jwt-audience", "engram") as gw:
        good = {"Authorization": f"Bearer {_hs256(_claims())}", "X-Agent-ID": "mallory"}
        wrote = gw.http.post("/workunit", json={"context_id": "j", "payload": "x"},
                             headers=good)
        assert wrote.status_code == 201, wrote.text
        assert wrote.json()["units"][0]["agent_id"] == "alice"  # X-Agent-ID ignored
        for what, token in cases.items():
            # (Connection: close: a 401 reads no body, and hypercorn closes a connection
            # whose body it has not seen whole without saying so; a client that sends its
            # next request on it first sees "server disconnected". SPECS §gateway.)
            refused = gw.http.post("/workunit", json={"context_id": "j", "payload": "x"},
                                   headers={"Authorization": f"Bearer {token}",
                                            "Connection": "close"})
            assert refused.status_code == 401, what
            assert error_code(refused) == "unauthenticated", what
        missing = gw.http.post("/workunit", json={"context_id": "j", "payload": "x"},
                               headers={"X-Agent-ID": "alice"})
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert gw.http.get("/healthz").status_code == 200  # health stays open
        assert gw.http.get("/metrics").status_code == 401
        # The daemon, not the gateway, checks rights: bob may not release alice's lease.
        lease = gw.http.post("/locks", json={"resources": "x"}, headers=good).json()
        bob = {"Authorization": f"Bearer {_hs256(_claims(sub='bob'))}"}
        theirs = gw.http.delete("/locks/x", params={"lock_id": lease["leases"][0]["lock_id"]},
                                headers=bob)
        assert theirs.status_code == 403
        assert gw.http.get("/stream-sse").status_code == 401
    assert wrote.json()["units"][0]["agent_id"] == "alice"


def test_jwt_with_an_es256_key_set(engramd: DaemonProcess, scratch: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwks = Path(scratch, "jwks.json")
    jwks.write_text(json.dumps({"keys": [{**public, "kid": "k1", "alg": "ES256",
                                          "use": "sig"}]}))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    other = ec.generate_private_key(ec.SECP256R1())
    claims = {**_claims(sub="ci-runner"), "agent": "ci-runner"}
    with gateway(engramd.env, "--auth", "jwt", "--jwt-jwks", str(jwks),
                 "--jwt-agent-claim", "agent", "--jwt-audience", "engram") as gw:
        token = jwt.encode(claims, pem, algorithm="ES256", headers={"kid": "k1"})
        wrote = gw.http.post("/workunit", json={"context_id": "j", "payload": "x"},
                             headers={"Authorization": f"Bearer {token}"})
        assert wrote.status_code == 201, wrote.text
        assert wrote.json()["units"][0]["agent_id"] == "ci-runner"
        forged = jwt.encode(claims, other, algorithm="ES256", headers={"kid": "k1"})
        unknown_kid = jwt.encode(claims, pem, algorithm="ES256", headers={"kid": "k2"})
        # The public key used as an HMAC secret (algorithm confusion), signed by hand:
        # PyJWT itself refuses to make it.
        hs_confusion = _hand_signed({"alg": "HS256", "typ": "JWT", "kid": "k1"}, claims,
                                    json.dumps(public).encode())
        for token in (forged, unknown_kid, hs_confusion):
            refused = gw.http.get("/inbox", headers={"Authorization": f"Bearer {token}"})
            assert refused.status_code == 401


def test_engram_agent_tokens_as_bearer(engramd: DaemonProcess) -> None:
    created = run_cli(engramd.env, "agent", "token", "create", "bob")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    with gateway(engramd.env, "--auth", "token") as gw:
        bearer = {"Authorization": f"Bearer {token}", "X-Agent-ID": "mallory"}
        wrote = gw.http.post("/workunit", json={"context_id": "t", "payload": "x"},
                             headers=bearer)
        assert wrote.status_code == 201 and wrote.json()["units"][0]["agent_id"] == "bob"
        forged = gw.http.get("/inbox", headers={"Authorization": "Bearer egt_00_forged"})
        assert forged.status_code == 401 and "revoked" in forged.json()["error"]["message"]
        assert gw.http.get("/inbox", headers={"X-Agent-ID": "bob"}).status_code == 401
        jwt_like = gw.http.get("/inbox", headers={"Authorization": f"Bearer {_hs256(_claims())}"})
        assert jwt_like.status_code == 401
        assert run_cli(engramd.env, "agent", "token", "revoke", "bob").returncode == 0
        revoked = gw.http.get("/inbox", headers=bearer)
        assert revoked.status_code == 401


def test_without_the_extra_the_command_says_what_to_install(env: dict[str, str],
                                                            scratch: str) -> None:
    """A stand-in package directory that hides hypercorn, as a machine without it."""
    hidden = Path(scratch, "hide")
    (hidden / "hypercorn").mkdir(parents=True)
    (hidden / "hypercorn" / "__init__.py").write_text("raise ImportError(name='hypercorn')\n")
    result = run_cli({**env, "PYTHONPATH": str(hidden), "ENGRAM_NO_AUTOSTART": "1"},
                     "gateway")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "pip install 'engram-journal[http]'" in result.stderr


def test_both_streams_send_heartbeats_when_idle(open_gateway: Gateway) -> None:
    with httpx2.Client(base_url=open_gateway.url, timeout=WAIT) as http, \
            http.stream("GET", "/stream-sse", params={"context": "idle",
                                                      "heartbeat": "0.05"}) as response:
        first = next(sse_events(response.iter_lines()))
        assert first["event"] == "heartbeat" and "id" not in first
        data = json.loads(first["data"])
        assert data["kind"] == "heartbeat" and "head_seq" in data
    with ws_connect(f"{open_gateway.ws_url}/stream?context=idle&heartbeat=0.05",
                    open_timeout=WAIT) as ws:
        assert json.loads(ws.recv(timeout=WAIT))["kind"] == "heartbeat"


def test_over_the_rate_is_429_with_retry_after(env: dict[str, str]) -> None:
    limited = {**env, "ENGRAM_LIMITS_RATE_PER_SECOND": "2", "ENGRAM_LIMITS_RATE_BURST": "3"}
    daemon = start_engramd(limited)
    try:
        with gateway(limited) as gw:
            replies = [gw.http.get("/inbox/count", headers=as_agent("eager"))
                       for _ in range(20)]
            limited_replies = [r for r in replies if r.status_code == 429]
            assert limited_replies, [r.status_code for r in replies]
            assert error_code(limited_replies[0]) == "rate_limited"
            assert int(limited_replies[0].headers["retry-after"]) >= 1
            # Another agent has a connection (and a bucket) of its own.
            assert gw.http.get("/inbox/count", headers=as_agent("calm")).status_code == 200
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(WAIT)


def test_a_stalled_stream_reader_never_slows_the_writers(open_gateway: Gateway,
                                                         engramd: DaemonProcess) -> None:
    """An SSE client that stops reading: the writers go on, and the reader, when it
    reads again, still gets every event in order (the daemon's lag rule, then a
    resubscription after the last event sent)."""
    payload = "x" * 2000
    count = 3000
    with httpx2.Client(base_url=open_gateway.url, timeout=WAIT) as http, \
            http.stream("GET", "/stream-sse", params={"context": "flood"}) as response:
        wait_until(lambda: open_gateway_streams(open_gateway) >= 1, "the stream open")
        with connect(engramd.socket, "writer") as writer:
            for _ in range(count // 100):
                writer.create_units(requests.draft("flood", "MESSAGE", payload)
                                    for _ in range(100))
        seqs: list[int] = []
        for event in sse_events(response.iter_lines()):
            if event.get("event") == "unit.created":
                seqs.append(int(event["id"]))
                if len(seqs) == count:
                    break
    assert seqs == sorted(set(seqs)) and len(seqs) == count


def test_jwt_with_an_rs256_public_key(engramd: DaemonProcess, scratch: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = Path(scratch, "issuer.pem")
    public_pem.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with gateway(engramd.env, "--auth", "jwt", "--jwt-public-key", str(public_pem)) as gw:
        token = jwt.encode(_claims(sub="dash"), key, algorithm="RS256")
        reply = gw.http.post("/messages", json={"to": "bob", "payload": "hi",
                                                "new_recipients": True},
                             headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code == 201 and reply.json()["agent_id"] == "dash"
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = jwt.encode(_claims(sub="dash"), other, algorithm="RS256")
        assert gw.http.get("/inbox", headers={"Authorization": f"Bearer {forged}"}
                           ).status_code == 401


def test_a_stop_ends_streams_and_a_second_sigterm_is_not_fatal(engramd: DaemonProcess) -> None:
    """Supervisors repeat themselves; the gateway's stop must still end with status 0.
    Streams end at once; a request in flight (an inbox wait) finishes."""
    with gateway(engramd.env) as gw:
        waiting = Collected()
        # A member of a context: an agent known before its first request (a name passed
        # on with nothing to prove it is none), seen once its inbox wait arrives.
        gw.http.post("/contexts", json={"context_id": "waiting-room"})
        assert gw.http.patch("/contexts/waiting-room",
                             json={"add_agents": ["patient"]}).status_code == 200

        def wait_for_mail() -> None:
            try:
                reply = httpx2.get(f"{gw.url}/inbox", params={"wait": "2"},
                                   headers=as_agent("patient"), timeout=WAIT)
                waiting.events.append({"status": reply.status_code})
            except BaseException as exc:
                waiting.error = exc

        streamed = Collected()
        stream = threading.Thread(target=read_sse, args=(gw, {"context": "s"}, 1, streamed))
        stream.start()
        wait_until(lambda: open_gateway_streams(gw) >= 1, "the stream open")
        request = threading.Thread(target=wait_for_mail)
        request.start()
        wait_until(lambda: "patient" in engram_agents(engramd), "the inbox wait to arrive")
        gw.process.send_signal(signal.SIGTERM)

        def refuses_connections() -> bool:
            try:
                httpx2.get(f"{gw.url}/healthz", timeout=1)
            except httpx2.TransportError:
                return True
            return False

        wait_until(refuses_connections, "the graceful stop to begin")
        gw.process.send_signal(signal.SIGTERM)
        joined([stream, request])
        assert waiting.error is None and waiting.events == [{"status": 200}]
        assert streamed.events == []  # the stream ended without an event
        assert gw.process.wait(WAIT) == 0


def engram_agents(engramd: DaemonProcess) -> set[str]:
    with connect(engramd.socket, "observer") as client:
        return {agent.agent for agent in client.list_agents() if agent.last_seen}
