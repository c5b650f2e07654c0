"""``engram bench --soak DURATION``: a mixed load held for a while, watching for drift.

Writers, watchers, lease users and a searcher run as separate processes
against one daemon for DURATION; each reports its own latencies and errors at
the end. Meanwhile the daemon's resident memory is sampled, so a leak shows up
as growth between the warmed-up start and the end.
"""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
import time
from collections.abc import Callable

import msgspec

from engram_cli.bench.harness import BenchResult, BenchTarget, Measurement, summarize
from engram_cli.bench.journal import fill_text, resident_mib
from engram_cli.client import Client
from engram_cli.client.errors import ClientTimeout, EngramError, Timeout, Unavailable
from engramd.protocol import Heartbeat, UnitCreated

WRITERS = 4
WATCHERS = 4
LOCKERS = 2
SEARCHERS = 1
SAMPLE_EVERY = 2.0
ANNOUNCE_EVERY = 15
"""Progress goes to stderr every this many memory samples (30 s)."""
WARM_UP_FRACTION = 0.2
"""Memory is compared from this point of the run, after caches have filled."""
SEARCH_PAUSE = 0.01
"""A searcher is an agent looking things up, not a tight loop."""


class Tally(msgspec.Struct):
    """What one soak process saw; printed as JSON when it ends."""

    latencies: list[float] = []
    errors: dict[str, int] = {}
    gaps: int = 0
    """Events a watcher never received (a jump in a writer's numbering)."""
    wall: float = 0.0

    def error(self, exc: BaseException) -> None:
        name = getattr(exc, "code", None) or type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1

    def report(self, started: float) -> None:
        self.wall = time.perf_counter() - started
        sys.stdout.write(msgspec.json.encode(self).decode())


def _client(socket_path: str, name: str) -> Client:
    client = Client(socket_path, agent_id=name, client_name="engram-soak", autostart=False,
                    timeout=30)
    client.connect()
    return client


def _write(client: Client, name: str, deadline: float, tally: Tally) -> None:
    n = 0
    while time.monotonic() < deadline:
        before = time.perf_counter()
        try:
            client.create_unit(f"soak-{name}", "MESSAGE", fill_text(n), meta={"n": str(n)})
        except EngramError as exc:
            tally.error(exc)
            continue
        tally.latencies.append(time.perf_counter() - before)
        n += 1


def _watch(client: Client, name: str, deadline: float, tally: Tally) -> None:
    contexts = [f"soak-w{n}" for n in range(WRITERS)]
    last: dict[str, int] = {}
    for item in client.subscribe(contexts=contexts, kinds=["unit.created"], heartbeat=1.0):
        if isinstance(item, UnitCreated):
            received = time.time()
            tally.latencies.append(max(0.0, received - item.ts.timestamp()))
            n = int(item.unit.meta["n"])
            previous = last.get(item.context_id)
            if previous is not None and n != previous + 1:
                tally.gaps += 1
            last[item.context_id] = n
        elif isinstance(item, Heartbeat) and time.monotonic() > deadline:
            return


def _lock(client: Client, name: str, deadline: float, tally: Tally) -> None:
    while time.monotonic() < deadline:
        before = time.perf_counter()
        try:
            (lease,) = client.acquire_lock("soak/shared", ttl=5, wait=10)
        except (Timeout, EngramError) as exc:
            tally.error(exc)
            continue
        tally.latencies.append(time.perf_counter() - before)
        time.sleep(0.001)
        client.release_lock(lease.lock_id)


def _search(client: Client, name: str, deadline: float, tally: Tally) -> None:
    rng = random.Random(7)
    while time.monotonic() < deadline:
        words = fill_text(rng.randrange(100_000)).decode().split()[2:4]
        before = time.perf_counter()
        try:
            client.search(" ".join(words), limit=20)
        except EngramError as exc:
            tally.error(exc)
            continue
        tally.latencies.append(time.perf_counter() - before)
        time.sleep(SEARCH_PAUSE)


_ROLES: dict[str, Callable[[Client, str, float, Tally], None]] = {
    "write": _write, "watch": _watch, "lock": _lock, "search": _search}


def _worker(role: str, socket_path: str, name: str, seconds: float) -> None:
    """One soak process: waits for "go" on stdin, runs its role, prints a JSON tally."""
    tally = Tally()
    try:
        client = _client(socket_path, name)
    except (Unavailable, ClientTimeout) as exc:
        tally.error(exc)
        tally.report(time.perf_counter())
        return
    sys.stdin.readline()
    started = time.perf_counter()
    deadline = time.monotonic() + seconds
    with client:
        _ROLES[role](client, name, deadline, tally)
    tally.report(started)


@dataclasses.dataclass
class SoakReport:
    results: list[BenchResult]
    memory_mib: list[tuple[float, float]]
    """(seconds into the run, daemon RSS in MiB) samples."""
    errors: dict[str, int]
    gaps: int
    daemon_errors: dict[str, int]

    def memory_summary(self) -> dict[str, float]:
        samples = [mib for _, mib in self.memory_mib]
        warm = self.memory_mib[int(len(samples) * WARM_UP_FRACTION)][1] if samples else 0.0
        return {"start_mib": round(samples[0], 1) if samples else 0.0,
                "warm_mib": round(warm, 1),
                "end_mib": round(samples[-1], 1) if samples else 0.0,
                "max_mib": round(max(samples), 1) if samples else 0.0,
                "growth_after_warm_up_mib": round(samples[-1] - warm, 1) if samples else 0.0}


def run_soak(target: BenchTarget, seconds: float,
             progress: Callable[[str], None]) -> SoakReport:
    roles = ([("write", f"w{n}") for n in range(WRITERS)]
             + [("watch", f"watch{n}") for n in range(WATCHERS)]
             + [("lock", f"lock{n}") for n in range(LOCKERS)]
             + [("search", f"search{n}") for n in range(SEARCHERS)])
    code = ("import sys; from engram_cli.bench.soak import _worker; "
            "_worker(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))")
    workers = [(role, subprocess.Popen(
        [sys.executable, "-c", code, role, target.socket_path, name, str(seconds)],
        env=dict(target.env), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for role, name in roles]
    with Client(target.socket_path, autostart=False) as client:
        pid = client.status().pid
        time.sleep(1.0)  # every worker connects (and every watcher subscribes) first
        started = time.monotonic()
        for _, worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        memory = []
        while time.monotonic() - started < seconds:
            memory.append((round(time.monotonic() - started, 1), resident_mib(pid)))
            if len(memory) % ANNOUNCE_EVERY == 1:
                progress(f"soak: {memory[-1][0]:.0f}/{seconds:.0f}s, daemon "
                         f"{memory[-1][1]:.1f} MiB")
            time.sleep(min(SAMPLE_EVERY, max(0.0, seconds - (time.monotonic() - started))))
        tallies: dict[str, list[Tally]] = {}
        for role, worker in workers:
            out, _ = worker.communicate(timeout=seconds + 120)
            tallies.setdefault(role, []).append(msgspec.json.decode(out, type=Tally))
        memory.append((round(time.monotonic() - started, 1), resident_mib(pid)))
        counters = client.stats().counters
    daemon_errors = {name: value for name, value in counters.items()
                     if name.startswith(("errors_total", "connections_failed"))}
    results: list[BenchResult] = []
    errors: dict[str, int] = {}
    gaps = 0
    for role, reports in tallies.items():
        latencies = [value for report in reports for value in report.latencies]
        wall = max(report.wall for report in reports)
        role_errors: dict[str, int] = {}
        for report in reports:
            for name, count in report.errors.items():
                role_errors[name] = role_errors.get(name, 0) + count
                errors[f"{role}.{name}"] = errors.get(f"{role}.{name}", 0) + count
            gaps += report.gaps
        note = f"{len(reports)} process(es), {sum(role_errors.values())} errors"
        results.append(summarize(f"soak.{role}", Measurement(latencies, wall, note)))
    return SoakReport(results, memory, errors, gaps, daemon_errors)
