"""``engramd --repair`` on a real journal: what it keeps is served again, whole."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import WAIT, connect, start_engramd

pytestmark = pytest.mark.slow  # engramd processes


def test_units_whose_context_creation_was_dropped_are_listed_again(
        env: dict[str, str]) -> None:
    socket = env["ENGRAM_SOCKET"]
    daemon = start_engramd(env)
    with connect(socket) as client:
        for index in range(5):
            client.create_unit("old", "MESSAGE", f"old {index}")
        first = client.create_unit("fresh", "MESSAGE", "creates fresh")  # one record: the
        # context's creation and this unit
        later = [client.create_unit("fresh", "MESSAGE", f"fresh {index}") for index in range(5)]
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(WAIT)
    segment = sorted(Path(env["ENGRAM_DATA_DIR"], "wal").glob("*.wal"))[-1]
    data = bytearray(segment.read_bytes())
    data[data.index(b"creates fresh")] ^= 0x01
    segment.write_bytes(bytes(data))

    repaired = subprocess.run([sys.executable, "-m", "engramd", "--repair", "--yes"], env=env,
                              capture_output=True, text=True, timeout=WAIT, check=False)
    assert repaired.returncode == 0, repaired.stderr
    assert f"seqs {first.seq - 1}-{first.seq} lost" in repaired.stdout, repaired.stdout
    assert first.id in repaired.stdout  # the lost unit, named
    assert "made again" in repaired.stdout and "fresh" in repaired.stdout

    daemon = start_engramd(env)
    try:
        with connect(socket) as client:
            assert client.list_units("fresh").units == later
            context = client.get_context("fresh")
            assert context.agent_ids == ["alice"]
            assert [unit.payload for unit in client.list_units("old").units] == [
                f"old {index}".encode() for index in range(5)]
            assert client.create_unit("fresh", "MESSAGE", "goes on").seq > later[-1].seq
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(WAIT) == 0
