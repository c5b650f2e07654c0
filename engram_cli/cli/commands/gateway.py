"""``engram gateway``: serve engram over HTTP, SSE and WebSocket
(see :mod:`engram_cli.doors.gateway`)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from engram_cli.cli import context, output
from engram_cli.cli.options import JsonOption
from engram_cli.client.errors import EngramError, UsageProblem


def gateway(
    ctx: typer.Context,
    listen: Annotated[str, typer.Option(
        "--listen", metavar="HOST:PORT", envvar="ENGRAM_GATEWAY_LISTEN",
        help="Where to listen (port 0: any free port). Loopback unless --allow-remote.")
    ] = "127.0.0.1:8080",
    allow_remote: Annotated[bool, typer.Option(
        "--allow-remote", help="Allow a non-loopback address (needs --auth token or jwt).")
    ] = False,
    auth: Annotated[str, typer.Option(
        "--auth", metavar="MODE", help="none (X-Agent-ID names the agent; loopback only), "
        "token (engram agent tokens as Bearer), or jwt (agent tokens or JWTs).")] = "none",
    jwt_secret_file: Annotated[str | None, typer.Option(
        "--jwt-secret-file", metavar="PATH", help="HS256: the shared secret (>= 32 bytes; "
        "whitespace around it, such as the newline echo or an editor ends a file with, is "
        "not part of it).")
    ] = None,
    jwt_public_key: Annotated[str | None, typer.Option(
        "--jwt-public-key", metavar="PATH", help="RS256/ES256: the issuer's PEM public key.")
    ] = None,
    jwt_jwks: Annotated[str | None, typer.Option(
        "--jwt-jwks", metavar="PATH", help="RS256/ES256: a JWKS file (keys chosen by kid).")
    ] = None,
    jwt_issuer: Annotated[str | None, typer.Option(
        "--jwt-issuer", metavar="ISS", help="Required iss claim.")] = None,
    jwt_audience: Annotated[str | None, typer.Option(
        "--jwt-audience", metavar="AUD", help="Required aud claim.")] = None,
    jwt_agent_claim: Annotated[str, typer.Option(
        "--jwt-agent-claim", metavar="CLAIM", help="The claim naming the agent.")] = "sub",
    allow_hosts: Annotated[list[str] | None, typer.Option(
        "--allow-host", metavar="NAME", help="Another name the Host header may carry "
        "(repeatable; e.g. the reverse proxy's).")] = None,
    cors_origins: Annotated[list[str] | None, typer.Option(
        "--cors-origin", metavar="ORIGIN", help="A browser origin allowed to call "
        "(http[s]://host[:port], no path; repeatable; * is refused: name each).")] = None,
    max_body: Annotated[int, typer.Option(
        "--max-body", metavar="BYTES", min=1, help="The largest request body.")
    ] = 4 * 1024 * 1024,
    daemon_connections: Annotated[int, typer.Option(
        "--daemon-connections", metavar="N", min=1, max=64,
        help="Connections to engramd at most, shared by every caller and stream.")] = 8,
    stream_stall: Annotated[float, typer.Option(
        "--stream-stall", metavar="SECONDS", min=0.1,
        help="A stream whose client takes nothing this long is let go (it resumes).")
    ] = 60.0,
    body_timeout: Annotated[float, typer.Option(
        "--body-timeout", metavar="SECONDS", min=0.1,
        help="A request body must come whole this soon after its headers (else 408).")
    ] = 30.0,
    stream_memory: Annotated[int, typer.Option(
        "--stream-memory", metavar="BYTES", min=1024 * 1024,
        help="Bytes of events all streams together hold for their clients (each at most "
        "2 MiB); past them, events are read again from the journal when wanted.")
    ] = 128 * 1024 * 1024,
    streams_per_agent: Annotated[int, typer.Option(
        "--streams-per-agent", metavar="N", min=1,
        help="Streams one agent (or agent token) may have open at once; past them, 429.")
    ] = 64,
    tickets_per_agent: Annotated[int, typer.Option(
        "--tickets-per-agent", metavar="N", min=1,
        help="Unused stream tickets one agent may hold at once; past them, 429.")] = 100,
    json: JsonOption = False,
) -> None:
    """Serve engram over HTTP, Server-Sent Events and WebSocket, as a client of engramd.

    The daemon checks every request as the caller's agent: the gateway passes each
    caller's identity with each request, on a few connections it shares. Endpoints:
    SPECS.md §6.3 and GET /openapi.json. Stops on SIGINT/SIGTERM. Needs the extra:
    pip install 'engram-journal\\[http]'. With --json, prints {"listening": [URL, ...]}
    when ready.

    Examples:

      engram gateway
      curl -s localhost:8080/workunit -H 'X-Agent-ID: ci' -d '{"context_id":"b","payload":"hi"}'
      engram gateway --listen 0.0.0.0:8080 --allow-remote --auth jwt --jwt-jwks jwks.json
    """
    try:
        import trio

        from engram_cli.doors.gateway import auth as gateway_auth
        from engram_cli.doors.gateway import policy, serve
    except ImportError as exc:
        raise EngramError(f"engram gateway needs the HTTP extra ({exc.name} is missing): "
                          "pip install 'engram-journal[http]'") from None
    cli = context.get(ctx)
    out = cli.output(json)
    try:
        address = policy.ListenAddress.parse(listen)
        if auth not in gateway_auth.MODES:
            raise ValueError(f"--auth must be one of {', '.join(gateway_auth.MODES)}")
        policy.check_exposure(address, allow_remote=allow_remote, auth=auth)
        jwt_options = (jwt_secret_file, jwt_public_key, jwt_jwks)
        if auth != "jwt" and any(jwt_options):
            raise ValueError("the --jwt-* options need --auth jwt")
        cors = frozenset(policy.parse_origin(origin) for origin in cors_origins or ())
        verifier = gateway_auth.JwtVerifier(gateway_auth.JwtSettings(
            secret_file=jwt_secret_file, public_key_file=jwt_public_key, jwks_file=jwt_jwks,
            issuer=jwt_issuer, audience=jwt_audience, agent_claim=jwt_agent_claim,
        )) if auth == "jwt" else None
    except (ValueError, OSError) as exc:
        raise UsageProblem(str(exc)) from None
    client = cli.unconnected_client()
    settings = serve.Settings(
        listen=address, socket_path=client.socket_path, env=cli.env,
        auth=gateway_auth.Authenticator(mode=auth, default_agent=client.agent_id,
                                        jwt=verifier),
        origins=policy.Origins(hosts=frozenset(h.lower() for h in allow_hosts or ()),
                               cors=cors),
        max_body=max_body, daemon_connections=daemon_connections, stream_stall=stream_stall,
        stream_memory=stream_memory, body_timeout=body_timeout,
        streams_per_agent=streams_per_agent, tickets_per_agent=tickets_per_agent,
        # Callers with credentials may be anyone (a proxy, --allow-remote): this machine's
        # paths are for the log, not for them.
        reveal_paths=auth == "none")
    try:
        config = serve.bind(settings)  # a port in use is said before engramd is started
    except serve.CannotListen as exc:
        raise UsageProblem(str(exc)) from None
    try:
        cli.client()  # starts engramd when it is not running (unless ENGRAM_NO_AUTOSTART)
    except EngramError as exc:
        output.note(f"{exc}; /readyz answers 503 until engramd is ready")

    def listening(urls: list[str]) -> None:
        if out.json:
            out.json_line({"listening": urls, "auth": auth, "socket": settings.socket_path})
        else:
            output.note(f"listening on {', '.join(urls)} (auth {auth}; engramd at "
                        f"{settings.socket_path})")
        sys.stdout.flush()

    trio.run(serve.serve, settings, config, listening)
