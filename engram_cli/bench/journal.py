"""Rows of the journal: durable writes (one client, eight processes), the newest units
of a large context, restarts, imports."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator

import msgspec

from engram_cli.bench.cli import engram_command
from engram_cli.bench.harness import (
    PAYLOAD,
    BenchTarget,
    Measurement,
    SemanticMissing,
    Workload,
    bench_daemon,
    daemon_cpu,
    ready,
    report,
    timed_loop,
    wait_indexed,
    workers,
)
from engram_cli.client import Client, requests
from engramd.protocol import UnitsCreated, result


def bench_ping(target: BenchTarget) -> Measurement:
    """Round trip of one ping over the socket, one request at a time."""
    with target.client() as client:
        for _ in range(100):
            client.ping()
        return timed_loop(target, target.count(5000), client.ping)


def bench_write_single(target: BenchTarget) -> Measurement:
    """One durable unit write (256-byte payload) at a time, on one connection."""
    with target.client() as client:
        for _ in range(50):
            client.create_unit("bench-single", "MESSAGE", PAYLOAD)
        return timed_loop(target, target.count(3000),
                           lambda: client.create_unit("bench-single", "MESSAGE", PAYLOAD))


def _write_worker(socket_path: str, name: str, requests_text: str, per_request_text: str,
                  window_text: str) -> None:
    """A writer process: waits for "go" on stdin, writes, prints its latencies."""

    requests_, per_request, window = int(requests_text), int(per_request_text), int(window_text)
    drafts = [requests.draft(f"bench-{name}", "MESSAGE", PAYLOAD)] * per_request
    with Client(socket_path, agent_id=name, autostart=False, timeout=120) as client:
        client.ping()
        ready()
        sent: dict[int, float] = {}
        latencies = []
        pending: list[int] = []

        def settle(request_id: int) -> None:
            started = sent.pop(request_id)
            result(client.receive(request_id), UnitsCreated)
            latencies.append(time.perf_counter() - started)

        for _ in range(requests_):
            if len(pending) >= window:
                settle(pending.pop(0))
            started = time.perf_counter()
            request_id = client.send(requests.create_units(drafts))
            sent[request_id] = started
            pending.append(request_id)
        for request_id in pending:
            settle(request_id)
    report(latencies)


def _concurrent_writers(target: BenchTarget, processes: int, requests_: int,
                        per_request: int, window: int) -> Measurement:
    with daemon_cpu(target) as cpu:
        outputs, wall = workers(target, _write_worker, [
            [target.socket_path, f"w{n}", str(requests_), str(per_request), str(window)]
            for n in range(processes)])
    latencies = [float(value) for out in outputs for value in out.split()]
    units = processes * requests_ * per_request
    return Measurement(latencies, wall, daemon_cpu=cpu(),
                       note=f"{units / wall:,.0f} units/s; latency per request")


def bench_write_8procs(target: BenchTarget) -> Measurement:
    """8 writer processes, 1 unit per request, 16 requests in flight each."""
    return _concurrent_writers(target, 8, target.count(1500), 1, 16)


def bench_write_8procs_serial(target: BenchTarget) -> Measurement:
    """8 writer processes, 1 unit per request, one request at a time each."""
    return _concurrent_writers(target, 8, target.count(1000), 1, 1)


def bench_write_8procs_batch(target: BenchTarget) -> Measurement:
    """8 writer processes, 100 units per request, 2 requests in flight each."""
    return _concurrent_writers(target, 8, target.count(60), 100, 2)


@contextlib.contextmanager
def _semantic_daemon(target: BenchTarget) -> Iterator[BenchTarget]:
    """A daemon of its own with semantic search on (its default when the extra is
    installed), the model loaded: the write rows as a user with the extra meets them,
    every unit embedded beside its indexing."""
    with bench_daemon(semantic="auto") as daemon:
        own = dataclasses.replace(daemon, scale=target.scale)
        with own.client() as client:
            client.create_unit("bench-warm", "MESSAGE", PAYLOAD)
        wait_indexed(own, vectors=True)
        yield own


def _with_semantic(row: Workload) -> Workload:
    def semantic_row(target: BenchTarget) -> Measurement:
        try:
            with _semantic_daemon(target) as own:
                measurement = row(own)
        except SemanticMissing as exc:
            return Measurement([], 0.0, note=f"not run: {exc}")
        return dataclasses.replace(measurement, note="; ".join(
            filter(None, ["semantic search on", measurement.note])))

    semantic_row.__doc__ = f"{(row.__doc__ or '').rstrip('.')}, semantic search on."
    return semantic_row


bench_write_single_semantic = _with_semantic(bench_write_single)
bench_write_8procs_serial_semantic = _with_semantic(bench_write_8procs_serial)


FILL_UNITS = 1_000_000


FILL_CONTEXTS = 100


BIG_CONTEXT = "bench-fill-0"
"""Every tenth fill unit goes here (100,000 of the 1,000,000), the rest round the others."""


_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "shi", "po", "de", "vu", "ga", "ze", "fo",
              "bi", "ny", "qua"]


VOCABULARY = [a + b + c for a in _SYLLABLES for b in _SYLLABLES for c in _SYLLABLES]
"""4,096 made-up words; fill payloads are sentences of them, so searches have work to do."""


def fill_text(n: int) -> bytes:
    """A deterministic 12-word sentence for fill unit *n* (about 80 bytes)."""
    words = [VOCABULARY[(n * 7919 + i * 104729) % len(VOCABULARY)] for i in range(12)]
    return (f"step {n}: " + " ".join(words)).encode()


def resident_mib(pid: int) -> float:
    """Resident memory of process *pid*, from ``/proc/PID/status``."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def daemon_rss_mib(target: BenchTarget) -> float:
    with target.client() as client:
        return resident_mib(client.status().pid)


def fill_context(n: int) -> str:
    return BIG_CONTEXT if n % 10 == 0 else f"bench-fill-{n % FILL_CONTEXTS}"


def fill(target: BenchTarget, wanted: int | None = None) -> int:
    """Bring the store to *wanted* units (FILL_UNITS scaled), spread over FILL_CONTEXTS
    contexts."""

    wanted = wanted or target.count(FILL_UNITS, minimum=10_000)
    with target.client() as client:
        journal = client.status().journal
        have = journal.units if journal else 0
        batch = 1000
        pending: list[int] = []
        while have < wanted:
            drafts = [requests.draft(fill_context(have + i), "MESSAGE", fill_text(have + i),
                                     meta={"n": str(have + i)})
                      for i in range(min(batch, wanted - have))]
            pending.append(client.send(requests.create_units(drafts)))
            if len(pending) >= 4:
                result(client.receive(pending.pop(0)), UnitsCreated)
            have += len(drafts)
        for request_id in pending:
            result(client.receive(request_id), UnitsCreated)
    # Indexing the fill keeps the daemon busy for a while: rows measured meanwhile
    # would measure that.
    wait_indexed(target)
    return wanted


def bench_list_last100(target: BenchTarget) -> Measurement:
    """The last 100 units of a context of 100,000 in a store of 1,000,000 (both scaled)."""
    total = fill(target)
    with target.client() as client:
        for _ in range(50):
            client.list_units(BIG_CONTEXT, limit=100)
        measurement = timed_loop(target, target.count(2000),
                                  lambda: client.list_units(BIG_CONTEXT, limit=100))
    measurement.note = (f"context of {total // 10:,} in a store of {total:,} units; daemon RSS "
                        f"{daemon_rss_mib(target):.0f} MiB")
    return measurement


def _bench_restart(target: BenchTarget, kill: bool) -> Measurement:
    if target.restart is None:
        return Measurement([], 0.0, note="skipped: needs the harness's own daemon")
    total = fill(target)
    seconds = target.restart(kill)
    rss = daemon_rss_mib(target)
    return Measurement([seconds], seconds,
                       note=f"{total:,} units; spawn to ready; RSS after {rss:.0f} MiB")


def bench_restart_clean(target: BenchTarget) -> Measurement:
    """Stop gracefully, start, wait until ready (1,000,000 units, scaled)."""
    return _bench_restart(target, kill=False)


def bench_restart_crash(target: BenchTarget) -> Measurement:
    """SIGKILL, start, replay the log, wait until ready (1,000,000 units, scaled)."""
    return _bench_restart(target, kill=True)


def _bench_import(target: BenchTarget, agents: int) -> Measurement:
    count = target.count(20_000, minimum=100)
    tag = f"{agents}-{os.getpid()}-{time.monotonic_ns()}"
    directory = target.data_dir or tempfile.gettempdir()
    with tempfile.NamedTemporaryFile("wb", dir=directory, suffix=".jsonl") as lines:
        for n in range(count):
            lines.write(msgspec.json.encode({
                "id": f"bench-import-{tag}-{n}", "context_id": f"bench-import-{tag}",
                "agent_id": f"importer-{n % agents}", "type": "MESSAGE",
                "payload": fill_text(n).decode()}) + b"\n")
        lines.flush()
        argv = [*engram_command(), "unit", "import", lines.name]
        with daemon_cpu(target) as cpu:
            started = time.perf_counter()
            subprocess.run(argv, env=dict(target.env), check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            wall = time.perf_counter() - started
    return Measurement([wall], wall, daemon_cpu=cpu(), ops=count, note=(
        f"{count:,} units, wall time in p50; the agent changes every line" if agents > 1
        else f"{count:,} units, wall time in p50"))


def bench_import_1agent(target: BenchTarget) -> Measurement:
    """`engram unit import` of 20,000 units (scaled), all by one agent."""
    return _bench_import(target, 1)


def bench_import_5agents(target: BenchTarget) -> Measurement:
    """`engram unit import` of 20,000 units (scaled) from 5 agents, interleaved line by line."""
    return _bench_import(target, 5)
