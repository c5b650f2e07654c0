"""Shared fixtures: short private temp dirs, daemons in-process and as processes, the CLI."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import HealthCheck, settings

from engram_cli.bench.natslab import NatsCluster
from engram_cli.client import Client
from engram_cli.client.errors import EngramError
from engramd.config import DaemonConfig, load_config
from engramd.main import run_daemon
from engramd.protocol import (
    PROTOCOL_VERSION,
    ErrorReply,
    FrameDecoder,
    Hello,
    Welcome,
    encode_message,
)
from engramd.protocol.messages import AnyServerMessage
from engramd.server import Server

settings.register_profile("ci", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=20_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test with an ``engramd`` process is slow (``pytest -m "not slow"`` skips it)."""
    for item in items:
        if "engramd" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


WAIT = 10.0
"""Upper bound for every wait in the tests; reached only when something is broken."""


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT, *,
               seen: Callable[[], object] | None = None) -> None:
    """Poll *predicate* (bounded), failing the test with *what* if it never holds (and
    what *seen* returns then: the state a failure on a loaded machine needs to be read)."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}"
                        + (f" (seen: {seen()!r})" if seen is not None else ""))
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """Three nats-server nodes on loopback, shared by the cluster tests (each test uses a
    deployment of its own; a test that stops nodes starts a cluster of its own)."""
    pytest.importorskip("nats", reason="cluster mode needs the engram-journal[cluster] extra")
    with NatsCluster(str(tmp_path_factory.mktemp("nats"))) as cluster:
        yield cluster


@pytest.fixture
def machines(env: dict[str, str], scratch: str, nats_cluster: NatsCluster) -> Iterator[Any]:
    """Three engramd machines, a, b and c, of a deployment of their own on the shared
    NATS cluster (:mod:`tests.clustermachines`)."""
    from tests.clustermachines import deployment_of, running

    with running(deployment_of(nats_cluster, env, scratch)) as started:
        yield started


@pytest.fixture
def interruptible() -> Iterator[None]:
    """SIGINT handled as on a terminal, in this process and the children it starts: a
    suite started in the background (``make test &``) has it ignored, and engram keeps
    an ignored signal ignored (as under nohup)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.fixture
def scratch() -> Iterator[str]:
    """A private (0700) temp dir with a short path: Unix socket paths must stay short."""
    path = tempfile.mkdtemp(prefix="eg-", dir="/tmp")
    os.chmod(path, 0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def env(scratch: str) -> dict[str, str]:
    """An environment that points engram at the scratch dir and never at the user's daemon."""
    cleaned = {k: v for k, v in os.environ.items()
               if not k.startswith("ENGRAM_") and k not in ("XDG_RUNTIME_DIR", "NO_COLOR")}
    return {
        **cleaned,
        "ENGRAM_SOCKET": os.path.join(scratch, "run", "engramd.sock"),
        "ENGRAM_DATA_DIR": os.path.join(scratch, "data"),
        "XDG_CONFIG_HOME": os.path.join(scratch, "config"),
        "ENGRAM_AGENT": "tester",
        # Semantic search loads a model (~0.6 s of CPU per daemon): only its own tests
        # (tests/test_semantic.py) turn it back on.
        "ENGRAM_SEARCH_SEMANTIC": "off",
    }


def make_config(env: dict[str, str], **overrides: str) -> DaemonConfig:
    return load_config(env=env, uid=os.geteuid(), overrides=overrides)


@pytest.fixture
def config(env: dict[str, str]) -> DaemonConfig:
    return make_config(env)


def socket_answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


@pytest.fixture
async def daemon(config: DaemonConfig) -> Iterator[Server]:
    """A daemon in this trio run, on a real socket; stopped gracefully afterwards."""
    async with trio.open_nursery() as nursery:
        server = await nursery.start(lambda task_status: run_daemon(
            config, handle_signals=False, task_status=task_status))
        with trio.fail_after(WAIT):
            while server.engine.state != "ready":
                await trio.sleep(0.001)
        yield server
        server.engine.request_shutdown()


@dataclass
class ThreadedDaemon:
    config: DaemonConfig
    thread: threading.Thread
    server: Server | None = None
    token: trio.lowlevel.TrioToken | None = None
    errors: list[BaseException] = field(default_factory=list)

    def __enter__(self) -> ThreadedDaemon:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.thread.is_alive() and self.server is not None and self.token is not None:
            try:
                trio.from_thread.run_sync(self.server.engine.request_shutdown,
                                          trio_token=self.token)
            except trio.RunFinishedError:
                pass
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "daemon thread did not stop"
        if self.errors:
            raise self.errors[0]


def start_threaded(config: DaemonConfig) -> ThreadedDaemon:
    """Run a daemon in a background thread, for tests written with the blocking client."""
    holder = ThreadedDaemon(config, threading.Thread())
    ready = threading.Event()

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            holder.server = await nursery.start(lambda task_status: run_daemon(
                config, handle_signals=False, task_status=task_status))
            holder.token = trio.lowlevel.current_trio_token()
            ready.set()

    def run() -> None:
        try:
            trio.run(body)
        except BaseException as exc:  # re-raised by stop() or right below
            holder.errors.append(exc)
            ready.set()

    holder.thread = threading.Thread(target=run, daemon=True)
    holder.thread.start()
    assert ready.wait(WAIT), "daemon did not start"
    if holder.errors:
        raise holder.errors[0]
    wait_until(lambda: (holder.server is not None and holder.server.engine.state == "ready")
               or bool(holder.errors), "the journal to open")
    if holder.errors:
        raise holder.errors[0]
    return holder


@pytest.fixture
def threaded_daemon(config: DaemonConfig) -> Iterator[ThreadedDaemon]:
    holder = start_threaded(config)
    yield holder
    holder.stop()


@dataclass
class DaemonProcess:
    process: subprocess.Popen[bytes]
    socket: str
    env: dict[str, str]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(WAIT)


def spawn_engramd(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "engramd", *args], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def engramd_log(env: dict[str, str]) -> Path:
    """Where :func:`start_engramd` sends a daemon's output: beside its data dir."""
    return Path(env["ENGRAM_DATA_DIR"]).parent / "engramd.out"


def start_engramd(env: dict[str, str], module: str = "engramd") -> subprocess.Popen[bytes]:
    """``engramd`` as a process (``python -m`` *module*: a test's helper may stand in
    for it), ready to serve; if it is not, fail with what it said.

    Its output goes to a file (:func:`engramd_log`), which no pipe left unread can block.
    """
    log_path = engramd_log(env)
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", module], env=env,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    path = env["ENGRAM_SOCKET"]
    try:
        wait_until(lambda: socket_answers(path) or process.poll() is not None,
                   "engramd to listen")
        with Client(path, autostart=False) as client:
            client.wait_ready()
    except (EngramError, AssertionError, pytest.fail.Exception) as exc:
        if process.poll() is None:
            process.kill()
        process.wait(WAIT)
        said = log_path.read_text(errors="replace")[-4000:]
        pytest.fail(f"engramd did not start ({exc}; exit status {process.returncode}); "
                    f"it said:\n{said}")
    return process


@pytest.fixture
def engramd(env: dict[str, str]) -> Iterator[DaemonProcess]:
    """``engramd`` as a real process on the scratch socket and data dir."""
    handle = DaemonProcess(start_engramd(env), env["ENGRAM_SOCKET"], env)
    yield handle
    handle.stop()


def connect(target: DaemonConfig | str, agent: str = "alice", *, timeout: float = 60.0,
            **options: Any) -> Client:
    """A blocking client of the test daemon at *target* (a config or a socket path).

    It never starts a daemon, and reads no ``ENGRAM_*`` variable of the test
    process (unless *options* give ``env``); ``with connect(...) as c`` connects.
    """
    path = target if isinstance(target, str) else target.socket
    options.setdefault("env", {})
    return Client(path, agent_id=agent, autostart=False, timeout=timeout, **options)


def run_cli(env: dict[str, str], *args: str, input: bytes | None = None,
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run the real ``engram`` program as a process."""
    return subprocess.run([sys.executable, "-m", "engram_cli", *args], env=env,
                          input=input.decode() if input is not None else None,
                          capture_output=True, text=True, timeout=timeout, check=False)


class RawConnection:
    """A bare socket speaking frames, for sending what a well-behaved client never would."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(path)
        self.frames = FrameDecoder()
        self._decoder = msgspec.msgpack.Decoder(AnyServerMessage)

    @classmethod
    def greeted(cls, path: str, agent: str = "raw") -> RawConnection:
        """A connection that has completed its handshake."""
        raw = cls(path)
        raw.send(Hello(id=1, protocol_version=PROTOCOL_VERSION, client_name="raw",
                       agent_id=agent))
        assert isinstance(raw.receive(), Welcome)
        return raw

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, message: msgspec.Struct) -> None:
        self.sock.sendall(encode_message(message))  # type: ignore[arg-type]

    def receive(self) -> AnyServerMessage | None:
        """The next message, or None when the daemon closed the connection."""
        while True:
            body = self.frames.next_frame()
            if body is not None:
                return self._decoder.decode(body)
            data = self.sock.recv(65536)
            if not data:
                return None
            self.frames.receive_data(data)

    def receive_error(self) -> ErrorReply:
        message = self.receive()
        assert isinstance(message, ErrorReply), message
        return message

    def closed_by_peer(self) -> bool:
        return self.receive() is None

    def close(self) -> None:
        self.sock.close()


def on_a_terminal(env: dict[str, str], *args: str) -> str:
    """What ``engram ARGS`` shows on a terminal (a pseudo-terminal, 160 columns), as the
    person at it reads it, without styles."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "engram_cli", *args], stdin=subprocess.DEVNULL,
            stdout=follower, stderr=subprocess.PIPE,
            env={**env, "NO_COLOR": "1", "COLUMNS": "160", "TERM": "xterm"})
        os.close(follower)
        follower = -1
        shown = bytearray()
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the program closed its end
                break
            if not chunk:
                break
            shown += chunk
        assert process.wait(timeout=30) == 0, process.stderr.read() if process.stderr else ""
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    # NO_COLOR leaves bold and dim (it is about colour): drop every style.
    return re.sub(r"\x1b\[[0-9;]*m", "", shown.decode()).replace("\r\n", "\n")
