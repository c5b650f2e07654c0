"""Counters and latency histograms, read by ``engram stats``.

Cheap enough for every request: a counter is a dict entry, an observation a
``bisect`` into fixed bucket bounds. Names follow Prometheus conventions
(``_total`` for counters, ``_seconds`` for durations) and may carry labels in
Prometheus syntax, so the CLI renders the text format without a mapping.
"""

from __future__ import annotations

import bisect
import collections
import os
from dataclasses import dataclass, field

from engramd.protocol import HistogramData

# 50 µs to 10 s, about three buckets per decade: enough to tell an fsync on
# an SSD (~0.1 ms) from one on a busy disk (~10 ms) and a stall (~1 s).
LATENCY_BOUNDS: tuple[float, ...] = (
    0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05,
    0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)


@dataclass
class Histogram:
    bounds: tuple[float, ...] = LATENCY_BOUNDS
    counts: list[int] = field(default_factory=list)
    count: int = 0
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)  # the last bucket is +Inf

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def data(self) -> HistogramData:
        return HistogramData(bounds=list(self.bounds), counts=list(self.counts),
                             count=self.count, sum=round(self.total, 9))


class Metrics:
    """The daemon's counters and histograms; one instance, shared by the components."""

    def __init__(self) -> None:
        self.counters: collections.Counter[str] = collections.Counter()
        self.histograms: dict[str, Histogram] = collections.defaultdict(Histogram)

    def count(self, name: str, amount: int = 1) -> None:
        self.counters[name] += amount

    def observe(self, name: str, seconds: float) -> None:
        self.histograms[name].observe(seconds)


_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    """This process's resident set size, from ``/proc/self/statm``."""
    with open("/proc/self/statm", "rb") as file:
        return int(file.read().split()[1]) * _PAGE
