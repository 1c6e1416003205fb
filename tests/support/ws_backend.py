"""A real WebSocket echo server for tests and benchmarks: uvloop + wsproto.

    with WSBackend() as b:                # own uvloop loop in a background thread
        b.port, b.url (http://127.0.0.1:<port>), b.accepted, b.open_connections, b.requests
    WSBackend(unix_path=p)                # same on a Unix socket (b.url = http+unix://...)
    WSBackend(ssl=server_context)         # TLS (b.url = https://127.0.0.1:<port>)
    python -m tests.support.ws_backend --port P [--unix PATH]   # as a process (benchmarks)

Behaviour of every accepted WebSocket:
- on open it sends the text message `connected` (CHP's test backends do the same);
- text and binary messages are echoed as they arrive, fragment by fragment (a
  16 MiB message is never held whole); pings are answered with pongs, and a pong
  the server receives is reported as the text message `pong:<payload>`;
- a close from the client is answered with the same close code and reason
  (so a client sees whether its code arrived), then the server closes TCP.

Text commands (a message starting with `!` is a command, not echoed):
    !info                       reply JSON {"target", "headers": [[name, value], ...] as received}
    !close CODE [REASON]        the server starts the close handshake with CODE
    !vanish                     the server resets the TCP connection (SO_LINGER 0 + close), no close frame
    !ping PAYLOAD               the server sends a ping; the client's pong comes back as `pong:PAYLOAD`
    !push N SIZE INTERVAL       push N binary messages of SIZE bytes, INTERVAL seconds apart
                                (0 = as fast as the connection's backpressure allows), then
                                the text message `pushed N`
Knobs on the upgrade request's query string:
    ?refuse=STATUS              answer the handshake with STATUS (e.g. 403, 200), a text body
                                `refused STATUS` and Content-Length, then close
    ?silent=1                   do not send `connected`
    ?push=N&push_size=S&push_interval=I   on open, start `!push N S I` (defaults S=16, I=0)
Every handshake is recorded in `backend.requests` as (target, headers) with headers as
(name, value) string pairs exactly as received.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import struct
import threading
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

_MAX_HEAD = 64 * 1024


def _parse_head(head: bytes) -> list[tuple[str, str]]:
    lines = head.split(b"\r\n")[1:]
    out = []
    for line in lines:
        if not line:
            continue
        name, _, value = line.partition(b":")
        out.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    return out


class _WSServerProtocol(asyncio.Protocol):
    def __init__(self, backend: WSBackend) -> None:
        self.backend = backend
        self.ws = WSConnection(ConnectionType.SERVER)
        self.transport: asyncio.Transport | None = None
        self.head_buf = b""
        self.request: tuple[str, list[tuple[str, str]]] = ("", [])
        self.in_handshake = True
        self.open = False
        self.closed = False
        self.paused = False
        self.drained: asyncio.Event | None = None
        self.tasks: set[asyncio.Task] = set()

    # --- asyncio ------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.backend._conns.add(self)
        self.drained = asyncio.Event()
        self.drained.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.backend._conns.discard(self)
        for t in self.tasks:
            t.cancel()
        if self.drained is not None:
            self.drained.set()

    def pause_writing(self) -> None:
        self.drained.clear()

    def resume_writing(self) -> None:
        self.drained.set()

    def data_received(self, data: bytes) -> None:
        if self.in_handshake:
            self.head_buf += data
            end = self.head_buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head_buf) > _MAX_HEAD:
                    self.transport.close()
                return
            self.in_handshake = False
            head = self.head_buf[:end]
            self.request = (head.split(b"\r\n", 1)[0].split(b" ")[1].decode("latin-1"),
                            _parse_head(head))
            self.backend.requests.append(self.request)
            data, self.head_buf = self.head_buf, b""
        try:
            self.ws.receive_data(data)
            self._handle_events()
        except Exception as e:  # a broken peer must not kill the backend
            self.backend.errors.append(repr(e))
            self.transport.abort()

    def eof_received(self) -> bool:
        try:
            self.ws.receive_data(None)
            self._handle_events()
        except Exception:
            pass
        return False

    # --- wsproto ------------------------------------------------------------
    def _send(self, event) -> None:
        if not self.closed:
            self.transport.write(self.ws.send(event))

    def _handle_events(self) -> None:
        for event in self.ws.events():
            if isinstance(event, Request):
                self._on_request(event)
            elif isinstance(event, TextMessage):
                if event.data.startswith("!") and event.message_finished:
                    self._command(event.data)
                else:
                    self._send(TextMessage(data=event.data, message_finished=event.message_finished))
            elif isinstance(event, BytesMessage):
                self._send(BytesMessage(data=event.data, message_finished=event.message_finished))
            elif isinstance(event, Ping):
                self._send(event.response())
            elif isinstance(event, Pong):
                self._send(TextMessage(data="pong:" + bytes(event.payload).decode("utf-8", "replace")))
            elif isinstance(event, CloseConnection):
                self.backend.close_codes.append(event.code)
                try:
                    self._send(event.response())
                except Exception:
                    pass  # already closing (we sent our close first)
                self.transport.close()

    def _on_request(self, req: Request) -> None:
        query = parse_qs(urlsplit(req.target).query)
        refuse = query.get("refuse")
        if refuse:
            status = int(refuse[0])
            body = f"refused {status}".encode()
            self._send(RejectConnection(
                status_code=status,
                headers=[(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
                has_body=True,
            ))
            self._send(RejectData(data=body, body_finished=True))
            self.transport.close()
            return
        self._send(AcceptConnection())
        self.open = True
        self.backend.accepted += 1
        if not query.get("silent"):
            self._send(TextMessage(data="connected"))
        if query.get("push"):
            n = query["push"][0]
            size = query.get("push_size", ["16"])[0]
            interval = query.get("push_interval", ["0"])[0]
            self._command(f"!push {n} {size} {interval}")

    def _command(self, text: str) -> None:
        parts = text.split(" ")
        cmd = parts[0]
        if cmd == "!info":
            target, headers = self.request
            self._send(TextMessage(data=json.dumps({"target": target, "headers": headers})))
        elif cmd == "!close":
            code = int(parts[1]) if len(parts) > 1 else 1000
            self._send(CloseConnection(code=code, reason=" ".join(parts[2:])))
        elif cmd == "!vanish":
            sock = self.transport.get_extra_info("socket")
            if sock is not None and sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        elif cmd == "!ping":
            self._send(Ping(payload=" ".join(parts[1:]).encode()))
        elif cmd == "!push":
            n, size, interval = int(parts[1]), int(parts[2]), float(parts[3])
            task = asyncio.get_running_loop().create_task(self._push(n, size, interval))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            self._send(TextMessage(data=f"unknown command {cmd}"))

    async def _push(self, n: int, size: int, interval: float) -> None:
        payload = bytes(size)
        for i in range(n):
            if self.closed:
                return
            if interval:
                await asyncio.sleep(interval)
            await self.drained.wait()
            if self.closed:
                return
            self._send(BytesMessage(data=payload))
            if i % 64 == 63:
                await asyncio.sleep(0)  # let reads (and close frames) in
        self._send(TextMessage(data=f"pushed {n}"))


class WSBackend:
    """The echo server; a context manager running its own uvloop loop in a thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, unix_path: str | None = None,
                 ssl: Any = None) -> None:
        self.ssl = ssl
        self.host = host
        self.port = port
        self.unix_path = unix_path
        self.accepted = 0  # completed handshakes
        self.requests: list[tuple[str, list[tuple[str, str]]]] = []
        self.close_codes: list[int | None] = []  # close codes received from clients
        self.errors: list[str] = []
        self._conns: set[_WSServerProtocol] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self.unix_path:
            return "http+unix://" + quote(self.unix_path, safe="")
        return f"{'https' if self.ssl else 'http'}://{self.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    async def serve(self) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        self._loop = loop
        if self.unix_path:
            if os.path.exists(self.unix_path):
                os.unlink(self.unix_path)
            self._server = await loop.create_unix_server(lambda: _WSServerProtocol(self),
                                                         self.unix_path, backlog=2048)
        else:
            self._server = await loop.create_server(lambda: _WSServerProtocol(self), self.host,
                                                    self.port, backlog=2048, ssl=self.ssl)
            self.port = self._server.sockets[0].getsockname()[1]
        return self._server

    def start(self) -> WSBackend:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = uvloop.new_event_loop() if uvloop else asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.serve())
            except BaseException as e:  # report to the starting thread
                failure.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="ws-backend")
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def call(self, fn, *args) -> None:
        """Run fn(*args) on the backend's loop (thread-safe)."""
        self._loop.call_soon_threadsafe(fn, *args)

    def abort_all(self) -> None:
        """Drop every open connection (thread-safe)."""
        def go() -> None:
            for c in list(self._conns):
                c.transport.abort()
        self.call(go)

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        loop = self._loop

        def shutdown() -> None:
            self._server.close()
            for c in list(self._conns):
                c.transport.abort()
            loop.call_later(0.05, loop.stop)

        loop.call_soon_threadsafe(shutdown)
        self._thread.join(5)
        self._loop = None

    def __enter__(self) -> WSBackend:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description="WebSocket echo backend (tests/benchmarks)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--unix", default=None)
    args = ap.parse_args()
    backend = WSBackend(args.host, args.port, args.unix)

    async def run() -> None:
        server = await backend.serve()
        print(f"listening {backend.url}", flush=True)
        async with server:
            await server.serve_forever()

    if uvloop:
        uvloop.run(run())
    else:  # pragma: no cover
        asyncio.run(run())


if __name__ == "__main__":
    main()
