"""The fast start of the hot commands (engram_cli.cli.fast): its option table is the Typer
tree's, its lean wire is msgspec's, and run on random command lines against a real
daemon it sends the same requests and prints the same as the Typer app."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engram_cli.cli import fast, leanwire
from engram_cli.client import Client
from engramd.protocol import PROTOCOL_VERSION, AnyClientMessage, resolve_socket_path
from engramd.protocol.framing import DEFAULT_MAX_FRAME, FrameDecoder
from tests.conftest import WAIT, ThreadedDaemon, make_config, start_threaded, wait_until

ROOT = Path(__file__).parent.parent.parent


def test_the_option_table_is_generated_from_the_typer_tree() -> None:
    from tools.docgen import FAST_FILE, fast_table

    assert (ROOT / FAST_FILE).read_text() == fast_table(), "run make fasttable"


def test_the_fast_start_agrees_with_what_it_copies() -> None:
    from engram_cli.cli.hot import checks
    from engram_cli.cli.hot.hook import HOOK_TIMEOUT
    from engram_cli.client.blocking import DEFAULT_TIMEOUT
    from engramd.protocol.bounds import MIN_TTL

    assert (fast.HOOK_TIMEOUT, fast.DEFAULT_TIMEOUT) == (HOOK_TIMEOUT, DEFAULT_TIMEOUT)
    assert checks.MIN_TTL == MIN_TTL
    assert leanwire.PROTOCOL_VERSION == PROTOCOL_VERSION
    assert leanwire.MAX_FRAME == DEFAULT_MAX_FRAME


@given(st.fixed_dictionaries({}, optional={
    "ENGRAM_SOCKET": st.sampled_from(["", "s.sock", "/tmp/x/y.sock", "a" * 120]),
    "XDG_RUNTIME_DIR": st.sampled_from(["", "/run/user/5", "rel", "b" * 110])}),
       st.sampled_from([None, "", "/tmp/given.sock", "c" * 200]))
def test_the_lean_socket_path_is_the_protocols(env: dict[str, str], explicit: str | None
                                               ) -> None:
    try:
        expected: str | None = resolve_socket_path(explicit, env, os.getuid())
    except ValueError:
        expected = None
    assert leanwire.socket_path(explicit, env) == expected


VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(st.text(), inner, max_size=20),
    max_leaves=50)


@given(VALUES)
def test_lean_messagepack_is_msgspecs(value: object) -> None:
    packed = bytearray()
    leanwire.pack(value, packed)
    assert bytes(packed) == msgspec.msgpack.encode(value)
    assert leanwire.unpack(bytes(packed)) == value


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.text(), inner, max_size=8),
    max_leaves=30)


@given(st.one_of(JSON.map(msgspec.json.encode), st.binary(max_size=40),
                 st.sampled_from([b'"\\ud800"', b"1E400", b"NaN", b" {} ", b"[1,]", b"{}x"])))
def test_lean_json_reads_what_msgspec_reads_or_declines(data: bytes) -> None:
    try:
        lean = leanwire.json_value(data)
    except ValueError:
        return  # declined: the library's path reads it
    assert lean == msgspec.json.decode(data)


# -- both paths against a real daemon ---------------------------------------------------


class Recorder:
    """A socket in front of the daemon's that keeps every frame clients send."""

    def __init__(self, path: str, daemon: str) -> None:
        self.path, self.daemon = path, daemon
        self.frames: list[bytes] = []
        self.lock = threading.Condition()
        self.reading = 0
        """Clients' connections still being read (a client that has exited may have
        frames not yet read: take() waits for them)."""
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.daemon)
            with self.lock:
                self.reading += 1
            threading.Thread(target=self._pipe, args=(client, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False),
                             daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        frames = FrameDecoder()
        try:
            while data := source.recv(65536):
                if record:
                    frames.receive_data(data)
                    while (body := frames.next_frame()) is not None:
                        with self.lock:
                            self.frames.append(body)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            if record:
                with self.lock:
                    self.reading -= 1
                    self.lock.notify_all()

    def take(self) -> list[object]:
        """The frames sent since the last take, once every client that connected has
        been read to its end (the callers' processes have exited by then)."""
        with self.lock:
            self.lock.wait_for(lambda: self.reading == 0, timeout=WAIT)
            frames, self.frames = self.frames, []
        decoder = msgspec.msgpack.Decoder(AnyClientMessage)
        return [_comparable(decoder.decode(body)) for body in frames]

    def close(self) -> None:
        self.listener.close()


def _comparable(message: msgspec.Struct) -> object:
    data = msgspec.to_builtins(message)
    assert isinstance(data, dict)
    data.pop("id", None)
    if isinstance(data.get("wait"), float):  # the library counts a wait down as it goes
        data["wait"] = round(data["wait"])
    if data.get("pgid") is not None:  # lock run's: its own process, its CMD's group
        data["pid"] = data["pgid"] = "*"
    if "lock_id" in data:
        data["lock_id"] = "*"
    return data


@pytest.fixture
def recorder(threaded_daemon: ThreadedDaemon, scratch: str) -> Iterator[Recorder]:
    assert threaded_daemon.server is not None
    recording = Recorder(os.path.join(scratch, "rec.sock"),
                         threaded_daemon.config.socket)
    yield recording
    recording.close()


TYPER = "from engram_cli.cli.app import run; run()"
VOLATILE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|"
                      r"\b[0-9a-f]{32}\b|\d+\.\d+|pid \d+|\(\d+\.\d+s left\)|"
                      r"\d{4}-\d\d-\d\dT[\d:.]+(Z|\+00:00)|(?<=fencing_token\":)\d+|(?<=conn:)\d+|"
                      r"(?<=\"seq\":)\d+")


def _run(code: list[str], args: list[str], env: dict[str, str], stdin: bytes
         ) -> tuple[str, str, int]:
    done = subprocess.run([sys.executable, *code, *args], env=env, input=stdin,
                          capture_output=True, timeout=60, check=False)
    return (VOLATILE.sub("*", done.stdout.decode(errors="replace")),
            VOLATILE.sub("*", done.stderr.decode(errors="replace")), done.returncode)


WORDS = st.sampled_from(["x", "build-1", "a=b", "=b", "k=", "TOOL_RESULT", "5", "-5", "0",
                         "1e3", "nan", " 7", "é", "--", "-", "RESPONDS_TO:nothing"])
UNIT_OPTIONS = st.lists(st.one_of(
    st.tuples(st.sampled_from(["-c", "--context", "-t", "--type", "-p", "--payload", "-m",
                               "--meta", "--idempotency-key", "--fence", "-r"]), WORDS),
    st.tuples(st.sampled_from(["--empty", "--json", "--bogus", "-h", "-pX", "--context=c2"])),
), max_size=5)
LOCK_OPTIONS = st.lists(st.one_of(
    st.tuples(st.sampled_from(["--ttl", "--wait", "-w", "--pid"]),
              st.sampled_from(["30", "0", "-1", "x", "2.5", "1e1", "nan", "inf", "1e309",
                               "99999999999999999999"])),
    st.tuples(st.sampled_from(["-n", "--no-wait", "--json", "--nope", "res:other"])),
), max_size=4)
HOOK_INPUTS = st.sampled_from([b"", b"{}", b"[1]", b"not json", b'{"cwd": "/"}',
                               b'{"tool_input": {"file_path": "/tmp/free.py"}, "cwd": "/"}',
                               b'{"tool_input": {"command": "*** Add File: x.py"}}',
                               b'{"tool_input": {"path": "\\ud800"}}'])
RUN_WORDS = st.builds(
    lambda before, resources, after, command: [*before, *resources, *after, *command],
    st.lists(st.sampled_from([("--ttl", "30"), ("--ttl", "x"), ("-w", "5"), ("--wait=-1",),
                              ("-n",), ("--shared",), ("--json",), ("--bogus",)]),
             max_size=2).map(lambda pairs: [word for pair in pairs for word in pair]),
    st.sampled_from([["res:run"], ["res:run", "res:also"], []]),
    st.sampled_from([[], ["--ttl", "20"], ["-w5"], ["--no-wait"], ["--path"]]),
    st.sampled_from([["--", "true"], ["--", "sh", "-c", "echo hi; echo oh >&2; exit 3"],
                     ["--", "no-such-command-here"], ["--"], ["true"],
                     ["--", "sh", "-c", "kill -TERM $$"]]))
COMMAND_LINES = st.one_of(
    st.tuples(st.just(["unit", "create"]), UNIT_OPTIONS, st.just(b"from stdin")),
    st.tuples(st.just(["lock", "acquire", "res:fast", "--shared"]), LOCK_OPTIONS,
              st.just(b"")),
    st.tuples(st.sampled_from([["hook", "pre-edit"], ["hook", "prompt"],
                               ["hook", "pre-edit", "--harness", "cursor"],
                               ["hook", "prompt", "--guard", "block"]]),
              st.just([]), HOOK_INPUTS),
    st.tuples(st.sampled_from([["ping"], ["ping", "-n", "2"], ["ping", "--json"],
                               ["ping", "-n", "0"], ["--json", "ping", "--count=x"]]),
              st.just([]), st.just(b"")),
    st.tuples(st.just(["lock", "run"]), RUN_WORDS, st.just(b"")),
)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(COMMAND_LINES)
def test_both_paths_send_the_same_and_say_the_same(
        recorder: Recorder, env: dict[str, str],
        line: tuple[list[str], list[tuple[str, ...]], bytes]) -> None:
    command, options, stdin = line
    args = [*command, *(word for option in options for word in option)]
    env = {**env, "ENGRAM_SOCKET": recorder.path, "ENGRAM_NO_AUTOSTART": "1"}
    recorder.take()
    typer_said = _run(["-c", TYPER], args, env, stdin)
    typer_sent = recorder.take()
    fast_said = _run(["-m", "engram_cli"], args, env, stdin)
    fast_sent = recorder.take()
    assert fast_said == typer_said, args
    if command == ["lock", "run"]:
        # The library's client connects again to release (the keeper's wait for a
        # notice ended with its connection); the lean one releases on its connection.
        typer_sent, fast_sent = ([*sent[:1], *(frame for frame in sent[1:] if not (
            isinstance(frame, dict) and frame["msg"] == "hello"))]
            for sent in (typer_sent, fast_sent))
    assert fast_sent == typer_sent, args


def test_the_lean_path_imports_no_framework_nor_msgspec(recorder: Recorder,
                                                        env: dict[str, str]) -> None:
    code = ("import sys; from engram_cli.cli import fast; status = fast.main(sys.argv[1:]); "
            "print(status, sorted(m for m in ('typer', 'click', 'rich', 'msgspec', 'typing') "
            "if m in sys.modules))")
    env = {**env, "ENGRAM_SOCKET": recorder.path}
    # Codex's edits are apply_patch texts (their paths read with re, which costs a lean
    # start little): they went down the library's path every time.
    patch = _codex_patch("*** Begin Patch\n*** Update File: a.py\n*** End Patch\n")
    for args, stdin in ((["ping"], b"{}"), (["unit", "create", "-c", "fast", "-p", "x"], b"{}"),
                        (["lock", "acquire", "res:lean", "--shared"], b"{}"),
                        (["hook", "prompt"], b"{}"), (["hook", "pre-edit"], b"{}"),
                        (["hook", "pre-edit", "--harness", "codex"], patch),
                        (["lock", "run", "res:lean-run", "--", "true"], b"{}")):
        done = subprocess.run([sys.executable, "-c", code, *args], env=env, input=stdin,
                              capture_output=True, timeout=60, check=True)
        assert done.stdout.decode().splitlines()[-1] == "0 []", (args, done)
    wait_until(lambda: True, "nothing")


@pytest.mark.parametrize("given", [b'{"tool_input": {"file_path": "/x"', b'{"a":1 "b":2}',
                                   b'{"x":"a\tb"}'])
def test_a_hook_given_malformed_json_fails_open_in_a_fresh_interpreter(
        recorder: Recorder, env: dict[str, str], given: bytes) -> None:
    """The fast start reads hook input with _json's scanner, whose errors go through
    json.decoder, which a fresh interpreter has not imported (pytest's has): it raised
    SystemError, and the hook ended with an internal error instead of letting the edit be."""
    env = {**env, "ENGRAM_SOCKET": recorder.path, "ENGRAM_NO_AUTOSTART": "1"}
    for harness in ([], ["--harness", "cursor"]):
        said = _run(["-m", "engram_cli"], ["hook", "pre-edit", *harness], env, given)
        assert said == ("{}\n" if harness else "", "", 0), said


def test_a_hook_refused_at_hello_fails_open_and_a_command_says_why(
        env: dict[str, str]) -> None:
    """A daemon with every connection taken refuses the hello: a hook lets the harness go
    on (the library's path does), a command says the daemon's line (the trial found the
    fast start's hooks ending with 69)."""
    full = make_config({**env, "ENGRAM_LIMITS_MAX_CONNECTIONS": "1",
                        "ENGRAM_LIMITS_CONNECTION_RESERVE": "0"})
    with start_threaded(full), Client(full.socket, autostart=False, env={}) as holder:
        holder.ping()
        run_env = {**env, "ENGRAM_SOCKET": full.socket, "ENGRAM_NO_AUTOSTART": "1"}
        for harness, shown in (([], ""), (["--harness", "cursor"], "{}\n")):
            said = _run(["-m", "engram_cli"], ["hook", "prompt", *harness], run_env, b"{}")
            assert said == (shown, "", 0), said
        _, err, status = _run(["-m", "engram_cli"], ["ping"], run_env, b"")
        assert status == 69 and "too many connections" in err, err


@pytest.mark.parametrize("args", [["lock", "run", "res:r", "-w5", "--", "true"],
                                  ["lock", "run", "res:r", "--ttl", "3", "--", "true"]])
def test_lock_run_takes_no_option_after_its_first_resource_as_the_typer_app(
        args: list[str]) -> None:
    """lock run's allow_interspersed_args=False is in its context_settings, which the
    option table missed: the fast start took ``-w5`` after RES as its wait, where the
    Typer app hands it to lock run as a word (which says "unknown option", or, for
    --ttl, takes it itself)."""
    parsed = fast.parse(args)
    assert parsed is not None
    _, _, values = parsed
    assert values["resources"] == args[2:]
    assert values["wait"] is None and values["ttl"] is None


BAD_NUMBERS = [
    (["lock", "acquire", "res:bad", "--wait", "nan"], "--wait"),
    (["lock", "acquire", "res:bad", "--wait", "inf"], "--wait"),
    (["lock", "acquire", "res:bad", "-w", "1e309", "--json"], "--wait"),
    (["lock", "acquire", "res:bad", "--pid", "99999999999999999999"], "--pid"),
    (["lock", "run", "res:bad", "--wait", "nan", "--", "true"], "--wait"),
    (["lock", "run", "res:bad", "--wait", "1e10", "--", "true"], "--wait"),
    (["lock", "acquire", "res:bad", "-w", "1e18"], "--wait"),
    (["lock", "acquire", "res:bad", "--shared", "--ttl", "nan"], "--ttl"),
    (["lock", "run", "res:bad", "--ttl", "nan", "--", "true"], "--ttl"),
    # A ttl no lease lives by (it ended as "lease lost", exit 6, or a lease already gone).
    (["lock", "acquire", "res:bad", "--ttl", "1e-300"], "--ttl"),
    (["lock", "acquire", "res:bad", "--shared", "--ttl", "-1"], "--ttl"),
    (["lock", "acquire", "res:bad", "--ttl", "0.05", "--json"], "--ttl"),
    (["lock", "run", "res:bad", "--ttl", "1e-300", "--", "true"], "--ttl"),
    (["lock", "run", "--ttl", "0", "res:bad", "--", "true"], "--ttl"),
    (["lock", "renew", "res:bad", "--lock-id", "x", "--ttl", "1e-300"], "--ttl"),
    (["lock", "renew", "res:bad", "--lock-id", "x", "--ttl", "inf"], "--ttl"),
    (["task", "claim", "--next", "--ttl", "0.01"], "--ttl"),
    (["unit", "create", "-c", "bad", "-p", "x", "--fence", "r:99999999999999999999"],
     "--fence"),
    (["wait", "--since", "99999999999999999999", "--timeout", "1"], "--since"),
    (["watch", "--since", "99999999999999999999"], "--since"),
    (["wait", "--timeout", "nan"], "--timeout"),
    (["inbox", "--wait", "nan", "--json"], "--wait"),
]


@pytest.mark.parametrize(("args", "option"), BAD_NUMBERS,
                         ids=[" ".join(args) for args, _ in BAD_NUMBERS])
def test_a_number_the_protocol_cannot_take_is_a_usage_error_on_both_paths(
        recorder: Recorder, env: dict[str, str], args: list[str], option: str) -> None:
    """nan, inf and integers past MessagePack's were internal errors (exit 1) on both
    paths, or a wait that never ended (wait --timeout nan); and nothing is sent."""
    env = {**env, "ENGRAM_SOCKET": recorder.path, "ENGRAM_NO_AUTOSTART": "1"}
    recorder.take()
    for code in (["-c", TYPER], ["-m", "engram_cli"]):
        out, err, status = _run(code, args, env, b"")
        assert (out, status) == ("", 2), (code, err)
        assert len(err.splitlines()) == 1 and option in err and "internal" not in err, err
    assert not [frame for frame in recorder.take()
                if isinstance(frame, dict) and frame["msg"] not in ("hello", "context.get")]


@pytest.mark.parametrize("args", [["ping"], ["unit", "create", "-c", "piped", "-p", "x"],
                                  ["version"], ["status"]])
def test_a_reader_gone_is_exit_0_on_both_paths(recorder: Recorder, env: dict[str, str],
                                               args: list[str]) -> None:
    """Output to a pipe nobody reads (``engram ... | head -0``): exit 0 and nothing said,
    as SPECS has it. Click ends the Typer path with exit 1 for it (EPIPE)."""
    env = {**env, "ENGRAM_SOCKET": recorder.path, "ENGRAM_NO_AUTOSTART": "1"}
    for code in (["-c", TYPER], ["-m", "engram_cli"]):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            done = subprocess.run([sys.executable, *code, *args], env=env, stdout=write_end,
                                  stderr=subprocess.PIPE, timeout=60, check=False)
        finally:
            os.close(write_end)
        assert (done.returncode, done.stderr) == (0, b""), (code, done)


# -- the edit guard's verdict with leases about ------------------------------------------


def _edit(path: str) -> bytes:
    return msgspec.json.encode({"tool_input": {"file_path": path}, "cwd": "/"})


def _codex_patch(patch: str, cwd: str = "/") -> bytes:
    """Codex's PreToolUse input for an edit: apply_patch with the patch as its command."""
    return msgspec.json.encode({"tool_name": "apply_patch", "cwd": cwd,
                                "tool_input": {"command": ["apply_patch", patch]}})


@pytest.fixture
def leases_about(threaded_daemon: ThreadedDaemon, scratch: str, env: dict[str, str]
                 ) -> Iterator[str]:
    """Leases of every kind the guard tells apart, under *scratch* (no repository):
    another agent's on a file, a directory, a glob and a plain name; this session's own
    (the hooks run with ENGRAM_SESSION_PID set to this process); and one of the same
    agent in another session (a ``lock run`` of its own)."""
    from engram_cli.client import paths

    work = os.path.join(scratch, "work")
    os.makedirs(os.path.join(work, "dir"))
    os.makedirs(os.path.join(work, "glob"))
    socket_path = threaded_daemon.config.socket
    with Client(socket_path, agent_id="other", autostart=False, env={}) as other, \
            Client(socket_path, agent_id="tester", autostart=False, env={}) as mine:
        other.acquire_lock([paths.resource(os.path.join(work, "held.py")),
                            paths.resource(os.path.join(work, "dir") + "/"),
                            paths.resource(os.path.join(work, "glob", "*.py")),
                            "deploy:prod"], ttl=300)
        mine.acquire_lock(paths.resource(os.path.join(work, "mine.py")), ttl=300,
                          pid=os.getpid())
        runner = subprocess.Popen(
            [sys.executable, "-m", "engram_cli", "lock", "run", "--path",
             os.path.join(work, "theirs.py"), "--", "sleep", "60"],
            env={**env, "ENGRAM_SOCKET": socket_path, "ENGRAM_AGENT": "tester"})
        try:
            wait_until(lambda: len(paths.leases_of(mine.list_locks())) == 6,
                       "the other session's lock run to hold its lease")
            yield work
        finally:
            runner.terminate()
            runner.wait(timeout=30)


GUARDED = [("held.py", True), ("dir/a.py", True), ("glob/x.py", True),
           ("glob/x.txt", False), ("mine.py", False), ("free.py", False),
           ("theirs.py", True)]


def test_the_edit_guard_judges_every_kind_of_lease_as_the_typer_path(
        leases_about: str, threaded_daemon: ThreadedDaemon, env: dict[str, str]) -> None:
    env = {**env, "ENGRAM_SOCKET": threaded_daemon.config.socket,
           "ENGRAM_NO_AUTOSTART": "1", "ENGRAM_SESSION_PID": str(os.getpid())}
    for relative, in_the_way in GUARDED:
        patch = _codex_patch(f"*** Begin Patch\n*** Update File: {relative}\n*** End Patch\n",
                             cwd=leases_about)
        for harness, edit in (([], _edit(os.path.join(leases_about, relative))),
                              (["--harness", "cursor"], _edit(os.path.join(leases_about,
                                                                           relative))),
                              (["--guard", "block"], _edit(os.path.join(leases_about,
                                                                        relative))),
                              (["--harness", "codex", "--guard", "block"], patch)):
            args = ["hook", "pre-edit", *harness]
            typer_said = _run(["-c", TYPER], args, env, edit)
            fast_said = _run(["-m", "engram_cli"], args, env, edit)
            assert fast_said == typer_said, (relative, harness)
            assert ("is leased by" in fast_said[0]) == in_the_way, (relative, fast_said)


def test_the_edit_guard_needs_no_msgspec_for_leases_that_cannot_be_in_the_way(
        threaded_daemon: ThreadedDaemon, scratch: str, env: dict[str, str]) -> None:
    """This session's own leases and plain names of others are judged on the lean path
    (any lease at all sent it down the library's before)."""
    from engram_cli.client import paths

    mine_path = os.path.join(scratch, "mine.py")
    code = ("import sys; from engram_cli.cli import fast; status = fast.main(sys.argv[1:]); "
            "print(status, sorted(m for m in ('typer', 'click', 'rich', 'msgspec', 'typing') "
            "if m in sys.modules))")
    socket_path = threaded_daemon.config.socket
    env = {**env, "ENGRAM_SOCKET": socket_path, "ENGRAM_SESSION_PID": str(os.getpid())}
    with Client(socket_path, agent_id="other", autostart=False, env={}) as other, \
            Client(socket_path, agent_id="tester", autostart=False, env={}) as mine:
        other.acquire_lock("deploy:prod", ttl=300)
        mine.acquire_lock(paths.resource(mine_path), ttl=300, pid=os.getpid())
        for edited in (mine_path, os.path.join(scratch, "free.py")):
            done = subprocess.run([sys.executable, "-c", code, "hook", "pre-edit"], env=env,
                                  input=_edit(edited), capture_output=True, timeout=60,
                                  check=True)
            assert done.stdout.decode().splitlines() == ["0 []"], (edited, done)


# -- a daemon's answer the client cannot read -----------------------------------------


class Mangler(Recorder):
    """A socket in front of the daemon's that spoils its answers of one kind (*tag*):
    *spoil* takes the answer's fields and gives the frame to send instead (its length
    prefix too)."""

    def __init__(self, path: str, daemon: str, tag: str,
                 spoil: Callable[[dict[str, object]], bytes]) -> None:
        self.tag, self.spoil = tag, spoil
        self.spoiled = 0
        super().__init__(path, daemon)

    def _pipe(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        if record:
            super()._pipe(source, sink, record)
            return
        frames = FrameDecoder()
        try:
            while data := source.recv(65536):
                frames.receive_data(data)
                while (body := frames.next_frame()) is not None:
                    fields = msgspec.msgpack.decode(body)
                    if fields.get("msg") == self.tag:
                        self.spoiled += 1
                        sink.sendall(self.spoil(fields))
                    else:
                        sink.sendall(len(body).to_bytes(4, "big") + body)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _without(*path: str | int) -> Callable[[dict[str, object]], bytes]:
    def spoil(fields: dict[str, object]) -> bytes:
        *parents, last = path
        inner: Any = fields
        for step in parents:
            inner = inner[step]
        del inner[last]
        body = msgspec.msgpack.encode(fields)
        return len(body).to_bytes(4, "big") + body
    return spoil


def _too_large(fields: dict[str, object]) -> bytes:
    return (16 * 1024 * 1024 + 1).to_bytes(4, "big")


SPOILED = [
    (["ping"], "pong", _without("daemon_version")),
    (["ping"], "pong", _too_large),
    (["unit", "create", "-c", "spoiled", "-p", "x"], "unit.created", _without("units")),
    (["unit", "create", "-c", "spoiled", "-p", "x"], "unit.created",
     _without("units", 0, "id")),
    (["lock", "acquire", "res:spoiled", "-n"], "lock.granted",
     _without("leases", 0, "lock_id")),
    (["hook", "prompt"], "inbox.counted", _without("unread")),
    (["hook", "prompt", "--harness", "cursor"], "inbox.counted", _too_large),
]


@pytest.mark.parametrize(("args", "tag", "spoil"), SPOILED,
                         ids=[f"{' '.join(args)}:{spoil.__name__}" for args, _, spoil in SPOILED])
def test_an_answer_the_client_cannot_read_is_told_as_the_library_tells_it(
        threaded_daemon: ThreadedDaemon, scratch: str, env: dict[str, str], args: list[str],
        tag: str, spoil: Callable[[dict[str, object]], bytes]) -> None:
    """The lean path read what it needed of a same-uid daemon's answers and trusted the
    rest: a missing field was an internal error (exit 1), a frame of any size was read.
    Now: the library's protocol error (a hook fails open), in msgspec's words."""
    mangler = Mangler(os.path.join(scratch, "mangle.sock"), threaded_daemon.config.socket,
                      tag, spoil)
    try:
        env = {**env, "ENGRAM_SOCKET": mangler.path, "ENGRAM_NO_AUTOSTART": "1"}
        typer_said = _run(["-c", TYPER], args, env, b"{}")
        if tag == "lock.granted":  # granted, though its answer was spoiled: free it again
            with Client(threaded_daemon.config.socket, agent_id="ops", autostart=False,
                        env={}) as ops:
                ops.break_lock(args[2], "the next run asks for it")
        fast_said = _run(["-m", "engram_cli"], args, env, b"{}")
    finally:
        mangler.close()
    assert mangler.spoiled == 2  # (one answer to each path)
    assert fast_said == typer_said
    assert "internal" not in fast_said[1] and fast_said[2] in (0, 69), fast_said


@pytest.mark.parametrize("args", [["ping"], ["unit", "create", "-c", "c", "-p", "x"],
                                  ["lock", "run", "res:r", "--", "true"], ["hook", "prompt"]])
def test_a_hello_refused_is_asked_once_and_told_as_the_library_tells_it(
        recorder: Recorder, env: dict[str, str], args: list[str]) -> None:
    """A token the daemon does not know: the lean path took its refusal of the hello for
    a daemon it could not greet and let the library ask again (refused, and logged,
    twice)."""
    env = {**env, "ENGRAM_SOCKET": recorder.path, "ENGRAM_NO_AUTOSTART": "1",
           "ENGRAM_TOKEN": "not-a-token"}
    said = []
    for code in (["-c", TYPER], ["-m", "engram_cli"]):
        recorder.take()
        said.append(_run(code, args, env, b"{}"))
        assert [frame for frame in recorder.take()
                if isinstance(frame, dict)] == [REFUSED_HELLO], code
    assert said[0] == said[1]


REFUSED_HELLO = {"msg": "hello", "protocol_version": PROTOCOL_VERSION,
                 "client_name": "engram-cli", "agent_id": "tester", "token": "not-a-token"}
