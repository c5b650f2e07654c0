"""Who an HTTP request is, and so what the daemon connection it travels on says.

Three ways, by ``--auth``:

* ``none`` (loopback only): ``X-Agent-ID`` names the agent, else the gateway's own.
* ``token``: ``Authorization: Bearer egt_…``, an engram agent token, passed to the
  daemon unopened: the daemon checks it and acts as its agent.
* ``jwt``: an engram agent token as above, or a JWT the gateway validates (HS256
  with a secret, RS256/ES256 with a public key or a JWKS file; signature, expiry,
  not-before, issuer and audience checked). The daemon is then told, with the
  admin token, to act as the JWT's agent with that agent's rights only
  (``delegated``): it still checks what that agent may do.

``X-Agent-ID`` is ignored unless authentication is off.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import jwt
from starlette.datastructures import Headers

from engram_cli.doors.gateway.policy import UNAUTHENTICATED
from engramd.protocol import BadRequest, EngramError
from engramd.protocol.bounds import AGENT_ID_PATTERN

AGENT_TOKEN_PREFIX = "egt_"
_AGENT_ID = re.compile(AGENT_ID_PATTERN)
MODES = ("none", "token", "jwt")


class Unauthenticated(EngramError):
    """No credentials, or credentials the gateway does not accept (HTTP 401)."""

    code = UNAUTHENTICATED


@dataclass(frozen=True)
class Credentials:
    """What the daemon connection for a request presents in its hello."""

    agent_id: str
    """Empty with an agent token: the daemon names the token's agent."""
    token: str | None = None
    delegated: bool = False
    """Speak for ``agent_id`` with the admin token (a JWT the gateway validated)."""
    expires: float | None = None
    """When the credentials end (a JWT's ``exp``, seconds since the epoch): streams
    opened with them end then."""


@dataclass(frozen=True)
class JwtSettings:
    """How JWTs are checked; exactly one key source."""

    secret_file: str | None = None
    public_key_file: str | None = None
    jwks_file: str | None = None
    issuer: str | None = None
    audience: str | None = None
    agent_claim: str = "sub"
    leeway: float = 0.0


class JwtVerifier:
    """Validates JWTs with PyJWT against keys read once, at start."""

    def __init__(self, settings: JwtSettings) -> None:
        sources = [s for s in (settings.secret_file, settings.public_key_file,
                               settings.jwks_file) if s]
        if len(sources) != 1:
            raise ValueError("--auth jwt needs exactly one of --jwt-secret-file, "
                             "--jwt-public-key, --jwt-jwks")
        self.settings = settings
        self._keys: dict[str | None, tuple[Any, list[str]]] = {}
        if settings.secret_file:
            # Whitespace around the secret is none of it: a file written by echo or an
            # editor ends with a newline the issuer's copy does not have.
            secret = _read(settings.secret_file).strip()
            if len(secret) < 32:
                raise ValueError(f"{settings.secret_file}: an HS256 secret needs at least "
                                 "32 bytes")
            self._keys[None] = (secret, ["HS256"])
        elif settings.public_key_file:
            self._keys[None] = _public_key(settings.public_key_file)
        else:
            assert settings.jwks_file is not None
            try:
                keys = jwt.PyJWKSet.from_json(_read(settings.jwks_file).decode())
            except (jwt.PyJWTError, json.JSONDecodeError, ValueError) as exc:
                raise ValueError(f"{settings.jwks_file}: not a usable JWKS ({exc})") from None
            for key in keys.keys:
                if key.algorithm_name not in ("RS256", "ES256"):
                    continue
                self._keys[key.key_id] = (key.key, [key.algorithm_name])
            if not self._keys:
                raise ValueError(f"{settings.jwks_file}: no RS256 or ES256 key")

    def agent(self, token: str) -> str:
        """The agent *token* proves; raises :class:`Unauthenticated` with the reason."""
        return self.claims(token)[0]

    def claims(self, token: str) -> tuple[str, float]:
        """The agent *token* proves and its expiry; raises :class:`Unauthenticated`."""
        try:
            header = jwt.get_unverified_header(token)
            key, algorithms = self._key_for(header.get("kid"))
            claims = jwt.decode(
                token, key, algorithms=algorithms, audience=self.settings.audience,
                issuer=self.settings.issuer, leeway=self.settings.leeway,
                options={"require": ["exp"], "verify_aud": self.settings.audience is not None})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthenticated("invalid token: signed with an algorithm this gateway's "
                                  "key is not for") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {_reason(exc)}") from None
        except (ValueError, TypeError):  # a key of another kind than the token's
            raise Unauthenticated("invalid token: it does not match this gateway's key") \
                from None
        agent = claims.get(self.settings.agent_claim)
        if not isinstance(agent, str) or not agent:
            raise Unauthenticated(f"the token has no {self.settings.agent_claim!r} claim "
                                  "naming the agent")
        if not _printable(agent):
            raise Unauthenticated(f"the token's {self.settings.agent_claim!r} claim is not "
                                  "an agent name (control characters)")
        if not _AGENT_ID.fullmatch(agent):
            # The daemon would refuse the name (bad_request): these credentials name no
            # agent it can act as, so they are not acceptable.
            raise Unauthenticated(f"the token's {self.settings.agent_claim!r} claim is not "
                                  "an agent id (1 to 256 characters: letters, digits and "
                                  ". _ : / @ + - | $ ~ =, starting with a letter or digit)")
        return agent, float(claims["exp"])

    def _key_for(self, kid: object) -> tuple[Any, list[str]]:
        if None in self._keys:
            return self._keys[None]
        found = self._keys.get(kid if isinstance(kid, str) else "")
        if found is None:
            raise jwt.InvalidKeyError("no key with that kid")
        return found


def _public_key(path: str) -> tuple[Any, list[str]]:
    """A PEM public key and the one algorithm it verifies; ValueError naming the file."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    pem = _read(path)
    try:
        key = load_pem_public_key(pem)
    except ValueError:
        raise ValueError(f"{path}: not a PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        return key, ["RS256"]
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key, ["ES256"]
    raise ValueError(f"{path}: an RSA or EC (P-256) public key is needed")


def _reason(exc: Exception) -> str:
    """PyJWT's reason, without what it sometimes leaves unrendered (a generator)."""
    text = str(exc)
    return "bad signature or key" if "<generator object" in text or not text else text


def _printable(name: str) -> bool:
    return name.isprintable() and name.strip() == name


def _read(path: str) -> bytes:
    """A key file's bytes; ValueError naming the file and why it cannot be read."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class Authenticator:
    mode: str
    default_agent: str
    jwt: JwtVerifier | None = None

    def identify(self, headers: Headers) -> Credentials:
        """The credentials of a request with *headers*. Two ``Authorization`` headers
        are refused (400) rather than one of them taken: a proxy and a client may each
        have added one, and which wins is no one's guess to make."""
        given = headers.getlist("authorization")
        if len(given) > 1:
            raise BadRequest(f"{len(given)} Authorization headers: give one")
        scheme, _, bearer = (given[0] if given else "").partition(" ")
        bearer = bearer.strip()
        if scheme.lower() == "bearer" and bearer:
            if bearer.startswith(AGENT_TOKEN_PREFIX):
                return Credentials(agent_id="", token=bearer)
            if self.jwt is None:
                raise Unauthenticated("not an engram agent token (egt_…); this gateway "
                                      "does not take JWTs")
            agent, expires = self.jwt.claims(bearer)
            return Credentials(agent_id=agent, delegated=True, expires=expires)
        if self.mode != "none":
            raise Unauthenticated("authentication required: Authorization: Bearer TOKEN")
        return Credentials(agent_id=self._named_agent(headers.getlist("x-agent-id")))

    def _named_agent(self, named: list[str]) -> str:
        """The agent ``X-Agent-ID`` names, else the gateway's. Two of them, or an empty
        one, is refused rather than one guessed at."""
        if len(named) > 1:
            raise BadRequest(f"{len(named)} X-Agent-ID headers: give one, naming the agent")
        if not named:
            return self.default_agent
        if not named[0].strip():
            raise BadRequest("X-Agent-ID is empty: give an agent name, or leave the header "
                             "out to be the gateway's agent")
        if not _printable(named[0]):
            raise BadRequest("X-Agent-ID must be an agent name (no control characters)")
        return named[0]
