"""How a client finds the daemon and names itself, from arguments and the environment."""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping

from engramd.protocol import admin_token_path, resolve_socket_path


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
