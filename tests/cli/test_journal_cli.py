"""``engram unit ...`` and ``engram context ...`` at the command-line boundary."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, connect, run_cli

pytestmark = pytest.mark.slow  # every test here runs processes


def cli(daemon: DaemonProcess, *args: str, input: bytes | None = None):  # type: ignore[no-untyped-def]
    return run_cli(daemon.env, *args, input=input)


def create(daemon: DaemonProcess, *args: str, input: bytes | None = None) -> str:
    result = cli(daemon, "unit", "create", *args, input=input)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_create_prints_only_the_id_and_reads_stdin(engramd: DaemonProcess) -> None:
    unit_id = create(engramd, "-c", "build-42", "-t", "tool_result", "-m", "exit=0",
                     input=b"log line\n")
    assert len(unit_id) == 36 and unit_id[14] == "7"
    shown = json.loads(cli(engramd, "unit", "get", unit_id, "--json").stdout)
    assert shown["payload"] == "log line\n" and shown["type"] == "TOOL_RESULT"
    assert shown["meta"] == {"exit": "0"} and shown["agent_id"] == "tester"


def test_binary_payload_is_base64_in_json_and_exact_with_raw(engramd: DaemonProcess,
                                                             tmp_path) -> None:  # type: ignore[no-untyped-def]
    blob = bytes(range(256))
    path = tmp_path / "blob"
    path.write_bytes(blob)
    unit_id = create(engramd, "-c", "bin", "--file", str(path))
    shown = json.loads(cli(engramd, "unit", "get", unit_id, "--json").stdout)
    assert "payload" not in shown and base64.b64decode(shown["payload_base64"]) == blob
    raw = subprocess.run([sys.executable, "-m", "engram_cli", "unit", "get", unit_id, "--raw"],
                         env=engramd.env, capture_output=True, timeout=30, check=False)
    assert raw.returncode == 0 and raw.stdout == blob


def test_list_rows_are_tab_separated_in_order(engramd: DaemonProcess) -> None:
    first = create(engramd, "-c", "rows", "-p", "one")
    second = create(engramd, "-c", "rows", "-p", "two\tand\nmore", "-t", "reasoning")
    lines = cli(engramd, "unit", "list", "-c", "rows").stdout.splitlines()
    assert [line.split("\t")[5] for line in lines] == [first, second]
    fields = lines[1].split("\t")
    assert fields[2:5] == ["rows", "tester", "REASONING"] and fields[6] == "two and more"
    newest = cli(engramd, "unit", "list", "-c", "rows", "-n", "1", "--json").stdout
    assert json.loads(newest)["id"] == second


def test_missing_unit_exits_3_after_showing_the_others(engramd: DaemonProcess) -> None:
    unit_id = create(engramd, "-c", "m", "-p", "here")
    result = cli(engramd, "unit", "get", unit_id, "no-such-id")
    assert result.returncode == 3
    assert unit_id in result.stdout
    assert result.stderr.strip() == "engram: error: no unit no-such-id"


def test_relationships_and_related(engramd: DaemonProcess) -> None:
    cause = create(engramd, "-c", "r", "-p", "cause")
    effect = create(engramd, "-c", "r", "-p", "effect", "-r", f"CAUSES:{cause}")
    related = json.loads(cli(engramd, "unit", "related", cause, "--json").stdout)
    assert related["edges"] == [{"source": effect, "type": "CAUSES", "target": cause,
                                 "depth": 1}]
    bad = cli(engramd, "unit", "create", "-c", "r", "-p", "x", "-r", "CAUSES:nowhere-at-all")
    assert bad.returncode == 3 and "no unit id begins with nowhere-at-all" in bad.stderr, bad.stderr
    usage = cli(engramd, "unit", "create", "-c", "r", "-p", "x", "-r", "nonsense")
    assert usage.returncode == 2 and "TYPE:ID" in usage.stderr


def test_validation_errors_are_one_line(engramd: DaemonProcess) -> None:
    result = cli(engramd, "unit", "create", "-c", "bad slug!", "-p", "x")
    assert result.returncode == 2
    assert result.stderr.startswith("engram: error: bad context id") and \
        result.stderr.count("\n") == 1
    no_context = run_cli(engramd.env, "unit", "create", "-p", "x")
    assert no_context.returncode == 2 and "--context" in no_context.stderr


def test_export_then_import_round_trips(engramd: DaemonProcess, tmp_path: Path) -> None:
    first = create(engramd, "-c", "src", "-p", "first")
    create(engramd, "-c", "src", "-p", "second", "-r", f"RESPONDS_TO:{first}")
    run_cli({**engramd.env, "ENGRAM_AGENT": "bob"}, "unit", "create", "-c", "src", "-p", "bob's")
    exported = cli(engramd, "unit", "export", "-c", "src").stdout
    assert len(exported.splitlines()) == 3
    # Into the journal it came from: every unit is there already, by its id.
    same = cli(engramd, "unit", "import", input=exported.encode())
    assert same.returncode == 0, same.stderr
    assert same.stderr == "engram: imported 0 unit(s), 3 already present\n"
    assert cli(engramd, "unit", "export", "-c", "src").stdout == exported

    # Copies under new ids, relationships following them; a second run writes nothing.
    copied = cli(engramd, "unit", "import", "-c", "dst", "--new-ids", input=exported.encode())
    assert "imported 3 unit(s), 0 already present" in copied.stderr
    again = cli(engramd, "unit", "import", "-c", "dst", "--new-ids", input=exported.encode())
    assert "imported 0 unit(s), 3 already present" in again.stderr
    copies = [json.loads(line) for line in cli(engramd, "unit", "list", "-c", "dst",
                                               "--json").stdout.splitlines()]
    assert [c["payload"] for c in copies] == ["first", "second", "bob's"]
    assert [c["agent_id"] for c in copies] == ["tester", "tester", "bob"]
    assert copies[1]["relationships"][0]["target"] == copies[0]["id"] != first

    # A restore into an empty journal gives back the same units: ids, times, agents
    # (the seqs are the journal's own, the uid and pid the importer's).
    elsewhere = {**engramd.env, "ENGRAM_SOCKET": str(tmp_path / "b" / "s.sock"),
                 "ENGRAM_DATA_DIR": str(tmp_path / "b" / "data")}
    restored = run_cli(elsewhere, "unit", "import", "--json", input=exported.encode())
    try:
        assert json.loads(restored.stdout) == {"written": 3, "reused": 0}, restored.stderr
        back = run_cli(elsewhere, "unit", "export", "-c", "src").stdout
        def without_writer(text: str) -> list[dict[str, object]]:
            return [{k: v for k, v in json.loads(line).items() if k not in ("uid", "pid", "seq")}
                    for line in text.splitlines()]
        assert without_writer(back) == without_writer(exported)
    finally:
        run_cli(elsewhere, "daemon", "stop")


def test_an_import_refuses_a_time_it_cannot_read(engramd: DaemonProcess) -> None:
    line = json.dumps({"id": "01a232c7-1811-7000-9d32-b57df5e964a6", "ts": "yesterday",
                       "context_id": "t", "payload": "x"})
    result = cli(engramd, "unit", "import", input=line.encode() + b"\n")
    assert result.returncode == 1
    assert result.stderr == ("engram: error: line 1: ts is not an RFC 3339 time: "
                             "'yesterday'\n")


def test_an_import_of_many_agents_is_written_in_batches_of_its_size(
        engramd: DaemonProcess) -> None:
    lines = b"".join(json.dumps({"context_id": "mixed", "agent_id": f"agent-{n % 5}",
                                 "payload": f"line {n}"}).encode() + b"\n" for n in range(40))
    with connect(engramd.socket) as client:
        batches = client.status().journal.commit_batches  # type: ignore[union-attr]
        result = cli(engramd, "unit", "import", "--batch", "25", input=lines)
        assert result.returncode == 0, result.stderr
        assert "imported 40 unit(s)" in result.stderr
        # Two requests (25 + 15 lines), not one per change of agent: two commits.
        assert client.status().journal.commit_batches - batches == 2  # type: ignore[union-attr]
        units = client.list_units("mixed", limit=100).units
    assert [unit.payload for unit in units] == [f"line {n}".encode() for n in range(40)]
    assert [unit.agent_id for unit in units] == [f"agent-{n % 5}" for n in range(40)]


def test_import_reports_the_bad_line_and_writes_nothing_of_its_batch(
        engramd: DaemonProcess) -> None:
    lines = b'{"context_id": "imp", "payload": "ok"}\nnot json\n'
    result = cli(engramd, "unit", "import", input=lines)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("engram: error: line 2:")
    assert cli(engramd, "unit", "list", "-c", "imp").stdout == ""


def test_context_commands(engramd: DaemonProcess) -> None:
    assert cli(engramd, "context", "create", "proj", "--name", "Project").stdout.strip() == "proj"
    exists = cli(engramd, "context", "create", "proj")
    assert exists.returncode == 4
    unit_id = create(engramd, "-c", "proj", "-p", "pin me")
    cli(engramd, "context", "pin", "proj", unit_id)
    cli(engramd, "context", "join", "proj", "bob")
    cli(engramd, "context", "update", "proj", "-m", "team=core", "--name", "Renamed")
    shown = json.loads(cli(engramd, "context", "get", "proj", "--json").stdout)
    assert shown["pinned_units"] == [unit_id] and shown["agent_ids"] == ["tester", "bob"]
    assert shown["display_name"] == "Renamed" and shown["meta"] == {"team": "core"}
    cli(engramd, "context", "leave", "proj")
    cli(engramd, "context", "unpin", "proj", unit_id)
    shown = json.loads(cli(engramd, "context", "get", "proj", "--json").stdout)
    assert shown["agent_ids"] == ["bob"] and shown["pinned_units"] == []
    listed = cli(engramd, "context", "list").stdout.splitlines()
    assert listed[0].split("\t")[0] == "proj"
    missing = cli(engramd, "context", "get", "nope")
    assert missing.returncode == 3


def test_a_damaged_gzip_archive_imports_nothing(engramd: DaemonProcess,
                                                tmp_path: Path) -> None:
    lines = b"".join(json.dumps({"context_id": "arch", "payload": f"unit {n}"}).encode()
                     + b"\n" for n in range(1200))
    packed = bytearray(gzip.compress(lines, mtime=0))
    packed[-8] ^= 0xFF  # the CRC, which gzip checks only once it has read every line
    archive = tmp_path / "damaged.jsonl.gz"
    archive.write_bytes(bytes(packed))

    result = cli(engramd, "unit", "import", "--batch", "100", str(archive))

    assert result.returncode == 1
    assert result.stderr.startswith("engram: error: the archive is damaged, nothing "
                                    "imported: CRC check failed"), result.stderr
    assert cli(engramd, "unit", "list", "-c", "arch").stdout == ""
    archive.write_bytes(gzip.compress(lines, mtime=0))  # the sound one goes in whole
    assert "imported 1200 unit(s)" in cli(engramd, "unit", "import", str(archive)).stderr


def test_a_line_longer_than_a_request_stops_an_import_unread(engramd: DaemonProcess,
                                                             tmp_path: Path) -> None:
    # 64 MiB of one line in 64 KiB of gzip: read no further than a request could carry.
    bomb = tmp_path / "bomb.jsonl.gz"
    with gzip.open(bomb, "wb") as file:
        file.write(b'{"context_id": "bomb", "payload": "ok"}\n{"payload": "')
        for _ in range(64):
            file.write(b"a" * (1 << 20))

    result = cli(engramd, "unit", "import", str(bomb))

    assert result.returncode == 1
    assert result.stderr == ("engram: error: line 2: longer than 16 MiB, more than a "
                             "unit's request can carry\n")
    assert cli(engramd, "unit", "list", "-c", "bomb").stdout == ""


def test_large_units_are_imported_in_batches_and_listed_in_pages_by_bytes(
        engramd: DaemonProcess) -> None:
    # 200 units of 110 KB: 500 to a batch would be a 22 MB request, past the frame's 16 MiB.
    lines = b"".join(json.dumps({"context_id": "big", "payload": f"{n:03} " + "x" * 110_000})
                     .encode() + b"\n" for n in range(200))

    result = cli(engramd, "unit", "import", input=lines)

    assert result.returncode == 0, result.stderr
    assert "imported 200 unit(s)" in result.stderr
    # A page's reply is one frame too: it ends before 8 MiB of units, with a cursor.
    with connect(engramd.socket) as client:
        newest = client.list_units("big", limit=200)
    assert 50 < len(newest.units) < 100 and newest.next_cursor == newest.units[0].seq
    exported = cli(engramd, "unit", "export", "-c", "big")
    assert exported.returncode == 0, exported.stderr
    assert [json.loads(line)["payload"][:3] for line in exported.stdout.splitlines()] == [
        f"{n:03}" for n in range(200)]


def test_damaged_deflate_data_is_said_as_damage(engramd: DaemonProcess, tmp_path: Path) -> None:
    packed = bytearray(gzip.compress(b'{"context_id": "z", "payload": "ok"}\n' * 500, mtime=0))
    packed[12] ^= 0xFF  # inside the deflate stream: zlib's own error, not gzip's
    archive = tmp_path / "bad.jsonl.gz"
    archive.write_bytes(bytes(packed))

    from_file = cli(engramd, "unit", "import", str(archive))
    from_pipe = subprocess.run([sys.executable, "-m", "engram_cli", "unit", "import"],
                               env=engramd.env, input=bytes(packed), capture_output=True,
                               timeout=30, check=False)

    assert from_file.returncode == 1
    assert from_file.stderr.startswith("engram: error: the archive is damaged, nothing "
                                       "imported: Error -3"), from_file.stderr
    assert from_pipe.returncode == 1
    assert from_pipe.stderr.decode().startswith(
        "engram: error: line 1: cannot read the input: Error -3"), from_pipe.stderr
    assert "internal error" not in from_file.stderr + from_pipe.stderr.decode()
