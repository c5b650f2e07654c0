"""``make screenshots``: each view of the web console at 1280x800 (and Now at a phone's
width, 390 px), as PNG files in
``docs/screenshots/``, from a throwaway daemon filled the way ``make demo`` fills it
(alice and bob on build-42), with tasks, messages and a lease with a queue beside.

Needs the ``http`` extra, Playwright (the ``dev`` extra) and Debian's ``chromium``
(``apt-get install chromium``); nothing is downloaded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engram_cli.bench.demo import Demo

OUT = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
VIEWPORT = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


def fill(demo: Demo) -> dict[str, str]:
    """The demo's units on build-42, and tasks, messages and leases around them."""
    def run(*args: str, agent: str) -> str:
        return demo.run(*args, agent=agent, capture=True, quiet=True)

    started = run("unit", "create", "-c", "build-42", "-t", "task_status", "-m", "step=build",
                  "-p", "build 42 started", agent="alice")
    call = run("unit", "create", "-c", "build-42", "-t", "tool_call", "-p", "pytest -q",
               "-r", f"RESPONDS_TO:{started}", agent="bob")
    run("unit", "create", "-c", "build-42", "-t", "tool_result", "-m", "exit=0",
        "-p", "179 passed in 7.2s", "-r", f"CAUSES:{call}", agent="bob")
    run("unit", "create", "-c", "build-42", "-t", "reasoning", "-p",
        "tests pass; safe to merge", "-r", f"DEPENDS_ON:{call}", agent="alice")
    run("unit", "create", "-c", "build-42", "-t", "file_change", "-m", "path=src/app.py",
        "-p", "src/app.py: retry the upload twice before giving up", agent="carol")
    run("unit", "create", "-c", "build-42", "-t", "error", "-p",
        "flaky: test_upload timed out once (passed on retry)", agent="carol")
    schema = run("task", "add", "Migrate the schema", "-c", "build-42", "-P", "1",
                 agent="alice")
    run("task", "add", "Backfill the new column", "-c", "build-42", "-d", schema, agent="alice")
    run("task", "add", "Write the release notes", "-c", "build-42", "-P", "3", agent="bob")
    docs = run("task", "add", "Update the API docs", "-c", "build-42", agent="bob")
    run("task", "claim", docs, "--pid", str(os.getpid()), agent="carol")
    run("task", "done", docs, "--pid", str(os.getpid()), agent="carol")
    run("task", "claim", schema, "--pid", str(os.getpid()), agent="bob")
    review = run("send", "--to", "bob,carol", "--thread", "review-42", "--ack-required",
                 "-p", "Please review the retry change before the merge", agent="alice")
    run("ack", review, agent="bob")
    run("send", "--reply-to", review, "--to", "alice", "-p",
        "Looks good; one nit on the backoff", agent="bob")
    run("send", "--to", "*", "-p", "Freezing main at 17:00 for the release", agent="alice")
    return {"unit": call}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shoot(url: str, out: Path, unit: str) -> list[Path]:
    from playwright.sync_api import expect, sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    written = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
        page.set_default_timeout(10_000)
        page.goto(f"{url}/ui#now")
        expect(page.locator("#status")).to_have_attribute("data-state", "live")
        for view, ready in [("now", "#leases tbody tr .queue li"), ("feed", "#feed tbody tr"),
                            ("tasks", "#tasks-claimed .card"), ("messages", ".thread"),
                            ("search", "#hits .hit mark"), ("unit", "#unit-trace .node"),
                            ("timeline", "#timeline svg .lane")]:
            page.goto(f"{url}/ui#{view}/{unit}" if view == "unit" else f"{url}/ui#{view}")
            if view == "timeline":
                page.select_option("#timeline-form [name=range]", "0")
            if view == "search":
                page.fill("#search-form [name=query]", "tests")
                page.click("#search-form button")
            expect(page.locator(ready).first).to_be_visible()
            path = out / f"{view}.png"
            page.screenshot(path=str(path))
            written.append(path)
        # Now at a phone's width: each lease a card of labelled lines.
        page.set_viewport_size(PHONE)  # type: ignore[arg-type]
        page.goto(f"{url}/ui#now")
        expect(page.locator("#leases tbody tr .queue li").first).to_be_visible()
        path = out / "now-phone.png"
        page.screenshot(path=str(path), full_page=True)
        written.append(path)
        browser.close()
    return written


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="engram-shots-") as scratch:
        os.chmod(scratch, 0o700)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_")},
               "ENGRAM_SOCKET": os.path.join(scratch, "engramd.sock"),
               "ENGRAM_DATA_DIR": os.path.join(scratch, "data"), "ENGRAM_AGENT": "demo",
               "ENGRAM_SEARCH_SEMANTIC": "off"}
        demo = Demo(env)
        # This checkout's engram (not whatever `engram` the venv's scripts name).
        demo.engram = [sys.executable, "-m", "engram_cli"]
        gateway = waiter = None
        try:
            demo.run("daemon", "start", quiet=True, capture=True)
            ids = fill(demo)
            lock_id = demo.run("lock", "acquire", "deploy:prod", "--ttl", "900",
                               agent="alice", capture=True, quiet=True)
            waiter = subprocess.Popen([*demo.engram, "lock", "acquire", "deploy:prod",
                                       "--wait", "120"],
                                      env={**env, "ENGRAM_AGENT": "bob"},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            demo.run("lock", "acquire", "build-42/merge", "--ttl", "300", agent="carol",
                     capture=True, quiet=True)
            gateway = subprocess.Popen([*demo.engram, "gateway", "--listen",
                                        f"127.0.0.1:{free_port()}", "--json"], env=env,
                                       stdout=subprocess.PIPE, text=True)
            assert gateway.stdout is not None
            url = json.loads(gateway.stdout.readline())["listening"][0]
            time.sleep(0.5)  # the waiter in line (a screenshot, not a test)
            for path in shoot(url, OUT, ids["unit"]):
                print(path.relative_to(OUT.parent.parent))
            demo.run("lock", "release", "deploy:prod", "--lock-id", lock_id, agent="alice",
                     capture=True, quiet=True, may_fail=True)
        finally:
            for process in (waiter, gateway):
                if process is not None:
                    process.terminate()
                    process.wait(10)
            subprocess.run([*demo.engram, "daemon", "stop"], env=env, check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
