"""Every door of one user finds the same daemon (issue 34 §2): what ``engram setup`` wrote,
run as each harness runs it, with only the environment that harness passes, reaches the
daemon the user's shell reaches, and no second one is started.

The shell here has ``XDG_RUNTIME_DIR``, ``ENGRAM_SOCKET`` and ``XDG_DATA_HOME`` set to
places of its own; a harness that drops them (Codex gives an MCP server a short list of
variables) would, without what setup writes, look for ``/tmp/engram-$UID/engramd.sock``
and start a second daemon on ``~/.local/share/engram``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

pytest.importorskip("mcp")

from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from engram_cli.doors import harness
from tests.conftest import WAIT, run_cli
from tests.doors.test_harness import recorded

pytestmark = pytest.mark.slow  # engramd and engram run as processes

CODEX_MCP_ENV = ("HOME", "LOGNAME", "PATH", "SHELL", "USER", "__CF_USER_TEXT_ENCODING",
                 "LANG", "LC_ALL", "TERM", "TMPDIR", "TZ")
"""What Codex passes a stdio MCP server besides the variables its entry names
(``DEFAULT_ENV_VARS`` in openai/codex codex-rs/rmcp-client/src/utils.rs)."""
GEMINI_STRICT_ENV = ("PATH", "HOME", "LANG", "SHELL", "TMPDIR", "USER", "LOGNAME", "TERM",
                     "COLORTERM")
"""What Gemini CLI keeps of its environment for an MCP server or a hook when it sanitizes
strictly (on GitHub; ``ALWAYS_ALLOWED_ENVIRONMENT_VARIABLES`` in google-gemini/gemini-cli
packages/core/src/services/environmentSanitization.ts); the server's ``env`` comes on top,
``$NAME`` read from the unsanitized environment."""
BARE = ("HOME", "PATH")


@pytest.fixture
def shell(scratch: str, tmp_path: Path) -> dict[str, str]:
    """The user's shell: its daemon is at a socket and on a data dir of its own choosing."""
    home = tmp_path / "home"
    config = home / ".config" / "engram"
    config.mkdir(parents=True)
    # Whichever door starts the daemon, it reads this file (~/.config: XDG_CONFIG_HOME is
    # not set); semantic search would load a model for nothing here.
    (config / "config.toml").write_text('[search]\nsemantic = "off"\n')
    kept = {name: os.environ[name] for name in ("PATH", "LANG", "TERM", "USER", "LOGNAME",
                                                "SHELL", "TZ") if name in os.environ}
    return {**kept, "HOME": str(home),
            "XDG_RUNTIME_DIR": os.path.join(scratch, "xdg"),
            "ENGRAM_SOCKET": os.path.join(scratch, "run", "engramd.sock"),
            "XDG_DATA_HOME": os.path.join(scratch, "share"),
            "ENGRAM_AGENT": "codex-reviewer"}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


def reduced(shell: Mapping[str, str], names: tuple[str, ...] | list[str]) -> dict[str, str]:
    return {name: shell[name] for name in names if name in shell}


def expanded(env: Mapping[str, str], shell: Mapping[str, str]) -> dict[str, str]:
    """A server entry's ``env`` as Gemini CLI reads it: ``$NAME`` from the harness's own
    environment, empty when unset."""
    return {name: shell.get(value[1:], "") if value.startswith("$") else value
            for name, value in env.items()}


@asynccontextmanager
async def server(line: list[str], env: dict[str, str], cwd: Path
                 ) -> AsyncIterator[ClientSession]:
    """The MCP SDK's client on the server as the harness starts it: *line* in *env*."""
    params = StdioServerParameters(command=line[0], args=line[1:], env=env, cwd=str(cwd))
    with open(os.devnull, "w") as quiet:
        async with stdio_client(params, errlog=quiet) as (read, write), \
                ClientSession(read, write) as session:
            with trio.fail_after(WAIT * 2):  # it may start the daemon
                await session.initialize()
            yield session


async def call(session: ClientSession, tool: str, **arguments: object) -> tuple[bool, str]:
    with trio.fail_after(WAIT * 2):
        result = await session.call_tool(tool, arguments)
    (content,) = result.content
    return result.is_error, content.text  # type: ignore[union-attr]


def hook(command: str, env: dict[str, str], stdin: str, cwd: Path
         ) -> subprocess.CompletedProcess[str]:
    """A hook as a harness runs it: its command through a shell, the input on stdin."""
    return subprocess.run(["/bin/sh", "-c", command], env=env, input=stdin, cwd=cwd,
                          capture_output=True, text=True, timeout=WAIT * 3, check=False)


def hook_commands(hooks: dict[str, list[dict]]) -> dict[str, str]:
    """engram's hook command at each event."""
    return {event: handler["command"] for event, entries in hooks.items()
            for entry in entries for handler in entry.get("hooks", [entry])
            if harness.is_ours(handler)}


def engramd_processes(marker: str) -> list[int]:
    """The engramd processes whose command line or environment mentions *marker*."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                cmdline = file.read()
            with open(f"/proc/{pid}/environ", "rb") as file:
                environ = file.read()
        except OSError:
            continue
        args = cmdline.split(b"\0")
        if (b"-m\0engramd\0" in cmdline or os.path.basename(args[0]) == b"engramd") \
                and marker.encode() in cmdline + environ:
            found.append(int(pid))
    return found


def assert_one_daemon(shell: dict[str, str], scratch: str) -> int:
    """The daemon the shell reaches is the only one, on the shell's data dir; returns its
    pid."""
    status = run_cli(shell, "--json", "status")
    assert status.returncode == 0, status.stderr
    reply = json.loads(status.stdout)
    data_dir = os.path.join(shell["XDG_DATA_HOME"], "engram")
    assert reply["data_dir"] == data_dir
    assert engramd_processes(scratch) == [reply["pid"]]
    with open(os.path.join(data_dir, "engramd.lock")) as lock:
        assert lock.read().split() == [str(reply["pid"]), shell["ENGRAM_SOCKET"]]
    home = Path(shell["HOME"])
    assert not (home / ".local" / "share" / "engram").exists()  # no second data dir
    assert not Path(shell["XDG_RUNTIME_DIR"], "engram").exists()  # nor socket
    return int(reply["pid"])


async def test_codex_mcp_server_and_hooks_reach_the_shells_daemon_with_codex_environment(
        shell: dict[str, str], repo: Path, scratch: str) -> None:
    done = subprocess.run([sys.executable, "-m", "engram_cli", "setup", "codex"], env=shell,
                          cwd=repo, capture_output=True, text=True, timeout=WAIT * 3,
                          check=False)
    assert done.returncode == 0, done.stderr
    entry = tomllib.loads((repo / ".codex" / "config.toml").read_text())["mcp_servers"][
        "engram"]
    hooks = hook_commands(json.loads((repo / ".codex" / "hooks.json").read_text())["hooks"])
    mcp_env = {**reduced(shell, [*CODEX_MCP_ENV, *entry.get("env_vars", [])]),
               **entry.get("env", {})}
    assert "ENGRAM_SOCKET" not in mcp_env and "XDG_RUNTIME_DIR" not in mcp_env
    line = [entry["command"], *entry["args"]]
    try:
        # No daemon runs: the MCP server, in Codex's environment, starts the shell's.
        async with server(line, mcp_env, repo) as session:
            failed, text = await call(session, "post", context="doors", text="from codex mcp")
            assert not failed, text
        pid = assert_one_daemon(shell, scratch)

        # The shell gives the agent a token and a message; the hooks, in no more than
        # Codex's list and the agent's identity, reach the same daemon.
        token = run_cli(shell, "agent", "token", "create", "codex-reviewer")
        assert token.returncode == 0, token.stderr
        shell = {**shell, "ENGRAM_TOKEN": token.stdout.strip()}
        bob = {**shell, "ENGRAM_AGENT": "bob"}
        bob.pop("ENGRAM_TOKEN")
        assert run_cli(bob, "send", "--to", "codex-reviewer", "-p", "review PR 7").returncode == 0
        assert run_cli(bob, "lock", "acquire", "--path", str(repo / "src" / "app.py"),
                       "--ttl", "300").returncode == 0
        hook_env = reduced(shell, [*CODEX_MCP_ENV, *harness.IDENTITY])
        stopped = hook(hooks["Stop"], hook_env, recorded("codex_stop.json", repo), repo)
        assert stopped.returncode == 0, stopped.stderr
        assert json.loads(stopped.stdout)["decision"] == "block"
        assert "1 unread" in json.loads(stopped.stdout)["reason"]
        guard = hook(hooks["PreToolUse"], hook_env, recorded("codex_pre_tool_use.json", repo),
                     repo)
        reason = json.loads(guard.stdout)["hookSpecificOutput"]["additionalContext"]
        assert "src/app.py is leased by bob" in reason

        # A new session of the harness: the token, forwarded by name, is the server's.
        async with server(line, {**reduced(shell, [*CODEX_MCP_ENV, *entry["env_vars"]]),
                                 **entry.get("env", {})}, repo) as session:
            failed, text = await call(session, "inbox", peek=True)
            assert not failed and "review PR 7" in text, text
            assert run_cli(shell, "agent", "token", "revoke", "codex-reviewer").returncode == 0
            failed, text = await call(session, "inbox", peek=True)
            assert failed and "revoked" in text, text

        units = run_cli(bob, "--json", "unit", "list", "-c", "doors")
        (unit,) = [json.loads(line) for line in units.stdout.splitlines()]
        assert unit["agent_id"] == "codex-reviewer"  # ENGRAM_AGENT reached the server
        assert assert_one_daemon(shell, scratch) == pid
    finally:
        run_cli(shell, "daemon", "stop")


async def test_each_harness_reaches_the_shells_daemon_with_the_least_it_passes(
        shell: dict[str, str], repo: Path, scratch: str) -> None:
    runners = ("claude-code", "codex", "gemini", "cursor")
    for runner in runners:
        done = subprocess.run([sys.executable, "-m", "engram_cli", "setup", runner],
                              env=shell, cwd=repo, capture_output=True, text=True,
                              timeout=WAIT * 3, check=False)
        assert done.returncode == 0, done.stderr
    codex = tomllib.loads((repo / ".codex" / "config.toml").read_text())["mcp_servers"]
    gemini = json.loads((repo / ".gemini" / "settings.json").read_text())
    servers = {
        "claude-code": json.loads((repo / ".mcp.json").read_text())["mcpServers"]["engram"],
        "codex": codex["engram"], "gemini": gemini["mcpServers"]["engram"],
        "cursor": json.loads((repo / ".cursor" / "mcp.json").read_text())["mcpServers"][
            "engram"]}
    hooks = {
        "claude-code": json.loads((repo / ".claude" / "settings.json").read_text())["hooks"],
        "codex": json.loads((repo / ".codex" / "hooks.json").read_text())["hooks"],
        "gemini": gemini["hooks"],
        "cursor": json.loads((repo / ".cursor" / "hooks.json").read_text())["hooks"]}
    least = {"claude-code": BARE, "codex": CODEX_MCP_ENV, "gemini": GEMINI_STRICT_ENV,
             "cursor": BARE}
    inputs = {"claude-code": "claude_session_start.json", "codex": "claude_session_start.json",
              "gemini": "gemini_session_start.json", "cursor": "cursor_session_start.json"}
    assert run_cli(shell, "daemon", "start").returncode == 0  # the shell's, this time
    try:
        pid = assert_one_daemon(shell, scratch)
        for runner in runners:
            entry = servers[runner]
            env = {**reduced(shell, [*least[runner], *entry.get("env_vars", [])]),
                   **expanded(entry.get("env", {}), shell)}
            async with server([entry["command"], *entry["args"]], env, repo) as session:
                failed, text = await call(session, "post", context="doors",
                                          text=f"from {runner}")
                assert not failed, (runner, text)
            start = hook_commands(hooks[runner])[harness.HARNESSES[runner].start]
            env_file = repo.parent / f"{runner}.env"
            briefed = hook(start, {**reduced(shell, least[runner]),
                                   "CLAUDE_ENV_FILE": str(env_file)},
                           recorded(inputs[runner], repo), repo)
            assert briefed.returncode == 0, (runner, briefed.stderr)
            assert "# engram: you are" in briefed.stdout, (runner, briefed.stdout)
        # The agent's own engram commands (its shell tool) go where its hooks went.
        exported = dict(line.removeprefix("export ").split("=", 1)
                        for line in (repo.parent / "claude-code.env").read_text().splitlines())
        assert exported["ENGRAM_SOCKET"] == shell["ENGRAM_SOCKET"]
        assert exported["ENGRAM_DATA_DIR"] == os.path.join(shell["XDG_DATA_HOME"], "engram")
        agents_shell = {**reduced(shell, BARE), **exported}
        assert run_cli(agents_shell, "ping", "-n", "1").returncode == 0
        units = run_cli(shell, "--json", "unit", "list", "-c", "doors")
        assert sorted(json.loads(line)["payload"] for line in units.stdout.splitlines()) \
            == sorted(f"from {runner}" for runner in runners)
        assert assert_one_daemon(shell, scratch) == pid
    finally:
        run_cli(shell, "daemon", "stop")


def test_a_socket_path_with_spaces_survives_the_hooks_shell() -> None:
    """Each path is one word of the hook's command, whatever POSIX shell the harness runs
    it with (sh -c, $SHELL -lc)."""
    specs = harness.hook_specs("codex", [sys.executable, "-m", "engram_cli", "--socket",
                                         "/run/a b/engramd.sock", "--data-dir", "/d"], "warn")
    for spec in specs:
        words = shlex.split(spec.command)
        assert harness.where(words) == {"--socket": "/run/a b/engramd.sock", "--data-dir": "/d"}
