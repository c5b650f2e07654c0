"""Hostile input meets the real CLI and daemon: text that would command a terminal is
shown, never obeyed; bytes that are not UTF-8 and names that are not names are usage
errors naming them; every limit is one message and one exit status."""

from __future__ import annotations

import json
import subprocess
import sys

from engram_cli.client import Client
from engramd.protocol import Relationship
from tests.conftest import DaemonProcess, on_a_terminal, run_cli

# A window title, a cleared screen, red text, a bell, a carriage return that overwrites
# the line, an 8-bit CSI, and a right-to-left override.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\rover\x9b2J\u202etxt"
OBEYED = ("\x1b]0;", "\x1b[2J", "\x1b[31m", "\x07", "\r", "\x9b", "\u202e")


def assert_shown_not_obeyed(screen: str) -> None:
    for sequence in OBEYED:
        assert sequence not in screen, (sequence, screen)
    assert "\\x1b]0;pwned\\x07" in screen, screen


def test_terminal_views_show_control_characters_escaped(engramd: DaemonProcess) -> None:
    with Client(engramd.socket, agent_id="mallory", autostart=False) as engram:
        root = engram.create_unit("hostile", "MESSAGE", HOSTILE.encode(),
                                  meta={"note": HOSTILE})
        engram.create_unit("hostile", "TOOL_CALL", "reply", relationships=[
            Relationship(type="RESPONDS_TO", target=root.id)])
        engram.send_message("tester", HOSTILE, new_recipients=True)
        engram.acquire_lock("res" + HOSTILE, ttl=600, bind_connection=False)
    for view in (["unit", "list", "-c", "hostile"], ["unit", "get", root.id],
                 ["trace", root.id], ["search", "pwned"], ["inbox", "--peek"],
                 ["prime", "-c", "hostile"], ["lock", "show", "res" + HOSTILE],
                 ["lock", "list"]):
        assert_shown_not_obeyed(on_a_terminal(engramd.env, *view))


def test_piped_rows_escape_them_too_and_json_and_raw_keep_the_bytes(
        engramd: DaemonProcess) -> None:
    with Client(engramd.socket, agent_id="mallory", autostart=False) as engram:
        unit = engram.create_unit("hostile", "MESSAGE", HOSTILE.encode())
    piped = run_cli(engramd.env, "unit", "list", "-c", "hostile")
    assert piped.returncode == 0
    assert_shown_not_obeyed(piped.stdout)
    # (a preview flattens whitespace: the carriage return is a space there)
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mred over\\x9b2J\\u202etxt" in piped.stdout
    as_json = run_cli(engramd.env, "unit", "get", unit.id, "--json")
    assert json.loads(as_json.stdout)["payload"] == HOSTILE
    raw = subprocess.run([sys.executable, "-m", "engram_cli", "unit", "get", unit.id, "--raw"],
                         env=engramd.env, capture_output=True, timeout=30, check=True)
    assert raw.stdout == HOSTILE.encode()


def test_an_error_naming_hostile_text_shows_it_escaped(engramd: DaemonProcess) -> None:
    refused = run_cli(engramd.env, "context", "get", "no\x1b[2Jsuch")
    assert refused.returncode != 0 and "\x1b[2J" not in refused.stderr, refused.stderr
    assert len(refused.stderr.splitlines()) == 1


def test_arguments_that_are_not_utf8_are_usage_errors_naming_them(
        engramd: DaemonProcess) -> None:
    # Python hands undecodable bytes of argv and the environment over as surrogates.
    bad = b"\xff\xfe".decode("utf-8", "surrogateescape")
    for args, named in ((["unit", "create", "-c", "x", "-p", bad], "'\\xff\\xfe' (after -p)"),
                        (["unit", "create", "-c", "x", f"--meta=k={bad}", "-p", "x"],
                         "'--meta=k=\\xff\\xfe'"),
                        (["unit", "create", "-c", f"ctx{bad}", "-p", "x"], "(after -c)"),
                        (["lock", "acquire", f"res{bad}"], "'res\\xff\\xfe'")):
        result = run_cli(engramd.env, *args)
        assert result.returncode == 2, result
        assert named in result.stderr and "not valid UTF-8" in result.stderr, result.stderr
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    result = run_cli({**engramd.env, "ENGRAM_AGENT": f"a{bad}"}, "ping")
    assert result.returncode == 2 and "$ENGRAM_AGENT is not valid UTF-8" in result.stderr
    # After `--` the words are CMD's: any bytes pass through to it.
    ran = run_cli(engramd.env, "lock", "run", "r", "--",
                  "sh", "-c", 'test "$1" = "$(printf "\\377\\376")"', "sh", bad)
    assert ran.returncode == 0, ran.stderr


def test_agent_ids_are_names_like_context_ids(engramd: DaemonProcess) -> None:
    for agent in ("bad\nname", "two words", "\x1b[2J", "-leading"):
        result = run_cli({**engramd.env, "ENGRAM_AGENT": agent}, "ping")
        assert result.returncode == 2, (agent, result)
        assert "bad agent id" in result.stderr and "\x1b[2J" not in result.stderr
    for agent in ("alice", "claude-code-1234", "auth0|42", "alice@example.com", "host$"):
        assert run_cli({**engramd.env, "ENGRAM_AGENT": agent}, "ping").returncode == 0, agent


def test_one_limit_one_message_one_exit_status(engramd: DaemonProcess) -> None:
    def meta_args(count: int) -> list[str]:
        return [arg for n in range(count) for arg in ("-m", f"k{n}=v")]

    over_config = run_cli(engramd.env, "unit", "create", "-c", "l", "-p", "x", *meta_args(100))
    over_wire = run_cli(engramd.env, "unit", "create", "-c", "l", "-p", "x", *meta_args(2000))
    assert (over_config.returncode, over_wire.returncode) == (2, 2)
    assert "100 metadata entries, limit 64" in over_config.stderr
    assert "more than 1024 metadata entries, limit 64" in over_wire.stderr
    big = run_cli(engramd.env, "unit", "create", "-c", "l", "--file", "/dev/stdin",
                  input=b"x" * (2 * 1024 * 1024))
    assert big.returncode == 2 and "limits.max_payload_bytes" in big.stderr, big.stderr
    as_json = run_cli(engramd.env, "--json", "unit", "create", "-c", "l", "-p", "x",
                      *meta_args(100))
    assert json.loads(as_json.stderr)["error"] == {
        "code": "too_large", "message": "100 metadata entries, limit 64", "exit": 2}


def test_a_lease_for_a_process_that_is_not_running_is_refused(engramd: DaemonProcess) -> None:
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                            capture_output=True, text=True, check=True)
    refused = run_cli(engramd.env, "lock", "acquire", "r", "--pid", exited.stdout.strip())
    assert refused.returncode == 2 and "is not running" in refused.stderr, refused
    assert run_cli(engramd.env, "--json", "lock", "show", "r").stdout.count('"lease":null')
