"""The harness of ``engram bench``: what every row is measured with.

A row is a function that takes a :class:`BenchTarget` and returns a
:class:`Measurement` (per-operation latencies, wall time, the daemon's CPU); the
rows live by subject (:mod:`.journal`, :mod:`.leases`, :mod:`.stream`, :mod:`.search`,
:mod:`.cli`, :mod:`.floors`, :mod:`.gateway`, :mod:`.cluster`) and :mod:`.rows` names
them. Here: timed loops, worker processes started together, and a daemon of the
harness's own on a temporary socket and data dir. Timing targets are checked by
reading these figures, never by tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping

import msgspec

from engram_cli.client import Client
from engram_cli.client.autostart import (
    daemon_answers,
    process_gone,
    start_daemon,
    started_process,
)
from engramd.protocol import MAX_SOCKET_PATH_BYTES


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


def timed_loop(target: BenchTarget, count: int, operation: Callable[[], object],
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


def timed_processes(target: BenchTarget, count: int, argv: list[str],
                     stdin: bytes | None = None) -> Measurement:
    def run() -> None:
        subprocess.run(argv, env=dict(target.env), check=True, stdout=subprocess.DEVNULL,
                       input=stdin if stdin is not None else b"")

    run()  # warm the page cache and bytecode cache
    return timed_loop(target, count, run)


PAYLOAD = b"x" * 256


def workers(target: BenchTarget, function: Callable[..., None], args: list[list[str]]
            ) -> tuple[list[str], float]:
    """Run ``function(*args)`` (a module-level function) in a process per args list, start
    them together once all are connected, and return what each printed, and the wall time."""
    name = function.__name__
    code = f"import sys; from {function.__module__} import {name}; {name}(*sys.argv[1:])"
    workers = [subprocess.Popen([sys.executable, "-c", code, *worker_args],
                                env=dict(target.env), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
               for worker_args in args]
    for worker in workers:  # each says "ready" once connected
        assert worker.stdout is not None
        if worker.stdout.readline().strip() != "ready":
            raise RuntimeError(f"a bench worker ({name}) failed to start")
    started = time.perf_counter()
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    outputs = []
    for worker in workers:
        out, _ = worker.communicate(timeout=600)
        if worker.returncode != 0:
            raise RuntimeError(f"a bench worker ({name}) failed")
        outputs.append(out)
    return outputs, time.perf_counter() - started


def ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()


def report(latencies: list[float]) -> None:
    """A worker's last line: its latencies, which :func:`workers` hands back."""
    sys.stdout.write(" ".join(f"{value:.7f}" for value in latencies) + "\n")




@contextlib.contextmanager
def sockets_beside(scratch: str) -> Iterator[str]:
    """A directory for the Unix sockets of a run in *scratch* (names up to 16 bytes):
    *scratch* itself, or where a socket there would be longer than bind(2) takes (a deep
    ``TMPDIR``), a private one under /tmp, removed afterwards. The data stays in *scratch*."""
    if len(os.fsencode(os.path.join(scratch, "s" * 16))) <= MAX_SOCKET_PATH_BYTES:
        yield scratch
        return
    with tempfile.TemporaryDirectory(prefix="engram-", dir="/tmp") as short:
        yield short


@contextlib.contextmanager
def bench_daemon(semantic: str = "off") -> Iterator[BenchTarget]:
    """A fresh daemon on a temporary socket and data dir, stopped afterwards.

    Semantic search is off unless asked for: only its own rows measure it (they run a
    daemon of their own), and no other row pays for embedding what it writes.
    """
    with tempfile.TemporaryDirectory(prefix="engram-bench-") as scratch, \
            sockets_beside(scratch) as sockets:
        os.chmod(scratch, 0o700)
        socket_path = os.path.join(sockets, "engramd.sock")
        env = {**os.environ, "ENGRAM_SOCKET": socket_path,
               "ENGRAM_DATA_DIR": os.path.join(scratch, "data"), "ENGRAM_NO_AUTOSTART": "1",
               "ENGRAM_SEARCH_SEMANTIC": semantic}
        def restart(kill: bool) -> float:
            with Client(socket_path, autostart=False) as client:
                pid = client.status().pid
                if not kill:
                    client.shutdown()
            if kill:
                os.kill(pid, signal.SIGKILL)
            wait_gone(socket_path, pid)
            started = time.perf_counter()
            start_daemon(socket_path, env=env)
            with Client(socket_path, autostart=False) as client:
                client.wait_ready(timeout=600)
            return time.perf_counter() - started

        target = BenchTarget(socket_path=socket_path, env=env, scale=1.0,
                             data_dir=env["ENGRAM_DATA_DIR"], restart=restart)
        try:
            start_daemon(socket_path, env=env)
            with Client(socket_path, autostart=False) as client:
                client.wait_ready(timeout=600)
            yield target
        finally:
            with contextlib.suppress(Exception), target.client() as client:
                pid = client.status().pid
                client.shutdown()
                client.close()
                wait_gone(socket_path, pid)
            # One stopped while starting (Ctrl-C, SIGTERM) may not take a shutdown yet.
            starting = started_process(socket_path)
            if starting is not None and starting.poll() is None:
                starting.terminate()
                starting.wait(60)


def wait_gone(socket_path: str, pid: int | None = None, timeout: float = 60.0) -> None:
    """Until the daemon's socket answers no more and its process has gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (pid is None or process_gone(pid)) and not daemon_answers(socket_path):
            return
        time.sleep(0.005)


class SemanticMissing(RuntimeError):
    """The daemon has no semantic search (the engram-journal[semantic] extra is not installed)."""


def wait_indexed(target: BenchTarget, timeout: float = 1800.0, *, vectors: bool = False,
                  approximate: bool = False, interval: float = 0.05) -> None:
    """Until the keyword index (with *vectors*, the vector index) has the whole journal;
    with *approximate*, also until the approximate index holds every vector (until then
    a semantic search scores the rest exactly, which is not what a row measures)."""
    deadline = time.monotonic() + timeout
    with target.client() as client:
        while True:
            journal = client.status().journal
            if journal is not None:
                if vectors and journal.vector_seq is None:
                    raise SemanticMissing("semantic search is not installed: "
                                          "pip install 'engram-journal[semantic]'")
                seq = journal.vector_seq if vectors else journal.indexed_seq
                if seq is not None and seq >= journal.last_seq and not (
                        approximate and journal.approximate_lag):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("the search index did not catch up")
            time.sleep(interval)
