"""Daemon configuration: defaults < TOML file < ``ENGRAM_*`` environment < flags.

Every key is declared once in :data:`SETTINGS` with its type, default, bounds
and help; the loader, ``engramd --print-config``, SPECS.md and ``engramd(8)``
all read that table. The socket path and data dir are not file keys: clients
must find the socket without reading the daemon's config, so both follow the
flag > environment > XDG rules of :mod:`engramd.protocol.address`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from typing import Any

from engramd.protocol import (
    DEFAULT_MAX_FRAME,
    SocketPathTooLong,
    bounds,
    default_config_file,
    resolve_data_dir,
    resolve_socket_path,
)
from engramd.retentionpolicy import MAX_DURATION, Policy, format_duration, parse_policies


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key and why."""


INT_MAXIMUM = 2**63 - 1
"""The largest int setting: what RocksDB, struct and the clock take without overflow."""
FLOAT_MAXIMUM = MAX_DURATION
"""The largest float setting (100 years in seconds): trio's deadlines and the ms and ns
conversions stay finite and within int64 beyond any use."""


@dataclasses.dataclass(frozen=True)
class Setting:
    key: str
    """Dotted name, as in the TOML file (``limits.max_connections``)."""
    kind: type
    default: Any
    help: str
    minimum: float | None = None
    choices: tuple[str, ...] = ()
    maximum: float | None = None
    """None: :data:`INT_MAXIMUM` for an int, :data:`FLOAT_MAXIMUM` for a float."""

    @property
    def env_var(self) -> str:
        return "ENGRAM_" + self.key.upper().replace(".", "_")

    @property
    def attr(self) -> str:
        return self.key.rsplit(".", 1)[-1]

    @property
    def upper_bound(self) -> float:
        if self.maximum is not None:
            return self.maximum
        return INT_MAXIMUM if self.kind is int else FLOAT_MAXIMUM

    def parse_text(self, text: str, where: str) -> Any:
        """Convert a string from the environment or a flag."""
        if self.kind in (int, float) and not text.isascii():
            # int() and float() take any script's digits ("١٢"); a config value is ASCII.
            raise ConfigError(
                f"{where}: {self.key} must be {self.kind.__name__} in ASCII digits, "
                f"got {text!r}")
        try:
            if self.kind is bool:
                lowered = text.strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return self.check(True, where)
                if lowered in ("0", "false", "no", "off"):
                    return self.check(False, where)
                raise ValueError(text)
            return self.check(self.kind(text), where)
        except ValueError:
            raise ConfigError(
                f"{where}: {self.key} must be {self.kind.__name__}, got {text!r}"
            ) from None

    def check(self, value: Any, where: str) -> Any:
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not self.kind:
            raise ConfigError(
                f"{where}: {self.key} must be {self.kind.__name__}, got {value!r}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: {self.key} must be a finite number, got {value}")
        if self.minimum is not None and isinstance(value, int | float) and value < self.minimum:
            raise ConfigError(f"{where}: {self.key} must be at least {self.minimum}, got {value}")
        bound = self.upper_bound
        if isinstance(value, int | float) and not isinstance(value, bool) and value > bound:
            shown = bound if isinstance(bound, int) else f"{bound:.0f}"
            raise ConfigError(f"{where}: {self.key} must be at most {shown}, got {value}")
        if self.choices and value not in self.choices:
            raise ConfigError(
                f"{where}: {self.key} must be one of {', '.join(self.choices)}, got {value!r}"
            )
        return value


SETTINGS: tuple[Setting, ...] = (
    Setting("log_level", str, "info", "Daemon log verbosity.",
            choices=("debug", "info", "warning", "error")),
    Setting("shutdown_grace", float, 5.0,
            "Seconds that in-flight requests get to finish on shutdown.", minimum=0),
    Setting("durability", str, "fsync",
            "fsync: a write is acknowledged only after fdatasync covered it; none: after "
            "it reached the operating system (survives a crash of engramd, not of the "
            "machine).", choices=("fsync", "none")),
    Setting("wal.batch_size", int, 64,
            "Most commits written together with one fsync.", minimum=1),
    Setting("wal.window_ms", float, 2.0,
            "Under load, milliseconds a batch may wait for as many requests as the last "
            "one held; a lone write never waits.",
            minimum=0),
    Setting("wal.segment_bytes", int, 16 * 1024 * 1024,
            "WAL segment size at which a new segment file starts.", minimum=4096),
    Setting("wal.checkpoint_bytes", int, 8 * 1024 * 1024,
            "WAL bytes written between store flushes; older segments are then removed.",
            minimum=4096),
    Setting("limits.max_payload_bytes", int, bounds.DEFAULT_MAX_PAYLOAD_BYTES,
            "Largest unit payload.", minimum=0),
    Setting("limits.max_batch_units", int, bounds.DEFAULT_MAX_BATCH_UNITS,
            "Most units in one create request.", minimum=1),
    Setting("limits.max_meta_entries", int, bounds.DEFAULT_MAX_META_ENTRIES,
            "Most metadata entries on a unit or context.", minimum=0),
    Setting("limits.max_meta_key_bytes", int, bounds.DEFAULT_MAX_META_KEY_BYTES,
            "Longest metadata key.", minimum=1),
    Setting("limits.max_meta_value_bytes", int, bounds.DEFAULT_MAX_META_VALUE_BYTES,
            "Longest metadata value.", minimum=0),
    Setting("limits.max_relationships", int, bounds.DEFAULT_MAX_RELATIONSHIPS,
            "Most relationships on one unit.", minimum=0),
    Setting("stream.heartbeat_seconds", float, 5.0,
            "Seconds between heartbeats on an idle subscription.", minimum=0.01),
    Setting("stream.dead_after_seconds", float, 30.0,
            "A connection whose replies or pushes stay unread this long is dropped.",
            minimum=0.1),
    Setting("stream.buffer_events", int, 1024,
            "Events buffered per live subscriber before it is moved back to reading "
            "from the store.", minimum=1),
    Setting("stream.max_lag_events", int, 100_000,
            "A subscriber that fell back this far behind the head gets a lagged notice "
            "and its subscription ends.", minimum=1),
    Setting("locks.default_ttl", float, bounds.DEFAULT_TTL,
            "Seconds a lease lasts when the request gives no ttl.", minimum=bounds.MIN_TTL),
    Setting("locks.max_ttl", float, bounds.DEFAULT_MAX_TTL,
            "Longest ttl a lease may ask for.", minimum=bounds.MIN_TTL),
    Setting("limits.max_leases_per_agent", int, 100,
            "Leases one agent may hold at once.", minimum=1),
    Setting("limits.max_waiters_per_resource", int, 1000,
            "Requests that may wait in line for one resource.", minimum=1),
    Setting("limits.max_subscriptions_per_connection", int, 64,
            "Subscriptions one connection may hold.", minimum=1),
    Setting("limits.max_frame_bytes", int, DEFAULT_MAX_FRAME,
            "Largest frame accepted, checked from the length prefix.", minimum=1024),
    Setting("limits.max_connections", int, 256,
            "Connections served at once; more are refused with unavailable.", minimum=1),
    Setting("limits.connection_reserve", int, 16,
            "The last connections of max_connections, kept for processes that hold none "
            "yet (a command, a lock run keeper, doctor): one process never takes them all.",
            minimum=0),
    Setting("limits.max_inflight_per_connection", int, 64,
            "Requests of one connection processed at once; the daemon stops "
            "reading that connection until one finishes.", minimum=1),
    Setting("limits.handshake_timeout", float, 10.0,
            "Seconds a new connection has to complete its hello.", minimum=0.1),
    Setting("limits.frame_timeout", float, 10.0,
            "Seconds a frame may take to arrive once its first byte has; a peer that "
            "stops mid-frame is dropped.", minimum=0.1),
    Setting("limits.rate_per_second", float, 0.0,
            "Requests per second one connection may send on average (a token bucket); "
            "over it, requests are answered at once with rate_limited. 0 turns it off.",
            minimum=0),
    Setting("limits.rate_burst", int, 200,
            "Requests one connection may send at once before the rate applies.", minimum=1),
    Setting("auth.require_tokens", bool, False,
            "Connections must present an agent token (engram agent token create); the "
            "connection then acts as the token's agent only.",),
    Setting("search.semantic", str, "auto",
            "Semantic search: auto (on when the engram-journal[semantic] extra is installed) or "
            "off.", choices=("auto", "off")),
    Setting("search.embedding", str, "wordllama",
            "The embedding model of semantic search (with the engram-journal[semantic] extra): "
            "wordllama (bundled), or package.module:factory for a local model; a change "
            "rebuilds the vector index."),
    Setting("search.indexer", str, "process",
            "Where the search indexes are fed and read: process (a Python process of their "
            "own, so indexing and embedding take no turn of the daemon's interpreter lock) "
            "or thread (in engramd itself: one interpreter less in memory).",
            choices=("process", "thread")),
    Setting("search.exact_rows", int, 10_000,
            "Semantic search is exact (every vector scored) below this many units, and for "
            "filters that allow this few; above, an approximate index (HNSW) answers.",
            minimum=0),
    Setting("store.verify_on_start", bool, True,
            "Read the whole store and search index once after each start, in the background, "
            "so that damage is reported at once (status, log) rather than when a read meets "
            "it."),
    Setting("store.block_cache_bytes", int, 64 * 1024 * 1024,
            "RocksDB's block cache (LRU): the store's data blocks read lately, and its "
            "index and filter blocks, which would otherwise stay in memory for every table "
            "file, so grow with the store.", minimum=1024 * 1024),
    Setting("store.write_buffer_bytes", int, 64 * 1024 * 1024,
            "Size of one RocksDB memtable: writes applied to the store since its last flush "
            "(a full one is flushed to a table file).", minimum=1024 * 1024),
    Setting("store.write_buffers", int, 2,
            "Most memtables at once (one being written, the others being flushed): the "
            "store's write memory is at most write_buffer_bytes times this.", minimum=2,
            maximum=64),
    Setting("cache.recent_units", int, 128,
            "Newest units kept in memory per context read lately: a unit.list of the newest "
            "N, N below this, is answered from memory.", minimum=2),
    Setting("cache.recent_contexts", int, 256,
            "Contexts whose newest units are kept in memory (the least recently read goes "
            "first).", minimum=1),
    Setting("cache.recent_bytes", int, 64 * 1024 * 1024,
            "Most stored bytes of the recent units kept in memory, all contexts together "
            "(the least recently read context goes first).", minimum=0),
    Setting("cache.contexts", int, 4096,
            "Context records kept decoded for the write path (the least recently used goes "
            "first).", minimum=1),
    Setting("disk.sample_seconds", float, 60.0,
            "Seconds between measures of the journal's bytes on disk, from which its growth "
            "rate is estimated (engram stats, doctor).", minimum=0.01),
    Setting("disk.growth_window", float, 3600.0,
            "Seconds of measures the growth rate is estimated over: doctor warns when the "
            "disk would fill at that rate.", minimum=1),
    Setting("search.reserve_bytes", int, 64 * 1024 * 1024,
            "The search indexer writes only while more than this is free on the data dir's "
            "disk, and catches up once there is: the journal comes first.", minimum=0),
    Setting("retention.interval", float, 3600.0,
            "Seconds between two runs of the retention policies ([[retention.policy]]); "
            "'engram gc' runs them at once.", minimum=1),
    Setting("retention.archive_dir", str, "",
            "Where retention writes the archives of the units it removes (an absolute "
            "path); empty: <data dir>/archive."),
    Setting("cluster.servers", str, "",
            "Cluster mode: NATS server URLs, comma-separated (nats://host:4222,...). Empty: "
            "one machine, the local WAL. Set: the journal is a JetStream stream shared by "
            "every engramd of the deployment (needs the engram-journal[cluster] extra)."),
    Setting("cluster.deployment", str, "engram",
            "Cluster mode: the deployment's name (lowercase); its stream is ENGRAM_<NAME>."),
    Setting("cluster.replicas", int, 3,
            "Cluster mode: replicas of the journal stream when engramd creates it (3 for "
            "a 3-node cluster; 1 only for a single NATS server).", minimum=1),
    Setting("cluster.credentials", str, "",
            "Cluster mode: a NATS .creds file, or a user nkey seed file (needs nkeys)."),
    Setting("cluster.tls_ca", str, "",
            "Cluster mode: CA certificates to verify the NATS servers (PEM)."),
    Setting("cluster.tls_cert", str, "",
            "Cluster mode: this machine's client certificate (PEM), for servers that "
            "verify clients."),
    Setting("cluster.tls_key", str, "",
            "Cluster mode: the client certificate's key (PEM)."),
    Setting("cluster.write_timeout", float, 5.0,
            "Cluster mode: seconds a write may wait for JetStream's acknowledgement "
            "before it is answered unavailable.", minimum=0.1),
)
_BY_KEY = {setting.key: setting for setting in SETTINGS}
POLICIES_KEY = "retention.policy"
"""The retention policies: an array of tables, in the config file only (SPECS §3.7)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DaemonConfig:
    socket: str
    data_dir: str
    config_file: str | None
    log_file: str | None = None
    reindex: bool = False
    """``engramd --reindex``: rebuild the search index from the store at start."""
    log_level: str = "info"
    shutdown_grace: float = 5.0
    durability: str = "fsync"
    batch_size: int = 64
    window_ms: float = 2.0
    segment_bytes: int = 16 * 1024 * 1024
    checkpoint_bytes: int = 8 * 1024 * 1024
    max_payload_bytes: int = bounds.DEFAULT_MAX_PAYLOAD_BYTES
    max_batch_units: int = bounds.DEFAULT_MAX_BATCH_UNITS
    max_meta_entries: int = bounds.DEFAULT_MAX_META_ENTRIES
    max_meta_key_bytes: int = bounds.DEFAULT_MAX_META_KEY_BYTES
    max_meta_value_bytes: int = bounds.DEFAULT_MAX_META_VALUE_BYTES
    max_relationships: int = bounds.DEFAULT_MAX_RELATIONSHIPS
    heartbeat_seconds: float = 5.0
    dead_after_seconds: float = 30.0
    buffer_events: int = 1024
    max_lag_events: int = 100_000
    default_ttl: float = bounds.DEFAULT_TTL
    max_ttl: float = bounds.DEFAULT_MAX_TTL
    max_leases_per_agent: int = 100
    max_waiters_per_resource: int = 1000
    max_subscriptions_per_connection: int = 64
    max_frame_bytes: int = DEFAULT_MAX_FRAME
    max_connections: int = 256
    connection_reserve: int = 16
    max_inflight_per_connection: int = 64
    handshake_timeout: float = 10.0
    frame_timeout: float = 10.0
    rate_per_second: float = 0.0
    rate_burst: int = 200
    require_tokens: bool = False
    semantic: str = "auto"
    embedding: str = "wordllama"
    indexer: str = "process"
    exact_rows: int = 10_000
    reserve_bytes: int = 64 * 1024 * 1024
    block_cache_bytes: int = 64 * 1024 * 1024
    write_buffer_bytes: int = 64 * 1024 * 1024
    write_buffers: int = 2
    recent_units: int = 128
    recent_contexts: int = 256
    recent_bytes: int = 64 * 1024 * 1024
    contexts: int = 4096
    sample_seconds: float = 60.0
    growth_window: float = 3600.0
    verify_on_start: bool = True
    servers: str = ""
    deployment: str = "engram"
    replicas: int = 3
    credentials: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    write_timeout: float = 5.0
    interval: float = 3600.0
    archive_dir: str = ""
    policies: tuple[Policy, ...] = ()
    """The retention policies, in the file's order (:mod:`engramd.retentionpolicy`)."""
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False)
    """Where each value came from: ``default``, ``file``, ``env:NAME`` or ``flag``."""

    @property
    def archive_path(self) -> str:
        """Where retention writes its archives."""
        return self.archive_dir or os.path.join(self.data_dir, "archive")

    @property
    def archive_on_disk(self) -> str:
        """The archive as a part on disk to measure: :attr:`archive_path` once
        retention may write there (a policy, or a folder named), else ``""``."""
        return self.archive_path if self.policies or self.archive_dir else ""

    @property
    def cluster_servers(self) -> list[str]:
        """The NATS servers of cluster mode; empty on one machine."""
        return [server.strip() for server in self.servers.split(",") if server.strip()]

    def describe(self) -> list[tuple[str, Any, str]]:
        """``(key, value, source)`` rows for ``--print-config``."""
        rows: list[tuple[str, Any, str]] = [
            ("socket", self.socket, self.sources.get("socket", "default")),
            ("data_dir", self.data_dir, self.sources.get("data_dir", "default")),
            ("config_file", self.config_file, self.sources.get("config_file", "default")),
        ]
        for setting in SETTINGS:
            rows.append(
                (setting.key, getattr(self, setting.attr),
                 self.sources.get(setting.key, "default"))
            )
        rows.append((POLICIES_KEY, "; ".join(_described(policy) for policy in self.policies)
                     or "(none)", self.sources.get(POLICIES_KEY, "default")))
        return rows


def _described(policy: Policy) -> str:
    limits = [f"max_age={format_duration(policy.max_age)}" if policy.max_age is not None
              else "",
              f"max_units={policy.max_units}" if policy.max_units is not None else ""]
    return f"{policy.context} " + " ".join(limit for limit in limits if limit)


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and key not in _BY_KEY:
            flat.update(_flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


def read_config_file(path: str) -> dict[str, Any]:
    """Parse and check a TOML config file; unknown keys are errors."""
    try:
        with open(path, "rb") as file:
            table = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in _flatten(table).items():
        if key == POLICIES_KEY:
            try:
                values[key] = parse_policies(value)
            except ValueError as exc:
                raise ConfigError(f"{path}: {exc}") from None
            continue
        setting = _BY_KEY.get(key)
        if setting is None:
            hint = " (set it with --socket/--data-dir or the environment)" if key in (
                "socket", "data_dir") else ""
            raise ConfigError(f"{path}: unknown key {key!r}{hint}")
        values[key] = setting.check(value, path)
    archive_dir = values.get("retention.archive_dir", "")
    if archive_dir and not os.path.isabs(archive_dir):
        raise ConfigError(f"{path}: retention.archive_dir must be an absolute path, got "
                          f"{archive_dir!r}")
    return values


def load_config(
    *,
    env: Mapping[str, str],
    uid: int,
    socket: str | None = None,
    data_dir: str | None = None,
    config_file: str | None = None,
    overrides: Mapping[str, str] | None = None,
    log_file: str | None = None,
) -> DaemonConfig:
    """Build the effective configuration.

    Args:
        env: the process environment.
        socket, data_dir, config_file: values given as flags, if any.
        overrides: ``--set KEY=VALUE`` flags.

    Raises:
        ConfigError: a bad file, an unknown key or a bad value.
    """
    sources: dict[str, str] = {}
    values: dict[str, Any] = {}

    explicit_file = config_file is not None
    path = config_file or default_config_file(env)
    if explicit_file or os.path.exists(path):
        for key, value in read_config_file(path).items():
            values[key] = value
            sources[key] = "file"
        sources["config_file"] = "flag" if explicit_file else "default"
        used_file: str | None = path
    else:
        used_file = None

    for setting in SETTINGS:
        text = env.get(setting.env_var)
        if text is not None:
            values[setting.key] = setting.parse_text(text, setting.env_var)
            sources[setting.key] = f"env:{setting.env_var}"

    for key, text in (overrides or {}).items():
        override = _BY_KEY.get(key)
        if override is None:
            hint = " (retention policies are written in the config file only)" if (
                key == POLICIES_KEY) else ""
            raise ConfigError(f"--set: unknown key {key!r}{hint}")
        values[key] = override.parse_text(text, f"--set {key}")
        sources[key] = "flag"
    archive_dir = values.get("retention.archive_dir", "")
    if archive_dir and not os.path.isabs(archive_dir):
        raise ConfigError(f"retention.archive_dir must be an absolute path, got {archive_dir!r}")
    policies = values.pop(POLICIES_KEY, ())

    sources["socket"] = "flag" if socket else (
        "env:ENGRAM_SOCKET" if env.get("ENGRAM_SOCKET") else "default")
    sources["data_dir"] = "flag" if data_dir else (
        "env:ENGRAM_DATA_DIR" if env.get("ENGRAM_DATA_DIR") else "default")
    try:
        socket_path = resolve_socket_path(socket, env, uid)
    except SocketPathTooLong as exc:
        raise ConfigError(str(exc)) from None

    return DaemonConfig(
        socket=socket_path,
        data_dir=resolve_data_dir(data_dir, env),
        config_file=used_file,
        log_file=os.path.abspath(log_file) if log_file else None,
        sources=sources,
        policies=policies,
        **{_BY_KEY[key].attr: value for key, value in values.items()},
    )
