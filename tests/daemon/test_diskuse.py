"""The journal's parts on disk and their growth rate, on trio's virtual clock: real files
written at known times, measured as engramd measures them."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from engramd.diskuse import MAX_SAMPLES, MIN_SAMPLES, DiskWatch, measure

MIB = 2**20


def grow(path: Path, amount: int) -> None:
    """Append *amount* bytes to *path*, to disk (allocated blocks are what is measured)."""
    with open(path, "ab") as file:
        file.write(os.urandom(amount))
        file.flush()
        os.fsync(file.fileno())


async def inline(fn: Any) -> Any:
    """Measure in the test's own thread: the virtual clock stands still while it runs
    (in a worker thread the autojump clock would move on meanwhile)."""
    return fn()


def test_measure_counts_each_part_of_a_data_dir(tmp_path: Path) -> None:
    for name in ("wal", "store", "vectors"):
        (tmp_path / name).mkdir()
    grow(tmp_path / "wal" / "00000000000000000001.wal", MIB)
    grow(tmp_path / "store" / "000008.sst", 2 * MIB)
    grow(tmp_path / "search.db", MIB // 2)
    grow(tmp_path / "search.db-wal", MIB // 2)
    (tmp_path / "vectors" / "nested").mkdir()
    grow(tmp_path / "vectors" / "nested" / "rows.f32", MIB)
    archive = tmp_path / "archive"
    archive.mkdir()
    grow(archive / "ctx-2026.jsonl.zst", 3 * MIB)
    (archive / "loop").symlink_to(tmp_path)  # never followed

    use = measure(str(tmp_path), "archive")
    for part, expected in {"wal": MIB, "store": 2 * MIB, "search": MIB, "vectors": MIB,
                           "archive": 3 * MIB}.items():
        assert expected <= use.parts[part] < expected + 64 * 1024, part
    assert use.growing == sum(use.parts.values()), "the archive is on the same disk"
    assert use.free > 0
    assert "archive" not in measure(str(tmp_path)).parts


async def test_the_growth_rate_follows_the_trend_over_the_window(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    watch = DiskWatch(functools.partial(measure, str(tmp_path)), interval=60, window=600,
                      run_sync=inline)
    (tmp_path / "store").mkdir()
    async with trio.open_nursery() as nursery:
        await nursery.start(watch.run)  # a sample at 0 s, then one a minute
        await trio.sleep(30)  # (the files grow between two samples)
        for minute in range(MIN_SAMPLES - 1):
            assert watch.growth() is None, "too few samples to speak of a trend"
            grow(tmp_path / "store" / f"{minute:06}.sst", MIB)  # 1 MiB a minute
            await trio.sleep(60)
        growth = watch.growth()
        assert growth is not None and growth.seconds == pytest.approx(240, abs=1)
        assert growth.bytes_per_second == pytest.approx(MIB / 60, rel=0.05)

        # A checkpoint's step down (log segments removed) bends the line, not its sign ...
        for minute in range(10):
            grow(tmp_path / "store" / f"late{minute:06}.sst", MIB)
            if minute == 5:
                for name in ("000000", "000001"):
                    os.unlink(tmp_path / "store" / f"{name}.sst")
            await trio.sleep(60)
        growth = watch.growth()
        assert growth is not None and growth.seconds <= 600, "older samples left the window"
        assert MIB / 60 / 2 < growth.bytes_per_second < MIB / 60 * 1.2

        # ... and a journal that stops growing is seen as such once the window has passed.
        await trio.sleep(700)
        growth = watch.growth()
        assert growth is not None and growth.bytes_per_second == pytest.approx(0, abs=1)
        nursery.cancel_scope.cancel()


async def test_stats_measure_again_only_after_a_second(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    measured: list[float] = []

    def counting() -> Any:
        measured.append(trio.current_time())
        return measure(str(tmp_path))

    watch = DiskWatch(counting, interval=60, window=600, run_sync=inline)
    first = await watch.now()
    grow(tmp_path / "search.db", MIB)
    assert await watch.now() == first and len(measured) == 1
    await trio.sleep(1.5)
    again = await watch.now()
    assert again is not None and again.parts["search"] >= MIB and len(measured) == 2



async def test_a_measure_that_fails_stops_nothing(tmp_path: Path,
                                                  autojump_clock: trio.abc.Clock,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    failing = [False]

    def sometimes() -> Any:
        if failing[0]:
            raise RuntimeError("injected")
        return measure(str(tmp_path))

    watch = DiskWatch(sometimes, interval=60, window=6000, run_sync=inline)
    async with trio.open_nursery() as nursery:
        await nursery.start(watch.run)
        await trio.sleep(30)
        last = await watch.now()
        failing[0] = True
        await trio.sleep(180)  # three measures fail
        assert await watch.now() == last, "the last good measure answers"
        failing[0] = False
        await trio.sleep(60 * MIN_SAMPLES)
        assert watch.growth() is not None, "measuring went on"
        nursery.cancel_scope.cancel()
    assert [r.message for r in caplog.records].count(
        "the journal's size could not be measured: injected") == 1, "said once"


async def test_the_samples_kept_are_bounded_whatever_the_window(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    watch = DiskWatch(functools.partial(measure, str(tmp_path)), interval=1, window=10**9,
                      run_sync=inline)
    async with trio.open_nursery() as nursery:
        await nursery.start(watch.run)
        await trio.sleep(MAX_SAMPLES * 3)
        growth = watch.growth()
        assert growth is not None and growth.seconds == MAX_SAMPLES - 1
        nursery.cancel_scope.cancel()
