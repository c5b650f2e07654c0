"""``engram lock acquire|release|renew|run`` (see :mod:`..hot`), and naming the
resources of a lease: plain names as given, paths resolved
(:mod:`engram_cli.client.paths`) and shown back relative to where the command runs."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from engram_cli.cli.context import CliContext


def UsageProblem(message: str) -> Exception:  # noqa: N802 (the class, imported when raised)
    from engram_cli.client.errors import UsageProblem as Problem

    return Problem(message)


def _wait(wait: float | None, no_wait: bool) -> float | None:
    """Seconds to wait in line (None: as long as it takes), like flock's -w and -n."""
    from engram_cli.cli.hot.checks import seconds

    seconds(wait, "--wait")
    if no_wait and wait not in (None, 0):
        raise UsageProblem("--no-wait and --wait exclude each other")
    return 0.0 if no_wait else wait


def names(resources: list[str] | None, paths: list[str] | None) -> list[str]:
    """The resources a command is about: plain names as given, paths resolved."""
    found = list(resources or [])
    if paths:
        from engram_cli.client import paths as resolve

        try:
            found += resolve.resources(paths)
        except ValueError as exc:
            raise UsageProblem(str(exc)) from None
    if not found:
        raise UsageProblem("name a resource (RES) or a path (--path PATH)")
    return found


def one_name(resource: str | None, path: str | None) -> str:
    if resource is not None and path is not None:
        raise UsageProblem("give RES or --path, not both")
    (name,) = names([resource] if resource is not None else [], [path] if path else [])
    return name


def shown(name: str) -> str:
    """A resource as a person here gives it (a path relative to here). Tables and fields
    escape what it holds once (a newline in a name is shown ``\\n``); a line of text
    gives it to :func:`one_line` itself."""
    if not name.startswith("file:"):
        return name
    from engram_cli.client import paths as resolve

    return resolve.display(name)


def acquire(cli: CliContext, *, resources: list[str] | None, path: list[str] | None,
            shared: bool, ttl: float | None, wait: float | None, no_wait: bool,
            pid: int | None, json: bool) -> int | None:
    """``engram lock acquire``."""
    from engram_cli.cli.hot import checks
    from engram_cli.cli.waiting import acquire_waiting

    out = cli.output(json)
    checks.wire_int(pid, "--pid")
    checks.ttl(ttl)
    waiting = _wait(wait, no_wait)  # (every check before connecting: nothing sent)
    wanted = names(resources, path)
    leases = acquire_waiting(cli.client(), wanted, ttl=ttl, wait=waiting, pid=pid,
                             shared=shared)
    for lease in leases:
        if out.json:
            out.json_line(lease)
        else:
            out.line(lease.lock_id)
    return None


def release(cli: CliContext, *, lock_id: str, resource: str | None, path: str | None,
            json: bool) -> int | None:
    """``engram lock release``."""
    resource = one_name(resource, path)
    client = cli.client()
    # The release names the lease by its lock id, which no other lease ever has: the
    # lease seen here under that id is the one the release ends, if it succeeds.
    state = client.get_lock(resource)
    lease = next((held for held in state.leases if held.lock_id == lock_id), state.lease)
    client.release_lock(lock_id, resource=resource)
    import datetime as dt

    from engram_cli.formats.text import format_duration, one_line

    out = cli.output(json)
    released = lease if lease is not None and lease.lock_id == lock_id else None
    if out.json:
        out.json_line(released if released is not None else {"resource": resource,
                                                                "lock_id": lock_id})
    elif released is not None:
        held = (dt.datetime.now(dt.UTC) - released.acquired_at).total_seconds()
        out.line(f"released {one_line(shown(resource))} (lock id {lock_id}, fencing token "
                 f"{released.fencing_token}, held {format_duration(held)})")
    else:
        out.line(f"released {one_line(shown(resource))} (lock id {lock_id})")
    return None


def renew(cli: CliContext, *, lock_id: str, resource: str | None, path: str | None,
          ttl: float | None, json: bool) -> int | None:
    """``engram lock renew``."""
    from engram_cli.cli.hot import checks
    from engram_cli.formats.text import timestamp

    checks.ttl(ttl)  # (before connecting: nothing is sent)
    lease = cli.client().renew_lock(lock_id, ttl, resource=one_name(resource, path))
    out = cli.output(json)
    if out.json:
        out.json_line(lease)
    else:
        out.line(timestamp(lease.expires_at))
    return None


def _run_options(words: list[str], ttl: float | None, wait: float | None, no_wait: bool,
                 shared: bool = False
                 ) -> tuple[list[str], float | None, float | None, bool]:
    """Resources (paths resolved), with ``--path``, ``--shared``, ``--ttl``, ``--wait``
    and ``--no-wait`` picked out from among them.

    Everything after the first resource reaches ``run`` as plain words (so that
    CMD's own options are never taken for ours); our options may still follow
    the resources, as in ``engram lock run RES --ttl 30 -- CMD``.
    """
    found: list[str] = []
    given: list[str] = []
    values = iter(words)
    for word in values:
        option, equals, inline = word.partition("=")
        if word[:2] in ("-w", "-p") and len(word) > 2 and word[2] != "=":
            option, equals, inline = word[:2], "=", word[2:]  # -w5, as Click reads it
        if option in ("--no-wait", "-n") and not equals:
            no_wait = True
        elif word == "--shared":
            shared = True
        elif option in ("--path", "-p"):
            text = inline if equals else next(values, None)
            if not text:
                raise UsageProblem(f"{option} expects a path")
            given.append(text)
        elif word == "--json":
            pass  # engram's own errors as JSON: main() saw it already
        elif option in ("--ttl", "--wait", "-w"):
            text = inline if equals else next(values, None)
            if text is None:  # (the last word before --)
                raise UsageProblem(f"{option} expects seconds, e.g. {option} 30")
            try:
                number = float(text)
            except ValueError:
                raise UsageProblem(f"{option} expects seconds, got {text!r}") from None
            if option == "--ttl":
                ttl = number
            elif number < 0:
                raise UsageProblem(f"{option} must not be negative")
            else:
                wait = number
        elif word.startswith("-"):
            raise UsageProblem(f"unknown option {word} for lock run")
        else:
            found.append(word)
    from engram_cli.cli.hot import checks

    return ((names(found, given) if found or given else []), checks.ttl(ttl),
            _wait(wait, no_wait), shared)


def _split_command(words: list[str]) -> tuple[list[str], list[str]]:
    """What comes before ``--`` and CMD after it. The option parser keeps the ``--`` among
    the words once a resource came before it; with only options before it (``lock run
    --path src/ -- make``) it took it, and CMD is the words the command line had after it."""
    argv = sys.argv[1:]
    if argv.count("--") > words.count("--"):  # the parser took the first one
        after = len(argv) - argv.index("--") - 1
        if not 0 < after <= len(words):
            raise UsageProblem(RUN_USAGE)
        return words[:len(words) - after], words[len(words) - after:]
    if "--" not in words:
        raise UsageProblem(RUN_USAGE)
    split = words.index("--")
    return words[:split], words[split + 1:]


RUN_USAGE = ("usage: engram lock run [RES...] [--path PATH]... [--shared] [--ttl S] "
             "[--wait S | --no-wait] -- CMD [ARGS...]")


def run_plan(*, resources: list[str], path: list[str] | None, shared: bool,
             ttl: float | None, wait: float | None, no_wait: bool
             ) -> tuple[list[str], list[str], float | None, float | None, bool]:
    """``engram lock run``'s command line: (resources, CMD, ttl, wait, shared)."""
    before, command = _split_command(resources)
    before = [*(word for given in path or [] for word in ("--path", given)),
              *(["--shared"] if shared else []), *before]
    found, ttl, wait, shared = _run_options(before, ttl, wait, no_wait)
    if not found or not command:
        raise UsageProblem(RUN_USAGE)
    return found, command, ttl, wait, shared


def run(cli: CliContext, *, resources: list[str], path: list[str] | None, shared: bool,
        ttl: float | None, wait: float | None, no_wait: bool) -> int:
    """``engram lock run``: CMD's exit status (or engram's own)."""
    found, command, ttl, wait, shared = run_plan(
        resources=resources, path=path, shared=shared, ttl=ttl, wait=wait, no_wait=no_wait)
    from engram_cli.cli.lockrun import run_holding  # threads and signals: only lock run

    return run_holding(cli.client(), found, command, ttl=ttl, wait=wait, shared=shared)
