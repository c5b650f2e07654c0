from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engramd.config import SETTINGS, ConfigError, load_config
from engramd.main import main
from tests.conftest import WAIT


def load(env: dict[str, str], **kwargs: object):  # type: ignore[no-untyped-def]
    return load_config(env=env, uid=os.geteuid(), **kwargs)  # type: ignore[arg-type]


def write_config(env: dict[str, str], text: str) -> str:
    path = Path(env["XDG_CONFIG_HOME"]) / "engram" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_defaults_when_nothing_is_set(env: dict[str, str]) -> None:
    config = load(env)
    assert config.max_connections == 256
    assert config.max_frame_bytes == 16 * 1024 * 1024
    assert config.config_file is None
    assert config.sources.get("limits.max_connections", "default") == "default"


def test_file_then_environment_then_flag(env: dict[str, str]) -> None:
    path = write_config(env, "log_level = 'debug'\n[limits]\nmax_connections = 10\n"
                             "max_inflight_per_connection = 7\n")
    env["ENGRAM_LIMITS_MAX_CONNECTIONS"] = "20"
    config = load(env, overrides={"limits.max_inflight_per_connection": "9"})
    assert config.config_file == path
    assert config.log_level == "debug" and config.sources["log_level"] == "file"
    assert config.max_connections == 20
    assert config.sources["limits.max_connections"] == "env:ENGRAM_LIMITS_MAX_CONNECTIONS"
    assert config.max_inflight_per_connection == 9
    assert config.sources["limits.max_inflight_per_connection"] == "flag"


def test_unknown_key_in_file_is_an_error(env: dict[str, str]) -> None:
    path = write_config(env, "[limits]\nmax_conections = 10\n")
    with pytest.raises(ConfigError, match=f"{path}: unknown key 'limits.max_conections'"):
        load(env)


def test_socket_is_not_a_file_key(env: dict[str, str]) -> None:
    write_config(env, "socket = '/x'\n")
    with pytest.raises(ConfigError, match="--socket"):
        load(env)


@pytest.mark.parametrize("text, message", [
    ("[limits]\nmax_connections = 'many'\n", "must be int"),
    ("[limits]\nmax_connections = 0\n", "at least 1"),
    ("log_level = 'loud'\n", "must be one of"),
    ("[limits\n", "not valid TOML"),
])
def test_bad_values_in_file_are_errors(env: dict[str, str], text: str, message: str) -> None:
    write_config(env, text)
    with pytest.raises(ConfigError, match=message):
        load(env)


def test_bad_environment_value_names_the_variable(env: dict[str, str]) -> None:
    env["ENGRAM_SHUTDOWN_GRACE"] = "soon"
    with pytest.raises(ConfigError, match="ENGRAM_SHUTDOWN_GRACE"):
        load(env)


def test_unknown_set_key_is_an_error(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        load(env, overrides={"nope": "1"})


def test_explicit_missing_config_file_is_an_error(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(env, config_file="/nonexistent/config.toml")


def test_every_setting_has_an_environment_name() -> None:
    names = [setting.env_var for setting in SETTINGS]
    assert len(set(names)) == len(names)
    assert all(name.startswith("ENGRAM_") for name in names)


def test_print_config_shows_values_and_sources(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ENGRAM_LIMITS_MAX_CONNECTIONS", "12")
    assert main(["--print-config", "--set", "shutdown_grace=1.5"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "12" in lines["limits.max_connections"]
    assert "env:ENGRAM_LIMITS_MAX_CONNECTIONS" in lines["limits.max_connections"]
    assert "1.5" in lines["shutdown_grace"] and "# flag" in lines["shutdown_grace"]
    assert env["ENGRAM_SOCKET"] in lines["socket"]


def test_bad_configuration_exits_2_with_one_line(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["--set", "limits.max_connections=-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("engramd: error:")


def test_the_settings_table_and_the_config_agree_on_defaults() -> None:
    import dataclasses

    from engramd.config import DaemonConfig

    fields = {field.name: field.default for field in dataclasses.fields(DaemonConfig)}
    for setting in SETTINGS:
        assert fields[setting.attr] == setting.default, setting.key


NUMBER_SETTINGS = [setting for setting in SETTINGS if setting.kind in (int, float)]


@pytest.mark.parametrize("setting", NUMBER_SETTINGS, ids=lambda setting: setting.key)
def test_every_number_setting_refuses_what_is_not_a_finite_bounded_number(
        env: dict[str, str], setting: Any) -> None:
    bad = ["nan", "inf", "-inf", "1e300"] if setting.kind is float else [
        str(2**63), "99999999999999999999"]
    bad.append("\u0661\u0662")  # Arabic-Indic digits, which int() and float() take
    for text in bad:
        with pytest.raises(ConfigError, match=setting.key):
            load(env, overrides={setting.key: text})
    if setting.kind is float:
        table, _, name = setting.key.rpartition(".")
        for text in ("nan", "inf", "1e300"):
            write_config(env, (f"[{table}]\n" if table else "") + f"{name} = {text}\n")
            with pytest.raises(ConfigError, match=setting.key):
                load(env)


@pytest.mark.parametrize("config_text, variables, flags, said", [
    ("[retention]\ninterval = nan\n", {}, [], "retention.interval must be a finite number"),
    ("", {"ENGRAM_RETENTION_INTERVAL": "nan"}, [], "ENGRAM_RETENTION_INTERVAL"),
    ("", {}, ["--set", "disk.sample_seconds=nan"], "disk.sample_seconds must be a finite"),
    ("", {}, ["--set", "shutdown_grace=inf"], "shutdown_grace must be a finite"),
    ("", {}, ["--set", "store.block_cache_bytes=99999999999999999999"],
     "store.block_cache_bytes must be at most 9223372036854775807"),
    ("", {}, ["--set", "search.exact_rows=99999999999999999999"],
     "search.exact_rows must be at most"),
    ("", {"ENGRAM_LOCKS_DEFAULT_TTL": "\u0661\u0662"}, [], "in ASCII digits"),
])
def test_engramd_refuses_a_number_it_could_not_use_with_one_line_and_exit_2(
        env: dict[str, str], config_text: str, variables: dict[str, str], flags: list[str],
        said: str) -> None:
    if config_text:
        write_config(env, config_text)
    done = subprocess.run([sys.executable, "-m", "engramd", *flags], env={**env, **variables},
                          capture_output=True, text=True, timeout=WAIT, check=False)
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_a_text_setting_may_hold_any_script(env: dict[str, str]) -> None:
    env["ENGRAM_RETENTION_ARCHIVE_DIR"] = "/srv/архив"
    assert load(env).archive_dir == "/srv/архив"


def test_store_write_buffers_has_a_maximum_rocksdb_takes(env: dict[str, str]) -> None:
    """RocksDB keeps the memtable count in a C int: 2^63-1 passed the general bound and
    then stopped engramd at start with an OverflowError."""
    with pytest.raises(ConfigError, match=r"store\.write_buffers must be at most 64"):
        load(env, overrides={"store.write_buffers": str(2**63 - 1)})
    assert load(env, overrides={"store.write_buffers": "64"}).write_buffers == 64
