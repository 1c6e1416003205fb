"""An asyncio WebSocket client on wsproto, for tests and benchmarks.

    ws = await WSClient.connect(port=proxy.port, path="/user/a/ws")   # or unix_path=...
    assert await ws.recv() == "connected"
    await ws.send("hi"); await ws.recv() -> "hi"
    await ws.send(b"\\x00" * 10); await ws.recv() -> bytes
    await ws.ping(b"x"); await ws.recv_event() -> Pong
    await ws.close(4001, "bye"); ws.close_code / ws.close_reason (the peer's close frame;
                                  None when the connection ended without one)

`connect()` raises `HandshakeRefused(status, headers, body)` when the answer is not
101 (`body` read until the connection closes or Content-Length is reached) and
`ConnectionClosedBeforeHandshake(raw)` when the connection closed with no complete
answer (`raw` = the bytes received, e.g. `HTTP/1.1 404\\r\\nContent-Length: 0\\r\\n\\r\\n`).
`first_frame=` sends that text message in the same write as the handshake request.
Pings from the server are answered automatically. `recv()` returns whole messages
(str or bytes), `None` once the connection is closed.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import FrameProtocol


class HandshakeRefused(Exception):
    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        super().__init__(f"handshake refused with {status}")
        self.status = status
        self.headers = headers
        self.body = body


class ConnectionClosedBeforeHandshake(Exception):
    def __init__(self, raw: bytes) -> None:
        super().__init__(f"connection closed before the handshake completed; got {raw!r}")
        self.raw = raw


_CLOSED = object()


class _Proto(asyncio.Protocol):
    def __init__(self, client: WSClient) -> None:
        self.c = client

    def connection_made(self, transport) -> None:
        self.c.transport = transport

    def data_received(self, data: bytes) -> None:
        self.c._feed(data)

    def eof_received(self) -> bool:
        self.c._feed(None)
        return False

    def connection_lost(self, exc) -> None:
        self.c._lost(exc)


class WSClient:
    def __init__(self) -> None:
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.transport: asyncio.Transport | None = None
        self.queue: asyncio.Queue = asyncio.Queue()
        self.handshake: asyncio.Future = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.raw = b""  # bytes received before the handshake completed
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._parts: list = []
        self._reject: tuple | None = None
        self._reject_body = b""

    # --- connecting ---------------------------------------------------------
    @classmethod
    async def connect(cls, host: str = "127.0.0.1", port: int | None = None, path: str = "/",
                      headers: list[tuple[str, str]] | None = None, unix_path: str | None = None,
                      first_frame: str | None = None, host_header: str | None = None,
                      timeout: float = 10.0, ssl: Any = None) -> WSClient:
        """Open a WebSocket; `ssl` = an SSLContext for wss:// (TLS to the proxy)."""
        self = cls()
        loop = asyncio.get_running_loop()
        if unix_path:
            await loop.create_unix_connection(lambda: _Proto(self), unix_path)
        else:
            await loop.create_connection(lambda: _Proto(self), host, port, ssl=ssl)
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        extra = [(k.encode(), v.encode()) for k, v in (headers or [])]
        req = self.ws.send(Request(host=host_header or (f"{host}:{port}" if port else "localhost"),
                                   target=path, extra_headers=extra))
        if first_frame is not None:
            fp = FrameProtocol(client=True, extensions=[])
            req += fp.send_data(first_frame, fin=True)
        self.transport.write(req)
        try:
            await asyncio.wait_for(asyncio.shield(self.handshake), timeout)
        except BaseException:
            self.transport.abort()
            raise
        return self

    # --- receiving ----------------------------------------------------------
    def _feed(self, data: bytes | None) -> None:
        if not self.handshake.done() and data:
            self.raw += data
        try:
            self.ws.receive_data(data)
        except Exception as e:
            self._fail(e)
            return
        for ev in self.ws.events():
            if isinstance(ev, AcceptConnection):
                self.response_headers = list(ev.extra_headers)
                self.handshake.set_result(True)
            elif isinstance(ev, RejectConnection):
                self._reject = (ev.status_code, list(ev.headers))
                if not ev.has_body:
                    self._refused()
            elif isinstance(ev, RejectData):
                self._reject_body += ev.data
                if ev.body_finished:
                    self._refused()
            elif isinstance(ev, (TextMessage, BytesMessage)):
                self._parts.append(ev.data)
                if ev.message_finished:
                    parts, self._parts = self._parts, []
                    self.queue.put_nowait(parts[0] if len(parts) == 1 else type(parts[0])().join(parts))
            elif isinstance(ev, Ping):
                self._write(self.ws.send(ev.response()))
                self.queue.put_nowait(ev)
            elif isinstance(ev, CloseConnection):
                if ev.code == 1006:  # wsproto's marker for "closed without a close frame"
                    continue
                if self.close_code is None:  # the close frame that came over the wire
                    self.close_code, self.close_reason = ev.code, ev.reason
                try:  # answer a close the server started
                    self._write(self.ws.send(ev.response()))
                except Exception:
                    pass
                self.queue.put_nowait(ev)
            else:
                self.queue.put_nowait(ev)
        if data is None:
            self._lost(None)

    def _refused(self) -> None:
        if not self.handshake.done():
            status, headers = self._reject
            self.handshake.set_exception(HandshakeRefused(status, headers, self._reject_body))

    def _fail(self, exc: Exception) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionClosedBeforeHandshake(self.raw))
        self.queue.put_nowait(_CLOSED)
        if self.transport is not None:
            self.transport.abort()

    def _lost(self, exc) -> None:
        if not self.handshake.done():
            if self._reject is not None:
                status, headers = self._reject
                self.handshake.set_exception(HandshakeRefused(status, headers, self._reject_body))
            else:
                self.handshake.set_exception(ConnectionClosedBeforeHandshake(self.raw))
        if not self.closed.done():
            self.closed.set_result(exc)
            self.queue.put_nowait(_CLOSED)

    async def recv_event(self, timeout: float = 10.0):
        """The next event: a whole message (str/bytes), Ping/Pong/CloseConnection, or None (closed)."""
        ev = await asyncio.wait_for(self.queue.get(), timeout)
        return None if ev is _CLOSED else ev

    async def recv(self, timeout: float = 10.0):
        """The next whole message (str or bytes); None when the connection closed."""
        while True:
            ev = await self.recv_event(timeout)
            if ev is None or isinstance(ev, (str, bytes)):
                return ev
            if isinstance(ev, CloseConnection):
                continue  # the closed marker follows

    # --- sending ------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def send(self, message: str | bytes) -> None:
        if isinstance(message, str):
            self._write(self.ws.send(TextMessage(data=message)))
        else:
            self._write(self.ws.send(BytesMessage(data=message)))

    def send_nowait(self, message: str | bytes) -> None:
        if isinstance(message, str):
            self._write(self.ws.send(TextMessage(data=message)))
        else:
            self._write(self.ws.send(BytesMessage(data=message)))

    async def ping(self, payload: bytes = b"") -> None:
        from wsproto.events import Ping as _Ping
        self._write(self.ws.send(_Ping(payload=payload)))

    async def close(self, code: int = 1000, reason: str = "", timeout: float = 10.0) -> None:
        """Start the close handshake and wait until the connection is closed."""
        self._write(self.ws.send(CloseConnection(code=code, reason=reason)))
        await self.wait_closed(timeout)

    async def wait_closed(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        self.transport.close()

    def abort(self) -> None:
        self.transport.abort()
