"""The documents must say what the code does: generated files current, specs complete."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from engram_cli.cli.app import app
from engram_cli.client.errors import ExitCode
from engramd.config import SETTINGS
from engramd.protocol import ErrorCode
from tools.docgen import completion_scripts, man_pages, subcommands

ROOT = Path(__file__).parent.parent


def command_paths() -> list[str]:
    paths = []

    def walk(command: Any, path: list[str], ctx: typer.Context) -> None:
        for name in sorted(subcommands(command, ctx)):
            sub = command.get_command(ctx, name)
            paths.append(" ".join([*path, name]))
            walk(sub, [*path, name], typer.Context(sub, info_name=name, parent=ctx))

    root = typer.main.get_command(app)
    walk(root, [], typer.Context(root, info_name="engram"))
    return paths


@pytest.mark.parametrize("name, text", sorted(completion_scripts().items()))
def test_checked_in_completions_are_current(name: str, text: str) -> None:
    assert (ROOT / "completions" / name).read_text() == text, "run: make completions"


@pytest.mark.parametrize("name, text", sorted(man_pages().items()))
def test_checked_in_man_pages_are_current(name: str, text: str) -> None:
    assert (ROOT / "man" / name).read_text() == text, "run: make man"


def test_every_command_is_in_the_man_page() -> None:
    page = (ROOT / "man" / "engram.1").read_text().replace("\\-", "-")
    for path in command_paths():
        assert f".SS engram {path}" in page, path


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
@pytest.mark.parametrize("page", ["engram.1", "engramd.8"])
@pytest.mark.slow
def test_man_pages_render_without_warnings(page: str) -> None:
    result = subprocess.run(["man", "--warnings", "-l", "-E", "UTF-8", str(ROOT / "man" / page)],
                            capture_output=True, text=True, timeout=30, check=False,
                            env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    assert result.returncode == 0
    assert result.stderr == ""
    assert "NAME" in result.stdout


def test_specs_document_every_error_code_exit_code_and_setting() -> None:
    specs = (ROOT / "SPECS.md").read_text()
    for code in ErrorCode:
        assert f"`{code.value}`" in specs, code
    for exit_code in ExitCode:
        assert f"| {exit_code.value} |" in specs, exit_code
    for setting in SETTINGS:
        assert f"`{setting.key}`" in specs, setting.key


def test_specs_list_every_command() -> None:
    specs = (ROOT / "SPECS.md").read_text()
    for path in command_paths():
        assert f"engram {path}" in specs, path


def test_readme_starts_with_the_two_commands() -> None:
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:25])
    assert "make demo" in head and "make test" in head


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("path", ["unit create", "watch", "wait", "lock run", "search",
                                  "hooks install"])
def test_commands_used_from_scripts_show_examples(path: str) -> None:
    """In the help as printed (indented, one per line) and in the man page alike."""
    shown = subprocess.run([sys.executable, "-m", "engram_cli", *path.split(), "--help"],
                           capture_output=True, text=True, timeout=60, check=True,
                           env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}).stdout
    shown = "\n".join(line.rstrip() for line in shown.splitlines())  # rich pads lines
    examples = shown.split("Examples:", 1)[1].split("\n\n", 2)[1].splitlines()
    assert examples and all(line.strip().startswith(f"engram {path}") or "| engram" in line
                            or "$(engram" in line for line in examples), examples
    assert all(line.startswith("   ") for line in examples), examples  # kept indented
    page = (ROOT / "man" / "engram.1").read_text().replace("\\-", "-")
    section = page.split(f".SS engram {path} ", 1)[1].split(".SS ", 1)[0]
    assert "Examples:\n.RS\n.nf\n" in section


def test_every_command_takes_json() -> None:
    root = typer.main.get_command(app)
    without = []

    def walk(command: Any, path: list[str], ctx: typer.Context) -> None:
        names = subcommands(command, ctx)
        if not names:
            options = {opt for param in command.params for opt in getattr(param, "opts", [])}
            if "--json" not in options:
                without.append(" ".join(path))
        for name in names:
            sub = command.get_command(ctx, name)
            walk(sub, [*path, name], typer.Context(sub, info_name=name, parent=ctx))

    walk(root, [], typer.Context(root, info_name="engram"))
    # Help text; what installed git hooks call; what harnesses call (answered in their JSON).
    assert sorted(without) == ["help", "hook pre-edit", "hook prompt", "hook session-start",
                               "hook stop", "hooks run"]
