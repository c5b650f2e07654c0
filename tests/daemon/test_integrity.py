"""A damaged store is never read as a short answer: reads, the stream, status and the walk."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from engram_cli.client.errors import EngramError, Forbidden
from engramd.protocol import Damaged, Verify, VerifyReport
from engramd.protocol.model import Unit
from tests.conftest import (
    WAIT,
    DaemonProcess,
    connect,
    engramd_log,
    run_cli,
    spawn_engramd,
    start_engramd,
    wait_until,
)

UNITS = 60


def write_units(engramd: DaemonProcess, count: int = UNITS, context: str = "ctx") -> list[Unit]:
    with connect(engramd.socket) as engram:
        return [engram.create_unit(context, "MESSAGE", f"unit {n} " + "y" * 300)
                for n in range(count)]


def flip_data_byte(data_dir: Path) -> Path:
    """Damage a data block of the store's (only) table file: RocksDB still opens it."""
    tables = sorted((data_dir / "store").glob("*.sst"))
    assert len(tables) == 1, tables
    data = bytearray(tables[0].read_bytes())
    data[len(data) // 3] ^= 0x55
    tables[0].write_bytes(bytes(data))
    return tables[0]


def restart_damaged(engramd: DaemonProcess, **env: str) -> tuple[DaemonProcess, Path]:
    """Stop *engramd* cleanly, flip a byte of its store, start it again."""
    assert engramd.stop() == 0
    table = flip_data_byte(Path(engramd.env["ENGRAM_DATA_DIR"]))
    environment = {**engramd.env, **env}
    return DaemonProcess(start_engramd(environment), engramd.socket, environment), table


def verify(socket: str) -> VerifyReport:
    with connect(socket, admin=True) as engram:
        report = engram.call(Verify())
    assert isinstance(report, VerifyReport)
    return report


def test_a_damaged_store_answers_with_an_error_naming_the_file(engramd: DaemonProcess) -> None:
    units = write_units(engramd)
    damaged, table = restart_damaged(engramd, ENGRAM_STORE_VERIFY_ON_START="false")
    try:
        with connect(damaged.socket) as engram:
            with pytest.raises(Damaged) as raised:
                engram.list_units("ctx", limit=UNITS)
            assert str(table) in str(raised.value)
            assert "engramd --rebuild-store" in str(raised.value)
            with pytest.raises(Damaged):
                engram.list_units("ctx", after=0, limit=1000)
            # Still up, still serving what it can read in full.
            assert engram.ping().daemon_version
            assert engram.create_unit("elsewhere", "MESSAGE", "still writing").payload
            journal = engram.status().journal
            assert journal is not None and journal.units == UNITS + 1
            assert journal.store_damage is not None and str(table) in journal.store_damage
            readable = 0
            for unit in units:
                try:
                    assert engram.get_unit(unit.id) == unit
                    readable += 1
                except Damaged:
                    pass
            assert 0 < readable < UNITS, "a point read in the damaged block fails, others not"
        listed = run_cli(damaged.env, "unit", "list", "-c", "ctx", "-n", "1000")
        assert listed.returncode != 0 and listed.stdout == ""
        assert str(table) in listed.stderr and len(listed.stderr.splitlines()) == 1
        exported = run_cli(damaged.env, "unit", "export", "--all")
        assert exported.returncode != 0 and str(table) in exported.stderr
    finally:
        assert damaged.stop() == 0


def test_a_subscription_that_meets_damage_is_told_and_closed(engramd: DaemonProcess) -> None:
    write_units(engramd)
    damaged, table = restart_damaged(engramd, ENGRAM_STORE_VERIFY_ON_START="false")
    try:
        with connect(damaged.socket) as engram:
            seqs = []
            with pytest.raises(EngramError) as raised:
                for item in engram.subscribe(after=0):
                    seqs.append(item)
            assert raised.value.code == "damaged" and str(table) in str(raised.value)
            assert len(seqs) < UNITS
        with connect(damaged.socket) as engram:
            assert engram.ping()
    finally:
        assert damaged.stop() == 0


def test_damage_shows_in_status_at_start_without_a_read(engramd: DaemonProcess) -> None:
    write_units(engramd)
    damaged, table = restart_damaged(engramd)
    try:
        with connect(damaged.socket) as engram:
            def reported() -> bool:
                journal = engram.status().journal
                return journal is not None and journal.store_damage is not None
            wait_until(reported, "the start's read of the store to report the damage")
            journal = engram.status().journal
            assert journal is not None and journal.store_damage is not None
            assert str(table) in journal.store_damage
    finally:
        assert damaged.stop() == 0


def test_verify_of_a_sound_store_agrees_with_the_log(engramd: DaemonProcess) -> None:
    write_units(engramd, 5)
    report = verify(engramd.socket)
    assert report.ok and report.problems == [] and report.damage == []
    assert (report.units, report.units_expected, report.log_units) == (5, 5, 5)
    assert report.events == report.applied_seq == report.log_last_seq
    assert report.log_first_seq == 1 and report.rebuild_complete and report.walked_all


def test_verify_names_the_file_the_key_range_and_what_a_rebuild_restores(
        engramd: DaemonProcess) -> None:
    write_units(engramd)
    damaged, table = restart_damaged(engramd, ENGRAM_STORE_VERIFY_ON_START="false")
    try:
        report = verify(damaged.socket)
        assert not report.ok
        [where] = report.damage
        assert where.file == str(table) and "checksum" in where.reason
        assert where.after_key.startswith("c/ctx seq ") and where.resumed_at
        assert report.units_expected == UNITS and report.log_units == UNITS
        assert report.rebuild_complete and report.unrecoverable == []
        assert any(str(table) in line for line in report.problems)
    finally:
        assert damaged.stop() == 0


def test_verify_needs_the_admin_token(engramd: DaemonProcess) -> None:
    with connect(engramd.socket) as engram, pytest.raises(Forbidden, match="admin token"):
        engram.call(Verify())


def start_fails(env: dict[str, str]) -> str:
    """Start ``engramd`` where it must refuse: its exit status is 1; what it said."""
    process = spawn_engramd(env)
    try:
        _, stderr = process.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail("engramd started where it must refuse")
    assert process.returncode == 1, stderr
    text = stderr.decode()
    assert "Traceback" not in text and "+--" not in text, text
    return text


def test_a_missing_current_is_one_line_and_nothing_is_deleted(engramd: DaemonProcess) -> None:
    write_units(engramd, 3)
    assert engramd.stop() == 0
    store = Path(engramd.env["ENGRAM_DATA_DIR"], "store")
    tables = sorted(store.glob("*.sst"))
    (store / "CURRENT").unlink()
    for _ in range(2):  # a second start does not make an empty store of it either
        said = start_fails(engramd.env)
        [line] = [line for line in said.splitlines() if "level=error" in line]
        assert f"{store}/CURRENT" in line and "engramd --rebuild-store" in line
    assert sorted(store.glob("*.sst")) == tables and not (store / "CURRENT").exists()


def test_a_damaged_table_index_stops_the_start_with_one_line(engramd: DaemonProcess) -> None:
    write_units(engramd, 3)
    assert engramd.stop() == 0
    [table] = Path(engramd.env["ENGRAM_DATA_DIR"], "store").glob("*.sst")
    data = bytearray(table.read_bytes())
    # The index and meta blocks sit at the end, before the footer (its last 53 bytes);
    # which lies where depends on the table format (a partitioned index: the top level,
    # the properties, the meta index), and RocksDB reads them all at the open.
    for offset in range(len(data) - 300, len(data) - 60):
        data[offset] ^= 0x55
    table.write_bytes(bytes(data))
    said = start_fails(engramd.env)
    [line] = [line for line in said.splitlines() if "level=error" in line]
    assert str(table) in line and "engramd --rebuild-store" in line


def test_a_damaged_search_index_stops_the_start_naming_reindex(engramd: DaemonProcess) -> None:
    write_units(engramd, 3)
    assert engramd.stop() == 0
    search = Path(engramd.env["ENGRAM_DATA_DIR"], "search.db")
    for suffix in ("-wal", "-shm"):
        Path(f"{search}{suffix}").unlink(missing_ok=True)
    search.write_bytes(b"this is not an SQLite file" * 100)
    said = start_fails(engramd.env)
    [line] = [line for line in said.splitlines() if "level=error" in line]
    assert str(search) in line and "engramd --reindex" in line
    env = engramd.env
    reindexed = DaemonProcess(spawn_engramd(env, "--reindex"), engramd.socket, env)
    try:
        wait_until(lambda: os.path.exists(engramd.socket), "engramd --reindex to listen")
        with connect(engramd.socket) as engram:
            engram.wait_ready()
            wait_until(lambda: engram.search("unit").total == 3, "the rebuilt index")
    finally:
        assert reindexed.stop() == 0


PAGE = 4096


def indexed_then_stopped(engramd: DaemonProcess, units: int) -> tuple[Path, bytearray]:
    """*units* written and indexed, engramd stopped: its search.db and the file's bytes."""
    write_units(engramd, units)
    with connect(engramd.socket) as engram:
        wait_until(lambda: engram.status().journal.indexed_seq  # type: ignore[union-attr]
                   == engram.status().journal.last_seq, "indexing")  # type: ignore[union-attr]
    assert engramd.stop() == 0
    search = Path(engramd.env["ENGRAM_DATA_DIR"], "search.db")
    return search, bytearray(search.read_bytes())


def test_a_search_index_damaged_inside_is_an_error_naming_reindex(
        engramd: DaemonProcess) -> None:
    search, data = indexed_then_stopped(engramd, 200)
    middle = len(data) // 2 // PAGE * PAGE
    data[middle:] = b"\xa5" * (len(data) - middle)  # the later pages
    search.write_bytes(bytes(data))
    damaged = DaemonProcess(start_engramd(engramd.env), engramd.socket, engramd.env)
    try:
        with connect(damaged.socket) as engram:
            with pytest.raises(Damaged) as raised:
                engram.search("unit")
            assert str(search) in str(raised.value) and "reindex" in str(raised.value)
            engram.create_unit("ctx", "MESSAGE", "one more")
            assert engram.ping()
    finally:
        assert damaged.stop() == 0


def test_a_search_index_damaged_where_no_search_reads_is_found_at_the_start(
        engramd: DaemonProcess) -> None:
    """Two pages in the middle of search.db overwritten (a search may never read them):
    the start's read of the whole file finds them, searches say ``damaged`` and the
    indexer pauses, until ``reindex`` rebuilds it."""
    search, data = indexed_then_stopped(engramd, 400)
    middle = len(data) // 2 // PAGE * PAGE
    data[middle:middle + 2 * PAGE] = b"\xa5" * (2 * PAGE)
    search.write_bytes(bytes(data))
    damaged = DaemonProcess(start_engramd(engramd.env), engramd.socket, engramd.env)
    try:
        with connect(damaged.socket) as engram:
            def paused() -> str:
                return engram.status().journal.index_paused or ""  # type: ignore[union-attr]

            wait_until(lambda: "damaged" in paused(), "the read of the index file")
            assert str(search) in paused() and "reindex" in paused()
            with pytest.raises(Damaged, match="reindex"):
                engram.search("unit")
            doctor = run_cli(damaged.env, "doctor", "--json")
            checks = {json.loads(line)["check"]: json.loads(line)
                      for line in doctor.stdout.splitlines()}
            assert checks["search index"]["status"] == "warn"
            assert checks["search index"]["fix"] == "engram daemon reindex"
            engram.reindex()
            wait_until(lambda: engram.search("unit").total == 400, "the rebuilt index")
            assert paused() == ""
    finally:
        assert damaged.stop() == 0
    assert "search index" in engramd_log(engramd.env).read_text()


def test_the_command_line_tells_the_damage_and_its_fix(engramd: DaemonProcess) -> None:
    write_units(engramd)
    sound = run_cli(engramd.env, "verify")
    assert sound.returncode == 0 and sound.stdout.rstrip().endswith("intact"), sound
    damaged, table = restart_damaged(engramd, ENGRAM_STORE_VERIFY_ON_START="false")
    try:
        listed = run_cli(damaged.env, "unit", "list", "-c", "ctx", "-n", str(UNITS))
        assert listed.returncode == 74 and listed.stdout == ""  # no short answer
        (line,) = listed.stderr.splitlines()
        assert str(table) in line and "engramd --rebuild-store" in line
        walked = run_cli(damaged.env, "verify")
        assert walked.returncode == 74, walked
        assert f"damaged: {table}" in walked.stdout
        assert walked.stdout.rstrip().endswith("the journal is damaged")
        doctor = run_cli(damaged.env, "doctor", "--deep")
        assert doctor.returncode == 1
        rows = {line.split()[1]: line for line in doctor.stdout.splitlines()}
        assert rows["journal"].startswith("fail") and str(table) in rows["journal"]
        assert "store walk" in doctor.stdout
    finally:
        damaged.stop()
