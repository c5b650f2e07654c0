"""Damage reported and repaired, byte by byte: what a torn tail's cut notes and sets aside,
and what ``engramd --repair`` keeps, drops and writes aside (engramd.wal.salvage)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engramd.wal import cuts
from engramd.wal.log import Corruption, WriteAheadLog, segment_name
from engramd.wal.record import HEADER, MIN_EVENT_BYTES, Entry, decode_header, encode_record
from engramd.wal.salvage import apply_salvage, plan_salvage
from tests.daemon.test_wal import entry, open_log, write


def offsets(directory: Path) -> list[int]:
    """Where each record of the single segment starts."""
    (path,) = sorted(directory.glob("*.wal"))
    data = path.read_bytes()
    found, offset = [], HEADER.size
    while offset < len(data):
        found.append(offset)
        offset += 8 + int.from_bytes(data[offset:offset + 4], "big")
    return found


def damage(path: Path, offset: int, mask: int = 0x40) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def replayed_seqs(directory: Path, checkpoint: int = 0) -> list[int]:
    wal, replayed, _ = open_log(directory, checkpoint)
    wal.close()
    return [event.seq for item in replayed for event in item.events]


def repair(directory: Path, store_seq: int = 0) -> list[cuts.Cut | object]:
    plan = plan_salvage(str(directory), store_seq)
    apply_salvage(plan)
    return list(plan.drops)


def segment(directory: Path, first_seq: int = 1) -> Path:
    return directory / segment_name(first_seq)


# -- repair: keep every intact record ------------------------------------------------------


def test_repair_keeps_every_intact_record_after_a_damaged_one(tmp_path: Path) -> None:
    written = write(tmp_path, 40)
    starts = offsets(tmp_path)
    whole = segment(tmp_path).read_bytes()
    flipped = whole.index(b"payload 9", starts[9]) + 2
    damage(segment(tmp_path), flipped)  # inside seq 10's payload: the record still decodes
    with pytest.raises(Corruption):
        open_log(tmp_path)
    plan = plan_salvage(str(tmp_path), 0)
    (drop,) = plan.drops
    assert (drop.offset, drop.size) == (starts[9], starts[10] - starts[9])
    assert (drop.first_seq, drop.last_seq) == (10, 10)
    assert drop.unit_ids == ["u10"]
    assert plan.kept_after_damage()[1:] == (11, 40)
    apply_salvage(plan)
    assert replayed_seqs(tmp_path) == [seq for seq in range(1, 41) if seq != 10]
    dropped = bytearray(whole[starts[9]:starts[10]])
    dropped[flipped - starts[9]] ^= 0x40
    assert Path(drop.aside).read_bytes() == dropped
    assert drop.aside == str(tmp_path / f"damaged-00000000000000000001-{starts[9]}.bin")
    # The kept records are the very records written: same bytes, same entries.
    _, replayed, _ = open_log(tmp_path)
    assert replayed == written[:9] + written[10:]
    assert plan_salvage(str(tmp_path), 0).drops == []  # a second repair finds nothing


def test_a_damaged_length_is_skipped_to_the_next_record(tmp_path: Path) -> None:
    write(tmp_path, 20)
    starts = offsets(tmp_path)
    damage(segment(tmp_path), starts[4], 0xFF)  # seq 5's length: now implausible
    (drop,) = repair(tmp_path)
    assert "implausible record length" in drop.reason  # type: ignore[attr-defined]
    assert replayed_seqs(tmp_path) == [seq for seq in range(1, 21) if seq != 5]


def test_garbage_between_records_is_dropped_and_nothing_is_lost(tmp_path: Path) -> None:
    write(tmp_path, 10)
    starts = offsets(tmp_path)
    path = segment(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:starts[5]] + os.urandom(50) + data[starts[5]:])
    (drop,) = repair(tmp_path)
    assert drop.size == 50 and drop.first_seq is None  # type: ignore[attr-defined]
    assert replayed_seqs(tmp_path) == list(range(1, 11))


def test_a_repeated_record_is_dropped_with_nothing_lost(tmp_path: Path) -> None:
    write(tmp_path, 3)
    with segment(tmp_path).open("ab") as file:
        file.write(encode_record(entry(3, b"payload 2")))
        file.write(encode_record(entry(4)))
    (drop,) = repair(tmp_path)
    assert drop.repeats  # type: ignore[attr-defined]
    assert replayed_seqs(tmp_path) == [1, 2, 3, 4]


def test_records_missing_on_their_boundaries_are_a_declared_gap(tmp_path: Path) -> None:
    write(tmp_path, 6)
    starts = offsets(tmp_path)
    path = segment(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:starts[2]] + data[starts[4]:])  # seqs 3 and 4 gone whole
    (drop,) = repair(tmp_path)
    assert (drop.size, drop.first_seq, drop.last_seq) == (0, 3, 4)  # type: ignore[attr-defined]
    assert decode_header(segment(tmp_path, 5).read_bytes()).after_gap
    assert replayed_seqs(tmp_path) == [1, 2, 5, 6]


def test_a_damaged_segment_header_keeps_the_records_behind_it(tmp_path: Path) -> None:
    write(tmp_path, 60, segment_bytes=1024)
    paths = sorted(tmp_path.glob("*.wal"))
    assert len(paths) > 3
    second = paths[1]
    first_seq = decode_header(second.read_bytes()).first_seq
    damage(second, 0)  # the magic
    with pytest.raises(Corruption, match="bad magic"):
        open_log(tmp_path, segment_bytes=1024)
    (drop,) = repair(tmp_path)
    assert (drop.offset, drop.size, drop.first_seq) == (0, HEADER.size, None)  # type: ignore[attr-defined]
    assert decode_header(segment(tmp_path, first_seq).read_bytes()).first_seq == first_seq
    assert replayed_seqs(tmp_path) == list(range(1, 61))


def test_a_missing_segment_is_reported_and_the_rest_kept(tmp_path: Path) -> None:
    write(tmp_path, 60, segment_bytes=1024)
    paths = sorted(tmp_path.glob("*.wal"))
    lost_first = decode_header(paths[1].read_bytes()).first_seq
    lost_last = decode_header(paths[2].read_bytes()).first_seq - 1
    paths[1].unlink()
    with pytest.raises(Corruption):
        open_log(tmp_path, segment_bytes=1024)
    (drop,) = repair(tmp_path)
    assert (drop.size, drop.first_seq, drop.last_seq) == (0, lost_first, lost_last)  # type: ignore[attr-defined]
    assert replayed_seqs(tmp_path) == [seq for seq in range(1, 61)
                                       if not lost_first <= seq <= lost_last]


def test_damage_at_the_end_resumes_past_every_seq_it_may_have_held(tmp_path: Path) -> None:
    """Nothing valid after the damage: the log goes on after the most seqs the dropped bytes
    could hold, so no seq a client may have seen (a unit's, a fencing token) comes again."""
    write(tmp_path, 10)
    starts = offsets(tmp_path)
    path = segment(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:starts[8]] + os.urandom(len(data) - starts[8]))
    (drop,) = repair(tmp_path)
    bound = (len(data) - starts[8]) // MIN_EVENT_BYTES
    assert (drop.first_seq, drop.last_seq) == (9, None)  # type: ignore[attr-defined]
    wal, replayed, recovery = open_log(tmp_path)
    assert [item.first_seq for item in replayed] == list(range(1, 9))
    assert recovery.last_seq == 9 + bound - 1
    wal.append(9 + bound, 9 + bound, encode_record(entry(9 + bound)))
    wal.close()
    assert replayed_seqs(tmp_path)[-1] == 9 + bound


def test_a_record_copied_into_a_payload_is_not_taken_for_the_log(tmp_path: Path) -> None:
    """A unit may carry WAL bytes (a WAL file stored as a unit): when its own record is
    damaged, the scan must not resume at the record inside it, whose seq is far ahead."""
    inner = encode_record(entry(5000, b"a stray record"))
    wal = WriteAheadLog(str(tmp_path), segment_bytes=1 << 20, sync=True)
    wal.recover(0, lambda entries: None)
    items = [entry(1), entry(2, b"carrier " + inner + b" trailer"), entry(3)]
    for item in items:
        wal.append(item.first_seq, item.last_seq, encode_record(item))
    wal.close()
    starts = offsets(tmp_path)
    damage(segment(tmp_path), starts[1] + 1)  # seq 2's length: it now runs too far
    (drop,) = repair(tmp_path)
    assert (drop.first_seq, drop.last_seq) == (2, 2)  # type: ignore[attr-defined]
    assert replayed_seqs(tmp_path) == [1, 3]


def test_a_repair_interrupted_after_writing_its_segments_can_run_again(
        tmp_path: Path) -> None:
    write(tmp_path, 12)
    starts = offsets(tmp_path)
    damage(segment(tmp_path), starts[3] + 20)
    damaged = segment(tmp_path).read_bytes()
    repair(tmp_path)
    # As if the repair had died after its new segment, before cutting the old one:
    segment(tmp_path).write_bytes(damaged)
    drops = repair(tmp_path)
    assert any(drop.repeats for drop in drops)  # type: ignore[attr-defined]
    assert replayed_seqs(tmp_path) == [seq for seq in range(1, 13) if seq != 4]


def test_the_store_may_hold_what_the_log_lost(tmp_path: Path) -> None:
    write(tmp_path, 10)
    starts = offsets(tmp_path)
    damage(segment(tmp_path), starts[2] + 20)
    (drop,) = repair(tmp_path, store_seq=5)
    assert (drop.first_seq, drop.last_seq) == (3, 3)  # type: ignore[attr-defined]
    assert replayed_seqs(tmp_path, checkpoint=5) == list(range(6, 11))


# -- a torn tail: cut at start-up, set aside, noted ------------------------------------------


def test_a_bit_flip_in_the_last_record_is_noted_set_aside_and_never_reused(
        tmp_path: Path) -> None:
    write(tmp_path, 5)
    starts = offsets(tmp_path)
    path = segment(tmp_path)
    whole = path.read_bytes()
    flipped = whole.index(b"payload 4", starts[4]) + 2
    damage(path, flipped)  # inside the last record's payload: it still decodes
    ledger = cuts.CutLedger(str(tmp_path))
    wal = WriteAheadLog(str(tmp_path), segment_bytes=1 << 20, sync=True)
    recovery = wal.recover(0, lambda entries: None, cuts=ledger)
    cut = recovery.cut
    assert cut is not None
    assert (cut.offset, cut.bytes, cut.seq, cut.last_seq) == (
        starts[4], len(whole) - starts[4], 5, 5)
    assert cut.unit_ids == ["u5"] and cut.reason == "checksum mismatch"
    assert cut.acknowledged == cuts.POSSIBLY
    assert "the last" in cut.summary and str(starts[4]) in cut.summary
    kept = bytearray(whole[starts[4]:])
    kept[flipped - starts[4]] ^= 0x40
    assert Path(cut.saved).read_bytes() == kept
    # Seq 5 may have been acknowledged: the next write gets 6, never 5 again.
    assert recovery.last_seq == 5
    wal.append(6, 6, encode_record(entry(6)))
    wal.close()
    assert replayed_seqs(tmp_path) == [1, 2, 3, 4, 6]
    assert [known.id for known in cuts.CutLedger(str(tmp_path)).cuts] == [cut.id]


def test_a_write_cut_short_is_noted_as_unlikely_to_have_been_acknowledged(
        tmp_path: Path) -> None:
    write(tmp_path, 3)
    path = segment(tmp_path)
    path.write_bytes(path.read_bytes()[:-5])
    ledger = cuts.CutLedger(str(tmp_path))
    wal = WriteAheadLog(str(tmp_path), segment_bytes=1 << 20, sync=True)
    recovery = wal.recover(0, lambda entries: None, cuts=ledger)
    assert recovery.cut is not None and recovery.cut.acknowledged == cuts.UNLIKELY
    assert recovery.last_seq == 2  # nobody was told of seq 3: it is written next
    wal.close()


def test_a_cut_the_store_had_applied_was_acknowledged(tmp_path: Path) -> None:
    write(tmp_path, 4)
    path = segment(tmp_path)
    damage(path, path.stat().st_size - 3)
    _, _, recovery = open_log(tmp_path, checkpoint=4)
    assert recovery.cut is not None and recovery.cut.acknowledged == cuts.YES


def test_a_cut_is_noted_once_and_kept_until_acknowledged(tmp_path: Path) -> None:
    write(tmp_path, 3)
    path = segment(tmp_path)
    damaged_log = path.read_bytes()[:-5]
    path.write_bytes(damaged_log)
    for _ in range(2):
        # The second time as after a crash between the note and the cut: the same cut is
        # made again, and noted and set aside once.
        path.write_bytes(damaged_log)
        wal = WriteAheadLog(str(tmp_path), segment_bytes=1 << 20, sync=True)
        wal.recover(0, lambda entries: None, cuts=cuts.CutLedger(str(tmp_path)))
        wal.close()
    again = cuts.CutLedger(str(tmp_path))
    assert len(again.cuts) == 1
    assert len(list(tmp_path.glob("damaged-*.bin"))) == 1
    (cut,) = again.cuts
    assert again.acknowledge(["nope"]) == []
    assert again.acknowledge([cut.id]) == [cut]
    assert cuts.CutLedger(str(tmp_path)).cuts == []
    assert not (tmp_path / cuts.LEDGER).exists()


def test_an_unreadable_ledger_is_moved_aside_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / cuts.LEDGER).write_text("{not json")
    ledger = cuts.CutLedger(str(tmp_path))
    assert ledger.cuts == []
    (aside,) = tmp_path.glob(f"{cuts.LEDGER}.unreadable-*")
    assert aside.read_text() == "{not json"


def test_entries_after_a_repair_gap_replay(tmp_path: Path) -> None:
    """Recovery accepts the jump in seqs before a segment a repair marked so, and only
    then."""
    write(tmp_path, 3)
    header = HEADER.pack(b"ENGRAMWL", 1, 0, 10, b"\x00" * 8)
    later: list[Entry] = [entry(10), entry(11)]
    segment(tmp_path, 10).write_bytes(header + b"".join(encode_record(e) for e in later))
    with pytest.raises(Corruption, match="expected 4"):
        open_log(tmp_path)
    segment(tmp_path, 10).write_bytes(HEADER.pack(b"ENGRAMWL", 1, 1, 10, b"\x00" * 8)
                                      + b"".join(encode_record(e) for e in later))
    assert replayed_seqs(tmp_path) == [1, 2, 3, 10, 11]


def test_seqs_missing_before_an_empty_last_segment_are_never_given_again(
        tmp_path: Path) -> None:
    write(tmp_path, 60, segment_bytes=1024)
    paths = sorted(tmp_path.glob("*.wal"))
    last_first = decode_header(paths[-1].read_bytes()).first_seq
    (tmp_path / segment_name(61)).write_bytes(HEADER.pack(b"ENGRAMWL", 1, 0, 61, b"\0" * 8))
    paths[-1].unlink()  # the records before the empty segment: gone
    (drop,) = repair(tmp_path)
    assert (drop.first_seq, drop.last_seq) == (last_first, 60)  # type: ignore[attr-defined]
    assert decode_header(segment(tmp_path, 61).read_bytes()).after_gap
    wal, _, recovery = open_log(tmp_path, segment_bytes=1024)
    wal.close()
    assert recovery.last_seq == 60
