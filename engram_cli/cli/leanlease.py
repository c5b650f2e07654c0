"""The lease calls of ``engram lock run`` over the lean wire (:mod:`.leanwire`): the
few methods of the client library's :class:`~engram_cli.client.Client` that
:mod:`.lockrun` and :mod:`.waiting` call, sending the same requests, so that ``lock
run`` starts without msgspec and the protocol's types.

Its leases and notices are the daemon's fields read as attributes (what lock run reads
of a ``Lease`` and a ``LeaseLost``). Its errors are the library's, in its words. When
the daemon cannot be reached on a new connection (it went away while CMD ran), the
library's client takes over for good: it says why in its words, and it connects again
as it does (never starting a daemon of its own: lock run turns autostart off first).
"""

from __future__ import annotations

import contextlib
import os
import select

from engram_cli.cli import leanwire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

    from engram_cli.client import Client


class LeanLeaseClient:
    """The library client's lease calls on a greeted lean *connection*; *library* makes
    the library's client (not yet connected) when one is needed (see the module)."""

    def __init__(self, connection: leanwire.Connection, *, agent_id: str,
                 library: Callable[[], Client]) -> None:
        self._connection: leanwire.Connection | None = connection
        self._path = connection.path
        self._agent_id = agent_id
        self._make_library = library
        self._library: Client | None = None
        self._autostart = True
        self._timeout = connection.timeout
        self._asking = False
        # A wait for a notice is woken through this pipe, and the connection stays
        # (the release at the end goes on it).
        self._wake_read, self._wake_write = os.pipe()

    # -- what lock run sets and reads ---------------------------------------------------

    @property
    def autostart(self) -> bool:
        return self._library.autostart if self._library is not None else self._autostart

    @autostart.setter
    def autostart(self, value: bool) -> None:
        self._autostart = value
        if self._library is not None:
            self._library.autostart = value

    @property
    def timeout(self) -> float | None:
        return self._library.timeout if self._library is not None else self._timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._timeout = value
        if self._library is not None:
            self._library.timeout = value

    @property
    def connected(self) -> bool:
        if self._library is not None:
            return self._library.connected
        return self._connection is not None

    # -- the connection -----------------------------------------------------------------

    def connect(self) -> None:
        if self._library is not None:
            self._library.connect()
            return
        if self._connection is not None:
            return
        try:
            self._connection = leanwire.Connection(
                self._path, agent_id=self._agent_id,
                token=os.environ.get("ENGRAM_TOKEN") or None, timeout=self._timeout)
        except leanwire.Unreached:
            library = self._library = self._make_library()
            library.autostart, library.timeout = self._autostart, self._timeout
            library.connect()  # the library's words for why not (or it is back now)

    def interrupt(self) -> None:
        """Wake, from another thread, a wait for a notice (it returns None), or break a
        request under way (as the library does: it raises Unavailable)."""
        if self._library is not None:
            self._library.interrupt()
            return
        os.write(self._wake_write, b"!")
        if self._asking and self._connection is not None:
            self._connection.interrupt()

    def close(self) -> None:
        if self._library is not None:
            self._library.close()
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    @contextlib.contextmanager
    def reply_timeout(self, seconds: float | None) -> Iterator[None]:
        """Wait up to *seconds* (None: for good) for each reply inside this block."""
        if self._library is not None:
            with self._library.reply_timeout(seconds):
                yield
            return
        self.connect()
        saved, self._timeout = self._timeout, seconds
        try:
            yield
        finally:
            self._timeout = saved

    def _request(self, message: dict[str, Any], timeout: float | None) -> leanwire.Reply:
        self.connect()
        assert self._connection is not None
        self._asking = True
        try:
            return self._connection.request(message, timeout=timeout)
        except Exception as exc:
            from engram_cli.client.errors import Unavailable

            if isinstance(exc, Unavailable):  # (as the library: the connection has gone)
                self.close()
            raise
        finally:
            self._asking = False

    # -- the calls ----------------------------------------------------------------------

    def acquire_lock(self, resources: list[str], *, ttl: float | None = None,
                     wait: float | None = 0.0, pid: int | None = None,
                     pgid: int | None = None, shared: bool = False) -> list[Any]:
        if self._library is not None:
            return self._library.acquire_lock(resources, ttl=ttl, wait=wait, pid=pid,
                                              pgid=pgid, shared=shared)
        # AcquireLock as msgspec writes it: its defaults omitted (the float 0.0 of wait;
        # the int 0 is written), in the order of its fields.
        request: dict[str, Any] = {"msg": "lock.acquire", "id": 0, "resources": resources}
        if ttl is not None:
            request["ttl"] = ttl
        if not (type(wait) is float and wait == 0.0):
            request["wait"] = wait
        if pid is not None:
            request["pid"] = pid
        if pgid is not None:
            request["pgid"] = pgid
        if shared:
            request["shared"] = True
        # The answer comes when the wait ends: the library allows for it on top.
        timeout = self._timeout if wait == 0 or self._timeout is None \
            else None if wait is None else self._timeout + wait
        granted = self._request(request, timeout)
        return granted.read(lambda fields: [_lease(lease) for lease in fields["leases"]])

    def renew_lock(self, lock_id: str, ttl: float | None = None,
                   resource: str | None = None) -> Any:
        if self._library is not None:
            return self._library.renew_lock(lock_id, ttl, resource=resource)
        request: dict[str, Any] = {"msg": "lock.renew", "id": 0, "lock_id": lock_id}
        if ttl is not None:
            request["ttl"] = ttl
        if resource is not None:
            request["resource"] = resource
        renewed = self._request(request, self._timeout)
        return renewed.read(lambda fields: _lease(fields["lease"]))

    def release_lock(self, lock_id: str, resource: str | None = None) -> None:
        if self._library is not None:
            self._library.release_lock(lock_id, resource=resource)
            return
        request: dict[str, Any] = {"msg": "lock.release", "id": 0, "lock_id": lock_id}
        if resource is not None:
            request["resource"] = resource
        self._request(request, self._timeout)

    def lease_lost(self, timeout: float | None) -> Any:
        """Wait up to *timeout* for the daemon to say a lease of ours was lost."""
        if self._library is not None:
            return self._library.lease_lost(timeout)
        if self._connection is None:
            from engram_cli.client.errors import Unavailable

            raise Unavailable("not connected to engramd")
        connection = self._connection
        if not connection.notices and not connection.buffered():
            ready, _, _ = select.select([connection.fileno(), self._wake_read], [], [],
                                        timeout)
            if self._wake_read in ready:
                os.read(self._wake_read, 64)
                return None
            if not ready:
                return None
        try:
            notice = connection.notice(timeout)
        except Exception as exc:
            from engram_cli.client.errors import Unavailable

            if isinstance(exc, Unavailable):
                self.close()
            raise
        return None if notice is None else leanwire.Fields(notice)


LEASE_FIELDS = ("resource", "holder", "lock_id", "fencing_token", "ttl", "deadline_boottime",
                "pid", "holder_pid")
"""What lock run reads of a lease (so that a lease without them is told at once)."""


def _lease(fields: dict[str, Any]) -> leanwire.Fields:
    for name in LEASE_FIELDS:
        fields[name]  # (a KeyError: the daemon's answer is malformed)
    return leanwire.Fields(fields)
