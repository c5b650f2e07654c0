"""The ``engram`` program at its boundary: command line in, exit status and output out."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from engramd.protocol.logline import LEVELS, parse_line
from tests.conftest import DaemonProcess, run_cli, socket_answers

pytestmark = pytest.mark.slow  # every test here runs processes


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("engram: error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


def test_ping_starts_the_daemon_when_none_runs(env: dict[str, str]) -> None:
    assert not os.path.exists(env["ENGRAM_SOCKET"])
    result = run_cli(env, "ping")
    try:
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("pong from engramd")
        log = os.path.join(env["ENGRAM_DATA_DIR"], "engramd.log")
        with open(log) as file:
            assert "ready on" in file.read()
    finally:
        stopped = run_cli(env, "daemon", "stop")
    assert stopped.returncode == 0 and "stopped engramd" in stopped.stdout
    assert not os.path.exists(env["ENGRAM_SOCKET"])


def test_the_daemon_started_is_the_installed_one_whatever_the_directory(
        env: dict[str, str], scratch: str) -> None:
    """A command run in a directory holding an ``engramd`` package (a checkout of engram,
    an unrelated project) starts the engramd installed beside the client, not that one."""
    here = os.path.join(scratch, "checkout")
    os.makedirs(os.path.join(here, "engramd"))
    for name in ("__init__.py", "__main__.py"):
        with open(os.path.join(here, "engramd", name), "w") as file:
            file.write("raise SystemExit('the wrong engramd')\n")
    engram = os.path.join(os.path.dirname(sys.executable), "engram")  # as a user runs it
    result = subprocess.run([engram, "ping"], env=env, cwd=here,
                            capture_output=True, text=True, timeout=30, check=False)
    try:
        assert result.returncode == 0, result.stderr
    finally:
        run_cli(env, "daemon", "stop")


def test_the_data_dir_option_is_the_journal_of_the_daemon_it_starts(
        env: dict[str, str], scratch: str) -> None:
    """``--data-dir`` overrides ENGRAM_DATA_DIR, as ``--socket`` overrides ENGRAM_SOCKET:
    a harness that passes no environment still starts the daemon the shell would."""
    given = os.path.join(scratch, "given")
    result = run_cli(env, "--data-dir", given, "--json", "status")
    try:
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["data_dir"] == given
        assert os.path.exists(os.path.join(given, "engramd.log"))
        assert not os.path.exists(env["ENGRAM_DATA_DIR"])
    finally:
        run_cli(env, "daemon", "stop")
    logs = run_cli(env, "--data-dir", given, "daemon", "logs", "-n", "1")  # none runs
    assert logs.returncode == 0 and "stopped" in logs.stdout


def test_no_autostart_gives_exit_69_and_one_line(env: dict[str, str]) -> None:
    env["ENGRAM_NO_AUTOSTART"] = "1"
    result = run_cli(env, "ping")
    assert result.returncode == 69
    assert "engramd is not running on" in one_error_line(result)
    assert not socket_answers(env["ENGRAM_SOCKET"])


def test_concurrent_autostarts_start_one_daemon(env: dict[str, str]) -> None:
    processes = [subprocess.Popen([sys.executable, "-m", "engram_cli", "--json", "status"],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(4)]
    try:
        outputs = [process.communicate(timeout=30) for process in processes]
        assert [process.returncode for process in processes] == [0] * 4, outputs
        pids = {json.loads(out)["pid"] for out, _ in outputs}
        assert len(pids) == 1
    finally:
        run_cli(env, "daemon", "stop")


def test_json_status_uses_the_protocol_field_names(engramd: DaemonProcess) -> None:
    result = run_cli(engramd.env, "--json", "status")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["state"] == "ready"
    assert data["socket"] == engramd.socket
    assert data["pid"] == engramd.process.pid
    assert data["limits"]["max_frame_bytes"] == 16 * 1024 * 1024
    assert "msg" not in data and "id" not in data


def test_json_flag_after_the_command_works_too(engramd: DaemonProcess) -> None:
    result = run_cli(engramd.env, "ping", "--count", "2", "--json")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 2
    assert {"daemon_version", "uptime", "server_time", "rtt_ms"} <= set(lines[0])


def test_piped_status_is_tab_separated(engramd: DaemonProcess) -> None:
    result = run_cli(engramd.env, "status")
    rows = dict(line.split("\t", 1) for line in result.stdout.splitlines())
    assert rows["state"] == "ready"
    assert rows["pid"] == str(engramd.process.pid)
    assert "\x1b[" not in result.stdout


@pytest.mark.parametrize("args", [["ping", "--count", "0"], ["no-such-command"],
                                  ["daemon", "start", "--timeout", "x"]])
def test_usage_errors_exit_2(env: dict[str, str], args: list[str]) -> None:
    env["ENGRAM_NO_AUTOSTART"] = "1"
    result = run_cli(env, *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_the_exit_codes(env: dict[str, str]) -> None:
    result = run_cli(env, "--help")
    assert result.returncode == 0
    assert "69 daemon unavailable" in result.stdout


def test_daemon_status_when_stopped_exits_69(env: dict[str, str]) -> None:
    result = run_cli(env, "daemon", "status")
    assert result.returncode == 69
    one_error_line(result)
    assert not os.path.exists(env["ENGRAM_SOCKET"]), "daemon status must not start a daemon"


def test_daemon_stop_when_stopped_is_fine(env: dict[str, str]) -> None:
    result = run_cli(env, "daemon", "stop")
    assert result.returncode == 0
    assert result.stdout.strip() == "engramd is not running"


def test_daemon_start_status_restart_logs_stop(env: dict[str, str]) -> None:
    try:
        started = run_cli(env, "--json", "daemon", "start")
        assert started.returncode == 0, started.stderr
        first = json.loads(started.stdout)
        assert first["started"] is True
        again = run_cli(env, "daemon", "start")
        assert f"already running (pid {first['pid']})" in again.stdout
        status = run_cli(env, "daemon", "status")
        assert status.returncode == 0 and "running (ready)" in status.stdout
        restarted = run_cli(env, "--json", "daemon", "restart")
        second = json.loads(restarted.stdout)
        assert second["started"] is True and second["pid"] != first["pid"]
        logs = run_cli(env, "daemon", "logs", "-n", "100")
        assert logs.stdout.count("ready on") == 2
        assert "stopping" in logs.stdout
        for line in logs.stdout.splitlines():
            fields = parse_line(line)
            assert fields["level"] in LEVELS and fields["ts"].endswith("Z"), line
            assert fields["logger"].startswith("engramd") and "msg" in fields
        warnings = run_cli(env, "daemon", "logs", "-n", "100", "--level", "warning")
        assert warnings.returncode == 0 and "ready on" not in warnings.stdout
        as_json = run_cli(env, "daemon", "logs", "-n", "100", "--json").stdout.splitlines()
        assert [json.loads(line) for line in as_json] == [
            parse_line(line) for line in logs.stdout.splitlines()]
        stopped = run_cli(env, "daemon", "stop", "--json")
        assert json.loads(stopped.stdout) == {"stopped": True, "pid": second["pid"]}
    finally:
        stopped = run_cli(env, "daemon", "stop", "--json")
        assert stopped.returncode == 0
    assert json.loads(stopped.stdout) == {"stopped": False, "pid": None}


def test_version_never_starts_a_daemon(env: dict[str, str]) -> None:
    result = run_cli(env, "--json", "version")
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert data["daemon"] is None and data["protocol_version"] == 1
    assert not os.path.exists(env["ENGRAM_SOCKET"])


def test_version_reports_a_running_daemon(engramd: DaemonProcess) -> None:
    result = run_cli(engramd.env, "version")
    assert f"pid {engramd.process.pid}" in result.stdout


def test_over_long_socket_path_is_one_clear_line(env: dict[str, str]) -> None:
    result = run_cli(env, "--socket", "/tmp/" + "x" * 200 + "/s.sock", "ping")
    assert result.returncode == 1
    assert "over the limit of 107" in one_error_line(result)


def test_daemon_refuses_over_long_socket_path(env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-m", "engramd", "--socket", "/" + "y" * 200],
                            env=env, capture_output=True, text=True, timeout=10, check=False)
    assert result.returncode == 2
    assert "over the limit of 107" in result.stderr


def test_debug_shows_the_traceback(env: dict[str, str]) -> None:
    env.update(ENGRAM_NO_AUTOSTART="1", ENGRAM_DEBUG="1")
    result = run_cli(env, "ping")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "Unavailable" in result.stderr


def test_daemon_that_cannot_start_names_its_log(env: dict[str, str]) -> None:
    os.makedirs(os.path.dirname(env["XDG_CONFIG_HOME"] + "/engram/config.toml"))
    with open(env["XDG_CONFIG_HOME"] + "/engram/config.toml", "w") as file:
        file.write("bogus = 1\n")
    result = run_cli(env, "ping")
    assert result.returncode == 69
    line = one_error_line(result)
    assert "engramd.log" in line and "unknown key 'bogus'" in line


def test_bench_reports_percentiles(env: dict[str, str]) -> None:
    result = run_cli(env, "bench", "--only", "ping", "--scale", "0.01", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["name"] == "ping" and row["ops"] == 50
    assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert row["throughput"] > 0


def test_bench_rejects_unknown_workloads(env: dict[str, str]) -> None:
    result = run_cli(env, "bench", "--only", "nope")
    assert result.returncode == 2
    assert "unknown workload nope" in one_error_line(result)


def _files_under(path: str) -> dict[str, int]:
    return {os.path.join(top, name): stat.S_IMODE(os.lstat(os.path.join(top, name)).st_mode)
            for top, dirs, files in os.walk(path) for name in [*dirs, *files]}


def test_every_file_of_the_daemon_is_private_whatever_the_umask(env: dict[str, str]) -> None:
    started = subprocess.run([sys.executable, "-m", "engram_cli", "unit", "create", "-c", "u",
                              "-p", "secret text"], env=env, capture_output=True, text=True,
                             timeout=60, check=False, umask=0)
    try:
        assert started.returncode == 0, started.stderr
        run_cli(env, "search", "secret")  # search.db written to
        made = _files_under(env["ENGRAM_DATA_DIR"])
        assert any(name.endswith("search.db") for name in made)
        loose = {name: f"{mode:04o}" for name, mode in made.items()
                 if mode & 0o077}
        assert loose == {}
    finally:
        run_cli(env, "daemon", "stop")


@pytest.mark.parametrize("problem", ["a file", "mode 0755"])
def test_an_unusable_data_dir_is_one_line_from_client_and_daemon(
        env: dict[str, str], problem: str) -> None:
    data_dir = env["ENGRAM_DATA_DIR"]
    os.makedirs(os.path.dirname(data_dir), exist_ok=True)
    if problem == "a file":
        with open(data_dir, "w") as file:
            file.write("not a directory")
        expected = (f"data dir {data_dir} is not a directory: move it away, or set "
                    "ENGRAM_DATA_DIR elsewhere")
    else:
        os.mkdir(data_dir)
        os.chmod(data_dir, 0o755)
        expected = f"data dir {data_dir} is readable by others (mode 0755): chmod 700 {data_dir}"
    client = run_cli(env, "ping")
    assert client.returncode == 69
    assert client.stderr == f"engram: error: {expected}\n"
    daemon = subprocess.run([sys.executable, "-m", "engramd"], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert daemon.returncode == 1
    (line,) = daemon.stderr.splitlines()
    assert parse_line(line)["msg"] == expected
    assert not os.path.exists(env["ENGRAM_SOCKET"])
