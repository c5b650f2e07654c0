"""CMD of ``engram lock run``: the leader of a process group of its own, stopped whole.

Everything CMD starts is in its process group (unless it leaves it: ``setsid``, a
shell with job control), so the group is what ``lock run`` and the daemon stop,
and what the lease names (``pgid``). Its life:

1. :class:`Command` forks before any lease is asked for. The child leads a new
   process group (its pid is the group's number), is killed if engram dies
   (``PR_SET_PDEATHSIG``), and waits, not yet CMD, for word from engram.
2. :meth:`Command.start` sends it what the leases add to the environment, and it
   execs CMD, taking the terminal's foreground first when engram had it (as a shell
   gives a job the terminal; Ctrl-C and Ctrl-Z then reach CMD's group, and a stop of
   CMD stops engram too, so the shell sees its job stopped). :meth:`Command.abandon`
   instead lets it exit without running anything.
3. :meth:`Command.poll` says when CMD has exited without reaping it: its zombie
   keeps the group's number from being given to another group until engram has
   released the lease, so the daemon never stops a stranger's group by that number.
4. :meth:`Command.stop` sends the group SIGTERM (and SIGCONT), SIGKILL at a deadline,
   and returns once none of its processes is left (zombies run nothing and do not
   count). Meanwhile engram is a child subreaper: what CMD's tree leaves behind
   when its parent exits becomes engram's child, and engram reaps it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import signal
import time

from engram_cli.cli import leanwire

TYPE_CHECKING = False  # (no typing, msgspec nor the protocol: lock run starts lean)
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import NoReturn

    from engram_cli.client.errors import EngramError, ExitCode

KILL_WAIT_SECONDS = 5.0
"""How long processes may take to die after SIGKILL before engram gives up on them."""
POLL_SECONDS = 0.02
"""How often a group being stopped is looked at."""

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


def cannot_run(message: str, exit_code: ExitCode) -> EngramError:
    """:class:`.cannotrun.CannotRun` (imported when CMD cannot run: the errors bring the
    protocol, which a lean start of lock run does without)."""
    from engram_cli.cli.cannotrun import CannotRun

    return CannotRun(message, exit_code)


def clock() -> float:
    """CLOCK_BOOTTIME: the clock of ``Lease.deadline_boottime``."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _foreground_terminal() -> int | None:
    """engram's controlling terminal (a descriptor), if engram is its foreground job,
    alone: in a pipeline (``lock run ... | less``) the job's other processes keep the
    terminal, and CMD runs in the background of it."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:  # no controlling terminal
        return None
    with contextlib.suppress(OSError):
        group = os.getpgrp()
        if os.tcgetpgrp(fd) == group and _scan(group, 0)[0] == [os.getpid()]:
            return fd
    os.close(fd)
    return None


def _give_terminal(fd: int, pgid: int) -> None:
    """Make *pgid* the terminal's foreground group (SIGTTOU held off, as shells do)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        with contextlib.suppress(OSError):  # a group gone meanwhile
            os.tcsetpgrp(fd, pgid)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


class Command:
    """CMD in a process group of its own (see the module)."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.terminal = _foreground_terminal()
        self.status: int | None = None
        """CMD's exit status once it has exited (128+N after signal N)."""
        self.killed_by: int | None = None
        """The signal that ended CMD, if one did (its status alone, 128+N, cannot say:
        a command may exit with 137 by itself)."""
        self.started = False
        self.reaped = False
        self.forwarded: set[int] = set()
        """The signals engram passed on to CMD's group (it was sent them)."""
        self._ttou: object = None
        go_read, self._go = os.pipe()
        self._errors, errors_write = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(self._go)
            os.close(self._errors)
            _child(argv, go_read, errors_write, parent, self.terminal)
        os.close(go_read)
        os.close(errors_write)
        with contextlib.suppress(OSError):  # the child does the same: whoever is first
            os.setpgid(pid, pid)
        self.pid = self.pgid = pid

    # -- starting -----------------------------------------------------------------------

    def start(self, env: Mapping[str, str]) -> None:
        """Run CMD with *env* added to engram's environment; CannotRun if exec fails."""
        self.started = True
        if self.terminal is not None:  # engram now writes and waits in the background
            self._ttou = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            packed = bytearray()
            leanwire.pack(dict(env), packed)  # (as msgspec writes it)
            os.write(self._go, bytes(packed))
        except BrokenPipeError:
            pass  # it died waiting: its status says how
        finally:
            os.close(self._go)
        failure = _read_all(self._errors)
        os.close(self._errors)
        if failure:
            number = int(failure)
            from engram_cli.client.errors import ExitCode

            code = (ExitCode.COMMAND_NOT_FOUND if number == errno.ENOENT
                    else ExitCode.CANNOT_RUN)
            self.reap()
            why = os.strerror(number) if number else "it could not be started"
            raise cannot_run(f"cannot run {self.argv[0]}: {why}", code)

    def abandon(self) -> None:
        """Let the waiting child go without running CMD."""
        if not self.started:
            self.started = True
            os.close(self._go)
            os.close(self._errors)
            self.reap()

    # -- while it runs ------------------------------------------------------------------

    def wait(self, timeout: float) -> int | None:
        """Wait up to *timeout* for CMD to exit; its status, or None while it runs."""
        if self.status is None:
            with contextlib.suppress(OSError):
                fd = os.pidfd_open(self.pid)
                try:
                    select.select([fd], [], [], timeout)
                finally:
                    os.close(fd)
        return self.poll()

    def poll(self) -> int | None:
        """CMD's exit status once it has exited (not reaped: see the module), or None;
        relays a stop of CMD (Ctrl-Z) to engram when CMD has the terminal."""
        if self.status is not None or self.reaped:
            return self.status
        info = os.waitid(os.P_PID, self.pid,
                         os.WEXITED | os.WSTOPPED | os.WNOHANG | os.WNOWAIT)
        if info is None:
            return None
        if info.si_code == os.CLD_STOPPED:
            os.waitid(os.P_PID, self.pid, os.WSTOPPED | os.WNOHANG)  # heard: not again
            if self.terminal is not None:
                self._stop_along(info.si_status)
            return None
        if info.si_code == os.CLD_EXITED:
            self.status = info.si_status
        elif info.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
            self.status, self.killed_by = 128 + info.si_status, info.si_status
        return self.status

    def _stop_along(self, signum: int) -> None:
        """CMD was stopped from the terminal: take the terminal back and stop engram
        too, so that the shell sees its job stopped; when continued (``fg``, ``bg``),
        give CMD the terminal again if engram has it, and continue CMD."""
        assert self.terminal is not None
        _give_terminal(self.terminal, os.getpgrp())
        os.kill(os.getpid(), signal.SIGTSTP if signum == signal.SIGTSTP else signal.SIGSTOP)
        with contextlib.suppress(OSError):
            if os.tcgetpgrp(self.terminal) == os.getpgrp():
                _give_terminal(self.terminal, self.pgid)
        self.signal(signal.SIGCONT)

    def signal(self, signum: int) -> None:
        """Send *signum* to CMD's whole group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signum)

    @contextlib.contextmanager
    def forwarding_signals(self) -> Iterator[None]:
        """SIGINT, SIGTERM and SIGHUP sent to engram go to CMD's group."""
        def forward(signum: int, _frame: object) -> None:
            self.forwarded.add(signum)
            self.signal(signum)

        previous = {signum: signal.signal(signum, forward)
                    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def reap_orphans(self) -> None:
        """Reap the exited processes of CMD's tree that became engram's children."""
        while self.status is None:  # (once CMD has exited, stop() reaps them)
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == self.pid:
                return
            with contextlib.suppress(ChildProcessError):
                os.waitpid(info.si_pid, 0)

    # -- stopping -----------------------------------------------------------------------

    def living(self) -> list[int]:
        """The processes of CMD's group that are not zombies; reaps engram's zombie
        children other than CMD on the way."""
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass  # only processes of another user (sudo): they are there
        living, orphans = _scan(self.pgid, os.getpid())
        for pid in orphans:
            if pid != self.pid:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
        return living

    def stop(self, kill_at: float) -> list[int]:
        """Stop CMD's whole group: SIGTERM (and SIGCONT, so that a stopped process acts
        on it), SIGKILL at *kill_at* (CLOCK_BOOTTIME) to what is left, and return once
        none of its processes is left; or KILL_WAIT_SECONDS after SIGKILL with those
        still there (each with SIGKILL pending: none runs its own code again)."""
        self.poll()
        if not self.living():
            return []
        self.signal(signal.SIGTERM)
        self.signal(signal.SIGCONT)
        while clock() < kill_at:
            self.wait(min(POLL_SECONDS, max(0.0, kill_at - clock())))
            if not self.living():
                return []
        give_up = clock() + KILL_WAIT_SECONDS
        while True:
            self.signal(signal.SIGKILL)  # again each time: a fork may have raced it
            self.wait(POLL_SECONDS / 2)
            left = self.living()
            if not left or clock() >= give_up:
                return left

    def reap(self) -> int:
        """Wait for CMD to exit and reap it; its exit status."""
        if not self.reaped:
            with contextlib.suppress(ChildProcessError):
                _, raw = os.waitpid(self.pid, 0)
                code = os.waitstatus_to_exitcode(raw)
                self.status = code if code >= 0 else 128 - code
                self.killed_by = -code if code < 0 else None
            self.reaped = True
        return self.status if self.status is not None else 0

    def close(self) -> None:
        """Give the terminal back to engram's group if CMD had it."""
        if self.terminal is not None:
            with contextlib.suppress(OSError):
                if os.tcgetpgrp(self.terminal) == self.pgid:
                    _give_terminal(self.terminal, os.getpgrp())
            os.close(self.terminal)
            self.terminal = None
            if self._ttou is not None:
                signal.signal(signal.SIGTTOU, self._ttou)  # type: ignore[arg-type]


def become_subreaper() -> None:
    """Orphans of this process's tree become its children (it reaps them), not init's."""
    _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _scan(pgid: int, parent: int) -> tuple[list[int], list[int]]:
    """From /proc: the processes of group *pgid* that are not zombies, and the zombie
    children of *parent*."""
    living, zombies = [], []
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as file:
                    stat = file.read()
            except OSError:  # it has gone meanwhile
                continue
            # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
            state, ppid, pgrp = stat[stat.rindex(b")") + 2:].split()[:3]
            dead = state in (b"Z", b"X")
            if int(pgrp) == pgid and not dead:
                living.append(int(entry.name))
            elif dead and int(ppid) == parent:
                zombies.append(int(entry.name))
    return living, zombies


def _child(argv: list[str], go: int, errors: int, parent: int,
           terminal: int | None) -> NoReturn:
    """The forked child: lead a group of its own, wait for word, become CMD."""
    try:
        # Nothing of engram's stays open here (its connection to the daemon above all).
        _close_all_but({go, errors} | ({terminal} if terminal is not None else set()))
        os.setpgid(0, 0)
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # engram died before the line above
            os._exit(0)
        message = _read_all(go)
        if not message:  # abandoned: no lease, nothing to run
            os._exit(0)
        env = {**os.environ, **leanwire.unpack(message)}
        if terminal is not None:
            _give_terminal(terminal, os.getpgrp())
        for signum in (signal.SIGPIPE, signal.SIGXFSZ):  # as subprocess resets them
            signal.signal(signum, signal.SIG_DFL)
        _close_all_but({errors})  # CMD gets stdin, stdout and stderr, as before
        os.execvpe(argv[0], argv, env)
    except BaseException as exc:  # told to engram, which says it (no traceback here)
        number = exc.errno if isinstance(exc, OSError) and exc.errno else 0
        with contextlib.suppress(OSError):
            os.write(errors, str(number).encode())
    finally:
        os._exit(127)


def _close_all_but(keep: set[int]) -> None:
    """Close every descriptor from 3 on but those in *keep*."""
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))
