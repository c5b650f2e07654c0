"""``engram bench``: run the benchmark workloads and print their figures."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from engram_cli.cli import context
from engram_cli.cli.options import JsonOption
from engram_cli.cli.output import note
from engram_cli.client.errors import EngramError, UsageProblem
from engram_cli.formats.timeparse import parse_duration

if TYPE_CHECKING:
    from engram_cli.bench.harness import BenchResult, BenchTarget
    from engram_cli.cli.output import Output


def bench(
    ctx: typer.Context,
    only: Annotated[list[str] | None, typer.Option(
        "--only", metavar="NAME",
        help="Run only this workload (repeatable); see --list.")] = None,
    use_running: Annotated[bool, typer.Option(
        "--use-running",
        help="Measure the daemon on --socket instead of starting a temporary one.")] = False,
    scale: Annotated[float, typer.Option(
        "--scale", min=0.01, help="Multiply every workload's operation count.")] = 1.0,
    list_: Annotated[bool, typer.Option("--list", help="List the workloads and exit.")] = False,
    soak: Annotated[str | None, typer.Option(
        "--soak", metavar="DURATION",
        help="Instead of the workloads, hold a mixed load (writers, watchers, lock "
             "contention, searches) for DURATION (90s, 10m) and report latencies, errors "
             "and the daemon's memory over time. With --cluster: on 3 NATS nodes and 2 "
             "engramd, killing NATS nodes meanwhile, then check that nothing acknowledged "
             "is missing, no leases overlapped and both machines agree (exit 1 if not).")
    ] = None,
    compare: Annotated[str | None, typer.Option(
        "--compare", metavar="REF",
        help="Run the bench on commit REF (a temporary git worktree) and on this tree in "
             "turns, and print the ratios of their medians (this tree / REF).")] = None,
    rounds: Annotated[int, typer.Option(
        "--rounds", min=1, max=20, help="With --compare: turns each side takes.")] = 3,
    cluster: Annotated[bool, typer.Option(
        "--cluster",
        help="Also run the cluster-mode rows (3 NATS servers and 2 engramd on loopback) "
             "beside the single-machine rows they compare with.")] = False,
    units: Annotated[str | None, typer.Option(
        "--units", metavar="N",
        help="Instead of the workloads, grow one journal to N units (10M, 2.5M, 500k) "
             "and measure the scale rows at 1M and at N: writes, newest-100, keyword, "
             "semantic and hybrid search, trace, restarts, memory and bytes on disk per "
             "unit. Ten million takes hours; it is never part of the other runs.")] = None,
    json: JsonOption = False,
) -> None:
    """Measure latency (p50/p99/max), throughput and the daemon's CPU per operation of
    named workloads, each beside its target and the floors that target is drawn from."""
    # Imported here: the harness pulls in subprocess and tempfile, which an
    # ordinary command should not pay for at start-up.
    from engram_cli.bench import rows
    from engram_cli.cli.consumer import StopSignals

    # SIGTERM and SIGHUP end a bench as Ctrl-C does, through the `finally` that stops
    # its temporary daemon (Python's default would leave that daemon running).
    with StopSignals():
        cli = context.get(ctx)
        out = cli.output(json)
        if list_:
            for name, workload in rows.WORKLOADS.items():
                out.line(f"{name}\t{(workload.__doc__ or '').strip()}")
            return
        if units is not None:
            if use_running or soak is not None or compare is not None or only or cluster:
                raise UsageProblem("--units runs a daemon of its own and no other workload")
            _scale(cli, _unit_count(units), json)
            return
        if soak is not None and cluster:
            if use_running:
                raise UsageProblem("--soak --cluster starts machines of its own; drop "
                                   "--use-running")
            _cluster_soak(cli, _duration(soak), json)
            return
        if soak is not None:
            _soak(cli, use_running, _duration(soak), json)
            return
        names = only or [name for name in rows.WORKLOADS
                         if name not in rows.CLUSTER_WORKLOADS]
        if cluster:
            names = [*(only or []), *rows.CLUSTER_WORKLOADS]
        unknown = [name for name in names if name not in rows.WORKLOADS]
        if unknown:
            raise UsageProblem(f"unknown workload {', '.join(unknown)} (see engram bench --list)")
        if compare is not None:
            if use_running:
                raise UsageProblem("--compare starts a daemon for each side; drop --use-running")
            _compare(out, compare, only, scale, rounds)
            return
        with _target(cli, use_running) as target:
            results = rows.run_workloads(dataclasses.replace(target, scale=scale), names,
                                          lambda name: note(f"bench: {name}"))
        if out.json:
            for result in results:
                out.json_line(result)
            return
        _table(out, results)


def _table(out: Output, results: list[BenchResult]) -> None:
    out.table(
        "engram bench",
        ["workload", "ops", "p50 ms", "p99 ms", "max ms", "ops/s", "cpu ms/op", "target",
         "met", "note"],
        ([r.name, str(r.ops), f"{r.p50_ms:.3f}", f"{r.p99_ms:.3f}", f"{r.max_ms:.3f}",
          f"{r.throughput:,.0f}", _optional(r.daemon_cpu_ms), r.target,
          {True: "yes", False: "NO", None: ""}[r.met], r.note] for r in results),
        numeric={"ops", "p50 ms", "p99 ms", "max ms", "ops/s", "cpu ms/op"},
    )


def _optional(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _compare(out: Output, ref: str, only: list[str] | None, scale: float,
             rounds: int) -> None:
    from engram_cli.bench import compare

    before, pairs = compare.compare(ref, only, scale, rounds,
                                         lambda step: note(f"bench --compare: {step}"))
    if out.json:
        for pair in pairs:
            out.json_line({"name": pair.name, before.label: pair.before, "this tree": pair.after})
        return
    rows = [[pair.name, _optional(pair.figure("before", "p50_ms")),
             _optional(pair.figure("after", "p50_ms")), pair.ratio("p50_ms"),
             pair.ratio("p99_ms"), pair.ratio("throughput"), pair.ratio("daemon_cpu_ms")]
            for pair in pairs]
    out.table(f"engram bench: this tree / {before.label}, medians of {rounds} rounds",
              ["workload", f"p50 ms {before.label}", "p50 ms this tree", "p50 x", "p99 x",
               "ops/s x", "cpu x"], rows,
              numeric={f"p50 ms {before.label}", "p50 ms this tree", "p50 x", "p99 x",
                       "ops/s x", "cpu x"})


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None


def _soak(cli: context.CliContext, use_running: bool, seconds: float, json: bool) -> None:
    from engram_cli.bench import soak

    out = cli.output(json)
    with _target(cli, use_running) as target:
        report = soak.run_soak(target, seconds, note)
    memory = report.memory_summary()
    if out.json:
        for result in report.results:
            out.json_line(result)
        out.json_line({"memory": memory, "memory_samples": report.memory_mib,
                       "errors": report.errors, "gaps": report.gaps,
                       "daemon_errors": report.daemon_errors})
        return
    _table(out, report.results)
    out.fields("soak", [
        ("duration", f"{seconds:g}s"),
        ("daemon memory", f"start {memory['start_mib']} MiB, after warm-up "
                          f"{memory['warm_mib']} MiB, end {memory['end_mib']} MiB, max "
                          f"{memory['max_mib']} MiB (growth after warm-up "
                          f"{memory['growth_after_warm_up_mib']} MiB)"),
        ("client errors", ", ".join(f"{k} {v}" for k, v in report.errors.items()) or "none"),
        ("events missed by watchers", str(report.gaps)),
        ("daemon error counters",
         ", ".join(f"{k} {v}" for k, v in report.daemon_errors.items()) or "none"),
    ])


def _unit_count(text: str) -> int:
    multiplier = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    try:
        count = float(text[:-1] if multiplier > 1 else text) * multiplier
    except ValueError:
        count = 0
    if not 1_000 <= count <= 1_000_000_000:
        raise UsageProblem(f"--units must be a count from 1k to 1000M (10M, 500k), not {text!r}")
    return int(count)


def _scale(cli: context.CliContext, count: int, json: bool) -> None:
    from engram_cli.bench import scale

    out = cli.output(json)
    stages = scale.run_scale(count, note)
    results = scale.judged(stages)
    if out.json:
        for result in results:
            out.json_line(result)
        for stage in stages:
            out.json_line({"units": stage.units, **stage.parts})
        return
    _table(out, results)
    out.table("engram bench --units: memory (MiB) and bytes on disk per unit",
              ["units", "engramd RSS", "index process RSS", "wal", "store", "fts",
               "vectors", "other", "total"], scale.part_rows(stages),
              numeric={"engramd RSS", "index process RSS", "wal", "store", "fts",
                       "vectors", "other", "total"})
    verdict = scale.memory_verdict(stages)
    if verdict:
        out.line(verdict)


def _cluster_soak(cli: context.CliContext, seconds: float, json: bool) -> None:
    from engram_cli.bench import clustersoak
    from engram_cli.bench.cluster import ClusterMissing

    out = cli.output(json)
    try:
        report = clustersoak.run_cluster_soak(seconds, note)
    except ClusterMissing as exc:
        raise EngramError(str(exc)) from None
    if out.json:
        out.json_line(report)
    else:
        _table(out, report.results)
        out.fields("cluster soak", clustersoak.figures(report))
    if not report.ok:
        raise typer.Exit(1)


@contextlib.contextmanager
def _target(cli: context.CliContext, use_running: bool) -> Iterator[BenchTarget]:
    from engram_cli.bench import harness

    if not use_running:
        with harness.bench_daemon() as target:
            yield target
        return
    client = cli.client(autostart=False)
    env = {**os.environ, "ENGRAM_SOCKET": client.socket_path, "ENGRAM_NO_AUTOSTART": "1"}
    yield harness.BenchTarget(socket_path=client.socket_path, env=env, scale=1.0)
