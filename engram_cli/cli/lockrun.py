"""``engram lock run``: run a command while holding leases, and never past them.

The leases belong to this process (a pid-bound session): they end when it exits,
and after a daemon restart a new connection of this process is still their
holder. They also name CMD's process group (:mod:`.cmdgroup`), which the daemon
stops before they end, whatever ends them: this process killed, a break, an
expiry. A keeper thread renews them every ttl/3 and, when the daemon goes away,
reconnects (never starting a daemon of its own), renews by lock id and so adopts
them on its new connection. Each renewal tells the lease's expiry on
CLOCK_BOOTTIME, a clock this process shares with the daemon, and each renewal is
due a third of the ttl after the expiry last confirmed began (at once for a lease
granted with less than two thirds of its ttl left).

The main thread waits for CMD and is the one that stops its group: when a lease
is lost, or could not be confirmed in time, the group gets SIGTERM and then
SIGKILL early enough to be gone before the last expiry the holder knew; when CMD
exits, what it left running of its group is stopped the same way before the
leases are released. No process of CMD's group runs past the lease that covers it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

from engram_cli.cli import remarks
from engram_cli.cli.cmdgroup import Command, become_subreaper, cannot_run, clock
from engram_cli.cli.waiting import RETRY_SECONDS, acquire_waiting, passing

TYPE_CHECKING = False  # (the library, the protocol: see .leanlease; errors when they come)
if TYPE_CHECKING:
    import datetime as dt
    from typing import Any

    from engram_cli.client import Client
    from engram_cli.client.errors import EngramError
    from engramd.protocol import Lease, LeaseLost

    Holder = Client | Any  # the library's client, or .leanlease's

SLICE_SECONDS = 0.25
"""The longest the keeper waits for a notice before it looks at the clock again."""
POLL_SECONDS = 0.05
"""How often the main thread looks at the clock while CMD runs."""
GRACE_SECONDS = 5.0
MARGIN_SECONDS = 1.0
"""engramd.protocol.model's (tests/cli/test_lock_run.py checks that :class:`LeaseTiming`
is the protocol's)."""


class LeaseTiming:
    """:class:`engramd.protocol.LeaseTiming`, the one rule of lock run and the daemon
    (see there), without importing the protocol (lock run starts lean)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.renew_every = ttl / 3
        self.grace = min(GRACE_SECONDS, ttl / 4)
        self.margin = min(MARGIN_SECONDS, ttl / 10)

    def kill_at(self, expiry: float) -> float:
        return expiry - self.margin

    def stop_at(self, expiry: float) -> float:
        return self.kill_at(expiry) - self.grace


def _errors() -> Any:
    from engram_cli.client import errors

    return errors


class LeaseKeeper(threading.Thread):
    """Renews the leases while CMD runs, across daemon restarts, and hears of losses.

    It owns the client until :meth:`finish`. ``lost`` says why a lease is gone;
    ``expiry`` is the earliest expiry confirmed so far (CLOCK_BOOTTIME).
    """

    def __init__(self, client: Holder, leases: list[Lease]) -> None:
        super().__init__(daemon=True, name="engram-lease-keeper")
        self.client = client
        self.leases = leases
        self.timing = LeaseTiming(min(lease.ttl for lease in leases))
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

    def finish(self) -> Holder:
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
        due = self.renewal_due()
        while not self._done.is_set() and self.lost is None:
            if clock() >= due:
                due = self.renewal_due() if self._renew() else clock() + RETRY_SECONDS
                continue
            self._listen(min(due - clock(), SLICE_SECONDS))

    def renewal_due(self) -> float:
        """When the leases are renewed next: once a third of their ttl has gone from the
        expiry last confirmed. A lease granted with less than its ttl left (handed over
        by another machine, whose grant this machine saw late) is renewed at once when
        that third has gone already: its expiry, not the moment of its answer, says
        when its group would be stopped."""
        return min(clock() + self.timing.renew_every,
                   self.expiry - self.timing.ttl + self.timing.renew_every)

    def _listen(self, timeout: float) -> None:
        """Wait up to *timeout* for a lost-lease notice."""
        if not self.client.connected:
            self._done.wait(max(0.0, timeout))
            return
        try:
            notice = self.client.lease_lost(max(0.001, timeout))
        except Exception as exc:
            if not isinstance(exc, _errors().EngramError):
                raise
            self._away(exc)  # the connection went: renewals will reconnect
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
        except Exception as exc:
            if isinstance(exc, passing()):
                self._away(exc)
            elif isinstance(exc, _errors().EngramError):  # not found, forbidden: gone
                self.lost = self._why_gone(exc)
            else:
                raise
            return False
        self._away_since = None
        self.leases = renewed
        self.expiry = min(lease.deadline_boottime for lease in renewed)
        return True

    def _away(self, exc: EngramError) -> None:
        import datetime as dt

        self.client.close()
        if self._away_since is None:
            self._away_since = dt.datetime.now(dt.UTC)
        self._away_why = str(exc)

    def _why_gone(self, exc: EngramError) -> str:
        # A renewal that finds the lease gone usually has the daemon's notice
        # right behind it, which says why; give it a moment.
        with contextlib.suppress(_errors().EngramError):
            notice = self.client.lease_lost(0.2)
            if notice is not None and self._ours(notice):
                return _lost(notice)
        return f"lease lost: {exc}"

    def _ours(self, notice: LeaseLost) -> bool:
        return any(lease.lock_id == notice.lease.lock_id for lease in self.leases)


def _lost(notice: LeaseLost) -> str:
    return f"lease on {notice.lease.resource} {notice.reason} (by {notice.by})"


# -- CMD ------------------------------------------------------------------------


def _on_path(command: str) -> bool:
    """Whether ``shutil.which(command)`` finds it (shutil brings the compression modules:
    a lean start of lock run does without)."""

    def runnable(path: str) -> bool:
        return os.path.exists(path) and os.access(path, os.X_OK) and not os.path.isdir(path)

    if os.path.dirname(command):
        return runnable(command)
    path = os.environ.get("PATH")
    if path is None:
        try:
            path = os.confstr("CS_PATH") or ""
        except (AttributeError, ValueError):
            path = os.defpath
    return bool(path) and any(runnable(os.path.join(directory, command))
                              for directory in path.split(os.pathsep))


def check_runnable(command: str) -> None:
    """Refuse, before taking any lease, a CMD that cannot be found or run."""
    if _on_path(command):
        return
    exits = _errors().ExitCode
    if os.sep in command and os.path.exists(command):
        raise cannot_run(f"cannot run {command}: Permission denied", exits.CANNOT_RUN)
    raise cannot_run(f"cannot run {command}: command not found", exits.COMMAND_NOT_FOUND)


def supervise(command: Command, keeper: LeaseKeeper) -> str | None:
    """Wait for CMD; stop its group in time if its leases are lost (returns why), and
    what it left of it once it has exited by itself (returns None)."""
    while True:
        if command.wait(POLL_SECONDS) is not None:
            # What CMD left running of its group is stopped before the leases end.
            command.stop(min(clock() + keeper.timing.grace, keeper.kill_at()))
            return None
        command.reap_orphans()
        why = keeper.lost
        if why is None and clock() >= keeper.stop_at():
            why = keeper.unconfirmed()
        if why is not None:
            remarks.error(f"{why}; stopping the command")
            command.stop(min(clock() + keeper.timing.grace, keeper.kill_at()))
            return why


def run_holding(client: Holder, resources: list[str], argv: list[str], *,
                ttl: float | None, wait: float | None, shared: bool = False) -> int:
    """Run *argv* holding leases (*shared* ones when so) on *resources*; returns the exit
    status for engram."""
    check_runnable(argv[0])
    command = Command(argv)  # waits, in a group of its own, until the leases are held
    try:
        try:
            leases = acquire_waiting(client, resources, ttl=ttl, wait=wait,
                                     pid=os.getpid(), pgid=command.pgid, shared=shared)
        except BaseException:
            command.abandon()
            raise
        return _run(client, command, leases)
    finally:
        command.close()


def _run(client: Holder, command: Command, leases: list[Lease]) -> int:
    become_subreaper()  # what CMD's tree leaves behind is reaped here, not by init
    try:
        command.start({
            "ENGRAM_LOCK_ID": ",".join(lease.lock_id for lease in leases),
            "ENGRAM_FENCING_TOKEN": ",".join(str(lease.fencing_token) for lease in leases),
            "ENGRAM_FENCE": ",".join(f"{lease.resource}:{lease.fencing_token}"
                                     for lease in leases)})
    except Exception as exc:
        from engram_cli.cli.cannotrun import CannotRun

        if isinstance(exc, CannotRun):
            _release(client, leases)
        raise
    keeper = LeaseKeeper(client, leases)
    with command.forwarding_signals():
        keeper.start()
        try:
            lost = supervise(command, keeper)
        finally:
            client = keeper.finish()
            if command.poll() is None or command.living():  # a failure above: no strays
                command.stop(clock() + keeper.timing.grace)
    if lost is None:  # CMD ended by itself: were its leases held throughout?
        lost = keeper.lost or _release(client, keeper.leases)
        if lost is not None:
            remarks.error(f"{lost} while the command ran")
        else:
            _say_signal(command)
    status = command.reap()  # only now: its zombie kept the group's number ours
    return int(_errors().ExitCode.LEASE_LOST) if lost is not None else status


def _say_signal(command: Command) -> None:
    """One line when CMD was ended by a signal that engram neither sent nor passed on
    (another process's kill, a crash): its exit status alone (128+N) says too little.
    Not SIGPIPE: the usual end of a command whose reader went (``| head``)."""
    command.poll()
    number = command.killed_by
    if number is None or number in command.forwarded or number == signal.SIGPIPE:
        return
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    remarks.note(f"the command was ended by {name}, which engram neither sent nor "
                 "passed on; its leases were held throughout and are released")


def _release(client: Holder, leases: list[Lease]) -> str | None:
    """Release at once (if the daemon cannot be reached, the leases still end with this
    process: they are bound to it, or at their expiry). Why, if one was lost already."""
    try:
        for lease in leases:
            client.release_lock(lease.lock_id, resource=lease.resource)
    except Exception as exc:
        errors = _errors()
        if isinstance(exc, passing()):
            remarks.note(f"warning: could not release the lease now ({exc}); it ends with "
                         "this process")
        elif isinstance(exc, errors.NotFound):  # it ended before CMD's group did: say how
            with contextlib.suppress(errors.EngramError):
                notice = client.lease_lost(0.2)
                if notice is not None:
                    return _lost(notice)
            return f"lease lost: {exc}"
        elif not isinstance(exc, errors.EngramError):
            raise
    return None
