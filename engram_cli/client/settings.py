"""How a client finds the daemon and names itself, from arguments and the environment."""

from __future__ import annotations

import contextlib
import getpass
import os
from collections.abc import Mapping

import msgspec

from engramd.protocol import (
    ClientConnection,
    EngramError,
    SocketPathTooLong,
    Unavailable,
    admin_token_path,
    resolve_socket_path,
)


def default_agent_id(env: Mapping[str, str]) -> str:
    """``ENGRAM_AGENT``, else the user name."""
    agent = env.get("ENGRAM_AGENT")
    if agent:
        return agent
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"


def autostart_enabled(env: Mapping[str, str]) -> bool:
    """False when ``ENGRAM_NO_AUTOSTART`` is set to anything but 0 or empty."""
    return env.get("ENGRAM_NO_AUTOSTART", "") in ("", "0")


def find_socket(explicit: str | None, env: Mapping[str, str]) -> str:
    """The socket path, by the same rules as engramd (raises ``SocketPathTooLong``)."""
    return resolve_socket_path(explicit, env, os.getuid())


def default_token(env: Mapping[str, str]) -> str | None:
    """``ENGRAM_TOKEN``: the agent token to present in the handshake, if any."""
    return env.get("ENGRAM_TOKEN") or None


def read_admin_token(socket_path: str) -> str:
    """The running daemon's admin token, from the 0600 file beside its socket.

    Raises:
        OSError: the file is missing or unreadable.
    """
    with open(admin_token_path(socket_path), encoding="ascii") as file:
        return file.read().strip()


class Target(msgspec.Struct, kw_only=True):
    """Where a client connects and who it says it is: resolved once, for both clients.

    (A msgspec Struct, not a dataclass: the command line builds this class at every
    start, and a dataclass costs it ten times as much.)

    Args:
        socket_path: the daemon's socket; by default ``ENGRAM_SOCKET``, else the
            XDG rules (see SPECS.md).
        agent_id: who the client acts as; by default ``ENGRAM_AGENT``, else the
            user name.
        client_name: a label for the daemon's logs.
        autostart: start engramd when nothing answers; by default on unless
            ``ENGRAM_NO_AUTOSTART=1``.
        token: the agent token to present; by default ``ENGRAM_TOKEN``.
        admin: present the daemon's admin token instead (read from beside the
            socket; token management needs it).
        delegated: with ``admin``, act as ``agent_id`` with that agent's rights only
            (what a gateway does for a caller it has authenticated).
    """

    socket_path: str
    agent_id: str
    client_name: str
    autostart: bool
    token: str | None
    admin: bool
    env: Mapping[str, str]
    delegated: bool = False
    window: int = 0
    """Each subscription pushes at most this many messages ahead of the grants
    (``subscription.grant``); 0: no window (see ``Hello.window``)."""

    @classmethod
    def resolve(cls, socket_path: str | None = None, *, agent_id: str | None = None,
                client_name: str, autostart: bool | None = None, token: str | None = None,
                admin: bool = False, env: Mapping[str, str] | None = None) -> Target:
        env = os.environ if env is None else env
        try:
            path = find_socket(socket_path, env)
        except SocketPathTooLong as exc:
            raise EngramError(str(exc)) from None
        return cls(socket_path=path, agent_id=agent_id or default_agent_id(env),
                   client_name=client_name,
                   autostart=autostart_enabled(env) if autostart is None else autostart,
                   token=token or default_token(env), admin=admin, env=env)

    def conversation(self) -> ClientConnection:
        """A fresh sans-IO connection whose hello names this target's agent and token.

        With ``admin``, the admin token, or the agent token when it cannot be read
        (the daemon then decides, and says what is missing).
        """
        token = self.token
        if self.admin:
            with contextlib.suppress(OSError):
                token = read_admin_token(self.socket_path)
        return ClientConnection(client_name=self.client_name, agent_id=self.agent_id,
                                token=token, delegated=self.delegated, window=self.window)

    def unreachable(self, exc: OSError) -> Unavailable:
        """The error for a socket that nothing answers on (and that we may not start)."""
        return Unavailable(f"engramd is not running on {self.socket_path} ({exc.strerror}); "
                           "start it with 'engram daemon start'")
