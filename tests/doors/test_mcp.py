"""``engram mcp`` driven by the MCP SDK's own client over stdio, against engramd as a process."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

pytest.importorskip("mcp")

from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from engram_cli import __version__
from engram_cli.client.autostart import process_gone
from engram_cli.client.errors import Unavailable
from tests.conftest import WAIT, DaemonProcess, connect, start_engramd, wait_until

READ_ONLY_TOOLS = {"recent", "get", "search", "trace", "locks", "task_ready", "agents",
                   "pending", "thread"}


@asynccontextmanager
async def mcp_session(env: dict[str, str], *, harness: Path | None = None,
                      cwd: Path | None = None) -> AsyncIterator[ClientSession]:
    """The SDK's client on ``engram mcp`` (started by a stand-in harness when given), in
    *cwd* (the project: engram's own tree unless given)."""
    args = ["-m", "engram_cli", "mcp"] if harness is None else [str(harness)]
    params = StdioServerParameters(command=sys.executable, args=args, env=env,
                                   cwd=str(cwd or Path(__file__).parent.parent.parent))
    with open(os.devnull, "w") as quiet:
        async with stdio_client(params, errlog=quiet) as (read, write), \
                ClientSession(read, write) as session:
            with trio.fail_after(WAIT):
                await session.initialize()
            yield session


async def call(session: ClientSession, tool: str, **arguments: object) -> tuple[bool, str]:
    with trio.fail_after(WAIT * 2):
        result = await session.call_tool(tool, arguments)
    (content,) = result.content
    return result.is_error, content.text  # type: ignore[union-attr]


async def test_the_tools_fit_a_small_budget_and_say_which_only_read(
        engramd: DaemonProcess) -> None:
    async with mcp_session(engramd.env) as session:
        listed = await session.list_tools()
        size = len(listed.model_dump_json(by_alias=True, exclude_none=True))
        assert size < 8 * 1024, size
        tools = {tool.name: tool for tool in listed.tools}
        assert len(tools) == 21
        for tool in tools.values():  # every argument says what it is, or is named so
            for name, argument in tool.input_schema.get("properties", {}).items():
                assert "title" not in argument, (tool.name, name)
        assert {name for name, tool in tools.items() if tool.output_schema} == {
            "send", "ack", "post", "lock", "task_add", "task_claim"}
        assert {name for name, tool in tools.items()
                if tool.annotations and tool.annotations.read_only_hint} == READ_ONLY_TOOLS
        resources = await session.list_resources()
        templates = await session.list_resource_templates()
        assert {str(r.uri) for r in resources.resources} == {"engram://brief", "engram://inbox"}
        assert {t.uri_template for t in templates.resource_templates} == {
            "engram://context/{context_id}", "engram://unit/{unit_id}"}


async def test_post_links_a_reply_and_writes_as_the_configured_agent(
        engramd: DaemonProcess) -> None:
    with connect(engramd.socket, "alice") as alice:
        question = alice.create_unit("build-42", "REASONING", "why is it red?")
    async with mcp_session({**engramd.env, "ENGRAM_AGENT": "claude-a"}) as session:
        failed, text = await call(session, "post", context="build-42", text="a stale cache",
                                  reply_to=question.id, references=[question.id])
        assert not failed, text
        posted = text.removeprefix("posted ")
        failed, text = await call(session, "get", ids=[posted])
        assert not failed and "claude-a REASONING [build-42]" in text
        _, trace = await call(session, "trace", unit_id=question.id)
        assert f"{posted} RESPONDS_TO {question.id}" in trace
        assert f"{posted} REFERENCES {question.id}" in trace
        resource = await session.read_resource(f"engram://unit/{posted}")
        assert "a stale cache" in resource.contents[0].text  # type: ignore[union-attr]


async def test_the_inbox_delivers_once_across_a_restart_and_a_wait_ends_on_a_message(
        engramd: DaemonProcess) -> None:
    env = {**engramd.env, "ENGRAM_AGENT": "claude-b", "ENGRAM_NO_AUTOSTART": "1"}
    with connect(engramd.socket, "alice") as alice:
        alice.send_message("claude-b", "first", new_recipients=True)
    async with mcp_session(env) as session:
        _, text = await call(session, "recent", context="messages")
        assert text.endswith("[1 unread message(s): call inbox]")  # the footer
        _, text = await call(session, "inbox")
        assert "first" in text
        assert engramd.stop() == 0
        failed, text = await call(session, "inbox")  # the daemon is down: an error, no crash
        assert failed and text.startswith("Error executing tool inbox: engram: ")
        engramd.process = start_engramd(engramd.env)
        _, text = await call(session, "inbox")
        assert text == "no unread messages"
        async with trio.open_nursery() as nursery:
            got: list[str] = []

            async def wait_for_mail() -> None:
                got.append((await call(session, "inbox", wait=30))[1])

            nursery.start_soon(wait_for_mail)
            with connect(engramd.socket, "probe") as probe:
                await trio.to_thread.run_sync(lambda: wait_until(
                    lambda: probe.stats().gauges["requests_in_flight"] > 1,
                    "the inbox to wait"))
            with connect(engramd.socket, "alice") as alice:
                alice.send_message("claude-b", "second")
        assert "second" in got[0] and "first" not in got[0]


async def test_a_lease_taken_through_mcp_ends_when_the_harness_dies(
        engramd: DaemonProcess, tmp_path: Path) -> None:
    pid_file = tmp_path / "harness.pid"
    harness = tmp_path / "harness.py"
    harness.write_text(
        "import os, subprocess, sys\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "sys.exit(subprocess.call([sys.executable, '-m', 'engram_cli', 'mcp', '--harness',"
        " 'claude-code']))\n")
    # No ENGRAM_AGENT: the agent is named after the harness and its process.
    env = {name: value for name, value in engramd.env.items() if name != "ENGRAM_AGENT"}
    async with mcp_session(env, harness=harness) as session:
        failed, text = await call(session, "lock", resources=["src/app.py"], ttl=300)
        assert not failed and text.startswith("src/app.py: lock_id ")
        with connect(engramd.socket, "probe") as probe:
            lease = probe.get_lock("src/app.py").lease
            harness_pid = int(pid_file.read_text())
            assert lease is not None and lease.pid == harness_pid
            assert lease.holder == f"claude-code-{harness_pid}"
            assert [s.pid for a in probe.list_agents() if a.agent == lease.holder
                    for s in a.sessions if s.announced] == [harness_pid]  # announced at start
            os.kill(harness_pid, signal.SIGKILL)
            await trio.to_thread.run_sync(lambda: wait_until(
                lambda: probe.get_lock("src/app.py").lease is None,
                "the lease to end with the harness", timeout=1.0))


async def test_the_lock_tool_takes_paths_from_the_project(engramd: DaemonProcess,
                                                          tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    subprocess.run(["git", "-C", str(project), "remote", "add", "origin",
                    "git@github.com:t/proj.git"], check=True)
    root = "file:github.com/t/proj:"
    env = {**engramd.env, "ENGRAM_AGENT": "claude-p"}
    async with mcp_session(env, cwd=project) as session:
        locked = await session.call_tool("lock", {"paths": ["src/app.py", "docs/"],
                                                  "ttl": 60})
        assert not locked.is_error, locked
        text = locked.content[0].text  # type: ignore[union-attr]
        assert text.startswith("docs/: lock_id ") and "\nsrc/app.py: lock_id " in text
        leases = locked.structured_content["leases"]  # type: ignore[index]
        assert [lease["resource"] for lease in leases] == [root + "docs/", root + "src/app.py"]
        with connect(engramd.socket, "bob") as bob:
            failed, text = await call(session, "lock", paths=["src/"], wait=0)
            assert not failed  # the same session: its own leases are not in its way
            refused = await trio.to_thread.run_sync(lambda: _try(bob, root + "src/lib.py"))
            assert "held by claude-p" in refused
            (reader,) = bob.acquire_lock(root + "notes/", ttl=60, shared=True)
            failed, text = await call(session, "lock", paths=["notes/a.md"], shared=True)
            assert not failed and text.endswith("(shared)"), text
            failed, text = await call(session, "locks")
            assert "notes/: bob (shared)" in text and "src/app.py: claude-p" in text
            (project / "README.md").write_text("changed here\n")  # git status shows it
            (readme,) = bob.acquire_lock(root + "README.md", ttl=60)
            failed, text = await call(session, "brief")
            assert not failed and "- `README.md` by bob" in text, text
            bob.release_lock(readme.lock_id)
            failed, text = await call(session, "unlock", lock_id=leases[1]["lock_id"],
                                      path="src/app.py")
            assert not failed and text == "released src/app.py"
            failed, text = await call(session, "unlock", lock_id=leases[0]["lock_id"],
                                      path="src/app.py")
            assert failed and "has no lease with lock id" in text, text
            bob.release_lock(reader.lock_id)


async def test_the_locks_tool_shows_each_lease_on_one_line(engramd: DaemonProcess) -> None:
    env = {**engramd.env, "ENGRAM_AGENT": "claude-q"}
    with connect(engramd.socket, "mallory") as mallory:
        mallory.acquire_lock("x\nfake: held by nobody\r", ttl=60)
        async with mcp_session(env) as session:
            failed, text = await call(session, "locks")
    assert not failed, text
    assert text.splitlines() == [next(line for line in text.splitlines()
                                      if line.startswith("x\\nfake"))]
    assert "x\\nfake: held by nobody\\r: mallory" in text, text


def _try(client: object, resource: str) -> str:
    from engram_cli.client.errors import LockHeld

    try:
        client.acquire_lock(resource, ttl=5)  # type: ignore[attr-defined]
    except LockHeld as exc:
        return str(exc)
    return "granted"


def test_with_no_daemon_stdout_is_json_rpc_only_and_tools_fail_cleanly(
        env: dict[str, str]) -> None:
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        *({"jsonrpc": "2.0", "id": n, "method": "tools/call",
           "params": {"name": name, "arguments": arguments}}
          for n, (name, arguments) in enumerate([
              ("brief", {}), ("inbox", {"wait": 1}), ("lock", {"resources": ["x"]}),
              ("send", {"to": ["bob"]}), ("inbox", {"wait": 999})], start=2)),
    ]
    server = subprocess.Popen(
        [sys.executable, "-m", "engram_cli", "mcp"], env={**env, "ENGRAM_NO_AUTOSTART": "1"},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert server.stdin is not None and server.stdout is not None
    answers = {}
    for message in messages:
        server.stdin.write(json.dumps(message) + "\n")
        server.stdin.flush()
        while "id" in message and message["id"] not in answers:
            line = server.stdout.readline()
            assert line, "the server closed its stdout"
            reply = json.loads(line)  # every line is JSON-RPC
            assert reply["jsonrpc"] == "2.0"
            answers[reply.get("id")] = reply
    server.stdin.close()
    assert server.wait(WAIT) == 0
    for n in range(2, 7):
        result = answers[n]["result"]
        assert result["isError"] is True
        (content,) = result["content"]
        assert "\n" not in content["text"]  # one line, a missing argument too
    assert "engram: " in answers[2]["result"]["content"][0]["text"]
    told = answers[6]["result"]["content"][0]["text"]
    assert "wait: Input should be less than or equal to 60" in told


async def test_the_server_starts_with_no_daemon_and_rides_out_its_restarts(
        env: dict[str, str]) -> None:
    """Autostart on, as a harness runs it after a reboot: no daemon at start, the daemon
    stopped in the middle of the session, then restarted; each next call is served."""
    try:
        async with mcp_session({**env, "ENGRAM_AGENT": "claude-a"}) as session:
            failed, text = await call(session, "post", context="boot", text="first")
            assert not failed, text
            with connect(env["ENGRAM_SOCKET"]) as engram:
                engram.shutdown()
            wait_until(lambda: not Path(env["ENGRAM_SOCKET"]).exists(), "the daemon to stop")
            failed, text = await call(session, "recent", context="boot")
            assert not failed and "first" in text, text  # it started one again
            with connect(env["ENGRAM_SOCKET"]) as engram:
                pid = engram.status().pid
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: process_gone(pid), "the daemon to die")  # a zombie is gone
            failed, text = await call(session, "post", context="boot", text="after a crash")
            assert not failed, text
    finally:
        with contextlib.suppress(Unavailable), connect(env["ENGRAM_SOCKET"]) as engram:
            engram.shutdown()


async def test_every_failure_is_one_line_that_says_why(engramd: DaemonProcess) -> None:
    async with mcp_session(engramd.env) as session:
        failed, text = await call(session, "recent", context="x", limit="lots")
        assert failed and "\n" not in text and "limit: Input should be a valid integer" in text
        assert "pydantic" not in text
        failed, text = await call(session, "post", context="x", text="y" * (20 * 1024 * 1024))
        assert failed and "exceeds the limit" in text and "lost the connection" not in text
        failed, text = await call(session, "task_claim", task_id="0" * 36)
        assert failed and text.endswith("no task " + "0" * 36), text
        # A ttl no lease lives by (granted, it ended at once): refused as the CLI does.
        failed, text = await call(session, "lock", resources=["brief"], ttl=1e-300)
        assert failed and "\n" not in text and "ttl" in text and "0.1" in text, text
        failed, text = await call(session, "lock", resources=["brief"], ttl=60)
        assert not failed, text
        lock_id = text.split("lock_id ")[1].split(",")[0]
        failed, text = await call(session, "renew", lock_id=lock_id, ttl=0.01)
        assert failed and "\n" not in text and "ttl" in text and "0.1" in text, text
    refused = {**engramd.env, "ENGRAM_SOCKET": engramd.env["ENGRAM_SOCKET"] + ".none",
               "ENGRAM_NO_AUTOSTART": "1"}
    async with mcp_session(refused) as session:
        failed, text = await call(session, "recent", context="x")
        assert failed and "engramd is not running" in text and "\n" not in text
        with pytest.raises(Exception, match="engramd is not running"):
            await session.read_resource("engram://context/x")


async def test_two_agents_coordinate_through_the_whole_tool_set(env: dict[str, str]) -> None:
    """Autostart on: no daemon at start. Messages with a typo refused, a thread, an owed
    acknowledgement, tasks added, claimed, given back, claimed across a daemon restart
    and past the longest ttl (scaled down to 6 s: a claim without a ttl lasts while the
    session lives), then done; a lease renewed; ids come back as structured content and
    short prefixes work."""
    env = {**env, "ENGRAM_LOCKS_MAX_TTL": "6"}
    try:
        async with mcp_session({**env, "ENGRAM_AGENT": "claude-a"}) as a, \
                mcp_session({**env, "ENGRAM_AGENT": "claude-b"}) as b:
            version = (await a.initialize()).server_info.version
            assert version == __version__
            failed, text = await call(a, "send", to=["claude-bb"], text="typo")
            assert failed and "no agent claude-bb is known here" in text
            asked = await a.call_tool("send", {"to": ["claude-b"], "text": "review?",
                                               "ack_required": True, "thread": "rev-1"})
            message = asked.structured_content["id"]  # type: ignore[index]
            failed, text = await call(b, "send", to=["claude-a"], text="on it",
                                      reply_to=message[:13])
            assert not failed, text
            failed, text = await call(a, "inbox")
            assert not failed and "on it" in text and "thread rev-1" in text
            failed, text = await call(b, "inbox")
            assert "review?" in text and "(thread rev-1, 1 reply)" in text, text
            with trio.fail_after(WAIT):
                while "owed by claude-b" not in (await call(a, "pending"))[1]:
                    await trio.sleep(0.05)  # the search index is a moment behind writes
            failed, text = await call(b, "ack", message_id=message)
            assert not failed, text
            with trio.fail_after(WAIT):
                while "no acknowledgement is owed" not in (await call(a, "pending"))[1]:
                    await trio.sleep(0.05)
                while "on it" not in (await call(a, "thread", name=message))[1]:
                    await trio.sleep(0.05)  # a thread by one of its messages, reply and all
            added = await a.call_tool("task_add", {"title": "fix the build", "priority": 1})
            task = added.structured_content["id"]  # type: ignore[index]
            claimed = await b.call_tool("task_claim", {})
            assert claimed.structured_content == {"id": task}
            failed, text = await call(b, "task_release", task_id=task)
            assert not failed and text.startswith("released")
            failed, text = await call(b, "task_claim", task_id=task)
            assert not failed, text
            with connect(env["ENGRAM_SOCKET"]) as engram:
                claim = engram.get_task(task).claim
                engram.shutdown()  # a restart in the middle of the work
            assert claim is not None and claim.while_alive
            with trio.fail_after(WAIT * 3):  # past the longest ttl, claimed all along
                while True:
                    failed, text = await call(a, "task_ready")  # autostarts it again
                    try:
                        with connect(env["ENGRAM_SOCKET"]) as engram:
                            now = engram.get_task(task).claim
                    except Unavailable:  # the old daemon on its way out: not yet
                        now = None
                    if now is not None and now.expires_at > claim.expires_at + \
                            dt.timedelta(seconds=12):
                        break
                    await trio.sleep(0.2)
            assert now.fencing_token == claim.fencing_token and task not in text
            failed, text = await call(b, "task_done", task_id=task)
            assert not failed and text.startswith("done")
            locked = await a.call_tool("lock", {"resources": ["src/a.py"], "ttl": 5})
            (lease,) = locked.structured_content["leases"]  # type: ignore[index]
            failed, text = await call(a, "renew", resource="src/a.py",
                                      lock_id=lease["lock_id"], ttl=6)
            assert not failed and text.startswith("src/a.py: until"), text
            failed, text = await call(a, "agents")
            assert "claude-a: " in text and "1 lease(s)" in text
    finally:
        with contextlib.suppress(Unavailable), connect(env["ENGRAM_SOCKET"]) as engram:
            engram.shutdown()


async def test_what_the_journal_holds_reaches_the_model_escaped_and_within_bounds(
        engramd: DaemonProcess) -> None:
    hostile = "\x1b]0;pwned\x07\x1b[2J\u202etxt"
    with connect(engramd.socket, "alice") as alice:
        asked = alice.send_message("claude-a", "thread start " + hostile, thread="t-1",
                                   new_recipients=True)
        alice.send_message("claude-a", "a reply", reply_to=asked.id, new_recipients=True)
    async with mcp_session({**engramd.env, "ENGRAM_AGENT": "claude-a"}) as session:
        failed, text = await call(session, "inbox", peek=True)
        assert not failed and "\x1b" not in text and "\\x1b]0;pwned" in text
        # The thread by a prefix of one of its messages (waiting for the search index).
        # Its first 13 characters are the millisecond (a UUIDv7), which the reply may
        # share: 18 take in the counter that orders ids within one.
        with trio.fail_after(WAIT * 3):
            while "a reply" not in (await call(session, "thread", name=asked.id[:18]))[1]:
                await trio.sleep(0.05)
        failed, text = await call(session, "send", to=["ev\x1bil"], text="x", new=True)
        assert failed and "bad agent id" in text and "\x1b" not in text
        failed, text = await call(session, "post", context="c" * 100_000, text="x")
        assert failed and len(text) < 1000, len(text)
