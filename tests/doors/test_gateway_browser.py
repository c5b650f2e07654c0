"""Browsers stream with authentication: a real headless Chromium (Debian's ``chromium``,
driven by Playwright; never a downloaded browser) against the real gateway and daemon.

A page cannot put ``Authorization`` on an EventSource or a WebSocket: it asks
``POST /stream/ticket`` (with its bearer token, through CORS) for a single-use ticket
and opens the stream with ``?ticket=``."""

from __future__ import annotations

import http.server
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.conftest import WAIT, DaemonProcess, connect, run_cli, start_engramd, wait_until

pytest.importorskip("hypercorn")
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not shutil.which(CHROMIUM):
    pytest.skip("no chromium here (apt-get install chromium)", allow_module_level=True)

from tests.doors.test_gateway import gateway, open_gateway_streams  # noqa: E402

pytestmark = pytest.mark.slow

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]

PAGE = b"""<!doctype html><title>engram</title><script>
window.received = []; window.errors = [];
async function ticket(gw, token) {
  const r = await fetch(gw + "/stream/ticket", {method: "POST",
    headers: {"Authorization": "Bearer " + token}});
  if (!r.ok) throw new Error("ticket: " + r.status);
  return (await r.json()).ticket;
}
function listen(url) {
  const source = new EventSource(url);
  source.addEventListener("unit.created", e => window.received.push(Number(e.lastEventId)));
  source.onerror = () => window.errors.push(source.readyState);
  window.source = source;
}
function socket(url) {
  window.ws = [];
  const ws = new WebSocket(url);
  ws.onmessage = e => { const m = JSON.parse(e.data);
                        if (m.kind === "unit.created") window.ws.push(m.seq); };
  ws.onerror = () => window.errors.push("ws");
}
</script>"""


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def page_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


def streams_open(gw: Any, token: str) -> int:
    metrics = gw.http.get("/metrics", headers={"Authorization": f"Bearer {token}"}).text
    found = re.search(r"^engram_gateway_streams_open (\d+)$", metrics, re.MULTILINE)
    return int(found.group(1)) if found else 0


def write(engramd: DaemonProcess, context: str, count: int) -> list[int]:
    with connect(engramd.socket, "writer") as client:
        return [client.create_unit(context, "MESSAGE", f"n{n}").seq for n in range(count)]


def test_a_page_streams_with_a_ticket_across_a_daemon_restart(
        engramd: DaemonProcess, browser: Any) -> None:
    token = run_cli(engramd.env, "agent", "token", "create", "dash").stdout.strip()
    with page_server() as allowed, page_server() as other, \
            gateway(engramd.env, "--auth", "token", "--cors-origin", allowed) as gw:
        page = browser.new_page()
        page.goto(allowed)
        page.evaluate("""async ([gw, token]) => {
            listen(gw + "/stream-sse?context=web&after=0&ticket=" + await ticket(gw, token));
            socket(gw.replace("http", "ws") + "/stream?context=web&after=0&ticket="
                   + await ticket(gw, token));
        }""", [gw.url, token])
        wait_until(lambda: streams_open(gw, token) == 2, "both streams open")
        seqs = write(engramd, "web", 5)
        engramd.stop()  # the streams stay open, waiting for it
        engramd.process = start_engramd(engramd.env)
        seqs += write(engramd, "web", 5)
        wait_until(lambda: page.evaluate("window.received.length") >= 10, "10 events")
        assert page.evaluate("window.received") == seqs  # nothing lost, nothing twice
        wait_until(lambda: page.evaluate("window.ws.length") >= 10, "10 messages")
        assert page.evaluate("window.ws") == seqs
        # A ticket opens one stream: used again, it is refused.
        used = gw.http.post("/stream/ticket", headers={"Authorization": f"Bearer {token}"})
        ticket = used.json()["ticket"]
        with gw.http.stream("GET", "/stream-sse", params={"ticket": ticket}) as first:
            assert first.status_code == 200
        assert gw.http.get("/stream-sse", params={"ticket": ticket}).status_code == 401

        # Another origin: its request for a ticket is refused, and so is a stream
        # opened with a ticket it got elsewhere.
        foreign = browser.new_page()
        foreign.goto(other)
        refused = foreign.evaluate("""async ([gw, token]) => {
            try { await ticket(gw, token); return "issued"; }
            catch (e) { return String(e); } }""", [gw.url, token])
        assert refused != "issued"
        stolen = gw.http.post("/stream/ticket",
                              headers={"Authorization": f"Bearer {token}"}).json()["ticket"]
        foreign.evaluate("""([gw, t]) => listen(gw + "/stream-sse?context=web&after=0&ticket="
                                                  + t)""", [gw.url, stolen])
        wait_until(lambda: foreign.evaluate("window.errors.length") >= 1, "the refusal")
        assert foreign.evaluate("window.received") == []
        assert foreign.evaluate("window.source.readyState") == 2  # CLOSED: no retries


def test_an_event_source_opened_while_the_daemon_is_away_waits_and_resumes(
        engramd: DaemonProcess, browser: Any) -> None:
    with page_server() as origin, gateway(engramd.env, "--cors-origin", origin) as gw:
        page = browser.new_page()
        page.goto(origin)
        engramd.stop()
        page.evaluate("gw => listen(gw + '/stream-sse?context=away&after=0&heartbeat=0.2')",
                      gw.url)
        wait_until(lambda: open_gateway_streams(gw) == 1, "the stream open, waiting")
        engramd.process = start_engramd(engramd.env)
        seqs = write(engramd, "away", 3)
        wait_until(lambda: page.evaluate("window.received.length") >= 3, "3 events",
                   timeout=WAIT * 2)
        assert page.evaluate("window.received") == seqs
        assert page.evaluate("window.source.readyState") == 1  # OPEN all along
