"""The proxy's fast paths (cfproxy/http/fastpath.py) behave exactly like the general path.

client.py decides the dominant exchange (HTTP/1.1 client without Connection, a 2xx
response framed by Content-Length or chunked, with no Connection or keep-alive) with
fastpath.response_shape instead of building a ResponseHead. These tests drive
ClientProtocol in process with fake transports over many request/response shapes, once
with the fast path and once with it switched off, and require the same bytes to the
client, the same counters, the same connection reuse and closing.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cfproxy.app import App
from cfproxy.config import Config
from cfproxy.http import fastpath, parser
from cfproxy.proxy import client as client_mod
from cfproxy.proxy import headers as headers_mod
from cfproxy.proxy.client import make_client_protocol_factory
from cfproxy.proxy.upstream import UpstreamConnection
from tests.support.exchange_driver import FakeTransport as CountingTransport


class FakeTransport(CountingTransport):
    """The driver's fake transport, keeping the bytes written (to compare fast and general)."""

    __slots__ = ("out",)

    def __init__(self) -> None:
        super().__init__()
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def writelines(self, lines) -> None:
        self.out.extend(bytes(x) for x in lines)


NEVER = re.compile(rb"(?!)")
ORIG_SHAPE = fastpath.response_shape


def _no_shape(head):
    return None

REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /a?b HTTP/1.1\r\nHost: x:8000\r\nUser-Agent: t\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
]

BODY = b"Hello, world\n"
RESPONSES = [
    # (head, body) - the fast shapes first, then look-alikes it must leave alone
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n", BODY),
    (b"HTTP/1.1 200 OK\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\nContent-Length: 13\r\n\r\n", BODY),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nX: y\r\ndate: today\r\nZ: w\r\n\r\n", BODY),
    (b"HTTP/1.1 200 OK\r\nDATE: today\r\nX: y\r\ncontent-length:13  \r\n\r\n", BODY),
    (b"HTTP/1.1 200 OK\r\nDates: no\r\nContent-Length: 13\r\n\r\n", BODY),
    (b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", b""),
    (b"HTTP/1.1 201 Created\r\nLocation: http://127.0.0.1:9/x\r\nContent-Length: 13\r\n\r\n", BODY),
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 13\r\n\r\n", b""),
    (b"HTTP/1.1 299 Odd\r\nContent-Length: 13\r\n\r\n", BODY),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nConnection: close\r\n\r\n", BODY),
    (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 13\r\n\r\n", BODY),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Length: 13\r\n\r\n", BODY),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 13, 13\r\n\r\n", BODY),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"d\r\nHello, world\n\r\n0\r\n\r\n"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n", BODY),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 13\r\n\r\n", BODY),
    (b"http/1.1 200 OK\r\nContent-Length: 13\r\n\r\n", BODY),
    (b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 13\r\n\r\n", BODY),
    (b"HTTP/1.1 200 OK\r\nContent-Length : 13\r\n\r\n", BODY),
    (b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 13\r\n\r\n", BODY),
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 13\r\n\r\n", BODY),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n", BODY),
    (b"HTTP/1.1 200 OK\r\n\r\n", BODY),
]


def _splits(head: bytes, body: bytes) -> list[list[bytes]]:
    """Ways the response may arrive: whole, head then body, a body byte short then the
    rest, split inside the head, with extra bytes after the body."""
    whole = head + body
    out = [[whole], [head, body] if body else [head]]
    if len(body) > 1:
        out.append([head + body[:-1], body[-1:]])
    out.append([whole[:10], whole[10:]])
    out.append([whole + b"EXTRA"])
    return out


async def _exchange(config: Config, request: bytes, pieces: list[bytes], shape,
                    monkeypatch) -> tuple:
    monkeypatch.setattr(client_mod, "response_shape", shape)
    monkeypatch.setattr(client_mod, "RESPONSE_SHAPES",
                        fastpath.RESPONSE_SHAPES if shape is not _no_shape
                        else fastpath.BoundedCache(2))  # (empty: the general run)
    monkeypatch.setattr(client_mod, "chunked_body_complete",
                        fastpath.chunked_body_complete if shape is not _no_shape
                        else (lambda data: False))
    # a fixed Date: the two runs of a case may straddle a second boundary
    monkeypatch.setattr(client_mod, "date_header", lambda: b"Date: fixed\r\n")
    monkeypatch.setattr(headers_mod, "date_header", lambda: b"Date: fixed\r\n")
    app = App(config)
    app.table.add("/", {"target": "http://127.0.0.1:9"})
    proto = make_client_protocol_factory(app)()
    ct = FakeTransport()
    proto.connection_made(ct)
    pools = proto.ctx.pools
    key = app.table.get("/").target.pool_key
    upt = FakeTransport()
    up = UpstreamConnection(pools, key)
    up.connection_made(upt)
    pools.release(up)
    proto.data_received(request)
    for piece in pieces:
        if up.owner is None:
            break
        up.data_received(piece)
    m = app.metrics
    result = (b"".join(ct.out), ct.closing, upt.closing, len(pools.idle.get(key, [])),
              m.bytes_out, dict(m.requests_proxy), proto.state, proto.keep_alive,
              [sum(c) for c in m.request_latency_counts], m.find_target_for_req.count,
              m.last_activity_updating.count)
    proto.connection_lost(None)
    return result



# the heads of RESPONSES response_shape decides (the rest are look-alikes)
FAST_SHAPES = [0, 1, 2, 3, 4, 5, 6, 8, 10, 13]


@pytest.fixture
def fresh_memos():
    """Fast paths on, every memo empty (restored to the environment's switch after)."""
    fastpath.set_enabled(True)
    yield
    fastpath.set_enabled(fastpath._env_enabled())


@pytest.mark.parametrize("config", [Config(fast_paths=True), Config(fast_paths=True, auto_rewrite=True)],
                         ids=["plain", "rewrite"])
def test_fast_response_path_matches_general_path_for_every_shape(config, fresh_memos, monkeypatch):
    decided = []

    def counting(head):
        shape = ORIG_SHAPE(head)
        if shape is not None and head not in decided:
            decided.append(head)
        return shape

    async def run() -> None:
        for request in REQUESTS:
            for head, body in RESPONSES:
                for pieces in _splits(head, body):
                    a = await _exchange(config, request, pieces, counting, monkeypatch)
                    b = await _exchange(config, request, pieces, _no_shape, monkeypatch)
                    assert a == b, (request, pieces)

    asyncio.run(run())
    # the fast shapes really were exercised (a fast path never taken would pass too)
    accepted = {RESPONSES[i][0] for i in FAST_SHAPES}
    assert set(decided) == accepted
    assert set(fastpath.RESPONSE_SHAPES.cur) | set(fastpath.RESPONSE_SHAPES.prev) == accepted


def test_response_shape_accepts_only_framed_keep_alive_2xx_heads(fresh_memos):
    accepted = [i for i, (h, _) in enumerate(RESPONSES) if ORIG_SHAPE(h) is not None]
    assert accepted == FAST_SHAPES
    assert ORIG_SHAPE(RESPONSES[2][0]) == (200, 13, True, fastpath.KEEP_ALIVE_TAIL)
    assert ORIG_SHAPE(RESPONSES[4][0]) == (200, 13, False, fastpath.KEEP_ALIVE_TAIL)
    assert ORIG_SHAPE(RESPONSES[10][0]) == (200, 13, False, fastpath.CRLF)
    assert ORIG_SHAPE(RESPONSES[13][0]) == (200, -1, False, fastpath.KEEP_ALIVE_TAIL)


# --- parse_request_head's fast match ---------------------------------------------------

REQUEST_HEADS = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HEAD /a?b=%20 HTTP/1.1\r\nUser-Agent: t\r\nhOsT:   Example.org:8080 \t\r\nX: \r\n\r\n",
    b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-Host: a\r\nHostx: b\r\nHost: c\r\n\r\n",
    # look-alikes the general code must decide
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
    b"CONNECT a:1 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
]


def _parse_outcome(head: bytes) -> tuple:
    try:
        req, n = parser.parse_request_head(head + b"NEXT", 64 * 1024)
    except parser.HTTPError as e:
        return ("error", e.status, e.message)
    return (req.method, req.target, req.version, req.headers, req.content_length, req.chunked,
            req.keep_alive, req.upgrade, req.host, req.expect_continue, req.connection,
            req.raw, n)


def test_fast_request_match_gives_the_general_parse_for_every_head(fresh_memos):
    fast = [_parse_outcome(h) for h in REQUEST_HEADS]
    again = [_parse_outcome(bytes(bytearray(h))) for h in REQUEST_HEADS]  # from the memo
    assert len(fastpath.REQUEST_HEADS) == 6  # the five plain heads + the one after a CRLF
    assert again == fast
    fastpath.set_enabled(False)
    general = [_parse_outcome(h) for h in REQUEST_HEADS]
    for head, a, b in zip(REQUEST_HEADS, fast, general, strict=True):
        assert a == b, head


def test_fast_request_match_takes_exactly_the_plain_get_and_head_requests(fresh_memos):
    took = [fastpath.request_fields(h) is not None for h in REQUEST_HEADS]
    assert took == [True] * 5 + [False] * (len(REQUEST_HEADS) - 5)
    assert fastpath.request_fields(REQUEST_HEADS[1]) == (b"HEAD", b"/a?b=%20", b"Example.org:8080",
                                                         None)


def test_remembered_heads_stay_bounded_and_keep_the_hot_ones(fresh_memos):
    memo = fastpath.REQUEST_HEADS
    hot = b"GET /hot HTTP/1.1\r\nHost: a\r\n\r\n"
    first, _ = parser.parse_request_head(hot, 64 * 1024)
    for i in range(3 * memo.size):
        req, _ = parser.parse_request_head(b"GET /u/%d HTTP/1.1\r\nHost: a\r\n\r\n" % i, 64 * 1024)
        assert req.target == b"/u/%d" % i
        if i % 200 == 0:  # the hot head is used now and then: it stays remembered
            assert parser.parse_request_head(bytes(bytearray(hot)), 64 * 1024)[0] is first
    assert len(memo) <= memo.size
    assert (b"GET /u/%d HTTP/1.1\r\nHost: a\r\n\r\n" % (3 * memo.size - 1)) in memo  # still learning
    big = b"GET / HTTP/1.1\r\nHost: a\r\nCookie: " + b"c" * 2000 + b"\r\n\r\n"
    assert parser.parse_request_head(big, 64 * 1024)[0].raw == big
    assert big not in memo


# --- a connection repeating its previous request ---------------------------------------

def test_repeated_request_reuses_the_forwarded_head_until_the_table_changes(fresh_memos, monkeypatch):
    async def run() -> list:
        app = App(Config(fast_paths=True))
        app.table.add("/", {"target": "http://127.0.0.1:9"})
        proto = make_client_protocol_factory(app)()
        ct = FakeTransport()
        proto.connection_made(ct)
        rewriter = proto.ctx.rewriter
        built = []
        real = rewriter.request_head
        monkeypatch.setattr(rewriter, "request_head",
                            lambda *a: built.append(a[1]) or real(*a))
        sent = []
        for step in range(6):
            if step == 3:  # a new route for the same path: the next request must see it
                app.table.add("/", {"target": "http://127.0.0.1:9/sub"})
            up = UpstreamConnection(proto.ctx.pools, app.table.get("/").target.pool_key)
            upt = FakeTransport()
            up.connection_made(upt)
            proto.ctx.pools.release(up)
            proto.data_received(b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n")
            sent.append(b"".join(upt.out))
            up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        assert app.metrics.find_target_for_req.count == 6
        proto.connection_lost(None)
        return [built, sent]

    built, sent = asyncio.run(run())
    assert built == [b"/p", b"/sub/p"]  # built once per table version, reused otherwise
    assert sent[0] == sent[1] == sent[2] and sent[3] == sent[4] == sent[5]
    assert sent[0].startswith(b"GET /p HTTP/1.1\r\n")
    assert sent[3].startswith(b"GET /sub/p HTTP/1.1\r\n")


# --- the one memo policy ----------------------------------------------------------------

def test_bounded_cache_keeps_learning_after_it_is_full(fresh_memos):
    cache = fastpath.BoundedCache(100)
    for i in range(1000):
        cache.put(i, str(i))
        assert cache.get(i) == str(i)  # a new key always enters
        assert len(cache) <= 100
    assert cache.get(0) is None  # old keys left


def test_a_flood_of_unique_keys_does_not_evict_a_key_in_use(fresh_memos):
    cache = fastpath.BoundedCache(100)
    cache.put("hot", 1)
    for i in range(10_000):  # one client's unique keys
        cache.put(("flood", i), i)
        if i % 40 == 0:  # the hot key is used once per 40 insertions (< size / 2)
            assert cache.get("hot") == 1
    assert cache.get("hot") == 1


def test_bounded_cache_remembers_nothing_with_the_fast_paths_off(fresh_memos):
    cache = fastpath.BoundedCache(100)
    cache.put("a", 1)
    fastpath.set_enabled(False)
    assert cache.get("a") is None
    cache.put("b", 2)
    assert cache.get("b") is None and len(cache) == 0
    fastpath.set_enabled(True)
    cache.put("b", 2)
    assert cache.get("b") == 2


# --- request heads with a browser's Connection: keep-alive -------------------------------

CONNECTION_HEADS = [
    # the fast match takes these (Host and one Connection: keep-alive, either order)
    b"GET /u HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nCookie: c=1\r\n\r\n",
    b"GET /u HTTP/1.1\r\nConnection: keep-alive\r\nUser-Agent: t\r\nHost: a:1\r\n\r\n",
    b"HEAD /u HTTP/1.1\r\nhost: a\r\nconnection:   Keep-Alive \t\r\n\r\n",
    # look-alikes the general code decides
    b"GET /u HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: keep-alive\r\n\r\n",
    b"GET /u HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: x\r\n\r\n",
    b"GET /u HTTP/1.1\r\nConnection: keep-alive\r\n\r\n",
    b"GET /u HTTP/1.1\r\nConnection: keep-alive\r\nHost: a\r\nHost: a\r\n\r\n",
    b"GET /u HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /u HTTP/1.1\r\nHost: a\r\nConnection: keep-alivex\r\n\r\n",
]


def test_fast_request_match_with_connection_keep_alive_gives_the_general_parse(fresh_memos):
    took = [fastpath.request_fields(h) is not None for h in CONNECTION_HEADS]
    assert took == [True] * 3 + [False] * (len(CONNECTION_HEADS) - 3)
    assert fastpath.request_fields(CONNECTION_HEADS[2]) == (b"HEAD", b"/u", b"a", b"Keep-Alive")
    fast = [_parse_outcome(h) for h in CONNECTION_HEADS]
    fastpath.set_enabled(False)
    general = [_parse_outcome(h) for h in CONNECTION_HEADS]
    for head, a, b in zip(CONNECTION_HEADS, fast, general, strict=True):
        assert a == b, head


# --- a whole chunked body in one read ----------------------------------------------------

def _reader_takes_all(data: bytes) -> bool:
    reader = parser.ChunkedReader()
    try:
        return reader.feed(data) == len(data) and reader.done
    except parser.HTTPError:
        return False


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(min_size=1, max_size=40), max_size=4),
       upper=st.booleans(), ext=st.booleans(), trailer=st.booleans(),
       cut=st.integers(min_value=0, max_value=3), extra=st.sampled_from([b"", b"x", b"\r\n"]))
def test_whole_chunked_body_check_agrees_with_the_chunked_reader(chunks, upper, ext, trailer,
                                                                  cut, extra):
    fastpath.set_enabled(True)
    body = b"".join((b"%X" if upper else b"%x") % len(c) + (b";e=1" if ext else b"") + b"\r\n"
                    + c + b"\r\n" for c in chunks)
    body += b"0\r\n" + (b"T: v\r\n" if trailer else b"") + b"\r\n"
    body = body[:len(body) - cut] + extra if cut or extra else body
    fast = fastpath.chunked_body_complete(body)
    assert fastpath.chunked_body_complete(b"HEAD" + body, 4) == fast  # from an offset
    if fast:
        assert _reader_takes_all(body)  # never claims more than the general reader
    if not ext and not trailer and not cut and not extra:
        assert fast  # and takes the plain whole bodies it is for
    fastpath.set_enabled(fastpath._env_enabled())


# --- the forwarded head: received head + remembered tail ---------------------------------

FORWARD_HEADS = [
    b"GET /p HTTP/1.1\r\nHost: a:8000\r\n\r\n",
    b"GET /p?q HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nCookie: c=1\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: [::1]:9\r\nContent-Length: 3\r\n\r\n",
    b"GET /p HTTP/1.0\r\nHost: a\r\nUser-Agent: x\r\n\r\n",
    b"DELETE /p HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"PUT /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
]


@pytest.mark.parametrize("config", [
    Config(), Config(x_forward=False), Config(custom_headers=(("X-A", "1"),)),
], ids=["default", "no-x-forward", "custom"])
def test_forwarded_head_fast_path_gives_the_general_bytes(config, fresh_memos):
    rewriter = headers_mod.HeaderRewriter(config)
    app = App(config)
    app.table.add("/", {"target": "http://127.0.0.1:9"})
    target = app.table.get("/").target

    def forwarded() -> list[bytes]:
        out = []
        for head in FORWARD_HEADS:
            req, _ = parser.parse_request_head(head, 65536)
            for path in (req.target, b"/other" + req.target):
                for client_ip, tls in ((b"127.0.0.1", False), (None, True)):
                    out.append(rewriter.request_head(req, path, target, client_ip, tls, False))
        return out

    fast = forwarded()
    again = forwarded()  # the remembered tails
    fastpath.set_enabled(False)
    assert fast == again == forwarded()


@pytest.mark.parametrize("body", [
    b"d\r\nHello, world\n\r\n0\r\n\r\n", b"D\r\nHello, world\n\r\n0\r\n\r\n",
    b"000d\r\nHello, world\n\r\n0\r\n\r\n", b"0\r\n\r\n", b"0\r\n\r\n0\r\n\r\n",
    b"0\r\n\r\n\r\n0\r\n\r\n", b"1\r\nx\r\n0\r\n\r\n", b"2\r\nx\r\n0\r\n\r\n",
    b"0x1\r\nx\r\n0\r\n\r\n", b"+1\r\nx\r\n0\r\n\r\n", b" 1\r\nx\r\n0\r\n\r\n",
    b"1_0\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n", b"1\r\nxx0\r\n\r\n", b"3\r\nx\r\n\r\n0\r\n\r\n",
    b"1\r\nx\r\n1\r\ny\r\n0\r\n\r\n", b"10\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n",
    b"1;e\r\nx\r\n0\r\n\r\n", b"11\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n",
    b"f" * 17 + b"\r\nx\r\n0\r\n\r\n", b"1\r\n\r\n\r\n0\r\n\r\n", b"2\r\n\r\n\r\n0\r\n\r\n",
])
def test_whole_chunked_body_check_on_tricky_single_chunks(body, fresh_memos):
    fast = fastpath.chunked_body_complete(body)
    assert fastpath.chunked_body_complete(b"HEAD" + body, 4) == fast
    if b";" in body:
        assert not fast or _reader_takes_all(body)  # extensions: may be left to the reader
    else:
        assert fast == _reader_takes_all(body), body
