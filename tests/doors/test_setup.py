"""``engram setup`` on real files in a temporary project and home: what it writes for each
harness, that it is safe with the user's files (modes, owners, odd shapes, entries there
already, order), and that ``--check`` and ``--remove`` agree with it."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from engram_cli.doors import harness, tomlblock
from tests.doors.test_harness import DATA, engram, snapshot


@pytest.fixture
def repo(tmp_path: Path, env: dict[str, str]) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    env["HOME"] = str(tmp_path / "home")
    return path


def home(env: dict[str, str]) -> Path:
    path = Path(env["HOME"])
    path.mkdir(exist_ok=True)
    return path


def commands(hooks: dict[str, list[dict]]) -> dict[str, list[str]]:
    """Each event's commands, in order (matcher groups or Cursor's flat handlers)."""
    return {event: [handler["command"] for entry in entries
                    for handler in entry.get("hooks", [entry])]
            for event, entries in hooks.items()}


def private(path: Path, text: str, owner: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    if owner is not None:
        os.chown(path, owner, owner)


# -- Claude Code and Codex --------------------------------------------------------------


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
    found = commands(settings["hooks"])
    assert found["PreToolUse"][0] == "python3 .claude/hooks/no_rm.py"  # theirs, first
    assert found["Stop"][0] == "notify-send 'Claude is done'"
    assert any("hook pre-edit" in c and "--guard warn" in c for c in found["PreToolUse"])
    assert any("hook session-start" in c for c in found["SessionStart"])
    assert any("hook prompt" in c for c in found["UserPromptSubmit"])
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


def test_a_hook_added_after_engrams_changes_neither_check_nor_setup(
        repo: Path, env: dict[str, str]) -> None:
    engram(env, "setup", "claude-code", "--guard", "block", cwd=repo)
    path = repo / ".claude" / "settings.json"
    settings = json.loads(path.read_text())
    for event in ("Stop", "PreToolUse"):
        settings["hooks"][event].append({"hooks": [{"type": "command", "command": "say hi"}]})
    settings["hooks"]["SessionStart"].insert(0, {"hooks": [{"type": "command",
                                                            "command": "date"}]})
    path.write_text(json.dumps(settings, indent=4))  # laid out as the user likes it
    edited = path.read_bytes()
    check = engram(env, "setup", "claude-code", "--guard", "block", "--check", cwd=repo)
    assert check.returncode == 0, check.stdout
    again = engram(env, "setup", "claude-code", "--guard", "block", cwd=repo)
    assert "unchanged: " + str(path) in again.stdout and path.read_bytes() == edited
    # A changed guard is replaced where engram's entry stood, before the user's.
    engram(env, "setup", "claude-code", "--guard", "warn", cwd=repo)
    found = commands(json.loads(path.read_text())["hooks"])
    assert "--guard warn" in found["PreToolUse"][0] and found["PreToolUse"][1] == "say hi"
    assert found["Stop"][1] == "say hi" and found["SessionStart"][0] == "date"


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


def test_codex_merges_the_server_codex_mcp_add_wrote(repo: Path, env: dict[str, str]) -> None:
    config = repo / ".codex" / "config.toml"
    config.parent.mkdir()
    config.write_bytes((DATA / "codex_config_with_engram.toml").read_bytes())
    before = snapshot(repo)
    assert engram(env, "setup", "codex", "--check", cwd=repo).returncode == 1
    done = engram(env, "setup", "codex", cwd=repo)
    assert done.returncode == 0, done.stderr
    text = config.read_text()
    assert text.count("[mcp_servers.engram]") == 1 and text.count(tomlblock.BEGIN) == 1
    servers = tomllib.loads(text)["mcp_servers"]
    assert set(servers) == {"beads", "engram"}
    assert servers["engram"]["args"][-3:] == ["mcp", "--harness", "codex"]
    assert servers["engram"]["startup_timeout_sec"] == 30  # the user's keys stay
    assert servers["engram"]["env"] == {"ENGRAM_AGENT": "codex-main"}
    assert tomllib.loads(text)["profiles"]["fast"]["model"] == "gpt-5-mini"
    assert engram(env, "setup", "codex", "--check", cwd=repo).returncode == 0
    assert engram(env, "setup", "codex", "--remove", cwd=repo).returncode == 0
    assert snapshot(repo) == before


def test_codex_repairs_the_second_server_an_older_setup_appended(
        repo: Path, env: dict[str, str]) -> None:
    config = repo / ".codex" / "config.toml"
    config.parent.mkdir()
    theirs = (DATA / "codex_config_with_engram.toml").read_text()
    config.write_text(theirs + "\n" + tomlblock.block({"command": "engram", "args": ["mcp"]}))
    assert tomlblock.parse_or_none(config.read_text()) is None  # what it left: no TOML
    assert engram(env, "setup", "codex", cwd=repo).returncode == 0
    servers = tomllib.loads(config.read_text())["mcp_servers"]
    assert servers["engram"]["startup_timeout_sec"] == 30
    assert engram(env, "setup", "codex", "--check", cwd=repo).returncode == 0


@pytest.mark.parametrize(("text", "key"), [
    ('[mcp_servers]\nengram = { command = "engram" }\n', "mcp_servers.engram"),
    ("mcp_servers = 3\n", "mcp_servers"),
    ('[mcp_servers.engram\ncommand = "x"\n', "cannot read it as TOML"),
    ('mcp_servers = { beads = { command = "bd" } }\n', "mcp_servers.engram"),
], ids=["inline-entry", "not-a-table", "unparsable", "inline-servers"])
def test_codex_refuses_a_config_it_cannot_merge(repo: Path, env: dict[str, str],
                                                text: str, key: str) -> None:
    config = repo / ".codex" / "config.toml"
    config.parent.mkdir()
    config.write_text(text)
    before = snapshot(repo)
    for args in ((), ("--check",)):
        refused = engram(env, "setup", "codex", *args, cwd=repo)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert refused.stderr.count("\n") == 1
        assert str(config) in refused.stderr and key in refused.stderr
    assert snapshot(repo) == before  # hooks.json is not written either
    # Taking engram's block out is text alone: it never refuses, and there is none here.
    assert engram(env, "setup", "codex", "--remove", cwd=repo).returncode == 0
    assert snapshot(repo) == before


# -- odd shapes -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "text", "key"), [
    (".claude/settings.json", '{"hooks": []}', "hooks is a list, not an object"),
    (".claude/settings.json", '{"hooks": {"Stop": {}}}', "hooks.Stop is an object, not a"),
    (".claude/settings.json", '{"hooks": {"Stop": ["x"]}}', "hooks.Stop[0] is a string"),
    (".claude/settings.json", '{"hooks": {"Stop": [{"hooks": {"a": 1}}]}}',
     "hooks.Stop[0].hooks is an object"),
    (".claude/settings.json", '{"hooks": {"Stop": [{"hooks": [null]}]}}',
     "hooks.Stop[0].hooks[0] is null"),
    (".claude/settings.json", "[1, 2]", "not a JSON object"),
    (".claude/settings.json", "{not json", "cannot read it as JSON"),
    (".mcp.json", '{"mcpServers": []}', "mcpServers is a list"),
    (".mcp.json", '{"mcpServers": {"engram": "engram mcp"}}', "mcpServers.engram is a string"),
])
def test_an_odd_shape_is_one_line_naming_the_file_and_the_key(
        repo: Path, env: dict[str, str], name: str, text: str, key: str) -> None:
    path = repo / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    before = snapshot(repo)
    for args in ((), ("--check",), ("--remove",)):
        refused = engram(env, "setup", "claude-code", *args, cwd=repo)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
        assert f"{path}: " in refused.stderr and key in refused.stderr, refused.stderr
        assert snapshot(repo) == before  # not a file written, the other one neither


def test_unknown_harnesses_and_scopes_are_usage_errors(repo: Path, env: dict[str, str]) -> None:
    assert engram(env, "setup", "aider", cwd=repo).returncode == 2
    assert engram(env, "setup", "codex", "--local", cwd=repo).returncode == 2
    assert engram(env, "setup", "cursor", "--global", "--project", cwd=repo).returncode == 2
    assert snapshot(repo) == {}


# -- the user's files -------------------------------------------------------------------


def test_backups_keep_the_mode_and_owner_of_private_files(repo: Path,
                                                         env: dict[str, str]) -> None:
    owner = 4242 if os.getuid() == 0 else None  # only root can make a file another user's
    claude = home(env) / ".claude.json"
    private(claude, '{"primaryApiKey": "sk-ant-secret", "projects": {}}', owner)
    codex = home(env) / ".codex" / "config.toml"
    private(codex, 'model = "gpt-5-codex"\n\n[mcp_servers.github]\ncommand = "gh-mcp"\n'
            'env = { GITHUB_TOKEN = "ghp_secret" }\n', owner)
    for runner in ("claude-code", "codex"):
        done = engram(env, "setup", runner, "--global", cwd=repo)
        assert done.returncode == 0, done.stderr
    for path in (claude, codex):
        backup = Path(f"{path}.engram-backup")
        assert "secret" in backup.read_text()
        for written in (path, backup):
            info = written.stat()
            assert stat.S_IMODE(info.st_mode) == 0o600, written
            if owner is not None:
                assert (info.st_uid, info.st_gid) == (owner, owner), written
    assert not list(home(env).rglob("*.tmp"))


def test_remove_leaves_no_directory_it_made(repo: Path, env: dict[str, str]) -> None:
    (repo / ".cursor" / "rules").mkdir(parents=True)  # the user's: it stays
    for runner in ("claude-code", "codex", "gemini", "cursor"):
        assert engram(env, "setup", runner, cwd=repo).returncode == 0
    assert {p.name for p in repo.iterdir()} >= {".claude", ".codex", ".gemini", ".cursor"}
    for runner in ("claude-code", "codex", "gemini", "cursor"):
        assert engram(env, "setup", runner, "--remove", cwd=repo).returncode == 0
    assert sorted(p.name for p in repo.iterdir()) == [".cursor", ".git"]
    assert [p.name for p in (repo / ".cursor").iterdir()] == ["rules"]
    engram(env, "setup", "codex", "--global", cwd=repo)
    engram(env, "setup", "codex", "--global", "--remove", cwd=repo)
    assert list(home(env).iterdir()) == []


def test_claude_code_local_scope(repo: Path, env: dict[str, str]) -> None:
    claude = home(env) / ".claude.json"
    root = str(repo.resolve())
    private(claude, json.dumps({"primaryApiKey": "sk-ant-secret", "projects": {
        root: {"allowedTools": [], "mcpServers": {}}, "/elsewhere": {"mcpServers": {}}}}))
    before_home, before_repo = snapshot(home(env)), snapshot(repo)
    done = engram(env, "setup", "claude-code", "--local", cwd=repo)
    assert done.returncode == 0, done.stderr
    settings = json.loads((repo / ".claude" / "settings.local.json").read_text())
    assert any("hook session-start" in c for c in commands(settings["hooks"])["SessionStart"])
    assert not (repo / ".claude" / "settings.json").exists()
    assert not (repo / ".mcp.json").exists()  # nothing the team shares
    data = json.loads(claude.read_text())
    assert "mcpServers" not in data and data["primaryApiKey"] == "sk-ant-secret"
    assert data["projects"][root]["mcpServers"]["engram"]["args"][-1] == "claude-code"
    assert data["projects"]["/elsewhere"] == {"mcpServers": {}}
    assert stat.S_IMODE(claude.stat().st_mode) == 0o600
    assert engram(env, "setup", "claude-code", "--local", "--check", cwd=repo).returncode == 0
    assert engram(env, "setup", "claude-code", "--check", cwd=repo).returncode == 1  # project
    assert engram(env, "setup", "claude-code", "--local", "--remove", cwd=repo).returncode == 0
    assert snapshot(home(env)) == before_home and snapshot(repo) == before_repo


# -- Gemini CLI and Cursor ----------------------------------------------------------------


def test_gemini_setup_writes_hooks_and_server_in_its_settings(repo: Path,
                                                             env: dict[str, str]) -> None:
    (repo / ".gemini").mkdir()
    shutil.copy(DATA / "gemini_settings.json", repo / ".gemini" / "settings.json")
    before = snapshot(repo)
    assert engram(env, "setup", "gemini", "--check", cwd=repo).returncode == 1
    done = engram(env, "setup", "gemini", cwd=repo)
    assert done.returncode == 0, done.stderr
    installed = snapshot(repo)
    settings = json.loads(installed[".gemini/settings.json"])
    assert settings["ui"] == {"theme": "GitHub"} and "other" in settings["mcpServers"]
    assert settings["mcpServers"]["engram"]["args"][-3:] == ["mcp", "--harness", "gemini"]
    assert "type" not in settings["mcpServers"]["engram"]
    hooks = settings["hooks"]
    found = commands(hooks)
    assert set(found) == {"BeforeTool", "SessionStart", "BeforeAgent", "AfterTool",
                          "AfterAgent"}
    assert found["BeforeTool"] == ["audit.sh"]  # warn: after the edit, where context goes
    (after,) = hooks["AfterTool"]
    assert after["matcher"] == "write_file|replace"
    assert "--guard warn" in after["hooks"][0]["command"]
    assert hooks["SessionStart"][0]["hooks"][0]["timeout"] == 10_000  # milliseconds
    assert "hook prompt --harness gemini" in found["BeforeAgent"][0]
    assert "hook stop --harness gemini" in found["AfterAgent"][0]
    assert engram(env, "setup", "gemini", "--check", cwd=repo).returncode == 0
    blocking = engram(env, "setup", "gemini", "--guard", "block", cwd=repo)
    assert blocking.returncode == 0
    hooks = json.loads((repo / ".gemini" / "settings.json").read_text())["hooks"]
    assert "AfterTool" not in hooks and "--guard block" in commands(hooks)["BeforeTool"][1]
    assert engram(env, "setup", "gemini", "--remove", cwd=repo).returncode == 0
    assert snapshot(repo) == before


def test_cursor_setup_writes_its_flat_hooks_and_mcp_json(repo: Path,
                                                        env: dict[str, str]) -> None:
    (repo / ".cursor").mkdir()
    shutil.copy(DATA / "cursor_hooks.json", repo / ".cursor" / "hooks.json")
    before = snapshot(repo)
    done = engram(env, "setup", "cursor", "--guard", "block", cwd=repo)
    assert done.returncode == 0, done.stderr
    installed = snapshot(repo)
    config = json.loads(installed[".cursor/hooks.json"])
    assert config["version"] == 1
    hooks = config["hooks"]
    assert hooks["afterFileEdit"] == [{"command": "./hooks/format.sh"}]
    assert set(hooks) == {"afterFileEdit", "sessionStart", "preToolUse", "stop"}
    (guard,) = hooks["preToolUse"]
    assert guard["matcher"] == "Write|StrReplace|Edit|Delete"
    assert guard["command"].endswith("hook pre-edit --harness cursor --guard block")
    assert hooks["stop"][0]["command"].endswith("hook stop --harness cursor")
    assert set(hooks["sessionStart"][0]) == {"command"}
    server = json.loads(installed[".cursor/mcp.json"])["mcpServers"]["engram"]
    assert server["args"][-3:] == ["mcp", "--harness", "cursor"]
    assert engram(env, "setup", "cursor", "--guard", "block", "--check",
                  cwd=repo).returncode == 0
    assert engram(env, "setup", "cursor", "--remove", cwd=repo).returncode == 0
    assert snapshot(repo) == before  # hooks.json as it was, mcp.json gone


def test_cursor_setup_in_a_fresh_home(repo: Path, env: dict[str, str]) -> None:
    assert engram(env, "setup", "cursor", "--global", cwd=repo).returncode == 0
    config = json.loads((home(env) / ".cursor" / "hooks.json").read_text())
    assert config["version"] == 1 and "sessionStart" in config["hooks"]
    assert (home(env) / ".cursor" / "mcp.json").exists()
    assert engram(env, "setup", "cursor", "--global", "--remove", cwd=repo).returncode == 0
    assert list(home(env).iterdir()) == []


# -- the rules, without files -------------------------------------------------------------


def test_toml_values_read_back_as_written() -> None:
    entry = {"command": "/opt/my engram/bin/engram", "args": ["mcp", "--harness", "codex"],
             "env": {"A B": "quote \" back\\slash \u0001 tab\t 🚀", "n": 1}, "on": True,
             "ratio": 0.5, "list": [[1, 2], {}]}
    assert tomllib.loads(tomlblock.block(entry))["mcp_servers"]["engram"] == entry


# -- where the daemon is ------------------------------------------------------------------


def engram_lines(repo: Path, home_dir: Path) -> list[list[str]]:
    """Every engram command line setup wrote under *repo* and *home_dir* (hooks, servers)."""
    import shlex

    lines = []
    for root in (repo, home_dir):
        for path in root.rglob("*"):
            if not path.is_file() or ".git/" in str(path) or path.name.endswith("backup"):
                continue
            text = path.read_text()
            if path.suffix == ".toml":
                found = [tomlblock.command_lines(text)]
                data: dict = {}
            else:
                data = json.loads(text)
                found = [harness.mcp_command_lines(data)]
            for entries in (data.get("hooks") or {}).values():
                for entry in entries:
                    found.append([shlex.split(h["command"]) for h in entry.get("hooks", [entry])
                                  if harness.is_ours(h)])
            lines += [line for group in found for line in group]
    return lines


def test_every_command_names_this_shells_socket_and_data_dir(
        repo: Path, env: dict[str, str], tmp_path: Path) -> None:
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "xdg")  # ENGRAM_SOCKET wins over it
    env["ENGRAM_TOKEN"] = "egt_0123_secret"
    for runner in ("claude-code", "codex", "gemini", "cursor"):
        assert engram(env, "setup", runner, cwd=repo).returncode == 0
    assert engram(env, "setup", "codex", "--global", cwd=repo).returncode == 0
    lines = engram_lines(repo, home(env))
    # Four hooks and a server each (Cursor: three hooks), Codex's project and home.
    assert len(lines) == 5 + 5 * 2 + 5 + 4, lines
    for line in lines:
        assert harness.where(line) == {"--socket": env["ENGRAM_SOCKET"],
                                       "--data-dir": env["ENGRAM_DATA_DIR"]}, line
    for path in [*repo.rglob("*.json"), *repo.rglob("*.toml"), *home(env).rglob("*.toml")]:
        assert "egt_" not in path.read_text()  # a token is passed by its name, never written
    codex = tomllib.loads((repo / ".codex" / "config.toml").read_text())
    assert codex["mcp_servers"]["engram"]["env_vars"] == ["ENGRAM_AGENT", "ENGRAM_TOKEN"]
    gemini = json.loads((repo / ".gemini" / "settings.json").read_text())
    assert gemini["mcpServers"]["engram"]["env"] == {"ENGRAM_AGENT": "$ENGRAM_AGENT",
                                                     "ENGRAM_TOKEN": "$ENGRAM_TOKEN"}
    for name in (".mcp.json", ".cursor/mcp.json"):  # they start it in their own environment
        assert set(json.loads((repo / name).read_text())["mcpServers"]["engram"]) <= {
            "type", "command", "args"}


def test_check_says_in_one_line_when_this_shell_reaches_another_daemon(
        repo: Path, env: dict[str, str], tmp_path: Path) -> None:
    assert engram(env, "setup", "cursor", cwd=repo).returncode == 0
    same = engram(env, "setup", "cursor", "--check", cwd=repo)
    assert same.returncode == 0 and same.stderr == ""
    old = env["ENGRAM_SOCKET"]
    env.pop("ENGRAM_SOCKET")
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "xdg")  # a new login: the shell moved
    new = str(tmp_path / "xdg" / "engram" / "engramd.sock")
    moved = engram(env, "setup", "cursor", "--check", cwd=repo)
    assert moved.returncode == 1 and moved.stdout.count("would update") == 2
    assert moved.stderr == (f"engram: cursor's hooks and MCP server go to the engramd at "
                            f"socket {old}, not to this shell's (socket {new}): setup "
                            "without --check points them at this shell's\n")
    data = str(tmp_path / "elsewhere")
    both = engram(env, "--data-dir", data, "setup", "cursor", "--dry-run", cwd=repo)
    assert both.stderr.count("\n") == 1 and f"data dir {data})" in both.stderr
    done = engram(env, "setup", "cursor", cwd=repo)
    assert done.returncode == 0 and "they now go to this shell's" in done.stderr
    assert engram(env, "setup", "cursor", "--check", cwd=repo).returncode == 0
    for line in engram_lines(repo, home(env)):
        assert harness.where(line)["--socket"] == new


def test_an_older_setups_commands_are_replaced_in_place(repo: Path, env: dict[str, str]) -> None:
    (repo / ".codex").mkdir()
    (repo / ".codex" / "hooks.json").write_text(json.dumps({"hooks": {"Stop": [
        {"hooks": [{"type": "command", "command": "engram hook stop --harness codex"}]},
        {"hooks": [{"type": "command", "command": "say done"}]}]}}))
    (repo / ".codex" / "config.toml").write_text(
        tomlblock.block({"command": "engram", "args": ["mcp", "--harness", "codex"],
                         "env_vars": ["OPENAI_API_KEY"]}))
    assert engram(env, "setup", "codex", cwd=repo).returncode == 0
    stop = commands(json.loads((repo / ".codex" / "hooks.json").read_text())["hooks"])["Stop"]
    assert len(stop) == 2 and "--socket" in stop[0] and stop[1] == "say done"
    server = tomllib.loads((repo / ".codex" / "config.toml").read_text())["mcp_servers"]
    assert server["engram"]["env_vars"] == ["OPENAI_API_KEY", "ENGRAM_AGENT", "ENGRAM_TOKEN"]
    assert engram(env, "setup", "codex", "--check", cwd=repo).returncode == 0


def test_a_variable_the_user_set_for_the_server_keeps_its_value(repo: Path,
                                                                env: dict[str, str]) -> None:
    (repo / ".gemini").mkdir()
    (repo / ".gemini" / "settings.json").write_text(json.dumps({"mcpServers": {"engram": {
        "command": "engram", "args": ["mcp"], "env": {"ENGRAM_AGENT": "gemini-main"},
        "timeout": 30000}}}))
    assert engram(env, "setup", "gemini", cwd=repo).returncode == 0
    server = json.loads((repo / ".gemini" / "settings.json").read_text())["mcpServers"]["engram"]
    assert server["env"] == {"ENGRAM_AGENT": "gemini-main", "ENGRAM_TOKEN": "$ENGRAM_TOKEN"}
    assert server["timeout"] == 30000 and "--socket" in server["args"]


@pytest.mark.parametrize(("command", "ours"), [
    ("engram hook stop", True),
    ("/opt/bin/engram --socket '/run/a b/engramd.sock' --data-dir /d hook stop", True),
    ("python3 -m engram_cli --socket=/s hook prompt", True),
    ("engram send --to bob hook", False),
    ("engram --json hook stop", False),
    ("my-engram hook stop", False),
])
def test_engrams_hooks_are_known_by_their_command(command: str, ours: bool) -> None:
    assert harness.is_ours({"command": command}) is ours


def test_where_reads_the_options_before_the_command() -> None:
    assert harness.where(["engram", "--socket=/s", "--data-dir", "/d", "hook", "stop"]) == {
        "--socket": "/s", "--data-dir": "/d"}
    assert harness.where(["engram", "mcp", "--socket", "/late"]) == {}


@pytest.mark.parametrize("text, said", [
    ("[" * 100_000 + "]" * 100_000, "nested too deep"),
    ('{"a": NaN}', "NaN is not JSON"),
    ('{"mcpServers": {}, "mcpServers": {"x": {}}}', "the key 'mcpServers' appears twice"),
])
def test_json_that_is_not_quite_json_is_refused_naming_the_file(
        tmp_path: Path, text: str, said: str) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / ".mcp.json").write_text(text)
    result = subprocess.run([sys.executable, "-m", "engram_cli", "setup", "claude-code"],
                            cwd=project, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "HOME": str(tmp_path / "home")}, check=False)
    assert result.returncode == 2, result
    (line,) = result.stderr.splitlines()
    assert ".mcp.json" in line and said in line, line
    assert (project / ".mcp.json").read_text() == text  # nothing written
