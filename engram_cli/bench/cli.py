"""Rows of the command line: whole ``engram`` processes, as a script or a hook runs them,
and the floor of starting Python with what engram imports."""

from __future__ import annotations

import os
import shutil
import sys

import msgspec

from engram_cli.bench.harness import BenchTarget, Measurement, timed_processes


def engram_command() -> list[str]:
    """How to run this installation's ``engram`` as a process (the bench and the demo)."""
    script = os.path.join(os.path.dirname(sys.executable), "engram")
    if os.path.exists(script):
        return [script]
    found = shutil.which("engram")
    return [found] if found else [sys.executable, "-m", "engram_cli"]


def bench_cli_ping(target: BenchTarget) -> Measurement:
    """Wall time of a whole `engram ping` process."""
    measurement = timed_processes(target, target.count(30), [*engram_command(), "ping"])
    measurement.note = _install_kind()
    return measurement


def bench_cli_unit_create(target: BenchTarget) -> Measurement:
    """Wall time of a whole `engram unit create -c CTX -p TEXT` process."""
    measurement = timed_processes(target, target.count(30), [
        *engram_command(), "unit", "create", "-c", "bench-cli", "-p", "a note from the shell"])
    measurement.note = _install_kind()
    return measurement


def bench_cli_hook_guard(target: BenchTarget) -> Measurement:
    """Wall time of a whole `engram hook pre-edit` (the lease guard before an agent's file
    edit) on a free file, fed a harness's PreToolUse input."""
    hook_input = {"hook_event_name": "PreToolUse", "tool_name": "Edit", "cwd": "/",
                  "tool_input": {"file_path": "/nowhere/free.py", "old_string": "a",
                                 "new_string": "b"}}
    measurement = timed_processes(
        target, target.count(30), [*engram_command(), "hook", "pre-edit", "--guard", "block"],
        stdin=msgspec.json.encode(hook_input))
    measurement.note = _install_kind()
    return measurement


def bench_cli_hook_prompt(target: BenchTarget) -> Measurement:
    """Wall time of a whole `engram hook prompt` (run at every prompt an agent is given)
    with no message unread, fed a harness's UserPromptSubmit input."""
    hook_input = {"hook_event_name": "UserPromptSubmit", "prompt": "go on", "cwd": "/"}
    measurement = timed_processes(
        target, target.count(30), [*engram_command(), "hook", "prompt"],
        stdin=msgspec.json.encode(hook_input))
    measurement.note = _install_kind()
    return measurement


def bench_cli_lock_acquire(target: BenchTarget) -> Measurement:
    """Wall time of a whole `engram lock acquire RES --shared` process (shared, so that
    every run is granted at once beside the leases of the runs before it)."""
    measurement = timed_processes(target, target.count(30), [
        *engram_command(), "lock", "acquire", "bench:cli-acquire", "--shared", "--ttl", "60"])
    measurement.note = _install_kind()
    return measurement


def _install_kind() -> str:
    """Whether engram runs from a regular install; an editable one adds its import hook's
    cost to every start, which the floor does not pay."""
    from importlib import metadata

    try:
        direct_url = metadata.distribution("engram-journal").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return "not installed (python -m engram_cli)"
    editable = bool(direct_url and msgspec.json.decode(direct_url).get(
        "dir_info", {}).get("editable"))
    return ("editable install: each start pays its import hook; `make bench` measures a "
            "regular one" if editable else "regular install")


def bench_floor_python(target: BenchTarget) -> Measurement:
    """The floor under any Python program: start this venv's Python and do nothing."""
    measurement = timed_processes(target, target.count(30), [sys.executable, "-c", "pass"])
    measurement.note = "floor: python -c pass"
    return measurement


def bench_floor_import(target: BenchTarget) -> Measurement:
    """The floor under any Python CLI of ours: start Python and import typer and msgspec."""
    measurement = timed_processes(
        target, target.count(30), [sys.executable, "-c", "import typer, msgspec"])
    measurement.note = "floor: python -c 'import typer, msgspec'"
    return measurement
