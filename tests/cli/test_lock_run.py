"""``engram lock run`` against real processes: CMD never outlives the lease that covers it.

The daemon is an ``engramd`` process that the tests restart (SIGTERM, SIGKILL) or
stop while ``lock run`` holds a lease; CMD is a small Python program that writes
the time of each step to a file, so the tests can compare what CMD did with the
leases the journal granted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engram_cli.cli import lockrun
from engram_cli.cli.cmdgroup import Command
from engram_cli.cli.lockrun import LeaseKeeper, supervise
from engram_cli.client.errors import EngramError
from engramd.protocol import Lease, LeaseTiming, LockAcquired, LockRenewed
from tests.conftest import WAIT, DaemonProcess, ThreadedDaemon, connect, start_engramd, wait_until

pytestmark = pytest.mark.slow  # every test here runs processes

# CMD: note the pid, then the time every 20 ms (to "beats") until "stop" appears,
# then the end time, and exit 0.
WORKER = textwrap.dedent("""
    import os, sys, time
    here = sys.argv[1]
    open(os.path.join(here, "pid"), "w").write(str(os.getpid()))
    with open(os.path.join(here, "beats"), "a") as beats:
        while not os.path.exists(os.path.join(here, "stop")):
            beats.write(f"{time.time()}\\n"); beats.flush()
            time.sleep(0.02)
    open(os.path.join(here, "end"), "w").write(str(time.time()))
""")


def start_lock_run(daemon: DaemonProcess, here: Path, ttl: float, resource: str = "job",
                   agent: str = "runner") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "engram_cli", "lock", "run", resource, "--ttl", str(ttl), "--",
         sys.executable, "-c", WORKER, str(here)],
        env={**daemon.env, "ENGRAM_AGENT": agent}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def held(socket: str, resource: str) -> Lease | None:
    try:
        with connect(socket, "observer") as engram:
            return engram.get_lock(resource).lease
    except EngramError:  # the daemon is away: nothing can be seen
        return None


def restart(daemon: DaemonProcess, how: signal.Signals | None) -> None:
    """Stop the daemon (by *how*, unless it has stopped already) and start it again."""
    if how is not None:
        daemon.process.send_signal(how)
    daemon.process.wait(WAIT)
    daemon.process = start_engramd(daemon.env)


def lease_history(socket: str, resource: str) -> list[Lease]:
    """Every grant and renewal of *resource*, from the journal, in order."""
    leases = []
    with connect(socket, "observer") as engram:
        subscription = engram.subscribe(kinds=["lock.acquired", "lock.renewed"], after=0,
                                        heartbeat=0.05)
        head = subscription.head_seq
        for item in subscription:
            if isinstance(item, LockAcquired | LockRenewed) and item.lease.resource == resource:
                leases.append(item.lease)
            if subscription.cursor >= head:
                break
    return leases


def beats(here: Path) -> list[float]:
    return [float(line) for line in (here / "beats").read_text().split()]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_cmd_runs_on_through_a_daemon_restart_and_no_one_else_is_granted(
        engramd: DaemonProcess, tmp_path: Path, how: signal.Signals) -> None:
    runner = start_lock_run(engramd, tmp_path, ttl=15)
    wait_until((tmp_path / "beats").exists, "CMD to start")
    (granted,) = lease_history(engramd.socket, "job")
    restart(engramd, how)
    # The lease is still the runner's, and it renews it from its new connection.
    wait_until(lambda: (lease := held(engramd.socket, "job")) is not None
               and lease.expires_at > granted.expires_at, "a renewal after the restart", 15)
    assert held(engramd.socket, "job").lock_id == granted.lock_id  # type: ignore[union-attr]
    rival: list[Lease] = []
    with connect(engramd.socket, "rival") as engram:
        thread = threading.Thread(target=lambda: rival.extend(
            engram.acquire_lock("job", ttl=5, wait=60)))
        thread.start()
        wait_until(lambda: held(engramd.socket, "job") is not None and len(
            client_waiters(engramd.socket, "job")) == 1, "the rival in line")
        (tmp_path / "stop").touch()
        _, err = runner.communicate(timeout=30)
        thread.join(WAIT)
    assert runner.returncode == 0, err
    assert err == ""
    ended = float((tmp_path / "end").read_text())
    assert rival[0].acquired_at.timestamp() > ended


def client_waiters(socket: str, resource: str) -> list[str]:
    with connect(socket, "observer") as engram:
        return [waiter.agent for waiter in engram.get_lock(resource).waiters]


def test_cmd_is_stopped_before_its_lease_ends_when_the_daemon_stays_away(
        engramd: DaemonProcess, tmp_path: Path) -> None:
    ttl = 3.0
    runner = start_lock_run(engramd, tmp_path, ttl=ttl)
    wait_until((tmp_path / "beats").exists, "CMD to start")
    engramd.process.send_signal(signal.SIGTERM)
    _, err = runner.communicate(timeout=ttl + 10)
    assert runner.returncode == 6
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("engram: error: could not renew the lease on job since ")
    assert err.rstrip().endswith("; stopping the command")
    with pytest.raises(ProcessLookupError):  # CMD is gone, not just signalled
        os.kill(int((tmp_path / "pid").read_text()), 0)
    last_beat = beats(tmp_path)[-1]
    restart(engramd, None)  # long after the ttl: the lease is over
    last_known = lease_history(engramd.socket, "job")[-1]
    margin = LeaseTiming(ttl).margin
    assert last_beat < last_known.expires_at.timestamp() - margin * 0.9
    with connect(engramd.socket, "rival") as engram:
        (rival,) = engram.acquire_lock("job", wait=WAIT)
    assert rival.acquired_at.timestamp() > last_beat


def test_two_scripts_of_one_agent_take_turns(engramd: DaemonProcess, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0")
    step = f"v=$(cat {counter}); sleep 0.005; echo $((v+1)) > {counter}"
    loops = [subprocess.Popen(
        ["sh", "-c", f"for i in $(seq 10); do {sys.executable} -m engram_cli lock run counter "
                     f"-- sh -c '{step}' || exit 1; done"],
        env={**engramd.env, "ENGRAM_AGENT": "cron"}) for _ in range(4)]
    for loop in loops:
        assert loop.wait(300) == 0
    assert counter.read_text().strip() == "40"


def test_killing_lock_run_kills_cmd_and_frees_the_lease(engramd: DaemonProcess,
                                                        tmp_path: Path) -> None:
    runner = start_lock_run(engramd, tmp_path, ttl=60)
    wait_until((tmp_path / "beats").exists, "CMD to start")
    cmd = int((tmp_path / "pid").read_text())
    runner.send_signal(signal.SIGKILL)
    runner.wait(WAIT)
    wait_until(lambda: not Path(f"/proc/{cmd}").exists()
               or "Z" in Path(f"/proc/{cmd}/stat").read_text().split()[2], "CMD to die")
    with connect(engramd.socket, "rival") as engram:
        (lease,) = engram.acquire_lock("job", wait=WAIT)  # long before the 60 s ttl
    assert lease.holder == "rival"


@pytest.mark.parametrize("cmd, status", [(["no-such-command-here"], 127),
                                         (["./not-executable"], 126)])
def test_a_cmd_that_cannot_run_exits_126_or_127_and_takes_no_lease(
        engramd: DaemonProcess, tmp_path: Path, cmd: list[str], status: int) -> None:
    (tmp_path / "not-executable").write_text("echo hi\n")
    result = subprocess.run([sys.executable, "-m", "engram_cli", "lock", "run", "job", "--",
                             *cmd], env=engramd.env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == status
    assert result.stderr.startswith(f"engram: error: cannot run {cmd[0]}: ")
    assert len(result.stderr.splitlines()) == 1
    assert held(engramd.socket, "job") is None


def test_lock_run_no_wait_exits_4_when_held(engramd: DaemonProcess) -> None:
    with connect(engramd.socket, "holder") as engram:
        engram.acquire_lock("job", ttl=30)
        for flag in ("-n", "--no-wait"):
            result = subprocess.run(
                [sys.executable, "-m", "engram_cli", "lock", "run", "job", flag, "--", "true"],
                env=engramd.env, capture_output=True, text=True, timeout=30, check=False)
            assert result.returncode == 4
            assert "job is held by holder (pid " in result.stderr


def test_timing_stops_cmd_in_time_for_any_ttl() -> None:
    for ttl in (0.3, 3, 60, 3600):
        timing = LeaseTiming(ttl)
        expiry = 1000.0
        assert timing.renew_every < ttl
        renewed = expiry - ttl  # just renewed: CMD keeps running at least one renewal more
        assert renewed + timing.renew_every < timing.stop_at(expiry)
        assert timing.stop_at(expiry) + timing.grace <= timing.kill_at(expiry) < expiry
        # The daemon's backstop comes after the holder, and still before the expiry.
        term, kill = timing.backstop(expiry)
        assert timing.stop_at(expiry) < term and kill - term == pytest.approx(timing.grace)
        assert timing.kill_at(expiry) < kill < expiry


@given(st.floats(min_value=0.001, max_value=1e6), st.floats(min_value=0, max_value=1e9))
def test_lock_runs_timing_is_the_protocols(ttl: float, expiry: float) -> None:
    """lock run keeps a copy of the rule (it starts without the protocol): the same."""
    ours, theirs = lockrun.LeaseTiming(ttl), LeaseTiming(ttl)
    assert (ours.renew_every, ours.grace, ours.margin) == (
        theirs.renew_every, theirs.grace, theirs.margin)
    assert (ours.stop_at(expiry), ours.kill_at(expiry)) == (
        theirs.stop_at(expiry), theirs.kill_at(expiry))


def test_an_unexpected_error_in_the_renewal_stops_cmd(
        threaded_daemon: ThreadedDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    with connect(threaded_daemon.config.socket, "runner") as engram:
        leases = engram.acquire_lock("job", ttl=0.9, pid=os.getpid())

        def broken(*args: object, **kwargs: object) -> Lease:
            raise RuntimeError("injected")

        monkeypatch.setattr(engram, "renew_lock", broken)
        command = Command([sys.executable, "-c", WORKER, str(tmp_path)])
        command.start({})
        keeper = LeaseKeeper(engram, leases)
        keeper.start()
        why = supervise(command, keeper)
        keeper.finish()
    assert why == "lease renewal failed unexpectedly: RuntimeError('injected')"
    assert command.poll() is not None and command.living() == []
    command.reap()
    assert capsys.readouterr().err == f"engram: error: {why}; stopping the command\n"


def waiting_for(socket: str, resource: str) -> list[str]:
    try:
        with connect(socket, "observer") as engram:
            return [waiter.agent for waiter in engram.get_lock(resource).waiters]
    except EngramError:  # the daemon is away
        return []


@pytest.mark.parametrize("words", [["lock", "acquire", "res", "--wait", "60"],
                                   ["lock", "run", "res", "--wait", "60", "--", "true"]],
                         ids=["acquire", "run"])
def test_a_wait_in_line_goes_on_through_a_daemon_restart(
        engramd: DaemonProcess, words: list[str]) -> None:
    with connect(engramd.socket, "alice") as alice:
        (lease,) = alice.acquire_lock("res", ttl=60)
    waiter = subprocess.Popen([sys.executable, "-m", "engram_cli", *words],
                              env={**engramd.env, "ENGRAM_AGENT": "bob"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: waiting_for(engramd.socket, "res") == ["bob"], "bob in line")
    restart(engramd, signal.SIGTERM)
    wait_until(lambda: waiting_for(engramd.socket, "res") == ["bob"], "bob in line again")
    assert waiter.poll() is None
    with connect(engramd.socket, "alice") as alice:
        alice.release_lock(lease.lock_id)
    _, err = waiter.communicate(timeout=WAIT)
    assert waiter.returncode == 0, err


@pytest.mark.parametrize("code", ["exit 137", "exit 200", "kill -PIPE $$"])
def test_a_cmd_that_exits_past_128_by_itself_or_by_sigpipe_is_not_told_as_killed(
        engramd: DaemonProcess, code: str) -> None:
    """An exit status of 137 is a status (``sh -c 'exit 137'``), not a SIGKILL; and
    SIGPIPE is how a command whose reader went ends (``| head``): nothing said."""
    run = subprocess.run([sys.executable, "-m", "engram_cli", "lock", "run", "job", "--",
                          "sh", "-c", code], env=engramd.env, capture_output=True, text=True,
                         timeout=WAIT * 3, check=False)
    assert run.returncode == {"exit 137": 137, "exit 200": 200}.get(code, 141)
    assert run.stderr == ""


def test_a_cmd_killed_by_another_process_is_said_in_one_line(
        engramd: DaemonProcess, tmp_path: Path) -> None:
    """CMD ended by a SIGTERM that lock run neither sent nor passed on: its status is
    passed through (143), and one line on stderr says what ended it."""
    runner = start_lock_run(engramd, tmp_path, ttl=30)
    wait_until((tmp_path / "beats").exists, "CMD to start")
    os.kill(int((tmp_path / "pid").read_text()), signal.SIGTERM)
    _, err = runner.communicate(timeout=WAIT * 3)
    assert runner.returncode == 143
    assert err.splitlines() == [
        "engram: the command was ended by SIGTERM, which engram neither sent nor passed "
        "on; its leases were held throughout and are released"]
    assert held(engramd.socket, "job") is None


@pytest.mark.parametrize("path", [None, "", "/nonexistent", "/usr/bin:/bin", "::/bin", "."])
@pytest.mark.parametrize("command", ["sh", "true", "no-such-command-here", "/bin/sh", "/bin",
                                     "./x", "bin/sh", ""])
def test_lock_run_finds_cmd_as_shutil_which_does(monkeypatch: pytest.MonkeyPatch,
                                                path: str | None, command: str) -> None:
    """lock run looks CMD up without shutil (whose imports cost its start): the same."""
    import shutil

    if path is None:
        monkeypatch.delenv("PATH", raising=False)
    else:
        monkeypatch.setenv("PATH", path)
    monkeypatch.chdir("/")
    assert lockrun._on_path(command) == (shutil.which(command) is not None)


@pytest.mark.parametrize("option", [["-w5"], ["-w", "5"], ["--wait=5"], ["-n"]])
def test_options_may_follow_the_resource_in_every_form_click_reads(
        engramd: DaemonProcess, option: list[str]) -> None:
    """``lock run RES -w5 -- CMD`` as ``RES -w 5``: the attached short form was refused
    as an unknown option after the resource."""
    run = subprocess.run([sys.executable, "-m", "engram_cli", "lock", "run", "job", *option,
                          "--", "true"], env=engramd.env, capture_output=True, text=True,
                         timeout=WAIT * 3, check=False)
    assert (run.returncode, run.stderr) == (0, "")
