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
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping

import msgspec

from engram_cli.autostart import start_daemon
from engram_cli.client import Client


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


@dataclasses.dataclass(frozen=True)
class BenchTarget:
    socket_path: str
    env: Mapping[str, str]
    """Environment for child processes: points them at this daemon, no auto-start."""
    scale: float
    """Multiplier for operation counts (``--scale``)."""

    def count(self, base: int, minimum: int = 5) -> int:
        return max(minimum, int(base * self.scale))

    def client(self) -> Client:
        return Client(self.socket_path, client_name="engram-bench", autostart=False)


Workload = Callable[[BenchTarget], "Measurement"]


@dataclasses.dataclass
class Measurement:
    latencies: list[float]
    wall: float
    note: str = ""


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(fraction * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def summarize(name: str, measurement: Measurement) -> BenchResult:
    values = sorted(measurement.latencies)
    ops = len(values)
    return BenchResult(
        name=name,
        ops=ops,
        p50_ms=round(percentile(values, 0.50) * 1000, 4),
        p99_ms=round(percentile(values, 0.99) * 1000, 4),
        max_ms=round((values[-1] if values else 0.0) * 1000, 4),
        throughput=round(ops / measurement.wall, 1) if measurement.wall > 0 else 0.0,
        note=measurement.note,
    )


def _timed_loop(count: int, operation: Callable[[], object]) -> Measurement:
    latencies = []
    started = time.perf_counter()
    for _ in range(count):
        before = time.perf_counter()
        operation()
        latencies.append(time.perf_counter() - before)
    return Measurement(latencies, time.perf_counter() - started)


def _timed_processes(count: int, argv: list[str], env: Mapping[str, str]) -> Measurement:
    def run() -> None:
        subprocess.run(argv, env=dict(env), check=True, stdout=subprocess.DEVNULL,
                       stdin=subprocess.DEVNULL)

    run()  # warm the page cache and bytecode cache
    return _timed_loop(count, run)


# -- workloads --------------------------------------------------------------


def bench_ping(target: BenchTarget) -> Measurement:
    """Round trip of one ping over the socket, one request at a time."""
    with target.client() as client:
        for _ in range(100):
            client.ping()
        return _timed_loop(target.count(5000), client.ping)


def _engram_command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "engram")
    if os.path.exists(script):
        return [script]
    found = shutil.which("engram")
    return [found] if found else [sys.executable, "-m", "engram_cli"]


def bench_cli_ping(target: BenchTarget) -> Measurement:
    """Wall time of a whole `engram ping` process."""
    measurement = _timed_processes(target.count(30), [*_engram_command(), "ping"], target.env)
    measurement.note = "compare with floor.import"
    return measurement


def bench_floor_import(target: BenchTarget) -> Measurement:
    """The floor under any Python CLI of ours: start Python and import typer and msgspec."""
    measurement = _timed_processes(
        target.count(30), [sys.executable, "-c", "import typer, msgspec"], target.env
    )
    measurement.note = "floor: python -c 'import typer, msgspec'"
    return measurement


WORKLOADS: dict[str, Workload] = {
    "ping": bench_ping,
    "cli.ping": bench_cli_ping,
    "floor.import": bench_floor_import,
}


# -- the harness ------------------------------------------------------------


@contextlib.contextmanager
def bench_daemon() -> Iterator[BenchTarget]:
    """A fresh daemon on a temporary socket and data dir, stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="engram-bench-") as scratch:
        os.chmod(scratch, 0o700)
        socket_path = os.path.join(scratch, "engramd.sock")
        env = {**os.environ, "ENGRAM_SOCKET": socket_path,
               "ENGRAM_DATA_DIR": os.path.join(scratch, "data"), "ENGRAM_NO_AUTOSTART": "1"}
        start_daemon(socket_path, env=env)
        target = BenchTarget(socket_path=socket_path, env=env, scale=1.0)
        try:
            yield target
        finally:
            with contextlib.suppress(Exception), target.client() as client:
                client.shutdown()
            _wait_gone(socket_path)


def _wait_gone(socket_path: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(socket_path) and time.monotonic() < deadline:
        time.sleep(0.02)


def run_workloads(
    target: BenchTarget, names: list[str], progress: Callable[[str], None]
) -> list[BenchResult]:
    results = []
    for name in names:
        progress(name)
        results.append(summarize(name, WORKLOADS[name](target)))
    return results
