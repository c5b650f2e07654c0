"""The web console (``/ui``) in a real headless Chromium (Debian's ``chromium`` driven by
Playwright; never a downloaded browser) against a real ``engram gateway`` and a real
``engramd``: one daemon, one gateway and one browser for the module, a page per test.

Every wait is bounded polling (Playwright's ``expect`` and :func:`wait_until`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
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

from playwright.sync_api import expect  # noqa: E402

from tests.doors.test_gateway import Gateway, gateway  # noqa: E402
from tests.doors.test_gateway_browser import ARGS  # noqa: E402

pytestmark = pytest.mark.slow

TIMEOUT = WAIT * 1000
"""Playwright's bound on each wait, in milliseconds."""
HOSTILE = ("<img src=x onerror=\"window.pwned=1\"> \x1b[31mred\x1b[0m \u202eevil "
           "\u061cmark \u200bzero")


@pytest.fixture(scope="module")
def module_env() -> Iterator[dict[str, str]]:
    scratch = tempfile.mkdtemp(prefix="eg-", dir="/tmp")
    os.chmod(scratch, 0o700)
    cleaned = {k: v for k, v in os.environ.items()
               if not k.startswith("ENGRAM_") and k not in ("XDG_RUNTIME_DIR", "NO_COLOR")}
    yield {**cleaned, "ENGRAM_SOCKET": os.path.join(scratch, "run", "engramd.sock"),
           "ENGRAM_DATA_DIR": os.path.join(scratch, "data"),
           "XDG_CONFIG_HOME": os.path.join(scratch, "config"), "ENGRAM_AGENT": "tester",
           "ENGRAM_SEARCH_SEMANTIC": "off"}
    shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(module_env: dict[str, str]) -> Iterator[DaemonProcess]:
    handle = DaemonProcess(start_engramd(module_env), module_env["ENGRAM_SOCKET"], module_env)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def gw(daemon: DaemonProcess) -> Iterator[Gateway]:
    with gateway(daemon.env) as handle:
        yield handle


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


class Console:
    """A page of the console, with every console error and uncaught exception kept."""

    def __init__(self, browser: Any, url: str, *, width: int = 1280, height: int = 800
                 ) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", self._dialog)
        self.page.set_default_timeout(TIMEOUT)
        self.url = url

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, view: str = "now") -> Any:
        self.page.goto(f"{self.url}/ui#{view}")
        return self.page

    def live(self) -> None:
        expect(self.page.locator("#status")).to_have_attribute("data-state", "live")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def console(browser: Any, gw: Gateway) -> Iterator[Console]:
    opened = Console(browser, gw.url)
    yield opened
    opened.close()


def test_every_view_loads_without_console_errors_and_with_a_strict_policy(
        console: Console, gw: Gateway, daemon: DaemonProcess) -> None:
    with connect(daemon.socket, "writer") as client:
        client.create_unit("views", "MESSAGE", "first words")
    page = console.open()
    console.live()
    for view, heading in [("feed", "Feed"), ("tasks", "Tasks"), ("messages", "Messages"),
                          ("search", "Search"), ("timeline", "Timeline"), ("now", "Now")]:
        page.keyboard.press(str(["now", "feed", "tasks", "messages", "search",
                                 "timeline"].index(view) + 1))
        expect(page.locator(f"#view-{view} h1")).to_have_text(heading)
        expect(page.locator(f"#view-{view}")).to_be_visible()
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    expect(page.locator("#view-now h1")).to_be_visible()
    assert console.errors == []
    answer = gw.http.get("/ui")
    assert answer.headers["content-type"].startswith("text/html")
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert gw.http.get("/ui/console.js").headers["content-type"].startswith("text/javascript")
    assert gw.http.get("/ui/nothing.js").status_code == 404


def test_a_unit_written_by_the_cli_appears_in_the_feed_and_filters_apply(
        console: Console, daemon: DaemonProcess) -> None:
    page = console.open("feed")
    console.live()
    written = run_cli(daemon.env, "unit", "create", "-c", "feedctx", "-t", "REASONING",
                      "-p", "the cli was here", "--json")
    assert written.returncode == 0, written.stderr
    seq = json.loads(written.stdout)["seq"]
    row = page.locator(f"#feed tr[data-seq='{seq}']")
    expect(row).to_contain_text("the cli was here")
    expect(row).to_contain_text("REASONING")
    # Filters hide what does not match, at once.
    page.fill("#feed-filters [name=context]", "no-such-context")
    expect(row).to_be_hidden()
    page.fill("#feed-filters [name=context]", "feedctx")
    expect(row).to_be_visible()
    # Paused, the feed holds new events back and shows them on resume.
    page.click("#pause")
    held = json.loads(run_cli(daemon.env, "unit", "create", "-c", "feedctx", "-p", "later",
                              "--json").stdout)["seq"]
    expect(page.locator("#pending")).to_contain_text("1 new")
    expect(page.locator(f"#feed tr[data-seq='{held}']")).to_have_count(0)
    page.click("#pause")
    expect(page.locator(f"#feed tr[data-seq='{held}']")).to_contain_text("later")
    assert console.errors == []


def test_a_lease_and_its_queue_appear_and_go_in_now(
        console: Console, daemon: DaemonProcess) -> None:
    page = console.open("now")
    console.live()
    taken = run_cli(daemon.env, "lock", "acquire", "deploy:prod", "--ttl", "120")
    assert taken.returncode == 0, taken.stderr
    lock_id = taken.stdout.split()[0]
    row = page.locator("#leases tr[data-resource='deploy:prod']")
    expect(row).to_contain_text("tester")
    waiter = subprocess.Popen(
        [sys.executable, "-m", "engram_cli", "lock", "acquire", "deploy:prod", "--wait", "60"],
        env={**daemon.env, "ENGRAM_AGENT": "bob"}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        expect(row.locator(".queue")).to_contain_text("bob")
        waiter.kill()
        waiter.wait(WAIT)
        expect(row.locator(".queue")).to_have_count(0)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait(WAIT)
    released = run_cli(daemon.env, "lock", "release", "deploy:prod", "--lock-id", lock_id)
    assert released.returncode == 0, released.stderr
    expect(row).to_have_count(0)
    assert console.errors == []


def test_hostile_payloads_are_shown_as_text(console: Console, daemon: DaemonProcess) -> None:
    page = console.open("feed")
    console.live()
    with connect(daemon.socket, "mallory") as client:
        unit = client.create_unit("hostile", "MESSAGE", HOSTILE, meta={"note": HOSTILE})
    row = page.locator(f"#feed tr[data-seq='{unit.seq}']")
    expect(row).to_contain_text('<img src=x onerror="window.pwned=1">')
    expect(row).to_contain_text("\\x1b[31mred\\x1b[0m")  # the escape, visible
    expect(row).to_contain_text("\\u202eevil")
    expect(row).to_contain_text("\\u061cmark")  # the Arabic letter mark reorders too
    expect(row).to_contain_text("\\u200bzero")
    row.locator("a").first.click()  # its page: payload and metadata
    expect(page.locator("#unit-payload")).to_contain_text("<img src=x")
    expect(page.locator("#unit-fields")).to_contain_text("\\x1b[31m")
    assert page.locator("main img").count() == 0
    assert page.evaluate("window.pwned") is None
    assert console.dialogs == []
    assert console.errors == []


def test_a_gateway_restart_is_bridged_with_nothing_lost(
        browser: Any, daemon: DaemonProcess) -> None:
    with gateway(daemon.env) as first:
        port = first.url.rsplit(":", 1)[1]
        console = Console(browser, first.url)
        try:
            page = console.open("feed")
            console.live()
            with connect(daemon.socket, "writer") as client:
                before = client.create_unit("bridge", "MESSAGE", "before").seq
            expect(page.locator(f"#feed tr[data-seq='{before}']")).to_be_visible()
            first.stop()
            expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting")
            with connect(daemon.socket, "writer") as client:
                during = [client.create_unit("bridge", "MESSAGE", f"during {n}").seq
                          for n in range(3)]
            with gateway(daemon.env, listen=f"127.0.0.1:{port}"):
                console.live()
                with connect(daemon.socket, "writer") as client:
                    after = client.create_unit("bridge", "MESSAGE", "after").seq
                for seq in [*during, after]:
                    expect(page.locator(f"#feed tr[data-seq='{seq}']")).to_have_count(1)
                rows = "#feed tr[data-context='bridge'][data-kind='unit.created']"
                shown = page.locator(rows).evaluate_all(
                    "rows => rows.map(r => Number(r.dataset.seq))")
                assert shown == sorted([before, *during, after], reverse=True)
        finally:
            console.close()


def test_with_auth_on_no_token_shows_no_data_and_a_token_shows_it(
        browser: Any, daemon: DaemonProcess) -> None:
    token = run_cli(daemon.env, "agent", "token", "create", "overseer").stdout.strip()
    with connect(daemon.socket, "writer") as client:
        client.create_unit("secret", "MESSAGE", "for signed-in eyes")
    with gateway(daemon.env, "--auth", "token") as secured:
        console = Console(browser, secured.url)
        try:
            page = console.open("feed")
            expect(page.locator("#login")).to_be_visible()
            expect(page.locator("#status")).to_have_attribute("data-state", "signed-out")
            assert "for signed-in eyes" not in page.content()
            assert page.locator("#feed tbody tr").count() == 0
            page.fill("#token", "egt_not-a-token")
            page.click("#login-form button")
            expect(page.locator("#login-error")).not_to_be_empty()
            assert "for signed-in eyes" not in page.content()
            page.fill("#token", token)
            page.click("#login-form button")
            console.live()
            page.goto(f"{secured.url}/ui#feed")
            expect(page.locator("#feed")).to_contain_text("for signed-in eyes")
            page.click("#signout")
            expect(page.locator("#login")).to_be_visible()
            assert "for signed-in eyes" not in page.content()
        finally:
            console.close()
    # The 401s the page met are console messages of the browser's own (failed requests),
    # which are expected here: the page's own code raised nothing.
    assert not [e for e in console.errors if "Failed to load resource" not in e]


def test_breaking_a_lease_asks_for_a_reason_and_is_journaled(
        console: Console, daemon: DaemonProcess) -> None:
    taken = run_cli(daemon.env, "lock", "acquire", "stuck:job", "--ttl", "120")
    assert taken.returncode == 0, taken.stderr
    page = console.open("now")
    console.live()
    row = page.locator("#leases tr[data-resource='stuck:job']")
    row.get_by_role("button").click()
    expect(page.locator("#confirm")).to_be_visible()
    page.click("#confirm-cancel")
    expect(page.locator("#confirm")).to_be_hidden()
    expect(row).to_have_count(1)  # cancelled: nothing done
    row.get_by_role("button").click()
    page.click("#confirm-ok")  # no reason yet: the dialog stays
    expect(page.locator("#confirm")).to_be_visible()
    page.fill("#confirm-reason", "its holder hung")
    page.click("#confirm-ok")
    expect(row).to_have_count(0)
    page.keyboard.press("2")
    broken = page.locator("#feed tr[data-kind='lock.released']", has_text="stuck:job")
    expect(broken).to_contain_text("broken: its holder hung")
    assert console.errors == []


def test_a_break_confirmed_after_the_holder_changed_breaks_nothing(
        console: Console, daemon: DaemonProcess) -> None:
    """The dialog names the lease it was opened on: if its holder lets go and another
    takes the resource before the person confirms, the new holder keeps its lease."""
    with connect(daemon.socket, "alice") as alice, connect(daemon.socket, "bob") as bob:
        (shown,) = alice.acquire_lock("swap:job", ttl=120)
        page = console.open("now")
        console.live()
        row = page.locator("#leases tr[data-resource='swap:job']")
        expect(row).to_contain_text("alice")
        row.get_by_role("button").click()
        expect(page.locator("#confirm")).to_be_visible()
        alice.release_lock(shown.lock_id)
        (now,) = bob.acquire_lock("swap:job", ttl=120)
        page.fill("#confirm-reason", "alice hung")
        page.click("#confirm-ok")
        expect(page.locator("#toast")).to_contain_text("no longer held")
        expect(row).to_contain_text("bob")
        assert bob.get_lock("swap:job").lease.lock_id == now.lock_id  # type: ignore[union-attr]
    assert [e for e in console.errors if "Failed to load resource" not in e] == []


def lines(locator: Any) -> int:
    """The lines an element's text takes (its line boxes)."""
    return int(locator.evaluate("""e => { const r = document.createRange();
        r.selectNodeContents(e); return new Set([...r.getClientRects()].map(
        x => Math.round(x.top))).size; }"""))


def test_the_skip_link_goes_to_the_view_shown(console: Console) -> None:
    page = console.open("feed")
    console.live()
    page.focus(".skip")  # (the first stop of Tab in a page that has the focus)
    page.keyboard.press("Enter")
    expect(page.locator("#view-feed")).to_be_visible()
    expect(page.locator("#feed-title")).to_be_focused()
    assert page.evaluate("location.hash") == "#feed"
    assert console.errors == []


def test_a_missing_unit_shows_nothing_of_the_one_before(
        console: Console, daemon: DaemonProcess) -> None:
    with connect(daemon.socket, "writer") as client:
        unit = client.create_unit("units", "MESSAGE", "the unit shown first")
    page = console.open(f"unit/{unit.id}")
    expect(page.locator("#unit-payload")).to_have_text("the unit shown first")
    page.goto(f"{console.url}/ui#unit/{'0' * 8}-0000-0000-0000-{'0' * 12}")
    expect(page.locator("#unit-title")).to_contain_text("No unit")
    expect(page.locator("#unit-payload")).to_have_text("")
    assert "the unit shown first" not in page.locator("main").inner_text()
    assert not [e for e in console.errors if "Failed to load resource" not in e]


def test_the_badge_says_when_the_daemon_is_away(console: Console,
                                                daemon: DaemonProcess) -> None:
    page = console.open("feed")
    console.live()
    daemon.stop()
    try:
        expect(page.locator("#status")).to_have_attribute("data-state", "away",
                                                           timeout=TIMEOUT)
    finally:
        daemon.process = start_engramd(daemon.env)
    console.live()
    with connect(daemon.socket, "writer") as client:
        seq = client.create_unit("back", "MESSAGE", "the daemon is back").seq
    expect(page.locator(f"#feed tr[data-seq='{seq}']")).to_be_visible()


def test_a_signed_out_page_asks_nothing_more(browser: Any, daemon: DaemonProcess) -> None:
    with gateway(daemon.env, "--auth", "token") as secured:
        console = Console(browser, secured.url)
        asked: list[str] = []
        console.page.on("request", lambda r: asked.append(r.url))
        try:
            console.page.clock.install()
            page = console.open("now")
            expect(page.locator("#status")).to_have_attribute("data-state", "signed-out")
            page.wait_for_load_state("networkidle")
            mark = len(asked)
            page.clock.run_for(20_000)  # ten of Now's refreshes, were it shown
            page.evaluate("fetch('/healthz').then(r => r.text())")
            wait_until(lambda: any(u.endswith("/healthz") for u in asked[mark:]),
                       "the page's last request seen")
            assert [u for u in asked[mark:] if not u.endswith("/healthz")] == []
            expect(page.locator("#login")).to_be_visible()
        finally:
            console.close()


def test_long_names_keep_the_tables_whole_at_any_width(
        console: Console, daemon: DaemonProcess) -> None:
    agent = "agent-" + "x" * 120
    resource = "res:" + "r" * 400
    with connect(daemon.socket, agent) as client:
        (lease,) = client.acquire_lock(resource, ttl=120)
        page = console.open("now")
        console.live()
        row = page.locator("#leases tbody tr").filter(has_text="res:rrrr")
        expect(row).to_have_count(1)
        expect(row.locator("th .name")).to_have_attribute("title", resource)
        expect(row.locator("td .name").first).to_have_attribute("title", agent)
        expect(page.locator("#agents .name", has_text="agent-xxxx")).to_have_attribute(
            "title", agent)
        for width in (1280, 390):
            page.set_viewport_size({"width": width, "height": 800})
            # Whole in their panels at 1280; on a phone, a wide table scrolls in its own
            # panel, and the page stays as wide as the screen.
            for table in ("#leases", "#agents") if width > 700 else ():
                fits = page.locator(table).evaluate(
                    "t => t.scrollWidth <= t.parentElement.clientWidth + 1")
                assert fits, (table, width)
            assert page.evaluate(
                "document.documentElement.scrollWidth <= window.innerWidth"), width
            assert lines(row.get_by_role("button")) == 1, width
            for cell in row.locator("td.num").all():
                assert lines(cell) == 1, (width, cell.inner_text())
        client.release_lock(lease.lock_id)
    assert console.errors == []


def test_search_marks_the_matches_not_the_texts_own_stars(
        console: Console, daemon: DaemonProcess) -> None:
    with connect(daemon.socket, "writer") as client:
        client.create_unit("stars", "MESSAGE",
                           "make it **bold** and the zanzibar words **here** too")
        client.create_unit("stars", "MESSAGE", "the **quokka** rules")
    page = console.open("search")
    page.fill("#search-form [name=query]", "zanzibar")
    page.click("#search-form button")
    hit = page.locator("#hits .hit").first
    expect(hit.locator(".snippet")).to_contain_text("**bold**")
    expect(hit.locator("mark")).to_have_count(1)
    expect(hit.locator("mark")).to_have_text("zanzibar")
    page.fill("#search-form [name=query]", "quokka")
    page.click("#search-form button")
    expect(hit.locator(".snippet")).to_have_text("the **quokka** rules")
    expect(hit.locator("mark")).to_have_text("quokka")
    assert console.errors == []


@contextmanager
def busy(daemon: DaemonProcess) -> Iterator[None]:
    """A steady stream of events while the body runs, never a quiet moment: a lease
    renewed and a unit written every 50 ms (each a refresh's cause in Now and the
    Timeline)."""
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            with connect(daemon.socket, "chatty") as client:
                (lease,) = client.acquire_lock("busy:renewed", ttl=60)
                while not stop.wait(0.05):  # (the pace of the stream, not a wait for it)
                    client.renew_lock(lease.lock_id, ttl=60)
                    client.create_unit("busy", "REASONING", "still busy")
                client.release_lock(lease.lock_id)
        except BaseException as exc:  # told by the test, not lost in the thread
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(WAIT)
    assert not failures, failures


def test_now_refreshes_in_a_busy_stretch(console: Console, daemon: DaemonProcess) -> None:
    """Lease events every 50 ms: Now still shows a new lease (a refresh waited for a quiet
    moment, which never came)."""
    page = console.open("now")
    console.live()
    with busy(daemon), connect(daemon.socket, "newcomer") as newcomer:
        expect(page.locator("#leases tr[data-resource='busy:renewed']")).to_have_count(1)
        (lease,) = newcomer.acquire_lock("busy:new", ttl=60)
        expect(page.locator("#leases tr[data-resource='busy:new']")).to_contain_text("newcomer")
        newcomer.release_lock(lease.lock_id)
        expect(page.locator("#leases tr[data-resource='busy:new']")).to_have_count(0)
    assert console.errors == []


def test_the_timeline_refreshes_in_a_busy_stretch(console: Console,
                                                  daemon: DaemonProcess) -> None:
    page = console.open("timeline")
    console.live()
    with busy(daemon), connect(daemon.socket, "latecomer") as latecomer:
        expect(page.locator("#timeline g.lane[data-agent='chatty']")).to_have_count(1)
        latecomer.create_unit("busy", "MESSAGE", "here at last")
        (lease,) = latecomer.acquire_lock("busy:late", ttl=60)
        lane = page.locator("#timeline g.lane[data-agent='latecomer']")
        expect(lane.locator("rect.unit")).to_have_count(1)
        expect(lane.locator(f"rect.lease[data-lock='{lease.lock_id}']")).to_have_count(1)
        latecomer.release_lock(lease.lock_id)
    assert console.errors == []


def test_the_timeline_draws_the_leases_of_the_last_hour_before_the_page_opened(
        console: Console, daemon: DaemonProcess) -> None:
    """Leases taken and let go before the page opened are drawn, from the journal's
    lease history; so is one broken, and one held still."""
    with connect(daemon.socket, "historian") as historian, \
            connect(daemon.socket, "ops") as ops:
        (released,) = historian.acquire_lock("past:released", ttl=60)
        historian.release_lock(released.lock_id)
        (broken,) = historian.acquire_lock("past:broken", ttl=60)
        ops.break_lock("past:broken", "it hung", lock_id=broken.lock_id)
        (held,) = historian.acquire_lock("past:held", ttl=120)
        page = console.open("timeline")
        console.live()
        lane = page.locator("#timeline g.lane[data-agent='historian']")
        for lease, resource, until in [(released, "past:released", r"\d\d:\d\d:\d\d$"),
                                       (broken, "past:broken", r"\d\d:\d\d:\d\d$"),
                                       (held, "past:held", "now$")]:
            span = lane.locator(f"rect.lease[data-lock='{lease.lock_id}']")
            expect(span).to_have_count(1)
            expect(span.locator("title")).to_have_text(re.compile(
                rf"^lease {resource} · \d\d:\d\d:\d\d\u2013{until}"))
        # The day's view reads the rest of the day: nothing twice.
        page.select_option("#timeline-form [name=range]", "86400")
        expect(lane.locator(f"rect.lease[data-lock='{released.lock_id}']")).to_have_count(1)
        expect(page.locator("#timeline-note")).to_be_hidden()
        historian.release_lock(held.lock_id)
    assert console.errors == []


def test_the_feed_and_the_timeline_read_every_context(console: Console,
                                                      daemon: DaemonProcess) -> None:
    """More than 50 contexts: a unit in the last of them by name is in the feed's start
    and on the Timeline (they read the first 50 contexts only)."""
    with connect(daemon.socket, "many") as client:
        for n in range(55):
            client.create_context(f"aaaa-{n:02}")
        with connect(daemon.socket, "last-by-name") as last:
            unit = last.create_unit("zzzz-last", "MESSAGE", "in the last context")
        for n in range(55):  # (the newest units elsewhere, after it)
            client.create_unit(f"aaaa-{n:02}", "MESSAGE", "filler")
    wait_until(lambda: search_finds(console, unit.id), "the unit indexed")
    page = console.open("feed")
    expect(page.locator(f"#feed tr[data-seq='{unit.seq}']")).to_contain_text(
        "in the last context")
    page.keyboard.press("6")
    expect(page.locator("#timeline g.lane[data-agent='last-by-name'] rect.unit")).to_have_count(1)
    assert console.errors == []


def search_finds(console: Console, unit_id: str) -> bool:
    import httpx2

    answer = httpx2.post(f"{console.url}/search", json={"query": "", "limit": 1000})
    return any(hit["unit_id"] == unit_id for hit in answer.json()["hits"])


def test_messages_put_the_latest_activity_first(console: Console,
                                                daemon: DaemonProcess) -> None:
    with connect(daemon.socket, "ann") as ann, connect(daemon.socket, "ben") as ben:
        old = ann.send_message(["ben"], "the old thread starts", context_id="talk",
                               thread="old")
        ann.send_message(["ben"], "the new thread starts", context_id="talk", thread="new")
        page = console.open("messages")
        page.fill("#messages-form [name=context]", "talk")
        page.click("#messages-form button")
        titles = page.locator("#threads .thread h2")
        expect(titles.first).to_contain_text("Thread new")
        ben.send_message(["ann"], "a reply in the old one", reply_to=old.id)
        expect(titles.first).to_contain_text("Thread old")
        thread = page.locator("#threads .thread").first
        expect(thread.locator(".message .body")).to_have_text(
            ["the old thread starts", "a reply in the old one"])  # oldest first within
    assert console.errors == []


def test_the_leases_are_cards_at_a_phone_width(browser: Any, gw: Gateway,
                                               daemon: DaemonProcess) -> None:
    phone = Console(browser, gw.url, width=390, height=844)
    try:
        with connect(daemon.socket, "agent-" + "p" * 60) as client:
            (lease,) = client.acquire_lock("phone:" + "q" * 200, ttl=120)
            waiter = subprocess.Popen(
                [sys.executable, "-m", "engram_cli", "lock", "acquire", lease.resource,
                 "--wait", "60"], env={**daemon.env, "ENGRAM_AGENT": "queued"},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                page = phone.open("now")
                phone.live()
                row = page.locator("#leases tbody tr").filter(has_text="phone:qqq")
                expect(row.locator(".queue")).to_contain_text("queued")
                fits = page.locator("#leases").evaluate(
                    "t => t.scrollWidth <= t.parentElement.clientWidth + 1")
                assert fits
                assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
                for cell in row.locator("th, td").all():
                    if cell.is_visible():
                        box = cell.bounding_box()
                        assert box is not None and box["x"] + box["width"] <= 390 + 1
                for label in ("Holder", "Age", "Left", "Token", "Queue"):
                    assert row.locator(f"td[data-label='{label}']").is_visible()
                expect(row.get_by_role("button")).to_be_visible()
                assert lines(row.get_by_role("button")) == 1
            finally:
                waiter.kill()
                waiter.wait(WAIT)
            client.release_lock(lease.lock_id)
    finally:
        phone.close()
    assert phone.errors == []


def test_at_a_phone_width_the_timeline_opens_at_now(browser: Any, gw: Gateway,
                                                    daemon: DaemonProcess) -> None:
    """The chart (600 px at least) scrolls in its box at 390 px: it shows its right end,
    where now is, not the oldest end."""
    phone = Console(browser, gw.url, width=390, height=844)
    try:
        with connect(daemon.socket, "phone-agent") as client:
            client.create_unit("phone", "MESSAGE", "a unit to draw")
            page = phone.open("timeline")
            expect(page.locator("#timeline svg .lane")).not_to_have_count(0)
            box = page.locator("#timeline")
            assert box.evaluate("b => b.scrollWidth > b.clientWidth")
            assert box.evaluate("b => b.scrollLeft + b.clientWidth >= b.scrollWidth - 2")
    finally:
        phone.close()
    assert phone.errors == []


def test_the_timeline_says_when_its_bound_cut_the_window_short(
        console: Console, daemon: DaemonProcess) -> None:
    """More units in the hour than the page reads (2,000, the newest): the page says
    which were left out, and the newest are drawn."""
    from engramd.protocol import UnitDraft

    with connect(daemon.socket, "prolific") as client:
        for _ in range(3):
            client.create_units([UnitDraft(context_id="flood", type="MESSAGE",
                                           payload=b"one of many") for _ in range(800)])
        newest = client.create_unit("flood", "MESSAGE", "the newest")
    wait_until(lambda: search_finds(console, newest.id), "the flood indexed")
    page = console.open("timeline")
    note = page.locator("#timeline-note")
    expect(note).to_be_visible()
    expect(note).to_contain_text(re.compile(r"units before \d\d:\d\d:\d\d are not all drawn"))
    expect(page.locator("#timeline g.lane[data-agent='prolific'] rect.unit title",
                        has_text="the newest")).to_have_count(1)
    assert console.errors == []
