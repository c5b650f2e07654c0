"""What every HTTP and WebSocket request passes before any endpoint: the ``Host`` and
``Origin`` checks, and the request tally that ``/metrics`` reports."""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import MutableMapping
from typing import Any

import h11
import trio

from engram_cli.doors.gateway.policy import Origins, status_for
from engram_cli.doors.gateway.replies import error_response
from engramd.protocol import EngramError, Forbidden, InternalError

log = logging.getLogger("engram.gateway")

Scope = dict[str, Any]
Receive = Any
Send = Any


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""The methods counted by name; any other is counted as ``other``."""


def method_label(scope: Scope) -> str:
    """A request's ``method`` label: a known method, ``WS`` for a WebSocket handshake,
    else ``other``: a client choosing its method (any token will do) must not choose
    the number of series ``/metrics`` holds."""
    if scope["type"] == "websocket":
        return "WS"
    method = scope.get("method", "")
    return method if method in METHODS else "other"


def route_label(scope: Scope) -> str:
    """A request's ``route`` label: the path template of the endpoint it reached (also
    when the method was wrong), ``unmatched`` for any path no endpoint has: never the
    path a client chose."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else "unmatched"


class Tally:
    """The gateway's own counters, in Prometheus text beside the daemon's. Their labels
    take a bounded set of values whatever clients send (:func:`method_label`,
    :func:`route_label`)."""

    def __init__(self) -> None:
        self.requests: collections.Counter[tuple[str, str, int]] = collections.Counter()
        self.streams_open = 0

    def count(self, scope: Scope, route: str, status: int) -> None:
        self.requests[method_label(scope), route, status] += 1

    def prometheus_text(self, *, daemon_up: int, stream_bytes: int = 0,
                        stream_capacity: int = 0) -> str:
        lines = ["# HELP engram_gateway_daemon_up Whether the gateway reached engramd.",
                 "# TYPE engram_gateway_daemon_up gauge",
                 f"engram_gateway_daemon_up {daemon_up}",
                 "# HELP engram_gateway_streams_open Live SSE and WebSocket streams.",
                 "# TYPE engram_gateway_streams_open gauge",
                 f"engram_gateway_streams_open {self.streams_open}",
                 "# HELP engram_gateway_stream_capacity Streams the gateway may follow "
                 "at most (fewer than --daemon-connections x 64 when engramd holds its "
                 "connections to fewer).",
                 "# TYPE engram_gateway_stream_capacity gauge",
                 f"engram_gateway_stream_capacity {stream_capacity}",
                 "# HELP engram_gateway_stream_buffer_bytes Bytes of events the streams "
                 "hold for their clients.",
                 "# TYPE engram_gateway_stream_buffer_bytes gauge",
                 f"engram_gateway_stream_buffer_bytes {stream_bytes}",
                 "# HELP engram_gateway_http_requests_total HTTP requests answered.",
                 "# TYPE engram_gateway_http_requests_total counter"]
        for (method, route, status), count in sorted(self.requests.items()):
            lines.append(f'engram_gateway_http_requests_total{{method="{method}",'
                         f'route="{_escape(route)}",status="{status}"}} {count}')
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _NotWritten(Exception):
    """hypercorn would not write an answer on the connection (not a bug of the app)."""


class Guard:
    """ASGI middleware: refuse what no endpoint should see, count what they answer."""

    def __init__(self, app: Any, *, origins: Origins, tally: Tally) -> None:
        self.app = app
        self.origins = origins
        self.tally = tally

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1"): value.decode("latin-1")
                   for name, value in scope.get("headers", [])}
        refusal: EngramError | None = self._refusal(headers, scope.get("path", ""))
        if refusal is not None:
            if scope["type"] == "websocket":
                # Closing before accepting answers the handshake with 403.
                await send({"type": "websocket.close", "code": 1008})
            else:
                await error_response(refusal)(scope, receive, send)
            self.tally.count(scope, "refused", status_for(refusal.code))
            return
        status = 0

        async def counted(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            try:
                await send(message)
            except (h11.LocalProtocolError, trio.BusyResourceError) as exc:
                raise _NotWritten(exc) from None

        try:
            await self.app(scope, receive, counted)
        except _NotWritten as exc:
            # The connection's, not the app's: hypercorn answered it already (its own 400
            # to a WebSocket handshake with bytes behind it), or is writing to it.
            log.warning("an answer to %s %s was not written: %s", scope.get("method", "WS"),
                        scope.get("path", "")[:200], exc)
            status = status or 500
        except Exception:
            # A bug: logged once with its traceback, answered (if nothing was sent yet)
            # in the one JSON shape, and counted as the 500 it is.
            log.exception("internal error on %s %s", scope.get("method", "WS"),
                          scope.get("path", "")[:200])
            if not status and scope["type"] == "http":
                with contextlib.suppress(Exception):
                    await error_response(InternalError(
                        "internal error in the gateway; see its log"))(scope, receive, counted)
            status = status or 500
        finally:
            self.tally.count(scope, route_label(scope), status or 101)

    def _refusal(self, headers: dict[str, str], path: str) -> Forbidden | None:
        host = headers.get("host")
        if host is None:  # (HTTP/1.0: HTTP/1.1 without one never gets here)
            return Forbidden("a request without a Host header: name this gateway in one")
        if not self.origins.host_allowed(host):
            return Forbidden(f"Host {host!r:.80} is not this gateway's (--allow-host adds "
                             "a name)")
        if not self.origins.origin_allowed(headers.get("origin"), host):
            return Forbidden(f"Origin {headers.get('origin')!r:.80} is not allowed "
                             "(--cors-origin adds one)")
        # What another site's page makes a browser send without an Origin (an <img>, a
        # <script>, a link followed): its GETs may change state (GET /inbox consumes the
        # messages it returns). Only a link to the console's own pages (or to the root,
        # which leads there) is followed.
        if (headers.get("sec-fetch-site") in ("cross-site", "same-site")
                and "origin" not in headers
                and not (headers.get("sec-fetch-mode") == "navigate"
                         and (path in ("/", "/ui") or path.startswith("/ui/")))):
            return Forbidden("a request that another site's page made: refused "
                             "(Sec-Fetch-Site; --cors-origin allows a site's fetches)")
        return None
