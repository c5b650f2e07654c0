"""The protocol as the fast start speaks it before it knows it needs more: MessagePack
and the length prefix in plain Python, one connection over ``_socket``, a hook's JSON
input through ``_json``'s scanner.

The commands that scripts and hooks run most (``hook pre-edit``, ``hook prompt``,
``unit create``, ``lock acquire``, ``ping``) spend, started the ordinary way, more
time importing msgspec (with typing, inspect, datetime, decimal, uuid and enum), the
protocol's 150 message types and the ``socket`` module than doing their work. This
module imports none of them: what it sends is what the client library would send
(tests/cli/test_fast.py decodes both with the daemon's own decoder and compares), and
what it receives it decodes to plain dicts and lists, reading only the few fields a
hot command prints. Whatever else a command needs, it leaves to the library: a
:class:`Reply` keeps its frame, which :meth:`Reply.decoded` decodes with msgspec into
the protocol's own types.

No failure here is told to the user: :class:`Unreached` means "nothing was sent yet, let
the client library connect (and start a daemon, and say what went wrong)"; once a
request is out, errors are the library's own exceptions with its own words.
"""

from __future__ import annotations

import _socket
import os
import struct
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    T = TypeVar("T")

PROTOCOL_VERSION = 1
"""engramd.protocol.PROTOCOL_VERSION (tests/cli/test_fast.py checks they agree)."""
MAX_SOCKET_PATH_BYTES = 107
RECEIVE_SIZE = 256 * 1024
MAX_FRAME = 16 * 1024 * 1024
"""engramd.protocol.DEFAULT_MAX_FRAME: the longest frame the client library reads (tests
check they agree)."""
NOTICE = "lease.lost"
"""The tag of the one notice there is (engramd.protocol.LeaseLost)."""


class Unreached(Exception):
    """The daemon could not be reached or greeted; nothing was sent but the hello."""


class BadFrame(ValueError):
    """A length prefix the library refuses too (its words: zero, or over its limit)."""


# -- MessagePack ------------------------------------------------------------------


def pack(value: Any, out: bytearray) -> None:
    """Append *value* (None, bool, int, float, str, bytes, list, tuple, dict) to *out* as
    msgspec writes it: the shortest form of each integer, floats as float64."""
    if value is None:
        out.append(0xC0)
    elif value is True:
        out.append(0xC3)
    elif value is False:
        out.append(0xC2)
    elif type(value) is int:
        _pack_int(value, out)
    elif type(value) is str:
        data = value.encode("utf-8")
        size = len(data)
        if size < 32:
            out.append(0xA0 | size)
        elif size < 0x100:
            out += b"\xd9" + bytes((size,))
        elif size < 0x10000:
            out += b"\xda" + struct.pack(">H", size)
        else:
            out += b"\xdb" + struct.pack(">I", size)
        out += data
    elif type(value) is bytes:
        size = len(value)
        if size < 0x100:
            out += b"\xc4" + bytes((size,))
        elif size < 0x10000:
            out += b"\xc5" + struct.pack(">H", size)
        else:
            out += b"\xc6" + struct.pack(">I", size)
        out += value
    elif type(value) is float:
        out += b"\xcb" + struct.pack(">d", value)
    elif type(value) is list or type(value) is tuple:
        size = len(value)
        if size < 16:
            out.append(0x90 | size)
        elif size < 0x10000:
            out += b"\xdc" + struct.pack(">H", size)
        else:
            out += b"\xdd" + struct.pack(">I", size)
        for item in value:
            pack(item, out)
    elif type(value) is dict:
        size = len(value)
        if size < 16:
            out.append(0x80 | size)
        elif size < 0x10000:
            out += b"\xde" + struct.pack(">H", size)
        else:
            out += b"\xdf" + struct.pack(">I", size)
        for key, item in value.items():
            pack(key, out)
            pack(item, out)
    else:
        raise TypeError(f"cannot pack {type(value).__name__}")


def _pack_int(value: int, out: bytearray) -> None:
    if 0 <= value < 0x80:
        out.append(value)
    elif -32 <= value < 0:
        out.append(value & 0xFF)
    elif value > 0:
        for code, fmt, limit in ((0xCC, ">B", 0x100), (0xCD, ">H", 0x10000),
                                 (0xCE, ">I", 0x100000000), (0xCF, ">Q", 1 << 64)):
            if value < limit:
                out.append(code)
                out += struct.pack(fmt, value)
                return
        raise OverflowError("int too large to pack")
    else:
        for code, fmt, limit in ((0xD0, ">b", 0x80), (0xD1, ">h", 0x8000),
                                 (0xD2, ">i", 0x80000000), (0xD3, ">q", 1 << 63)):
            if -value <= limit:
                out.append(code)
                out += struct.pack(fmt, value)
                return
        raise OverflowError("int too large to pack")


class Ext:
    """An extension value (a timestamp: code -1), kept as its bytes."""

    __slots__ = ("code", "data")

    def __init__(self, code: int, data: bytes) -> None:
        self.code = code
        self.data = data


_FIXED = {0xCC: (">B", 1), 0xCD: (">H", 2), 0xCE: (">I", 4), 0xCF: (">Q", 8),
          0xD0: (">b", 1), 0xD1: (">h", 2), 0xD2: (">i", 4), 0xD3: (">q", 8),
          0xCA: (">f", 4), 0xCB: (">d", 8)}


def unpack(data: bytes) -> Any:
    """The one value *data* holds (ValueError if it holds anything else)."""
    value, end = _unpack(data, 0)
    if end != len(data):
        raise ValueError("trailing bytes")
    return value


def _unpack(data: bytes, at: int) -> tuple[Any, int]:
    code = data[at]
    at += 1
    if code < 0x80:
        return code, at
    if code >= 0xE0:
        return code - 0x100, at
    if 0xA0 <= code <= 0xBF:
        end = at + (code & 0x1F)
        return data[at:end].decode("utf-8"), end
    if 0x90 <= code <= 0x9F:
        return _array(data, at, code & 0x0F)
    if 0x80 <= code <= 0x8F:
        return _map(data, at, code & 0x0F)
    if code == 0xC0:
        return None, at
    if code == 0xC2:
        return False, at
    if code == 0xC3:
        return True, at
    fixed = _FIXED.get(code)
    if fixed is not None:
        fmt, size = fixed
        return struct.unpack_from(fmt, data, at)[0], at + size
    if code in (0xD9, 0xDA, 0xDB, 0xC4, 0xC5, 0xC6):
        width = {0xD9: 1, 0xDA: 2, 0xDB: 4, 0xC4: 1, 0xC5: 2, 0xC6: 4}[code]
        size = int.from_bytes(data[at:at + width], "big")
        at += width
        chunk = data[at:at + size]
        if len(chunk) != size:
            raise ValueError("truncated")
        return (chunk.decode("utf-8") if code >= 0xD9 else bytes(chunk)), at + size
    if code in (0xDC, 0xDD):
        width = 2 if code == 0xDC else 4
        return _array(data, at + width, int.from_bytes(data[at:at + width], "big"))
    if code in (0xDE, 0xDF):
        width = 2 if code == 0xDE else 4
        return _map(data, at + width, int.from_bytes(data[at:at + width], "big"))
    if 0xD4 <= code <= 0xD8:  # fixext 1, 2, 4, 8, 16
        size = 1 << (code - 0xD4)
        ext = data[at + 1:at + 1 + size]
        return Ext(struct.unpack_from(">b", data, at)[0], bytes(ext)), at + 1 + size
    if code in (0xC7, 0xC8, 0xC9):
        width = {0xC7: 1, 0xC8: 2, 0xC9: 4}[code]
        size = int.from_bytes(data[at:at + width], "big")
        at += width
        kind = struct.unpack_from(">b", data, at)[0]
        return Ext(kind, bytes(data[at + 1:at + 1 + size])), at + 1 + size
    raise ValueError(f"unknown MessagePack code {code:#x}")


def _array(data: bytes, at: int, size: int) -> tuple[list[Any], int]:
    items = []
    for _ in range(size):
        item, at = _unpack(data, at)
        items.append(item)
    return items, at


def _map(data: bytes, at: int, size: int) -> tuple[dict[Any, Any], int]:
    items = {}
    for _ in range(size):
        key, at = _unpack(data, at)
        items[key], at = _unpack(data, at)
    return items, at


# -- JSON (a hook's input) ------------------------------------------------------------


class _Context:
    """What ``_json.make_scanner`` reads from the decoder it is made for."""

    strict = True
    object_hook = None
    object_pairs_hook = None

    @staticmethod
    def parse_float(text: str) -> float:
        number = float(text)
        if number - number != 0:  # inf: msgspec refuses what overflows a float
            raise ValueError(text)
        return number

    parse_int = int

    @staticmethod
    def parse_constant(text: str) -> Any:
        raise ValueError(text)  # NaN, Infinity: not JSON, and msgspec refuses them


def json_value(data: bytes) -> Any:
    """The JSON value *data* holds, decoded as msgspec decodes it; ValueError for anything
    that this decoder might read otherwise than msgspec (the caller asks msgspec)."""
    import _json

    text = data.decode("utf-8")
    if "\\ud" in text.lower():  # (a surrogate, lone or paired: msgspec's to judge)
        raise ValueError("surrogate escapes")
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        value, end = _json.make_scanner(_Context)(text, start)  # type: ignore[arg-type]
    except StopIteration:
        raise ValueError("no JSON value") from None
    except RecursionError:
        raise ValueError("nested too deep") from None
    except SystemError:
        # A malformed value: the C scanner raises its error through json.decoder, which
        # this start never imports (the trial's half-written and tab-holding inputs).
        raise ValueError("not JSON as this scanner reads it") from None
    if text[end:].strip(" \t\n\r"):
        raise ValueError("trailing data")
    return value


# -- the connection ---------------------------------------------------------------


def socket_path(explicit: str | None, env: dict[str, str] | os._Environ[str]) -> str | None:
    """engramd.protocol.resolve_socket_path, or None where that raises (too long)."""
    if explicit:
        path = explicit
    elif env.get("ENGRAM_SOCKET"):
        path = env["ENGRAM_SOCKET"]
    elif env.get("XDG_RUNTIME_DIR"):
        path = os.path.join(env["XDG_RUNTIME_DIR"], "engram", "engramd.sock")
    else:
        path = os.path.join("/tmp", f"engram-{os.getuid()}", "engramd.sock")
    path = os.path.abspath(path)
    return None if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES else path


def agent_name(given: str | None) -> str:
    """engram_cli.client.settings.default_agent_id where *given* is empty: ENGRAM_AGENT,
    else the user's name."""
    return given or os.environ.get("ENGRAM_AGENT") or user_name()


def user_name() -> str:
    """getpass.getuser(), as engram_cli.client.settings.default_agent_id falls back on."""
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        user = os.environ.get(name)
        if user:
            return user
    try:
        import pwd

        return pwd.getpwuid(os.getuid())[0]
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"


class Reply:
    """One answer of the daemon: its fields (plain data) and its frame."""

    __slots__ = ("body", "fields")

    def __init__(self, body: bytes, fields: dict[str, Any]) -> None:
        self.body = body
        self.fields = fields

    def decoded(self) -> Any:
        """The answer as the protocol's own message (msgspec: only when asked)."""
        import msgspec

        from engramd.protocol import AnyServerMessage

        return msgspec.msgpack.decode(self.body, type=AnyServerMessage)

    def read(self, reading: Callable[[dict[str, Any]], T]) -> T:
        """``reading(fields)``: what a hot command takes of this answer. An answer that
        does not hold it (a field missing, of another type) is told as the library tells
        an unreadable message, in msgspec's words about its frame."""
        try:
            return reading(self.fields)
        except (KeyError, IndexError, TypeError, AttributeError):
            problem = self.unreadable()
            if problem is None:
                raise  # msgspec reads it: the reading is wrong, not the daemon
            raise problem from None

    def unreadable(self) -> Exception | None:
        """The library's error for this frame (Unavailable: a protocol error), or None
        when msgspec reads it as a message of the protocol."""
        try:
            self.decoded()
        except (ValueError, RecursionError) as exc:  # (msgspec's errors are ValueErrors)
            problem: Exception = _errors().Unavailable(
                f"protocol error: unreadable message from the daemon: {exc}")
            return problem
        return None


class Fields:
    """A message's fields read as attributes (``lease.lock_id``, ``notice.lease``)."""

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self._fields = fields

    def __getattr__(self, name: str) -> Any:
        try:
            value = self._fields[name]
        except KeyError:
            raise AttributeError(name) from None
        return Fields(value) if isinstance(value, dict) else value


class Connection:
    """One greeted connection to engramd (see the module)."""

    def __init__(self, path: str, *, agent_id: str, token: str | None,
                 timeout: float | None, client_name: str = "engram-cli") -> None:
        self.path = path
        self.timeout = timeout
        self._next_id = 1
        self._buffer = b""
        self.notices: list[dict[str, Any]] = []
        """The daemon's notices (a lease lost) heard while waiting for answers."""
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise Unreached(str(exc)) from None
        self._sock = sock
        hello: dict[str, Any] = {"msg": "hello", "id": 0, "protocol_version": PROTOCOL_VERSION,
                                 "client_name": client_name, "agent_id": agent_id}
        if token is not None:  # (Hello omits its defaults)
            hello["token"] = token
        try:
            self._send(hello)
            welcome = self._answer(hello["id"])
        except TimeoutError:
            # A daemon that took the connection and does not answer (stopped, say): the
            # library would wait as long again, so this is the answer.
            self.close()
            raise _errors().ClientTimeout(
                f"engramd did not answer within {round(timeout or 0, 1):g}s") from None
        except (OSError, ValueError, Unreached) as exc:
            try:
                if isinstance(exc, OSError):  # it hung up first: its goodbye says why
                    self._parting_error()
            finally:
                self.close()
            raise Unreached(str(exc)) from None
        except BaseException:  # its refusal (too many connections, another uid): told
            self.close()
            raise
        if welcome.fields.get("msg") == "error":  # refused (a token, say): told once
            self.close()
            from engramd.protocol import error_for

            raise welcome.read(lambda fields: error_for(fields["code"], fields["message"]))
        if welcome.fields.get("msg") != "welcome":
            self.close()
            raise Unreached("the daemon did not welcome us")
        self.greeting = welcome
        self.welcome = welcome.fields

    def request(self, message: dict[str, Any], timeout: float | None = -1.0) -> Reply:
        """Send *message* (a dict in the field order of its Struct, ``msg`` first, ``id``
        given any value) and wait for its answer; raises the error it reports as the
        client library does. *timeout*: for this answer, else the connection's."""
        if timeout != -1.0:
            self._sock.settimeout(timeout)
        waited = self.timeout if timeout == -1.0 else timeout
        try:
            self._send(message)
        except TimeoutError:
            raise _errors().ClientTimeout(
                f"engramd did not take a request within {round(waited or 0, 1):g}s") from None
        except OSError as exc:
            self._parting_error()  # its goodbye, when it hung up first, is the answer
            raise _errors().Unavailable(
                f"lost the connection to engramd: {exc.strerror}") from None
        try:
            reply = self._answer(message["id"])
        except TimeoutError:
            raise _errors().ClientTimeout(
                f"engramd did not answer within {round(waited or 0, 1):g}s") from None
        except (OSError, Unreached, ValueError) as exc:
            raise _unavailable(exc) from None
        if reply.fields.get("msg") == "error":
            from engramd.protocol import error_for

            raise reply.read(lambda fields: error_for(fields["code"], fields["message"]))
        return reply

    def _parting_error(self) -> None:
        """Raise what a daemon said before it closed on us (a frame over its limit, say):
        a write can fail because it already hung up, and its goodbye may still wait in
        the socket (as the client library reads it)."""
        try:
            self._sock.settimeout(0.5)
            while True:
                self._answer(-1)  # (no request has that id: only a goodbye ends this)
        except (OSError, Unreached, ValueError):
            pass

    def _send(self, message: dict[str, Any]) -> None:
        message["id"] = self._next_id
        self._next_id += 1
        body = bytearray()
        pack(message, body)
        self._sock.sendall(struct.pack(">I", len(body)) + body)

    def _answer(self, request_id: int) -> Reply:
        while True:
            reply = self._file(self._frame())
            if reply is not None and reply.fields.get("id") == request_id:
                return reply

    def _file(self, body: bytes) -> Reply | None:
        """A frame read: an answer (returned), a notice (kept) or a push (dropped); the
        daemon's goodbye raised."""
        fields = unpack(body)
        if not isinstance(fields, dict):
            raise ValueError("a message that is not a map")
        if fields.get("msg") == "error" and fields.get("id") is None:  # goodbye
            from engramd.protocol import error_for

            raise error_for(fields["code"], fields["message"])
        if fields.get("msg") == NOTICE:
            self.notices.append(fields)
        elif "subscription" not in fields:
            return Reply(body, fields)
        return None

    def notice(self, timeout: float | None) -> dict[str, Any] | None:
        """The next notice, waiting up to *timeout* for one (None when none came);
        raises as :meth:`request` does when the connection ends."""
        if not self.notices:
            self._sock.settimeout(timeout)
            try:
                while not self.notices:
                    self._file(self._frame())
            except TimeoutError:
                return None
            except (OSError, Unreached, ValueError) as exc:
                raise _unavailable(exc) from None
        return self.notices.pop(0) if self.notices else None

    def buffered(self) -> bool:
        """Whether bytes the daemon sent wait here, read from the socket already."""
        return bool(self._buffer)

    def fileno(self) -> int:
        return self._sock.fileno()

    def interrupt(self) -> None:
        """Shut the connection down, from another thread: a wait on it returns."""
        try:
            self._sock.shutdown(_socket.SHUT_RDWR)
        except OSError:
            pass

    def _frame(self) -> bytes:
        while True:
            if len(self._buffer) >= 4:
                (length,) = struct.unpack_from(">I", self._buffer)
                if not length:
                    raise BadFrame("zero-length frame")
                if length > MAX_FRAME:
                    raise BadFrame(f"frame of {length} bytes exceeds the limit of "
                                   f"{MAX_FRAME} bytes")
                if len(self._buffer) >= 4 + length:
                    body = self._buffer[4:4 + length]
                    self._buffer = self._buffer[4 + length:]
                    return body
            data = self._sock.recv(RECEIVE_SIZE)
            if not data:
                raise Unreached("engramd closed the connection")
            self._buffer += data

    def close(self) -> None:
        self._sock.close()


def _unavailable(exc: BaseException) -> Exception:
    """The library's error for a connection that failed while an answer was read."""
    if isinstance(exc, OSError):
        why = f"lost the connection to engramd: {exc.strerror}"
    elif isinstance(exc, Unreached):
        why = "engramd closed the connection"
    elif isinstance(exc, BadFrame):
        why = f"protocol error: {exc}"
    else:
        why = f"protocol error: unreadable message from the daemon: {exc}"
    error: Exception = _errors().Unavailable(why)
    return error


def _errors() -> Any:
    from engram_cli.client import errors

    return errors


def write(text: str) -> None:
    """*text* to stdout, flushed (as Output.line writes a line)."""
    sys.stdout.write(text)
    sys.stdout.flush()
