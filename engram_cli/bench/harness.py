"""``engram bench``: named workloads against a real daemon, reported as percentiles.

Each workload is a function that takes a :class:`BenchTarget` and returns
per-operation latencies. The harness starts its own daemon on a temporary
socket and data dir (unless told to use a running one), runs the selected
workloads one after another, and reports p50, p99, max and throughput.
Timing targets are checked by reading these figures, never by tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping

import msgspec

from engram_cli.bench.floors import DURABLE, ECHO, FloorClient, floor_server
from engram_cli.client import Client, requests
from engram_cli.client.autostart import daemon_answers, process_gone, start_daemon
from engramd.protocol import Heartbeat, UnitsCreated, result


class BenchResult(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    """Workload name."""
    ops: int
    """Operations timed."""
    p50_ms: float
    p99_ms: float
    max_ms: float
    throughput: float
    """Operations per second over the whole run (wall time)."""
    note: str = ""
    daemon_cpu_ms: float | None = None
    """The daemon's CPU time (user + system, from /proc) per operation while timed."""
    target: str = ""
    """The target for this row, worked out from the floors measured in the same run."""
    met: bool | None = None
    """Whether the row meets its target (None: no target, or its floor did not run)."""


@dataclasses.dataclass(frozen=True)
class BenchTarget:
    socket_path: str
    env: Mapping[str, str]
    """Environment for child processes: points them at this daemon, no auto-start."""
    scale: float
    """Multiplier for operation counts (``--scale``)."""
    data_dir: str | None = None
    """The daemon's data dir, when the harness owns the daemon (else None)."""
    restart: Callable[[bool], float] | None = None
    """Restart the harness's daemon (``True``: after SIGKILL); returns seconds to ready."""

    def count(self, base: int, minimum: int = 5) -> int:
        return max(minimum, int(base * self.scale))

    def client(self) -> Client:
        return Client(self.socket_path, client_name="engram-bench", autostart=False)

    def daemon_cpu(self) -> float | None:
        """The daemon's CPU seconds so far (user + system), or None where /proc cannot say."""
        with self.client() as client:
            pid = client.status().pid
        return cpu_seconds(pid)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process *pid*, from ``/proc/PID/stat``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    # Fields 14 and 15 of proc(5), counted after the command name's closing parenthesis.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Workload = Callable[[BenchTarget], "Measurement"]


@dataclasses.dataclass
class Measurement:
    latencies: list[float]
    wall: float
    note: str = ""
    daemon_cpu: float | None = None
    """The daemon's CPU seconds spent while the operations were timed."""
    ops: int | None = None
    """Operations done, when not one per latency (an import: units, one wall time)."""


@contextlib.contextmanager
def daemon_cpu(target: BenchTarget, read: Callable[[], float | None] | None = None
               ) -> Iterator[Callable[[], float | None]]:
    """Measure the daemon's CPU time (or what *read* says) over the block; call the result
    afterwards."""
    read = read or target.daemon_cpu
    before = read()
    spent: list[float | None] = [None]
    yield lambda: spent[0]
    after = read()
    if before is not None and after is not None:
        spent[0] = after - before


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(fraction * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def summarize(name: str, measurement: Measurement) -> BenchResult:
    values = sorted(measurement.latencies)
    ops = measurement.ops if measurement.ops is not None else len(values)
    cpu = measurement.daemon_cpu
    return BenchResult(
        name=name,
        ops=ops,
        p50_ms=round(percentile(values, 0.50) * 1000, 4),
        p99_ms=round(percentile(values, 0.99) * 1000, 4),
        max_ms=round((values[-1] if values else 0.0) * 1000, 4),
        throughput=round(ops / measurement.wall, 1) if measurement.wall > 0 else 0.0,
        note=measurement.note,
        daemon_cpu_ms=round(cpu / ops * 1000, 4) if cpu is not None and ops else None,
    )


def _timed_loop(target: BenchTarget, count: int, operation: Callable[[], object],
                cpu_of: Callable[[], float | None] | None = None) -> Measurement:
    latencies = []
    with daemon_cpu(target, cpu_of) as cpu:
        started = time.perf_counter()
        for _ in range(count):
            before = time.perf_counter()
            operation()
            latencies.append(time.perf_counter() - before)
        wall = time.perf_counter() - started
    return Measurement(latencies, wall, daemon_cpu=cpu())


def _timed_processes(target: BenchTarget, count: int, argv: list[str],
                     stdin: bytes | None = None) -> Measurement:
    def run() -> None:
        subprocess.run(argv, env=dict(target.env), check=True, stdout=subprocess.DEVNULL,
                       input=stdin if stdin is not None else b"")

    run()  # warm the page cache and bytecode cache
    return _timed_loop(target, count, run)


# -- workloads --------------------------------------------------------------


def bench_ping(target: BenchTarget) -> Measurement:
    """Round trip of one ping over the socket, one request at a time."""
    with target.client() as client:
        for _ in range(100):
            client.ping()
        return _timed_loop(target, target.count(5000), client.ping)


def engram_command() -> list[str]:
    """How to run this installation's ``engram`` as a process (the bench and the demo)."""
    script = os.path.join(os.path.dirname(sys.executable), "engram")
    if os.path.exists(script):
        return [script]
    found = shutil.which("engram")
    return [found] if found else [sys.executable, "-m", "engram_cli"]


def bench_cli_ping(target: BenchTarget) -> Measurement:
    """Wall time of a whole `engram ping` process."""
    measurement = _timed_processes(target, target.count(30), [*engram_command(), "ping"])
    measurement.note = _install_kind()
    return measurement


def bench_cli_unit_create(target: BenchTarget) -> Measurement:
    """Wall time of a whole `engram unit create -c CTX -p TEXT` process."""
    measurement = _timed_processes(target, target.count(30), [
        *engram_command(), "unit", "create", "-c", "bench-cli", "-p", "a note from the shell"])
    measurement.note = _install_kind()
    return measurement


def bench_cli_hook_guard(target: BenchTarget) -> Measurement:
    """Wall time of a whole `engram hook pre-edit` (the lease guard before an agent's file
    edit) on a free file, fed a harness's PreToolUse input."""
    hook_input = {"hook_event_name": "PreToolUse", "tool_name": "Edit", "cwd": "/",
                  "tool_input": {"file_path": "/nowhere/free.py", "old_string": "a",
                                 "new_string": "b"}}
    measurement = _timed_processes(
        target, target.count(30), [*engram_command(), "hook", "pre-edit", "--guard", "block"],
        stdin=msgspec.json.encode(hook_input))
    measurement.note = _install_kind()
    return measurement


def _install_kind() -> str:
    """Whether engram runs from a regular install; an editable one adds its import hook's
    cost to every start, which the floor does not pay."""
    from importlib import metadata

    try:
        direct_url = metadata.distribution("engram").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return "not installed (python -m engram_cli)"
    editable = bool(direct_url and msgspec.json.decode(direct_url).get(
        "dir_info", {}).get("editable"))
    return ("editable install: each start pays its import hook; `make bench` measures a "
            "regular one" if editable else "regular install")


def bench_floor_import(target: BenchTarget) -> Measurement:
    """The floor under any Python CLI of ours: start Python and import typer and msgspec."""
    measurement = _timed_processes(
        target, target.count(30), [sys.executable, "-c", "import typer, msgspec"])
    measurement.note = "floor: python -c 'import typer, msgspec'"
    return measurement


PAYLOAD = b"x" * 256


def bench_floor_fdatasync(target: BenchTarget) -> Measurement:
    """The disk's floor: append 256 bytes and fdatasync, in the data dir's file system."""
    directory = target.data_dir or tempfile.gettempdir()
    fd, path = tempfile.mkstemp(dir=directory, prefix="bench-fsync-")
    try:
        def append() -> None:
            os.write(fd, PAYLOAD)
            os.fdatasync(fd)

        measurement = _timed_loop(target, target.count(2000), append)
    finally:
        os.close(fd)
        os.unlink(path)
    measurement.note = "floor under every durable write"
    return measurement


def _on_floor_server(target: BenchTarget,
                     measure: Callable[[str, Callable[[], float | None]], Measurement]
                     ) -> Measurement:
    """``measure(socket, cpu)`` against the floor server (``engramd.floor``), which fsyncs
    in the data dir's file system; *cpu* reads its CPU seconds."""
    with tempfile.TemporaryDirectory(dir=target.data_dir, prefix="bench-floor-") as scratch, \
            floor_server(scratch) as (socket_path, pid):
        return measure(socket_path, lambda: cpu_seconds(pid))


def _floor_one_client(target: BenchTarget, kind: bytes, count: int, note: str
                      ) -> Measurement:
    def measure(socket_path: str, cpu: Callable[[], float | None]) -> Measurement:
        client = FloorClient(socket_path)
        try:
            for _ in range(100):
                client.request(kind)
            measurement = _timed_loop(target, target.count(count),
                                      lambda: client.request(kind), cpu)
        finally:
            client.close()
        measurement.note = note
        return measurement

    return _on_floor_server(target, measure)


def bench_floor_roundtrip(target: BenchTarget) -> Measurement:
    """This design's floor under every request: a trio server of engramd's shape that does
    nothing, one blocking Python client (cpu: the server's)."""
    return _floor_one_client(target, ECHO, 5000,
                             "floor: a request to a trio server that answers at once")


def bench_floor_durable(target: BenchTarget) -> Measurement:
    """This design's floor under a durable write: the same server appends 256 bytes and
    fdatasyncs in a long-lived thread before it answers (cpu: the server's)."""
    return _floor_one_client(target, DURABLE, 3000,
                             "floor: the same, answered after an append + fdatasync in a "
                             "journal thread")


def bench_floor_roundtrip_8procs(target: BenchTarget) -> Measurement:
    """This design's floor under 8 serial clients: 8 processes, one request to the
    do-nothing server at a time each (cpu: the server's)."""
    def measure(socket_path: str, cpu_of: Callable[[], float | None]) -> Measurement:
        with daemon_cpu(target, cpu_of) as cpu:
            outputs, wall = _workers(target, "_floor_worker", [
                [socket_path, ECHO.decode(), str(target.count(2000))] for _ in range(8)])
        latencies = [float(value) for out in outputs for value in out.split()]
        return Measurement(latencies, wall, daemon_cpu=cpu(),
                           note="floor: requests/s a trio server answers 8 serial clients")

    return _on_floor_server(target, measure)


def bench_write_single(target: BenchTarget) -> Measurement:
    """One durable unit write (256-byte payload) at a time, on one connection."""
    with target.client() as client:
        for _ in range(50):
            client.create_unit("bench-single", "MESSAGE", PAYLOAD)
        return _timed_loop(target, target.count(3000),
                           lambda: client.create_unit("bench-single", "MESSAGE", PAYLOAD))


def _write_worker(socket_path: str, name: str, requests_text: str, per_request_text: str,
                  window_text: str) -> None:
    """A writer process: waits for "go" on stdin, writes, prints its latencies."""
    from engram_cli.client import requests

    requests_, per_request, window = int(requests_text), int(per_request_text), int(window_text)
    drafts = [requests.draft(f"bench-{name}", "MESSAGE", PAYLOAD)] * per_request
    with Client(socket_path, agent_id=name, autostart=False, timeout=120) as client:
        client.ping()
        _ready()
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
    _report(latencies)


def _workers(target: BenchTarget, function: str, args: list[list[str]]) -> tuple[list[str], float]:
    """Run ``engram_cli.bench.harness.<function>(*args)`` in a process per args list, start them
    together once all are connected, and return what each printed, and the wall time."""
    code = (f"import sys; from engram_cli.bench.harness import {function}; "
            f"{function}(*sys.argv[1:])")
    workers = [subprocess.Popen([sys.executable, "-c", code, *worker_args],
                                env=dict(target.env), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
               for worker_args in args]
    for worker in workers:  # each says "ready" once connected
        assert worker.stdout is not None
        if worker.stdout.readline().strip() != "ready":
            raise RuntimeError(f"a bench worker ({function}) failed to start")
    started = time.perf_counter()
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    outputs = []
    for worker in workers:
        out, _ = worker.communicate(timeout=600)
        if worker.returncode != 0:
            raise RuntimeError(f"a bench worker ({function}) failed")
        outputs.append(out)
    return outputs, time.perf_counter() - started


def _ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()


def _report(latencies: list[float]) -> None:
    """A worker's last line: its latencies, which :func:`_workers` hands back."""
    sys.stdout.write(" ".join(f"{value:.7f}" for value in latencies) + "\n")


def _floor_worker(socket_path: str, kind_text: str, count_text: str) -> None:
    """A client of the floor server: waits for "go" on stdin, makes its requests one at a
    time, prints their latencies."""
    client = FloorClient(socket_path)
    client.request(ECHO)
    _ready()
    latencies = []
    for _ in range(int(count_text)):
        started = time.perf_counter()
        client.request(kind_text.encode())
        latencies.append(time.perf_counter() - started)
    client.close()
    _report(latencies)


def _concurrent_writers(target: BenchTarget, processes: int, requests_: int,
                        per_request: int, window: int) -> Measurement:
    with daemon_cpu(target) as cpu:
        outputs, wall = _workers(target, "_write_worker", [
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


def _daemon_rss_mib(target: BenchTarget) -> float:
    with target.client() as client:
        return resident_mib(client.status().pid)


def fill_context(n: int) -> str:
    return BIG_CONTEXT if n % 10 == 0 else f"bench-fill-{n % FILL_CONTEXTS}"


def _fill(target: BenchTarget, wanted: int | None = None) -> int:
    """Bring the store to *wanted* units (FILL_UNITS scaled), spread over FILL_CONTEXTS
    contexts."""
    from engram_cli.client import requests

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
    _wait_indexed(target)
    return wanted


def bench_list_last100(target: BenchTarget) -> Measurement:
    """The last 100 units of a context of 100,000 in a store of 1,000,000 (both scaled)."""
    total = _fill(target)
    with target.client() as client:
        for _ in range(50):
            client.list_units(BIG_CONTEXT, limit=100)
        measurement = _timed_loop(target, target.count(2000),
                                  lambda: client.list_units(BIG_CONTEXT, limit=100))
    measurement.note = (f"context of {total // 10:,} in a store of {total:,} units; daemon RSS "
                        f"{_daemon_rss_mib(target):.0f} MiB")
    return measurement


def _wait_indexed(target: BenchTarget, timeout: float = 1800.0, *,
                  vectors: bool = False, interval: float = 0.05) -> None:
    """Until the keyword index (with *vectors*, the vector index) has the whole journal."""
    deadline = time.monotonic() + timeout
    with target.client() as client:
        while True:
            journal = client.status().journal
            if journal is not None:
                if vectors and journal.vector_seq is None:
                    raise SemanticMissing("semantic search is not installed: "
                                          "pip install 'engram[semantic]'")
                seq = journal.vector_seq if vectors else journal.indexed_seq
                if seq is not None and seq >= journal.last_seq:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("the search index did not catch up")
            time.sleep(interval)


class SemanticMissing(RuntimeError):
    """The daemon has no semantic search (the engram[semantic] extra is not installed)."""


def two_word_queries() -> Iterator[str]:
    """Endless two-word queries whose words occur together in the fill's sentences."""
    sentences = [fill_text(i * 997).decode().split()[2:] for i in range(200)]
    return itertools.cycle(f"{words[1]} {words[7]}" for words in sentences)


def bench_search_query(target: BenchTarget) -> Measurement:
    """A two-word query, limit 20, over 1,000,000 (scaled) units."""
    total = _fill(target)
    queries = two_word_queries()
    hits = []
    with target.client() as client:
        def query() -> None:
            hits.append(client.search(next(queries), limit=20).total)

        measurement = _timed_loop(target, target.count(500), query)
    measurement.note = (f"{total:,} units indexed; median matches per query "
                        f"{sorted(hits)[len(hits) // 2]:,}")
    return measurement


def bench_index_throughput(target: BenchTarget) -> Measurement:
    """Rebuild the index over 1,000,000 (scaled) units: units indexed per second."""
    total = _fill(target)
    with target.client() as client:
        started = time.perf_counter()
        client.reindex()
    _wait_indexed(target)
    seconds = time.perf_counter() - started
    return Measurement([seconds], seconds,
                       note=f"{total / seconds:,.0f} units/s over {total:,} units (wall in p50)")


def _bench_restart(target: BenchTarget, kill: bool) -> Measurement:
    if target.restart is None:
        return Measurement([], 0.0, note="skipped: needs the harness's own daemon")
    total = _fill(target)
    seconds = target.restart(kill)
    rss = _daemon_rss_mib(target)
    return Measurement([seconds], seconds,
                       note=f"{total:,} units; spawn to ready; RSS after {rss:.0f} MiB")


def bench_restart_clean(target: BenchTarget) -> Measurement:
    """Stop gracefully, start, wait until ready (1,000,000 units, scaled)."""
    return _bench_restart(target, kill=False)


def bench_restart_crash(target: BenchTarget) -> Measurement:
    """SIGKILL, start, replay the log, wait until ready (1,000,000 units, scaled)."""
    return _bench_restart(target, kill=True)


def bench_lock_cycle(target: BenchTarget) -> Measurement:
    """Uncontended acquire + release of one lease (two durable writes), one at a time."""
    with target.client() as client:
        def cycle() -> None:
            (lease,) = client.acquire_lock("bench:cycle", ttl=30)
            client.release_lock(lease.lock_id)

        for _ in range(50):
            cycle()
        return _timed_loop(target, target.count(2000), cycle)


def bench_lock_handover(target: BenchTarget) -> Measurement:
    """From the holder's release call to the grant at the waiter queued behind it."""
    return _handover(target, target.socket_path)


def _handover(target: BenchTarget, waiter_socket: str) -> Measurement:
    """Handovers from a holder on *target* to a waiter on the daemon at *waiter_socket*."""
    import threading

    count = target.count(500)
    granted_at: list[float] = []
    released_at: list[float] = []
    turn = threading.Semaphore(0)
    queued = threading.Event()

    def waiter() -> None:
        with Client(waiter_socket, agent_id="bench-waiter", autostart=False) as client:
            for _ in range(count):
                turn.acquire()
                queued.set()
                (lease,) = client.acquire_lock("bench:handover", ttl=30, wait=60)
                granted_at.append(time.perf_counter())
                client.release_lock(lease.lock_id)

    thread = threading.Thread(target=waiter, daemon=True)
    started = time.perf_counter()
    with target.client() as holder:
        thread.start()
        for _ in range(count):
            (lease,) = holder.acquire_lock("bench:handover", ttl=30, wait=60)
            queued.clear()
            turn.release()
            queued.wait(10)
            while not holder.get_lock("bench:handover").waiters:
                time.sleep(0.0002)  # until the waiter is really in line
            released_at.append(time.perf_counter())
            holder.release_lock(lease.lock_id)
            while len(granted_at) < len(released_at):
                time.sleep(0.0001)
    thread.join(30)
    latencies = [granted - released for granted, released in zip(granted_at, released_at,
                                                                   strict=True)]
    return Measurement(latencies, time.perf_counter() - started,
                       note="includes the release's own fsync and the grant's")


def _rounds_worker(socket_path: str, name: str, rounds_text: str, step_name: str) -> None:
    """A contender: one of :data:`ROUND_STEPS` *rounds* times, started with the others;
    prints the latency each round measured."""
    step = ROUND_STEPS[step_name]
    with Client(socket_path, agent_id=name, autostart=False, timeout=120) as client:
        client.ping()
        _ready()
        latencies = [step(client) for _ in range(int(rounds_text))]
    _report(latencies)


def _lock_round(client: Client) -> float:
    """Acquire (waiting in line) and release: the time of both."""
    started = time.perf_counter()
    (lease,) = client.acquire_lock("bench:contended", ttl=30, wait=60)
    client.release_lock(lease.lock_id)
    return time.perf_counter() - started


def _claim_round(client: Client) -> float:
    """Claim the next ready task (the time of that) and mark it done."""
    started = time.perf_counter()
    task = client.claim_task(contexts=["bench-tasks"])
    elapsed = time.perf_counter() - started
    client.finish_task(task.id)
    return elapsed


ROUND_STEPS: dict[str, Callable[[Client], float]] = {"lock": _lock_round,
                                                      "claim": _claim_round}


def bench_lock_8procs(target: BenchTarget) -> Measurement:
    """8 processes contending for one lease: acquire (in line), release, again."""
    rounds = target.count(250)
    with target.client() as client:
        batches_before = _commit_batches(client)
    with daemon_cpu(target) as cpu:
        outputs, wall = _workers(target, "_rounds_worker", [
            [target.socket_path, f"l{n}", str(rounds), "lock"] for n in range(8)])
    with target.client() as client:
        batches = _commit_batches(client) - batches_before
    latencies = [float(value) for out in outputs for value in out.split()]
    grants = 8 * rounds
    return Measurement(latencies, wall, daemon_cpu=cpu(), note=(
        f"{grants / wall:,.0f} handovers/s; {batches / grants:.2f} fsyncs per grant; "
        f"latency per acquire (waiting included) + release"))


def bench_inbox(target: BenchTarget) -> Measurement:
    """Round trip of ``inbox`` handing over one waiting message (read and marked)."""
    count = target.count(1000)
    with target.client() as sender, Client(target.socket_path, agent_id="bench-reader",
                                           autostart=False) as reader:
        message = requests.draft("bench-inbox", "MESSAGE", "m", meta={"to": "bench-reader"})
        for start in range(0, count, 500):
            sender.create_units([message] * min(500, count - start))
        reader.inbox(limit=1)
        measured = _timed_loop(target, count - 1, lambda: reader.inbox(limit=1))
    measured.note = "one waiting message handed over and marked read"
    return measured


def bench_inbox_wake(target: BenchTarget) -> Measurement:
    """From the send call to a waiting ``inbox --wait``'s answer (the durable write too)."""
    import threading

    count = target.count(300)
    sent_at: list[float] = []
    woken_at: list[float] = []
    waiting = threading.Semaphore(0)

    def reader() -> None:
        with Client(target.socket_path, agent_id="bench-waker", autostart=False) as client:
            for _ in range(count):
                waiting.release()
                client.inbox(wait=30)
                woken_at.append(time.perf_counter())

    thread = threading.Thread(target=reader, daemon=True)
    started = time.perf_counter()
    with target.client() as sender:
        thread.start()
        for _ in range(count):
            waiting.acquire()
            while sender.stats().gauges["requests_in_flight"] < 2:
                time.sleep(0.0002)  # until the inbox waits in the daemon
            sent_at.append(time.perf_counter())
            sender.send_message("bench-waker", "wake")
            while len(woken_at) < len(sent_at):
                time.sleep(0.0001)
    thread.join(30)
    return Measurement([woken - sent for woken, sent in zip(woken_at, sent_at, strict=True)],
                       time.perf_counter() - started,
                       note="send (one fsync) to the waiting reader's answer")


def bench_task_claim_8procs(target: BenchTarget) -> Measurement:
    """8 processes taking tasks from one queue: claim --next, done, again."""
    rounds = target.count(100)
    with target.client() as client:
        for start in range(0, 8 * rounds, 500):
            for _ in range(min(500, 8 * rounds - start)):
                client.add_task("bench task", context_id="bench-tasks")
    with daemon_cpu(target) as cpu:
        outputs, wall = _workers(target, "_rounds_worker", [
            [target.socket_path, f"t{n}", str(rounds), "claim"] for n in range(8)])
    latencies = [float(value) for out in outputs for value in out.split()]
    return Measurement(latencies, wall, daemon_cpu=cpu(), note=(
        f"{len(latencies) / wall:,.0f} claims/s with done; latency per claim (two fsyncs: "
        "the lease and the claim's unit)"))


def _commit_batches(client: Client) -> int:
    journal = client.status().journal
    return journal.commit_batches if journal is not None else 0


def bench_lock_run(target: BenchTarget) -> Measurement:
    """Wall time of a whole `engram lock run RES -- true` process."""
    measurement = _timed_processes(
        target, target.count(30), [*engram_command(), "lock", "run", "bench:run", "--", "true"])
    measurement.note = "compare with floor.flock"
    return measurement


def bench_floor_flock(target: BenchTarget) -> Measurement:
    """Wall time of `flock FILE true`: the classic tool's floor."""
    path = os.path.join(target.data_dir or tempfile.gettempdir(), "bench.flock")
    measurement = _timed_processes(target, target.count(30), ["flock", path, "true"])
    measurement.note = "floor: flock FILE true"
    return measurement


def _fan_worker(socket_path: str, context_id: str, count: int) -> None:
    """A watcher process: subscribes, says "ready", prints ``seq:receipt`` for *count* units."""
    with Client(socket_path, agent_id="fan", autostart=False, timeout=120) as client:
        subscription = client.subscribe(contexts=[context_id], kinds=["unit.created"])
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        received = []
        for item in subscription:
            if not isinstance(item, Heartbeat):
                received.append(f"{item.seq}:{time.time():.7f}")
                if len(received) == count:
                    break
    sys.stdout.write(" ".join(received) + "\n")


def _watchers(target: BenchTarget, code: str, *args: str) -> list[subprocess.Popen[str]]:
    """10 watcher processes running *code*, each subscribed once it says "ready"."""
    watchers = [subprocess.Popen([sys.executable, "-c", code, *args], env=dict(target.env),
                                 stdout=subprocess.PIPE, text=True) for _ in range(10)]
    for watcher in watchers:
        assert watcher.stdout is not None
        if watcher.stdout.readline().strip() != "ready":
            raise RuntimeError("a bench watcher failed to subscribe")
    return watchers


def bench_stream_fanout10(target: BenchTarget) -> Measurement:
    """A write's send -> its event received, at each of 10 watcher processes."""
    count = target.count(2000)
    context_id = f"bench-fan-{os.getpid()}"
    code = ("import sys; from engram_cli.bench.harness import _fan_worker; "
            "_fan_worker(sys.argv[1], sys.argv[2], int(sys.argv[3]))")
    watchers = _watchers(target, code, target.socket_path, context_id, str(count))
    return _fan_out(target, watchers, context_id, count)


def _fan_out(target: BenchTarget, watchers: list[subprocess.Popen[str]], context_id: str,
             count: int) -> Measurement:
    """Write *count* units over the socket; each watcher's receipt times, per unit."""
    sent: dict[int, float] = {}
    acked: dict[int, float] = {}
    started = time.perf_counter()
    with daemon_cpu(target) as cpu, target.client() as client:
        for _ in range(count):
            before = time.time()
            unit = client.create_unit(context_id, "MESSAGE", PAYLOAD)
            acked[unit.seq] = time.time()
            sent[unit.seq] = before
    latencies: list[float] = []
    from_ack: list[float] = []
    last: dict[int, float] = {}  # seq -> when the last of the 10 received it
    early = 0
    for watcher in watchers:
        out, _ = watcher.communicate(timeout=300)
        for pair in out.split():
            seq, received = int(pair.split(":")[0]), float(pair.split(":")[1])
            latencies.append(received - sent[seq])
            last[seq] = max(last.get(seq, received), received)
            early += received < acked[seq]
            from_ack.append(max(0.0, received - acked[seq]))
    wall = time.perf_counter() - started
    from_ack.sort()
    all_ten = sorted(last[seq] - sent[seq] for seq in last)
    return Measurement(latencies, wall, daemon_cpu=cpu(), note=(
        f"{len(latencies):,} receipts; all 10 received: p50 "
        f"{percentile(all_ten, 0.5) * 1000:.3f} ms; from the writer's ack: p50 "
        f"{percentile(from_ack, 0.5) * 1000:.3f} ms, p99 {percentile(from_ack, 0.99) * 1000:.3f}"
        f" ms ({early} came before the ack)"))


def bench_http_write(target: BenchTarget) -> Measurement:
    """One durable unit write (256 bytes) per `POST /workunit` through `engram gateway`,
    one keep-alive connection: beside write.single, the same write over the socket."""
    from engram_cli.bench.gateway import GatewayMissing, HttpWriter, running_gateway

    try:
        with running_gateway(engram_command(), target.env) as (host, port):
            writer = HttpWriter(host, port, "bench-http", PAYLOAD)
            try:
                for _ in range(50):
                    writer.write()
                measurement = _timed_loop(target, target.count(3000), writer.write)
            finally:
                writer.close()
    except GatewayMissing as exc:
        return Measurement([], 0.0, note=f"not run: {exc}")
    measurement.note = "HTTP/1.1 keep-alive, X-Agent-ID; daemon cpu excludes the gateway's"
    return measurement


def bench_sse_fanout10(target: BenchTarget) -> Measurement:
    """A write's send (over the socket) -> its event received at each of 10 SSE clients
    of `engram gateway`: beside stream.fanout10, the same fan-out to socket watchers."""
    from engram_cli.bench.gateway import GatewayMissing, running_gateway

    count = target.count(2000)
    context_id = f"bench-sse-{os.getpid()}"
    code = ("import sys; from engram_cli.bench.gateway import sse_worker; "
            "sse_worker(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))")
    try:
        with running_gateway(engram_command(), target.env) as (host, port):
            watchers = _watchers(target, code, host, str(port), context_id, str(count))
            return _fan_out(target, watchers, context_id, count)
    except GatewayMissing as exc:
        return Measurement([], 0.0, note=f"not run: {exc}")


def _machine(target: BenchTarget, socket_path: str, env: Mapping[str, str]) -> BenchTarget:
    return dataclasses.replace(target, socket_path=socket_path, env=env, data_dir=None,
                               restart=None)


Machines = list[tuple[str, dict[str, str]]]
"""Engramd of a cluster: (socket, environment) each (see engram_cli.bench.cluster)."""


def _on_two_machines(measure: Callable[[Machines], Measurement]) -> Measurement:
    """``measure(machines)`` on two engramd of a fresh 3-node NATS cluster ((socket,
    environment) each), or a row that says why cluster mode cannot run here."""
    from engram_cli.bench.cluster import ClusterMissing, cluster_machines

    try:
        with cluster_machines(2) as machines:
            return measure(machines)
    except ClusterMissing as exc:
        return Measurement([], 0.0, note=f"not run: {exc}")


def _floor_ms(machines: Machines, count: int) -> list[float]:
    """Bare JetStream publishes on the machines' NATS servers (sorted latencies, ms)."""
    from engram_cli.bench.cluster import jetstream_floor

    floor = jetstream_floor(machines[0][1]["ENGRAM_CLUSTER_SERVERS"], count)
    return [seconds * 1000 for seconds in floor]


def bench_cluster_write_single(target: BenchTarget) -> Measurement:
    """Cluster mode: one durable unit write (256 bytes) at a time on one machine of two,
    on 3 NATS JetStream nodes on loopback (sync_interval: always): beside write.single."""

    def measure(machines: Machines) -> Measurement:
        floor = _floor_ms(machines, target.count(1000))
        writer = _machine(target, *machines[0])
        with writer.client() as client:
            for _ in range(50):
                client.create_unit("bench-cluster", "MESSAGE", PAYLOAD)
            measurement = _timed_loop(writer, target.count(2000), lambda: client.create_unit(
                "bench-cluster", "MESSAGE", PAYLOAD))
        measurement.note = (f"floor: a bare nats-py publish to a 3-replica stream p50 "
                            f"{percentile(floor, 0.5):.3f} ms, p99 "
                            f"{percentile(floor, 0.99):.3f} ms; daemon cpu excludes "
                            "the NATS servers'")
        return measurement

    return _on_two_machines(measure)


def bench_cluster_fanout10(target: BenchTarget) -> Measurement:
    """Cluster mode: a write's send on machine A -> its event received at each of 10
    watcher processes on machine B: beside stream.fanout10 (one machine)."""
    count = target.count(2000)
    context_id = f"bench-cluster-fan-{os.getpid()}"
    code = ("import sys; from engram_cli.bench.harness import _fan_worker; "
            "_fan_worker(sys.argv[1], sys.argv[2], int(sys.argv[3]))")

    def measure(machines: Machines) -> Measurement:
        writer, reader = _machine(target, *machines[0]), _machine(target, *machines[1])
        with writer.client() as client:  # the context exists on B before it is watched
            client.create_unit(context_id, "MESSAGE", PAYLOAD)
        with reader.client() as client:
            while not client.list_units(context_id, limit=1).units:
                time.sleep(0.01)
        watchers = _watchers(reader, code, reader.socket_path, context_id, str(count))
        measurement = _fan_out(writer, watchers, context_id, count)
        measurement.note += "; daemon cpu: the writer's machine"
        return measurement

    return _on_two_machines(measure)


def bench_cluster_lock_cycle(target: BenchTarget) -> Measurement:
    """Cluster mode: uncontended acquire + release of one lease (two compare-and-set
    writes to the leases bucket, 3 replicas), one at a time: beside lock.cycle."""

    def measure(machines: Machines) -> Measurement:
        floor = _floor_ms(machines, target.count(1000))
        measurement = bench_lock_cycle(_machine(target, *machines[0]))
        measurement.note = (f"floor: two bare nats-py publishes to a 3-replica stream p50 "
                            f"{2 * percentile(floor, 0.5):.3f} ms; daemon cpu excludes "
                            "the NATS servers'")
        return measurement

    return _on_two_machines(measure)


def bench_cluster_lock_handover(target: BenchTarget) -> Measurement:
    """Cluster mode: from the holder's release on machine A to the grant at the waiter
    queued on machine B: beside lock.handover."""

    def measure(machines: Machines) -> Measurement:
        measurement = _handover(_machine(target, *machines[0]), machines[1][0])
        measurement.note = ("the release's write, B's watch seeing it, and B's grant write; "
                            "daemon cpu: the holder's machine")
        return measurement

    return _on_two_machines(measure)


SEMANTIC_UNITS = 100_000


@contextlib.contextmanager
def _semantic_store(target: BenchTarget) -> Iterator[tuple[BenchTarget, float, int]]:
    """A daemon of its own over SEMANTIC_UNITS (scaled) fill units, written with semantic
    search off, then restarted with it on: yields it, the seconds from that restart
    until its vector index had every unit (the model's load included), and the units."""
    with bench_daemon() as own:
        units = _fill(own, target.count(SEMANTIC_UNITS, minimum=1000))
        assert own.restart is not None
        assert isinstance(own.env, dict)  # the environment restart() starts the daemon with
        own.env["ENGRAM_SEARCH_SEMANTIC"] = "auto"
        started = time.perf_counter()
        own.restart(False)
        _wait_indexed(own, vectors=True, interval=0.01)
        yield own, time.perf_counter() - started, units


def bench_vector_backfill(target: BenchTarget) -> Measurement:
    """A daemon with semantic search opening a store of 100,000 (scaled) units without a
    vector index: from its start until every unit is embedded and indexed."""
    try:
        with _semantic_store(target) as (own, seconds, units):
            rss = _daemon_rss_mib(own)
    except SemanticMissing as exc:
        return Measurement([], 0.0, note=f"not run: {exc}")
    return Measurement([seconds], seconds, ops=units, note=(
        f"{units / seconds:,.0f} units/s over {units:,} units (wall in p50, the model's load "
        f"included); daemon RSS {rss:.0f} MiB"))


def bench_search_hybrid(target: BenchTarget) -> Measurement:
    """A two-word hybrid query (BM25 and vector ranks fused), limit 20, over 100,000
    (scaled) units."""
    queries = two_word_queries()
    try:
        with _semantic_store(target) as (own, _, units), own.client() as client:
            def query() -> None:
                client.search(next(queries), mode="hybrid", limit=20)

            for _ in range(20):
                query()
            measurement = _timed_loop(own, target.count(500), query)
            rss = _daemon_rss_mib(own)
    except SemanticMissing as exc:
        return Measurement([], 0.0, note=f"not run: {exc}")
    measurement.note = f"{units:,} units; daemon RSS {rss:.0f} MiB"
    return measurement


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


WORKLOADS: dict[str, Workload] = {
    "ping": bench_ping,
    "cli.ping": bench_cli_ping,
    "cli.unit.create": bench_cli_unit_create,
    "cli.hook.guard": bench_cli_hook_guard,
    "floor.import": bench_floor_import,
    "floor.fdatasync": bench_floor_fdatasync,
    "floor.roundtrip": bench_floor_roundtrip,
    "floor.durable": bench_floor_durable,
    "floor.roundtrip.8procs": bench_floor_roundtrip_8procs,
    "write.single": bench_write_single,
    "write.8procs": bench_write_8procs,
    "write.8procs.serial": bench_write_8procs_serial,
    "write.8procs.batch": bench_write_8procs_batch,
    "list.last100": bench_list_last100,
    "restart.clean": bench_restart_clean,
    "restart.crash": bench_restart_crash,
    "lock.cycle": bench_lock_cycle,
    "lock.handover": bench_lock_handover,
    "lock.8procs": bench_lock_8procs,
    "lock.run": bench_lock_run,
    "inbox": bench_inbox,
    "inbox.wake": bench_inbox_wake,
    "task.claim.8procs": bench_task_claim_8procs,
    "floor.flock": bench_floor_flock,
    "stream.fanout10": bench_stream_fanout10,
    "http.write": bench_http_write,
    "sse.fanout10": bench_sse_fanout10,
    "search.query": bench_search_query,
    "vector.backfill": bench_vector_backfill,
    "search.hybrid": bench_search_hybrid,
    "index.rebuild": bench_index_throughput,
    "import.1agent": bench_import_1agent,
    "import.5agents": bench_import_5agents,
    "cluster.write.single": bench_cluster_write_single,
    "cluster.fanout10": bench_cluster_fanout10,
    "cluster.lock.cycle": bench_cluster_lock_cycle,
    "cluster.lock.handover": bench_cluster_lock_handover,
}
CLUSTER_WORKLOADS = ("cluster.write.single", "cluster.fanout10", "cluster.lock.cycle",
                     "cluster.lock.handover")
"""Run only when asked for (``--cluster`` or ``--only``): they start NATS servers."""


# -- targets ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Goal:
    """A row's target, drawn from floors measured in the same run."""

    floors: tuple[str, ...]
    """The workloads it is drawn from; they run whenever the row does."""
    judge: Callable[[BenchResult, Mapping[str, BenchResult]], tuple[str, bool | None]]
    """(the target in words with the floors' figures, whether the row meets it)."""


def _cpu_ok(result: BenchResult) -> bool:
    return result.daemon_cpu_ms is not None and result.daemon_cpu_ms <= 0.15


def _design(floor: BenchResult, times: int = 1) -> str:
    """What this design's own floor for a row was in the run (see engram_cli.bench.floors)."""
    count = f"{times} x " if times > 1 else ""
    cpu = (f", cpu {times * floor.daemon_cpu_ms:.3f}" if floor.daemon_cpu_ms is not None
           else "")
    return f"; this design's floor: {count}{floor.name} p50 {times * floor.p50_ms:.3f}{cpu}"


def _write_single(r: BenchResult, f: Mapping[str, BenchResult]) -> tuple[str, bool]:
    limit = f["floor.fdatasync"].p50_ms + 0.15
    return (f"p50 <= {limit:.3f} (floor.fdatasync {f['floor.fdatasync'].p50_ms:.3f} + 0.15), "
            f"p99 <= 1, cpu <= 0.15{_design(f['floor.durable'])}",
            r.p50_ms <= limit and r.p99_ms <= 1.0 and _cpu_ok(r))


def _lock_cycle(r: BenchResult, f: Mapping[str, BenchResult]) -> tuple[str, bool]:
    limit = 2 * f["floor.fdatasync"].p50_ms + 0.3
    return (f"p50 <= {limit:.3f} (2 x floor.fdatasync {f['floor.fdatasync'].p50_ms:.3f} "
            f"+ 0.3){_design(f['floor.durable'], 2)}", r.p50_ms <= limit)


def _serial_writes(r: BenchResult, f: Mapping[str, BenchResult]) -> tuple[str, bool]:
    floor = f["floor.roundtrip.8procs"]
    return (f"units/s >= 15,000, p99 <= 5, cpu <= 0.15; this design's floor: "
            f"floor.roundtrip.8procs {floor.throughput:,.0f}/s",
            r.throughput >= 15_000 and r.p99_ms <= 5.0 and _cpu_ok(r))


def _handovers(r: BenchResult, f: Mapping[str, BenchResult]) -> tuple[str, bool]:
    # Each handover waits for the durable commit of the one before it (the next holder
    # releases only once granted), so at most one floor.durable per handover.
    floor = f["floor.durable"]
    return (f"handovers/s >= 2,000; this design's floor: one floor.durable each, "
            f"{1000 / floor.p50_ms:,.0f}/s", r.throughput >= 2000)


def _fanout(r: BenchResult, f: Mapping[str, BenchResult]) -> tuple[str, bool]:
    limit = f["write.single"].p50_ms + 0.3
    return (f"p50 <= {limit:.3f} (write.single {f['write.single'].p50_ms:.3f} + 0.3)",
            r.p50_ms <= limit)


def _near_import_floor(r: BenchResult, f: Mapping[str, BenchResult]) -> tuple[str, bool]:
    limit = 1.2 * f["floor.import"].p50_ms
    return (f"p50 <= {limit:.1f} (1.2 x floor.import {f['floor.import'].p50_ms:.1f})",
            r.p50_ms <= limit)


def _import_agents(r: BenchResult, f: Mapping[str, BenchResult]) -> tuple[str, bool]:
    limit = 1.5 * f["import.1agent"].p50_ms
    return (f"wall <= {limit / 1000:.2f} s (1.5 x import.1agent "
            f"{f['import.1agent'].p50_ms / 1000:.2f} s)", r.p50_ms <= limit)


GOALS: dict[str, Goal] = {
    "write.single": Goal(("floor.fdatasync", "floor.durable"), _write_single),
    "write.8procs.serial": Goal(("floor.roundtrip.8procs",), _serial_writes),
    "lock.cycle": Goal(("floor.fdatasync", "floor.durable"), _lock_cycle),
    "lock.8procs": Goal(("floor.durable",), _handovers),
    "stream.fanout10": Goal(("write.single",), _fanout),
    "list.last100": Goal(("floor.roundtrip",), lambda r, f: (
        f"p50 <= 0.35{_design(f['floor.roundtrip'])}", r.p50_ms <= 0.35)),
    "cli.ping": Goal(("floor.import",), _near_import_floor),
    "cli.unit.create": Goal(("floor.import",), _near_import_floor),
    "cli.hook.guard": Goal(("cli.ping",), lambda r, f: (
        f"p50 <= cli.ping {f['cli.ping'].p50_ms:.1f} ms", r.p50_ms <= f["cli.ping"].p50_ms)),
    "lock.run": Goal(("floor.flock",), lambda r, f: (
        f"(floor.flock {f['floor.flock'].p50_ms:.1f})", None)),
    "import.5agents": Goal(("import.1agent",), _import_agents),
    "http.write": Goal(("write.single",), lambda r, f: (
        f"(write.single {f['write.single'].p50_ms:.3f})", None)),
    "vector.backfill": Goal((), lambda r, f: (
        "units/s >= 10,000", r.throughput >= 10_000)),
    "search.hybrid": Goal((), lambda r, f: ("p50 <= 50", r.p50_ms <= 50.0)),
    "sse.fanout10": Goal(("stream.fanout10",), lambda r, f: (
        f"(stream.fanout10 {f['stream.fanout10'].p50_ms:.3f})", None)),
    "cluster.write.single": Goal(("write.single",), lambda r, f: (
        f"(write.single {f['write.single'].p50_ms:.3f})", None)),
    "cluster.fanout10": Goal(("stream.fanout10",), lambda r, f: (
        f"(stream.fanout10 {f['stream.fanout10'].p50_ms:.3f})", None)),
    "cluster.lock.cycle": Goal(("lock.cycle",), lambda r, f: (
        f"(lock.cycle {f['lock.cycle'].p50_ms:.3f})", None)),
    "cluster.lock.handover": Goal(("lock.handover",), lambda r, f: (
        f"(lock.handover {f['lock.handover'].p50_ms:.3f})", None)),
}


def with_floors(names: list[str]) -> list[str]:
    """*names* in the catalogue's order, with the floors their targets are drawn from."""
    wanted: set[str] = set()
    todo = list(names)
    while todo:  # floors have floors (stream.fanout10 -> write.single -> floor.fdatasync)
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            goal = GOALS.get(name)
            todo += goal.floors if goal else ()
    return [name for name in WORKLOADS if name in wanted]


def judged(results: list[BenchResult]) -> list[BenchResult]:
    """*results* with each row's target and whether it was met."""
    by_name = {row.name: row for row in results}
    out = []
    for row in results:
        goal = GOALS.get(row.name)
        if goal is None or not all(floor in by_name for floor in goal.floors):
            out.append(row)
            continue
        text, met = goal.judge(row, by_name)
        out.append(msgspec.structs.replace(row, target=text, met=met))
    return out


# -- the harness ------------------------------------------------------------


@contextlib.contextmanager
def bench_daemon(semantic: str = "off") -> Iterator[BenchTarget]:
    """A fresh daemon on a temporary socket and data dir, stopped afterwards.

    Semantic search is off unless asked for: only its own rows measure it (they run a
    daemon of their own), and no other row pays for embedding what it writes.
    """
    with tempfile.TemporaryDirectory(prefix="engram-bench-") as scratch:
        os.chmod(scratch, 0o700)
        socket_path = os.path.join(scratch, "engramd.sock")
        env = {**os.environ, "ENGRAM_SOCKET": socket_path,
               "ENGRAM_DATA_DIR": os.path.join(scratch, "data"), "ENGRAM_NO_AUTOSTART": "1",
               "ENGRAM_SEARCH_SEMANTIC": semantic}
        start_daemon(socket_path, env=env)
        with Client(socket_path, autostart=False) as client:
            client.wait_ready(timeout=600)

        def restart(kill: bool) -> float:
            with Client(socket_path, autostart=False) as client:
                pid = client.status().pid
                if not kill:
                    client.shutdown()
            if kill:
                os.kill(pid, signal.SIGKILL)
            _wait_gone(socket_path, pid)
            started = time.perf_counter()
            start_daemon(socket_path, env=env)
            with Client(socket_path, autostart=False) as client:
                client.wait_ready(timeout=600)
            return time.perf_counter() - started

        target = BenchTarget(socket_path=socket_path, env=env, scale=1.0,
                             data_dir=env["ENGRAM_DATA_DIR"], restart=restart)
        try:
            yield target
        finally:
            with contextlib.suppress(Exception), target.client() as client:
                pid = client.status().pid
                client.shutdown()
                client.close()
                _wait_gone(socket_path, pid)


def _wait_gone(socket_path: str, pid: int | None = None, timeout: float = 60.0) -> None:
    """Until the daemon's socket answers no more and its process has gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (pid is None or process_gone(pid)) and not daemon_answers(socket_path):
            return
        time.sleep(0.005)


def run_workloads(
    target: BenchTarget, names: list[str], progress: Callable[[str], None]
) -> list[BenchResult]:
    """Run *names* and the floors their targets need; return every row, judged."""
    results = []
    for name in with_floors(names):
        progress(name)
        results.append(summarize(name, WORKLOADS[name](target)))
    return judged(results)
