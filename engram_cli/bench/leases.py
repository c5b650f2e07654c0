"""Rows of leases and claims: a lock cycle, one on a path 8 levels deep, a handover, eight
contenders, ``lock run``, task claims."""

from __future__ import annotations

import time
from collections.abc import Callable

from engram_cli.bench.cli import engram_command
from engram_cli.bench.harness import (
    BenchTarget,
    Measurement,
    daemon_cpu,
    ready,
    report,
    timed_loop,
    timed_processes,
    workers,
)
from engram_cli.client import Client


def bench_lock_cycle(target: BenchTarget) -> Measurement:
    """Uncontended acquire + release of one lease (two durable writes), one at a time."""
    with target.client() as client:
        def cycle() -> None:
            (lease,) = client.acquire_lock("bench:cycle", ttl=30)
            client.release_lock(lease.lock_id)

        for _ in range(50):
            cycle()
        return timed_loop(target, target.count(2000), cycle)


DEEP_ROOT = "file:github.com/bench/deep:"
DEEP_PATH = "a/b/c/d/e/f/g/h.py"


def bench_lock_deep8(target: BenchTarget) -> Measurement:
    """lock.cycle on a file 8 levels deep in a repository where another session holds a
    file beside it at every level, a directory beside its own and a glob (``*.md``) on
    its way: each grant checks the path's 8 directories, their counts of what is below,
    and the glob (the lock manager's O(depth) rule), and each end updates the counts."""
    parts = DEEP_PATH.split("/")
    around = [DEEP_ROOT + "/".join([*parts[:level], f"x{level}.txt"])
              for level in range(len(parts))]
    around += [DEEP_ROOT + "a/b/c/d/other/", DEEP_ROOT + "a/b/c/*.md"]
    with target.client() as neighbour, target.client() as client:
        neighbour.acquire_lock(around, ttl=3600)

        def cycle() -> None:
            (lease,) = client.acquire_lock(DEEP_ROOT + DEEP_PATH, ttl=30)
            client.release_lock(lease.lock_id)

        for _ in range(50):
            cycle()
        return timed_loop(target, target.count(2000), cycle)


def bench_lock_handover(target: BenchTarget) -> Measurement:
    """From the holder's release call to the grant at the waiter queued behind it."""
    return handover(target, target.socket_path)


def handover(target: BenchTarget, waiter_socket: str) -> Measurement:
    """Handovers from a holder on *target* to a waiter on the daemon at *waiter_socket*."""
    import threading

    count = target.count(500)
    granted_at: list[float] = []
    released_at: list[float] = []
    turn = threading.Semaphore(0)
    queued = threading.Event()

    failed: list[Exception] = []

    def waiter() -> None:
        try:
            with Client(waiter_socket, agent_id="bench-waiter", autostart=False) as client:
                for _ in range(count):
                    turn.acquire()
                    queued.set()
                    (lease,) = client.acquire_lock("bench:handover", ttl=30, wait=60)
                    granted_at.append(time.perf_counter())
                    client.release_lock(lease.lock_id)
        except Exception as exc:
            failed.append(exc)

    def waiter_alive() -> None:
        """Raise what ended the waiter: the holder's loops would wait for it forever."""
        if failed:
            raise failed[0]

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
                waiter_alive()
                time.sleep(0.0002)  # until the waiter is really in line
            released_at.append(time.perf_counter())
            holder.release_lock(lease.lock_id)
            while len(granted_at) < len(released_at):
                waiter_alive()
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
        ready()
        latencies = [step(client) for _ in range(int(rounds_text))]
    report(latencies)


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
        outputs, wall = workers(target, _rounds_worker, [
            [target.socket_path, f"l{n}", str(rounds), "lock"] for n in range(8)])
    with target.client() as client:
        batches = _commit_batches(client) - batches_before
    latencies = [float(value) for out in outputs for value in out.split()]
    grants = 8 * rounds
    return Measurement(latencies, wall, daemon_cpu=cpu(), note=(
        f"{grants / wall:,.0f} handovers/s; {batches / grants:.2f} fsyncs per grant; "
        f"latency per acquire (waiting included) + release"))


def bench_task_claim_8procs(target: BenchTarget) -> Measurement:
    """8 processes taking tasks from one queue: claim --next, done, again."""
    rounds = target.count(100)
    with target.client() as client:
        for start in range(0, 8 * rounds, 500):
            for _ in range(min(500, 8 * rounds - start)):
                client.add_task("bench task", context_id="bench-tasks")
    with daemon_cpu(target) as cpu:
        outputs, wall = workers(target, _rounds_worker, [
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
    measurement = timed_processes(
        target, target.count(30), [*engram_command(), "lock", "run", "bench:run", "--", "true"])
    measurement.note = "compare with floor.flock"
    return measurement
