"""A consumer of the live stream under a named cursor (``watch``/``wait --cursor``):
what it has shown is what it acknowledges, however it stops.

:class:`StopSignals` makes SIGTERM (and SIGHUP) stop a command the way Ctrl-C does,
as :class:`Stopped`, raised while the command waits for the stream and held back
while it shows an event and acknowledges it: an event is either shown and counted,
or neither, so the acknowledgement at the end names exactly the last line printed.
(Python's default for SIGTERM ends the process on the spot: no ``finally`` runs.)

:class:`Acknowledgements` tells the daemon what was shown: at most every
:data:`ACK_INTERVAL` seconds while events come, at the next heartbeat when they stop
coming, and once more at the end. What a consumer killed outright (SIGKILL, a crash)
showed after its last acknowledgement comes again to the next consumer of the name.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType, TracebackType

from engram_cli.client import Client
from engram_cli.client.errors import ClientTimeout, EngramError, Unavailable

ACK_INTERVAL = 0.5
"""Seconds at least between two acknowledgements while events keep coming."""
FINAL_ACK_TIMEOUT = 5.0
"""How long the acknowledgement at the end waits for the daemon's answer."""

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A stop signal arrived: the command ends as after Ctrl-C (``signum`` says which)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP raise :class:`Stopped`, except inside :meth:`held`,
    which raises it at its end; a signal repeated once stopping changes nothing.

    A signal the process ignores (``nohup``, a shell's background job) stays ignored.
    Outside the main thread (where Python delivers signals) this does nothing.
    """

    def __init__(self) -> None:
        self._saved: dict[int, signal.Handlers | int | object] = {}
        self._holding = False
        self._pending: int | None = None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in STOP_SIGNALS:
            previous = signal.getsignal(signum)
            if previous is signal.SIG_IGN or previous is None:
                continue
            self._saved[signum] = previous
            signal.signal(signum, self._arrived)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for signum, previous in self._saved.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]
        self._saved.clear()

    def _arrived(self, signum: int, frame: FrameType | None) -> None:
        if self._pending is not None:
            return
        self._pending = signum
        if not self._holding:
            raise Stopped(signum)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """A stop signal that arrives inside waits for the block's end."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self._pending is not None:
            raise Stopped(self._pending)


class Acknowledgements:
    """The last seq shown under the cursor *name* (None: no cursor, nothing to tell),
    and what of it the daemon has been told."""

    def __init__(self, client: Client, name: str | None) -> None:
        self.client = client
        self.name = name
        self.shown = 0
        self.acknowledged = 0
        self._told_at = -ACK_INTERVAL

    def show(self, seq: int) -> None:
        """*seq* was shown: tell the daemon if the last time was long enough ago."""
        self.shown = seq
        if time.monotonic() - self._told_at >= ACK_INTERVAL:
            self.tell()

    def tell(self) -> None:
        """Acknowledge what was shown, if anything is new. A daemon gone meanwhile is
        no failure of the watch: the stream reconnects, and the next call tells it."""
        if self.name is None or self.shown <= self.acknowledged:
            return
        try:
            self.client.ack_cursor(self.name, self.shown)
        except (Unavailable, ClientTimeout):
            return
        self.acknowledged = self.shown
        self._told_at = time.monotonic()

    def close(self) -> None:
        """The end, however it came: acknowledge the last event shown. It neither
        starts a daemon nor waits long for one; a daemon that does not answer means
        the next consumer gets again what came after the last acknowledgement."""
        if self.name is None or self.shown <= self.acknowledged:
            return
        autostart, self.client.autostart = self.client.autostart, False
        try:
            with self.client.reply_timeout(FINAL_ACK_TIMEOUT):
                self.client.ack_cursor(self.name, self.shown)
            self.acknowledged = self.shown
        except (EngramError, OSError):
            pass
        finally:
            self.client.autostart = autostart
