"""``engramd``: arguments, logging, signals, and the daemon's lifetime.

Exit status: 0 after a clean stop, 1 when the daemon cannot start or fails,
2 for bad arguments or configuration, 3 when the journal is damaged (the one
line on standard error names the file, the offset and ``engramd --repair``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence

import trio
from trio import TaskStatus

from engramd import __version__
from engramd.backup import verify_command
from engramd.config import SETTINGS, ConfigError, DaemonConfig, load_config
from engramd.engine import Engine, open_engine
from engramd.errors import StartupError
from engramd.protocol import admin_token_path
from engramd.protocol.logline import format_line
from engramd.rebuild import rebuild_store
from engramd.repair import repair
from engramd.runtime import claim_runtime, ensure_private_dir
from engramd.server import Server
from engramd.tokens import Authenticator, TokenRegistry

log = logging.getLogger("engramd")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engramd",
        description="The engram daemon: journal, leases, live stream and search "
        "for the agents of one machine. Runs in the foreground.",
        epilog="Configuration keys (TOML file, ENGRAM_<KEY> environment, --set): "
        + ", ".join(setting.key for setting in SETTINGS)
        + ". See engramd(8).",
    )
    parser.add_argument("--socket", metavar="PATH",
                        help="Unix socket to listen on (default: $ENGRAM_SOCKET, else "
                        "$XDG_RUNTIME_DIR/engram/engramd.sock, else /tmp/engram-$UID/engramd.sock)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="where the journal lives (default: $ENGRAM_DATA_DIR, else "
                        "$XDG_DATA_HOME/engram)")
    parser.add_argument("--config", metavar="FILE",
                        help="TOML configuration file (default: "
                        "$XDG_CONFIG_HOME/engram/config.toml when it exists)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        dest="overrides", help="override one configuration key (repeatable)")
    parser.add_argument("--log-file", metavar="FILE",
                        help="append the log to FILE instead of standard error")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective configuration and where each value "
                        "came from, then exit")
    parser.add_argument("--reindex", action="store_true",
                        help="rebuild the search index from the store while starting")
    parser.add_argument("--repair", action="store_true",
                        help="check the journal; if it is damaged, say what a repair keeps and "
                        "drops and, once confirmed, keep every intact record and set the "
                        "damaged bytes aside; then exit")
    parser.add_argument("--rebuild-store", action="store_true",
                        help="rebuild a damaged store from the journal's log (the old store "
                        "is kept aside; what the log no longer holds is taken from it), "
                        "then exit")
    parser.add_argument("--yes", action="store_true",
                        help="with --repair or --rebuild-store: do not ask for confirmation")
    parser.add_argument("--verify-backup", metavar="DIR",
                        help="check the backup in DIR (made by the backup request) without "
                        "a daemon: its files, its log's checksums, its store; then exit "
                        "(0 intact, 3 damaged)")
    parser.add_argument("--version", action="version", version=f"engramd {__version__}")
    return parser


def _parse_overrides(pairs: Sequence[str]) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        overrides[key.strip()] = value
    return overrides


def print_config(config: DaemonConfig) -> None:
    width = max(len(key) for key, _, _ in config.describe())
    for key, value, source in config.describe():
        shown = "(none)" if value is None else value
        print(f"{key:<{width}} = {shown!s:<40} # {source}")


class LogfmtFormatter(logging.Formatter):
    """Log records as logfmt lines (:mod:`engramd.protocol.logline`), times in UTC."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        message = record.getMessage()
        pairs = [("ts", f"{stamp}.{int(record.msecs):03d}Z"),
                 ("level", record.levelname.lower()), ("pid", str(record.process)),
                 ("logger", record.name), ("msg", message)]
        if record.exc_info:
            pairs.append(("exc", self.formatException(record.exc_info)))
        return format_line(pairs)


def setup_logging(config: DaemonConfig) -> None:
    handler: logging.Handler
    if config.log_file:
        handler = logging.FileHandler(config.log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger("engramd")
    root.handlers[:] = [handler]
    root.setLevel(config.log_level.upper())
    root.propagate = False


async def run_daemon(
    config: DaemonConfig,
    *,
    handle_signals: bool = True,
    task_status: TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one daemon until it is asked to stop; importable for in-process tests.

    Raises:
        StartupError: the data dir or socket cannot be claimed.
    """
    # The data dir is checked before anything reads from it (tokens.json): a file or
    # another's directory there is told as what it is.
    ensure_private_dir(config.data_dir, what="data dir", private=True,
                       setting="ENGRAM_DATA_DIR")
    authenticator = Authenticator(TokenRegistry(config.data_dir),
                                  admin_token_path(config.socket),
                                  require_tokens=config.require_tokens)
    with contextlib.ExitStack() as stack:
        # Signals are caught from the start: one that arrives while the journal
        # opens (the socket may answer already) waits and then stops the daemon
        # gracefully, instead of killing it with its files left behind.
        signals = (stack.enter_context(trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT))
                   if handle_signals else None)
        # The admin token is in place before the socket listens: a client that
        # started this daemon reads it as soon as it can connect.
        with claim_runtime(config.socket, config.data_dir,
                           before_listen=authenticator.publish_admin_token) as listen_socket:
            try:
                await _serve(config, listen_socket, authenticator, signals, task_status)
            finally:
                authenticator.withdraw_admin_token()
    log.info("stopped")


async def _serve(config: DaemonConfig, listen_socket: socket.socket,
                 authenticator: Authenticator, signals: AsyncIterator[int] | None,
                 task_status: TaskStatus[Server]) -> None:
    async with open_engine(config) as engine:
        server = Server(config, engine, authenticator)
        async with trio.open_nursery() as nursery:
            signal_scope = trio.CancelScope()
            if signals is not None:
                nursery.start_soon(_stop_on_signal, engine, signals, signal_scope)
            await nursery.start(server.serve, listen_socket)
            log.info("engramd %s ready on %s (data dir %s)", __version__,
                     config.socket, config.data_dir)
            task_status.started(server)
            await engine.shutdown_requested.wait()
            # The server finishes its graceful stop inside this nursery.
            signal_scope.cancel()


async def _stop_on_signal(engine: Engine, signals: AsyncIterator[int],
                          scope: trio.CancelScope) -> None:
    with scope:
        async for signum in signals:
            log.info("received %s; stopping", signal.Signals(signum).name)
            engine.request_shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Everything engramd creates is its user's alone (0600 files, 0700 directories),
    # whatever umask it was started with: search.db holds every payload's text.
    os.umask(0o077)
    try:
        config = load_config(
            env=os.environ,
            uid=os.geteuid(),
            socket=args.socket,
            data_dir=args.data_dir,
            config_file=args.config,
            overrides=_parse_overrides(args.overrides),
            log_file=args.log_file,
        )
    except ConfigError as exc:
        print(f"engramd: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.print_config:
        print_config(config)
        return EXIT_OK
    if args.repair:
        return repair(config, assume_yes=args.yes)
    if args.verify_backup:
        return verify_command(os.path.abspath(args.verify_backup))
    if args.rebuild_store:
        return rebuild_store(config, assume_yes=args.yes)
    if args.reindex:
        config = dataclasses.replace(config, reindex=True)
    try:
        setup_logging(config)
    except OSError as exc:
        print(f"engramd: error: cannot open log file: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        trio.run(run_daemon, config)
    except KeyboardInterrupt:
        return EXIT_OK
    except BaseException as exc:
        startup = _find_startup_error(exc)
        if startup is not None:
            line = str(startup)
            log.error("%s", line)
        else:  # a bug: its traceback goes to the log as one line (logfmt escapes it)
            leaf = _leaf(exc)
            line = f"engramd failed: {type(leaf).__name__}: {leaf}"
            log.critical("%s", line, exc_info=exc)
        if config.log_file:
            print(f"engramd: error: {line}", file=sys.stderr)
        return startup.exit_status if startup is not None else EXIT_FAILURE
    return EXIT_OK


def _leaf(exc: BaseException) -> BaseException:
    """The first exception inside trio's exception groups: what actually went wrong."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _find_startup_error(exc: BaseException) -> StartupError | None:
    """The StartupError inside *exc*, which trio may have wrapped in exception groups."""
    if isinstance(exc, StartupError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find_startup_error(inner)
            if found is not None:
                return found
    return None
