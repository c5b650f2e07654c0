"""The contract between engramd and its clients: pure data and pure functions.

Imports only the standard library and msgspec: no sockets, no files, no trio.
This package is the only part of :mod:`engramd` that :mod:`engram_cli` uses.
"""

from engramd.protocol.address import (
    MAX_SOCKET_PATH_BYTES as MAX_SOCKET_PATH_BYTES,
    SocketPathTooLong as SocketPathTooLong,
    check_socket_path as check_socket_path,
    default_config_file as default_config_file,
    log_file_in as log_file_in,
    resolve_data_dir as resolve_data_dir,
    resolve_socket_path as resolve_socket_path,
)
from engramd.protocol.connection import (
    CLOSED as CLOSED,
    NEED_DATA as NEED_DATA,
    ClientConnection as ClientConnection,
    InvalidMessage as InvalidMessage,
    ServerConnection as ServerConnection,
    State as State,
    encode_message as encode_message,
)
from engramd.protocol.errors import (
    ErrorCode as ErrorCode,
    FrameTooLarge as FrameTooLarge,
    LocalProtocolError as LocalProtocolError,
    ProtocolError as ProtocolError,
    RemoteProtocolError as RemoteProtocolError,
)
from engramd.protocol.framing import (
    DEFAULT_MAX_FRAME as DEFAULT_MAX_FRAME,
    FrameDecoder as FrameDecoder,
    encode_frame as encode_frame,
)
from engramd.protocol.messages import (
    PROTOCOL_VERSION as PROTOCOL_VERSION,
    AnyClientMessage as AnyClientMessage,
    AnyServerMessage as AnyServerMessage,
    ClientMessage as ClientMessage,
    DaemonStatus as DaemonStatus,
    ErrorReply as ErrorReply,
    GetStatus as GetStatus,
    Hello as Hello,
    Limits as Limits,
    Ping as Ping,
    Pong as Pong,
    Reply as Reply,
    Request as Request,
    ServerMessage as ServerMessage,
    Shutdown as Shutdown,
    ShuttingDown as ShuttingDown,
    Welcome as Welcome,
)
