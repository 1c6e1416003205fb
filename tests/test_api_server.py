"""The API listener in-process (own event loop in a thread): idle keep-alive and slow-request
timeouts, graceful close_when_idle, and the sans-I/O helpers of api/handlers.py."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import cfproxy.api.server as api_server
from cfproxy.api.handlers import (
    InvalidEscape,
    decode_uri_component,
    iso_ms,
    js_numbers,
    parse_datestamp,
    split_target,
    token_ok,
)
from cfproxy.app import App
from cfproxy.config import Config
from tests.api_client import Conn, build


class InProcessApi:
    def __init__(self, **config) -> None:
        self.app = App(Config(auth_token="secret", **config))
        self.app.table.add("/", {"target": "http://127.0.0.1:9"})
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        factory = api_server.make_api_protocol_factory(self.app)
        self.server = self.loop.run_until_complete(self.loop.create_server(factory, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    def call(self, fn) -> None:
        self.loop.call_soon_threadsafe(fn)

    def __enter__(self) -> InProcessApi:
        self.thread.start()
        self.ready.wait(5)
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(monkeypatch):
    monkeypatch.setattr(api_server, "KEEP_ALIVE_S", 0.3)
    with InProcessApi() as srv, Conn(srv.port) as c:
        c.send(build("GET", "/api/routes"))
        assert c.read_response().status == 200
        t0 = time.monotonic()
        assert c.closed_by_peer(timeout=5)
        assert 0.2 < time.monotonic() - t0 < 3


def test_a_request_that_never_completes_is_dropped_after_the_header_timeout():
    with InProcessApi(header_timeout=300) as srv, Conn(srv.port) as c:
        c.send(b"GET /api/routes HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        assert c.closed_by_peer(timeout=5)
        assert time.monotonic() - t0 < 3


def test_close_when_idle_closes_idle_connections_and_finishes_busy_ones():
    with InProcessApi() as srv:
        with Conn(srv.port) as idle, Conn(srv.port) as busy:
            idle.send(build("GET", "/api/routes"))
            assert idle.read_response().status == 200
            busy.send(build("POST", "/api/routes/x", None, headers={"Content-Length": "40"}) + b'{"target": ')
            time.sleep(0.1)
            assert len(srv.app.api_connections) == 2
            srv.call(lambda: [c.close_when_idle() for c in list(srv.app.api_connections)])
            assert idle.closed_by_peer()
            busy.send(b'"http://127.0.0.1:1"}'.ljust(29))
            r = busy.read_response()
            assert r.status == 201 and r.headers["connection"] == "close"
            assert busy.closed_by_peer()
        deadline = time.monotonic() + 2
        while srv.app.api_connections and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not srv.app.api_connections


# --- sans-I/O helpers -----------------------------------------------------------------------

@pytest.mark.parametrize("target, pathname, query", [
    ("/api/routes", "/api/routes", ""),
    ("/api/routes?a=1#frag", "/api/routes", "a=1"),
    ("/api/routes/a/../b", "/api/routes/b", ""),
    ("/api/routes/a/..", "/api/routes/", ""),
    ("/api/routes/.", "/api/routes/", ""),
    ("/api/routes/%2E%2e/x", "/api/x", ""),
    ("/../../api/routes", "/api/routes", ""),
    ("/api\\routes", "/api/routes", ""),
    ("//host/api/routes?q", "/api/routes", "q"),
    ("http://host:1/api/routes/x", "/api/routes/x", ""),
    ("HTTP://host", "/", ""),
    ("*", "/*", ""),
    ("mailto:x", "/x", ""),
    ("/a%2F..%2Fb", "/a%2F..%2Fb", ""),
])
def test_split_target_resolves_like_whatwg_url(target, pathname, query):
    assert split_target(target) == (pathname, query)


@pytest.mark.parametrize("raw, decoded", [
    ("/a%40b", "/a@b"), ("/a%2Fb", "/a/b"), ("/%C3%A9", "/é"), ("/a+b", "/a+b"), ("/plain", "/plain"),
])
def test_decode_uri_component(raw, decoded):
    assert decode_uri_component(raw) == decoded


@pytest.mark.parametrize("raw", ["/%", "/%z1", "/%E0%A4%A", "/%C3", "/%FF"])
def test_decode_uri_component_rejects_malformed_escapes(raw):
    with pytest.raises(InvalidEscape):
        decode_uri_component(raw)


def test_token_check_is_chps_regex_and_disabled_without_a_token():
    assert token_ok(None, None) and token_ok("", b"anything")
    assert token_ok("s3", b"Bearer token s3 trailing")
    assert not token_ok("s3", b"token s3x")
    assert not token_ok("s3", None)
    assert token_ok("zo\u00eb", "token zo\u00eb".encode())


@pytest.mark.parametrize("value, ms", [
    ("1970-01-01", 0), ("1970-01-01T00:00:01Z", 1000), ("1970-01-01T00:00:00.5Z", 500),
    ("1970-01-01T01:00:00+01:00", 0), ("1970-01-01T00:00:00-0030", 1_800_000),
    ("1970", 0), ("1970-02", 31 * 86400 * 1000), ("Thu, 01 Jan 1970 00:00:02 GMT", 2000),
    ("Thu, 01 Jan 1970 02:00:00 +0200", 0),
])
def test_parse_datestamp(value, ms):
    assert parse_datestamp(value) == ms


def test_parse_datestamp_naive_date_time_is_local_time():
    expected = int(time.mktime((2030, 1, 1, 0, 0, 0, 0, 0, -1)) * 1000)
    assert parse_datestamp("2030-01-01T00:00:00") == expected
    assert parse_datestamp("2030-01-01 00:00") == expected


@pytest.mark.parametrize("value", ["", "bogus", "2030-13-01", "2030-02-30", "1e3", "20300101",
                                   "2030-01-01T25:00", "2030-01-01T00:00+24:00", "Jan 1 2030"])
def test_parse_datestamp_rejects(value):
    assert parse_datestamp(value) is None


def test_iso_ms_is_javascripts_to_iso_string():
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"
    assert iso_ms(1577836800.9999) == "2020-01-01T00:00:00.999Z"
    assert iso_ms(1577836800.5) == "2020-01-01T00:00:00.500Z"


def test_js_numbers_normalises_nested_values_without_recursion():
    deep: list = []
    cur = deep
    for _ in range(5000):
        nxt: list = [2.0]
        cur.append(nxt)
        cur = nxt
    js_numbers(deep)
    assert cur == [2] and type(cur[0]) is int
    data = js_numbers({"a": 2.5e10, "b": [1.5, {"c": -0.0}], "d": 2**60 + 1, "e": True})
    assert data == {"a": 25000000000, "b": [1.5, {"c": 0}], "d": 2**60, "e": True}
    assert type(data["a"]) is int and data["e"] is True
