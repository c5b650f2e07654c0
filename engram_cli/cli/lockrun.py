"""``engram lock run``: run a command while holding leases, and never past them.

The leases belong to this process (a pid-bound session): they end the moment it
exits, and after a daemon restart a new connection of this process is still
their holder. A keeper thread renews them every ttl/3 and, when the daemon goes
away, reconnects (never starting a daemon of its own), renews by lock id and so
adopts them on its new connection. Each renewal tells the lease's expiry on
CLOCK_BOOTTIME, a clock this process shares with the daemon.

The main thread waits for CMD and is the one that stops it: when a lease is
lost, or could not be confirmed in time, CMD gets SIGTERM and then SIGKILL early
enough to be gone before the last expiry the holder knew. CMD never runs past
the lease that covers it: it is also killed if this process dies (its leases
die with it), and it runs in a process group of its own, so what it started is
stopped with it (unless it owns the terminal: then it keeps its foreground).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from engram_cli.cli import output
from engram_cli.client import Client
from engram_cli.client.errors import ClientTimeout, EngramError, ExitCode, RateLimited, Unavailable
from engramd.protocol import ErrorCode, Lease, LeaseLost

GRACE_SECONDS = 5.0
"""How long CMD may take to stop after SIGTERM, at most (less for a short ttl)."""
MARGIN_SECONDS = 1.0
"""CMD is dead at least this long before the lease expires, at most (less for a short ttl)."""
RETRY_SECONDS = 0.1
"""How often an unreachable daemon is tried again."""
SLICE_SECONDS = 0.25
"""The longest the keeper waits for a notice before it looks at the clock again."""
POLL_SECONDS = 0.05
"""How often the main thread looks at the clock while CMD runs."""

# The keeper retries these: the daemon is away, restarting, recovering or busy.
_PASSING = (Unavailable, ClientTimeout, Unavailable, RateLimited)


class CannotRun(EngramError):
    """CMD cannot be found (127) or started (126), as ``env`` and ``timeout`` say."""

    def __init__(self, message: str, exit_code: ExitCode) -> None:
        # In a --json error: not_found for a CMD that is not there, forbidden for one
        # that may not be run (the words of the protocol, whoever found it).
        super().__init__(message, ErrorCode.NOT_FOUND if exit_code == ExitCode.COMMAND_NOT_FOUND
                         else ErrorCode.FORBIDDEN)
        self.exit_code = exit_code


def clock() -> float:
    """CLOCK_BOOTTIME: the clock of ``Lease.deadline_boottime``."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass(frozen=True)
class Timing:
    """When to renew leases of *ttl* seconds, and when to stop CMD instead."""

    ttl: float

    @property
    def renew_every(self) -> float:
        return self.ttl / 3

    @property
    def grace(self) -> float:
        return min(GRACE_SECONDS, self.ttl / 4)

    @property
    def margin(self) -> float:
        return min(MARGIN_SECONDS, self.ttl / 10)

    def kill_at(self, expiry: float) -> float:
        return expiry - self.margin

    def stop_at(self, expiry: float) -> float:
        """The last moment to send SIGTERM and still have CMD dead by ``kill_at``."""
        return self.kill_at(expiry) - self.grace


class LeaseKeeper(threading.Thread):
    """Renews the leases while CMD runs, across daemon restarts, and hears of losses.

    It owns the client until :meth:`finish`. ``lost`` says why a lease is gone;
    ``expiry`` is the earliest expiry confirmed so far (CLOCK_BOOTTIME).
    """

    def __init__(self, client: Client, leases: list[Lease]) -> None:
        super().__init__(daemon=True, name="engram-lease-keeper")
        self.client = client
        self.leases = leases
        self.timing = Timing(min(lease.ttl for lease in leases))
        self.expiry = min(lease.deadline_boottime for lease in leases)
        self.lost: str | None = None
        self._done = threading.Event()
        self._away_since: dt.datetime | None = None
        self._away_why = ""
        # Every wait is short, so that an unanswered renewal is tried again in
        # time; a reconnect never starts a daemon (that one would not know us).
        self._request_timeout = max(0.05, min(self.timing.renew_every, 5.0))
        client.autostart = False
        client.timeout = self._request_timeout

    # -- read by the main thread ---------------------------------------------

    def stop_at(self) -> float:
        return self.timing.stop_at(self.expiry)

    def kill_at(self) -> float:
        return self.timing.kill_at(self.expiry)

    def unconfirmed(self) -> str:
        """Why CMD is stopped when the leases could not be renewed in time."""
        names = ", ".join(lease.resource for lease in self.leases)
        since = (f" since {self._away_since.astimezone().strftime('%H:%M:%S')}"
                 if self._away_since else "")
        why = f" ({self._away_why})" if self._away_why else ""
        left = max(0.0, self.expiry - clock())
        return (f"could not renew the lease on {names}{since}{why}; it ends in "
                f"{left:.1f}s")

    def finish(self) -> Client:
        """Stop renewing; the client is the caller's again (it reconnects when used)."""
        self._done.set()
        self.client.interrupt()  # wake the thread from its wait for a notice
        self.join()
        return self.client

    # -- the thread ----------------------------------------------------------

    def run(self) -> None:
        try:
            self._keep()
        except Exception as exc:  # a bug here must still stop CMD, not leave it unguarded
            self.lost = f"lease renewal failed unexpectedly: {exc!r}"

    def _keep(self) -> None:
        due = clock() + self.timing.renew_every
        while not self._done.is_set() and self.lost is None:
            if clock() >= due:
                due = clock() + (self.timing.renew_every if self._renew() else RETRY_SECONDS)
                continue
            self._listen(min(due - clock(), SLICE_SECONDS))

    def _listen(self, timeout: float) -> None:
        """Wait up to *timeout* for a lost-lease notice."""
        if not self.client.connected:
            self._done.wait(max(0.0, timeout))
            return
        try:
            notice = self.client.lease_lost(max(0.001, timeout))
        except EngramError as exc:  # the connection went: renewals will reconnect
            self._away(exc)
            return
        if notice is not None and self._ours(notice):
            self.lost = _lost(notice)

    def _renew(self) -> bool:
        renewed = []
        try:
            with self.client.reply_timeout(self._request_timeout):
                for lease in self.leases:
                    renewed.append(self.client.renew_lock(lease.lock_id,
                                                          resource=lease.resource))
        except _PASSING as exc:
            self._away(exc)
            return False
        except EngramError as exc:  # not found, forbidden: the lease is gone
            self.lost = self._why_gone(exc)
            return False
        self._away_since = None
        self.leases = renewed
        self.expiry = min(lease.deadline_boottime for lease in renewed)
        return True

    def _away(self, exc: EngramError) -> None:
        self.client.close()
        if self._away_since is None:
            self._away_since = dt.datetime.now(dt.UTC)
        self._away_why = str(exc)

    def _why_gone(self, exc: EngramError) -> str:
        # A renewal that finds the lease gone usually has the daemon's notice
        # right behind it, which says why; give it a moment.
        with contextlib.suppress(EngramError):
            notice = self.client.lease_lost(0.2)
            if notice is not None and self._ours(notice):
                return _lost(notice)
        return f"lease lost: {exc}"

    def _ours(self, notice: LeaseLost) -> bool:
        return any(lease.lock_id == notice.lease.lock_id for lease in self.leases)


def _lost(notice: LeaseLost) -> str:
    return f"lease on {notice.lease.resource} {notice.reason} (by {notice.by})"


# -- CMD ------------------------------------------------------------------------


def check_runnable(command: str) -> None:
    """Refuse, before taking any lease, a CMD that cannot be found or run."""
    if shutil.which(command) is not None:
        return
    if os.sep in command and os.path.exists(command):
        raise CannotRun(f"cannot run {command}: Permission denied", ExitCode.CANNOT_RUN)
    raise CannotRun(f"cannot run {command}: command not found", ExitCode.COMMAND_NOT_FOUND)


def _owns_terminal() -> bool:
    """Whether engram runs in the foreground of a terminal (CMD must keep it)."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError):
        return False


def _die_with(parent: int) -> Callable[[], None]:
    """In CMD, before exec: be killed when *parent* (engram) dies, leases and all."""
    import ctypes  # only lock run needs it

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def arm() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # it died before the line above
            os.kill(os.getpid(), signal.SIGKILL)

    return arm


class Command:
    """CMD as a child process, and the signals engram sends it."""

    def __init__(self, argv: list[str], env: Mapping[str, str]) -> None:
        self.group = not _owns_terminal()
        arm = _die_with(os.getpid())
        try:
            # preexec_fn is safe here: no other thread runs yet (the keeper starts after).
            self.process = subprocess.Popen(argv, env=env, preexec_fn=arm,  # noqa: PLW1509
                                            process_group=0 if self.group else None)
        except OSError as exc:
            code = (ExitCode.COMMAND_NOT_FOUND if isinstance(exc, FileNotFoundError)
                    else ExitCode.CANNOT_RUN)
            raise CannotRun(f"cannot run {argv[0]}: {exc.strerror}", code) from None

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.group:
                os.killpg(self.process.pid, signum)
            else:
                self.process.send_signal(signum)

    @contextlib.contextmanager
    def forwarding_signals(self) -> Iterator[None]:
        """SIGINT, SIGTERM and SIGHUP sent to engram go to CMD."""
        previous = {signum: signal.signal(signum, lambda n, _f: self.signal(n))
                    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def stop(self, kill_at: float) -> None:
        """SIGTERM, then SIGKILL at *kill_at* (CLOCK_BOOTTIME) or after the grace."""
        self.signal(signal.SIGTERM)
        deadline = min(kill_at, clock() + GRACE_SECONDS)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(max(0.0, deadline - clock()))
            return
        self.signal(signal.SIGKILL)
        self.process.wait()

    def status(self) -> int:
        """The exit status to pass on: CMD's own, or 128+N after signal N."""
        code = self.process.wait()
        return code if code >= 0 else 128 - code


def supervise(command: Command, keeper: LeaseKeeper) -> str | None:
    """Wait for CMD; stop it in time if its leases are lost. Returns why, if it was."""
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            command.process.wait(POLL_SECONDS)
            if keeper.lost is not None:  # CMD ended by itself, but not covered throughout
                output.error(f"{keeper.lost} while the command ran")
            return keeper.lost
        why = keeper.lost
        if why is None and clock() >= keeper.stop_at():
            why = keeper.unconfirmed()
        if why is not None:
            output.error(f"{why}; stopping the command")
            command.stop(keeper.kill_at())
            return why


def run_holding(client: Client, resources: list[str], argv: list[str], *,
                ttl: float | None, wait: float | None) -> int:
    """Run *argv* holding leases on *resources*; returns the exit status for engram."""
    check_runnable(argv[0])
    leases = client.acquire_lock(resources, ttl=ttl, wait=wait, pid=os.getpid())
    env = {**os.environ,
           "ENGRAM_LOCK_ID": ",".join(lease.lock_id for lease in leases),
           "ENGRAM_FENCING_TOKEN": ",".join(str(lease.fencing_token) for lease in leases),
           "ENGRAM_FENCE": ",".join(f"{lease.resource}:{lease.fencing_token}"
                                    for lease in leases)}
    try:
        command = Command(argv, env)
    except CannotRun:
        _release(client, leases)
        raise
    keeper = LeaseKeeper(client, leases)
    with command.forwarding_signals():
        keeper.start()
        try:
            lost = supervise(command, keeper)
        finally:
            client = keeper.finish()
    if lost is not None:
        return int(ExitCode.LEASE_LOST)
    _release(client, keeper.leases)
    return command.status()


def _release(client: Client, leases: list[Lease]) -> None:
    """Release at once; if the daemon cannot be reached, the leases still end with
    this process (they are bound to it) or at their expiry."""
    try:
        for lease in leases:
            client.release_lock(lease.lock_id, resource=lease.resource)
    except _PASSING as exc:
        output.note(f"warning: could not release the lease now ({exc}); it ends with this "
                    "process")
    except EngramError:
        pass  # already gone
