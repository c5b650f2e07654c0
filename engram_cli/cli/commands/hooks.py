"""``engram hooks install|uninstall|status`` (and ``run``, which the hooks call)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from engram_cli.cli import completion, context
from engram_cli.cli.options import JsonOption
from engram_cli.cli.output import note
from engram_cli.client.errors import EngramError, UsageProblem
from engram_cli.client.gitinfo import GitError, git, toplevel
from engram_cli.doors import githooks

app = typer.Typer(help="Record git commits, checkouts, merges and rewrites as work units.",
                  no_args_is_help=True, add_completion=False)

RepoOption = Annotated[str, typer.Option("--repo", metavar="PATH",
                                         help="The repository (default: here).")]


def _repo(path: str) -> str:
    try:
        return toplevel(path)
    except (GitError, OSError) as exc:
        raise EngramError(f"not a git repository: {path} ({exc})") from None


@app.command()
def install(
    ctx: typer.Context,
    repo: RepoOption = ".",
    context_id: Annotated[str | None, typer.Option(
        "--context", metavar="CTX", autocompletion=completion.contexts,
        help="Record into this context (default: git:<remote URL or path>/<branch>).")
    ] = None,
    guard: Annotated[str, typer.Option(
        "--guard", metavar="off|warn|block",
        help="Before a commit, warn about or refuse staged files under another's lease.")
    ] = "off",
    json: JsonOption = False,
) -> None:
    """Install the hooks; any hook already there keeps running first.

    Commits, merges, rewrites and branch switches become units in the context
    git:REMOTE-OR-PATH/BRANCH (see engram hooks status).

    Examples:

      engram hooks install
      engram hooks install --guard block
      engram hooks install --repo ~/src/proj --context proj-work
    """
    if guard not in ("off", "warn", "block"):
        raise UsageProblem("--guard takes off, warn or block")
    top = _repo(repo)
    names = githooks.install(top, context=context_id, guard=guard)
    out = context.get(ctx).output(json)
    if out.json:
        out.json_line({"repo": top, "context": githooks.context_for(top), "guard": guard,
                       "installed": names})
    else:
        out.line("installed: " + " ".join(names))


@app.command()
def uninstall(ctx: typer.Context, repo: RepoOption = ".", json: JsonOption = False) -> None:
    """Remove the hooks and restore exactly what was there before."""
    top = _repo(repo)
    removed = githooks.uninstall(top)
    out = context.get(ctx).output(json)
    if out.json:
        out.json_line({"repo": top, "removed": removed})
    else:
        out.line("removed: " + (" ".join(removed) or "nothing"))


@app.command()
def status(ctx: typer.Context, repo: RepoOption = ".", json: JsonOption = False) -> None:
    """Which hooks are installed, and which kept an earlier hook."""
    top = _repo(repo)
    out = context.get(ctx).output(json)
    states = githooks.status(top)
    if out.json:
        out.json_line({"repo": top, "context": githooks.context_for(top),
                       "hooks": [s.__dict__ for s in states]})
        return
    out.table("hooks", ["hook", "installed", "kept original"],
              ([s.name, "yes" if s.installed else "no", "yes" if s.original else "no"]
               for s in states), header=False)


@app.command(hidden=True, context_settings={"allow_extra_args": True,
                                            "ignore_unknown_options": True})
def run(ctx: typer.Context, hook: str, args: Annotated[list[str] | None, typer.Argument()] = None
        ) -> None:
    """Called by the installed hooks: record the event (or check the guard)."""
    cli = context.get(ctx)
    repo = _repo(".")
    if hook == "pre-commit":
        mode = git(repo, "config", "--get", "engram.guard", check=False) or "off"
        problems = githooks.guard(repo, mode, cli.socket, cli.env)
        for problem in problems:
            note(("refusing the commit: " if mode == "block" else "warning: ") + problem)
        if problems and mode == "block":
            raise typer.Exit(1)
        return
    stdin = "" if sys.stdin.isatty() else sys.stdin.read()
    githooks.record(repo, hook, list(args or []), stdin, cli.socket, cli.env)
