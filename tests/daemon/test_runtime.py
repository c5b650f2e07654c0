"""The daemon's footprint: private dirs, the socket's mode, single ownership, stale sockets."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap

import pytest

from engram_cli.client import Client
from engramd.errors import StartupError
from engramd.runtime import claim_runtime, ensure_private_dir
from tests.conftest import (
    ThreadedDaemon,
    make_config,
    spawn_engramd,
    start_threaded,
    wait_until,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown or setuid")


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_socket_is_0600_in_a_0700_dir(threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    assert stat.S_ISSOCK(os.lstat(config.socket).st_mode)
    assert mode(config.socket) == 0o600
    assert mode(os.path.dirname(config.socket)) == 0o700
    assert mode(config.data_dir) == 0o700


def test_world_writable_socket_dir_is_refused(scratch: str) -> None:
    path = os.path.join(scratch, "open")
    os.mkdir(path)
    os.chmod(path, 0o777)
    with pytest.raises(StartupError, match=r"writable by others.*chmod 700"):
        ensure_private_dir(path, what="socket directory")


@needs_root
def test_dir_owned_by_another_user_is_refused(scratch: str) -> None:
    path = os.path.join(scratch, "theirs")
    os.mkdir(path, 0o700)
    os.chown(path, 65534, 65534)
    with pytest.raises(StartupError, match=r"belongs to uid 65534, not to you .*: set "
                                           r"ENGRAM_SOCKET to a directory of your own"):
        ensure_private_dir(path, what="socket directory")


def test_symlinked_dir_is_refused(scratch: str) -> None:
    target = os.path.join(scratch, "real")
    os.mkdir(target, 0o700)
    link = os.path.join(scratch, "link")
    os.symlink(target, link)
    with pytest.raises(StartupError, match="is a symbolic link; refusing it"):
        ensure_private_dir(link, what="socket directory")


def test_a_data_dir_others_can_read_is_refused_with_the_fix(scratch: str) -> None:
    path = os.path.join(scratch, "shared")
    os.mkdir(path)
    os.chmod(path, 0o755)
    with pytest.raises(StartupError, match=rf"^data dir {path} is readable by others "
                                           rf"\(mode 0755\): chmod 700 {path}$"):
        ensure_private_dir(path, what="data dir", private=True, setting="ENGRAM_DATA_DIR")
    ensure_private_dir(path, what="socket directory")  # a socket dir may be listed


def test_each_unusable_dir_gets_its_problem_and_fix() -> None:
    """The judgement both the daemon and the client give (pure: a stat result in)."""
    from engramd.protocol import unusable_dir

    def judged(mode: int, *, uid: int = 1000, writable: bool = True) -> str | None:
        info = os.stat_result((mode, 0, 0, 1, uid, uid, 0, 0, 0, 0))
        return unusable_dir("/d", "data dir", info, euid=1000, writable=writable,
                            private=True, setting="ENGRAM_DATA_DIR")

    assert judged(stat.S_IFDIR | 0o700) is None
    assert judged(stat.S_IFREG | 0o600) == (
        "data dir /d is not a directory: move it away, or set ENGRAM_DATA_DIR elsewhere")
    assert judged(stat.S_IFDIR | 0o700, uid=0) == (
        "data dir /d belongs to uid 0, not to you (uid 1000): set ENGRAM_DATA_DIR to a "
        "directory of your own")
    assert judged(stat.S_IFDIR | 0o500, writable=False) == (
        "data dir /d is not writable by you (mode 0500): chmod u+rwx /d")
    assert judged(stat.S_IFDIR | 0o750) == (
        "data dir /d is readable by others (mode 0750): chmod 700 /d")
    assert judged(stat.S_IFDIR | 0o777) == (
        "data dir /d is writable by others (mode 0777): chmod 700 /d")


@pytest.mark.slow
def test_two_daemons_never_share_a_data_dir(env: dict[str, str], scratch: str) -> None:
    config = make_config(env)
    with start_threaded(config):
        other_env = {**env, "ENGRAM_SOCKET": os.path.join(scratch, "other", "s.sock")}
        second = spawn_engramd(other_env)
        _, err = second.communicate(timeout=10)
        assert second.returncode == 1
        said = err.decode()
        assert f"data dir {config.data_dir} is in use by another engramd (pid {os.getpid()}, " \
            f"serving {config.socket}: set ENGRAM_SOCKET={config.socket} to use it" in said


@pytest.mark.slow
def test_second_daemon_on_the_same_socket_exits(env: dict[str, str], scratch: str) -> None:
    config = make_config(env)
    with start_threaded(config):
        other_env = {**env, "ENGRAM_DATA_DIR": os.path.join(scratch, "data2")}
        second = spawn_engramd(other_env)
        _, err = second.communicate(timeout=10)
        assert second.returncode == 1
        assert f"socket {config.socket} is in use" in err.decode()
        with Client(config.socket, autostart=False) as engram:
            engram.ping()


def test_stale_socket_file_is_replaced(env: dict[str, str]) -> None:
    config = make_config(env)
    os.makedirs(os.path.dirname(config.socket), mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(config.socket)
    dead.close()  # the file stays behind, nothing listens
    with start_threaded(config), Client(config.socket, autostart=False) as engram:
        engram.ping()


def test_live_foreign_listener_is_not_replaced(env: dict[str, str]) -> None:
    config = make_config(env)
    os.makedirs(os.path.dirname(config.socket), mode=0o700)
    os.makedirs(config.data_dir, mode=0o700)
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squatter.bind(config.socket)
    squatter.listen(1)
    try:
        with pytest.raises(StartupError, match="already listening"), \
                claim_runtime(config.socket, config.data_dir):
            pass
        assert os.path.exists(config.socket)
    finally:
        squatter.close()


def test_socket_file_is_removed_on_stop(env: dict[str, str]) -> None:
    config = make_config(env)
    with start_threaded(config):
        assert os.path.exists(config.socket)
    assert not os.path.exists(config.socket)


@needs_root
@pytest.mark.slow
def test_peer_of_another_uid_is_refused_by_credentials(env: dict[str, str]) -> None:
    """Second layer: even with the file modes opened up, SO_PEERCRED keeps others out."""
    config = make_config(env)
    with start_threaded(config):
        os.chmod(os.path.dirname(config.socket), 0o755)
        os.chmod(config.socket, 0o777)
        os.chmod(os.path.dirname(os.path.dirname(config.socket)), 0o755)
        # The daemon refuses on the kernel's word alone, before reading anything:
        # the intruder only listens (a hello it wrote could race the close).
        script = textwrap.dedent(f"""
            import os, socket
            import msgspec
            from engramd.protocol import AnyServerMessage, ErrorReply, FrameDecoder
            os.setgid(65534); os.setuid(65534)
            sock = socket.socket(socket.AF_UNIX); sock.settimeout(10)
            sock.connect({config.socket!r})
            frames, said = FrameDecoder(), []
            while (data := sock.recv(65536)):
                frames.receive_data(data)
                while (body := frames.next_frame()) is not None:
                    said.append(msgspec.msgpack.decode(body, type=AnyServerMessage))
            assert all(isinstance(m, ErrorReply) for m in said), said
            print(" ".join(m.code for m in said), "then closed")
        """)
        result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                                text=True, timeout=10, cwd=os.getcwd(), check=False,
                                env={**env, "PYTHONPATH": os.getcwd()})
        assert result.stdout.strip() == "forbidden then closed", result.stderr
        with Client(config.socket, autostart=False) as engram:
            engram.ping()


@needs_root
@pytest.mark.slow
def test_other_uid_cannot_even_connect_with_default_modes(threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    script = (f"import os, socket; os.setgid(65534); os.setuid(65534); "
              f"s = socket.socket(socket.AF_UNIX); s.connect({config.socket!r})")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=10, check=False)
    assert "PermissionError" in result.stderr


@pytest.mark.slow
def test_sigterm_stops_the_daemon_cleanly(env: dict[str, str]) -> None:
    process = spawn_engramd(env)
    path = env["ENGRAM_SOCKET"]
    wait_until(lambda: os.path.exists(path) or process.poll() is not None, "the socket")
    with Client(path, autostart=False) as engram:
        engram.ping()
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    assert not os.path.exists(path)
    _, err = process.communicate()
    assert b"received SIGTERM; stopping" in err
