"""Agent tokens and the admin token: who a connection may act as.

An agent token binds a connection to one agent: with ``auth.require_tokens``
every connection must present one (or the admin token), and a connection
holding an agent token acts as that agent only, so it can neither write as
another agent nor release another's lease. The daemon keeps only a SHA-256
of each token, in ``<data dir>/tokens.json`` (rewritten atomically).

The admin token is a fresh secret per daemon start, left in a 0600 file
beside the socket (as pueue leaves its shared secret): token management
needs it, and whoever can read it is the socket's owner anyway.

What this protects against is a mistaken or misconfigured agent acting under
another's name, not a hostile process of the same uid, which could read any
of this user's files.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Iterator
from typing import Any

import msgspec

from engramd import validate
from engramd.caller import Identity
from engramd.errors import StartupError
from engramd.protocol import (
    AcknowledgeCuts,
    BadRequest,
    BreakLock,
    ClientMessage,
    CreateToken,
    Forbidden,
    Hello,
    ImportUnits,
    ListTokens,
    MakeBackup,
    NotFound,
    Reindex,
    RevokeTokens,
    RunRetention,
    Shutdown,
    SpeakFor,
    TokenInfo,
    Verify,
    VerifyBackup,
)

log = logging.getLogger("engramd.tokens")

AGENT_TOKEN_PREFIX = "egt_"
ADMIN_TOKEN_PREFIX = "ega_"
TOKENS_FILE = "tokens.json"
CREDENTIALS_REFUSED = "credentials refused"
"""How the refusal of an ``as`` request's credentials begins (a gateway answers it 401)."""


class StoredToken(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    agent: str
    sha256: str
    created_at: dt.datetime

    @property
    def info(self) -> TokenInfo:
        return TokenInfo(id=self.id, agent=self.agent, created_at=self.created_at)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def write_private_file(path: str, data: bytes) -> None:
    """Replace *path* with *data* (mode 0600) atomically and durably."""
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class TokenRegistry:
    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, TOKENS_FILE)
        self._tokens: dict[str, StoredToken] = {}
        try:
            with open(self.path, "rb") as file:
                stored = msgspec.json.decode(file.read(), type=list[StoredToken])
        except FileNotFoundError:
            return
        except (OSError, msgspec.MsgspecError) as exc:
            raise StartupError(f"cannot read {self.path}: {exc}; restore it, or remove it "
                               "to revoke every agent token") from None
        self._tokens = {token.id: token for token in stored}

    def __iter__(self) -> Iterator[StoredToken]:
        return iter(sorted(self._tokens.values(), key=lambda token: token.created_at))

    def _save(self) -> None:
        write_private_file(self.path, msgspec.json.encode(list(self)))

    def create(self, agent: str) -> tuple[str, StoredToken]:
        """Issue a token for *agent*: the secret (shown once) and what is kept of it."""
        validate.agent_id(agent)
        token_id = secrets.token_hex(6)
        token = f"{AGENT_TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(24)}"
        stored = StoredToken(id=token_id, agent=agent, sha256=_digest(token),
                             created_at=dt.datetime.now(dt.UTC))
        self._tokens[token_id] = stored
        self._save()
        log.info("token %s created for agent %s", stored.id, stored.agent)
        return token, stored

    def revoke(self, *, agent: str | None, token_id: str | None) -> list[StoredToken]:
        if (agent is None) == (token_id is None):
            raise BadRequest("revoke needs exactly one of an agent or a token id")
        gone = [token for token in self
                if token.id == token_id or (agent is not None and token.agent == agent)]
        if not gone:
            raise NotFound(f"no token of agent {agent}" if agent is not None
                           else f"no token {token_id}")
        for token in gone:
            del self._tokens[token.id]
        self._save()
        log.info("revoked token(s) %s", ", ".join(token.id for token in gone))
        return gone

    def verify(self, token: str) -> StoredToken | None:
        token_id = token.removeprefix(AGENT_TOKEN_PREFIX).split("_", 1)[0]
        stored = self._tokens.get(token_id)
        if stored is None or not token.startswith(AGENT_TOKEN_PREFIX):
            return None
        return stored if hmac.compare_digest(stored.sha256, _digest(token)) else None


class Authenticator:
    """Checks a hello against the tokens; owns the admin token file while it lives."""

    def __init__(self, registry: TokenRegistry, admin_token_path: str, *,
                 require_tokens: bool) -> None:
        self.registry = registry
        self.require_tokens = require_tokens
        self.admin_token_path = admin_token_path
        self._admin_token = ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)

    def publish_admin_token(self) -> None:
        write_private_file(self.admin_token_path, self._admin_token.encode() + b"\n")

    def withdraw_admin_token(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.admin_token_path)

    def check_allowed(self, identity: Identity, request: ClientMessage[Any]) -> None:
        """Raise :class:`Forbidden` unless *identity* may send *request*.

        Token management, backups and acknowledging log cuts always need the admin
        token; with ``require_tokens``
        so do the requests that reach beyond the caller's own work: stopping
        the daemon, breaking someone's lease, rebuilding the index.
        """
        if identity.admin:
            return
        if isinstance(request, CreateToken | ListTokens | RevokeTokens):
            raise Forbidden("managing tokens needs the admin token (the 'engram agent "
                            "token' commands read it from beside the socket)")
        if isinstance(request, MakeBackup | VerifyBackup | AcknowledgeCuts | Verify):
            # The journal as a whole is its owner's, not an agent's: a backup copies
            # every agent's units to a path of the caller's choosing, verify walks them all.
            raise Forbidden(f"{request.__struct_config__.tag} needs the admin token (the "
                            "'engram daemon' commands read it from beside the socket)")
        if self.require_tokens and isinstance(request, RunRetention) and not request.dry_run:
            # (It removes every agent's units, as the owner's policies say.)
            raise Forbidden("gc needs the admin token when auth.require_tokens is on (a "
                            "dry run does not)")
        if self.require_tokens and isinstance(request, Shutdown | BreakLock | Reindex):
            raise Forbidden(f"{request.__struct_config__.tag} needs the admin token when "
                            "auth.require_tokens is on")
        if isinstance(request, ImportUnits) and identity.bound:
            others = sorted({agent for agent in request.agents if agent != identity.agent_id})
            if others:
                raise Forbidden(f"this connection's token acts as {identity.agent_id} only; "
                                f"importing units of {', '.join(others[:3])} needs the admin "
                                "token")

    def authenticate(self, hello: Hello) -> Identity:
        """The identity *hello* proves. Raises :class:`Forbidden` when it proves none."""
        token = hello.token
        admin = token is not None and hmac.compare_digest(token.encode(),
                                                          self._admin_token.encode())
        if hello.delegated and not admin:
            raise Forbidden("only the admin token may speak for another agent (delegated)")
        if admin:
            return Identity(hello.agent_id, admin=not hello.delegated,
                            delegated=hello.delegated)
        if token is None:
            if self.require_tokens:
                raise Forbidden("this daemon requires an agent token: set ENGRAM_TOKEN "
                                "(create one with 'engram agent token create NAME')")
            return Identity(hello.agent_id)
        stored = self.registry.verify(token)
        if stored is None:
            raise Forbidden("unknown or revoked token")
        if hello.agent_id and stored.agent != hello.agent_id:
            raise Forbidden(f"this token belongs to agent {stored.agent}, not "
                            f"{hello.agent_id} (set ENGRAM_AGENT={stored.agent})")
        return Identity(stored.agent, token_id=stored.id)


    def authenticate_spoken(self, speaker: Identity, request: SpeakFor) -> Identity:
        """The identity a request made for an agent (``as``) proves, as a hello's would;
        *speaker* is the connection's own, which must hold the admin token.

        Raises :class:`Forbidden` when it proves none, :class:`BadRequest` for a
        malformed agent name.
        """
        if not speaker.admin:
            raise Forbidden("only a connection holding the admin token may speak for an "
                            "agent ('as')")
        if request.agent_id or request.token is None or request.delegated:
            validate.agent_id(request.agent_id)
        token = request.token
        if token is None:
            if request.delegated:
                return Identity(request.agent_id, delegated=True)
            if self.require_tokens:
                raise Forbidden(f"{CREDENTIALS_REFUSED}: this daemon requires an agent "
                                "token (auth.require_tokens)")
            return Identity(request.agent_id)
        if hmac.compare_digest(token.encode(), self._admin_token.encode()):
            return Identity(request.agent_id, admin=not request.delegated,
                            delegated=request.delegated)
        stored = self.registry.verify(token)
        if stored is None:
            raise Forbidden(f"{CREDENTIALS_REFUSED}: unknown or revoked token")
        if request.agent_id and stored.agent != request.agent_id:
            raise Forbidden(f"{CREDENTIALS_REFUSED}: this token belongs to agent "
                            f"{stored.agent}, not {request.agent_id}")
        return Identity(stored.agent, token_id=stored.id)
