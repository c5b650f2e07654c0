"""Rows of the live stream: fan-out to ten watchers, the inbox and its wake-up."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from engram_cli.bench.harness import (
    PAYLOAD,
    BenchTarget,
    Measurement,
    daemon_cpu,
    percentile,
    timed_loop,
)
from engram_cli.client import Client, requests
from engramd.protocol import Heartbeat


def bench_inbox(target: BenchTarget) -> Measurement:
    """Round trip of ``inbox`` handing over one waiting message (read and marked)."""
    count = target.count(1000)
    with target.client() as sender, Client(target.socket_path, agent_id="bench-reader",
                                           autostart=False) as reader:
        message = requests.draft("bench-inbox", "MESSAGE", "m", meta={"to": "bench-reader"})
        for start in range(0, count, 500):
            sender.create_units([message] * min(500, count - start))
        reader.inbox(limit=1)
        measured = timed_loop(target, count - 1, lambda: reader.inbox(limit=1))
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


def start_watchers(target: BenchTarget, code: str, *args: str) -> list[subprocess.Popen[str]]:
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
    code = ("import sys; from engram_cli.bench.stream import _fan_worker; "
            "_fan_worker(sys.argv[1], sys.argv[2], int(sys.argv[3]))")
    watchers = start_watchers(target, code, target.socket_path, context_id, str(count))
    return fan_out(target, watchers, context_id, count)


def fan_out(target: BenchTarget, watchers: list[subprocess.Popen[str]], context_id: str,
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
