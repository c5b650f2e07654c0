"""Replies every endpoint shares: JSON bodies, and errors as ``{"error": {code, message}}``
with the status of their code."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response

from engram_cli.doors.gateway.policy import retry_after, status_for
from engram_cli.formats.jsonforms import to_plain_data
from engramd.protocol import EngramError

_encoder = msgspec.json.Encoder()


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> Response:
    return Response(_encoder.encode(data), status_code=status, headers=headers,
                    media_type="application/json")


def error_response(exc: EngramError) -> Response:
    status = 504 if getattr(exc, "gateway_timeout", False) else status_for(exc.code)
    headers = {"Retry-After": str(retry_after(str(exc)))} if status in (429, 503) \
        else None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return json_response({"error": {"code": exc.code, "message": str(exc)}}, status, headers)


def plain(reply: Any) -> Any:
    """A reply as JSON data without its wire envelope (the ``--json`` forms)."""
    return to_plain_data(reply)


