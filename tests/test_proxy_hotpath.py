"""The hot path's caches never serve a stale answer.

The proxy caches, per request-target, the matched route and the forwarded path (until
the route table changes), and per (Host, client, TLS, Connection present) the lines it
appends to a request head. These tests send the same request-target again and again on
one keep-alive connection while the table or the headers change, and check that every
request goes where, and carries what, it would without a cache.
"""

from __future__ import annotations

import time

import pytest

from tests.support.backends import RawConn, api, build_request
from tests.support.proxy_process import ProxyProcess


@pytest.fixture(scope="module")
def proxy(backend):
    with ProxyProcess("--default-target", backend.url) as p:
        yield p


def get(conn: RawConn, path: str, headers=None, host: str = "x"):
    conn.send(build_request("GET", path, headers, host=host))
    r = conn.read_response()
    assert r.status in (200, 404), (r.status, r.body[:200])
    return r


def served_by(backend, backend2, before: tuple[int, int]) -> str:
    now = (len(backend.requests), len(backend2.requests))
    delta = (now[0] - before[0], now[1] - before[1])
    assert sum(delta) == 1, delta
    return "backend" if delta[0] else "backend2"


def counts(backend, backend2) -> tuple[int, int]:
    return len(backend.requests), len(backend2.requests)


def test_same_target_follows_route_add_replace_and_delete_at_once(proxy, backend, backend2):
    path = "/cache/follow/me?q=1"
    with RawConn(proxy.port) as c:
        for _ in range(3):  # cached under the root route
            n = counts(backend, backend2)
            assert get(c, path).json()["url"] == path
            assert served_by(backend, backend2, n) == "backend"
        assert api(proxy.api_port, "POST", "/api/routes/cache/follow",
                   {"target": backend2.url + "/t"})[0] == 201
        for _ in range(2):
            n = counts(backend, backend2)
            assert get(c, path).json()["url"] == "/t/cache/follow/me?q=1"
            assert served_by(backend, backend2, n) == "backend2"
        # replaced: same prefix, other target path
        assert api(proxy.api_port, "POST", "/api/routes/cache/follow",
                   {"target": backend2.url + "/u"})[0] == 201
        assert get(c, path).json()["url"] == "/u/cache/follow/me?q=1"
        # a route added elsewhere still invalidates nothing it should not
        assert api(proxy.api_port, "POST", "/api/routes/elsewhere", {"target": backend.url})[0] == 201
        assert get(c, path).json()["url"] == "/u/cache/follow/me?q=1"
        assert api(proxy.api_port, "DELETE", "/api/routes/cache/follow")[0] == 204
        n = counts(backend, backend2)
        assert get(c, path).json()["url"] == path
        assert served_by(backend, backend2, n) == "backend"


def test_deleting_the_only_route_turns_a_cached_target_into_404(backend):
    with ProxyProcess() as p:
        assert api(p.api_port, "POST", "/api/routes/only", {"target": backend.url})[0] == 201
        with RawConn(p.port) as c:
            assert get(c, "/only/x").status == 200
            assert get(c, "/only/x").status == 200
            assert api(p.api_port, "DELETE", "/api/routes/only")[0] == 204
            assert get(c, "/only/x").status == 404


def test_last_activity_moves_for_requests_answered_from_the_cache(proxy, backend):
    assert api(proxy.api_port, "POST", "/api/routes/act", {"target": backend.url})[0] == 201
    with RawConn(proxy.port) as c:
        get(c, "/act/x")
        _, first = api(proxy.api_port, "GET", "/api/routes/act")
        time.sleep(0.01)  # last_activity is rendered with millisecond precision
        get(c, "/act/x")  # same target: a cache hit
        _, second = api(proxy.api_port, "GET", "/api/routes/act")
    assert second["last_activity"] > first["last_activity"]


def test_host_routing_cache_keeps_hosts_apart(backend, backend2):
    with ProxyProcess("--default-target", backend.url, "--host-routing") as p:
        assert api(p.api_port, "POST", "/api/routes/a.example", {"target": backend2.url})[0] == 201
        with RawConn(p.port) as c:
            for host, expect in [("a.example", "backend2"), ("b.example", "backend"),
                                 ("A.Example:80", "backend2"), ("b.example", "backend"),
                                 ("a.example", "backend2")]:
                n = counts(backend, backend2)
                get(c, "/same/path", host=host)
                assert served_by(backend, backend2, n) == expect, host


def test_forwarded_headers_follow_each_request_on_one_connection(proxy):
    with RawConn(proxy.port) as c:
        for host, port in [("one.example:8443", "8443"), ("two.example", "80"),
                           ("one.example:8443", "8443"), ("[::1]:9000", "9000")]:
            h = {k.lower(): v for k, v in get(c, "/xf", host=host).json()["headers"]}
            assert h["x-forwarded-host"] == host
            assert h["x-forwarded-port"] == port
            assert h["x-forwarded-for"] == "127.0.0.1"
            assert h["x-forwarded-proto"] == "http"


def test_connection_line_follows_each_request_on_one_connection(proxy):
    with RawConn(proxy.port) as c:
        for sent in [None, "keep-alive", None, "Keep-Alive, x-custom"]:
            hdrs = [("Connection", sent)] if sent else []
            got = [v for k, v in get(c, "/conn", hdrs).json()["headers"] if k.lower() == "connection"]
            assert got == [sent or "keep-alive"], sent


def test_changed_request_line_is_rebuilt_around_unchanged_fields(proxy, backend2):
    assert api(proxy.api_port, "POST", "/api/routes/rl", {"target": backend2.url + "/base"})[0] == 201
    with RawConn(proxy.port) as c:
        d = get(c, "/rl/p?x=1", [("X-One", "1"), ("x-two", "2")]).json()
    assert d["url"] == "/base/rl/p?x=1"
    assert [tuple(h) for h in d["headers"][:3]] == [("Host", "x"), ("X-One", "1"), ("x-two", "2")]
