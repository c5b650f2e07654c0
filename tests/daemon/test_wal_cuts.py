"""A torn tail cut at start-up is told, not only logged: ``status`` lists it until an admin
acknowledges it (``wal.acknowledge``), across restarts (engramd.wal.cuts)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from engram_cli.client.errors import Forbidden
from engramd.protocol import AcknowledgeCuts, CutsAcknowledged
from tests.conftest import WAIT, connect, start_engramd

pytestmark = pytest.mark.slow  # engramd processes, killed and restarted


def kill(process: object) -> None:
    process.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
    process.wait(WAIT)  # type: ignore[attr-defined]


def stop(process: object) -> None:
    process.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
    assert process.wait(WAIT) == 0  # type: ignore[attr-defined]


def test_a_bit_flip_in_the_last_record_is_reported_until_acknowledged(
        env: dict[str, str]) -> None:
    socket = env["ENGRAM_SOCKET"]
    daemon = start_engramd(env)
    with connect(socket) as client:
        units = [client.create_unit("c", "MESSAGE", f"unit {index}") for index in range(5)]
    kill(daemon)  # no clean stop: the store has not flushed the last units
    segment = sorted(Path(env["ENGRAM_DATA_DIR"], "wal").glob("*.wal"))[-1]
    data = bytearray(segment.read_bytes())
    last = units[-1]
    data[data.rindex(b"unit 4") + 2] ^= 0x40  # the last record, acknowledged, damaged on disk
    segment.write_bytes(bytes(data))

    daemon = start_engramd(env)
    with connect(socket) as client:
        (cut,) = client.status().wal_cuts
        assert cut.acknowledged == "possibly" and cut.reason == "checksum mismatch"
        assert (cut.seq, cut.last_seq, cut.unit_ids) == (last.seq, last.seq, [last.id])
        assert cut.segment == str(segment) and Path(cut.saved).is_file()
        assert cut.summary.startswith(f"the last {cut.bytes} bytes of the log were cut at "
                                      f"start-up (record at offset {cut.offset}")
        assert client.get_units([last.id]).missing == [last.id]
        assert client.get_units([u.id for u in units[:-1]]).units == units[:-1]
        # Its seq may have been handed out: never again.
        assert client.create_unit("c", "MESSAGE", "after the cut").seq > last.seq
        with pytest.raises(Forbidden, match="admin token"):
            client.call(AcknowledgeCuts())
    stop(daemon)

    daemon = start_engramd(env)  # a restart does not forget it
    with connect(socket) as client:
        assert [c.id for c in client.status().wal_cuts] == [cut.id]
    with connect(socket, admin=True) as admin:
        assert admin.call(AcknowledgeCuts(ids=["someone-else"])).cuts == []
        cleared = admin.call(AcknowledgeCuts(ids=[cut.id]))
        assert isinstance(cleared, CutsAcknowledged) and [c.id for c in cleared.cuts] == [cut.id]
        assert admin.status().wal_cuts == []
    stop(daemon)

    daemon = start_engramd(env)
    with connect(socket) as client:
        assert client.status().wal_cuts == []
        assert Path(cut.saved).is_file()  # the bytes stay for whoever wants to look
    stop(daemon)


def test_a_write_cut_short_is_reported_as_never_acknowledged(env: dict[str, str]) -> None:
    socket = env["ENGRAM_SOCKET"]
    daemon = start_engramd(env)
    with connect(socket) as client:
        kept = client.create_unit("c", "MESSAGE", "kept")
    kill(daemon)
    segment = sorted(Path(env["ENGRAM_DATA_DIR"], "wal").glob("*.wal"))[-1]
    with segment.open("ab") as file:
        file.write(b"\x00\x00\x01\x00half a record")  # what a crash mid-write leaves
    daemon = start_engramd(env)
    with connect(socket) as client:
        (cut,) = client.status().wal_cuts
        assert cut.acknowledged == "unlikely" and cut.seq == kept.seq + 1
        assert "never acknowledged" in cut.summary
        assert client.create_unit("c", "MESSAGE", "next").seq == kept.seq + 1
    stop(daemon)
