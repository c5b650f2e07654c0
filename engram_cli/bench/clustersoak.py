"""``engram bench --soak DURATION --cluster``: cluster mode under load while NATS nodes die.

Three nats-server nodes and two engramd "machines" on loopback
(:func:`engram_cli.bench.cluster.cluster_lab`). For DURATION, on each machine, a
process of each kind:

- a **writer** writes units numbered 0, 1, 2 ... into a context of its own, each with an
  idempotency key, trying the same number again until it is acknowledged (so the
  journal holds every number once, in order), and keeps the ids acknowledged;
- a **watcher** follows every writer's context from the journal's start and counts the
  numbers it never received (gaps) and those it received twice (duplicates);
- a **lock runner** loops ``engram lock run soak/shared --ttl 5 -- CMD``, CMD a Python
  one-liner that appends its start, its end (``CLOCK_MONOTONIC``, one host's clock) and
  ``ENGRAM_FENCING_TOKEN`` to a file; afterwards the critical sections of both machines
  must not overlap and their tokens must rise in the order they started;
- a **tasker** adds a task, claims the next ready one (the other machine's too) and marks
  it done, keeping the ids it was told were done.

Meanwhile the **chaos** loop kills (SIGKILL) a NATS node every DURATION/10 (the stream's
leader when it can tell) and starts it again, and once, halfway, kills two (no quorum)
for a while. Errors while it does are expected: they are counted, by the outage they fell
in. At the end: both machines' views must converge, every acknowledged write must be on
both, ``engram unit export --all`` must print the same bytes on both, no task may be done
twice (by the processes' acknowledgements, and by the journal's ``TASK_STATUS`` units),
and both engramd must still run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable

import msgspec

from engram_cli.bench.cli import engram_command
from engram_cli.bench.cluster import cluster_lab
from engram_cli.bench.harness import BenchResult, Measurement, summarize
from engram_cli.bench.journal import fill_text
from engram_cli.bench.natslab import NODES, NatsCluster
from engram_cli.client import Client
from engram_cli.client.autostart import last_line, process_gone
from engram_cli.client.errors import ClientTimeout, EngramError, LockHeld, NotFound, Unavailable
from engramd.protocol import Heartbeat, UnitCreated, log_file_in

RESOURCE = "soak/shared"
LEASE_TTL = 5
HOLD = 0.05
"""Seconds a critical section lasts."""
TASKS = "soak-tasks"
ERROR_PAUSE = 0.1
"""After a refused request, before the next: an outage is not a tight loop."""
CONVERGE_TIMEOUT = 120.0
DRAIN_TIMEOUT = 60.0
"""How long a watcher is given, once told the last numbers, to receive them."""
RESTORE = 5.0
"""Seconds a killed node is given, as the chaos plans, to be healthy again."""
SETTLE = 10.0
"""Seconds after a node is back during which errors still count as the outage's."""

_CRITICAL = """\
import os, signal, sys, time
token, name = os.environ["ENGRAM_FENCING_TOKEN"], sys.argv[2]
with open(sys.argv[1], "a") as out:
    def end(*_):
        out.write(f"E {name} {token} {time.monotonic():.6f}\\n"); out.flush(); os._exit(0)
    signal.signal(signal.SIGTERM, end)
    out.write(f"S {name} {token} {time.monotonic():.6f}\\n"); out.flush()
    time.sleep(float(sys.argv[3]))
    end()
"""
"""CMD of the lock runners: its start, its end (also when ``lock run`` stops it with
SIGTERM) and its fencing token, one line each, appended to a file."""


class Tally(msgspec.Struct):
    """What one soak process saw; printed as JSON when it ends."""

    latencies: list[float] = []
    errors: list[tuple[str, float]] = []
    """(error code or class, CLOCK_MONOTONIC time) of every refused request."""
    acked: list[str] = []
    """A writer: the unit ids acknowledged; a tasker: the task ids it was told are done."""
    last_n: int = -1
    """A writer: the last number acknowledged."""
    seen: dict[str, int] = {}
    """A watcher: the last number received per writer's context."""
    received: int = 0
    gaps: int = 0
    duplicates: int = 0
    gap_details: list[tuple[str, int, int, int, float]] = []
    """A watcher's first gaps: (context, first and last number missed, the seq of the
    unit received after them, CLOCK_MONOTONIC time)."""
    exits: dict[str, int] = {}
    """A lock runner: ``lock run``'s exit statuses, counted."""
    contended: int = 0
    """A tasker: claims that found the task ready a moment ago taken by the other
    machine (``lock_held``), or nothing ready (``not_found``): not errors."""

    def error(self, exc: BaseException | str) -> None:
        name = exc if isinstance(exc, str) else (getattr(exc, "code", None)
                                                 or type(exc).__name__)
        self.errors.append((str(name), time.monotonic()))


def _contexts(machines: list[str]) -> list[str]:
    return [f"soak-{machine}-w" for machine in machines]


def _connect(socket_path: str, name: str) -> Client:
    client = Client(socket_path, agent_id=name, client_name="engram-soak", autostart=False,
                    timeout=60)
    client.connect()
    return client


def _write(socket_path: str, name: str, deadline: float, tally: Tally, run: str) -> None:
    client = _connect(socket_path, name)
    n = 0
    while time.monotonic() < deadline:
        before = time.perf_counter()
        try:
            unit = client.create_unit(f"soak-{name}-w", "MESSAGE", fill_text(n),
                                      meta={"n": str(n)}, idempotency_key=f"{run}-{name}-{n}")
        except ClientTimeout as exc:
            tally.error(exc)
            client.close()
            client = _connect(socket_path, name)
            continue
        except EngramError as exc:
            tally.error(exc)
            time.sleep(ERROR_PAUSE)
            continue
        tally.latencies.append(time.perf_counter() - before)
        tally.acked.append(unit.id)
        tally.last_n = n
        n += 1
    client.close()


def _watch(socket_path: str, name: str, contexts: list[str], tally: Tally) -> None:
    """Follows *contexts* from the start until stdin names the last number of each, and
    it has received them (or :data:`DRAIN_TIMEOUT` has passed)."""
    targets: dict[str, int] = {}
    told = threading.Event()

    def listen() -> None:
        targets.update(json.loads(sys.stdin.readline() or "{}"))
        told.set()

    threading.Thread(target=listen, daemon=True).start()
    client = _connect(socket_path, name)
    drain_deadline: float | None = None
    for item in client.subscribe(contexts=contexts, kinds=["unit.created"], after=0,
                                 heartbeat=0.5):
        if isinstance(item, UnitCreated):
            tally.received += 1
            n = int(item.unit.meta["n"])
            previous = tally.seen.get(item.context_id, -1)
            if n <= previous:
                tally.duplicates += 1
            else:
                if n > previous + 1 and len(tally.gap_details) < 20:
                    tally.gap_details.append((item.context_id, previous + 1, n - 1,
                                              item.unit.seq, time.monotonic()))
                tally.gaps += n - previous - 1
                tally.seen[item.context_id] = n
        elif not isinstance(item, Heartbeat):
            continue
        if told.is_set():
            drain_deadline = drain_deadline or time.monotonic() + DRAIN_TIMEOUT
            if time.monotonic() > drain_deadline or all(
                    tally.seen.get(context, -1) >= last for context, last in targets.items()):
                break
    client.close()


def _run_locks(socket_path: str, name: str, deadline: float, tally: Tally,
               record: str) -> None:
    env = {**os.environ, "ENGRAM_AGENT": name}
    argv = [*engram_command(), "lock", "run", RESOURCE, "--ttl", str(LEASE_TTL), "--wait",
            "30", "--", sys.executable, "-S", "-c", _CRITICAL, record, name, str(HOLD)]
    while time.monotonic() < deadline:
        before = time.perf_counter()
        status = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, check=False).returncode
        # When lock run was over: CMD was gone by then, if SIGKILL left it no time to
        # write its end (the judge's bound for a section without one).
        with open(record, "a") as out:
            out.write(f"X {name} 0 {time.monotonic():.6f}\n")
        tally.exits[str(status)] = tally.exits.get(str(status), 0) + 1
        if status == 0:
            tally.latencies.append(time.perf_counter() - before)
        else:
            tally.error(f"exit {status}")
            time.sleep(ERROR_PAUSE)


def _claim_tasks(socket_path: str, name: str, deadline: float, tally: Tally) -> None:
    client = _connect(socket_path, name)
    number = 0
    while time.monotonic() < deadline:
        try:
            client.add_task(f"soak task {name} {number}", context_id=TASKS)
            number += 1
            before = time.perf_counter()
            task = client.claim_task(contexts=[TASKS], ttl=30)
        except (NotFound, LockHeld):
            tally.contended += 1  # the other machine took what was ready
            continue
        except EngramError as exc:
            tally.error(exc)
            time.sleep(ERROR_PAUSE)
            continue
        while time.monotonic() < deadline:
            try:
                client.finish_task(task.id)
            except Unavailable as exc:  # the cluster is away: try again
                tally.error(exc)
                time.sleep(ERROR_PAUSE)
                continue
            except EngramError as exc:
                tally.error(exc)
                break
            tally.latencies.append(time.perf_counter() - before)
            tally.acked.append(task.id)
            break
    client.close()


def _worker(role: str, socket_path: str, name: str, seconds: str, extra: str) -> None:
    """One soak process: waits for "go" on stdin, runs its role, prints a JSON tally."""
    tally = Tally()
    sys.stdin.readline()
    deadline = time.monotonic() + float(seconds)
    try:
        if role == "write":
            _write(socket_path, name, deadline, tally, extra)
        elif role == "watch":
            _watch(socket_path, name, extra.split(","), tally)
        elif role == "lock":
            _run_locks(socket_path, name, deadline, tally, extra)
        else:
            _claim_tasks(socket_path, name, deadline, tally)
    except Exception as exc:  # reported, not lost: the tally says what ended it
        tally.error(f"ended: {type(exc).__name__}: {exc}")
    sys.stdout.write(msgspec.json.encode(tally).decode())


# -- the run ------------------------------------------------------------------


class Outage(msgspec.Struct, frozen=True):
    start: float
    """Seconds into the run."""
    end: float
    nodes: list[str]


class Section(msgspec.Struct, frozen=True):
    machine: str
    token: int
    start: float
    end: float | None
    killed: bool = False
    """Its CMD wrote no end (SIGKILL): *end* is when its lock run was over."""


class MachineEnd(msgspec.Struct, frozen=True):
    machine: str
    running: bool
    log_tail: list[str] = []
    """The last lines of its log, when it is not running."""


class ClusterSoakReport(msgspec.Struct, kw_only=True):
    """The figures of ``engram bench --soak DURATION --cluster`` (``--json``: this)."""

    duration: float
    outages: list[Outage]
    writes_acknowledged: int
    writes_refused: dict[str, int]
    missing: dict[str, int]
    """Acknowledged writes not found, per machine."""
    exports_identical: bool
    export_units: dict[str, int]
    export_sha256: dict[str, str]
    converged: bool
    converge_seconds: float
    watch_received: dict[str, int]
    watch_gaps: int
    watch_duplicates: int
    watch_short: int
    watch_gap_details: list[str] = []
    """A watcher's gaps: what it missed, when, and the missed units' seqs in the journal."""
    """Writers' last numbers a watcher had not received when it stopped."""
    lock_sections: int
    lock_sections_unended: int
    lock_sections_killed: int
    overlaps: int
    token_not_rising: int
    lock_run_exits: dict[str, int]
    tasks_done: int
    tasks_done_twice_acked: int
    tasks_done_twice_journal: int
    errors: dict[str, dict[str, int]]
    """Refused requests (by code, ``exit N`` for a ``lock run``) by when: during the
    outage that began at ``"<start>"`` seconds (or up to :data:`SETTLE` seconds after its
    nodes were back, until the next began), else ``"otherwise"``."""
    tasks_contended: int = 0
    tasks_done_twice: dict[str, list[str]] = {}
    """The journal's state changes of each task done more than once (evidence)."""
    machines: list[MachineEnd]
    results: list[BenchResult]
    ok: bool = False
    """Every check held: nothing missing, identical exports, no overlap, tokens rising,
    no task done twice, no event missed or repeated, both engramd running."""

    def holds(self) -> bool:
        return (not any(self.missing.values()) and self.exports_identical and self.converged
                and self.overlaps == 0 and self.token_not_rising == 0
                and self.lock_sections_unended == 0
                and self.tasks_done_twice_acked == 0 and self.tasks_done_twice_journal == 0
                and self.watch_gaps == 0 and self.watch_duplicates == 0
                and self.watch_short == 0 and all(each.running for each in self.machines))


def figures(report: ClusterSoakReport) -> list[tuple[str, str]]:
    """The report as named lines, for ``engram bench --soak --cluster``'s table."""
    def counts(values: dict[str, int]) -> str:
        return ", ".join(f"{name} {count}" for name, count in values.items()) or "none"

    outages = "; ".join(f"{', '.join(outage.nodes)} {outage.start:g}-{outage.end:g}s"
                        for outage in report.outages)
    errors = "; ".join(f"{'otherwise' if when == 'otherwise' else 'outage at ' + when + 's'}: "
                       f"{counts(found)}" for when, found in report.errors.items())
    ended = [f"{each.machine} EXITED: {' | '.join(each.log_tail[-3:])}"
             for each in report.machines if not each.running]
    return [
        ("verdict", "every check holds" if report.ok else "CHECKS FAILED"),
        ("duration", f"{report.duration:g}s"),
        ("NATS nodes killed", outages or "none"),
        ("writes acknowledged", str(report.writes_acknowledged)),
        ("writes refused", counts(report.writes_refused)),
        ("acknowledged writes missing", counts(report.missing)),
        ("exports identical", f"{'yes' if report.exports_identical else 'NO'} "
                              f"({counts(report.export_units)} units)"),
        ("converged", f"{'yes' if report.converged else 'NO'} after "
                      f"{report.converge_seconds:g}s"),
        ("watchers", f"received {counts(report.watch_received)}; gaps "
                     f"{report.watch_gaps}, duplicates {report.watch_duplicates}, short "
                     f"of the last write {report.watch_short}"),
        ("lock run sections", f"{report.lock_sections} ({report.lock_sections_unended} "
                              f"without an end; {report.lock_sections_killed} whose CMD "
                              "was killed, ended by their lock run's exit)"),
        ("overlapping sections", str(report.overlaps)),
        ("tokens not rising", str(report.token_not_rising)),
        ("lock run exits", counts(report.lock_run_exits)),
        ("tasks done", f"{report.tasks_done} (claims that lost the race "
                       f"{report.tasks_contended})"),
        ("tasks done twice", f"{report.tasks_done_twice_acked} by acknowledgement, "
                             f"{report.tasks_done_twice_journal} in the journal"),
        *((f"task {task} done twice", "; ".join(history))
          for task, history in report.tasks_done_twice.items()),
        ("refused requests", errors or "none"),
        ("engramd", "; ".join(ended) or "both running"),
    ]


def run_cluster_soak(seconds: float, progress: Callable[[str], None], *,
                     chaos_every: float | None = None,
                     quorum_seconds: float | None = None) -> ClusterSoakReport:
    """The soak on a cluster of its own; *chaos_every* defaults to *seconds*/10, the
    quorum loss to 20 s (at most *seconds*/6)."""
    every = chaos_every or seconds / 10
    quorum = quorum_seconds or min(20.0, seconds / 6)
    run = f"{os.getpid()}-{int(time.time())}"
    with cluster_lab(2) as (nats, machines):
        names = ["a", "b"]
        for socket_path, _ in machines:
            _wait_leases_synced(socket_path)
        pids = {}
        for name, (socket_path, _) in zip(names, machines, strict=True):
            with Client(socket_path, autostart=False) as client:
                pids[name] = client.status().pid
        scratch = os.path.dirname(os.path.dirname(machines[0][1]["ENGRAM_DATA_DIR"]))
        record = os.path.join(scratch, "sections")
        code = ("import sys; from engram_cli.bench.clustersoak import _worker; "
                "_worker(*sys.argv[1:])")
        workers: list[tuple[str, str, subprocess.Popen[str]]] = []
        for name, (socket_path, env) in zip(names, machines, strict=True):
            for role, extra in (("write", run), ("watch", ",".join(_contexts(names))),
                                ("lock", record), ("task", "")):
                workers.append((role, name, subprocess.Popen(
                    [sys.executable, "-c", code, role, socket_path, name, str(seconds),
                     extra], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    text=True)))
        for _, _, worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        started = time.monotonic()
        outages = _chaos(nats, machines[0][1], started, seconds, every, quorum, progress)
        progress("soak: done; waiting for the workers")
        tallies: dict[tuple[str, str], Tally] = {}
        for role, name, worker in workers:
            if role != "watch":
                out, _ = worker.communicate(timeout=seconds + 300)
                tallies[role, name] = msgspec.json.decode(out, type=Tally)
        progress("soak: waiting for the machines to converge")
        converged, converge_seconds = _converge([path for path, _ in machines])
        targets = {f"soak-{name}-w": tallies["write", name].last_n for name in names}
        for role, name, worker in workers:
            if role == "watch":
                out, _ = worker.communicate(json.dumps(targets) + "\n",
                                            timeout=DRAIN_TIMEOUT + 60)
                tallies[role, name] = msgspec.json.decode(out, type=Tally)
        progress("soak: checking")
        acked = [unit for name in names for unit in tallies["write", name].acked]
        missing = {name: _missing(path, acked)
                   for name, (path, _) in zip(names, machines, strict=True)}
        exports = {name: _export(env) for name, (_, env) in zip(names, machines, strict=True)}
        ends = [_machine_end(name, pids[name], env)
                for name, (_, env) in zip(names, machines, strict=True)]
        sections = _sections(record)
    done_acked = [task for name in names for task in tallies["task", name].acked]
    overlaps, not_rising = _judge(sections)
    first = exports[names[0]]
    report = ClusterSoakReport(
        duration=seconds, outages=outages, writes_acknowledged=len(acked),
        writes_refused=_count(error for name in names
                              for error, _ in tallies["write", name].errors),
        missing=missing,
        exports_identical=all(export == first for export in exports.values()),
        export_units={name: export.count(b"\n") for name, export in exports.items()},
        export_sha256={name: hashlib.sha256(export).hexdigest()[:16]
                       for name, export in exports.items()},
        converged=converged, converge_seconds=round(converge_seconds, 1),
        watch_received={name: tallies["watch", name].received for name in names},
        watch_gaps=sum(tallies["watch", name].gaps for name in names),
        watch_duplicates=sum(tallies["watch", name].duplicates for name in names),
        watch_short=sum(1 for name in names for context, last in targets.items()
                        if tallies["watch", name].seen.get(context, -1) < last),
        lock_sections=len(sections),
        lock_sections_unended=sum(1 for section in sections if section.end is None),
        lock_sections_killed=sum(1 for section in sections if section.killed),
        overlaps=overlaps, token_not_rising=not_rising,
        lock_run_exits=_merge(tallies["lock", name].exits for name in names),
        tasks_done=len(done_acked),
        tasks_done_twice_acked=len(done_acked) - len(set(done_acked)),
        tasks_done_twice_journal=_done_twice(first),
        tasks_done_twice=_done_histories(first),
        watch_gap_details=_gap_details(tallies, names, first, started),
        tasks_contended=sum(tallies["task", name].contended for name in names),
        errors=_errors_by_outage(tallies.values(), outages, started),
        machines=ends,
        results=_results(tallies, names, seconds))
    report.ok = report.holds()
    return report


def _wait_leases_synced(socket_path: str) -> None:
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    with Client(socket_path, autostart=False) as client:
        while True:
            cluster = client.status().cluster
            if cluster is not None and cluster.leases_synced:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"engramd on {socket_path} did not read the leases")
            time.sleep(0.05)


def _chaos(nats: NatsCluster, env: dict[str, str], started: float, seconds: float,
           every: float, quorum: float, progress: Callable[[str], None]) -> list[Outage]:
    """Until *seconds* into the run: at each multiple of *every*, a node killed (two, the
    quorum, at the middle one) and started again; returns when each was down."""
    stream = "ENGRAM_" + env.get("ENGRAM_CLUSTER_DEPLOYMENT", "engram").upper()
    slots = max(2, int(seconds // every))
    quorum_slot = slots // 2
    outages: list[Outage] = []
    for slot in range(1, slots):
        down = quorum if slot == quorum_slot else min(every / 3, 10.0)
        if max(time.monotonic(), started + slot * every) + down + RESTORE > started + seconds:
            break  # the nodes would not be back before the end
        _pace_until(started + slot * every)
        leader = nats.stream_leader(stream)
        first = leader if leader is not None else slot % NODES
        victims = [first]
        if slot == quorum_slot:
            victims.append((first + 1) % NODES)
        began = time.monotonic() - started
        names = [nats.nodes[index].name for index in victims]
        progress(f"soak: {began:.0f}/{seconds:.0f}s: kill -9 NATS {', '.join(names)}"
                 f" for {down:.0f}s" + (" (no quorum)" if len(victims) > 1 else ""))
        try:
            for index in victims:
                nats.stop(index, kill=True)
            _pace_until(time.monotonic() + down)
        finally:
            nats.start(*victims)
            nats.wait_healthy(timeout=120)
        outages.append(Outage(round(began, 1), round(time.monotonic() - started, 1), names))
    _pace_until(started + seconds)
    return outages


def _pace_until(moment: float) -> None:
    """The soak's own pace (a tool, not a test: it sleeps until its next step)."""
    time.sleep(max(0.0, moment - time.monotonic()))


def _converge(sockets: list[str]) -> tuple[bool, float]:
    """Until every machine's view has applied the stream's last message (the same one on
    all), bounded; whether they did, and how long it took."""
    began = time.monotonic()
    clients = [Client(path, autostart=False) for path in sockets]
    agreed = None
    try:
        while time.monotonic() - began < CONVERGE_TIMEOUT:
            views = []
            for client in clients:
                cluster = client.status().cluster
                views.append(None if cluster is None or cluster.lag != 0
                             else cluster.view_stream_seq)
            if None not in views and len(set(views)) == 1:
                if agreed == views[0]:  # the same twice: nothing was on its way
                    return True, time.monotonic() - began
                agreed = views[0]
            else:
                agreed = None
            time.sleep(0.5)
        return False, time.monotonic() - began
    finally:
        for client in clients:
            client.close()


def _missing(socket_path: str, ids: list[str], batch: int = 500) -> int:
    missing = 0
    with Client(socket_path, autostart=False, timeout=60) as client:
        for start in range(0, len(ids), batch):
            wanted = ids[start:start + batch]
            found = {unit.id for unit in client.get_units(wanted).units}
            missing += sum(1 for unit in wanted if unit not in found)
    return missing


def _export(env: dict[str, str]) -> bytes:
    return subprocess.run([*engram_command(), "unit", "export", "--all"], env=env,
                          capture_output=True, check=True, timeout=600).stdout


def _done_twice(export: bytes) -> int:
    """Tasks the journal says were done more than once (each time past the first)."""
    return sum(sum(1 for change in history if " done " in change) - 1
               for history in _done_histories(export).values())


def _done_histories(export: bytes) -> dict[str, list[str]]:
    """The state changes (``seq agent state token``) of each task the journal says was
    done more than once."""
    history: dict[str, list[str]] = {}
    done: dict[str, int] = {}
    for line in export.splitlines():
        unit = json.loads(line)
        meta = unit.get("meta") or {}
        if unit.get("type") != "TASK_STATUS" or "task" not in meta:
            continue
        history.setdefault(meta["task"], []).append(
            f"seq {unit.get('seq')} {unit.get('agent_id')} {meta.get('state')} token "
            f"{meta.get('fencing_token', '-')}")
        if meta.get("state") == "done":
            done[meta["task"]] = done.get(meta["task"], 0) + 1
    return {task: history[task] for task, count in done.items() if count > 1}


def _gap_details(tallies: dict[tuple[str, str], Tally], names: list[str], export: bytes,
                 started: float) -> list[str]:
    seqs: dict[tuple[str, int], int] = {}
    for line in export.splitlines():
        unit = json.loads(line)
        if "n" in (unit.get("meta") or {}):
            seqs[unit["context_id"], int(unit["meta"]["n"])] = unit["seq"]
    return [f"watcher on {name}: {context} n {first}..{last} (seqs "
            f"{[seqs.get((context, n)) for n in range(first, last + 1)][:5]}) missed before "
            f"seq {following}, {moment - started:.1f}s into the run"
            for name in names
            for context, first, last, following, moment in tallies["watch", name].gap_details]


def _machine_end(name: str, pid: int, env: dict[str, str]) -> MachineEnd:
    if not process_gone(pid):
        return MachineEnd(name, True)
    log = log_file_in(env["ENGRAM_DATA_DIR"])
    try:
        with open(log, "rb") as file:
            tail = file.read().decode(errors="replace").splitlines()[-20:]
    except OSError:
        tail = [last_line(log)]
    return MachineEnd(name, False, tail)


def _sections(path: str) -> list[Section]:
    """The critical sections the lock runners' CMDs recorded; one whose CMD was killed
    before it could write its end ends, at the latest, when its ``lock run`` was over."""
    starts: dict[tuple[str, int], float] = {}
    ends: dict[tuple[str, int], float] = {}
    over: dict[str, list[float]] = {}
    with contextlib.suppress(FileNotFoundError), open(path) as file:
        for line in file:
            kind, machine, token, moment = line.split()
            if kind == "X":
                over.setdefault(machine, []).append(float(moment))
            else:
                (starts if kind == "S" else ends)[machine, int(token)] = float(moment)

    def end_of(machine: str, token: int, start: float) -> float | None:
        if (machine, token) in ends:
            return ends[machine, token]
        return min((moment for moment in over.get(machine, []) if moment > start),
                   default=None)

    return [Section(machine, token, start, end_of(machine, token, start),
                    killed=(machine, token) not in ends)
            for (machine, token), start in starts.items()]


def _judge(sections: list[Section]) -> tuple[int, int]:
    """Overlapping critical sections, and tokens that did not rise, in order of start."""
    overlaps = not_rising = 0
    latest_end = float("-inf")
    previous_token = 0
    for section in sorted(sections, key=lambda each: each.start):
        if section.start < latest_end:
            overlaps += 1
        if section.token <= previous_token:
            not_rising += 1
        latest_end = max(latest_end, section.end if section.end is not None
                         else float("inf"))
        previous_token = section.token
    return overlaps, not_rising


def _count(names: Iterable[str]) -> dict[str, int]:
    counted: dict[str, int] = {}
    for name in names:
        counted[name] = counted.get(name, 0) + 1
    return counted


def _merge(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for each in counts:
        for name, count in each.items():
            merged[name] = merged.get(name, 0) + count
    return dict(sorted(merged.items()))


def _errors_by_outage(tallies: Iterable[Tally], outages: list[Outage], started: float
                      ) -> dict[str, dict[str, int]]:
    by_when: dict[str, dict[str, int]] = {}
    for tally in tallies:
        for name, moment in tally.errors:
            at = moment - started
            when = "otherwise"
            for outage in outages:  # the latest that began before it
                if outage.start <= at <= outage.end + SETTLE:
                    when = f"{outage.start:g}"
            bucket = by_when.setdefault(when, {})
            bucket[name] = bucket.get(name, 0) + 1
    return by_when


def _results(tallies: dict[tuple[str, str], Tally], names: list[str],
             seconds: float) -> list[BenchResult]:
    rows = []
    for role, label, what in (("write", "cluster.soak.write", "request"),
                              ("lock", "cluster.soak.lock_run", "a whole lock run process"),
                              ("task", "cluster.soak.task", "claim + done")):
        latencies = [value for name in names for value in tallies[role, name].latencies]
        errors = sum(len(tallies[role, name].errors) for name in names)
        rows.append(summarize(label, Measurement(
            latencies, seconds, f"{what}; both machines; {errors} refused")))
    return rows
