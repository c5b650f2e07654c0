"""Run the gateway: the Starlette app built from every route (:func:`build_app`), served
by hypercorn's trio worker until SIGINT or SIGTERM, then a graceful stop (requests in
flight finish, streams end)."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import resource
import signal
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from engram_cli.doors.gateway import framing, openapi, query, streams
from engram_cli.doors.gateway.auth import Authenticator
from engram_cli.doors.gateway.guard import Guard
from engram_cli.doors.gateway.link import CONNECTIONS, STREAM_MEMORY, DaemonLink
from engram_cli.doors.gateway.policy import (
    METHOD_NOT_ALLOWED,
    UPGRADE_REQUIRED,
    ListenAddress,
    Origins,
)
from engram_cli.doors.gateway.replies import error_response, json_response
from engram_cli.doors.gateway.routes import QUERY, ROUTES
from engram_cli.doors.gateway.shares import STREAMS_PER_AGENT, TICKETS_PER_AGENT, StreamShares
from engram_cli.doors.gateway.state import (
    BODY_TIMEOUT,
    MAX_BODY,
    ClientLeft,
    Gateway,
    Handler,
    Tickets,
)
from engramd.protocol import BadRequest, EngramError, NotFound

log = logging.getLogger("engram.gateway")

GRACEFUL_STOP = 5.0
"""Seconds requests in flight get to finish after SIGTERM (streams are ended)."""


@dataclass(frozen=True)
class Settings:
    listen: ListenAddress
    socket_path: str
    auth: Authenticator
    origins: Origins
    env: Mapping[str, str]
    max_body: int = MAX_BODY
    daemon_connections: int = CONNECTIONS
    stream_stall: float = 60.0
    stream_memory: int = STREAM_MEMORY
    body_timeout: float = BODY_TIMEOUT
    reveal_paths: bool = True
    """Whether callers may read this machine's paths (the daemon's socket) in errors."""
    streams_per_agent: int = STREAMS_PER_AGENT
    tickets_per_agent: int = TICKETS_PER_AGENT


class CannotListen(Exception):
    """The gateway cannot listen where it was told (a port in use, an address not this
    machine's, a port it may not take): one line, exit 2, before anything is served."""


class _Config(Config):
    """hypercorn's settings, its listening sockets with ``TCP_USER_TIMEOUT``: a client
    that leaves what was sent to it unread (a full window) longer than
    ``--stream-stall`` is cut off by the kernel. hypercorn's writes cannot be cancelled
    (they are shielded), so this is the one bound on a write to a stalled client.

    The sockets are bound by :meth:`bind_now` before the server's tasks start, so that a
    failure to listen is :class:`CannotListen`, not a traceback from inside them."""

    user_timeout: float = 60.0
    bound: Sockets | None = None

    def bind_now(self) -> None:
        sockets: list[socket.socket] = []
        for bind in self.bind:
            try:
                sockets += self._create_sockets([bind])
            except OSError as exc:
                for sock in sockets:
                    sock.close()
                raise CannotListen(_why_not(bind, exc)) from None
        milliseconds = max(1, int(self.user_timeout * 1000))
        for sock in sockets:
            with contextlib.suppress(OSError, AttributeError):  # not Linux: no bound
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, milliseconds)
        self.bound = Sockets([], sockets, [])

    def create_sockets(self) -> Sockets:
        if self.bound is None:
            self.bind_now()
        assert self.bound is not None
        return self.bound


def _why_not(bind: str, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {bind} is in use (--listen HOST:PORT for another; port 0: any free one)"
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EADDRNOTAVAIL:
        reason += " (not an address of this machine)"
    elif exc.errno == errno.EACCES:
        reason += " (ports under 1024 need privileges)"
    return f"cannot listen on {bind}: {reason}"


class _OutOfFiles(logging.Filter):
    """trio's accept loop reports EMFILE (and its kin) with a traceback ten times a
    second while the process is out of file descriptors: one line, once a minute."""

    INTERVAL = 60.0

    def __init__(self) -> None:
        super().__init__()
        self._said = -math.inf

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._said < self.INTERVAL:
            return False
        self._said = now
        limit = _open_files_limit()
        record.msg = ("engram gateway: out of file descriptors (%s; the limit is %s): new "
                      "connections wait until some close (said at most once a minute)")
        record.args = (record.args[0] if isinstance(record.args, tuple) and record.args
                       else "EMFILE", limit)
        record.exc_info = record.exc_text = None
        return True


def _open_files_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _raise_open_files() -> None:
    """The soft limit on open files up to the hard one: each HTTP connection is one (the
    limit is a safety net, not a budget; engramd's connections are few)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def bind(settings: Settings) -> Config:
    """hypercorn's settings for *settings*, the listening sockets bound:
    :class:`CannotListen` when they cannot be (before anything else is done)."""
    config = _Config()
    config.user_timeout = settings.stream_stall
    config.bind = settings.listen.binds
    config.accesslog = None
    config.loglevel = "WARNING"  # its start line repeats ours
    config.graceful_timeout = GRACEFUL_STOP
    config.include_server_header = False
    config.bind_now()
    return config


async def serve(settings: Settings, config: Config,
                on_listening: Callable[[list[str]], None]) -> None:
    """Serve on *config*'s sockets (:func:`bind`) until a stop signal; *on_listening*
    gets the bound URLs once they listen."""
    _raise_open_files()
    framing.install()
    logging.getLogger("trio.serve_listeners").addFilter(_OutOfFiles())
    stop = trio.Event()
    # Received for the whole run: a second SIGTERM during the graceful stop (a
    # supervisor repeating itself) must not kill the process half way through.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_first_signal, signals, stop)
            await _serve(settings, config, stop, on_listening)
            nursery.cancel_scope.cancel()


async def _first_signal(signals: Any, stop: trio.Event) -> None:
    async for _ in signals:
        stop.set()


async def _serve(settings: Settings, config: Config, stop: trio.Event,
                 on_listening: Callable[[list[str]], None]) -> None:
    async with trio.open_nursery() as nursery:
        link = DaemonLink(settings.socket_path, nursery,
                          gateway_agent=settings.auth.default_agent, env=settings.env,
                          connections=settings.daemon_connections,
                          stream_memory=settings.stream_memory,
                          reveal_paths=settings.reveal_paths)
        gateway = Gateway(link=link, auth=settings.auth, origins=settings.origins,
                          max_body=settings.max_body, stopping=stop,
                          stream_stall=settings.stream_stall,
                          body_timeout=settings.body_timeout,
                          tickets=Tickets(settings.tickets_per_agent),
                          streams=StreamShares(settings.streams_per_agent))

        async def run(task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await hypercorn_serve(build_app(gateway), config,  # type: ignore[arg-type]
                                      shutdown_trigger=stop.wait, task_status=task_status)
            finally:
                # The daemon connections' readers live in this nursery: close them.
                await link.aclose()

        on_listening(await nursery.start(run))


def _endpoint(gw: Gateway, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    takes = query.parameters(QUERY.get(handler.__name__))

    async def endpoint(request: Request) -> Response:
        try:
            if request.path_params:
                _utf8_segments(request.scope.get("raw_path"))
            query.known(request, takes)
            return await handler(gw, request)
        except EngramError as exc:
            return error_response(exc)
        except ClientLeft:
            log.debug("%s %s: the client left before its body was read", request.method,
                      request.url.path)
            return Response(status_code=400)  # no one reads it

    endpoint.__name__ = handler.__name__
    return endpoint


def _utf8_segments(raw_path: bytes | None) -> None:
    """BadRequest naming the first segment of the path that is not UTF-8 once
    percent-decoded (``%ff``): the decoded path has U+FFFD in its place, which a path
    parameter (a resource, an id) must not be taken for."""
    for segment in (raw_path or b"").split(b"/"):
        try:
            urllib.parse.unquote_to_bytes(segment).decode("utf-8")
        except UnicodeDecodeError:
            shown = segment.decode("latin-1")
            raise BadRequest(f"the path segment {shown[:200]!r} is not UTF-8 once "
                             "percent-decoded (a name or id in a path is UTF-8 text, "
                             "percent-encoded)") from None


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405, in the one JSON error shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        response = json_response({"error": {"code": METHOD_NOT_ALLOWED, "message": (
            f"{request.method} is not allowed on {request.url.path}")}}, 405)
        response.headers.update(exc.headers or {})
        return response
    return error_response(NotFound(f"no endpoint {request.url.path[:200]} (GET "
                                   "/openapi.json lists them)") if exc.status_code == 404
                          else EngramError(str(exc.detail), BadRequest.code))


async def _not_a_handshake(request: Request) -> Response:
    """``GET /stream`` without a WebSocket handshake: 426, saying what it is."""
    response = error_response(EngramError(
        "/stream is a WebSocket: open it with a WebSocket client (GET with Upgrade: "
        "websocket); /stream-sse is the same stream as Server-Sent Events",
        UPGRADE_REQUIRED))
    response.headers.update({"Upgrade": "websocket", "Connection": "Upgrade"})
    return response


class _Rest(PathConvertor):
    """The rest of the path, line breaks included (a resource may hold one; ``path``'s
    ``.*`` stops at one, and the lease would be out of reach)."""

    regex = "[\\s\\S]*"


register_url_convertor("rest", _Rest())


def build_app(gw: Gateway) -> Starlette:
    routes: list[Any] = [Route(path.replace(":path}", ":rest}"), _endpoint(gw, handler),
                               methods=methods)
                         for path, methods, handler in [*ROUTES, openapi.ROUTE]]
    sse = streams.sse_endpoint(gw)
    routes += [Route("/stream-sse", sse, methods=["GET"]),
               Route("/stream/sse", sse, methods=["GET"]),
               WebSocketRoute("/stream", streams.websocket_endpoint(gw)),
               Route("/stream", _not_a_handshake, methods=["GET"])]
    middleware = [Middleware(Guard, origins=gw.origins, tally=gw.tally)]
    if gw.origins.cors:
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=sorted(gw.origins.cors),
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "X-Agent-ID"]))
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={HTTPException: _http_error})
    app.router.redirect_slashes = False  # /workunit/ is no endpoint, not a redirect
    return app
