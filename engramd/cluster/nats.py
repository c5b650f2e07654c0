"""What engramd asks of NATS JetStream, on nats-py's asyncio loop (see :mod:`.bridge`).

The deployment's journal is one stream, ``ENGRAM_<DEPLOYMENT>``, on the subject
``engram.<deployment>.journal``: one message per group-commit batch, its body the
batch's :class:`~engramd.wal.record.Entry` exactly as the WAL would hold it. The
machines that are up announce themselves in a key-value bucket
(``engram_<deployment>_machines``) whose keys expire, so ``engram cluster status``
can list who was seen recently.
"""

from __future__ import annotations

import logging
import re
import ssl
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from engramd.protocol import ClusterPeer

log = logging.getLogger("engramd.cluster")

FENCES = "Engram-Fences"
PENDING_MESSAGES = 4096
"""Messages the view's subscription holds before nats-py drops more (a replay is pushed
faster than it is applied): a drop costs a new subscription (:meth:`NatsLink.follow`),
not a message."""
"""The header of a journal message's fence marks (:mod:`.fences`)."""

WRONG_LAST_SEQUENCE = 10071
"""JetStream's error code for ``Nats-Expected-Last-Sequence`` not holding."""


@dataclass(frozen=True)
class ClusterSettings:
    servers: list[str]
    deployment: str
    """1-64 of letters, digits, - and _ (checked when the journal opens): as it is, a
    token of NATS subjects and a part of stream and bucket names."""
    replicas: int
    credentials: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    timeout: float = 5.0

    @property
    def stream(self) -> str:
        return "ENGRAM_" + self.deployment.upper()

    @property
    def subject(self) -> str:
        return f"engram.{self.deployment}.journal"

    @property
    def machines_bucket(self) -> str:
        return f"engram_{self.deployment}_machines"


class StreamMovedOn(Exception):
    """The stream holds messages after the one the publisher expected to follow."""

    def __init__(self, last: int | None) -> None:
        super().__init__(f"wrong last sequence: {last}")
        self.last = last


@dataclass(frozen=True)
class StreamFacts:
    last_seq: int
    replicas: int
    storage: str
    leader: str
    peers: list[ClusterPeer]
    """Each replica but the leader."""
    created: str = ""
    """When the stream was made (the servers' timestamp): another one under the same name
    is another journal."""


class NatsLink:
    """The connection to the cluster and the stream, the view's subscription and the
    machines bucket. Every method runs on the asyncio loop."""

    def __init__(self, settings: ClusterSettings, name: str) -> None:
        self.settings = settings
        self.name = name
        self.nc: Any = None
        self.js: Any = None
        self.view: Any = None
        self.delivered = 0
        """The stream sequence of the last message the view's subscription gave."""
        self.resumed = True
        """Whether the subscription has given nothing yet (it may skip deleted messages)."""
        self.lost = False
        """Whether the subscription dropped a message: the view must follow again."""
        self.machines: Any = None
        self.refused = ""
        """Why the servers refused this machine's last attempt to connect (TLS, its
        credentials), or empty: cleared once a connection is made. nats-py goes on
        trying (a server's configuration may be fixed); this says why it fails."""

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def connect(self) -> None:
        settings = self.settings
        options: dict[str, Any] = {}
        if settings.credentials:
            options[credentials_option(settings.credentials)] = settings.credentials
        context = tls_context(settings)
        if context is not None:
            options["tls"] = context
        self.nc = await nats.connect(
            servers=settings.servers, name=self.name, connect_timeout=2,
            allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
            error_cb=self._trouble, disconnected_cb=_none, reconnected_cb=self._accepted,
            closed_cb=_none, **options)
        await self._accepted()
        self.js = self.nc.jetstream(timeout=settings.timeout)

    async def _trouble(self, exc: Exception) -> None:
        """nats-py reports connection trouble here; engramd sees it as not connected,
        and keeps (and logs once) a refusal's reason."""
        why = refusal(exc)
        if why and why != self.refused:
            log.warning("cluster: the cluster refuses this machine: %s", why)
        if why:
            self.refused = why

    async def _accepted(self) -> None:
        if self.refused:
            log.info("cluster: the servers accept this machine again")
        self.refused = ""

    async def close(self) -> None:
        if self.nc is not None:
            nc, self.nc = self.nc, None
            await nc.close()

    async def ensure_stream(self) -> StreamFacts:
        """Create the stream if it is not there; what it is."""
        settings = self.settings
        try:
            info = await self.js.stream_info(settings.stream)
        except nats.js.errors.NotFoundError:
            info = await self.js.add_stream(api.StreamConfig(
                name=settings.stream, subjects=[settings.subject],
                description="engram journal", storage=api.StorageType.FILE,
                num_replicas=settings.replicas, retention=api.RetentionPolicy.LIMITS,
                duplicate_window=120.0, allow_direct=True))
        return _facts(info)

    async def stream_facts(self) -> StreamFacts:
        return _facts(await self.js.stream_info(self.settings.stream))

    async def publish(self, body: bytes, msg_id: str, after: int, fenced: str = "") -> int:
        """Append *body* if the stream's last message is *after*, with the fence marks
        *fenced* (a header value: :mod:`.fences`) if any; its stream sequence.

        A retry with the same *msg_id* is answered with the first one's sequence
        (JetStream's de-duplication), so a publish whose answer was lost can be sent
        again without writing twice.
        """
        headers = {"Nats-Msg-Id": msg_id, "Nats-Expected-Last-Sequence": str(after)}
        if fenced:
            headers[FENCES] = fenced
        try:
            ack = await self.js.publish(self.settings.subject, body, headers=headers,
                                        timeout=self.settings.timeout)
        except nats.js.errors.APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                found = re.search(r"(\d+)\s*$", exc.description or "")
                raise StreamMovedOn(int(found.group(1)) if found else None) from None
            raise
        return int(ack.seq)

    async def follow(self, after: int) -> None:
        """Subscribe to the stream from the message after *after*, in order.

        An ordered consumer: nats-py re-creates it from the last message it delivered
        when it sees a gap or loses it (a server restart), so the view gets every
        message once, in stream order; where the view is lives in the local store.

        Except when its queue overflows: nats-py drops the messages it has no room for
        after counting them as delivered, so the consumer goes on past them (a replay of
        thousands of messages after a kill -9 did). :meth:`next_messages` notices a
        message that does not follow the one before (the first one after *after* may
        skip messages deleted from the stream) and sets :attr:`lost`: the caller follows
        again from where its view is.
        """
        if self.view is not None:
            try:
                await self.view.unsubscribe()
            except nats.errors.Error:
                pass
        self.delivered, self.resumed = after, True
        self.lost = False
        self.view = await self.js.subscribe(
            self.settings.subject, stream=self.settings.stream, ordered_consumer=True,
            idle_heartbeat=2.0, pending_msgs_limit=PENDING_MESSAGES,
            config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                                      opt_start_seq=after + 1))

    async def next_messages(self, limit: int, wait: float) -> list[tuple[int, bytes, str]]:
        """The next messages of the view, at least one (TimeoutError after *wait*
        seconds without one), at most *limit*."""
        view = self.view
        first = await view.next_msg(timeout=wait)
        messages = [first]
        while len(messages) < limit and view.pending_msgs > 0:
            messages.append(await view.next_msg(timeout=1))
        found = []
        for message in messages:
            number = message.metadata.sequence.stream
            if number != self.delivered + 1 and not self.resumed:
                # A message dropped between: given up on this subscription (below).
                self.lost = True
                break
            found.append((number, message.data, (message.headers or {}).get(FENCES, "")))
            self.delivered, self.resumed = number, False
        return found

    async def announce(self, machine: str, record: bytes) -> None:
        """Say this machine is up (its key expires unless said again)."""
        if self.machines is None:
            try:
                self.machines = await self.js.key_value(self.settings.machines_bucket)
            except nats.js.errors.BucketNotFoundError:
                self.machines = await self.js.create_key_value(api.KeyValueConfig(
                    bucket=self.settings.machines_bucket, history=1, ttl=30.0,
                    storage=api.StorageType.MEMORY,
                    replicas=min(self.settings.replicas, 3)))
        await self.machines.put(machine, record)

    async def machines_seen(self) -> list[bytes]:
        if self.machines is None:
            return []
        found = []
        try:
            keys = await self.machines.keys()
        except nats.js.errors.NoKeysError:
            return []
        for key in keys:
            try:
                entry = await self.machines.get(key)
            except nats.js.errors.KeyNotFoundError:
                continue
            if entry.value:
                found.append(entry.value)
        return found


def _facts(info: Any) -> StreamFacts:
    cluster = info.cluster
    peers = [ClusterPeer(name=peer.name or "", current=bool(peer.current),
                         active_seconds=(peer.active or 0) / 1e9, lag=peer.lag or 0,
                         offline=bool(peer.offline))
             for peer in (cluster.replicas or [])] if cluster is not None else []
    storage = info.config.storage
    return StreamFacts(
        last_seq=int(info.state.last_seq), replicas=int(info.config.num_replicas or 1),
        storage=getattr(storage, "value", str(storage)),
        leader=(cluster.leader or "") if cluster is not None else "", peers=peers,
        created=str(info.created or ""))


def credentials_option(path: str) -> str:
    """nats-py's option for the credentials file *path*: ``user_credentials`` for a
    ``.creds`` file (a user JWT and its seed, NATS decentralized auth), ``nkeys_seed``
    for a file that holds a user's nkey seed alone (``SU…``: a server's
    ``authorization { users = [ { nkey: "U…" } ] }``). OSError when it cannot be read;
    ValueError when it is neither."""
    with open(path, "rb") as file:
        text = file.read(1 << 16)
    if b"BEGIN NATS USER JWT" in text:
        return "user_credentials"
    if text.strip().startswith(b"SU"):
        return "nkeys_seed"
    raise ValueError("neither a .creds file (a user JWT and its seed) nor a user nkey seed "
                     "(SU...)")


def tls_context(settings: ClusterSettings) -> ssl.SSLContext | None:
    """The TLS context of ``cluster.tls_ca`` (the CA to verify the servers with) and
    ``cluster.tls_cert``/``tls_key`` (this machine's certificate, for servers that
    verify clients); None when none is set (``tls://`` URLs, or servers that require
    TLS, are then verified with the system's CAs). OSError or ssl.SSLError for a file
    that cannot be read or is not PEM."""
    if not (settings.tls_ca or settings.tls_cert):
        return None
    context = ssl.create_default_context(cafile=settings.tls_ca or None)
    if settings.tls_cert:
        context.load_cert_chain(settings.tls_cert, settings.tls_key or None)
    return context


def refusal(exc: BaseException) -> str:
    """What a failed connection attempt says about this machine's TLS settings or
    credentials, in one line (it reads after "the cluster refuses this machine: ");
    empty when it is not about them (a server down, the network), which trying again
    may cure."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS: the servers' certificate is not trusted ({exc.verify_message}): "
                "cluster.tls_ca names the CA that signed it")
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or str(exc)).upper()
        if "CERTIFICATE_REQUIRED" in reason:
            return ("TLS: the servers ask for this machine's certificate: set "
                    "cluster.tls_cert and cluster.tls_key")
        if "CERTIFICATE" in reason or "UNKNOWN_CA" in reason:
            return (f"TLS: the servers do not accept this machine's certificate "
                    f"({exc.reason}): cluster.tls_cert")
        return f"TLS: {exc.reason or exc}"
    text = str(exc).lower()
    if "authorization violation" in text or "authentication expired" in text:
        return ("its credentials are refused (authorization violation): check "
                "cluster.credentials, or the user, password or token in cluster.servers")
    return ""


async def _none() -> None:
    pass
