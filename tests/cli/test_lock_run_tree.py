"""``engram lock run`` stops everything CMD started, before the lease is anyone else's.

CMD is a shell that starts children: one that sleeps and then writes (``( sleep 1.5;
echo late >> log ) &``), and one that ignores SIGTERM and writes the time every 20 ms
until it is killed. Whatever ends the lease (a break, ``lock run`` killed, the daemon
restarted meanwhile, CMD exiting with its children still running), the next holder,
waiting in line with ``engram lock acquire --wait``, is granted only after the last
write of every child: no overlap.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engramd.protocol import Lease, LeaseTiming
from tests.cli.test_lock_run import lease_history
from tests.conftest import WAIT, DaemonProcess, connect, run_cli, start_engramd, wait_until

pytestmark = pytest.mark.slow  # every test here runs processes

# A child that ignores SIGTERM (as a careless cleanup handler would) and writes the
# time to argv[1] every 20 ms until SIGKILL.
STUBBORN = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(sys.argv[1], "a") as beats:
        while True:
            beats.write(f"{time.time()}\\n"); beats.flush()
            time.sleep(0.02)
""")


def cmd_with_children(here: Path, *, then: str = "wait") -> list[str]:
    """CMD: a shell that starts both children, notes its pid, then does *then*."""
    script = (f'( sleep 1.5; echo late >> {here / "late"} ) & '
              f'{sys.executable} -c "$STUBBORN" {here / "beats"} & '
              f'echo $$ > {here / "cmd"}; {then}')
    return ["sh", "-c", script]


def start_lock_run(daemon: DaemonProcess, cmd: list[str], ttl: float,
                   **options: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "engram_cli", "lock", "run", "job", "--ttl", str(ttl), "--",
         *cmd], env={**daemon.env, "ENGRAM_AGENT": "runner", "STUBBORN": STUBBORN},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options)  # type: ignore[call-overload]


def beats(here: Path) -> list[float]:
    path = here / "beats"
    return [float(line) for line in path.read_text().split()] if path.exists() else []


def started(here: Path) -> bool:
    return (here / "cmd").exists() and len(beats(here)) >= 3


def held(daemon: DaemonProcess) -> Lease | None:
    with connect(daemon.socket, "observer") as engram:
        return engram.get_lock("job").lease


def rival_in_line(daemon: DaemonProcess) -> subprocess.Popen[str]:
    """``engram lock acquire job --wait``, as another agent, once it waits in line."""
    rival = subprocess.Popen(
        [sys.executable, "-m", "engram_cli", "lock", "acquire", "job", "--wait", "60",
         "--json"], env={**daemon.env, "ENGRAM_AGENT": "rival"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)

    def waiting() -> bool:
        with connect(daemon.socket, "observer") as engram:
            return [w.agent for w in engram.get_lock("job").waiters] == ["rival"]

    wait_until(waiting, "the rival in line")
    return rival


def granted_at(rival: subprocess.Popen[str]) -> float:
    out, err = rival.communicate(timeout=60)
    assert rival.returncode == 0, err
    lease = json.loads(out)
    assert lease["holder"] == "rival"
    return dt.datetime.fromisoformat(lease["acquired_at"]).timestamp()


def living(pgid: int) -> list[int]:
    """The processes of group *pgid* that are not zombies."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        state, _, pgrp = stat[stat.rindex(b")") + 2:].split()[:3]
        if int(pgrp) == pgid and state not in (b"Z", b"X"):
            found.append(int(entry.name))
    return found


def test_a_broken_lease_ends_once_every_process_of_cmd_is_gone(
        engramd: DaemonProcess, tmp_path: Path) -> None:
    ttl = 8.0
    runner = start_lock_run(engramd, cmd_with_children(tmp_path), ttl)
    wait_until(lambda: started(tmp_path), "CMD and its children to start")
    lease = held(engramd)
    assert lease is not None and lease.pgid == int((tmp_path / "cmd").read_text())
    assert f"process_group\t{lease.pgid}\n" in run_cli(engramd.env, "lock", "show",
                                                         "job").stdout
    rival = rival_in_line(engramd)
    broken_at = dt.datetime.now(dt.UTC).timestamp()
    result = run_cli({**engramd.env, "ENGRAM_AGENT": "ops"}, "lock", "break", "job",
                     "--reason", "stuck")
    assert result.returncode == 0, result.stderr
    granted = granted_at(rival)
    assert living(lease.pgid) == []
    last = beats(tmp_path)[-1]
    assert last < granted  # no overlap
    # The stubborn child outlived SIGTERM: it went only at SIGKILL, after the grace.
    assert last > broken_at + LeaseTiming(ttl).grace * 0.5
    assert granted - broken_at >= LeaseTiming(ttl).grace * 0.9
    _, err = runner.communicate(timeout=30)
    assert runner.returncode == 6
    assert "engram: error: lease on job broken (by ops)" in err, err
    assert not (tmp_path / "late").exists()  # the sleeper was stopped with the rest


def test_lock_run_killed_its_lease_ends_once_every_process_of_cmd_is_gone(
        engramd: DaemonProcess, tmp_path: Path) -> None:
    ttl = 8.0
    runner = start_lock_run(engramd, cmd_with_children(tmp_path), ttl)
    wait_until(lambda: started(tmp_path), "CMD and its children to start")
    lease = held(engramd)
    assert lease is not None and lease.pgid is not None
    rival = rival_in_line(engramd)
    killed_at = dt.datetime.now(dt.UTC).timestamp()
    runner.send_signal(signal.SIGKILL)
    runner.wait(WAIT)
    granted = granted_at(rival)
    assert living(lease.pgid) == []
    last = beats(tmp_path)[-1]
    assert last < granted  # no overlap
    assert last > killed_at + LeaseTiming(ttl).grace * 0.5  # went at SIGKILL, not before
    assert granted < killed_at + ttl  # and not by the lease's expiry: at once
    assert not (tmp_path / "late").exists()


def test_when_the_lease_cannot_be_renewed_the_whole_group_is_gone_before_it_ends(
        engramd: DaemonProcess, tmp_path: Path) -> None:
    ttl = 6.0
    runner = start_lock_run(engramd, cmd_with_children(tmp_path), ttl)
    wait_until(lambda: started(tmp_path), "CMD and its children to start")
    lease = held(engramd)
    assert lease is not None and lease.pgid is not None
    engramd.process.send_signal(signal.SIGTERM)  # and it stays away
    engramd.process.wait(WAIT)
    _, err = runner.communicate(timeout=ttl + 15)
    assert runner.returncode == 6
    assert err.startswith("engram: error: could not renew the lease on job since "), err
    assert living(lease.pgid) == []
    last = beats(tmp_path)[-1]
    engramd.process = start_engramd(engramd.env)  # long after the ttl: the lease is over
    last_known = lease_history(engramd.socket, "job")[-1]
    # SIGKILL went to the stubborn child a margin before the expiry (give or take a poll).
    assert last < last_known.expires_at.timestamp() - LeaseTiming(ttl).margin * 0.5
    with connect(engramd.socket, "rival") as engram:
        (rival,) = engram.acquire_lock("job", wait=WAIT)
    assert rival.acquired_at.timestamp() > last


def test_a_lease_restored_by_a_restarted_daemon_stops_the_group_of_a_dead_holder(
        engramd: DaemonProcess, tmp_path: Path) -> None:
    ttl = 12.0
    runner = start_lock_run(engramd, cmd_with_children(tmp_path), ttl)
    wait_until(lambda: started(tmp_path), "CMD and its children to start")
    lease = held(engramd)
    assert lease is not None and lease.pgid is not None
    engramd.process.send_signal(signal.SIGTERM)
    engramd.process.wait(WAIT)
    runner.send_signal(signal.SIGKILL)  # while no daemon watches it
    runner.wait(WAIT)
    assert len(living(lease.pgid)) >= 2  # the children run on meanwhile
    engramd.process = start_engramd(engramd.env)
    with connect(engramd.socket, "rival") as engram:
        (granted,) = engram.acquire_lock("job", wait=60)
    assert living(lease.pgid) == []
    assert beats(tmp_path)[-1] < granted.acquired_at.timestamp()
    assert granted.fencing_token > lease.fencing_token


def test_what_cmd_leaves_running_is_stopped_before_the_lease_is_released(
        engramd: DaemonProcess, tmp_path: Path) -> None:
    ttl = 8.0
    go = tmp_path / "go"
    runner = start_lock_run(engramd, cmd_with_children(
        tmp_path, then=f"while [ ! -e {go} ]; do sleep 0.01; done; exit 3"), ttl)
    wait_until(lambda: started(tmp_path), "CMD and its children to start")
    rival = rival_in_line(engramd)
    go.touch()  # CMD exits; its children run on
    granted = granted_at(rival)
    _, err = runner.communicate(timeout=30)
    assert runner.returncode == 3, err  # CMD's own status
    assert err == ""
    cmd = int((tmp_path / "cmd").read_text())
    assert living(cmd) == []
    assert beats(tmp_path) and beats(tmp_path)[-1] < granted
    assert not (tmp_path / "late").exists()


def test_a_daemonizing_double_fork_escapes_on_purpose(engramd: DaemonProcess,
                                                     tmp_path: Path) -> None:
    """What leaves CMD's group (setsid) is not CMD's any more: it is not stopped."""
    escaped = tmp_path / "escaped"
    cmd = ["sh", "-c", f'setsid sh -c "echo \\$\\$ > {escaped}; exec sleep 30" '
                       f'</dev/null >/dev/null 2>&1 & '
                       f'while [ ! -s {escaped} ]; do sleep 0.01; done']
    result = run_cli({**engramd.env, "ENGRAM_AGENT": "runner"}, "lock", "run", "job", "--",
                     *cmd)
    assert result.returncode == 0, result.stderr
    pid = int(escaped.read_text())
    try:
        wait_until(lambda: living(pid) == [pid], "the escaped process, still running")
        assert held(engramd) is None
    finally:
        os.kill(pid, signal.SIGKILL)


# -- on a terminal ----------------------------------------------------------------------

# CMD on a terminal: says whether its group has the terminal's foreground, then beats
# until "stop" appears; Ctrl-C (SIGINT) ends it with status 3.
ON_TERMINAL = textwrap.dedent("""
    import os, signal, sys, time
    here = sys.argv[1]
    signal.signal(signal.SIGINT, lambda *_: sys.exit(3))
    tty = os.open("/dev/tty", os.O_RDWR)
    open(os.path.join(here, "foreground"), "w").write(
        f"{os.tcgetpgrp(tty) == os.getpgrp()} {os.getpgrp() == os.getpid()}")
    with open(os.path.join(here, "beats"), "a") as beats:
        while not os.path.exists(os.path.join(here, "stop")):
            beats.write(f"{time.time()}\\n"); beats.flush()
            time.sleep(0.02)
""")


def state(pid: int) -> str:
    """The state letter of process *pid* (``T``: stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return stat[stat.rindex(b")") + 2:].split()[0].decode()


# A job-control shell, as small as can be: the session leader of the terminal (fd 0),
# it runs argv as a job (a process group of its own, in the foreground), notes in
# "jobs" when the job stops or exits, and puts a stopped job back in the foreground
# (``fg``) when a byte arrives on descriptor *fg*.
SHELL = textwrap.dedent("""
    import fcntl, os, signal, sys, termios
    here, fg, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    job = os.fork()
    if job == 0:
        os.close(fg)
        os.setpgid(0, 0)
        os.tcsetpgrp(0, os.getpgrp())
        signal.signal(signal.SIGTTOU, signal.SIG_DFL)
        os.execv(argv[0], argv)
    try:
        os.setpgid(job, job)
    except PermissionError:  # the job ran ahead: it made its group and exec'd (as shells do)
        pass
    os.tcsetpgrp(0, job)
    def note(what):
        with open(os.path.join(here, "jobs"), "a") as jobs:
            jobs.write(what + "\\n")
    while True:
        _, status = os.waitpid(job, os.WUNTRACED)
        if os.WIFSTOPPED(status):
            os.tcsetpgrp(0, os.getpgrp())
            note("stopped")
            os.read(fg, 1)
            os.tcsetpgrp(0, job)
            os.killpg(job, signal.SIGCONT)
        else:
            note(f"exit {os.waitstatus_to_exitcode(status)}")
            break
""")


def on_a_terminal(daemon: DaemonProcess, here: Path, job: list[str]
                  ) -> tuple[subprocess.Popen[bytes], int, int]:
    """*job* run by :data:`SHELL` on a new terminal: the shell, the terminal's master
    side, and the descriptor that says ``fg``."""
    master, slave = os.openpty()
    fg_read, fg = os.pipe()
    shell = subprocess.Popen(
        [sys.executable, "-c", SHELL, str(here), str(fg_read), *job],
        env={**daemon.env, "ENGRAM_AGENT": "runner"}, stdin=slave, stdout=slave,
        stderr=slave, start_new_session=True, pass_fds=(fg_read,))
    os.close(slave)
    os.close(fg_read)
    return shell, master, fg


def jobs(here: Path) -> list[str]:
    """What the shell saw of its job."""
    path = here / "jobs"
    return path.read_text().splitlines() if path.exists() else []


LOCK_RUN_ON_TERMINAL = [sys.executable, "-m", "engram_cli", "lock", "run", "job", "--ttl",
                        "30", "--", sys.executable, "-c", ON_TERMINAL]


def test_on_a_terminal_cmd_has_the_foreground_and_ctrl_z_stops_both(
        engramd: DaemonProcess, tmp_path: Path) -> None:
    shell, master, fg = on_a_terminal(engramd, tmp_path,
                                      [*LOCK_RUN_ON_TERMINAL, str(tmp_path)])
    try:
        wait_until(lambda: len(beats(tmp_path)) >= 3, "CMD to run")
        assert (tmp_path / "foreground").read_text() == "True True"
        lease = held(engramd)
        assert lease is not None and lease.pgid is not None
        cmd = lease.pgid
        os.write(master, b"\x1a")  # Ctrl-Z: CMD stops, and lock run with it
        wait_until(lambda: jobs(tmp_path) == ["stopped"], "the shell to see its job stopped")
        assert state(cmd) == "T" and state(lease.holder_pid) == "T"
        os.write(fg, b"f")  # fg
        wait_until(lambda: state(cmd) != "T", "CMD to go on")
        count = len(beats(tmp_path))
        wait_until(lambda: len(beats(tmp_path)) > count + 2, "CMD to beat again")
        os.write(master, b"\x03")  # Ctrl-C reaches CMD, in the foreground
        wait_until(lambda: jobs(tmp_path) == ["stopped", "exit 3"],
                   "lock run to exit as CMD did")
        assert held(engramd) is None
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
        shell.wait(WAIT)
        os.close(master)
        os.close(fg)


def test_in_a_pipeline_on_a_terminal_the_job_keeps_the_foreground(
        engramd: DaemonProcess, tmp_path: Path) -> None:
    """``lock run ... | cat``: cat (in the job) keeps the terminal; CMD runs behind it."""
    words = shlex.join([*LOCK_RUN_ON_TERMINAL, str(tmp_path)])
    shell, master, fg = on_a_terminal(engramd, tmp_path, ["/bin/sh", "-c", f"{words} | cat"])
    try:
        wait_until(lambda: len(beats(tmp_path)) >= 3, "CMD to run")
        assert (tmp_path / "foreground").read_text() == "False True"
        (tmp_path / "stop").touch()
        wait_until(lambda: jobs(tmp_path) == ["exit 0"], "the job to end")
        assert held(engramd) is None
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
        shell.wait(WAIT)
        os.close(master)
        os.close(fg)
