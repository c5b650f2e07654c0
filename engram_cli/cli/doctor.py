"""``engram doctor``: checks that explain what is wrong and how to fix it.

Each check returns one :class:`Finding`; they run in order and a check that
needs the daemon is skipped (not failed) when the first check found none.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from engram_cli import __version__
from engram_cli.client import Client
from engram_cli.client.autostart import last_line
from engram_cli.client.errors import EngramError
from engram_cli.formats.diskview import days_to_full, growth_text, size
from engramd.protocol import PROTOCOL_VERSION, DaemonStatus, log_file_in
from engramd.protocol.logline import parse_line

MIN_FREE_BYTES = 1 << 30
MIN_FREE_FRACTION = 0.05
INDEX_LAG_WARNING = 10_000
CLUSTER_REPLICAS = 3
"""Fewer replicas of the journal stream than this: one NATS server lost can lose writes."""
FILL_WARNING_DAYS = 7.0
FILL_FAILURE_DAYS = 1.0
"""At the journal's growth rate, the data dir's disk fills within this many days: warn,
fail."""
FILL_FIX = ("free some space, archive old units with a retention policy (retention.* keys; "
            "engram gc --dry-run shows what goes), or move the data dir to a bigger disk")
LOG_LINES_READ = 2000
LEASE_WARNING_FRACTION = 0.1
LEASE_WARNING_SECONDS = 1.0
"""A lease with less than a tenth of its ttl or a second left is near expiry."""


@dataclass(frozen=True)
class Finding:
    check: str
    status: str
    """``ok``, ``warn`` or ``fail``."""
    detail: str
    fix: str = ""


def _ok(check: str, detail: str) -> Finding:
    return Finding(check, "ok", detail)


def _private_dir(check: str, path: str) -> Finding:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return _ok(check, f"{path} does not exist yet (engramd creates it 0700)")
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        return Finding(check, "fail", f"{path} is not a directory", f"remove or rename {path}")
    if info.st_uid != os.geteuid():
        return Finding(check, "fail", f"{path} belongs to uid {info.st_uid}",
                       "use a directory of your own (ENGRAM_SOCKET / ENGRAM_DATA_DIR)")
    if info.st_mode & 0o077:
        return Finding(check, "warn", f"{path} is mode {stat.S_IMODE(info.st_mode):04o}",
                       f"chmod 700 {path}")
    return _ok(check, f"{path} is private (0700)")


_FIX = re.compile(r"engramd --(repair|rebuild-store|reindex)")


class Doctor:
    def __init__(self, client: Client, data_dir: str, *, deep: bool = False) -> None:
        self.client = client
        self.data_dir = data_dir
        self.deep = deep
        self.status: DaemonStatus | None = None
        self._gauges: dict[str, float] | None = None

    def run(self) -> Iterator[Finding]:
        checks: list[Callable[[], Finding]] = [
            self.daemon, self.version, self.socket, self.data, self.disk, self.growth,
            self.recovery,
            self.cuts, self.log_errors, self.index, self.vectors, self.cluster, self.leases]
        if self.deep:
            checks.insert(checks.index(self.cuts), self.walk)
        for check in checks:
            yield check()

    def _needs_daemon(self, check: str) -> Finding | None:
        if self.status is None:
            return Finding(check, "skip", "engramd is not running")
        return None

    def daemon(self) -> Finding:
        try:
            self.client.connect()
            self.status = self.client.status()
        except EngramError as exc:
            # A daemon that stopped for damage said what fixes it, last, in its log.
            last = last_line(log_file_in(self.data_dir))
            fix = _FIX.search(last)
            if fix is not None:
                return Finding("daemon", "fail", f"engramd is not running; it stopped "
                               f"saying: {last[:300]}", f"{fix.group(0)} (daemon stopped, "
                               "after a copy of the data dir)")
            return Finding("daemon", "fail", str(exc).split(";")[0],
                           "engram daemon start (or any command)")
        self.data_dir = self.status.data_dir
        return _ok("daemon", f"engramd pid {self.status.pid} answers on {self.status.socket}")

    def version(self) -> Finding:
        if (skipped := self._needs_daemon("version")) is not None:
            return skipped
        assert self.status is not None
        if self.status.protocol_version != PROTOCOL_VERSION:
            return Finding("version", "fail",
                           f"daemon speaks protocol {self.status.protocol_version}, this "
                           f"client {PROTOCOL_VERSION}", "engram daemon restart")
        if self.status.daemon_version != __version__:
            return Finding("version", "warn",
                           f"daemon {self.status.daemon_version}, client {__version__}",
                           "engram daemon restart")
        return _ok("version", f"daemon and client are both {__version__}")

    def socket(self) -> Finding:
        path = self.client.socket_path
        directory = _private_dir("socket", os.path.dirname(path))
        if directory.status != "ok" or not os.path.exists(path):
            return directory
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            return Finding("socket", "warn", f"{path} is mode {mode:04o}", f"chmod 600 {path}")
        return _ok("socket", f"{path} is 0600 in a private directory")

    def data(self) -> Finding:
        found = _private_dir("data dir", self.data_dir)
        if found.status != "ok" or not os.path.isdir(self.data_dir):
            return found
        if not os.access(self.data_dir, os.W_OK):
            return Finding("data dir", "fail", f"{self.data_dir} is not writable",
                           f"chmod u+w {self.data_dir}")
        return _ok("data dir", f"{self.data_dir} is private and writable")

    def disk(self) -> Finding:
        path = self.data_dir if os.path.isdir(self.data_dir) else os.path.dirname(self.data_dir)
        try:
            usage = shutil.disk_usage(path)
        except OSError as exc:
            return Finding("disk", "warn", f"cannot measure {path}: {exc.strerror}")
        free_mib = usage.free / 2**20
        if usage.free < MIN_FREE_BYTES or usage.free < usage.total * MIN_FREE_FRACTION:
            return Finding("disk", "warn", f"{free_mib:,.0f} MiB free under {path}",
                           "free some space: writes are refused when the disk fills")
        return _ok("disk", f"{free_mib:,.0f} MiB free under {path}")

    def growth(self) -> Finding:
        """Whether the data dir's disk fills soon at the journal's growth rate."""
        if (skipped := self._needs_daemon("disk growth")) is not None:
            return skipped
        gauges = self._stats_gauges()
        if "disk_growth_bytes_per_second" not in gauges:
            return Finding("disk growth", "skip", growth_text(gauges))
        detail = (f"{growth_text(gauges)} ({size(gauges.get('disk_free_bytes', 0))} free "
                  f"under {self.data_dir})")
        days = days_to_full(gauges)
        if days is not None and days < FILL_FAILURE_DAYS:
            return Finding("disk growth", "fail", detail, FILL_FIX)
        if days is not None and days < FILL_WARNING_DAYS:
            return Finding("disk growth", "warn", detail, FILL_FIX)
        return _ok("disk growth", detail)

    def _stats_gauges(self) -> dict[str, float]:
        """The daemon's gauges (``engram stats``), asked once."""
        if self._gauges is None:
            self._gauges = self.client.stats().gauges
        return self._gauges

    def recovery(self) -> Finding:
        if (skipped := self._needs_daemon("journal")) is not None:
            return skipped
        assert self.status is not None
        if self.status.state != "ready":
            return Finding("journal", "warn", f"engramd is {self.status.state}",
                           "wait for the replay to finish (engram daemon status)")
        journal = self.status.journal
        if journal is not None and journal.store_damage:
            return Finding("journal", "fail", journal.store_damage,
                           "engram verify, then 'engramd --rebuild-store' with the daemon "
                           "stopped (or 'engram restore' a backup)")
        if journal is not None and journal.read_only:
            return Finding("journal", "fail", journal.write_error or "started read-only",
                           "free some space, then engram daemon restart")
        if journal is not None and journal.write_error:
            cluster = self.status.cluster
            fix = ("free some space: writes resume by themselves" if "disk" in
                   journal.write_error.lower() else
                   "engram daemon restart (engramd's log says why it stalled)"
                   if "not catching up" in journal.write_error else
                   "check the NATS servers (engram cluster status): writes resume by "
                   "themselves once the cluster answers" if cluster is not None
                   and cluster.failure is None else "engram daemon restart")
            return Finding("journal", "fail", journal.write_error, fix)
        seq = journal.last_seq if journal else 0
        return _ok("journal", f"ready, writes accepted, last seq {seq}")

    def walk(self) -> Finding:
        """``--deep``: the whole store walked against the log (``engram verify``)."""
        if (skipped := self._needs_daemon("store walk")) is not None:
            return skipped
        try:
            report = self.client.verify()
        except EngramError as exc:
            return Finding("store walk", "fail", str(exc), "engram verify")
        if report.ok:
            return _ok("store walk", f"{report.keys:,} keys read, {report.units:,} units, "
                       f"the log agrees ({report.seconds:.2f} s)")
        return Finding("store walk", "fail", "; ".join(report.problems)[:300],
                       "engramd --rebuild-store (daemon stopped)" if report.rebuild_complete
                       else "engram restore a backup")

    def cuts(self) -> Finding:
        if (skipped := self._needs_daemon("log tails")) is not None:
            return skipped
        assert self.status is not None
        cuts = self.status.wal_cuts
        if not cuts:
            return _ok("log tails", "nothing was cut from the log at start-up")
        return Finding("log tails", "warn", cuts[-1].summary + (
            f" ({len(cuts)} notes)" if len(cuts) > 1 else ""),
            "read 'engram daemon cuts', then 'engram daemon cuts --acknowledge'")

    def log_errors(self) -> Finding:
        path = self.status.log_file if self.status else log_file_in(self.data_dir)
        if path is None:
            return _ok("log", "engramd logs to its standard error (not checked)")
        try:
            with open(path, "rb") as file:
                lines = file.read().splitlines()[-LOG_LINES_READ:]
        except FileNotFoundError:
            return _ok("log", f"no log at {path}")
        errors = [parse_line(line.decode(errors="replace")) for line in lines]
        errors = [fields for fields in errors if fields.get("level") in ("error", "critical")]
        if errors:
            last = errors[-1]
            return Finding("log", "warn",
                           f"{len(errors)} error line(s) in the log, last at {last.get('ts')}: "
                           f"{last.get('msg', '')[:120]}",
                           "engram daemon logs --level error")
        return _ok("log", f"no errors in the last {len(lines)} lines of {path}")

    def index(self) -> Finding:
        journal = self.status.journal if self.status else None
        if journal is not None and journal.index_paused:
            paused = journal.index_paused
            # (A damaged index's message speaks of a "disk image": not a full disk.)
            fix = ("free some space (it catches up by itself)"
                   if "disk" in paused and "damaged" not in paused else "engram daemon reindex")
            return Finding("search index", "warn", f"paused: {paused}", fix)
        return self._lag("search index", "index_lag_events")

    def vectors(self) -> Finding:
        journal = self.status.journal if self.status else None
        if journal is not None and journal.index_paused and journal.vector_seq is not None:
            # Fed with the search index: its lag is the pause's, said once by that check.
            return Finding("vector index", "skip", "paused with the search index")
        if self._needs_daemon("vector index") is None and (
                "search_semantic_off" in self._stats_gauges()):
            return Finding("vector index", "skip",
                           "semantic search is off (search.semantic = \"off\" in engramd's "
                           "config)")
        return self._lag("vector index", "vector_lag_events", absent=(
            "semantic search is not installed",
            "pip install 'engram-journal[semantic]' for engram search --mode semantic"))

    def _lag(self, check: str, gauge: str, absent: tuple[str, str] | None = None) -> Finding:
        """How far a derived index trails the journal (the daemon's stats, asked once)."""
        if (skipped := self._needs_daemon(check)) is not None:
            return skipped
        gauges = self._stats_gauges()
        if gauge not in gauges and absent is not None:
            return Finding(check, "skip", *absent)
        lag = int(gauges.get(gauge, 0))
        if lag > INDEX_LAG_WARNING:
            return Finding(check, "warn", f"{lag} events behind the journal",
                           "wait, or rebuild with engram daemon reindex")
        return _ok(check, f"{lag} events behind the journal")

    def cluster(self) -> Finding:
        if (skipped := self._needs_daemon("cluster")) is not None:
            return skipped
        assert self.status is not None
        state = self.status.cluster
        if state is None:
            return Finding("cluster", "skip", "one machine (cluster.servers is not set)")
        if state.failure:
            return Finding("cluster", "fail", state.failure,
                           "stop engramd, move its data dir aside, start it: it rebuilds "
                           "its view from the stream")
        if not state.reachable and state.refused:
            return Finding("cluster", "fail", f"the cluster refuses this machine: "
                           f"{state.refused}", "fix the [cluster] settings named, then "
                           "engram daemon restart (engramd goes on trying meanwhile)")
        if not state.reachable:
            return Finding("cluster", "fail",
                           f"the cluster ({', '.join(state.servers)}) is unreachable: writes "
                           "are refused, reads may be stale",
                           "check the NATS servers and engram daemon logs")
        unsafe = []
        if state.replicas < CLUSTER_REPLICAS:
            unsafe.append(f"{state.replicas} replica(s): losing a NATS server can lose "
                          "acknowledged writes")
        if state.storage and state.storage != "file":
            unsafe.append(f"{state.storage} storage: a NATS restart loses the journal")
        if unsafe:
            return Finding("cluster", "warn", f"stream {state.stream}: " + "; ".join(unsafe),
                           f"nats stream edit {state.stream} --replicas 3 (and file storage)")
        lag = state.lag or 0
        if lag > INDEX_LAG_WARNING:
            return Finding("cluster", "warn", f"this machine's view is {lag} messages behind "
                           f"stream {state.stream}", "wait: it is catching up")
        return _ok("cluster", f"stream {state.stream}: {state.replicas} replicas, "
                   f"{state.storage} storage, view {lag} messages behind")

    def leases(self) -> Finding:
        if (skipped := self._needs_daemon("leases")) is not None:
            return skipped
        now = dt.datetime.now(dt.UTC)
        held = [state.lease for state in self.client.list_locks() if state.lease is not None]
        near = []
        for lease in held:
            left = (lease.expires_at - now).total_seconds()
            if left < max(LEASE_WARNING_SECONDS, lease.ttl * LEASE_WARNING_FRACTION):
                near.append(f"{lease.resource} ({lease.holder}, {max(left, 0):.1f}s left)")
        if near:
            return Finding("leases", "warn", "near expiry: " + ", ".join(near[:5]),
                           "their holders should renew (engram lock renew) or release")
        return _ok("leases", f"{len(held)} held, none near expiry")
