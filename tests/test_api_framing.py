"""The API's own HTTP framing (api/server.py, on cfproxy's parser instead of h11): chunked bodies
split anywhere, a store that really suspends (the handler moves from an eager start to a Task),
a client that goes away mid-request, and the exact response heads h11 used to write."""

from __future__ import annotations

import asyncio
import socket
import time

import orjson
import pytest

from cfproxy.api.server import ApiProtocol
from cfproxy.app import App
from cfproxy.config import Config
from cfproxy.http.chunked import Dechunker
from cfproxy.http.parser import ChunkedReader
from tests.api_client import Conn, build
from tests.test_api_server import InProcessApi
from tests.test_store import DictStore

T = "http://127.0.0.1:9100"


# --- chunked decoding -------------------------------------------------------------------------

MIDDLE = b", a chunk of %d bytes, CRLF \r\n inside" % 37
CHUNKED = (b"5;ext=1\r\nhello\r\n"
           + b"%x\r\n" % len(MIDDLE) + MIDDLE + b"\r\n"
           b"1\r\n!\r\n"
           b"0\r\nTrailer: x\r\n\r\n")
DECODED = b"hello" + MIDDLE + b"!"


def test_the_shared_dechunker_decodes_what_the_api_accepts_whatever_the_split_points():
    for i in range(len(CHUNKED) + 1):
        for j in range(i, len(CHUNKED) + 1):
            out = bytearray()
            d = Dechunker()
            reader = ChunkedReader()
            for piece in (CHUNKED[:i], CHUNKED[i:j], CHUNKED[j:]):
                if piece and not reader.done:
                    end = reader.feed(piece)
                    out += b"".join(d.feed(piece if end < 0 else piece[:end])[0])
            assert reader.done and bytes(out) == DECODED, (i, j)


@pytest.fixture(scope="module")
def srv():
    with InProcessApi() as s:
        yield s


def test_chunked_post_with_extensions_and_trailers_sent_byte_by_byte(srv):
    body = orjson.dumps({"target": T, "pad": "x" * 40})
    raw = b"%x;name=v\r\n" % len(body) + body + b"\r\n0\r\nX-Trailer: 1\r\n\r\n"
    with Conn(srv.port) as c:
        c.send(build("POST", "/api/routes/framing/chunked", None,
                     headers={"Transfer-Encoding": "chunked"}))
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for k in range(0, len(raw), 7):
            c.send(raw[k:k + 7])
            time.sleep(0.001)
        assert c.read_response().status == 201
        c.send(build("GET", "/api/routes/framing/chunked"))
        assert c.read_response().json()["pad"] == "x" * 40


def test_bad_chunk_framing_is_400_and_closed(srv):
    with Conn(srv.port) as c:
        c.send(build("POST", "/api/routes/framing/badchunk", None,
                     headers={"Transfer-Encoding": "chunked"}) + b"zz\r\n{}\r\n0\r\n\r\n")
        r = c.read_response()
        assert r.status == 400 and r.text.startswith("Bad request: ")
        assert c.closed_by_peer()
    assert srv.app.table.get("/framing/badchunk") is None


def test_client_half_closing_mid_body_gets_400_and_nothing_is_stored(srv):
    with Conn(srv.port) as c:
        c.send(build("POST", "/api/routes/framing/cut", None, headers={"Content-Length": "50"})
               + b'{"target": "')
        c.sock.shutdown(socket.SHUT_WR)
        r = c.read_response()
        assert r.status == 400 and "unexpectedly closed" in r.text
        assert c.closed_by_peer()
    assert srv.app.table.get("/framing/cut") is None


def test_content_length_with_transfer_encoding_is_refused(srv):
    with Conn(srv.port) as c:
        c.send(b"POST /api/routes/framing/smuggle HTTP/1.1\r\nHost: x\r\nAuthorization: token secret"
               b"\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        assert c.read_response().status == 400
        assert c.closed_by_peer()
    assert srv.app.table.get("/framing/smuggle") is None


# --- exact heads (what h11 wrote for us before) ------------------------------------------------

def _head_of(port: int, raw: bytes) -> tuple[bytes, bool]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head = data.split(b"\r\n\r\n", 1)[0]
        s.settimeout(2)
        try:
            while s.recv(65536):
                pass
            closed = True
        except TimeoutError:
            closed = False
    lines = [ln for ln in head.split(b"\r\n") if not ln.startswith(b"date: ")]
    return b"\r\n".join(lines), closed


def test_keep_alive_response_head(srv):
    head, closed = _head_of(srv.port, build("DELETE", "/api/routes/framing/none"))
    assert head == (b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n"
                    b"connection: keep-alive\r\nkeep-alive: timeout=5")
    assert not closed


def test_http_1_0_response_head_closes_like_h11_did(srv):
    head, closed = _head_of(srv.port, build("GET", "/api/routes/framing/none", version="1.0"))
    assert head == (b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n"
                    b"keep-alive: timeout=5\r\nConnection: close")
    assert closed


def test_malformed_request_head_says_why_and_closes(srv):
    head, closed = _head_of(srv.port, b"GET /api/routes HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8")
    assert b"connection: close" in head and closed


# --- a store that suspends: the handler finishes in a Task --------------------------------------

class SlowStore(DictStore):
    """Every operation really waits on the event loop (like a store doing network I/O)."""

    async def add(self, path, data):
        await asyncio.sleep(0.02)
        await super().add(path, data)

    async def get(self, path):
        await asyncio.sleep(0.02)
        return await super().get(path)

    async def get_all(self):
        await asyncio.sleep(0.02)
        return await super().get_all()

    async def update(self, path, data):
        await asyncio.sleep(0.001)
        await super().update(path, data)

    async def remove(self, path):
        await asyncio.sleep(0.02)
        await super().remove(path)


@pytest.fixture(scope="module")
def slow():
    with InProcessApi(storage_backend="tests.test_api_framing:SlowStore") as s:
        yield s


def test_suspending_store_answers_pipelined_requests_in_order(slow):
    reqs = [
        build("POST", "/api/routes/slow/a", orjson.dumps({"target": T})),
        build("GET", "/api/routes/slow/a"),
        build("GET", "/api/routes"),
        build("DELETE", "/api/routes/slow/a"),
        build("GET", "/api/routes/slow/a"),
    ]
    with Conn(slow.port) as c:
        c.send(b"".join(reqs))
        got = [c.read_response() for _ in reqs]
    assert [r.status for r in got] == [201, 200, 200, 204, 404]
    assert got[1].json()["target"] == T
    assert "/slow/a" in got[2].json()
    assert isinstance(slow.app.store, SlowStore) and "add /slow/a" in slow.app.store.calls


def test_client_leaving_while_the_store_is_busy_cancels_cleanly(slow):
    errors: list = []
    slow.call(lambda: slow.loop.set_exception_handler(lambda loop, ctx: errors.append(ctx)))
    for i in range(5):
        with Conn(slow.port) as c:
            c.send(build("POST", f"/api/routes/slow/gone{i}", orjson.dumps({"target": T})))
        # closed before the 20 ms store call returned
    time.sleep(0.2)
    with Conn(slow.port) as c:
        c.send(build("GET", "/api/routes/slow/gone0"))
        assert c.read_response().status in (200, 404)
    assert errors == []
    deadline = time.monotonic() + 2
    while slow.app.api_connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not slow.app.api_connections


def test_protocol_runs_a_non_suspending_handler_without_a_task():
    app = App(Config(auth_token="secret"))
    app.table.add("/", {"target": T})
    proto = ApiProtocol(app, set())

    class Transport:
        def __init__(self) -> None:
            self.out = b""

        def get_extra_info(self, name, default=None):
            return ("127.0.0.1", 1)

        def write(self, data: bytes) -> None:
            self.out += data

        def writelines(self, parts) -> None:
            self.out += b"".join(parts)

        def close(self) -> None:
            pass

    async def main() -> bytes:
        t = Transport()
        proto.connection_made(t)
        proto.data_received(build("POST", "/api/routes/eager", orjson.dumps({"target": T})))
        out = t.out  # answered inside data_received: no loop iteration was needed
        proto.connection_lost(None)
        return out

    out = asyncio.run(main())
    assert out.startswith(b"HTTP/1.1 201 Created\r\n")
    assert app.table.get("/eager") is not None


def test_keep_alive_timeout_counts_from_the_last_request_not_the_first(monkeypatch):
    import cfproxy.api.server as api_server

    monkeypatch.setattr(api_server, "KEEP_ALIVE_S", 0.3)
    with InProcessApi() as srv, Conn(srv.port) as c:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.9:  # three keep-alive periods of steady use
            c.send(build("GET", "/api/routes/framing/none"))
            assert c.read_response().status == 404
            time.sleep(0.1)
        idle_from = time.monotonic()
        assert c.closed_by_peer(timeout=5)
        assert 0.2 < time.monotonic() - idle_from < 2
