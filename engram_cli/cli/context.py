"""What every command gets: the global options, a lazily connected client, an output.

No typer here: the hot commands (:mod:`.hot`) build a :class:`CliContext` without it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from engram_cli.cli.output import Output, note
from engram_cli.client.autostart import START_TIMEOUT
from engram_cli.client.blocking import DEFAULT_TIMEOUT, Client


class CliContext:
    """What the root command's options say, and the one client of this invocation.

    (A plain class: ``engram`` builds it at every start, where a dataclass would cost
    more than the rest of it.)"""

    def __init__(self, socket: str | None, agent: str | None, json: bool,
                 data_dir: str | None = None) -> None:
        self.socket = socket
        self.agent = agent
        self.json = json
        self.data_dir = data_dir
        self._client: Client | None = None

    @property
    def env(self) -> Mapping[str, str]:
        """The environment as the options say it: ``--data-dir`` is ``ENGRAM_DATA_DIR``
        for this command and for a daemon it starts (as git's ``--git-dir`` is
        ``GIT_DIR``)."""
        if not self.data_dir:
            return os.environ
        return {**os.environ, "ENGRAM_DATA_DIR": os.path.abspath(self.data_dir)}

    def client(self, *, autostart: bool | None = None, admin: bool = False,
               timeout: float | None = DEFAULT_TIMEOUT,
               start_timeout: float = START_TIMEOUT, connected: bool = True) -> Client:
        """A connected client (starting the daemon unless told not to); one that connects
        at its first request when not *connected* (a daemon away now may be back then)."""
        if self._client is None:
            client = Client(self.socket, agent_id=self.agent, client_name="engram-cli",
                            autostart=autostart, admin=admin, timeout=timeout,
                            start_timeout=start_timeout, env=self.env)
            if not connected:
                self._client = client
                return client
            client.connect()
            if client.stale:
                note(f"warning: {client.stale}")
            if client.notice:
                note(f"warning: {client.notice}")
            self._client = client
        return self._client

    def unconnected_client(self) -> Client:
        """An admin client (daemon management) that has not touched the socket yet."""
        return Client(self.socket, agent_id=self.agent, client_name="engram-cli",
                      autostart=False, admin=True, env=self.env)

    def output(self, json: bool = False) -> Output:
        return Output(json=json or self.json)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def get(ctx: Any) -> CliContext:
    """The invocation's context, from a ``typer.Context`` (typer is not imported here)."""
    obj = ctx.find_root().obj
    assert isinstance(obj, CliContext)
    return obj
