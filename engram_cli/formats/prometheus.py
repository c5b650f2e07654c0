"""Pure views of ``DaemonStats``: quantiles from histogram buckets, Prometheus text."""

from __future__ import annotations

import math
import re

from engramd.protocol import DaemonStats, HistogramData

PREFIX = "engram_"
_NAME = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?$")


def quantile(histogram: HistogramData, q: float) -> float | None:
    """Estimate the *q* quantile, interpolating inside the bucket (as Prometheus does).

    None without observations; the highest bound when it falls in the +Inf bucket.
    """
    if histogram.count == 0:
        return None
    rank = q * histogram.count
    seen = 0
    lower = 0.0
    for bound, count in zip([*histogram.bounds, math.inf], histogram.counts, strict=True):
        if count and seen + count >= rank:
            if math.isinf(bound):
                return histogram.bounds[-1] if histogram.bounds else None
            return lower + (bound - lower) * (rank - seen) / count
        seen += count
        lower = bound
    return histogram.bounds[-1] if histogram.bounds else None


def _split(name: str) -> tuple[str, str]:
    """``'a_total{x="y"}'`` -> ``('a_total', 'x="y"')``."""
    match = _NAME.match(name)
    if match is None:
        raise ValueError(f"not a metric name: {name!r}")
    return match.group(1), (match.group(2) or "{}")[1:-1]


def _labels(*parts: str) -> str:
    joined = ",".join(part for part in parts if part)
    return "{" + joined + "}" if joined else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def prometheus_text(stats: DaemonStats) -> str:
    """The Prometheus text exposition format (version 0.0.4), one family per name."""
    lines: list[str] = []
    typed: set[str] = set()

    def family(name: str, kind: str) -> str:
        full = PREFIX + name
        if full not in typed:
            typed.add(full)
            lines.append(f"# TYPE {full} {kind}")
        return full

    for name, value in stats.counters.items():
        base, labels = _split(name)
        lines.append(f"{family(base, 'counter')}{_labels(labels)} {_number(value)}")
    for name, gauge in stats.gauges.items():
        base, labels = _split(name)
        lines.append(f"{family(base, 'gauge')}{_labels(labels)} {_number(gauge)}")
    for name, histogram in stats.histograms.items():
        base, labels = _split(name)
        full = family(base, "histogram")
        cumulative = 0
        for bound, count in zip([*histogram.bounds, math.inf], histogram.counts, strict=True):
            cumulative += count
            le = 'le="' + _number(bound) + '"'
            lines.append(f"{full}_bucket{_labels(labels, le)} {cumulative}")
        lines.append(f"{full}_sum{_labels(labels)} {_number(histogram.sum)}")
        lines.append(f"{full}_count{_labels(labels)} {histogram.count}")
    return "\n".join(lines) + "\n"
