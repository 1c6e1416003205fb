"""The single-user servers behind the proxy during a soak, healthy and faulty.

Each `TargetServer` listens on 127.0.0.1 in the soak's own event loop and keeps
track of its connections, so it can be stopped the way a culled or crashed
single-user server stops: listener closed, every connection reset.

Behaviours (`kind`):
  healthy      keep-alive HTTP/1.1 with tornado-shaped answers (Content-Length, every
               fifth one chunked, every seventh with Set-Cookie); WebSocket upgrade to
               an echo; request bodies read before answering
  hang         reads the request and never answers
  die          answers a head promising 100,000 bytes, sends 1,000, and closes
  reset        resets the connection (RST) when a request arrives
  trickle      answers 20 body bytes one every 50 ms, then stays keep-alive
  stoppable    healthy, and stopped and restarted by the soak while the proxy pools
               connections to it
Requests to anything but a healthy server may legitimately get a 5xx.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from benchmarks.backend import WSEchoBackend, ws_accept
from benchmarks.shapes import shape_response

FAULTS = ("hang", "die", "reset", "trickle", "stoppable")
_MAX_HEAD = 65536


class TargetProtocol(asyncio.Protocol):
    """One connection to a target server; behaviour picked by the server's kind."""

    def __init__(self, server: TargetServer) -> None:
        self.server = server
        self.kind = server.kind
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.body_left = 0
        self.ws: WSEchoBackend | None = None
        self.timers: list[asyncio.TimerHandle] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.conns.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self.transport)
        for t in self.timers:
            t.cancel()

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            self.ws.data_received(data)
            return
        buf = self.buf + data
        while True:
            if self.body_left:
                take = min(self.body_left, len(buf))
                self.body_left -= take
                buf = buf[take:]
                if self.body_left:
                    break
                self.answer()
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self.transport.close()
                    return
                break
            head, buf = buf[:end], buf[end + 4:]
            low = head.lower()
            if b"\r\nupgrade: websocket" in low and self.kind in ("healthy", "stoppable"):
                self.upgrade(head, low, buf)
                return
            i = low.find(b"\r\ncontent-length:")
            if i >= 0:
                j = low.find(b"\r\n", i + 2)
                self.body_left = int(low[i + 17:j if j > 0 else len(low)])
                if self.body_left:
                    continue
            self.answer()
            if self.transport.is_closing():
                return
        self.buf = buf

    def upgrade(self, head: bytes, low: bytes, rest: bytes) -> None:
        i = low.find(b"\r\nsec-websocket-key:")
        j = low.find(b"\r\n", i + 2)
        key = head[i + 20:j if j > 0 else len(head)].strip()
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + ws_accept(key)
                             + b"\r\n\r\n")
        self.ws = WSEchoBackend()
        self.ws.transport = self.transport
        self.ws.upgraded = True
        if rest:
            self.ws.data_received(rest)

    def answer(self) -> None:
        kind = self.kind
        if kind in ("healthy", "stoppable"):
            n = self.server.served = self.server.served + 1
            shape = (b"tornado-chunked" if n % 5 == 0 else b"tornado-cookie" if n % 7 == 0
                     else b"tornado")
            self.transport.write(shape_response(shape))
        elif kind == "hang":
            pass
        elif kind == "die":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                 b"Content-Length: 100000\r\n\r\n" + b"x" * 1000)
            self.transport.close()
        elif kind == "reset":
            reset(self.transport)
        elif kind == "trickle":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                 b"Content-Length: 20\r\n\r\n")
            loop = asyncio.get_running_loop()
            self.timers = [loop.call_later(0.05 * (k + 1), self.trickle_byte) for k in range(20)]

    def trickle_byte(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(b".")


def reset(transport: asyncio.BaseTransport) -> None:
    """Close with RST (SO_LINGER 0), as a crashed process's kernel would."""
    sock = transport.get_extra_info("socket")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (OSError, AttributeError):
        pass
    transport.abort()


class TargetServer:
    """A listening target of one kind; `stop()` resets every connection, `start()` reopens
    on the same port."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.port = 0
        self.server: asyncio.base_events.Server | None = None
        self.conns: set[asyncio.BaseTransport] = set()
        self.served = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.server is not None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: TargetProtocol(self), "127.0.0.1",
                                               self.port, backlog=1024, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for t in list(self.conns):
            reset(t)
        self.conns.clear()
        await self.server.wait_closed()
        self.server = None
