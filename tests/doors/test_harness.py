"""``engram setup`` on recorded harness configuration files, and ``engram hook ...`` fed
recorded hook inputs, against engramd as a process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engram_cli.client import paths
from engram_cli.client.errors import LockHeld
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


# -- hooks --------------------------------------------------------------------------------


def recorded(name: str, repo: Path) -> str:
    return (DATA / name).read_text().replace("REPO", str(repo))


def test_the_lease_guard_warns_denies_or_stays_silent(engramd: DaemonProcess,
                                                      repo: Path) -> None:
    env = {**engramd.env, "ENGRAM_AGENT": "claude-a"}
    with connect(engramd.socket, "bob") as bob:
        bob.acquire_lock(paths.resource(str(repo / "src" / "app.py")), ttl=300)
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


def test_the_guard_judges_paths_as_the_lock_manager_does(engramd: DaemonProcess,
                                                         repo: Path, tmp_path: Path) -> None:
    """Two repositories with src/app.py each do not collide; a directory's lease covers
    what is in it, a glob what it matches, a shared lease stands in a writer's way."""
    env = {**engramd.env, "ENGRAM_AGENT": "claude-e"}
    other = tmp_path / "other"
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    edit = recorded("claude_pre_tool_use.json", repo)

    def guard(hook_input: str) -> str:
        done = engram(env, "hook", "pre-edit", "--guard", "block", stdin=hook_input)
        assert done.returncode == 0, done.stderr
        if not done.stdout:
            return ""
        return str(json.loads(done.stdout)["hookSpecificOutput"]["permissionDecisionReason"])

    with connect(engramd.socket, "bob") as bob:
        (theirs,) = bob.acquire_lock(paths.resource(str(other / "src" / "app.py")), ttl=300)
        assert guard(edit) == ""  # the same relative path in another repository
        bob.release_lock(theirs.lock_id)
        (directory,) = bob.acquire_lock(paths.resource(str(repo / "src") + "/"), ttl=300)
        assert "src/app.py is leased by bob" in guard(edit) and "as src/" in guard(edit)
        bob.release_lock(directory.lock_id)
        (glob,) = bob.acquire_lock(paths.resource(str(repo / "src" / "*.py")), ttl=300)
        assert "as src/*.py" in guard(edit)
        assert guard(edit.replace("src/app.py", "src/app.c")) == ""
        bob.release_lock(glob.lock_id)
        (reader,) = bob.acquire_lock(paths.resource(str(repo)), ttl=300, shared=True)
        assert "shared" in guard(edit)
        bob.release_lock(reader.lock_id)
        assert guard(edit) == ""


@pytest.mark.parametrize("header", ["*** Move to: src/app.py", " *** Update File: src/app.py",
                                    "\t*** Delete File: src/app.py"])
def test_the_guard_checks_where_an_apply_patch_moves_a_file(engramd: DaemonProcess,
                                                           repo: Path, header: str) -> None:
    """A move's target, and a header Codex reads once it has trimmed the line."""
    env = {**engramd.env, "ENGRAM_AGENT": "codex-a"}
    line = json.dumps(header + "\n")[1:-1]
    move = recorded("codex_pre_tool_use.json", repo).replace(
        "*** Update File: src/app.py\\n", "*** Update File: src/free.py\\n" + line)
    assert line in move
    with connect(engramd.socket, "bob") as bob:
        bob.acquire_lock(paths.resource(str(repo / "src" / "app.py")), ttl=300)
        denied = engram(env, "hook", "pre-edit", "--harness", "codex", "--guard", "block",
                        stdin=move)
        assert denied.returncode == 0, denied.stderr
        answer = json.loads(denied.stdout)["hookSpecificOutput"]
        assert answer["permissionDecision"] == "deny"
        assert "src/app.py is leased by bob" in answer["permissionDecisionReason"]


def test_the_guard_names_an_edited_file_literally(engramd: DaemonProcess,
                                                  repo: Path) -> None:
    """A file called pages/[id].js is leased as itself: an edit of pages/i.js is free,
    an edit of it is not."""
    env = {**engramd.env, "ENGRAM_AGENT": "claude-f"}
    (repo / "pages").mkdir()
    (repo / "pages" / "[id].js").write_text("")
    edit = recorded("claude_pre_tool_use.json", repo)
    with connect(engramd.socket, "bob") as bob:
        bob.acquire_lock(paths.resource(str(repo / "pages" / "[id].js")), ttl=300)
        for path, refused in (("pages/i.js", False), ("pages/[id].js", True)):
            done = engram(env, "hook", "pre-edit", "--guard", "block",
                          stdin=edit.replace("src/app.py", path))
            assert done.returncode == 0, done.stderr
            assert bool(done.stdout) == refused, (path, done.stdout)


def test_the_guard_judges_a_file_whose_name_starts_with_two_dots(engramd: DaemonProcess,
                                                                repo: Path) -> None:
    env = {**engramd.env, "ENGRAM_AGENT": "claude-g"}
    edit = recorded("claude_pre_tool_use.json", repo).replace("src/app.py", "..env")
    with connect(engramd.socket, "bob") as bob:
        bob.acquire_lock(paths.resource(str(repo / "..env")), ttl=300)
        done = engram(env, "hook", "pre-edit", "--guard", "block", stdin=edit)
        assert done.returncode == 0, done.stderr
        reason = json.loads(done.stdout)["hookSpecificOutput"]["permissionDecisionReason"]
        assert "..env is leased by bob" in reason


def test_another_session_of_the_same_agent_is_in_the_way_as_the_manager_says(
        engramd: DaemonProcess, repo: Path) -> None:
    """Two sessions of agent alice (two harness processes): the one that holds a file's
    lease may edit it, the other may not, and the lock manager makes the other wait too.
    A lease of alice that no running session holds (lock acquire without --pid) is hers."""
    first = subprocess.Popen(["sleep", "300"])
    second = subprocess.Popen(["sleep", "300"])
    edit = recorded("claude_pre_tool_use.json", repo)
    name = paths.resource(str(repo / "src" / "app.py"))

    def guard(session: int) -> str:
        env = {**engramd.env, "ENGRAM_AGENT": "alice", "ENGRAM_SESSION_PID": str(session)}
        done = engram(env, "hook", "pre-edit", "--guard", "block", stdin=edit)
        assert done.returncode == 0, done.stderr
        return done.stdout

    try:
        with connect(engramd.socket, "alice") as alice:
            (held,) = alice.acquire_lock(name, pid=first.pid)  # as the MCP lock tool does
            assert guard(first.pid) == ""
            assert f"leased by alice (pid {first.pid})" in guard(second.pid)
            with pytest.raises(LockHeld, match=f"held by alice \\(pid {first.pid}\\)"):
                alice.acquire_lock(name, pid=second.pid, wait=0)
            alice.release_lock(held.lock_id)
        taken = engram({**engramd.env, "ENGRAM_AGENT": "alice"}, "lock", "acquire",
                       "--path", str(repo / "src" / "app.py"), "--ttl", "60")
        assert taken.returncode == 0, taken.stderr
        assert guard(second.pid) == ""  # held in no running session: alice's own
    finally:
        first.kill()
        second.kill()
        first.wait()
        second.wait()


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
    exports = env_file.read_text()
    assert "export ENGRAM_AGENT=claude-c\nexport ENGRAM_SESSION_PID=" in exports
    assert f"export ENGRAM_SOCKET={engramd.socket}\n" in exports  # the agent's own commands
    assert f"export ENGRAM_DATA_DIR={engramd.env['ENGRAM_DATA_DIR']}\n" in exports


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


# -- Gemini CLI and Cursor: the same hooks, in their formats ----------------------------


def test_the_lease_guard_in_gemini_and_cursor_formats(engramd: DaemonProcess,
                                                      repo: Path) -> None:
    env = {**engramd.env, "ENGRAM_AGENT": "agent-f"}
    gemini = recorded("gemini_before_tool.json", repo)
    cursor = recorded("cursor_pre_tool_use.json", repo)  # no cwd: its workspace root
    with connect(engramd.socket, "bob") as bob:
        bob.acquire_lock(paths.resource(str(repo / "src" / "app.py")), ttl=300)
        denied = json.loads(engram(env, "hook", "pre-edit", "--harness", "gemini",
                                   "--guard", "block", stdin=gemini).stdout)
        assert denied["decision"] == "deny" and "src/app.py is leased by bob" in denied["reason"]
        warned = json.loads(engram(env, "hook", "pre-edit", "--harness", "gemini",
                                   "--guard", "warn", stdin=gemini).stdout)
        context = warned["hookSpecificOutput"]
        assert context["hookEventName"] == "AfterTool"  # installed there: BeforeTool takes none
        assert "leased by bob" in context["additionalContext"]
        refused = json.loads(engram(env, "hook", "pre-edit", "--harness", "cursor",
                                    "--guard", "block", stdin=cursor).stdout)
        assert refused["permission"] == refused["decision"] == "deny"
        assert "src/app.py is leased by bob" in refused["agent_message"]
        told = json.loads(engram(env, "hook", "pre-edit", "--harness", "cursor",
                                 stdin=cursor).stdout)
        assert "permission" not in told and "leased by bob" in told["agent_message"]
    free = engram(env, "hook", "pre-edit", "--harness", "cursor", "--guard", "block",
                  stdin=cursor.replace("src/app.py", "docs/x.md"))
    assert free.returncode == 0 and json.loads(free.stdout) == {}  # Cursor wants JSON
    quiet = engram(env, "hook", "pre-edit", "--harness", "gemini",
                   stdin=gemini.replace("src/app.py", "docs/x.md"))
    assert quiet.returncode == 0 and quiet.stdout == ""


def test_session_start_in_gemini_and_cursor_formats(engramd: DaemonProcess,
                                                    repo: Path) -> None:
    env = {**engramd.env, "ENGRAM_AGENT": "agent-g"}
    gemini = json.loads(engram(env, "hook", "session-start", "--harness", "gemini",
                               stdin=recorded("gemini_session_start.json", repo)).stdout)
    assert gemini["hookSpecificOutput"]["hookEventName"] == "SessionStart"
    assert gemini["hookSpecificOutput"]["additionalContext"].startswith("# engram: you are")
    cursor = json.loads(engram(env, "hook", "session-start", "--harness", "cursor",
                               stdin=recorded("cursor_session_start.json", repo)).stdout)
    assert cursor["additional_context"].startswith("# engram: you are agent-g")
    assert cursor["env"]["ENGRAM_AGENT"] == "agent-g"
    assert cursor["env"]["ENGRAM_SESSION_PID"].isdigit()
    assert cursor["env"]["ENGRAM_SOCKET"] == engramd.socket


def test_the_stop_hook_continues_gemini_and_cursor_once(engramd: DaemonProcess,
                                                        repo: Path) -> None:
    env = {**engramd.env, "ENGRAM_AGENT": "agent-h"}
    gemini = recorded("gemini_after_agent.json", repo)
    cursor = recorded("cursor_stop.json", repo)
    assert engram(env, "hook", "stop", "--harness", "gemini", stdin=gemini).stdout == ""
    assert json.loads(engram(env, "hook", "stop", "--harness", "cursor",
                             stdin=cursor).stdout) == {}
    with connect(engramd.socket, "bob") as bob:
        bob.send_message("agent-h", "one more thing")
    first = json.loads(engram(env, "hook", "stop", "--harness", "gemini", stdin=gemini).stdout)
    assert first["decision"] == "block" and "1 unread" in first["reason"]
    again = gemini.replace('"stop_hook_active": false', '"stop_hook_active": true')
    assert engram(env, "hook", "stop", "--harness", "gemini", stdin=again).stdout == ""
    followup = json.loads(engram(env, "hook", "stop", "--harness", "cursor",
                                 stdin=cursor).stdout)
    assert "1 unread" in followup["followup_message"]
    looped = cursor.replace('"loop_count": 0', '"loop_count": 1')
    assert json.loads(engram(env, "hook", "stop", "--harness", "cursor",
                             stdin=looped).stdout) == {}
    prompt = json.loads(engram(env, "hook", "prompt", "--harness", "gemini",
                               stdin="{}").stdout)["hookSpecificOutput"]
    assert prompt["hookEventName"] == "BeforeAgent" and "1 unread" in prompt["additionalContext"]


def test_hooks_fail_open_in_each_format(repo: Path, env: dict[str, str]) -> None:
    env = {**env, "ENGRAM_SOCKET": str(repo / "none.sock"), "ENGRAM_NO_AUTOSTART": "1"}
    for runner, name, silence in (("gemini", "gemini_session_start.json", ""),
                                  ("cursor", "cursor_session_start.json", "{}\n")):
        result = engram(env, "hook", "session-start", "--harness", runner,
                        stdin=recorded(name, repo))
        assert result.returncode == 0 and result.stdout == silence and result.stderr == ""
