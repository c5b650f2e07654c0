from __future__ import annotations

import pytest

from engramd.protocol import (
    MAX_SOCKET_PATH_BYTES,
    SocketPathTooLong,
    default_config_file,
    resolve_data_dir,
    resolve_socket_path,
)


def test_flag_beats_environment() -> None:
    env = {"ENGRAM_SOCKET": "/e/s.sock", "XDG_RUNTIME_DIR": "/run/user/5"}
    assert resolve_socket_path("/f/s.sock", env, 5) == "/f/s.sock"


def test_engram_socket_beats_xdg() -> None:
    env = {"ENGRAM_SOCKET": "/e/s.sock", "XDG_RUNTIME_DIR": "/run/user/5"}
    assert resolve_socket_path(None, env, 5) == "/e/s.sock"


def test_xdg_runtime_dir_default() -> None:
    assert resolve_socket_path(None, {"XDG_RUNTIME_DIR": "/run/user/5"}, 5) == (
        "/run/user/5/engram/engramd.sock")


def test_tmp_fallback_names_the_uid() -> None:
    assert resolve_socket_path(None, {}, 1234) == "/tmp/engram-1234/engramd.sock"


def test_over_long_socket_path_is_a_clear_error() -> None:
    long_path = "/tmp/" + "d" * MAX_SOCKET_PATH_BYTES + "/s.sock"
    with pytest.raises(SocketPathTooLong, match="over the limit of 107"):
        resolve_socket_path(long_path, {}, 0)


def test_path_at_the_limit_is_accepted() -> None:
    path = "/" + "a" * (MAX_SOCKET_PATH_BYTES - 1)
    assert resolve_socket_path(path, {}, 0) == path


def test_data_dir_rules() -> None:
    assert resolve_data_dir("/flag", {"ENGRAM_DATA_DIR": "/env"}) == "/flag"
    assert resolve_data_dir(None, {"ENGRAM_DATA_DIR": "/env"}) == "/env"
    assert resolve_data_dir(None, {"XDG_DATA_HOME": "/xdg"}) == "/xdg/engram"
    assert resolve_data_dir(None, {"HOME": "/home/u"}) == "/home/u/.local/share/engram"


def test_config_file_rules() -> None:
    assert default_config_file({"XDG_CONFIG_HOME": "/c"}) == "/c/engram/config.toml"
    assert default_config_file({"HOME": "/h"}) == "/h/.config/engram/config.toml"
