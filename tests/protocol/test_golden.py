"""The wire format is a promise: these bytes must not change by accident.

If a change to the messages is deliberate (a new message, a new field at the
end), add or update the line in tests/data/golden_messages.txt in the same
commit and say so in SPECS.md.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import msgspec
import pytest

from engramd.protocol import (
    DaemonStatus,
    ErrorReply,
    GetStatus,
    Hello,
    Limits,
    Ping,
    Pong,
    Shutdown,
    ShuttingDown,
    Welcome,
    encode_message,
)
from engramd.protocol.messages import AnyClientMessage, AnyServerMessage

GOLDEN = Path(__file__).parent.parent / "data" / "golden_messages.txt"
WHEN = dt.datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=dt.UTC)

CLIENT_MESSAGES = {
    "hello": Hello(id=1, protocol_version=1, client_name="engram-cli", agent_id="alice"),
    "ping": Ping(id=2),
    "status": GetStatus(id=3),
    "shutdown": Shutdown(id=4),
}
SERVER_MESSAGES = {
    "welcome": Welcome(id=1, protocol_version=1, daemon_version="0.1.0", pid=42,
                       instance_id="abc"),
    "pong": Pong(id=2, daemon_version="0.1.0", uptime=1.5, server_time=WHEN),
    "daemon_status": DaemonStatus(
        id=3, state="ready", daemon_version="0.1.0", protocol_version=1, pid=42,
        instance_id="abc", started_at=WHEN, uptime=1.5, socket="/s", data_dir="/d",
        config_file=None, log_file="/d/engramd.log", connections=1, requests_served=2,
        limits=Limits(max_frame_bytes=16, max_connections=2, max_inflight_per_connection=3)),
    "shutting_down": ShuttingDown(id=4, pid=42),
    "error": ErrorReply(id=None, code="bad_request", message="no"),
}


def golden() -> dict[str, str]:
    lines = GOLDEN.read_text().split("\n")
    return dict(line.split(" ", 1) for line in lines if line and not line.startswith("#"))


@pytest.mark.parametrize("name", [*CLIENT_MESSAGES, *SERVER_MESSAGES])
def test_message_bytes_match_golden(name: str) -> None:
    message = {**CLIENT_MESSAGES, **SERVER_MESSAGES}[name]
    assert encode_message(message).hex() == golden()[name]


@pytest.mark.parametrize("name", CLIENT_MESSAGES)
def test_golden_client_bytes_decode_back(name: str) -> None:
    body = bytes.fromhex(golden()[name])[4:]
    assert msgspec.msgpack.decode(body, type=AnyClientMessage) == CLIENT_MESSAGES[name]


@pytest.mark.parametrize("name", SERVER_MESSAGES)
def test_golden_server_bytes_decode_back(name: str) -> None:
    body = bytes.fromhex(golden()[name])[4:]
    assert msgspec.msgpack.decode(body, type=AnyServerMessage) == SERVER_MESSAGES[name]
