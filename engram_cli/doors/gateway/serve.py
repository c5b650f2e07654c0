"""Run the gateway: hypercorn's trio worker serving the Starlette app until SIGINT or
SIGTERM, then a graceful stop (requests in flight finish, streams end)."""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from engram_cli.doors.gateway.auth import Authenticator
from engram_cli.doors.gateway.link import DaemonLink
from engram_cli.doors.gateway.policy import ListenAddress, Origins
from engram_cli.doors.gateway.routes import MAX_BODY, Gateway, build_app

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


async def serve(settings: Settings, on_listening: Callable[[list[str]], None]) -> None:
    """Serve until a stop signal; *on_listening* gets the bound URLs once they are."""
    config = Config()
    config.bind = [settings.listen.bind]
    config.accesslog = None
    config.loglevel = "WARNING"  # its start line repeats ours
    config.graceful_timeout = GRACEFUL_STOP
    config.include_server_header = False
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
                          gateway_agent=settings.auth.default_agent, env=settings.env)
        gateway = Gateway(link=link, auth=settings.auth, origins=settings.origins,
                          max_body=settings.max_body, stopping=stop)

        async def run(task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await hypercorn_serve(build_app(gateway), config,  # type: ignore[arg-type]
                                      shutdown_trigger=stop.wait, task_status=task_status)
            finally:
                # The daemon connections' readers live in this nursery: close them.
                await link.aclose()

        on_listening(await nursery.start(run))
