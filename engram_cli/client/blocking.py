"""The blocking client library: one connection to engramd over its Unix socket.

It uses the plain ``socket`` module and imports neither trio nor rich, so that
an ``engram`` command starts fast. The operations (``ping``, ``create_unit``,
``acquire_lock``, ...) are defined once in :mod:`engram_cli.client.operations` for this
client and the trio one; this module is the loop around the protocol's sans-IO
:class:`~engramd.protocol.ClientConnection` that runs them::

    from engram_cli import Client

    with Client() as engram:          # finds the socket like the CLI does
        status = engram.status()

Every error is an :class:`engram_cli.client.errors.EngramError`; errors the daemon
reported carry its code in ``err.code``.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

from engram_cli.client import requests
from engram_cli.client.autostart import (
    START_TIMEOUT,
    gone_away,
    lost_while_starting,
    ready_polls,
    refused_after_start,
    start_daemon,
)
from engram_cli.client.errors import ClientTimeout, EngramError, RateLimited, Unavailable
from engram_cli.client.operations import Call, Operations
from engram_cli.client.settings import Target
from engram_cli.client.stream import Follower, Position
from engramd.protocol import (
    PROTOCOL_VERSION,
    ClientConnection,
    ClientMessage,
    DaemonStatus,
    Event,
    GetStatus,
    Heartbeat,
    LeaseLost,
    Push,
    ServerMessage,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Welcome,
    cuts_notice,
    reply_type,
    result,
)

_RECEIVE_SIZE = 256 * 1024
DEFAULT_TIMEOUT = 30.0

_UNREACHABLE = (FileNotFoundError, ConnectionRefusedError)
R = TypeVar("R", bound=ServerMessage)
T = TypeVar("T")


class Client(Operations):
    """A connection to engramd; the arguments are :class:`~engram_cli.client.settings.Target`'s,
    and ``timeout`` is how long to wait for any one reply."""

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        agent_id: str | None = None,
        client_name: str = "engram-python",
        autostart: bool | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        token: str | None = None,
        admin: bool = False,
        env: Mapping[str, str] | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.target = Target.resolve(socket_path, agent_id=agent_id, client_name=client_name,
                                     autostart=autostart, token=token, admin=admin, env=env)
        self.timeout = timeout
        self.start_timeout = start_timeout
        """How long a daemon this client starts may take to be ready."""
        self._sock: socket.socket | None = None
        self._protocol: ClientConnection | None = None

    @property
    def autostart(self) -> bool:
        return self.target.autostart

    @autostart.setter
    def autostart(self, value: bool) -> None:
        self.target.autostart = value

    # -- connection ---------------------------------------------------------

    def connect(self) -> None:
        """Connect and shake hands (starting the daemon if allowed); idempotent."""
        if self._sock is not None:
            return
        try:
            self._greet(self._open_socket())
            return
        except _UNREACHABLE as exc:
            if not self.target.autostart:
                raise self.target.unreachable(exc) from None
        except Unavailable:
            # It hung up during the handshake: a daemon on its way out (killed, its
            # last threads still holding the socket). Once it has gone, start another.
            if not (self.target.autostart and gone_away(self.socket_path)):
                raise
        start_daemon(self.socket_path, env=self.target.env, timeout=self.start_timeout)
        try:
            sock = self._open_socket()
        except _UNREACHABLE as exc:
            # It answered once, then went: a daemon that stopped while it recovered.
            raise lost_while_starting(self.socket_path, self.target.env, refused_after_start(
                self.socket_path, exc)) from None
        try:
            self._greet(sock)
            # The daemon told the cuts it made while it recovered to no one yet.
            self._started_notice = cuts_notice(self.wait_ready(self.start_timeout).wal_cuts)
        except Unavailable as lost:
            raise lost_while_starting(self.socket_path, self.target.env, lost) from None

    def _open_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except PermissionError:
            sock.close()
            raise Unavailable(
                f"permission denied on {self.socket_path}: the daemon belongs to another user"
            ) from None
        except BaseException:
            sock.close()
            raise
        return sock

    def _greet(self, sock: socket.socket) -> None:
        """Shake hands on a freshly connected socket."""
        self._sock, self._protocol = sock, self.target.conversation()
        try:
            self._send_bytes(self._protocol.hello(PROTOCOL_VERSION))
            result(self.receive(self._protocol.hello_id), Welcome)
        except BaseException:
            self.close()
            raise

    def wait_ready(self, timeout: float = START_TIMEOUT) -> DaemonStatus:
        """Wait (bounded) until the daemon has finished recovering its journal."""
        deadline = time.monotonic() + timeout
        state, pauses = "recovering", ready_polls()
        while True:
            try:
                status = self.call(GetStatus())
            except RateLimited:
                pass  # a daemon with a low request rate: the polls slow down
            else:
                if status.state == "ready":
                    return status
                state = status.state
            if time.monotonic() > deadline:
                raise Unavailable(f"engramd is still {state} after {timeout:g}s")
            time.sleep(next(pauses))

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def interrupt(self) -> None:
        """Shut the connection down, from another thread: a call blocked on it
        returns (raising ``Unavailable``); the next request connects again."""
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._protocol = None

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- the request loop ---------------------------------------------------

    def run(self, call: Call[T]) -> T:
        """Run one operation (see :mod:`engram_cli.client.operations`)."""
        if call.wait == 0 or self.timeout is None:
            return call.then(self.call(call.request))
        with self.reply_timeout(None if call.wait is None else self.timeout + call.wait):
            return call.then(self.call(call.request))

    def call(self, request: ClientMessage[R]) -> R:
        """Send *request*, wait for its reply, and raise the error it reports."""
        return result(self.receive(self.send(request)), reply_type(type(request)))

    def send(self, request: ClientMessage[Any]) -> int:
        """Send *request* without waiting (pipelining); returns its id."""
        protocol = self._connected()
        request = protocol.numbered(request)
        self._send_bytes(protocol.send(request))
        return request.id

    def receive(self, request_id: int) -> ServerMessage:
        """Wait for the answer to *request_id* (a reply or an error frame)."""
        protocol = self._connected()
        while (answer := protocol.answer(request_id)) is None:
            self._read_more()
        return answer

    def next_id(self) -> int:
        """The id the next request will get (connecting first)."""
        return self._connected().allocate_id()

    def next_push(self, subscription: int) -> Push:
        """The next event, heartbeat or lag notice pushed for *subscription* (blocking).

        Raises ``Unavailable`` once the connection is gone: pushes come only on the
        connection that subscribed, so this never connects anew.
        """
        protocol = self._protocol
        if protocol is None:
            raise Unavailable("lost the connection to engramd")
        while (push := protocol.push(subscription)) is None:
            self._read_more()
        return push

    def lease_lost(self, timeout: float | None) -> LeaseLost | None:
        """Wait up to *timeout* for the daemon to say a lease of ours was lost."""
        protocol = self._protocol
        if protocol is None or self._sock is None:
            raise Unavailable("not connected to engramd")
        notice = protocol.notice()
        if notice is None:
            try:
                with self.reply_timeout(timeout):
                    while (notice := protocol.notice()) is None:
                        self._read_more()
            except ClientTimeout:
                return None
        assert isinstance(notice, LeaseLost)  # the one kind of notice there is
        return notice

    @contextlib.contextmanager
    def reply_timeout(self, seconds: float | None) -> Iterator[None]:
        """Wait up to *seconds* (None: for good) for each reply inside this block."""
        self.connect()
        assert self._sock is not None
        saved, self.timeout = self.timeout, seconds
        self._sock.settimeout(seconds)
        try:
            yield
        finally:
            self.timeout = saved
            if self._sock is not None:
                self._sock.settimeout(saved)

    def _connected(self) -> ClientConnection:
        self.connect()
        assert self._protocol is not None
        return self._protocol

    def _send_bytes(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except TimeoutError:
            raise ClientTimeout("engramd did not take a request within "
                                f"{round(self.timeout or 0, 1):g}s") from None
        except OSError as exc:
            parting = self._parting_error()
            self.close()
            if parting is not None:
                raise parting from None
            raise Unavailable(f"lost the connection to engramd: {exc.strerror}") from None

    def _parting_error(self) -> EngramError | None:
        """What a daemon said before it closed on us (say, too many connections).

        A write can fail because the daemon already hung up; its goodbye may
        still wait in the socket and is the better answer.
        """
        assert self._sock is not None and self._protocol is not None
        with contextlib.suppress(OSError):
            self._sock.settimeout(0.5)
            while self._protocol.ended is None:
                data = self._sock.recv(_RECEIVE_SIZE)
                self._protocol.receive_data(data)
                self._protocol.collect()
        return self._protocol.goodbye

    def _read_more(self) -> None:
        """Read what the daemon sent and file it; raises when the conversation ended."""
        assert self._sock is not None and self._protocol is not None
        try:
            data = self._sock.recv(_RECEIVE_SIZE)
        except TimeoutError:
            raise ClientTimeout(
                f"engramd did not answer within {round(self.timeout or 0, 1):g}s") from None
        except OSError as exc:
            self.close()
            raise Unavailable(f"lost the connection to engramd: {exc.strerror}") from None
        self._protocol.receive_data(data)
        self._protocol.collect()
        if self._protocol.ended is not None:
            ended = self._protocol.ended
            self.close()
            raise ended

    # -- the live stream ------------------------------------------------------

    def subscribe(self, **options: Any) -> Subscription:
        """Start a subscription; iterate it for events (see :class:`Subscription`)."""
        request = requests.subscribe(**options)
        return Subscription(self, request, self.call(request))

    def unsubscribe(self, subscription: int) -> None:
        self.call(Unsubscribe(subscription=subscription))
        if self._protocol is not None:
            self._protocol.forget(subscription)

    def watch(self, **options: Any) -> Iterator[Event | Heartbeat]:
        """Events (and heartbeats) for good, reconnecting across daemon restarts.

        See :func:`watch` for the options.
        """
        return watch(self, **options)


# -- following the stream ---------------------------------------------------


class Subscription(Position):
    """Events of one subscription, in order; iterate it. Heartbeats come through too."""

    client: Client

    def __init__(self, client: Client, request: Subscribe, reply: Subscribed) -> None:
        super().__init__(client, request, reply)
        self._conversation = client._protocol
        """The connection it lives on: on another one, its id may name someone else's."""

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> Event | Heartbeat:
        if self.client._protocol is not self._conversation:
            raise Unavailable("lost the connection to engramd")
        return self.accept(self.client.next_push(self.id))

    def ack(self) -> None:
        """Store the cursor under the subscription's name (``cursor=`` when subscribing)."""
        if self.name is None:
            raise ValueError("this subscription has no cursor name")
        self.client.ack_cursor(self.name, self.cursor)

    def close(self) -> None:
        self.client.unsubscribe(self.id)


def watch(
    client: Client,
    *,
    reconnect: bool = True,
    on_status: Callable[[str, Subscription | None], None] | None = None,
    retry_interval: float = 0.2,
    **options: Any,
) -> Iterator[Event | Heartbeat]:
    """Follow the stream for good, resuming after a daemon restart or a lag notice.

    Args:
        on_status: told ``"connected"`` (with the subscription) and
            ``"reconnecting"`` (with None) as the connection comes and goes.
        options: the filters and cursor of :func:`engram_cli.client.requests.subscribe`.
    """
    follower = Follower(options, on_status)
    while True:
        try:
            subscription = follower.connected(client.subscribe(**follower.options))
            for item in subscription:
                follower.passed(subscription)
                yield item
        except (Unavailable, ClientTimeout) as exc:
            if follower.must_reconnect(exc, reconnect):
                client.close()
                _wait_for_daemon(client, retry_interval)


def _wait_for_daemon(client: Client, interval: float) -> None:
    """Reconnect to the daemon that went away, without starting one of our own.

    Whoever stopped or restarts it (a supervisor, a person, a test) owns that
    decision; a follower that started its own could race the real one.
    """
    autostart, client.autostart = client.autostart, False
    try:
        while True:
            try:
                client.connect()
                client.wait_ready()
                return
            except (Unavailable, ClientTimeout):
                client.close()
                time.sleep(interval)
    finally:
        client.autostart = autostart
