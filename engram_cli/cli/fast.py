"""The ``engram`` program's start: the hot commands without the command-line framework.

The commands that scripts, hooks and agents run many times (:data:`.fastcommands.HOT`)
are parsed here from their option table (:mod:`.fasttable`, generated from the Typer
command tree) and run without importing Typer, Click or rich: their code is
:mod:`.hot`'s, which the Typer commands run too. The commonest of them (``ping``,
``unit create``, ``lock acquire``, ``hook pre-edit``, ``hook prompt`` in their plain
forms) first try the lean path (:mod:`.leanwire`: no msgspec, no protocol types), and
go on with the client library the moment they need anything more.

Anything else goes to the Typer app (:func:`engram_cli.cli.app.run`), before anything
was sent to the daemon: ``--help``, completion, a command line this parser does not
take exactly as Click would (an unknown option, a value that fails its type or range,
a missing required option: the app then says what is wrong, in its words), a terminal
view that needs rich, ``--version``, text that is not UTF-8.
"""

from __future__ import annotations

import os
import sys

from engram_cli.cli.exits import COMPLETE_VAR, end_process, wants_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

    from engram_cli.cli.context import CliContext
    from engram_cli.cli.leanwire import Connection, Reply

    Values = dict[str, Any]
    Handler = Callable[[Values, Values, Callable[[], CliContext]], int | None]

HOOK_TIMEOUT = 2.0
"""engram_cli.cli.hot.hook.HOOK_TIMEOUT (checked likewise)."""
DEFAULT_TIMEOUT = 30.0
"""engram_cli.client.blocking.DEFAULT_TIMEOUT (checked likewise)."""


def run() -> NoReturn:
    """The ``engram`` program."""
    status = main(sys.argv[1:])
    if status is None:
        from engram_cli.cli.app import run as typer_run

        typer_run()
    end_process(status)


def main(args: list[str]) -> int | None:
    """Run a hot command; its exit status, or None for the Typer app to run *args*."""
    if COMPLETE_VAR in os.environ or not _utf8(args):
        return None
    parsed = parse(args)
    if parsed is None:
        return None
    path, root, values = parsed
    handler = HANDLERS[path]
    as_json = wants_json(args)
    made: list[CliContext] = []

    def context() -> CliContext:
        if not made:
            made.append(_context(root))
        return made[0]

    try:
        status = handler(root, values, context)
        return 0 if status is None else status  # (None from main() is the Typer app's)
    except _ToTyper:
        return None
    except _FailedOpen:
        return 0
    except Exception as exc:  # told as the Typer app tells it
        from engram_cli.cli.exits import failure, internal_error

        told = failure(exc, as_json, " ".join(("engram", *path)))
        if told is not None:
            return told
        if os.environ.get("ENGRAM_DEBUG") == "1":
            raise
        return internal_error(exc, as_json)
    except KeyboardInterrupt:
        return 130
    finally:
        if made:
            made[0].close()


def _utf8(args: list[str]) -> bool:
    try:
        for arg in args:
            arg.encode("utf-8")
        for name in ("ENGRAM_AGENT", "ENGRAM_TOKEN"):
            os.environ.get(name, "").encode("utf-8")
    except UnicodeEncodeError:
        return False  # the app says which (or takes a file name of any bytes)
    return True


# -- parsing ------------------------------------------------------------------------

def parse(args: list[str]) -> tuple[tuple[str, ...], Values, Values] | None:
    """(command path, the root's values, the command's values), taken as Click takes
    them; None for anything this parser is not sure of."""
    from engram_cli.cli.fasttable import COMMANDS, ROOT

    at = 0
    root: Values = {}
    while at < len(args) and args[at].startswith("-"):
        taken = _option(ROOT, args, at, root)
        if taken is None:
            return None
        at = taken
    path: tuple[str, ...] = ()
    while at < len(args) and (*path, args[at]) in _prefixes(COMMANDS):
        path = (*path, args[at])
        at += 1
        if path in COMMANDS:
            break
    if path not in COMMANDS:
        return None
    root_values = _finish(ROOT, root)
    if root_values is None or root_values["version"]:
        return None
    interspersed, params = COMMANDS[path]
    values: Values = {}
    positional: list[str] = []
    while at < len(args):
        arg = args[at]
        if arg == "--":
            positional += args[at + 1:]
            break
        if arg.startswith("-") and len(arg) > 1:
            taken = _option(params, args, at, values)
            if taken is None:
                return None
            at = taken
            continue
        if not interspersed:
            positional += args[at:]
            break
        positional.append(arg)
        at += 1
    arguments = [param for param in params if param[1] == "argument"]
    for param in arguments:
        name, nargs, required = param[0], param[5], param[11]
        if nargs == -1:
            values[name] = positional
            positional = []
            if required and not values[name]:
                return None
        elif positional:
            values[name] = positional.pop(0)
        elif required:
            return None
    if positional:
        return None
    finished = _finish(tuple(p for p in params if p[1] == "option"), values)
    if finished is None:
        return None
    for param in arguments:
        finished[param[0]] = values.get(param[0], param[10])
        if param[5] == -1 and not finished[param[0]] and not param[11]:
            finished[param[0]] = None
    return path, root_values, finished


def _prefixes(commands: dict[tuple[str, ...], Any]) -> set[tuple[str, ...]]:
    return {path[:end] for path in commands for end in range(1, len(path) + 1)}


def _option(params: tuple[tuple[Any, ...], ...], args: list[str], at: int,
            values: Values) -> int | None:
    """Take the option at ``args[at]`` into *values*; the index after it, or None."""
    arg = args[at]
    explicit: str | None = None
    if arg.startswith("--"):
        name, equals, rest = arg.partition("=")
        if equals:
            explicit = rest
    else:  # -X, or -Xvalue (Click takes -X=v as the value "=v")
        name = arg[:2]
        if len(arg) > 2:
            explicit = arg[2:]
    param = next((p for p in params if p[1] == "option" and name in p[2]), None)
    if param is None:
        return None
    if param[3]:  # a flag
        if explicit is not None:
            return None  # -nX (several short flags) or --flag=value: Click's to judge
        values[param[0]] = True
        return at + 1
    if explicit is None:
        if at + 1 >= len(args):
            return None
        explicit = args[at + 1]
        at += 1
    if param[4]:
        values.setdefault(param[0], []).append(explicit)
    else:
        values[param[0]] = explicit
    return at + 1


def _finish(params: tuple[tuple[Any, ...], ...], given: Values) -> Values | None:
    """Every option's value: given, else from its variable, else its default; converted
    and range-checked as Click does. None where Click would refuse."""
    values: Values = {}
    for name, _, _, flag, multiple, _, kind, low, high, envvar, default, required in params:
        value = given.get(name)
        if value is None and envvar and os.environ.get(envvar):
            value = os.environ[envvar]
            if multiple:
                return None  # (none of ours: a list from a variable is Click's to split)
        if value is None:
            if required:
                return None
            values[name] = default
            continue
        if flag:
            values[name] = value
            continue
        try:
            converted = [_convert(item, kind, low, high) for item in value] if multiple \
                else _convert(value, kind, low, high)
        except ValueError:
            return None
        values[name] = converted
    return values


def _convert(text: str, kind: str, low: float | None, high: float | None) -> Any:
    if kind == "str":
        return text
    number = int(text) if kind == "int" else float(text)
    if (low is not None and number < low) or (high is not None and number > high):
        raise ValueError(text)
    return number


# -- the hot commands -------------------------------------------------------------


def _context(root: Values) -> CliContext:
    from engram_cli.cli.context import CliContext

    return CliContext(socket=root["socket"], agent=root["agent"], json=root["json"],
                      data_dir=root["data_dir"])


def _terminal() -> bool:
    return sys.stdout.isatty()


def _lean(root: Values, agent: str | None, timeout: float | None,
          hook_runner: str | None = None) -> Connection | None:
    """A greeted lean connection (see :mod:`.leanwire`), or None: the library is to
    connect (a daemon to start, an error to tell). The daemon's refusal (too many
    connections, another uid) or silence is the command's error, or, for a hook (its
    *hook_runner*), a hook that fails open."""
    from engram_cli.cli import leanwire

    path = leanwire.socket_path(root["socket"], os.environ)
    if path is None:
        return None
    try:
        connection = leanwire.Connection(
            path, agent_id=leanwire.agent_name(agent),
            token=os.environ.get("ENGRAM_TOKEN") or None, timeout=timeout)
    except leanwire.Unreached:
        return None
    except Exception as exc:
        from engram_cli.client.errors import EngramError

        if hook_runner is None or not isinstance(exc, EngramError):
            raise
        _nothing(hook_runner)
        raise _FailedOpen from None
    for said in ("stale", "notice"):
        if connection.welcome.get(said):
            from engram_cli.cli.output import note

            note(f"warning: {connection.welcome[said]}")
    return connection


def _plain(text: str) -> str:
    """formats.text.printable, without importing it for text that has nothing to escape."""
    if text.isascii() and text.isprintable():
        return text
    from engram_cli.formats.text import printable

    return printable(text)


def _ping(root: Values, values: Values, context: Callable[[], CliContext]) -> int | None:
    if not (root["json"] or values["json"]):
        import time

        from engram_cli.cli import leanwire

        connection = _lean(root, root["agent"], DEFAULT_TIMEOUT)
        if connection is not None:
            rtts = []
            count = values["count"]
            pid = connection.greeting.read(lambda welcome: welcome["pid"])
            for _ in range(count):
                started = time.perf_counter()
                pong = connection.request({"msg": "ping", "id": 0})
                rtt_ms = (time.perf_counter() - started) * 1000
                rtts.append(rtt_ms)
                version = pong.read(lambda fields: fields["daemon_version"])
                leanwire.write(_plain(f"pong from engramd {version} (pid {pid}) in "
                                      f"{rtt_ms:.3f} ms") + "\n")
            if count > 1:
                leanwire.write(_plain(f"{count} pings, rtt min/avg/max = {min(rtts):.3f}/"
                                      f"{sum(rtts) / count:.3f}/{max(rtts):.3f} ms") + "\n")
            connection.close()
            return 0
    from engram_cli.cli.hot import info

    return info.ping(context(), **values)


def _unit_create(root: Values, values: Values,
                 context: Callable[[], CliContext]) -> int | None:
    from engram_cli.cli.hot import unit

    if root["json"] or values["json"] or values["relationship"]:
        return unit.create(context(), **values)
    # In the order the library's path takes them: the payload, the connection, then the
    # context, the metadata and the fence (so that the same error comes first).
    data = unit.payload_of(values["payload"], values["file"], values["empty"])
    connection = _lean(root, root["agent"], DEFAULT_TIMEOUT)
    if connection is None:
        return unit.create(context(), **values, data=data)
    fence = None
    draft = {"context_id": unit.require_context(values["context_id"]), "type": values["type_"],
             "payload": data, "meta": unit.parse_pairs(values["meta"]), "relationships": [],
             "idempotency_key": values["idempotency_key"],
             "fence": (fence := unit.parse_fence(values["fence"])) and
             {"resource": fence[0], "token": fence[1]}}
    created = connection.request({"msg": "unit.create", "id": 0, "units": [draft]})
    connection.close()
    from engram_cli.cli import leanwire

    leanwire.write(created.read(lambda fields: _plain(fields["units"][0]["id"])) + "\n")
    return 0


def _lock_acquire(root: Values, values: Values,
                  context: Callable[[], CliContext]) -> int | None:
    from engram_cli.cli.hot import lock

    if root["json"] or values["json"] or values["path"] or not values["resources"]:
        return lock.acquire(context(), **values)
    from engram_cli.cli.hot import checks

    checks.wire_int(values["pid"], "--pid")  # (before connecting: nothing is sent, as the library)
    checks.ttl(values["ttl"])
    wait = lock._wait(values["wait"], values["no_wait"])
    connection = _lean(root, root["agent"], DEFAULT_TIMEOUT)
    if connection is None:
        return lock.acquire(context(), **values)
    import time

    request: dict[str, Any] = {"msg": "lock.acquire", "id": 0,
                               "resources": values["resources"]}
    # AcquireLock omits its defaults (as msgspec writes it): ttl None, pid None, shared
    # False; the wait the library always gives (the int 0 to try once, which msgspec
    # does not take for the default 0.0).
    if values["ttl"] is not None:
        request["ttl"] = values["ttl"]
    request["wait"] = 0 if wait == 0 else wait
    if values["pid"] is not None:
        request["pid"] = values["pid"]
    if values["shared"]:
        request["shared"] = True
    started = time.monotonic()
    # As the library waits for the answer: its timeout, and the wait on top of it.
    timeout = -1.0 if wait == 0 else None if wait is None else DEFAULT_TIMEOUT + wait
    try:
        granted = connection.request(request, timeout=timeout)
    except Exception as exc:
        from engram_cli.cli.waiting import acquire_waiting, passing

        if wait == 0 or not isinstance(exc, passing()):
            raise
        connection.close()  # the daemon went away: wait on for it as the library does
        cli = context()
        client = cli.client(autostart=False, connected=False)  # (the daemon is away now)
        for lease in acquire_waiting(client, values["resources"], ttl=values["ttl"],
                                     wait=wait, pid=values["pid"], shared=values["shared"],
                                     failed=exc, started=started):
            cli.output().line(lease.lock_id)
        return 0
    connection.close()
    from engram_cli.cli import leanwire

    leanwire.write(granted.read(lambda fields: "".join(_plain(lease["lock_id"]) + "\n"
                                                      for lease in fields["leases"])))
    return 0


def _lock_run(root: Values, values: Values, context: Callable[[], CliContext]) -> int | None:
    from engram_cli.cli.hot import lock

    options = {name: value for name, value in values.items() if name != "json"}
    # In the order the library's path takes them: the command line, the connection,
    # then CMD (whether it can be run) and the leases.
    found, command, ttl, wait, shared = lock.run_plan(**options)
    connection = _lean(root, root["agent"], DEFAULT_TIMEOUT)
    if connection is None:
        return lock.run(context(), **options)
    from engram_cli.cli import leanwire
    from engram_cli.cli.leanlease import LeanLeaseClient
    from engram_cli.cli.lockrun import run_holding  # threads and signals: only lock run

    client = LeanLeaseClient(
        connection, agent_id=leanwire.agent_name(root["agent"]),
        library=lambda: context().client(connected=False))
    return run_holding(client, found, command, ttl=ttl, wait=wait, shared=shared)


def _hook_pre_edit(root: Values, values: Values,
                   context: Callable[[], CliContext]) -> int | None:
    from engram_cli.cli import leanwire
    from engram_cli.doors.hookinput import edited_paths, working_dir

    runner = values["runner"]
    raw = None if sys.stdin.isatty() else _read_stdin()
    try:
        given = {} if raw is None else leanwire.json_value(raw or b"{}")
        hook_input = given if isinstance(given, dict) else {}
    except ValueError:  # (UnicodeDecodeError too) msgspec's and the library's to read
        from engram_cli.cli.hot import hook

        return hook.pre_edit(context(), **values, given=hook.hook_input(raw))
    cwd = working_dir(hook_input, os.getcwd())
    paths = edited_paths(hook_input)
    if not paths:
        _nothing(runner)
        return 0
    from engram_cli.client.session import agent_name, session_pid

    session = session_pid()
    agent = agent_name(root["agent"], session, runner)
    connection = _lean(root, agent, HOOK_TIMEOUT, hook_runner=runner)
    if connection is None:
        from engram_cli.cli.hot import hook

        return hook.pre_edit(context(), **values, given=hook_input)
    page = _asked_failing_open(connection, runner,
                               {"msg": "lock.list", "id": 0, "agent": None, "prefix": ""})
    if page is None:
        return 0
    try:
        in_the_way = page.read(lambda fields: _may_stand_in_the_way(fields["locks"], agent,
                                                                   session))
    except Exception as exc:
        from engram_cli.client.errors import EngramError

        if not isinstance(exc, EngramError):
            raise
        _nothing(runner)  # an answer it cannot read: a hook fails open, as the library's
        return 0
    if not in_the_way:
        _nothing(runner)  # no lease anywhere (the commonest case), or none that matters
        return 0
    from engram_cli.cli.hot import hook

    hook.guard_answer(page.decoded().locks, agent, session, paths, cwd, runner,
                      values["guard"])
    return 0


def _may_stand_in_the_way(states: list[Values], agent: str, session: int) -> bool:
    """Whether a lease of *states* (``lock.page``'s, as plain data) might stand in the way
    of an edit: a lease on a file (a ``file:`` name: a file, a directory, a glob) held
    in another session (the guard's own rule: :func:`engram_cli.client.session.own`).
    Any other lease never does (an edit is always of a ``file:`` name, and a plain
    name covers only itself); those that might are judged by the guard itself
    (:func:`engram_cli.cli.hot.hook.guard_answer`, which asks git where the file is)."""
    from engram_cli.cli.leanwire import Fields
    from engram_cli.client.session import own

    for state in states:
        for lease in state["leases"] or ([state["lease"]] if state["lease"] else []):
            if lease["resource"].startswith("file:") and not own(Fields(lease), agent,
                                                                     session):
                return True
    return False


def _asked_failing_open(connection: Connection, runner: str, message: Values
                        ) -> Reply | None:
    """A hook's one question to the daemon; None when it could not be answered, and the
    hook said nothing (a hook fails open, as the library's path does)."""
    try:
        return connection.request(message)
    except Exception as exc:
        from engram_cli.client.errors import EngramError

        if not isinstance(exc, EngramError | OSError):
            raise
        _nothing(runner)
        return None
    finally:
        connection.close()


def _hook_prompt(root: Values, values: Values,
                 context: Callable[[], CliContext]) -> int | None:
    runner = values["runner"]
    if not sys.stdin.isatty():
        _read_stdin()
    from engram_cli.client.session import agent_name, session_pid

    agent = agent_name(root["agent"], session_pid(), runner)
    connection = _lean(root, agent, HOOK_TIMEOUT, hook_runner=runner)
    if connection is None:
        from engram_cli.cli.hot import hook

        return hook.prompt(context(), runner=runner, read=False)
    counted = _asked_failing_open(connection, runner, {"msg": "inbox.count", "id": 0})
    if counted is None:
        return 0
    try:
        unread = counted.read(lambda fields: fields["unread"] + 0)  # (an int)
    except Exception as exc:
        from engram_cli.client.errors import EngramError

        if not isinstance(exc, EngramError):
            raise
        _nothing(runner)  # an answer it cannot read: a hook fails open, as the library's
        return 0
    if not unread:
        _nothing(runner)
        return 0
    from engram_cli.cli.hot import hook

    hook.prompt_answer(unread, runner)
    return 0


def _read_stdin() -> bytes | None:
    try:
        return sys.stdin.buffer.read()
    except OSError:
        return None


def _nothing(runner: str) -> None:
    """hot.hook._nothing: no output, but ``{}`` to Cursor."""
    if runner == "cursor":
        sys.stdout.write("{}\n")
        sys.stdout.flush()


def _library(module: str, function: str, *, terminal_ok: bool = True) -> Handler:
    """A hot command run by :mod:`.hot`'s code with the client library (None: on a
    terminal without --json, where its view needs rich, the Typer app runs it)."""

    def handler(root: Values, values: Values,
                context: Callable[[], CliContext]) -> int | None:
        import importlib

        if not terminal_ok and _terminal() and not (root["json"] or values.get("json")):
            raise _ToTyper
        code = getattr(importlib.import_module(f"engram_cli.cli.hot.{module}"), function)
        status: int | None = code(context(), **values)
        return status

    return handler


class _ToTyper(Exception):
    """Leave this command line to the Typer app (nothing was done yet)."""


class _FailedOpen(Exception):
    """A hook could not ask the daemon and let the harness go on (exit 0, said nothing)."""


HANDLERS: dict[tuple[str, ...], Handler] = {
    ("ping",): _ping,
    ("send",): _library("mail", "send"),
    ("inbox",): _library("mail", "inbox", terminal_ok=False),
    ("wait",): _library("watch", "wait", terminal_ok=False),
    ("unit", "create"): _unit_create,
    ("lock", "acquire"): _lock_acquire,
    ("lock", "release"): _library("lock", "release"),
    ("lock", "renew"): _library("lock", "renew"),
    ("lock", "run"): _lock_run,
    ("hook", "pre-edit"): _hook_pre_edit,
    ("hook", "prompt"): _hook_prompt,
    ("hook", "session-start"): _library("hook", "session_start"),
    ("hook", "stop"): _library("hook", "stop"),
}
