"""The container image's steps, run outside a container (no container engine runs here):
the Dockerfile's install script into a fresh prefix, its entry point (engramd and the
gateway together), its health check, and a graceful stop of both."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

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


@pytest.mark.slow
def test_the_image_steps_install_start_answer_and_stop(scratch: str) -> None:
    prefix = Path(scratch, "opt")
    install = subprocess.run(["sh", "deploy/install.sh", str(prefix)], cwd=ROOT,
                             capture_output=True, text=True, timeout=600, check=False)
    assert install.returncode == 0, install.stderr[-3000:]
    # What the image's ENV sets, on this machine's paths.
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ENGRAM_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(PATH=f"{prefix / 'bin'}:{env['PATH']}", ENGRAM_DATA_DIR=f"{scratch}/data",
               ENGRAM_SOCKET=f"{scratch}/run/engramd.sock", ENGRAM_AGENT="gateway",
               ENGRAM_GATEWAY_LISTEN=f"127.0.0.1:{port}", HOME=scratch)
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

