"""The container image's steps, run outside a container (no container engine runs here):
the Dockerfile's install script into a fresh prefix, its entry point (engramd and the
gateway together), its health check, and a graceful stop of both."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("hypercorn")

import httpx2

from tests.conftest import WAIT, wait_until

ROOT = Path(__file__).parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def healthcheck_command(port: int) -> list[str]:
    """The Dockerfile's HEALTHCHECK command, aimed at *port*."""
    match = re.search(r"HEALTHCHECK .*?CMD (\[[^\n]*\])$", DOCKERFILE, re.MULTILINE | re.DOTALL)
    assert match, "the Dockerfile has a HEALTHCHECK"
    command: list[str] = json.loads(match.group(1))
    return [part.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for part in command]


def test_the_dockerfile_runs_the_tested_steps() -> None:
    assert "RUN sh deploy/install.sh /opt/engram" in DOCKERFILE
    assert 'ENTRYPOINT ["engram-container"]' in DOCKERFILE
    assert "USER engram" in DOCKERFILE and "VOLUME /data" in DOCKERFILE
    assert "/readyz" in " ".join(healthcheck_command(8080))


def test_the_image_lock_has_the_cluster_extra() -> None:
    """The image installs deploy/requirements.lock (deploy/install.sh), which `make lock`
    makes with the cluster extra: nats-py is pinned there, with its hashes."""
    install = (ROOT / "deploy" / "install.sh").read_text()
    assert "--require-hashes -r deploy/requirements.lock" in install
    makefile = (ROOT / "Makefile").read_text()
    (deploy_lock,) = [command for command in makefile.split("uv pip compile")
                      if "-o deploy/requirements.lock" in command]
    assert "--extra cluster" in deploy_lock.split("-o deploy/requirements.lock")[0]
    assert re.search(r"^nats-py==\S+ \\\n\s+--hash=sha256:",
                     (ROOT / "deploy" / "requirements.lock").read_text(), re.MULTILINE)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's install step, into a fresh prefix."""
    prefix = tmp_path_factory.mktemp("opt")
    install = subprocess.run(["sh", "deploy/install.sh", str(prefix)], cwd=ROOT,
                             capture_output=True, text=True, timeout=600, check=False)
    assert install.returncode == 0, install.stderr[-3000:]
    return prefix


def image_env(prefix: Path, home: str, port: int) -> dict[str, str]:
    """What the image's ENV sets, on this machine's paths."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ENGRAM_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(PATH=f"{prefix / 'bin'}:{env['PATH']}", ENGRAM_DATA_DIR=f"{home}/data",
               ENGRAM_SOCKET=f"{home}/run/engramd.sock", ENGRAM_AGENT="gateway",
               ENGRAM_GATEWAY_LISTEN=f"127.0.0.1:{port}", HOME=home)
    return env


@pytest.mark.slow
def test_the_image_steps_install_start_answer_and_stop(scratch: str, installed: Path) -> None:
    prefix = installed
    port = free_port()
    env = image_env(prefix, scratch, port)
    with open(Path(scratch, "container.log"), "wb") as log:
        container = subprocess.Popen([str(prefix / "bin" / "engram-container")], env=env,
                                     stdout=log, stderr=log, cwd=scratch)
    try:
        wait_until(lambda: subprocess.run(healthcheck_command(port), env=env, check=False,
                                          capture_output=True, timeout=WAIT).returncode == 0,
                   "the health check to pass")
        created = subprocess.run([str(prefix / "bin" / "engram"), "agent", "token", "create",
                                  "ci"], env=env, capture_output=True, text=True, timeout=WAIT,
                                 check=False)
        assert created.returncode == 0, created.stderr
        base = f"http://127.0.0.1:{port}"
        with httpx2.Client(base_url=base, timeout=WAIT) as http:
            unauthenticated = http.post("/workunit", json={"context_id": "c", "payload": "x"})
            assert unauthenticated.status_code == 401  # the image's default: --auth token
            wrote = http.post("/workunit", json={"context_id": "c", "payload": "x"},
                              headers={"Authorization": f"Bearer {created.stdout.strip()}"})
            assert wrote.status_code == 201 and wrote.json()["units"][0]["agent_id"] == "ci"
        container.send_signal(signal.SIGTERM)
        assert container.wait(WAIT * 3) == 0
        assert not os.path.exists(env["ENGRAM_SOCKET"])  # engramd stopped cleanly too
    finally:
        if container.poll() is None:
            container.kill()
            container.wait(WAIT)
    log_text = Path(scratch, "container.log").read_text(errors="replace")
    assert "Traceback" not in log_text, log_text[-3000:]



@pytest.mark.slow
@pytest.mark.cluster
def test_the_compose_topology_runs_from_the_image_steps(scratch: str, installed: Path) -> None:
    """deploy/cluster/compose.yaml without containers: three NATS nodes configured by
    deploy/cluster/nats.conf and the image's entry point as two machines; a lease taken
    on one excludes the other."""
    from engram_cli.bench.natslab import NatsCluster

    with NatsCluster(os.path.join(scratch, "nats"),
                     config_file=str(ROOT / "deploy" / "cluster" / "nats.conf")) as nats:
        homes = [os.path.join(scratch, name) for name in ("a", "b")]
        for home in homes:
            os.mkdir(home, 0o700)
        envs = [{**image_env(installed, home, free_port()),
                 "ENGRAM_CLUSTER_SERVERS": nats.servers, "ENGRAM_CLUSTER_DEPLOYMENT": "compose"}
                for home in homes]
        containers = [subprocess.Popen([str(installed / "bin" / "engram-container")], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       cwd=home) for env, home in zip(envs, homes, strict=True)]
        try:
            for env in envs:
                check = healthcheck_command(int(env["ENGRAM_GATEWAY_LISTEN"].rsplit(":")[1]))
                wait_until(lambda check=check, env=env: subprocess.run(  # type: ignore[misc]
                    check, env=env, check=False, capture_output=True,
                    timeout=WAIT).returncode == 0, "the health check to pass", timeout=60)

            def engram(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run([str(installed / "bin" / "engram"), *args], env=env,
                                      capture_output=True, text=True, timeout=WAIT * 3,
                                      check=False)

            def lock(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
                """``lock acquire --no-wait``, again while the machine has not yet seen
                the cluster or read its leases (a busy machine takes a while to form the
                streams): then nothing was written, as the answer says."""
                answer = engram(env, "lock", "acquire", "deploy:prod", "--no-wait")
                for _ in range(10):
                    if answer.returncode != 69 or not any(
                            why in answer.stderr for why in ("unreachable", "nothing was")):
                        break
                    answer = engram(env, "lock", "acquire", "deploy:prod", "--no-wait")
                return answer

            taken = lock(envs[0])
            assert taken.returncode == 0, taken.stderr
            refused = lock(envs[1])
            assert refused.returncode == 4 and "held by" in refused.stderr, refused.stderr
        finally:
            for container in containers:
                container.send_signal(signal.SIGTERM)
            for container in containers:
                try:
                    container.wait(WAIT * 3)
                except subprocess.TimeoutExpired:
                    container.kill()
                    container.wait(WAIT)


def test_the_compose_file_wires_three_nodes_and_three_machines() -> None:
    """deploy/cluster/compose.yaml (no container engine here to run it) says what the
    topology test above runs: every node on nats.conf with a name of its own and routes
    to all three, every machine pointed at all three nodes."""
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "deploy" / "cluster" / "compose.yaml").read_text())
    services = compose["services"]
    nodes = {name: spec for name, spec in services.items() if spec["image"].startswith("nats")}
    machines = {name: spec for name, spec in services.items() if spec["image"] == "engram"}
    assert sorted(nodes) == ["n1", "n2", "n3"] and len(machines) == 3
    for name, spec in nodes.items():
        env = spec["environment"]
        assert env["NATS_NAME"] == name
        assert "./nats.conf:/etc/nats/nats.conf:ro" in spec["volumes"]
        assert {env[f"NATS_ROUTE_{n}"] for n in (1, 2, 3)} == {
            f"nats-route://{node}:{env['NATS_CLUSTER_PORT']}" for node in nodes}
    port = nodes["n1"]["environment"]["NATS_CLIENT_PORT"]
    for spec in machines.values():
        assert spec["build"]["context"] == "../.."
        assert spec["environment"]["ENGRAM_CLUSTER_SERVERS"] == ",".join(
            f"nats://{node}:{port}" for node in sorted(nodes))
    assert len({spec["volumes"][0] for spec in machines.values()}) == 3  # a data dir each


RECIPE = re.compile(r"<!-- recipe: two machines -->\n```sh\n(.*?)```", re.DOTALL)


def recipe_steps() -> list[str]:
    """The command lines of docs/cluster.md's recipe, as the doc has them."""
    found = RECIPE.search((ROOT / "docs" / "cluster.md").read_text())
    assert found, "docs/cluster.md has the recipe block"
    return [line for line in found.group(1).splitlines() if line.strip()]


def test_the_recipe_is_plain_shell_commands() -> None:
    steps = recipe_steps()
    assert all(shlex.split(step, comments=True) for step in steps)
    assert sum(step.startswith("engram daemon start") for step in steps) == 2


@pytest.mark.slow
@pytest.mark.cluster
def test_the_cluster_recipe_of_the_docs_runs_as_written(
        env: dict[str, str], scratch: str, nats_cluster: Any) -> None:
    """docs/cluster.md's recipe, command by command, on this test's three nodes: only the
    servers, the deployment and the /tmp paths are this test's."""
    from tests.conftest import run_cli, wait_until

    mine = {"ENGRAM_CLUSTER_SERVERS": nats_cluster.servers,
            "ENGRAM_CLUSTER_DEPLOYMENT": "recipe" + uuid.uuid4().hex[:8]}
    shell = {k: v for k, v in env.items() if k not in ("ENGRAM_SOCKET", "ENGRAM_DATA_DIR")}
    started: list[dict[str, str]] = []
    try:
        for step in recipe_steps():
            words = shlex.split(step, comments=True)
            comment = step.partition("#")[2].strip() if "#" in step else ""
            values = {}
            while words and re.match(r"^[A-Z_]+=", words[0]):
                name, _, value = words.pop(0).partition("=")
                values[name] = value
            if words[:1] == ["export"]:
                for word in words[1:]:
                    name, _, value = word.partition("=")
                    shell[name] = mine.get(name, value.replace("/tmp/", f"{scratch}/"))
                continue
            assert words[0] == "engram", step
            call = {**shell, **values}
            done = run_cli(call, *words[1:], timeout=WAIT * 6)
            expected = int(comment.split()[1]) if comment.startswith("exits ") else 0
            assert done.returncode == expected, f"{step}\n{done.stdout}{done.stderr}"
            if words[1:3] == ["daemon", "start"]:
                started.append(call)
            if comment.startswith("prints: "):
                wanted = comment.removeprefix("prints: ")
                if wanted not in done.stdout and words[1:3] == ["cluster", "status"]:
                    # A machine loaded enough that its look at the servers (0.6 s at
                    # most) times out says "unreachable" from what it last saw (issue
                    # 37's open trial findings): as a person would, look again.
                    def prints(wanted: str = wanted, call: dict[str, str] = call,
                               args: list[str] = words[1:]) -> bool:
                        return wanted in run_cli(call, *args).stdout

                    wait_until(prints, f"{step!r} to print {wanted!r}", timeout=WAIT * 2)
                else:
                    assert wanted in done.stdout, (step, done.stdout)
            if comment.startswith("prints nothing"):
                assert done.stdout == "", (step, done.stdout)
    finally:
        for call in started:
            run_cli(call, "daemon", "stop")
