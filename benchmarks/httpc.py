"""A minimal blocking keep-alive HTTP/1.1 client for the benchmark's control traffic.

Owns the runner's own requests: REST API calls (route adds, GET /api/routes),
start-up probes, and holding thousands of idle keep-alive connections. It is
deliberately small and cheap (no h11 here: the route-add scenario is sequential,
so client time adds to every round trip), and understands just what the peers
send back: Content-Length, chunked, or read-to-close bodies.
"""

from __future__ import annotations

import asyncio
import socket


class HTTPClient:
    """One keep-alive connection; `request()` returns (status, body)."""

    def __init__(self, port: int, host: str = "127.0.0.1", token: str | None = None,
                 timeout: float = 30.0) -> None:
        self.addr = (host, port)
        self.host_header = f"{host}:{port}".encode()
        self.auth = b"Authorization: token " + token.encode() + b"\r\n" if token else b""
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = b""

    def connect(self) -> None:
        self.sock = socket.create_connection(self.addr, timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> HTTPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self, method: str, path: str, body: bytes = b"",
              content_type: bytes = b"application/json") -> bytes:
        head = (method.encode() + b" " + path.encode() + b" HTTP/1.1\r\nHost: " + self.host_header
                + b"\r\n" + self.auth)
        if body or method in ("POST", "PUT"):
            head += (b"Content-Type: " + content_type + b"\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n")
        return head + b"\r\n" + body

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        return self.send_raw(self.build(method, path, body))

    def send_raw(self, raw: bytes) -> tuple[int, bytes]:
        if self.sock is None:
            self.connect()
        self.sock.sendall(raw)
        return self._read_response()

    def _recv(self) -> bytes:
        data = self.sock.recv(262144)
        if not data:
            raise ConnectionError("connection closed by peer")
        return data

    def _read_response(self) -> tuple[int, bytes]:
        buf = self.buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            buf += self._recv()
        head = buf[:end]
        rest = buf[end + 4:]
        status = int(head[9:12])
        low = head.lower()
        close = b"\r\nconnection: close" in low
        i = low.find(b"\r\ncontent-length:")
        if i >= 0:
            j = low.find(b"\r\n", i + 2)
            n = int(low[i + 17:j if j > 0 else len(low)])
            if len(rest) < n:  # grow a bytearray: `bytes +=` copies it all per read (O(n^2))
                grow = bytearray(rest)
                while len(grow) < n:
                    grow += self._recv()
                rest = bytes(grow)
            body, self.buf = rest[:n], rest[n:]
        elif b"\r\ntransfer-encoding: chunked" in low:
            body, self.buf = self._read_chunked(rest)
        elif status in (204, 304) or 100 <= status < 200:
            body, self.buf = b"", rest
        else:  # read to close
            parts = [rest]
            while True:
                data = self.sock.recv(262144)
                if not data:
                    break
                parts.append(data)
            body, self.buf, close = b"".join(parts), b"", True
        if close:
            self.close()
        return status, body

    def _read_chunked(self, data: bytes) -> tuple[bytes, bytes]:
        rest = bytearray(data)  # appends in place: `bytes +=` would copy it all per read
        out = []
        pos = 0
        while True:
            nl = rest.find(b"\r\n", pos)
            while nl < 0:
                rest += self._recv()
                nl = rest.find(b"\r\n", pos)
            size = int(rest[pos:nl].split(b";")[0], 16)
            if size == 0:
                end = rest.find(b"\r\n\r\n", nl)
                while end < 0:
                    rest += self._recv()
                    end = rest.find(b"\r\n\r\n", nl)
                return b"".join(out), bytes(rest[end + 4:])
            need = nl + 2 + size + 2
            while len(rest) < need:
                rest += self._recv()
            out.append(rest[nl + 2:nl + 2 + size])
            pos = need


class _IdleConn(asyncio.Protocol):
    def __init__(self, req: bytes, done: asyncio.Future) -> None:
        self.req = req
        self.done = done
        self.got = b""
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.req)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self.got += data
        end = self.got.find(b"\r\n\r\n")
        if end < 0:
            return
        low = self.got[:end].lower()
        i = low.find(b"\r\ncontent-length:")
        j = low.find(b"\r\n", i + 2) if i >= 0 else -1
        n = int(low[i + 17:j if j > 0 else len(low)]) if i >= 0 else 0
        if len(self.got) - end - 4 >= n:
            if self.got.startswith(b"HTTP/1.1 200"):
                self.done.set_result(self)
            else:
                self.done.set_exception(RuntimeError(self.got[:60].decode("latin-1")))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"closed before response: {exc}"))


async def open_idle_keepalive(port: int, count: int, path: str = "/", host: str = "127.0.0.1",
                              batch: int = 250) -> list:
    """Open `count` connections, do one GET on each, leave them open and idle."""
    loop = asyncio.get_running_loop()
    req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    conns: list = []
    for start in range(0, count, batch):
        futs = []
        for _ in range(min(batch, count - start)):
            fut = loop.create_future()
            futs.append(fut)
            await loop.create_connection(lambda f=fut: _IdleConn(req, f), host, port)
        conns.extend(await asyncio.wait_for(asyncio.gather(*futs), 60))
    return conns
