"""The gateway's connections to engramd.

Requests of one identity share one connection (the trio client pipelines them),
so a caller's requests cost no handshake each. What belongs to a session of its
own gets a connection of its own, closed when its request ends: a lease or a
claim (two HTTP callers of one agent must wait for each other, as two scripts
do) and each live stream (a slow reader holds up only its own connection).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TypeVar

import trio

from engram_cli.client.asynchronous import AsyncClient, connect_to
from engram_cli.client.settings import Target
from engram_cli.doors.gateway.auth import Credentials, Unauthenticated
from engramd.protocol import ClientMessage, Forbidden, ServerMessage

R = TypeVar("R", bound=ServerMessage)

CONNECT_TIMEOUT = 2.0
MAX_SHARED = 256
"""Shared connections kept open at most (the least recently used closes first)."""


@contextlib.contextmanager
def refused_as_unauthenticated() -> Iterator[None]:
    """The daemon refusing a handshake (an unknown or revoked token, a token it
    requires) means the caller did not authenticate: 401, not 403."""
    try:
        yield
    except Forbidden as exc:
        raise Unauthenticated(str(exc)) from None


class DaemonLink:
    """Connections to one engramd, made as each request's credentials say."""

    def __init__(self, socket_path: str, nursery: trio.Nursery, *,
                 gateway_agent: str, env: Mapping[str, str]) -> None:
        self.socket_path = socket_path
        self.gateway_agent = gateway_agent
        self._nursery = nursery
        self._env = env
        self._shared: collections.OrderedDict[Credentials, AsyncClient] = \
            collections.OrderedDict()

    def _target(self, credentials: Credentials, *, admin: bool = False) -> Target:
        return Target(socket_path=self.socket_path, agent_id=credentials.agent_id,
                      client_name="engram-gateway", autostart=False,
                      token=credentials.token, admin=admin or credentials.delegated,
                      env=self._env, delegated=credentials.delegated)

    async def call(self, credentials: Credentials, request: ClientMessage[R]) -> R:
        """*request* on the shared connection of *credentials*."""
        client = self._shared.pop(credentials, None)
        if client is None or not client.usable:
            if client is not None:
                await client.aclose()
            client = AsyncClient(self._target(credentials), self._nursery, CONNECT_TIMEOUT)
        self._shared[credentials] = client
        while len(self._shared) > MAX_SHARED:
            _, oldest = self._shared.popitem(last=False)
            await oldest.aclose()
        try:
            with refused_as_unauthenticated():
                await client.connect()
        except BaseException:
            if self._shared.get(credentials) is client:
                del self._shared[credentials]
            await client.aclose()
            raise
        return await client.call(request)

    @contextlib.asynccontextmanager
    async def own(self, credentials: Credentials) -> AsyncIterator[AsyncClient]:
        """A connection of its own (a session of its own), closed on leaving."""
        async with contextlib.AsyncExitStack() as stack:
            with refused_as_unauthenticated():  # the handshake only, not what follows
                client = await stack.enter_async_context(
                    connect_to(self._target(credentials), CONNECT_TIMEOUT))
            yield client

    async def admin_call(self, request: ClientMessage[R], timeout: float) -> R:  # noqa: ASYNC109
        """*request* on a fresh connection as the socket's owner (the admin token beside
        the socket, if it can be read): readiness and statistics, whoever asks."""
        target = self._target(Credentials(agent_id=self.gateway_agent), admin=True)
        with trio.fail_after(timeout):
            async with connect_to(target, CONNECT_TIMEOUT) as client:
                return await client.call(request)

    async def aclose(self) -> None:
        while self._shared:
            _, client = self._shared.popitem()
            await client.aclose()
