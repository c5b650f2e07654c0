"""The console's row of ``engram bench`` (``console.feed10``): a unit's acknowledgement to
its row in the Feed of 10 web consoles (``/ui``) open in one headless Chromium.

Each page records, with a MutationObserver installed before its script runs, the wall
clock when a feed row (``tr[data-seq]``) enters its document; the writer notes the wall
clock when each write was acknowledged. The row is the difference: the gateway's stream,
the browser's EventSource, the page's JSON parsing and its DOM update (not the paint
that follows, which a headless browser paces by its own frame clock).

It needs the ``dev`` extra's Playwright and a Chromium of the system's
(``apt-get install chromium``); nothing is downloaded. Without them the row says so and
is not run.
"""

from __future__ import annotations

import shutil
import time

from engram_cli.bench.cli import engram_command
from engram_cli.bench.gateway import GatewayMissing, running_gateway
from engram_cli.bench.harness import PAYLOAD, BenchTarget, Measurement, percentile

CONSOLES = 10
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--no-first-run"]
_RECORD_ROWS = """
window.__rowSeen = {};
new MutationObserver((changes) => {
  const now = Date.now();
  for (const change of changes) for (const node of change.addedNodes) {
    const seq = node.dataset && node.dataset.seq;
    if (seq && !(seq in window.__rowSeen)) window.__rowSeen[seq] = now;
  }
}).observe(document, { childList: true, subtree: true });
"""
_ALL_SEEN = "(seqs) => seqs.every((seq) => String(seq) in window.__rowSeen)"
_SEEN = "(seqs) => seqs.map((seq) => window.__rowSeen[String(seq)])"


def bench_console_feed10(target: BenchTarget) -> Measurement:
    """A write's acknowledgement -> its row in the Feed of each of 10 consoles."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return Measurement([], 0.0, note="not run: Playwright is missing (the dev extra)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return Measurement([], 0.0, note="not run: no chromium here (apt-get install chromium)")
    count = target.count(300)
    context_id = f"bench-console-{time.monotonic_ns()}"
    try:
        with running_gateway(engram_command(), target.env) as (host, port, _), \
                sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
            try:
                pages = []
                for _ in range(CONSOLES):
                    page = browser.new_page(viewport={"width": 1280, "height": 800})
                    page.add_init_script(_RECORD_ROWS)
                    page.goto(f"http://{host}:{port}/ui#feed")
                    page.wait_for_selector("#status[data-state=live]", timeout=30_000)
                    pages.append(page)
                acked: dict[int, float] = {}
                started = time.perf_counter()
                with target.client() as client:
                    for _ in range(count):
                        unit = client.create_unit(context_id, "MESSAGE", PAYLOAD)
                        acked[unit.seq] = time.time() * 1000
                        time.sleep(0.002)  # paced: a person's console, not a flood
                    seqs = list(acked)
                    for page in pages:
                        page.wait_for_function(_ALL_SEEN, arg=seqs, timeout=120_000)
                wall = time.perf_counter() - started
                seen = [page.evaluate(_SEEN, seqs) for page in pages]
            finally:
                browser.close()
    except GatewayMissing as exc:
        return Measurement([], 0.0, note=f"not run: {exc}")
    # Both clocks are the wall clock in milliseconds (the page's has no finer grain).
    latencies = [max(0.0, (shown - acked[seq]) / 1000)
                 for each in seen for seq, shown in zip(seqs, each, strict=True)]
    last = sorted(max(0.0, (max(each[i] for each in seen) - acked[seq]) / 1000)
                  for i, seq in enumerate(seqs))
    return Measurement(latencies, wall, note=(
        f"{len(latencies):,} rows in {CONSOLES} consoles (one Chromium, 1 ms clock); in all "
        f"{CONSOLES}: p50 {percentile(last, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(last, 0.99) * 1000:.1f} ms"))
