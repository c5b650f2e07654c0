"""How a client finds the daemon and names itself, from arguments and the environment."""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping

from engramd.protocol import resolve_socket_path


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
