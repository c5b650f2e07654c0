"""The gateway's rules that need no network: where it may listen, which ``Host`` and
``Origin`` it answers, and which HTTP status each of engram's error codes becomes."""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field

from engramd.protocol import ErrorCode, TooLarge

DEFAULT_LISTEN = "127.0.0.1:8080"

STATUS_FOR_CODE: dict[str, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.LOCK_HELD: 409,
    ErrorCode.DEADLOCK: 409,
    ErrorCode.TIMEOUT: 409,  # the wait asked for ran out: the resource is still held
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.VERSION_MISMATCH: 503,
    ErrorCode.INTERNAL: 500,
}
UNAUTHENTICATED = "unauthenticated"
"""The gateway's own code (401): no credentials, or credentials it does not accept."""
METHOD_NOT_ALLOWED = "method_not_allowed"
"""The gateway's own code (405): the path exists, not with that method."""
UPGRADE_REQUIRED = "upgrade_required"
"""The gateway's own code (426): a plain request to the WebSocket's path."""
REQUEST_TIMEOUT = "request_timeout"
"""The gateway's own code (408): the request's body did not come whole in time."""
NOT_IMPLEMENTED = "not_implemented"
"""The gateway's own code (501): a transfer coding it does not read (RFC 9112 §6.1)."""

_RETRY_IN = re.compile(r"retry in ([0-9.]+)s")


def status_for(code: str) -> int:
    """The HTTP status for an engram error code (an unknown code is a 500, as ``internal``)."""
    if code == UNAUTHENTICATED:
        return 401
    if code == METHOD_NOT_ALLOWED:
        return 405
    if code == UPGRADE_REQUIRED:
        return 426
    if code == REQUEST_TIMEOUT:
        return 408
    if code == NOT_IMPLEMENTED:
        return 501
    return STATUS_FOR_CODE.get(code, 500)


def too_large(max_body: int) -> TooLarge:
    """A request body over ``--max-body`` (413)."""
    return TooLarge(f"request body over {max_body} bytes (--max-body)")


def retry_after(message: str) -> int:
    """Whole seconds for ``Retry-After`` from a ``rate_limited`` or ``unavailable``
    message's "retry in Ns" (at least 1; 1 when it names none)."""
    found = _RETRY_IN.search(message)
    return max(1, math.ceil(float(found.group(1)))) if found else 1


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        """``HOST:PORT`` (``[v6]:PORT`` for IPv6); raises ValueError with the reason."""
        host, sep, port = text.rpartition(":")
        if not sep or not port.isascii() or not port.isdigit() or int(port) > 65535 \
                or not _host(host):
            raise ValueError(f"--listen must be HOST:PORT (an IPv6 address in brackets: "
                             f"[::1]:8080), not {text!r}")
        return cls(host.removeprefix("[").removesuffix("]"), int(port))

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a name other than localhost may resolve anywhere

    @property
    def bind(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def binds(self) -> list[str]:
        """What to bind: ``localhost`` is both loopbacks, IPv4 and IPv6 (with a port of
        its own, both on that port; with port 0, IPv4 alone: one free port each would
        be two addresses)."""
        if self.host == "localhost":
            if self.port == 0:
                return [f"127.0.0.1:{self.port}"]
            return [f"127.0.0.1:{self.port}", f"[::1]:{self.port}"]
        return [self.bind]


def check_exposure(address: ListenAddress, *, allow_remote: bool, auth: str) -> None:
    """Refuse (ValueError) to listen beyond loopback unless asked to and authenticating."""
    if address.loopback:
        return
    if not allow_remote:
        raise ValueError(f"{address.host} is not a loopback address: give --allow-remote "
                         "(and --auth token or jwt) to listen on it")
    if auth == "none":
        raise ValueError("--allow-remote needs authentication: --auth token or --auth jwt")


_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$", re.IGNORECASE)


def _host(text: str) -> bool:
    """A host as a URL names it: a name, an IPv4 address, an IPv6 one in brackets."""
    if text.startswith("[") and text.endswith("]"):
        try:
            return ipaddress.ip_address(text[1:-1]).version == 6
        except ValueError:
            return False
    return ":" not in text and bool(_HOSTNAME.match(text)) and len(text) <= 253


def parse_origin(text: str) -> str:
    """A browser origin for ``--cors-origin``: ``http(s)://host[:port]`` as a browser
    sends it in ``Origin`` (lower case, no trailing ``/``); ValueError otherwise."""
    origin = text.lower().removesuffix("/")
    scheme, sep, rest = origin.partition("://")
    host, colon, port = rest.rpartition(":") if not rest.endswith("]") else (rest, "", "")
    if not colon:
        host = rest
    elif not (port.isascii() and port.isdigit() and 0 < int(port) <= 65535):
        host = ""
    if not sep or scheme not in ("http", "https") or not _host(host):
        wildcard = " (* is not one: name each origin)" if text.strip() == "*" else ""
        raise ValueError(f"--cors-origin must be an origin, scheme://host[:port] with "
                         f"http or https and no path, not {text!r:.80}{wildcard}")
    return origin


def _ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
        return True
    except ValueError:
        return False


def _split_port(host: str) -> str:
    """``name:port`` -> ``name`` (``[v6]:port`` -> ``[v6]``)."""
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and (not name.startswith("[") or name.endswith("]")):
        return name
    return host


@dataclass(frozen=True)
class Origins:
    """``Host`` and ``Origin`` rules against DNS rebinding and cross-site requests.

    A request must name the gateway in ``Host`` by an IP address, ``localhost``, or
    a name given with ``--allow-host``: DNS rebinding needs a name the attacker
    controls, which is none of these. A browser's ``Origin`` must be one of the
    configured origins (CORS is granted to those alone) or the gateway's own.
    """

    hosts: frozenset[str] = field(default_factory=frozenset)
    """Extra names (``--allow-host``) that ``Host`` may carry, with or without a port."""
    cors: frozenset[str] = field(default_factory=frozenset)
    """Origins (``scheme://host[:port]``) allowed to call from a browser."""

    def host_allowed(self, host: str | None) -> bool:
        if not host:
            return False
        name = _split_port(host.lower())
        return name == "localhost" or _ip_literal(name) or name in self.hosts \
            or host.lower() in self.hosts

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """No ``Origin`` (not a browser, or a same-origin GET) is allowed."""
        if origin is None:
            return True
        origin = origin.lower().rstrip("/")
        if origin in self.cors:
            return True
        scheme, sep, rest = origin.partition("://")
        return bool(sep) and scheme in ("http", "https") and host is not None \
            and rest == host.lower()
