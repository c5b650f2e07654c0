"""``engram bench --compare REF``: the bench on another commit and on this tree, back to back.

A change is judged against its parent on the same machine at the same time: the
commit is checked out into a temporary git worktree, and each side runs the
bench in a process of its own (``python -m engram_cli bench --json``) with that
side's source first on ``PYTHONPATH``, so its daemon is that side's too. Both
sides use this venv's packages. Only the workloads both sides know are run.

The sides take turns, round after round (REF, this tree, REF, ...), and each
figure is the median over the rounds: a shared machine's drift (a neighbour's
load, a slow minute of the disk) then falls on both sides alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator

import msgspec

from engram_cli.bench.harness import BenchResult
from engram_cli.client.errors import UsageProblem


@dataclasses.dataclass(frozen=True)
class Side:
    label: str
    """The commit's short id, or "this tree"."""
    source: str
    """The directory whose engram_cli and engramd run."""


@dataclasses.dataclass(frozen=True)
class Pair:
    name: str
    before: BenchResult | None
    after: BenchResult | None

    def figure(self, side: str, field: str) -> float | None:
        """*field* of the row on *side* ("before" or "after"), None where it did not run."""
        result: BenchResult | None = getattr(self, side)
        return None if result is None else getattr(result, field)

    def ratio(self, field: str) -> str:
        """*field* this tree / REF, as text."""
        before, after = self.figure("before", field), self.figure("after", field)
        if after is None or before is None or before == 0:
            return "-"
        return f"{after / before:.2f}"


def checkout_root() -> str:
    """The git checkout this engram runs from."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = _git(here, "rev-parse", "--show-toplevel")
    if found is None or not os.path.isdir(os.path.join(found, "engram_cli")):
        raise UsageProblem("--compare needs engram run from its git checkout")
    return found


def _git(directory: str, *args: str) -> str | None:
    done = subprocess.run(["git", "-C", directory, *args], check=False, capture_output=True,
                          text=True)
    return done.stdout.strip() if done.returncode == 0 else None


@contextlib.contextmanager
def worktree(root: str, ref: str) -> Iterator[Side]:
    """*ref* checked out in a temporary worktree, removed afterwards."""
    commit = _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if commit is None:
        raise UsageProblem(f"--compare: {ref} is not a commit of {root}")
    with tempfile.TemporaryDirectory(prefix="engram-compare-") as scratch:
        path = os.path.join(scratch, "tree")
        added = subprocess.run(["git", "-C", root, "worktree", "add", "--detach", "--quiet",
                                path, commit], check=False, capture_output=True,
                               text=True)
        if added.returncode != 0:
            raise UsageProblem(f"--compare: git worktree add failed: {added.stderr.strip()}")
        try:
            yield Side(commit[:10], path)
        finally:
            subprocess.run(["git", "-C", root, "worktree", "remove", "--force", path],
                           check=False, capture_output=True)


def workloads_of(side: Side) -> list[str]:
    listed = _bench(side, ["--list"])
    return [line.split("\t", 1)[0] for line in listed.splitlines() if line.strip()]


def run_side(side: Side, names: list[str], scale: float) -> dict[str, BenchResult]:
    args = ["--json", "--scale", str(scale)]
    for name in names:
        args += ["--only", name]
    out = _bench(side, args)
    results = [msgspec.json.decode(line, type=BenchResult) for line in out.splitlines()
               if line.startswith("{")]
    return {result.name: result for result in results}


def median_of(rounds: list[dict[str, BenchResult]]) -> dict[str, BenchResult]:
    """Per workload, the median of each figure over the rounds that ran it."""
    merged: dict[str, BenchResult] = {}
    for name in dict.fromkeys(name for results in rounds for name in results):
        runs = [results[name] for results in rounds if name in results]
        cpus = [run.daemon_cpu_ms for run in runs if run.daemon_cpu_ms is not None]
        merged[name] = msgspec.structs.replace(
            runs[0], p50_ms=statistics.median(run.p50_ms for run in runs),
            p99_ms=statistics.median(run.p99_ms for run in runs),
            max_ms=max(run.max_ms for run in runs),
            throughput=statistics.median(run.throughput for run in runs),
            daemon_cpu_ms=statistics.median(cpus) if cpus else None)
    return merged


def _bench(side: Side, args: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": side.source + os.pathsep
           + os.environ.get("PYTHONPATH", "")}
    # Each side runs from its source tree: without bytecode caches there, every CLI
    # start of the CLI rows would compile engram anew and measure that.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    done = subprocess.run([sys.executable, "-m", "engram_cli", "bench", *args], env=env,
                          stdout=subprocess.PIPE, text=True, cwd=side.source, check=False)
    if done.returncode != 0:
        raise UsageProblem(f"--compare: the bench on {side.label} failed "
                           f"(exit {done.returncode})")
    return done.stdout


def compare(ref: str, names: list[str] | None, scale: float, rounds: int = 3,
            progress: Callable[[str], None] = lambda _: None) -> tuple[Side, list[Pair]]:
    """Run the bench on *ref* and on this tree in turns; pair their medians by workload."""
    root = checkout_root()
    current = Side("this tree", root)
    olds: list[dict[str, BenchResult]] = []
    news: list[dict[str, BenchResult]] = []
    with worktree(root, ref) as before:
        known = set(workloads_of(before))
        wanted = names or workloads_of(current)
        shared = [name for name in wanted if name in known]
        if not shared:
            raise UsageProblem(f"--compare: {before.label} knows none of these workloads")
        for number in range(1, rounds + 1):
            progress(f"round {number} of {rounds}: {before.label}")
            olds.append(run_side(before, shared, scale))
            progress(f"round {number} of {rounds}: this tree")
            news.append(run_side(current, shared, scale))
    old, new = median_of(olds), median_of(news)
    order = list(dict.fromkeys([*new, *old]))
    return before, [Pair(name, old.get(name), new.get(name)) for name in order]
