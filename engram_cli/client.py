"""The blocking client library: one connection to engramd over its Unix socket.

It uses the plain ``socket`` module and imports neither trio nor rich, so that
an ``engram`` command starts fast. Methods are named after the operations::

    from engram_cli.client import Client

    with Client() as engram:          # finds the socket like the CLI does
        status = engram.status()

Every error is an :class:`engram_cli.errors.EngramError`; errors the daemon
reported carry its code in ``err.code``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

from engram_cli import requests
from engram_cli.autostart import START_TIMEOUT, start_daemon
from engram_cli.errors import (
    ClientTimeout,
    EngramError,
    NotFound,
    ReplyT,
    Unavailable,
    error_from_reply,
    reply_as,
)
from engram_cli.requests import Payload
from engram_cli.settings import (
    autostart_enabled,
    default_agent_id,
    default_token,
    find_socket,
    read_admin_token,
)
from engram_cli.stream import Push, Subscription, watch
from engramd.protocol import (
    CLOSED,
    NEED_DATA,
    PROTOCOL_VERSION,
    AckCursor,
    AcquireLock,
    BreakLock,
    ClientConnection,
    ClientMessage,
    Context,
    ContextFound,
    ContextPage,
    CreateToken,
    DaemonStats,
    DaemonStatus,
    Done,
    ErrorReply,
    Event,
    EventPush,
    GetContext,
    GetLock,
    GetStats,
    GetStatus,
    GetUnits,
    Heartbeat,
    Lagged,
    Lease,
    LeaseLost,
    LeaseRenewed,
    ListLocks,
    ListTokens,
    LockFound,
    LockPage,
    LocksGranted,
    LockState,
    Ping,
    Pong,
    ProtocolError,
    Reindex,
    RelatedFound,
    ReleaseLock,
    RenewLock,
    RevokeTokens,
    Search,
    SearchResults,
    ServerMessage,
    Shutdown,
    ShuttingDown,
    SocketPathTooLong,
    Subscribed,
    TokenCreated,
    TokenInfo,
    TokenPage,
    TokensRevoked,
    Unit,
    UnitDraft,
    UnitPage,
    UnitsCreated,
    UnitsFound,
    Unsubscribe,
)

_RECEIVE_SIZE = 256 * 1024
DEFAULT_TIMEOUT = 30.0



_UNREACHABLE = (FileNotFoundError, ConnectionRefusedError)


class Client:
    """A connection to engramd.

    Args:
        socket_path: the daemon's socket; by default ``ENGRAM_SOCKET``, else the
            XDG rules (see SPECS.md).
        agent_id: who this client acts as; by default ``ENGRAM_AGENT``, else the
            user name.
        client_name: a label for the daemon's logs.
        autostart: start engramd when nothing answers; by default on unless
            ``ENGRAM_NO_AUTOSTART=1``.
        timeout: seconds to wait for any one reply.
        token: the agent token to present; by default ``ENGRAM_TOKEN``.
        admin: present the daemon's admin token instead (read from beside the
            socket; token management needs it).
    """

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
    ) -> None:
        env = os.environ if env is None else env
        try:
            self.socket_path = find_socket(socket_path, env)
        except SocketPathTooLong as exc:
            raise EngramError(str(exc)) from None
        self.agent_id = agent_id or default_agent_id(env)
        self.client_name = client_name
        self.autostart = autostart_enabled(env) if autostart is None else autostart
        self.timeout = timeout
        self.token = token or default_token(env)
        self.admin = admin
        self._env = env
        self._sock: socket.socket | None = None
        self._protocol: ClientConnection | None = None
        self._early: dict[int, ServerMessage] = {}
        self._pushes: dict[int, collections.deque[Push]] = {}
        self._lost: collections.deque[LeaseLost] = collections.deque()

    # -- connection ---------------------------------------------------------

    def connect(self) -> None:
        """Connect and shake hands (starting the daemon if allowed); idempotent."""
        if self._sock is not None:
            return
        try:
            sock = self._open_socket()
        except _UNREACHABLE as exc:
            if not self.autostart:
                raise Unavailable(
                    f"engramd is not running on {self.socket_path} ({exc.strerror}); "
                    "start it with 'engram daemon start'"
                ) from None
            start_daemon(self.socket_path, env=self._env)
            try:
                sock = self._open_socket()
            except _UNREACHABLE as exc2:
                raise Unavailable(
                    f"engramd started but {self.socket_path} refuses connections "
                    f"({exc2.strerror})"
                ) from None
            self._adopt(sock)
            self.wait_ready()
            return
        self._adopt(sock)

    def _adopt(self, sock: socket.socket) -> None:
        """Shake hands on a freshly connected socket."""
        self._sock = sock
        token = self._admin_token() if self.admin else self.token
        self._protocol = ClientConnection(client_name=self.client_name, agent_id=self.agent_id,
                                          token=token)
        try:
            self._send_bytes(self._protocol.hello(PROTOCOL_VERSION))
            reply = self._next_message()
        except BaseException:
            self.close()
            raise
        if isinstance(reply, ErrorReply):
            self.close()
            raise error_from_reply(reply)

    def _admin_token(self) -> str | None:
        """The admin token, or the agent token when it cannot be read (the daemon
        then decides, and says what is missing)."""
        try:
            return read_admin_token(self.socket_path)
        except OSError:
            return self.token

    def wait_ready(self, timeout: float = START_TIMEOUT) -> DaemonStatus:
        """Wait (bounded) until the daemon has finished recovering its journal."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status.state == "ready":
                return status
            if time.monotonic() > deadline:
                raise Unavailable(f"engramd is still {status.state} after {timeout:g}s")
            time.sleep(0.01)

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

    @property
    def connected(self) -> bool:
        return self._sock is not None

    @property
    def daemon_pid(self) -> int | None:
        """The daemon's pid, from the handshake."""
        welcome = self._protocol.welcome if self._protocol else None
        return welcome.pid if welcome else None

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
        self._early.clear()
        self._pushes.clear()

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the request loop ---------------------------------------------------

    def _send_bytes(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except TimeoutError:
            raise ClientTimeout(f"engramd did not take a request within {self.timeout}s") from None
        except OSError as exc:
            parting = self._parting_error()
            self.close()
            if parting is not None:
                raise parting from None
            raise Unavailable(f"lost the connection to engramd: {exc.strerror}") from None

    def _parting_error(self) -> EngramError | None:
        """The error frame a daemon sent before closing on us (say, too many connections).

        A write can fail because the daemon already hung up; what it said first
        may still wait in the socket and is the better answer.
        """
        assert self._sock is not None and self._protocol is not None
        try:
            self._sock.settimeout(0.5)
            while True:
                data = self._sock.recv(_RECEIVE_SIZE)
                self._protocol.receive_data(data)
                event = self._protocol.next_event()
                if isinstance(event, ErrorReply):
                    return error_from_reply(event)
                if not data:
                    return None
        except (OSError, ProtocolError):
            return None

    def _next_message(self) -> ServerMessage:
        assert self._sock is not None and self._protocol is not None
        protocol = self._protocol
        while True:
            try:
                event = protocol.next_event()
            except ProtocolError as exc:
                self.close()
                raise Unavailable(f"protocol error: {exc}") from None
            if event is NEED_DATA:
                try:
                    data = self._sock.recv(_RECEIVE_SIZE)
                except TimeoutError:
                    raise ClientTimeout(
                        f"engramd did not answer within {self.timeout}s"
                    ) from None
                except OSError as exc:
                    self.close()
                    raise Unavailable(
                        f"lost the connection to engramd: {exc.strerror}"
                    ) from None
                protocol.receive_data(data)
                continue
            if event is CLOSED:
                self.close()
                raise Unavailable("engramd closed the connection")
            assert isinstance(event, ServerMessage)
            return event

    def send(self, request: ClientMessage) -> int:
        """Send *request* without waiting (pipelining); returns its id."""
        self.connect()
        assert self._protocol is not None
        self._send_bytes(self._protocol.send(request))
        return request.id

    def receive(self, request_id: int) -> ServerMessage:
        """Wait for the reply to *request_id*, keeping others that arrive first."""
        while request_id not in self._early:
            self._route(self._next_message())
        return self._early.pop(request_id)

    def next_push(self, subscription: int) -> Push:
        """The next event, heartbeat or lag notice pushed for *subscription* (blocking)."""
        queue = self._pushes.setdefault(subscription, collections.deque())
        while not queue:
            self._route(self._next_message())
        return queue.popleft()

    def _route(self, message: ServerMessage) -> None:
        """File a message under its request id or its subscription."""
        if isinstance(message, EventPush | Heartbeat | Lagged):
            self._pushes.setdefault(message.subscription, collections.deque()).append(message)
            return
        if isinstance(message, LeaseLost):
            self._lost.append(message)
            return
        message_id = getattr(message, "id", None)
        if isinstance(message, ErrorReply) and message_id is None:
            # The daemon is closing this connection and says why.
            self.close()
            raise error_from_reply(message)
        if message_id is not None:
            self._early[message_id] = message

    def request(self, request: ClientMessage, expect: type[ReplyT]) -> ReplyT:
        """Send *request*, wait for its reply, and raise if it is an error."""
        return self.expect(self.receive(self.send(request)), request, expect)

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

    def expect(self, reply: ServerMessage, request: ClientMessage,
               expect: type[ReplyT]) -> ReplyT:
        """*reply* as the answer to *request*; raises if it is an error or of another kind."""
        return reply_as(reply, request, expect)

    def next_id(self) -> int:
        self.connect()
        assert self._protocol is not None
        return self._protocol.allocate_id()

    # -- operations ---------------------------------------------------------

    def ping(self) -> Pong:
        return self.request(Ping(id=self.next_id()), Pong)

    def status(self) -> DaemonStatus:
        return self.request(GetStatus(id=self.next_id()), DaemonStatus)

    def stats(self) -> DaemonStats:
        """Counters, gauges and latency histograms (see SPECS.md, engram stats)."""
        return self.request(GetStats(id=self.next_id()), DaemonStats)

    def shutdown(self) -> ShuttingDown:
        """Ask the daemon to stop; it answers before it goes."""
        return self.request(Shutdown(id=self.next_id()), ShuttingDown)

    # -- journal --------------------------------------------------------------

    def create_unit(self, context_id: str, type: str = "MESSAGE", payload: Payload = b"",
                    **options: Any) -> Unit:
        """Write one unit; see :func:`engram_cli.requests.draft` for the options."""
        return self.create_units([requests.draft(context_id, type, payload, **options)]).units[0]

    def create_units(self, drafts: Iterable[UnitDraft]) -> UnitsCreated:
        """Write units all or nothing, with one fsync."""
        return self.request(requests.create_units(self.next_id(), drafts), UnitsCreated)

    def get_units(self, unit_ids: Iterable[str]) -> UnitsFound:
        return self.request(GetUnits(id=self.next_id(), ids=list(unit_ids)), UnitsFound)

    def get_unit(self, unit_id: str) -> Unit:
        """One unit; raises :class:`~engram_cli.errors.NotFound` when it does not exist."""
        found = self.get_units([unit_id])
        if not found.units:
            raise NotFound(f"no unit {unit_id}")
        return found.units[0]

    def list_units(self, context_id: str, **options: Any) -> UnitPage:
        """A context's units; see :func:`engram_cli.requests.list_units` for the options."""
        return self.request(requests.list_units(self.next_id(), context_id, **options), UnitPage)

    def related_units(self, unit_id: str, **options: Any) -> RelatedFound:
        return self.request(requests.related_units(self.next_id(), unit_id, **options),
                            RelatedFound)

    def create_context(self, context_id: str | None = None, **options: Any) -> Context:
        return self.request(requests.create_context(self.next_id(), context_id, **options),
                            ContextFound).context

    def get_context(self, context_id: str) -> Context:
        return self.request(GetContext(id=self.next_id(), context_id=context_id),
                            ContextFound).context

    def list_contexts(self, **options: Any) -> ContextPage:
        return self.request(requests.list_contexts(self.next_id(), **options), ContextPage)

    def update_context(self, context_id: str, **changes: Any) -> Context:
        """Rename, add or remove agents, pin or unpin units, set or unset meta."""
        return self.request(requests.update_context(self.next_id(), context_id, **changes),
                            ContextFound).context

    def context_info(self, context_id: str) -> ContextFound:
        """A context with who is watching it right now (``watching``)."""
        return self.request(GetContext(id=self.next_id(), context_id=context_id), ContextFound)

    # -- the live stream ------------------------------------------------------

    def subscribe(self, **options: Any) -> Subscription:
        """Start a subscription; iterate it for events (see :mod:`engram_cli.stream`)."""
        request = requests.subscribe(self.next_id(), **options)
        return Subscription(self, request, self.request(request, Subscribed))

    def unsubscribe(self, subscription: int) -> None:
        self.request(Unsubscribe(id=self.next_id(), subscription=subscription), Done)
        self._pushes.pop(subscription, None)

    def ack_cursor(self, name: str, seq: int) -> None:
        """Record that the named cursor has processed every event up to *seq*."""
        self.request(AckCursor(id=self.next_id(), cursor=name, seq=seq), Done)

    # -- leases ---------------------------------------------------------------

    def acquire_lock(self, resources: str | Iterable[str], *, ttl: float | None = None,
                     wait: float | None = 0.0, bind_connection: bool = False,
                     pid: int | None = None) -> list[Lease]:
        """Lease every resource together or none; ``wait`` seconds in line (0: try once,
        None: as long as it takes). The lease belongs to this connection, or with
        ``pid`` to that process (two connections of one process are then one holder).

        Raises ``LockHeld`` (held, no wait), ``Timeout`` (waited), ``Deadlock``.
        """
        names = [resources] if isinstance(resources, str) else list(resources)
        request = AcquireLock(id=self.next_id(), resources=names, ttl=ttl, wait=wait,
                              bind_connection=bind_connection, pid=pid)
        # The reply comes when the wait ends: allow for it on top of our own timeout.
        reply_timeout = None if wait is None or self.timeout is None else wait + self.timeout
        with self.reply_timeout(reply_timeout):
            return self.request(request, LocksGranted).leases

    def release_lock(self, lock_id: str, resource: str | None = None) -> None:
        """End a lease; with *resource*, only if the lease is on that resource."""
        self.request(ReleaseLock(id=self.next_id(), lock_id=lock_id, resource=resource), Done)

    def renew_lock(self, lock_id: str, ttl: float | None = None,
                   resource: str | None = None) -> Lease:
        """Extend a lease (and adopt it on this connection if its own has gone)."""
        return self.request(RenewLock(id=self.next_id(), lock_id=lock_id, ttl=ttl,
                                      resource=resource), LeaseRenewed).lease

    def break_lock(self, resource: str, reason: str) -> None:
        self.request(BreakLock(id=self.next_id(), resource=resource, reason=reason), Done)

    def get_lock(self, resource: str) -> LockState:
        return self.request(GetLock(id=self.next_id(), resource=resource), LockFound).state

    def list_locks(self, *, agent: str | None = None, prefix: str = "") -> list[LockState]:
        return self.request(ListLocks(id=self.next_id(), agent=agent, prefix=prefix),
                            LockPage).locks

    # -- search -----------------------------------------------------------------

    def search(self, query: str = "", **options: Any) -> SearchResults:
        """Ranked search; options are the fields of :class:`engramd.protocol.Search`."""
        return self.request(Search(id=self.next_id(), query=query, **options), SearchResults)

    def reindex(self) -> None:
        """Rebuild the search index from the store (it catches up in the background)."""
        self.request(Reindex(id=self.next_id()), Done)

    def create_token(self, agent: str) -> TokenCreated:
        """Issue a token for *agent*; needs a client made with ``admin=True``."""
        return self.request(CreateToken(id=self.next_id(), agent=agent), TokenCreated)

    def list_tokens(self) -> list[TokenInfo]:
        return self.request(ListTokens(id=self.next_id()), TokenPage).tokens

    def revoke_tokens(self, *, agent: str | None = None,
                      token_id: str | None = None) -> list[TokenInfo]:
        """Revoke one token by id, or every token of *agent*; their connections close."""
        request = RevokeTokens(id=self.next_id(), agent=agent, token_id=token_id)
        return self.request(request, TokensRevoked).tokens

    def lease_lost(self, timeout: float | None) -> LeaseLost | None:
        """Wait up to *timeout* for the daemon to say a lease of ours was lost."""
        if self._lost:
            return self._lost.popleft()
        if self._sock is None:
            raise Unavailable("not connected to engramd")
        self._sock.settimeout(timeout)
        try:
            while not self._lost:
                self._route(self._next_message())
        except ClientTimeout:
            return None
        finally:
            if self._sock is not None:
                self._sock.settimeout(self.timeout)
        return self._lost.popleft()

    def watch(self, **options: Any) -> Iterator[Event | Heartbeat]:
        """Events (and heartbeats) for good, reconnecting across daemon restarts.

        See :func:`engram_cli.stream.watch` for the options.
        """
        return watch(self, **options)
