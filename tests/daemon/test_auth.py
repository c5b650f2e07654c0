"""Agent tokens: with auth.require_tokens a connection acts only as its token's agent."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from engram_cli.client import Client, requests
from engram_cli.client.asynchronous import connect_to
from engram_cli.client.errors import BadRequest, Forbidden, NotFound, Unavailable
from engram_cli.client.settings import Target
from engramd.config import DaemonConfig
from engramd.protocol import admin_token_path
from engramd.server import Server
from tests.conftest import (
    connect,
    make_config,
    run_cli,
    socket_answers,
    spawn_engramd,
    start_threaded,
    wait_until,
)


def connected(config: DaemonConfig, agent: str, token: str | None = None,
              admin: bool = False) -> Client:
    """A client that has shaken hands already, so that a refused hello raises here."""
    client = connect(config, agent, token=token, admin=admin, timeout=10)
    client.connect()
    return client


@pytest.fixture
def strict(env: dict[str, str]) -> DaemonConfig:
    return make_config(env, **{"auth.require_tokens": "true"})


def test_a_connection_without_a_token_is_refused(strict: DaemonConfig) -> None:
    with start_threaded(strict):
        with pytest.raises(Forbidden, match="requires an agent token"):
            connected(strict, "alice")
        with pytest.raises(Forbidden, match="unknown or revoked"):
            connected(strict, "alice", token="egt_0000_forged")


def test_a_token_binds_the_connection_to_its_agent(strict: DaemonConfig) -> None:
    with start_threaded(strict):
        with connected(strict, "admin", admin=True) as admin:
            alice_token = admin.create_token("alice").token
            bob_token = admin.create_token("bob").token
        with pytest.raises(Forbidden, match="belongs to agent alice"):
            connected(strict, "bob", token=alice_token)
        with connected(strict, "alice", token=alice_token) as alice, \
                connected(strict, "bob", token=bob_token) as bob:
            unit = alice.create_unit("auth", "MESSAGE", "hello")
            assert unit.agent_id == "alice"
            lease = alice.acquire_lock("repo/file")[0]
            with pytest.raises(Forbidden, match="held by alice"):
                bob.release_lock(lease.lock_id)
            with pytest.raises(Forbidden, match="admin token"):
                bob.create_token("mallory")
            alice.release_lock(lease.lock_id)


def test_revoking_closes_the_connections_and_refuses_new_ones(strict: DaemonConfig) -> None:
    with start_threaded(strict), connected(strict, "admin", admin=True) as admin:
        token = admin.create_token("alice")
        alice = connected(strict, "alice", token=token.token)
        alice.ping()
        revoked = admin.revoke_tokens(agent="alice")
        assert [info.id for info in revoked] == [token.info.id]
        with pytest.raises(Unavailable):
            alice.ping()
        alice.close()
        with pytest.raises(Forbidden, match="unknown or revoked"):
            connected(strict, "alice", token=token.token)
        assert admin.list_tokens() == []


def test_tokens_are_stored_hashed_and_survive_a_restart(strict: DaemonConfig) -> None:
    with start_threaded(strict):
        with connected(strict, "admin", admin=True) as admin:
            created = admin.create_token("alice")
        first_admin_token = Path(admin_token_path(strict.socket)).read_text()
    assert not os.path.exists(admin_token_path(strict.socket))  # withdrawn at stop
    stored = os.path.join(strict.data_dir, "tokens.json")
    assert stat.S_IMODE(os.stat(stored).st_mode) == 0o600
    with open(stored) as file:
        text = file.read()
    assert created.info.id in text and created.token not in text
    with start_threaded(strict):
        path = admin_token_path(strict.socket)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert Path(path).read_text() != first_admin_token  # a new secret per start
        with connected(strict, "alice", token=created.token) as alice:
            alice.ping()
        with connected(strict, "admin", admin=True) as admin:
            assert [info.agent for info in admin.list_tokens()] == ["alice"]


@pytest.mark.slow
def test_a_damaged_token_file_stops_the_start_with_its_name(env: dict[str, str]) -> None:
    data_dir = env["ENGRAM_DATA_DIR"]
    os.makedirs(data_dir, mode=0o700)
    with open(os.path.join(data_dir, "tokens.json"), "w") as file:
        file.write("{not json")
    process = spawn_engramd(env)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "tokens.json" in stderr.decode() and "Traceback" not in stderr.decode()


def test_without_require_tokens_a_token_still_binds(config: DaemonConfig) -> None:
    with start_threaded(config):
        with connected(config, "anyone") as anyone:
            anyone.ping()  # no token needed
            with pytest.raises(Forbidden, match="admin token"):
                anyone.list_tokens()
        with connected(config, "admin", admin=True) as admin:
            token = admin.create_token("alice").token
        with pytest.raises(Forbidden, match="belongs to agent alice"):
            connected(config, "bob", token=token)


@pytest.mark.slow
def test_cli_token_commands(env: dict[str, str]) -> None:
    env["ENGRAM_AUTH_REQUIRE_TOKENS"] = "true"
    try:
        created = run_cli(env, "agent", "token", "create", "alice")
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip()
        assert token.startswith("egt_")
        refused = run_cli(env, "unit", "create", "-c", "c", "-p", "x")
        assert refused.returncode == 1
        assert refused.stderr.count("\n") == 1 and "ENGRAM_TOKEN" in refused.stderr
        alice = {**env, "ENGRAM_TOKEN": token, "ENGRAM_AGENT": "alice"}
        wrote = run_cli(alice, "unit", "create", "-c", "c", "-p", "x", "--json")
        assert wrote.returncode == 0, wrote.stderr
        listed = run_cli(env, "agent", "token", "list")
        assert "alice" in listed.stdout and token not in listed.stdout
        usage = run_cli(env, "agent", "token", "revoke")
        assert usage.returncode == 2
        revoked = run_cli(env, "agent", "token", "revoke", "alice")
        assert revoked.returncode == 0 and "revoked 1 token" in revoked.stdout
        after = run_cli(alice, "ping")
        assert after.returncode == 1 and "revoked" in after.stderr
    finally:
        run_cli(env, "daemon", "stop")
    wait_until(lambda: not os.path.exists(env["ENGRAM_SOCKET"]), "the daemon to stop")


@pytest.mark.slow
def test_the_admin_token_is_in_place_before_the_socket_answers(env: dict[str, str]) -> None:
    """A client that started the daemon reads the admin token as soon as it can connect."""
    process = spawn_engramd(env)
    try:
        wait_until(lambda: socket_answers(env["ENGRAM_SOCKET"]), "engramd to listen")
        assert os.path.exists(admin_token_path(env["ENGRAM_SOCKET"]))
    finally:
        process.terminate()  # perhaps still opening its journal: it stops as gracefully
        process.communicate(timeout=30)
    assert process.returncode == 0
    assert not os.path.exists(admin_token_path(env["ENGRAM_SOCKET"]))


def test_with_required_tokens_only_the_admin_stops_breaks_and_reindexes(
        strict: DaemonConfig) -> None:
    with start_threaded(strict):
        with connected(strict, "admin", admin=True) as admin:
            alice_token = admin.create_token("alice").token
            bob_token = admin.create_token("bob").token
        with connected(strict, "alice", token=alice_token) as alice, \
                connected(strict, "bob", token=bob_token) as bob:
            alice.acquire_lock("deploy:prod", ttl=30)
            with pytest.raises(Forbidden, match=r"lock\.break needs the admin token"):
                bob.break_lock("deploy:prod", "mine now")
            with pytest.raises(Forbidden, match=r"search\.reindex needs the admin token"):
                bob.reindex()
            with pytest.raises(Forbidden, match="shutdown needs the admin token"):
                bob.shutdown()
            bob.ping()  # refused requests, not a refused connection
            with connected(strict, "operator", admin=True) as admin:
                admin.break_lock("deploy:prod", "stuck deploy")
            assert alice.get_lock("deploy:prod").lease is None


def test_an_import_names_other_agents_only_with_the_admin_token(strict: DaemonConfig) -> None:
    from engram_cli.client import requests

    drafts = [requests.draft("imported", "MESSAGE", text) for text in ("a", "b", "c")]
    with start_threaded(strict), connected(strict, "admin", admin=True) as admin:
        alice_token = admin.create_token("alice").token
        with connected(strict, "alice", token=alice_token) as alice:
            with pytest.raises(Forbidden, match="importing units of bob, carol needs the admin"):
                alice.import_units(drafts, ["alice", "bob", "carol"])
            with pytest.raises(NotFound):  # nothing of it was written, not even the context
                alice.list_units("imported")
            own = alice.import_units(drafts, ["alice"] * 3)
            assert [unit.agent_id for unit in own.units] == ["alice"] * 3
            alice.ping()  # the refusal left the connection serving
        with pytest.raises(BadRequest, match="2 agents for 3 units"):
            admin.import_units(drafts, ["alice", "bob"])
        mixed = admin.import_units(drafts, ["alice", "bob", "carol"])
        assert [unit.agent_id for unit in mixed.units] == ["alice", "bob", "carol"]
        assert admin.get_context("imported").agent_ids == ["alice", "bob", "carol"]


def _target(config: DaemonConfig, agent: str, *, token: str | None = None,
            admin: bool = False, delegated: bool = False) -> Target:
    return Target(socket_path=config.socket, agent_id=agent, client_name="gateway-test",
                  autostart=False, token=token, admin=admin, env={}, delegated=delegated)


async def test_the_admin_token_may_speak_for_an_agent_with_that_agent_s_rights_only(
        daemon: Server, config: DaemonConfig) -> None:
    """What a gateway does for a caller it authenticated (a JWT): the daemon attributes
    the writes and checks the rights, as for an agent token."""
    async with connect_to(_target(config, "carol", admin=True, delegated=True)) as carol:
        assert carol.welcome is not None and carol.welcome.agent_id == "carol"
        unit = await carol.create_unit("gw", "MESSAGE", "hello")
        assert unit.agent_id == "carol"
        with pytest.raises(Forbidden, match="admin token"):
            await carol.create_token("mallory")
        with pytest.raises(Forbidden, match="acts as carol only"):
            await carol.import_units([requests.draft("gw", "MESSAGE", "x")], ["dave"])
    async with connect_to(_target(config, "admin", admin=True)) as admin:
        alice_token = (await admin.create_token("alice")).token
    with pytest.raises(Forbidden, match="only the admin token may speak"):
        async with connect_to(_target(config, "mallory", token=alice_token, delegated=True)):
            pass
    with pytest.raises(Forbidden, match="only the admin token may speak"):
        async with connect_to(_target(config, "mallory", delegated=True)):
            pass


async def test_an_agent_token_names_its_agent_when_the_hello_names_none(
        daemon: Server, config: DaemonConfig) -> None:
    async with connect_to(_target(config, "admin", admin=True)) as admin:
        alice_token = (await admin.create_token("alice")).token
    async with connect_to(_target(config, "", token=alice_token)) as alice:
        assert alice.welcome is not None and alice.welcome.agent_id == "alice"
        assert (await alice.create_unit("gw", "MESSAGE", "hi")).agent_id == "alice"
    with pytest.raises(BadRequest, match="agent id"):
        async with connect_to(_target(config, "")):
            pass
