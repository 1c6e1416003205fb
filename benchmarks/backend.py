"""Benchmark backends: a lean HTTP server and a raw-frame WebSocket echo server.

Owns the upstream side of every benchmark. Both are bare uvloop
asyncio.Protocols, written to cost as little CPU as possible, because they share
a core with the load generator and must never be what is measured.

HTTP (keep-alive, HTTP/1.1):
  GET /1m   -> 1 MiB body          GET /64m -> 64 MiB body
  GET /shape/<name>[?..] -> the 13-byte body under one of the response heads of
                            benchmarks/shapes.py (tornado's, nginx's, chunked, ...)
  anything else -> 13-byte "Hello, world\\n"
  any request body (Content-Length or chunked) is read and discarded, so
  POST uploads of any size work.

WebSocket echo: answers the upgrade with 101, then echoes every data frame back
unmasked (ping -> pong, close -> close). Clients in benchmarks/wsload.py mask
with the all-zero key, so echoing needs no XOR on the hot path; any other key is
unmasked properly.

Run: python -m benchmarks.backend --http-port P --ws-port W   (0 = off)
Prints "READY http=P ws=W" on stdout once both listen.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import resource
import struct
import sys

from benchmarks.shapes import shape_response

SMALL = b"Hello, world\n"
MIB = 1024 * 1024


def _response(body: bytes, ctype: bytes = b"text/plain") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


RESP_SMALL = _response(SMALL)
RESP_SMALL_CLOSE = RESP_SMALL.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
_BODIES: dict[bytes, bytes] = {}


def _big(path: bytes) -> bytes:
    resp = _BODIES.get(path)
    if resp is None:
        size = MIB if path == b"/1m" else 64 * MIB
        resp = _BODIES[path] = _response(b"x" * size, b"application/octet-stream")
    return resp


class HTTPBackend(asyncio.Protocol):
    """Keep-alive HTTP/1.1 server; parses just enough of each head to frame it."""

    __slots__ = ("transport", "buf", "body_left", "chunked", "pending", "close_after")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.body_left = 0  # bytes of a Content-Length body still to discard
        self.chunked: bytes | None = None  # buffered tail while discarding a chunked body
        self.pending = RESP_SMALL  # the response to send once the request body is read
        self.close_after = False  # request said Connection: close

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.body_left:
            if len(data) < self.body_left:
                self.body_left -= len(data)
                return
            data = data[self.body_left:]
            self.body_left = 0
            if self._respond():
                return
        buf = self.buf + data if self.buf else data
        while buf:
            if self.chunked is not None:
                buf = self._skip_chunked(buf)
                if self.chunked is not None:
                    break
                if self._respond():
                    return
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    self.transport.close()
                    return
                break
            head = buf[:end]
            buf = buf[end + 4:]
            sp = head.find(b" ", 0, 16)
            path = head[sp + 1:head.find(b" ", sp + 1)]
            self.close_after = b"onnection: close" in head or b"onnection: Close" in head
            if path == b"/1m" or path == b"/64m":
                self.pending = _big(path)
            elif path.startswith(b"/shape/") and not self.close_after:
                q = path.find(b"?")
                self.pending = shape_response(path[7:q if q > 0 else len(path)]) or RESP_SMALL
            else:
                self.pending = RESP_SMALL_CLOSE if self.close_after else RESP_SMALL
            if not head.startswith(b"GET "):
                # answer only after the whole request body was read (as a real app would)
                low = head.lower()
                i = low.find(b"\r\ncontent-length:")
                if i >= 0:
                    j = low.find(b"\r\n", i + 2)
                    n = int(low[i + 17:j if j > 0 else len(low)])
                    if n > len(buf):
                        self.body_left = n - len(buf)
                        self.buf = b""
                        return
                    buf = buf[n:]
                elif b"\r\ntransfer-encoding: chunked" in low:
                    self.chunked = b""
                    continue
            if self._respond():
                return
        self.buf = buf

    def _respond(self) -> bool:
        """Write the pending response; True when the connection is now closing."""
        self.transport.write(self.pending)
        if self.close_after:
            self.transport.close()
            self.buf = b""
            return True
        return False

    def _skip_chunked(self, buf: bytes) -> bytes:
        """Discard chunked body bytes; return what follows the body (chunked=None when done)."""
        buf = self.chunked + buf
        while True:
            nl = buf.find(b"\r\n")
            if nl < 0:
                self.chunked = buf
                return b""
            size = int(buf[:nl].split(b";")[0], 16)
            if size == 0:
                end = buf.find(b"\r\n\r\n", nl)
                if end < 0:
                    self.chunked = buf
                    return b""
                self.chunked = None
                return buf[end + 4:]
            need = nl + 2 + size + 2
            if len(buf) < need:
                self.chunked = buf
                return b""
            buf = buf[need:]


_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())


def _unmask(payload: bytes, key: bytes) -> bytes:
    if key == b"\0\0\0\0" or not payload:
        return payload
    n = len(payload)
    k = int.from_bytes((key * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(payload, "little") ^ k).to_bytes(n, "little")


def frame_header(opcode: int, n: int, mask: bool = False) -> bytes:
    """Header of a FIN frame with payload length n (mask bit set -> key must follow)."""
    m = 0x80 if mask else 0
    if n < 126:
        return bytes((0x80 | opcode, m | n))
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, m | 126, n)
    return struct.pack("!BBQ", 0x80 | opcode, m | 127, n)


class WSEchoBackend(asyncio.Protocol):
    """WebSocket echo: 101 on upgrade, then every frame back to the sender unmasked."""

    __slots__ = ("transport", "buf", "upgraded")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            head = buf[:end].lower()
            i = head.find(b"\r\nsec-websocket-key:")
            if i < 0:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                     b"Connection: close\r\n\r\n")
                self.transport.close()
                return
            j = head.find(b"\r\n", i + 2)
            key = buf[i + 20:j if j > 0 else end].strip()
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                                 + ws_accept(key) + b"\r\n\r\n")
            self.upgraded = True
            buf = buf[end + 4:]
        out = []
        pos = 0
        blen = len(buf)
        while blen - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            n = b1 & 0x7F
            hl = 2
            if n == 126:
                if blen - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                hl = 4
            elif n == 127:
                if blen - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2:pos + 10], "big")
                hl = 10
            masked = b1 & 0x80
            if masked:
                hl += 4
            if blen - pos < hl + n:
                break
            payload = buf[pos + hl:pos + hl + n]
            if masked:
                payload = _unmask(payload, buf[pos + hl - 4:pos + hl])
            opcode = b0 & 0x0F
            pos += hl + n
            if opcode == 0x8:
                out.append(frame_header(0x8, len(payload)) + payload)
                self.transport.write(b"".join(out))
                self.transport.close()
                self.buf = b""
                return
            if opcode == 0x9:
                opcode = 0xA
            elif opcode == 0xA:
                continue
            hdr = frame_header(opcode, n)
            if not b0 & 0x80:  # not FIN: keep fragmenting as the client did
                hdr = bytes((hdr[0] & 0x7F,)) + hdr[1:]
            out.append(hdr)
            out.append(payload)
        if out:
            self.transport.write(b"".join(out) if len(out) > 2 else out[0] + out[1])
        self.buf = buf[pos:] if pos < blen else b""


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


async def serve(http_port: int, ws_port: int, host: str = "127.0.0.1") -> None:
    loop = asyncio.get_running_loop()
    servers = []
    if http_port >= 0:
        s = await loop.create_server(HTTPBackend, host, http_port, backlog=4096, reuse_address=True)
        http_port = s.sockets[0].getsockname()[1]
        servers.append(s)
    if ws_port >= 0:
        s = await loop.create_server(WSEchoBackend, host, ws_port, backlog=4096, reuse_address=True)
        ws_port = s.sockets[0].getsockname()[1]
        servers.append(s)
    print(f"READY http={http_port} ws={ws_port}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--http-port", type=int, default=0, help="0 = any free port, -1 = off")
    p.add_argument("--ws-port", type=int, default=0, help="0 = any free port, -1 = off")
    args = p.parse_args(argv)
    raise_nofile()
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # pragma: no cover
        print("note: uvloop missing, backend runs on asyncio", file=sys.stderr)
    try:
        asyncio.run(serve(args.http_port, args.ws_port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
