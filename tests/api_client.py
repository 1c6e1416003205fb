"""Tiny HTTP/1.1 client helpers for the REST API tests (raw sockets, so tests see exact bytes).

    r = call(port, "POST", "/api/routes/x", body=b'{"target": ...}')   # one request, own connection
    r.status, r.headers (lower-case names), r.body, r.json()
    with Conn(port) as c: c.send(raw_bytes); c.read_response()   # keep-alive / pipelining
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import orjson

TOKEN = "secret"


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    def json(self):
        return orjson.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def build(method: str, path: str, body: bytes | None = None, token: str | None = TOKEN,
          headers: dict[str, str] | None = None, version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: 127.0.0.1"]
    if token is not None:
        lines.append(f"Authorization: token {token}")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body is not None and not any(k.lower() in ("content-length", "transfer-encoding")
                                    for k in (headers or {})):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


class Conn:
    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_response(self, head_request: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed before a response head: {self.buf!r}")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        _, status, reason = (lines[0].split(" ", 2) + [""])[:3]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        status_i = int(status)
        if head_request or status_i in (204, 304) or 100 <= status_i < 200:
            length = 0
        elif "content-length" in headers:
            length = int(headers["content-length"])
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            return Response(status_i, reason, headers, self._read_chunked())
        else:  # read to close
            while self._fill():
                pass
            length = len(self.buf)
        while len(self.buf) < length:
            if not self._fill():
                raise ConnectionError("closed inside a body")
        body, self.buf = self.buf[:length], self.buf[length:]
        return Response(status_i, reason, headers, body)

    def _read_chunked(self) -> bytes:
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                self._fill()
            size_line, _, self.buf = self.buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(self.buf) < size + 2:
                self._fill()
            out += self.buf[:size]
            self.buf = self.buf[size + 2:]
            if size == 0:
                return out

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection within `timeout` (extra data ignored)."""
        self.sock.settimeout(0.2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self.sock.recv(65536):
                    return True
            except TimeoutError:
                continue
            except ConnectionResetError:
                return True
        return False


def call(port: int, method: str, path: str, body: bytes | None = None, token: str | None = TOKEN,
         headers: dict[str, str] | None = None) -> Response:
    with Conn(port) as c:
        c.send(build(method, path, body, token, headers))
        return c.read_response(head_request=(method == "HEAD"))


def post(port: int, path: str, data, token: str | None = TOKEN) -> Response:
    body = data if isinstance(data, bytes) else orjson.dumps(data)
    return call(port, "POST", path, body, token)
