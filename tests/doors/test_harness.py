"""``engram setup`` on recorded harness configuration files, and ``engram hook ...`` fed
recorded hook inputs, against engramd as a process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from engram_cli.doors import harness
from tests.conftest import DaemonProcess, connect, wait_until

DATA = Path(__file__).parent.parent / "data" / "harness"


def engram(env: dict[str, str], *args: str, cwd: Path | None = None, stdin: str = "",
           timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engram_cli", *args], env=env, cwd=cwd,
                          input=stdin, capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.fixture
def repo(tmp_path: Path, env: dict[str, str]) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    env["HOME"] = str(tmp_path / "home")
    return path


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".git/" not in str(p.relative_to(root)) + "/"}


# -- setup ------------------------------------------------------------------------------


def test_claude_code_setup_merges_checks_and_removes_byte_for_byte(
        repo: Path, env: dict[str, str]) -> None:
    (repo / ".claude").mkdir()
    shutil.copy(DATA / "claude_settings.json", repo / ".claude" / "settings.json")
    before = snapshot(repo)
    assert engram(env, "setup", "claude-code", "--check", cwd=repo).returncode == 1
    first = engram(env, "setup", "claude-code", cwd=repo)
    assert first.returncode == 0, first.stderr
    installed = snapshot(repo)
    settings = json.loads(installed[".claude/settings.json"])
    assert settings["permissions"] == {"allow": ["Bash(npm test:*)"]}
    commands = {event: [h["command"] for g in groups for h in g["hooks"]]
                for event, groups in settings["hooks"].items()}
    assert commands["PreToolUse"][0] == "python3 .claude/hooks/no_rm.py"  # theirs, first
    assert commands["Stop"][0] == "notify-send 'Claude is done'"
    assert any("hook pre-edit" in c and "--guard warn" in c for c in commands["PreToolUse"])
    assert any("hook session-start" in c for c in commands["SessionStart"])
    assert any("hook prompt" in c for c in commands["UserPromptSubmit"])
    (stop,) = [h for g in settings["hooks"]["Stop"] for h in g["hooks"] if harness.is_ours(h)]
    assert stop["async"] is True and stop["asyncRewake"] is True
    mcp = json.loads(installed[".mcp.json"])["mcpServers"]["engram"]
    assert mcp["type"] == "stdio"
    assert mcp["args"][-3:] == ["mcp", "--harness", "claude-code"]

    again = engram(env, "setup", "claude-code", cwd=repo)
    assert again.stdout.count("unchanged") == 2 and snapshot(repo) == installed
    assert engram(env, "setup", "claude-code", "--check", cwd=repo).returncode == 0

    settings["hooks"]["SessionStart"][0]["hooks"][0]["command"] = "engram hook session-start"
    (repo / ".claude" / "settings.json").write_text(json.dumps(settings))  # a hand edit
    stale = engram(env, "setup", "claude-code", "--check", cwd=repo)
    assert stale.returncode == 1 and "would update" in stale.stdout
    engram(env, "setup", "claude-code", cwd=repo)
    assert engram(env, "setup", "claude-code", "--check", cwd=repo).returncode == 0

    dry = engram(env, "setup", "claude-code", "--remove", "--dry-run", cwd=repo)
    assert "would restore" in dry.stdout and (repo / ".mcp.json").exists()
    removed = engram(env, "setup", "claude-code", "--remove", cwd=repo)
    assert removed.returncode == 0, removed.stderr
    assert snapshot(repo) == before  # what was there, byte for byte; .mcp.json gone


def test_removing_keeps_what_someone_added_after_the_install(repo: Path,
                                                              env: dict[str, str]) -> None:
    engram(env, "setup", "claude-code", "--guard", "block", cwd=repo)
    path = repo / ".claude" / "settings.json"
    settings = json.loads(path.read_text())
    settings["hooks"]["Stop"].append({"hooks": [{"type": "command", "command": "say done"}]})
    path.write_text(json.dumps(settings))
    engram(env, "setup", "claude-code", "--remove", cwd=repo)
    assert json.loads(path.read_text()) == {"hooks": {"Stop": [
        {"hooks": [{"type": "command", "command": "say done"}]}]}}
    assert not (repo / ".mcp.json").exists()


def test_codex_setup_writes_hooks_and_a_marked_mcp_block(repo: Path,
                                                         env: dict[str, str]) -> None:
    (repo / ".codex").mkdir()
    shutil.copy(DATA / "codex_hooks.json", repo / ".codex" / "hooks.json")
    shutil.copy(DATA / "codex_config.toml", repo / ".codex" / "config.toml")
    before = snapshot(repo)
    assert engram(env, "setup", "codex", cwd=repo).returncode == 0
    installed = snapshot(repo)
    config = tomllib.loads(installed[".codex/config.toml"].decode())
    assert config["model"] == "gpt-5-codex" and config["mcp_servers"]["beads"]
    assert config["mcp_servers"]["engram"]["args"][-3:] == ["mcp", "--harness", "codex"]
    hooks = json.loads(installed[".codex/hooks.json"])["hooks"]
    assert hooks["SessionStart"][0]["hooks"][0]["command"] == "bd prime --hook-json"
    assert "--harness codex" in hooks["Stop"][0]["hooks"][0]["command"]
    assert "apply_patch" in hooks["PreToolUse"][0]["matcher"]
    engram(env, "setup", "codex", cwd=repo)
    assert snapshot(repo) == installed
    assert engram(env, "setup", "codex", "--remove", cwd=repo).returncode == 0
    assert snapshot(repo) == before


def test_setup_refuses_what_it_cannot_read_and_unknown_harnesses(
        repo: Path, env: dict[str, str]) -> None:
    (repo / ".claude").mkdir()
    (repo / ".claude" / "settings.json").write_text("{not json")
    broken = engram(env, "setup", "claude-code", cwd=repo)
    assert broken.returncode == 1 and broken.stderr.count("\n") == 1
    assert (repo / ".claude" / "settings.json").read_text() == "{not json"
    assert engram(env, "setup", "cursor", cwd=repo).returncode == 2


# -- hooks --------------------------------------------------------------------------------


def recorded(name: str, repo: Path) -> str:
    return (DATA / name).read_text().replace("REPO", str(repo))


def test_the_lease_guard_warns_denies_or_stays_silent(engramd: DaemonProcess,
                                                      repo: Path) -> None:
    env = {**engramd.env, "ENGRAM_AGENT": "claude-a"}
    with connect(engramd.socket, "bob") as bob:
        bob.acquire_lock("src/app.py", ttl=300)
        for name in ("claude_pre_tool_use.json", "codex_pre_tool_use.json"):
            hook_input = recorded(name, repo)
            warned = engram(env, "hook", "pre-edit", "--guard", "warn", stdin=hook_input)
            answer = json.loads(warned.stdout)["hookSpecificOutput"]
            assert warned.returncode == 0 and "leased by bob" in answer["additionalContext"]
            denied = engram(env, "hook", "pre-edit", "--guard", "block", stdin=hook_input)
            answer = json.loads(denied.stdout)["hookSpecificOutput"]
            assert answer["permissionDecision"] == "deny"
            assert "src/app.py is leased by bob" in answer["permissionDecisionReason"]
        own = engram({**engramd.env, "ENGRAM_AGENT": "bob"}, "hook", "pre-edit",
                     stdin=recorded("claude_pre_tool_use.json", repo))
        assert own.returncode == 0 and own.stdout == ""  # your own lease: no warning
        free = recorded("claude_pre_tool_use.json", repo).replace("src/app.py", "docs/x.md")
        allowed = engram(env, "hook", "pre-edit", "--guard", "block", stdin=free)
        assert allowed.returncode == 0 and allowed.stdout == ""


def test_the_prompt_nudge_speaks_only_when_mail_waits(engramd: DaemonProcess,
                                                      repo: Path) -> None:
    env = {**engramd.env, "ENGRAM_AGENT": "claude-b"}
    hook_input = recorded("claude_user_prompt_submit.json", repo)
    quiet = engram(env, "hook", "prompt", stdin=hook_input)
    assert quiet.returncode == 0 and quiet.stdout == ""
    with connect(engramd.socket, "bob") as bob:
        bob.send_message("claude-b", "look at PR 7")
    nudge = json.loads(engram(env, "hook", "prompt", stdin=hook_input).stdout)
    assert "1 unread message(s)" in nudge["hookSpecificOutput"]["additionalContext"]


def test_session_start_gives_the_brief_and_exports_the_identity(
        engramd: DaemonProcess, repo: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "claude.env"
    env = {**engramd.env, "ENGRAM_AGENT": "claude-c", "CLAUDE_ENV_FILE": str(env_file)}
    result = engram(env, "hook", "session-start", stdin=recorded("claude_session_start.json",
                                                                  repo))
    answer = json.loads(result.stdout)["hookSpecificOutput"]
    assert answer["hookEventName"] == "SessionStart"
    assert answer["additionalContext"].startswith("# engram: you are claude-c")
    assert "export ENGRAM_AGENT=claude-c\nexport ENGRAM_SESSION_PID=" in env_file.read_text()


def test_the_claude_stop_hook_wakes_on_mail_and_exits_0_otherwise(
        engramd: DaemonProcess, repo: Path, env: dict[str, str]) -> None:
    env = {**env, "ENGRAM_SOCKET": str(repo / "none.sock")}
    hook_env = {**engramd.env, "ENGRAM_AGENT": "claude-d"}
    hook_input = recorded("claude_stop.json", repo)
    timed_out = engram(hook_env, "hook", "stop", "--wait", "0.2", stdin=hook_input)
    assert timed_out.returncode == 0 and timed_out.stderr == ""
    (repo / "stop.json").write_text(hook_input)
    with open(repo / "stop.json") as stdin:
        waiter = subprocess.Popen([sys.executable, "-m", "engram_cli", "hook", "stop",
                                   "--wait", "60"], env=hook_env, stdin=stdin,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with connect(engramd.socket, "probe") as probe:
        wait_until(lambda: probe.stats().gauges["requests_in_flight"] > 1, "the hook to wait")
        second = engram(hook_env, "hook", "stop", "--wait", "60", stdin=hook_input)
        assert second.returncode == 0  # one waiter per agent: this one leaves at once
        with connect(engramd.socket, "bob") as bob:
            sent = time.monotonic()
            bob.send_message("claude-d", "your turn")
    _, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 2 and "a message from bob is waiting" in err
    assert time.monotonic() - sent < 5  # woken by the message, long before its wait
    no_daemon = engram({**env, "ENGRAM_NO_AUTOSTART": "1"}, "hook", "stop", stdin=hook_input)
    assert no_daemon.returncode == 0 and no_daemon.stdout == no_daemon.stderr == ""


def test_the_codex_stop_hook_continues_once_never_twice_in_a_row(
        engramd: DaemonProcess, repo: Path) -> None:
    env = {**engramd.env, "ENGRAM_AGENT": "codex-e"}
    hook_input = recorded("codex_stop.json", repo)
    assert engram(env, "hook", "stop", "--harness", "codex", stdin=hook_input).stdout == ""
    with connect(engramd.socket, "bob") as bob:
        bob.send_message("codex-e", "one more thing")
    first = json.loads(engram(env, "hook", "stop", "--harness", "codex",
                              stdin=hook_input).stdout)
    assert first["decision"] == "block" and "1 unread" in first["reason"]
    again = hook_input.replace('"stop_hook_active": false', '"stop_hook_active": true')
    second = engram(env, "hook", "stop", "--harness", "codex", stdin=again)
    assert second.returncode == 0 and second.stdout == ""


def test_watch_line_format_prints_one_short_line_per_event(engramd: DaemonProcess) -> None:
    watcher = subprocess.Popen([sys.executable, "-m", "engram_cli", "watch", "--format",
                                "line", "--since", "start", "--count", "2", "-c", "build-9",
                                "-k", "unit.created"],
                               env=engramd.env, stdout=subprocess.PIPE, text=True)
    with connect(engramd.socket, "alice") as alice:
        alice.create_unit("build-9", "REASONING", "x" * 5000)
        alice.create_unit("build-9", "ERROR", "line one\nline two")
    out, _ = watcher.communicate(timeout=30)
    lines = out.splitlines()
    assert watcher.returncode == 0 and len(lines) == 2
    assert all(len(line) <= 200 for line in lines)
    assert " alice REASONING [build-9] " in lines[0] and lines[0].endswith("…")
    assert lines[1].endswith(": line one line two")
