"""The journal's parts on disk, as ``engram stats`` shows them and ``doctor`` judges them:
pure views of the daemon's gauges (``disk_bytes{part}``, ``disk_free_bytes``,
``disk_growth_*``, §2.11 of SPECS.md)."""

from __future__ import annotations

from collections.abc import Mapping

PARTS = ("wal", "store", "search", "vectors", "archive")
DAY = 86_400.0


def part_gauge(part: str) -> str:
    return f'disk_bytes{{part="{part}"}}'


def size(value: float) -> str:
    """Bytes as people read them: ``512 B``, ``3.4 KiB``, ``1.2 GiB``."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.0f} B"


def days_to_full(gauges: Mapping[str, float]) -> float | None:
    """Days until the free space is gone at the growth rate; None when the journal is
    not growing or its rate is not known yet."""
    rate = gauges.get("disk_growth_bytes_per_second")
    if rate is None or rate <= 0:
        return None
    return gauges.get("disk_free_bytes", 0) / rate / DAY


def growth_text(gauges: Mapping[str, float]) -> str:
    """The growth rate and what it means, in a phrase."""
    rate = gauges.get("disk_growth_bytes_per_second")
    if rate is None:
        wait = gauges.get("disk_growth_known_in_seconds")
        return ("growth not measured yet (engramd measures its parts every "
                "disk.sample_seconds" + (f": known in about {span(wait)})" if wait else ")"))
    over = f"over the last {span(gauges.get('disk_growth_window_seconds', 0))}"
    days = days_to_full(gauges)
    if days is None:
        return f"not growing {over} ({size(rate * 3600)}/h)"
    return f"grows {size(rate * 3600)}/h {over}: the free space lasts {span(days * DAY)}"


def span(seconds: float) -> str:
    """A length of time in the unit that reads best: ``40 s``, ``25 min``, ``3.5 hours``,
    ``12.0 days``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * DAY:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / DAY:,.1f} days"


def _holds(part: str, gauges: Mapping[str, float]) -> str:
    count = f"{gauges['wal_segments']:.0f} segment(s): " if "wal_segments" in gauges else ""
    keys = f"~{gauges['store_keys']:,.0f} keys: " if "store_keys" in gauges else ""
    unflushed = (f"; {size(gauges['store_memtable_bytes'])} more in memory, in the log "
                 "until the next checkpoint") if "store_memtable_bytes" in gauges else ""
    return {
        "wal": f"{count}the writes since the store's last checkpoint",
        "store": f"{keys}units, contexts, indexes, the event log, leases, tasks{unflushed}",
        "search": "the keyword search index (FTS5), derived",
        "vectors": "the vector index of semantic search, derived",
        "archive": "units archived by retention (retention.archive_dir)",
    }[part]


def disk_rows(gauges: Mapping[str, float], *, human: bool) -> list[list[str]]:
    """``part, bytes, bytes per unit, what it holds`` for each part, then the total and
    the free space (*human*: sizes in KiB/MiB/GiB, else whole bytes)."""
    units = gauges.get("units", 0)

    def shown(value: float) -> str:
        return size(value) if human else f"{value:.0f}"

    def per_unit(value: float) -> str:
        return shown(value / units) if units else "-"

    rows, total = [], 0.0
    for part in PARTS:
        value = gauges.get(part_gauge(part))
        if value is None:
            continue
        total += value
        # (An archive holds units no longer in the journal: per live unit means nothing.)
        rows.append([part, shown(value), "-" if part == "archive" else per_unit(value),
                     _holds(part, gauges)])
    if not rows:
        return rows
    rows.append(["total", shown(total), per_unit(total), f"{units:,.0f} units"])
    rows.append(["free", shown(gauges.get("disk_free_bytes", 0)), "-", growth_text(gauges)])
    return rows
