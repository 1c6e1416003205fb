"""The local channel between the primary and one worker: framed messages over a socketpair.

    frame = 4-byte big-endian length + pickle of one message (a tuple whose first item
            names it: ("ops", seq, [...]), ("ack", seq), ("report", ...), ...)

    ChannelProtocol(on_message, on_closed)   asyncio side (both processes)
    send_blocking(sock, msg) / recv_blocking(sock)   the worker's start-up, before its loop

Why pickle: both ends are the same cfproxy code, the socketpair is created by the
primary and inherited by exactly one worker (no other process can open it), and the
messages carry Python objects that JSON would flatten (the Config dataclass, int
status-code keys of the metrics, the t-digest summaries). A process that could write
to this socket could already run code as our user.

Frames are bounded (MAX_FRAME, a whole table of a few hundred thousand routes fits);
a larger or malformed frame closes the channel, which the primary treats as a dead
worker and the worker as a dead primary.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from collections.abc import Callable
from typing import Any

MAX_FRAME = 512 * 1024 * 1024
_HEADER = struct.Struct(">I")


class ChannelClosed(Exception):
    """The peer closed the channel (or sent something that is not a frame)."""


def encode(msg: Any) -> bytes:
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    if len(body) > MAX_FRAME:
        raise ValueError(f"channel message of {len(body)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


def send_blocking(sock: socket.socket, msg: Any) -> None:
    sock.sendall(encode(msg))


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ChannelClosed("channel closed")
        got += k
    return bytes(buf)


def recv_blocking(sock: socket.socket) -> Any:
    """One message, read exactly (nothing after it is consumed)."""
    (n,) = _HEADER.unpack(_recv_exactly(sock, _HEADER.size))
    if n > MAX_FRAME:
        raise ChannelClosed(f"frame of {n} bytes exceeds {MAX_FRAME}")
    return pickle.loads(_recv_exactly(sock, n))


class ChannelProtocol(asyncio.Protocol):
    """Splits the byte stream into messages; `send` frames and writes (the transport buffers).

    `on_message(msg)` is called for every message in order; `on_closed(reason)` once,
    when the peer closes, a frame is malformed, or `close()` is called.
    """

    def __init__(self, on_message: Callable[[Any], None], on_closed: Callable[[str], None]) -> None:
        self.on_message = on_message
        self.on_closed = on_closed
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        try:
            while not self._closed and len(buf) - pos >= 4:
                (n,) = _HEADER.unpack_from(buf, pos)
                if n > MAX_FRAME:
                    self._close(f"frame of {n} bytes exceeds {MAX_FRAME}")
                    return
                if len(buf) - pos < 4 + n:
                    return
                body = bytes(buf[pos + 4:pos + 4 + n])
                pos += 4 + n
                try:
                    msg = pickle.loads(body)
                except Exception as e:  # noqa: BLE001 - a garbled frame ends the channel
                    self._close(f"malformed frame: {e}")
                    return
                self.on_message(msg)
        finally:
            if pos:
                del buf[:pos]

    def eof_received(self) -> bool | None:
        self._close("channel closed")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._close(f"channel lost: {exc}" if exc else "channel closed")

    def send(self, msg: Any) -> None:
        self.send_frame(encode(msg))

    def send_frame(self, frame: bytes) -> None:
        """Write an already encoded message (one pickle for many workers)."""
        if self.transport is not None and not self._closed:
            self.transport.write(frame)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._close("closed")

    def _close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        if self.transport is not None:
            self.transport.close()
        self.on_closed(reason)


async def open_channel(sock: socket.socket, on_message: Callable[[Any], None],
                       on_closed: Callable[[str], None]) -> ChannelProtocol:
    """Attach a connected Unix socket (one end of a socketpair) to the running loop."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    _, protocol = await loop.create_unix_connection(
        lambda: ChannelProtocol(on_message, on_closed), sock=sock)
    return protocol  # type: ignore[return-value]
