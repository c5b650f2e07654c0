"""What the gateway's cold trial found: one caller's bad input must not take anything
from the others, and credentials are settled before anything else. The real
``engram gateway`` and ``engramd`` as processes, real HTTP, SSE and WebSocket clients."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("hypercorn")

import httpx2
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.conftest import WAIT, DaemonProcess, run_cli, start_engramd, wait_until
from tests.doors.test_gateway import (
    SECRET,
    Collected,
    Gateway,
    _hs256,
    error_code,
    gateway,
    open_gateway,
    open_gateway_streams,
    read_sse,
)
from tests.doors.test_gateway_limits import RawStream, answer_of, raw_request

pytestmark = pytest.mark.slow
__all__ = ["open_gateway"]  # a fixture, used by name

MADE_UP = "egt_000000000000_abcdefabcdefabcdefabcdefabcdefabcd"
"""An agent token of the right form that the daemon never issued."""


def stream_capacity(gw: Gateway, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    found = re.search(r"^engram_gateway_stream_capacity (\d+)$",
                      gw.http.get("/metrics", headers=headers).text, re.MULTILINE)
    assert found
    return int(found.group(1))


def _sse_status(gw: Gateway, query: str, headers: dict[str, str]) -> tuple[int, str]:
    """The status of an SSE request and its body when it is refused (the stream left at
    once when it opens)."""
    with httpx2.Client(base_url=gw.url, timeout=WAIT) as http, \
            http.stream("GET", f"/stream-sse?{query}", headers=headers) as response:
        return response.status_code, "" if response.status_code == 200 \
            else response.read().decode()


# -- 1. one request cannot take the streams of everyone -------------------------------

def test_a_stream_with_more_filters_than_a_subscription_holds_is_413_and_streams_go_on(
        engramd: DaemonProcess) -> None:
    """2,500 meta filters with a made-up token, again and again (more times than the
    gateway has daemon connections): 413 each time, and a real caller's stream opens
    after; no connection's place for streams was given up."""
    token = run_cli(engramd.env, "agent", "token", "create", "watcher").stdout.strip()
    many = "heartbeat=1&" + "&".join(f"meta=k{n}=v" for n in range(2500))
    with gateway(engramd.env, "--auth", "token") as gw:
        for _ in range(10):
            status, body = _sse_status(gw, many, {"Authorization": f"Bearer {MADE_UP}"})
            assert status == 413, body
            assert "2500 values of meta, at most 1024" in body
        status, body = _sse_status(gw, many, {"Authorization": f"Bearer {token}"})
        assert status == 413, body
        collected = Collected()
        reader = threading.Thread(target=read_sse, args=(
            gw, {"context": "after-flood"}, 1, collected,
            {"Authorization": f"Bearer {token}"}))
        reader.start()
        wait_until(lambda: open_gateway_streams_as(gw, token) == 1, "the stream open")
        gw.http.post("/workunit", json={"context_id": "after-flood", "payload": "x"},
                     headers={"Authorization": f"Bearer {token}"})
        reader.join(WAIT)
        assert collected.error is None and len(collected.events) == 1
        assert stream_capacity(gw, token) == 8 * 64


def open_gateway_streams_as(gw: Gateway, token: str) -> int:
    found = re.search(r"^engram_gateway_streams_open (\d+)$", gw.http.get(
        "/metrics", headers={"Authorization": f"Bearer {token}"}).text, re.MULTILINE)
    return int(found.group(1)) if found else 0


def test_a_daemon_that_holds_fewer_streams_per_connection_is_learnt_not_feared(
        env: dict[str, str], scratch: str) -> None:
    """engramd configured for 2 subscriptions per connection, the gateway with one
    connection: the third stream is 503, /metrics says the capacity is 2, and a place
    freed is a place again (the limit learnt is what the daemon holds, never less)."""
    env = {**env, "ENGRAM_LIMITS_MAX_SUBSCRIPTIONS_PER_CONNECTION": "2"}
    daemon = DaemonProcess(start_engramd(env), env["ENGRAM_SOCKET"], env)
    try:
        with gateway(env, "--daemon-connections", "1") as gw:
            assert stream_capacity(gw) == 64
            streams = [RawStream(gw, "context=few") for _ in range(2)]
            wait_until(lambda: open_gateway_streams(gw) == 2, "2 streams open")
            refused = gw.http.get("/stream-sse", params={"context": "few"})
            assert refused.status_code == 503 and error_code(refused) == "unavailable"
            assert stream_capacity(gw) == 2
            streams.pop().close()
            wait_until(lambda: open_gateway_streams(gw) == 1, "a place freed")
            # The unsubscription is on its way: the place is given again once it is done.
            wait_until(lambda: _opens(gw), "a stream to open in the freed place")
            assert stream_capacity(gw) == 2
            for stream in streams:
                stream.close()
    finally:
        daemon.stop()


def _opens(gw: Gateway) -> bool:
    status, _ = _sse_status(gw, "context=few", {})
    return status == 200


# -- 2. credentials before a body ----------------------------------------------------

def test_a_made_up_agent_token_is_401_before_a_byte_of_the_body_is_read(
        engramd: DaemonProcess) -> None:
    """A token of the right form the daemon never issued: 401 at once, never a body read
    and left waiting for (408 after --body-timeout); a real token's body is read."""
    token = run_cli(engramd.env, "agent", "token", "create", "writer").stdout.strip()
    head = ("POST /workunit HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{")
    with gateway(engramd.env, "--auth", "token", "--body-timeout", "600") as gw:
        for _ in range(2):  # a refusal is not remembered as an acceptance
            with raw_request(gw, head.format(MADE_UP).encode()) as sock:
                status, body = answer_of(sock)
            assert status == 401 and body["error"]["code"] == "unauthenticated", body
        for _ in range(2):  # asked once, then remembered a moment
            written = gw.http.post("/workunit", json={"context_id": "c", "payload": "p"},
                                   headers={"Authorization": f"Bearer {token}"})
            assert written.status_code == 201, written.text


# -- 3. a start beyond the newest event ----------------------------------------------

def test_a_stream_that_would_start_beyond_the_newest_event_is_400(
        open_gateway: Gateway) -> None:
    """``after`` or ``Last-Event-ID`` past the head would wait, silently, for events up
    to it and drop them: 400 naming the head, for SSE and WebSocket; at the head, the
    stream gets what comes next."""
    http = open_gateway.http
    head = http.post("/workunit", json={"context_id": "ahead", "payload": "x"}
                     ).json()["units"][0]["seq"]
    beyond = str(head + 5)
    for params, headers in (({"after": beyond}, {}), ({}, {"Last-Event-ID": beyond})):
        refused = http.get("/stream-sse", params={"context": "ahead", **params},
                           headers=headers)
        assert refused.status_code == 400 and error_code(refused) == "bad_request"
        assert f"beyond the newest event, {head}" in refused.json()["error"]["message"]
    with pytest.raises(InvalidStatus) as ws_refused:
        ws_connect(f"{open_gateway.ws_url}/stream?context=ahead&after={beyond}",
                   open_timeout=WAIT)
    assert ws_refused.value.response.status_code == 400
    assert f"newest event, {head}".encode() in ws_refused.value.response.body
    collected = Collected()
    reader = threading.Thread(target=read_sse, args=(
        open_gateway, {"context": "ahead"}, 1, collected, {"Last-Event-ID": str(head)}))
    reader.start()
    wait_until(lambda: open_gateway_streams(open_gateway) == 1, "the stream open")
    http.post("/workunit", json={"context_id": "ahead", "payload": "next"})
    reader.join(WAIT)
    assert collected.error is None and collected.events[0]["seq"] == head + 1


# -- 4. one Authorization ------------------------------------------------------------

def test_two_authorization_headers_are_400(engramd: DaemonProcess) -> None:
    token = run_cli(engramd.env, "agent", "token", "create", "twice").stdout.strip()
    with gateway(engramd.env, "--auth", "token") as gw:
        for pair in ((token, MADE_UP), (MADE_UP, token)):
            head = ("GET /inbox/count HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                    f"Authorization: Bearer {pair[0]}\r\nAuthorization: Bearer {pair[1]}"
                    "\r\n\r\n")
            with raw_request(gw, head.encode()) as sock:
                status, body = answer_of(sock)
            assert status == 400 and body["error"]["code"] == "bad_request", body
            assert "2 Authorization headers" in body["error"]["message"]
        one = gw.http.get("/inbox/count", headers={"Authorization": f"Bearer {token}"})
        assert one.status_code == 200, one.text


# -- 5. what a request without a body, or without a Host, gets -------------------------

def test_an_endpoint_that_takes_no_body_reads_none_and_never_answers_413(
        engramd: DaemonProcess) -> None:
    """A Content-Length past --max-body on an endpoint without a body is no business of
    it (/openapi.json lists no 413 there); one that takes a body refuses it at once."""
    with gateway(engramd.env, "--max-body", "1000") as gw:
        for line, status in (("GET /healthz", 200), ("GET /readyz", 200),
                             ("GET /inbox/count", 200), ("DELETE /locks/x?lock_id=1", 404),
                             ("POST /workunit", 413)):
            head = (f"{line} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                    "Content-Length: 1000000000\r\n\r\n")
            with raw_request(gw, head.encode()) as sock:
                got, body = answer_of(sock)
            assert got == status, (line, body)


def test_a_request_without_one_host_gets_the_one_error_shape(open_gateway: Gateway) -> None:
    for head, status, said in (
            (b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", 400, "Host"),
            (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n"
             b"Connection: close\r\n\r\n", 400, "Host"),
            (b"GET /healthz HTTP/1.0\r\n\r\n", 403, "a request without a Host header")):
        with raw_request(open_gateway, head) as sock:
            got, body = answer_of(sock)
        assert got == status, body
        assert body["error"]["code"] == ("bad_request" if status == 400 else "forbidden")
        assert said in body["error"]["message"]
    assert open_gateway.http.get("/healthz").status_code == 200


def test_a_malformed_chunked_body_gets_the_one_error_shape(open_gateway: Gateway) -> None:
    """h11 refuses the chunk before the endpoint reads it: hypercorn's answer, in the
    gateway's JSON shape with h11's reason, and nothing written."""
    head = (b"POST /workunit HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
            b"\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
    with raw_request(open_gateway, head) as sock:
        status, body = answer_of(sock)
    assert status == 400 and body["error"]["code"] == "bad_request", body
    assert "cannot be read as HTTP/1.1" in body["error"]["message"]
    assert "chunk" in body["error"]["message"]
    assert open_gateway.http.get("/healthz").status_code == 200


def test_a_request_framed_by_both_lengths_is_refused_and_its_body_never_read(
        open_gateway: Gateway) -> None:
    """Content-Length and Transfer-Encoding together (request smuggling behind a proxy
    that reads the other one): 400 in the JSON shape, the connection closed, so that
    neither the body nor a request hidden after it is ever taken."""
    unit = b'{"context_id": "smuggled", "payload": "x"}'
    hidden = b"POST /workunit HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s" % (
        len(unit), unit)
    head = (b"POST /workunit HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
            b"\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(unit), unit) + hidden)
    with raw_request(open_gateway, head) as sock:
        status, body = answer_of(sock)  # (read until the gateway closes the connection)
    assert status == 400 and body["error"]["code"] == "bad_request", body
    assert "Content-Length and Transfer-Encoding" in body["error"]["message"]
    assert open_gateway.http.get("/workunits/smuggled").status_code == 404
    # Either alone is as ever.
    alone = raw_request(open_gateway, b"POST /workunit HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
                        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(unit), unit))
    with alone as sock:
        status, body = answer_of(sock)
    assert status == 201, body


def test_a_ttl_no_lease_lives_by_is_400_on_acquire_and_renew(open_gateway: Gateway) -> None:
    """``"ttl": 1e-300`` was granted, a lease that ended as it began: refused as every
    door refuses it (the daemon's check), and what /openapi.json says."""
    http = open_gateway.http
    for ttl in (1e-300, 0.05, 0):
        refused = http.post("/locks", json={"resources": "brief", "ttl": ttl})
        assert refused.status_code == 400 and error_code(refused) == "bad_request", ttl
        assert "ttl must be at least 0.1" in refused.text
    (lease,) = http.post("/locks", json={"resources": "brief", "ttl": 60}).json()["leases"]
    refused = http.post("/locks/renew", json={"lock_id": lease["lock_id"], "ttl": 1e-300})
    assert refused.status_code == 400 and error_code(refused) == "bad_request"
    schema = http.get("/openapi.json").json()["components"]["schemas"]
    assert schema["RenewForm"]["properties"]["ttl"]["anyOf"][0]["minimum"] == 0.1


@pytest.mark.parametrize(("method", "path", "segment"), [
    ("GET", "/locks/%ff%fe", "%ff%fe"), ("DELETE", "/locks/a/%ff?lock_id=1", "%ff"),
    ("GET", "/workunit/%ff%fe", "%ff%fe"), ("GET", "/workunits/ctx%c3", "ctx%c3"),
    ("GET", "/contexts/%80", "%80"), ("GET", "/tasks/%ff", "%ff"),
    ("POST", "/inbox/%fe/ack", "%fe"), ("GET", "/ui/%ff.js", "%ff.js")])
def test_a_path_parameter_that_is_not_utf8_is_400_naming_it(
        open_gateway: Gateway, method: str, path: str, segment: str) -> None:
    """Percent-decoded to bytes that are not UTF-8, a segment would be taken as U+FFFD
    (``/locks/%ff%fe`` the lease on "\ufffd\ufffd"): refused, before any endpoint."""
    answer = open_gateway.http.request(method, path)
    assert answer.status_code == 400, answer.text
    assert error_code(answer) == "bad_request"
    assert f"'{segment}' is not UTF-8" in answer.json()["error"]["message"]
    # The same text percent-encoded as UTF-8 is a name like any other.
    assert open_gateway.http.get("/locks/%C3%BF").json()["resource"] == "\u00ff"


# -- 6. smaller things ---------------------------------------------------------------

def _jwt_gateway(engramd: DaemonProcess, scratch: str) -> Any:
    secret = Path(scratch, "jwt.secret")
    secret.write_text(SECRET + "\n")  # as echo writes it: the newline is not the secret's
    return gateway(engramd.env, "--auth", "jwt", "--jwt-secret-file", str(secret))


def test_a_ticket_lasts_no_longer_than_the_jwt_it_was_issued_for(
        engramd: DaemonProcess, scratch: str) -> None:
    with _jwt_gateway(engramd, scratch) as gw:
        def ticket(expires_in: int) -> float:
            token = _hs256({"sub": "alice", "exp": int(time.time()) + expires_in})
            issued = gw.http.post("/stream/ticket",
                                  headers={"Authorization": f"Bearer {token}"})
            assert issued.status_code == 201, issued.text
            return float(issued.json()["expires_in"])

        assert 0 < ticket(5) <= 5
        assert ticket(600) == 30


def test_a_jwt_naming_no_agent_id_is_401(engramd: DaemonProcess, scratch: str) -> None:
    """A claim the daemon would refuse as an agent id names no agent these credentials
    can be: 401, as control characters in it are."""
    with _jwt_gateway(engramd, scratch) as gw:
        for sub in ("ålice", "a b", "-lead", "a" * 257, "a\nb"):
            token = _hs256({"sub": sub, "exp": int(time.time()) + 600})
            refused = gw.http.get("/inbox/count", headers={"Authorization": f"Bearer {token}"})
            assert refused.status_code == 401 and error_code(refused) == "unauthenticated", sub
        token = _hs256({"sub": "ci@build:7", "exp": int(time.time()) + 600})
        assert gw.http.get("/inbox/count",
                           headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_callers_with_credentials_never_read_the_daemons_socket_path(
        engramd: DaemonProcess) -> None:
    """With the daemon away, /readyz and a request answer 503 without this machine's
    paths (the gateway's log has them); with --auth none (loopback, local callers) the
    client library's whole reason is told."""
    socket_dir = str(Path(engramd.socket).parent)
    env = {**engramd.env, "ENGRAM_NO_AUTOSTART": "1"}
    with gateway(env, "--auth", "token") as private, gateway(env) as local:
        engramd.stop()
        for answer in (private.http.get("/readyz"),
                       private.http.get("/inbox/count",
                                        headers={"Authorization": f"Bearer {MADE_UP}"})):
            assert answer.status_code == 503, answer.text
            assert socket_dir not in answer.text and "engram daemon start" not in answer.text
        told = local.http.get("/readyz")
        assert told.status_code == 503 and socket_dir in told.text
        private.process.send_signal(signal.SIGTERM)
        assert private.process.stderr is not None
        assert socket_dir in private.process.stderr.read()  # (until it ends, at the stop)


def test_revoking_by_a_token_id_as_a_name_says_how_to_give_an_id(
        engramd: DaemonProcess) -> None:
    run_cli(engramd.env, "agent", "token", "create", "somebody")
    (row,) = [line for line in run_cli(engramd.env, "agent", "token", "list").stdout
              .splitlines() if "somebody" in line]
    token_id = row.split()[0]
    wrong = run_cli(engramd.env, "agent", "token", "revoke", token_id)
    assert wrong.returncode == 3, wrong
    assert f"engram agent token revoke --id {token_id}" in wrong.stderr
    assert wrong.stderr.count("\n") == 1
    right = run_cli(engramd.env, "agent", "token", "revoke", "--id", token_id)
    assert right.returncode == 0 and token_id in right.stdout


def test_a_head_over_16_kib_is_431_even_when_it_comes_whole(open_gateway: Gateway) -> None:
    """h11 bounds a head that comes in pieces; one that arrives whole (one header of 17 KB,
    3,000 small ones) is bounded by the gateway alike: 431 in the JSON shape."""
    for headers in ([b"X-Big: " + b"a" * 17_000], [b"X-N%d: v" % n for n in range(3000)]):
        head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"\r\n".join(headers)
        with raw_request(open_gateway, head + b"\r\n\r\n") as sock:
            status, body = answer_of(sock)
        assert status == 431 and body["error"]["code"] == "too_large", body
    fits = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Some: "
    with raw_request(open_gateway, fits + b"a" * 15_000 + b"\r\n\r\n") as sock:
        assert answer_of(sock)[0] == 200


def test_a_transfer_coding_the_gateway_cannot_read_is_501_not_implemented(
        open_gateway: Gateway) -> None:
    head = (b"POST /workunit HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
            b"\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")
    with raw_request(open_gateway, head) as sock:
        status, body = answer_of(sock)
    assert status == 501 and body["error"]["code"] == "not_implemented", body


def test_a_parameter_given_twice_is_refused_not_one_of_them_chosen(
        open_gateway: Gateway) -> None:
    refused = open_gateway.http.get("/lock-history?limit=1&limit=2")
    assert refused.status_code == 400 and "limit given 2 times" in refused.text
    assert open_gateway.http.get("/lock-history?limit=2").status_code == 200
