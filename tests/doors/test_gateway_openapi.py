"""``/openapi.json`` against the gateway that serves it: what the document says of the
endpoints (parameters, statuses, bounds, the streams), the defects a schemathesis run
found, each pinned, and the run itself: schemathesis generates requests from the
document (valid ones, and ones the document says are invalid), sends them to a real
``engram gateway`` in front of a real ``engramd``, and checks every answer against the
document (status, content type, headers, body schema), that valid requests are
accepted, invalid ones refused, and nothing is a server error.

The run is deterministic: Hypothesis derandomized, a fixed number of examples per
operation and mode, no shrinking, no example database.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

pytest.importorskip("hypercorn")

import requests
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis.errors import Unsatisfiable

from engram_cli.doors.gateway.routes import ROUTES
from engramd.protocol import bounds
from engramd.protocol.bounds import DEFAULT_MAX_TTL, MAX_INBOX_WAIT
from tests.conftest import DaemonProcess
from tests.doors.test_gateway import Gateway, as_agent, error_code, gateway, open_gateway

__all__ = ["open_gateway"]  # a fixture, from the gateway's tests

EXAMPLES = 25
"""Generated cases per operation and mode (valid, invalid)."""
LEASES = ("/locks", "/tasks/claim", "/tasks/{task_id}/claim")
LEASE = 0.5
"""Seconds a lease taken by a generated request lasts, at most."""
STREAMS = "^/stream(-sse|/sse)?$"
"""Endless responses and a WebSocket: their own tests (tests/doors/test_gateway.py)."""
CONFIG = {"checks": {"negative_data_rejection": {"expected-statuses": [
    "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429",
    "5xx"]}}}
"""Schemathesis's own settings (none read from files), but for one: an invalid request
may be refused with 413 as well, engram's answer to a value over a size limit (a search
query over 4096 characters), as the document says."""


# -- what the document says ------------------------------------------------------


def body_schema(spec: dict[str, Any], path: str, method: str = "post") -> dict[str, Any]:
    schema = spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        return dict(spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]])
    return dict(schema)


def query_schema(spec: dict[str, Any], path: str, method: str = "get") -> dict[str, Any]:
    (parameter,) = [p for p in spec["paths"][path][method]["parameters"] if p["in"] == "query"]
    assert (parameter["style"], parameter["explode"]) == ("form", True)
    return dict(spec["components"]["schemas"][parameter["schema"]["$ref"].rsplit("/", 1)[1]])


def test_the_document_says_what_each_endpoint_takes_and_answers(
        open_gateway: Gateway) -> None:
    spec = open_gateway.http.get("/openapi.json").json()
    documented = {(path, method) for path, item in spec["paths"].items() for method in item}
    served = {(path.replace(":path}", "}"), method.lower())
              for path, methods, _ in ROUTES for method in methods}
    # This daemon has no semantic search: /search/vector would answer 400 to anything.
    assert served - documented == {("/search/vector", "post")}
    assert body_schema(spec, "/search")["properties"]["mode"]["enum"] == ["keyword"]

    units = query_schema(spec, "/workunits/{context_id}")
    assert set(units["properties"]) == {"limit", "before", "after", "cursor", "reverse",
                                        "since", "until", "agent", "type"}
    assert units["additionalProperties"] is False  # any other parameter: 400
    assert units["properties"]["limit"]["maximum"] == bounds.MAX_PAGE
    assert {"required": ["before", "after"]} in units["not"]["anyOf"]
    assert query_schema(spec, "/locks/{resource}", "delete")["required"] == ["lock_id"]

    statuses = {(path, method): set(op["responses"]) for path, item in spec["paths"].items()
                for method, op in item.items()}
    for created in [("/workunit", "post"), ("/contexts", "post"), ("/locks", "post"),
                    ("/messages", "post"), ("/tasks", "post"), ("/tasks/claim", "post"),
                    ("/stream/ticket", "post"), ("/inbox/{unit_id}/ack", "post")]:
        assert "201" in statuses[created] and "200" not in statuses[created], created
    assert {"400", "401", "403", "429", "503", "504"} <= statuses["/workunit", "post"]
    assert {"409", "413"} <= statuses["/workunit", "post"]
    unauthenticated = spec["paths"]["/workunit"]["post"]["responses"]["401"]
    assert unauthenticated["headers"]["WWW-Authenticate"]["required"] is True

    claim = body_schema(spec, "/tasks/{task_id}/claim")
    assert "pid" not in claim["properties"] and "task_id" not in claim["properties"]
    assert "task_id" in body_schema(spec, "/tasks/claim")["properties"]
    assert spec["paths"]["/search"]["post"]["requestBody"]["required"] is False
    assert spec["paths"]["/tasks"]["post"]["requestBody"]["required"] is True
    assert "context_id" in body_schema(spec, "/search")["properties"]  # the seed's name
    draft = spec["components"]["schemas"]["DraftForm"]
    assert draft["properties"]["context_id"]["pattern"] == f"^{bounds.CONTEXT_ID_PATTERN}$"
    assert body_schema(spec, "/tasks")["properties"]["priority"]["maximum"] == 4
    pid = spec["components"]["schemas"]["UnitView"]["properties"]["pid"]
    assert "0 for a unit written over HTTP" in pid["description"]

    websocket = spec["paths"]["/stream"]["get"]
    assert {"101", "426"} <= set(websocket["responses"]) and "200" not in websocket["responses"]
    assert {p["name"] for p in websocket["parameters"] if p["in"] == "header"
            and p["required"]} == {"Upgrade", "Connection", "Sec-WebSocket-Key",
                                   "Sec-WebSocket-Version"}
    assert websocket["x-messages"]["client"]["$ref"].endswith("/Acknowledgement")
    sse = spec["paths"]["/stream-sse"]["get"]
    assert "text/event-stream" in sse["responses"]["200"]["content"]
    assert "cursor" not in query_schema(spec, "/stream-sse")["properties"]
    assert "cursor" in query_schema(spec, "/stream")["properties"]


# -- what schemathesis found, pinned ------------------------------------------------


def test_the_websocket_path_answers_a_plain_request_with_426(open_gateway: Gateway) -> None:
    plain = open_gateway.http.get("/stream")
    assert plain.status_code == 426 and error_code(plain) == "upgrade_required"
    assert plain.headers["upgrade"] == "websocket"
    assert open_gateway.http.post("/stream").status_code == 405


def test_a_lease_on_a_resource_with_a_line_break_is_in_reach(open_gateway: Gateway) -> None:
    http = open_gateway.http
    taken = http.post("/locks", json={"resources": "notes\nfinal"})
    assert taken.status_code == 201, taken.text
    lock_id = taken.json()["leases"][0]["lock_id"]
    assert http.get("/locks/notes%0Afinal").json()["lease"]["lock_id"] == lock_id
    released = http.delete("/locks/notes%0Afinal", params={"lock_id": lock_id})
    assert released.status_code == 200, released.text


def test_numbers_are_json_numbers(open_gateway: Gateway) -> None:
    http = open_gateway.http
    whole = http.post("/tasks", json={"title": "ship", "priority": 1.0})
    assert whole.status_code == 201 and whole.json()["task"]["priority"] == 1
    assert http.post("/tasks", json={"title": "ship", "priority": 1.5}).status_code == 400
    # A negative wait, however large, is refused, not a crash of the request's bound.
    assert http.post("/locks", json={"resources": "r", "wait": -1e308}).status_code == 400
    # Past 2**63 (a MessagePack uint64 still): refused by the daemon, not its index.
    assert http.post("/search", json={"offset": 2**63}).status_code == 400


def test_query_strings_are_read_strictly(open_gateway: Gateway) -> None:
    http = open_gateway.http
    assert http.post("/workunit", json={"context_id": "q", "payload": "x"}).status_code == 201
    for query in ("limit=", "limit=1_0", "limit=%D9%A1", "reverse=", "agent=a,,b", "type=",
                  "since="):
        answer = http.get(f"/workunits/q?{query}")
        assert answer.status_code == 400 and error_code(answer) == "bad_request", query
    # A time further back than any: the first there is, not an overflow (500).
    for since in ("99999999999999999999d", "0001-01-01T00:00:00%2B05:00"):
        assert http.get(f"/workunits/q?since={since}").status_code == 200
    assert http.get("/workunits/q?agent=a,b&type=message").status_code == 200


def test_a_body_names_no_envelope_and_agrees_with_its_path(open_gateway: Gateway) -> None:
    http = open_gateway.http
    assert http.post("/contexts", json={"context_id": "p"}).status_code == 201
    assert http.post("/search", json={"query": "x", "id": 7}).status_code == 400
    assert http.post("/search", json={"msg": "search"}).status_code == 400
    assert http.patch("/contexts/p", json={"context_id": "p", "display_name": "P"}
                      ).status_code == 200
    other = http.patch("/contexts/p", json={"context_id": "q", "display_name": "Q"})
    assert other.status_code == 400 and "path" in other.json()["error"]["message"]
    # related_* without related_to: checked all the same, never silently ignored.
    assert http.post("/search", json={"related_types": ["NOPE"]}).status_code == 400
    # A query without words matches nothing, once its filters are known to be good.
    assert http.post("/search", json={"query": "***", "types": ["NOPE"]}).status_code == 400
    assert http.post("/search", json={"query": "***", "related_types": ["NOPE"]}
                     ).status_code == 400
    assert http.post("/search", json={"query": "***", "types": ["MESSAGE"]}
                     ).json()["total"] == 0


def test_a_ticket_is_for_credentials_the_daemon_accepts(open_gateway: Gateway) -> None:
    refused = open_gateway.http.post("/stream/ticket", headers=as_agent("no spaces, please"))
    assert refused.status_code == 400 and "bad agent id" in refused.text


# -- the schemathesis run ---------------------------------------------------------------


class Known:
    """What generated data cannot know: ids of things that exist."""

    def __init__(self, http: Any) -> None:
        written = http.post("/workunit", json={"context_id": "schemathesis", "payload": "x"},
                            headers=as_agent("writer"))
        assert written.status_code == 201, written.text
        self.unit_id = written.json()["units"][0]["id"]


def prepare(case: Any, known: Known) -> None:
    """Valid requests that a schema cannot tell from invalid ones, made valid; waits
    bounded, so that the run stays short (every wait is valid, and some are long); and
    leases short, so that an agent's leases stay within its limit (100) however many
    requests take them (the limit is state, no schema's to say).

    * a relationship's target must be a unit that exists (400 otherwise, by design);
    * an advanced query is FTS5 syntax, which no JSON Schema describes.
    """
    body = case.body if isinstance(case.body, dict | list) else None
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if isinstance(body, dict) and _number(body.get("wait")) and body["wait"] >= 0:
        body["wait"] = min(body["wait"], 0.01)  # a lease's wait: any, valid
    wait = case.query.get("wait") if isinstance(case.query, dict) else None
    if _number(wait) and 0 <= wait <= MAX_INBOX_WAIT:
        case.query["wait"] = min(wait, 0.01)  # the inbox's: valid only up to an hour
    if case.method == "POST" and case.operation.path in LEASES:
        if body is None and case.operation.path != "/locks":
            body = {}
            case.body, case.media_type = body, "application/json"
        ttl = body.get("ttl") if isinstance(body, dict) else False
        if ttl is None or (_number(ttl) and 0 < ttl <= DEFAULT_MAX_TTL):
            body["ttl"] = min(ttl or LEASE, LEASE)
    if not positive:
        return
    for draft in body if isinstance(body, list) else [body]:
        if isinstance(draft, dict) and isinstance(draft.get("relationships"), list):
            for relationship in draft["relationships"]:
                if isinstance(relationship, dict):
                    relationship["target"] = known.unit_id
    if case.operation.path == "/search" and isinstance(body, dict):
        body.pop("advanced", None)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def run(operation: Any, mode: Any, session: requests.Session, known: Known,
        cases: list[int]) -> None:
    """*operation*'s generated cases of *mode*, each sent and its answer checked."""

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        # A query parameter whose generated value is [] or {} is not sent at all: a case
        # whose invalid part it is sends nothing invalid.
        assume(mode.is_positive or not any(
            value in ([], {}) for value in (case.query or {}).values()))
        cases.append(1)
        prepare(case, known)
        case.call_and_validate(session=session, timeout=10)

    check()


def test_the_gateway_answers_as_its_document_says(engramd: DaemonProcess) -> None:
    schemathesis = pytest.importorskip("schemathesis", reason="no schemathesis (the dev extra)")
    with gateway(engramd.env) as gw:
        known = Known(gw.http)
        schema = schemathesis.openapi.from_url(
            f"{gw.url}/openapi.json", config=schemathesis.Config.from_dict(CONFIG))
        schema = schema.exclude(path_regex=STREAMS)
        session = requests.Session()
        cases: list[int] = []
        failures: list[str] = []
        started = time.monotonic()
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (schemathesis.GenerationMode.POSITIVE,
                         schemathesis.GenerationMode.NEGATIVE):
                try:
                    run(operation, mode, session, known, cases)
                except Unsatisfiable:
                    continue  # nothing to make invalid (no parameters, no body)
                except (Exception, BaseExceptionGroup) as exc:  # every operation's, listed
                    failures.append(f"{operation.label} ({mode.value}): {exc}")
        print(f"{len(cases)} cases in {time.monotonic() - started:.1f}s")
        assert not failures, "\n\n".join(failures)
