"""Cluster mode behind TLS and credentials: three nats-server nodes that speak only TLS
(to clients and on their routes), verify clients' certificates (mutual TLS) and want a
token, all made by the test (:mod:`tests.helpers.certs`); engramd machines configured
through ``cluster.tls_ca``, ``cluster.tls_cert``, ``cluster.tls_key`` and the token in
``cluster.servers``. A machine the servers refuse says why in one line.

NATS user nkeys need the ``nkeys`` package (nats-py signs with it; engram's dev lock
has it, the cluster extra does not): three more nodes let in one user by its nkey, and
machines given its seed file (``cluster.credentials``) work while one with another seed
is refused in one line. Without nkeys those skip, and a machine given a credentials
file is refused at start instead.

Marked ``cluster`` (and ``slow``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from engram_cli.bench.natslab import NatsCluster
from engram_cli.client.errors import LockHeld
from tests.clustermachines import Machine, deployment_of, running
from tests.conftest import WAIT, engramd_log, wait_until
from tests.helpers.certs import Authority, Issued

pytest.importorskip("nats", reason="cluster mode needs the engram-journal[cluster] extra")
pytestmark = [pytest.mark.cluster, pytest.mark.slow]

TOKEN = "t0ken-of-the-deployment"


@dataclass(frozen=True)
class SecureCluster:
    nats: NatsCluster
    ca: Authority
    client: Issued
    stranger: Authority
    """A CA the servers never heard of."""

    def servers(self, token: str = TOKEN) -> str:
        return ",".join(f"tls://{token}@127.0.0.1:{node.client_port}"
                        for node in self.nats.nodes)

    def settings(self, *, token: str = TOKEN, ca: str = "", client: bool = True
                 ) -> dict[str, str]:
        """A machine's ``ENGRAM_CLUSTER_*`` settings (by default: every one right)."""
        found = {"ENGRAM_CLUSTER_SERVERS": self.servers(token),
                 "ENGRAM_CLUSTER_TLS_CA": ca or self.ca.cert}
        if client:
            found |= {"ENGRAM_CLUSTER_TLS_CERT": self.client.cert,
                      "ENGRAM_CLUSTER_TLS_KEY": self.client.key}
        return found


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    base = tmp_path_factory.mktemp("tls")
    ca = Authority.make(str(base / "ca"))
    server = ca.issue("server", server=True)
    client = ca.issue("engramd", server=False)
    tls = (f'tls {{ cert_file: "{server.cert}", key_file: "{server.key}", '
           f'ca_file: "{ca.cert}", verify: true, timeout: 2 }}')
    with NatsCluster(str(base / "nats"), settings=f'{tls}\nauthorization {{ token: "{TOKEN}" }}',
                     route_settings=tls) as nats:
        yield SecureCluster(nats, ca, client, Authority.make(str(base / "stranger")))


def refused_machine(secure: SecureCluster, env: dict[str, str], scratch: str,
                    **settings: str) -> Machine:
    (machine,) = deployment_of(secure.nats, env, scratch, ("x",), x={
        **secure.settings(), "ENGRAM_CLUSTER_WRITE_TIMEOUT": "1", **settings})
    machine.reaches_cluster = False
    return machine


def refusal_of(machine: Machine) -> str:
    done = machine.cli("cluster", "status", "--json")
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["status"]["refused"])


def assert_refused_in_one_line(machine: Machine, *words: str) -> None:
    """The machine's engramd runs on; what it says of the cluster names the refusal:
    a write fails with one line, every command warns in one line, doctor fails."""
    wait_until(lambda: refusal_of(machine) != "", "engramd to hear the servers refuse it")
    written = machine.cli("unit", "create", "-c", "c", "-p", "x")
    assert written.returncode != 0
    lines = written.stderr.strip().splitlines()
    assert len(lines) == 2, lines  # the warning, then the failure: one line each
    for line in lines:
        assert "the cluster refuses this machine" in line, line
        assert all(word in line for word in words), line
    assert "Traceback" not in written.stderr
    doctor = machine.cli("doctor", "--json")
    cluster = [f for f in map(json.loads, doctor.stdout.splitlines())
               if f["check"] == "cluster"]
    assert cluster[0]["status"] == "fail", cluster
    assert all(word in cluster[0]["detail"] for word in words), cluster
    shown = machine.cli("cluster", "status")
    assert "NO: refused: " in shown.stdout, shown.stdout
    assert machine.process is not None and machine.process.poll() is None
    log = engramd_log(machine.env).read_text()
    assert log.count("the cluster refuses this machine") == 1, log  # said once, not looped


def test_machines_share_writes_and_leases_over_tls(
        secure: SecureCluster, env: dict[str, str], scratch: str) -> None:
    a, b = deployment_of(secure.nats, env, scratch, ("a", "b"), a=secure.settings(),
                         b=secure.settings())
    with running([a, b]):
        with a.client("alice") as alice, b.client("bob") as bob:
            unit = alice.create_unit("work", "MESSAGE", "over TLS")
            wait_until(lambda: bob.get_units([unit.id]).missing == [], "b to have it")
            (held,) = alice.acquire_lock("deploy", ttl=30)
            with pytest.raises(LockHeld, match="alice"):
                bob.acquire_lock("deploy", ttl=30)
            alice.release_lock(held.lock_id)
            (following,) = bob.acquire_lock("deploy", ttl=30, wait=WAIT)
            assert following.fencing_token > held.fencing_token
        status = json.loads(b.cli("cluster", "status", "--json").stdout)["status"]
        assert status["reachable"] and status["refused"] == ""


def test_a_machine_that_does_not_trust_the_servers_is_refused_in_one_line(
        secure: SecureCluster, env: dict[str, str], scratch: str) -> None:
    machine = refused_machine(secure, env, scratch, ENGRAM_CLUSTER_TLS_CA=secure.stranger.cert)
    with running([machine]):
        assert_refused_in_one_line(machine, "TLS", "not trusted", "cluster.tls_ca")


def test_a_machine_without_a_client_certificate_is_refused_in_one_line(
        secure: SecureCluster, env: dict[str, str], scratch: str) -> None:
    machine = refused_machine(secure, env, scratch, ENGRAM_CLUSTER_TLS_CERT="",
                              ENGRAM_CLUSTER_TLS_KEY="")
    with running([machine]):
        assert_refused_in_one_line(machine, "TLS", "cluster.tls_cert")


def test_a_machine_with_a_wrong_token_is_refused_in_one_line(
        secure: SecureCluster, env: dict[str, str], scratch: str) -> None:
    machine = refused_machine(secure, env, scratch,
                              ENGRAM_CLUSTER_SERVERS=secure.servers("not-the-token"))
    with running([machine]):
        assert_refused_in_one_line(machine, "credentials", "authorization violation")


def engramd_refuses_to_start(env: dict[str, str], **settings: str) -> str:
    """What engramd says when it will not start (one error line, exit 1)."""
    home = {**env, "ENGRAM_CLUSTER_SERVERS": "tls://127.0.0.1:4222",
            "ENGRAM_CLUSTER_DEPLOYMENT": "s" + uuid.uuid4().hex[:8], **settings}
    done = subprocess.run([sys.executable, "-m", "engramd"], env=home, capture_output=True,
                          text=True, timeout=WAIT * 3, check=False)
    assert done.returncode == 1, done.stderr
    said = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(said) == 1 and "Traceback" not in done.stderr, done.stderr
    return said[0]


def test_tls_files_that_cannot_be_used_stop_engramd_at_start(
        env: dict[str, str], scratch: str, secure: SecureCluster) -> None:
    missing = os.path.join(scratch, "no-such-ca.pem")
    said = engramd_refuses_to_start(env, ENGRAM_CLUSTER_TLS_CA=missing)
    assert f"cluster.tls_ca {missing}" in said and "No such file" in said, said
    said = engramd_refuses_to_start(env, ENGRAM_CLUSTER_TLS_CERT=secure.client.cert,
                                    ENGRAM_CLUSTER_TLS_KEY=secure.stranger.cert)
    assert "cluster.tls_cert" in said and "cannot be used" in said, said


@pytest.mark.skipif(importlib.util.find_spec("nkeys") is not None,
                    reason="nkeys is installed: credentials files can be used")
def test_a_credentials_file_without_nkeys_stops_engramd_at_start(
        env: dict[str, str], scratch: str) -> None:
    creds = os.path.join(scratch, "team.creds")
    with open(creds, "w") as file:
        file.write("-----BEGIN NATS USER JWT-----\n")
    said = engramd_refuses_to_start(env, ENGRAM_CLUSTER_CREDENTIALS=creds)
    assert "cluster.credentials needs the nkeys package" in said, said


def user_seed(path: str) -> str:
    """A new NATS user nkey: its seed written to *path* (0600); its public key."""
    nkeys = pytest.importorskip("nkeys", reason="NATS nkeys need the nkeys package")
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
        file.write(seed + b"\n")
    return str(nkeys.from_seed(bytearray(seed)).public_key.decode())


@pytest.fixture(scope="module")
def nkey_users(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatsCluster, str]]:
    """Three nodes that let in one user, by its nkey; the path of that user's seed."""
    base = tmp_path_factory.mktemp("nkeys")
    seed = str(base / "engram.nk")
    public = user_seed(seed)
    with NatsCluster(str(base / "nats"),
                     settings=f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}') as nats:
        yield nats, seed


def test_machines_with_the_users_nkey_work_and_a_wrong_seed_is_refused_in_one_line(
        nkey_users: tuple[NatsCluster, str], env: dict[str, str], scratch: str) -> None:
    nats, seed = nkey_users
    wrong = os.path.join(scratch, "stranger.nk")
    user_seed(wrong)
    a, b = deployment_of(nats, env, scratch, ("a", "b"), a={"ENGRAM_CLUSTER_CREDENTIALS": seed},
                         b={"ENGRAM_CLUSTER_CREDENTIALS": seed})
    with running([a, b]), a.client("alice") as alice, b.client("bob") as bob:
        unit = alice.create_unit("work", "MESSAGE", "signed with an nkey")
        wait_until(lambda: bob.get_units([unit.id]).missing == [], "b to have it")
    (stranger,) = deployment_of(nats, env, scratch, ("x",), x={
        "ENGRAM_CLUSTER_CREDENTIALS": wrong, "ENGRAM_CLUSTER_WRITE_TIMEOUT": "1"})
    stranger.reaches_cluster = False
    with running([stranger]):
        assert_refused_in_one_line(stranger, "credentials", "authorization violation")


def test_a_credentials_file_that_is_neither_creds_nor_a_seed_stops_engramd_at_start(
        env: dict[str, str], scratch: str) -> None:
    odd = os.path.join(scratch, "odd.creds")
    with open(odd, "w") as file:
        file.write("not a credential\n")
    said = engramd_refuses_to_start(env, ENGRAM_CLUSTER_CREDENTIALS=odd)
    assert f"cluster.credentials {odd}" in said and "nkey seed" in said, said
