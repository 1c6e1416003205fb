"""Real HTTP backends for tests: an echo server with knobs, an error-page echo, a fast fixed responder.

    with EchoBackend() as b:            # own event loop in a background thread, 127.0.0.1:<free port>
        b.url, b.port, b.connections (accepted count), b.requests (list of Received)
    with EchoBackend(unix_path=p) as b: # same over a Unix socket; b.url = http+unix://<encoded path>

Default answer: 200, `Content-Type: application/json`, body
`{"method", "url" (request-target as received), "path" (url without query), "version",
"headers" (list of [name, value] exactly as received), "body" (latin-1 text)}`. No Date header
(so tests can see the proxy add one).

Knobs, as request headers or as query parameters of the same name (`?x-status=301`):
    x-status: N            response status (reason from x-reason, else a standard phrase)
    x-location: URL        Location header
    x-header: Name: value  extra response header (header knob repeatable)
    x-delay: S             seconds to wait (after reading the request) before answering
    x-body-size: N         body of N pattern bytes instead of JSON (`body_pattern(N)`)
    x-echo-body: 1         body = the request body bytes (application/octet-stream)
    x-frame: length|chunked|close   body framing (default length; close = no CL, close after)
    x-chunk-size: N        write the body in pieces of N bytes (default 65536)
    x-chunk-delay: S       sleep S seconds between pieces (streaming tests)
    x-sse: N               send N server-sent events `data: <i>\\n\\n`, x-chunk-delay apart, chunked
    x-action: close        close the connection without any response
              reset        reset (RST) without any response
              reset-after-headers   send the head and part of the body, then RST
              hang         never answer (until the client goes away)
              continue     send `100 Continue` before reading the body
    x-connection: close    answer with `Connection: close` and close afterwards
Every request is recorded in `backend.requests` (`Received`: method, url, version, headers,
body, conn) before the answer, so a test can check what reached the backend (smuggling tests).

`ErrorPageBackend` answers every request with status 200, `text/plain`, body = the `url`
query parameter (the shape of CHP's test error target).

`python -m tests.support.backends --fast PORT` runs a fixed-answer backend (2-byte body,
keep-alive, pipelining-safe) on uvloop for load tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

_PATTERN = bytes(range(256)) * 256  # 64 KiB


def body_pattern(n: int) -> bytes:
    """The deterministic bytes `x-body-size: n` answers with (for byte-exact checks)."""
    reps, rest = divmod(n, len(_PATTERN))
    return _PATTERN * reps + _PATTERN[:rest]


_REASONS = {
    100: "Continue", 200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently",
    302: "Found", 303: "See Other", 304: "Not Modified", 307: "Temporary Redirect",
    308: "Permanent Redirect", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable",
}


class _HeaderLookup:
    """Case-insensitive access to a `headers` list of (name, value) pairs."""

    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]


@dataclass
class Received(_HeaderLookup):
    method: str
    url: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    conn: int  # connection number at the backend (1-based)


class BadRequest(Exception):
    pass


async def _read_request(reader: asyncio.StreamReader) -> tuple | None:
    """Read one request; None on clean EOF before a request. A small, strict parser of its own."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial.strip():
            return None
        raise BadRequest("incomplete head") from None
    lines = head[:-4].split(b"\r\n")
    while lines and lines[0] == b"":
        lines.pop(0)
    try:
        method, target, version = lines[0].decode("latin-1").split(" ")
    except ValueError:
        raise BadRequest(f"bad request line {lines[0]!r}") from None
    headers = []
    for line in lines[1:]:
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or name != name.strip():
            raise BadRequest(f"bad header line {line!r}")
        headers.append((name, value.strip(" \t")))
    lower = {}
    for k, v in headers:
        lower.setdefault(k.lower(), []).append(v)
    te = lower.get("transfer-encoding")
    cl = lower.get("content-length")
    body = b""
    if te:
        if cl:
            raise BadRequest("both Content-Length and Transfer-Encoding")
        if te != ["chunked"]:
            raise BadRequest(f"unsupported transfer-encoding {te}")
        parts = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            parts.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise BadRequest("missing CRLF after chunk")
        body = b"".join(parts)
        return method, target, version, headers, lower, body, True
    if cl:
        if len(set(cl)) != 1 or not cl[0].isdigit():
            raise BadRequest(f"bad content-length {cl}")
        n = int(cl[0])
        if n and (lower.get("x-action") or [""])[0] == "continue":
            return method, target, version, headers, lower, n, False
        body = await reader.readexactly(n) if n else b""
    return method, target, version, headers, lower, body, False


class EchoBackend:
    """The knob-driven echo server (see module docstring). Context manager; thread-backed."""

    def __init__(self, unix_path: str | None = None, host: str = "127.0.0.1") -> None:
        self.unix_path = unix_path
        self.host = host
        self.port = 0
        self.connections = 0  # accepted so far
        self.open_connections = 0
        self.requests: list[Received] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._writers: set = set()

    # --- addresses -----------------------------------------------------------
    @property
    def url(self) -> str:
        if self.unix_path:
            return "http+unix://" + quote(self.unix_path, safe="")
        return f"http://{self.host}:{self.port}"

    # --- lifecycle -------------------------------------------------------------
    def start(self) -> EchoBackend:
        ready = threading.Event()
        err: list[BaseException] = []

        def run() -> None:
            loop = uvloop.new_event_loop() if uvloop else asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                if self.unix_path:
                    self._server = loop.run_until_complete(
                        asyncio.start_unix_server(self._handle, self.unix_path))
                else:
                    self._server = loop.run_until_complete(
                        asyncio.start_server(self._handle, self.host, 0))
                    self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as e:  # noqa: BLE001
                err.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="echo-backend")
        self._thread.start()
        ready.wait(10)
        if err:
            raise err[0]
        return self

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown() -> None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            for t in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                t.cancel()

        fut = asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        try:
            fut.result(5)
        except Exception:  # noqa: BLE001
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop = None
        if self.unix_path and os.path.exists(self.unix_path):
            os.unlink(self.unix_path)

    def __enter__(self) -> EchoBackend:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def reset_log(self) -> None:
        self.requests.clear()

    # --- serving ---------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        conn = self.connections
        self._writers.add(writer)
        try:
            while True:
                try:
                    req = await _read_request(reader)
                except (BadRequest, ValueError, asyncio.IncompleteReadError) as e:
                    msg = str(e).encode()
                    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n"
                                 b"Connection: close\r\n\r\n%s" % (len(msg), msg))
                    break
                if req is None:
                    break
                keep = await self._answer(req, reader, writer, conn)
                if not keep:
                    break
        except (ConnectionError, asyncio.CancelledError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_connections -= 1
            self._writers.discard(writer)
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass

    async def _answer(self, req: tuple, reader, writer, conn: int) -> bool:
        method, target, version, headers, lower, body, chunked_in = req
        path, _, query = target.partition("?")
        knobs = {k: [v] for k, v in parse_qsl(query) if k.startswith("x-")}
        for k, vs in lower.items():
            if k.startswith("x-") and k not in ("x-forwarded-for", "x-forwarded-port",
                                               "x-forwarded-proto", "x-forwarded-host"):
                knobs[k] = vs

        def knob(name: str, default: str | None = None) -> str | None:
            v = knobs.get(name)
            return v[0] if v else default

        action = knob("x-action")
        if action == "continue" and isinstance(body, int):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await reader.readexactly(body)
        self.requests.append(Received(method, target, version, headers, body, conn))
        if action == "close":
            return False
        if action == "reset":
            _rst(writer)
            return False
        if action == "hang":
            await reader.read()  # until the peer goes away
            return False
        delay = float(knob("x-delay", "0"))
        if delay:
            await asyncio.sleep(delay)

        status = int(knob("x-status", "200"))
        reason = knob("x-reason", _REASONS.get(status, "Status"))
        out_headers: list[tuple[str, str]] = []
        if knob("x-location"):
            out_headers.append(("Location", knob("x-location")))
        for h in knobs.get("x-header", []):
            n, _, v = h.partition(":")
            out_headers.append((n.strip(), v.strip()))
        frame = knob("x-frame", "length")
        chunk_size = int(knob("x-chunk-size", "65536"))
        chunk_delay = float(knob("x-chunk-delay", "0"))
        close_after = knob("x-connection") == "close" or frame == "close"
        if version == "HTTP/1.0" and (lower.get("connection") or [""])[0].lower() != "keep-alive":
            close_after = True

        if knob("x-sse"):
            n = int(knob("x-sse"))
            out_headers += [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
            pieces = [b"data: %d\n\n" % i for i in range(n)]
            frame = "chunked" if frame == "length" else frame
        elif knob("x-body-size") is not None:
            data = body_pattern(int(knob("x-body-size")))
            out_headers.append(("Content-Type", "application/octet-stream"))
            pieces = [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)]
        elif knob("x-echo-body"):
            out_headers.append(("Content-Type", "application/octet-stream"))
            pieces = [body[i:i + chunk_size] for i in range(0, len(body), chunk_size)]
        else:
            doc = {"method": method, "url": target, "path": path, "version": version,
                   "headers": [[k, v] for k, v in headers], "body": body.decode("latin-1"),
                   "conn": conn}
            out_headers.append(("Content-Type", "application/json"))
            pieces = [json.dumps(doc).encode()]
        no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
        total = sum(len(p) for p in pieces)
        if frame == "length":
            out_headers.append(("Content-Length", str(total)))
        elif frame == "chunked" and not no_body:
            out_headers.append(("Transfer-Encoding", "chunked"))
        if close_after:
            out_headers.append(("Connection", "close"))
        head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in out_headers) + "\r\n"
        writer.write(head.encode("latin-1"))
        if no_body:
            await writer.drain()
            return not close_after
        if action == "reset-after-headers":
            if pieces and pieces[0]:
                writer.write(pieces[0][: max(1, len(pieces[0]) // 2)])
            await writer.drain()
            await asyncio.sleep(0.05)
            _rst(writer)
            return False
        for i, p in enumerate(pieces):
            if chunk_delay and i:
                await asyncio.sleep(chunk_delay)
            if not p:
                continue
            if frame == "chunked":
                writer.write(b"%x\r\n" % len(p))
                writer.write(p)
                writer.write(b"\r\n")
            else:
                writer.write(p)
            await writer.drain()
        if frame == "chunked":
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        return not close_after


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
    writer.transport.abort()


class ErrorPageBackend(EchoBackend):
    """Answers everything with 200 text/plain whose body is the `url` query parameter."""

    async def _answer(self, req: tuple, reader, writer, conn: int) -> bool:
        method, target, version, headers, lower, body, _ = req
        self.requests.append(Received(method, target, version, headers, body, conn))
        query = target.partition("?")[2]
        url = dict(parse_qsl(query)).get("url", "")
        data = url.encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(data), data))
        await writer.drain()
        return True


# --- raw client helpers (tests see exact bytes) ------------------------------------------


@dataclass
class Resp(_HeaderLookup):
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes = b""

    def json(self):
        return json.loads(self.body)


class RawConn:
    """A client socket with a small independent response reader."""

    def __init__(self, port: int | None = None, unix_path: str | None = None,
                 timeout: float = 10.0) -> None:
        if unix_path:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(timeout)
            self.sock.connect(unix_path)
        else:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 20)
        if not data:
            return False
        self.buf += data
        return True

    def _read_until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed before {sep!r}; got {self.buf[:200]!r}")
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError(f"closed after {len(self.buf)} of {n} bytes")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_response(self, method: str = "GET", skip_interim: bool = True) -> Resp:
        while True:
            head = self._read_until(b"\r\n\r\n")
            lines = head[:-4].decode("latin-1").split("\r\n")
            version, _, rest = lines[0].partition(" ")
            code, _, reason = rest.partition(" ")
            headers = []
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers.append((k, v.strip()))
            r = Resp(int(code), reason, version, headers, b"", head)
            if skip_interim and 100 <= r.status < 200 and r.status != 101:
                continue
            break
        if method == "HEAD" or r.status in (204, 304) or r.status < 200:
            return r
        te = (r.header("transfer-encoding") or "").lower()
        if te == "chunked":
            parts = []
            while True:
                size = int(self._read_until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    while self._read_until(b"\r\n") != b"\r\n":
                        pass
                    break
                parts.append(self._read_exact(size))
                self._read_exact(2)
            r.body = b"".join(parts)
        elif r.header("content-length") is not None:
            r.body = self._read_exact(int(r.header("content-length")))
        else:
            while self._fill():
                pass
            r.body, self.buf = self.buf, b""
        return r

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True when the peer closes (EOF or reset) within `timeout` with no further bytes."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        if data:
            self.buf += data
            return False
        return True


def build_request(method: str, path: str, headers: list[tuple[str, str]] | None = None,
                  body: bytes | None = None, version: str = "1.1", host: str | None = "x") -> bytes:
    lines = [f"{method} {path} HTTP/{version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    for k, v in headers or []:
        lines.append(f"{k}: {v}")
    if body is not None and not any(k.lower() in ("content-length", "transfer-encoding")
                                    for k, _ in headers or []):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def request(port: int, method: str, path: str, headers: list[tuple[str, str]] | None = None,
            body: bytes | None = None, version: str = "1.1", host: str | None = "x") -> Resp:
    """One request on its own connection."""
    with RawConn(port) as c:
        c.send(build_request(method, path, headers, body, version, host))
        return c.read_response(method)


def api(api_port: int, method: str, path: str, data=None, token: str = "secret"):
    """(status, parsed JSON or None) of a REST API call."""
    body = json.dumps(data).encode() if data is not None else None
    r = request(api_port, method, path, [("Authorization", f"token {token}")], body)
    return r.status, (json.loads(r.body) if r.body else None)


# --- fast fixed responder (load tests) ----------------------------------------------------

_FAST_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


class _FastProtocol(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.tail = b""

    def data_received(self, data: bytes) -> None:
        buf = self.tail + data if self.tail else data
        n = buf.count(b"\r\n\r\n")
        if n:
            self.transport.write(_FAST_RESPONSE * n)
            self.tail = buf[buf.rfind(b"\r\n\r\n") + 4:]
        else:
            self.tail = buf


def run_fast(port: int, host: str = "127.0.0.1") -> None:
    loop = uvloop.new_event_loop() if uvloop else asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(_FastProtocol, host, port, backlog=1024))
    print(f"fast backend on {host}:{port}", flush=True)
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def wait_until(cond, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll `cond()` until true or timeout; returns the last value (tests assert on it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return bool(cond())


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--fast":
        run_fast(int(sys.argv[2]))
    else:
        with EchoBackend() as b:
            print(f"echo backend at {b.url}", flush=True)
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                pass
