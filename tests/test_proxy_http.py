"""The HTTP data path end to end: routing, forwarded paths, request/response headers.

cfproxy runs as a subprocess (tests/support/proxy_process.py) in front of real echo
backends (tests/support/backends.py); reference sections 3, 4.1-4.3, 4.6, 9.2.
"""

from __future__ import annotations

import os
import tempfile
from urllib.parse import quote

import pytest

from tests.support.backends import (
    EchoBackend,
    RawConn,
    api,
    build_request,
    request,
)
from tests.support.proxy_process import ProxyProcess


@pytest.fixture(scope="module")
def proxy(backend):
    with ProxyProcess("--default-target", backend.url) as p:
        yield p


def add_route(proxy, prefix: str, target: str, **extra) -> None:
    status, _ = api(proxy.api_port, "POST", "/api/routes" + prefix, {"target": target, **extra})
    assert status == 201


def echo(resp) -> dict:
    assert resp.status == 200, (resp.status, resp.body[:300])
    return resp.json()


# --- routing (9.2 items 1, 5-10, 14, 15) ---------------------------------------------------

def test_root_request_reaches_default_target(proxy, backend):
    d = echo(request(proxy.port, "GET", "/"))
    assert d["path"] == "/" and d["url"] == "/"


def test_proxied_response_carries_connection_keep_alive(proxy):
    r = request(proxy.port, "GET", "/any")
    assert r.header("connection") == "keep-alive"


def test_missing_date_is_added_to_proxied_response(proxy):
    r = request(proxy.port, "GET", "/any")
    assert r.header("date") and r.header("date").endswith("GMT")


def test_target_path_is_prepended(proxy, backend):
    add_route(proxy, "/bar", backend.url + "/foo")
    assert echo(request(proxy.port, "GET", "/bar/rest/of/it"))["url"] == "/foo/bar/rest/of/it"


def test_query_is_kept_without_extra_slash(proxy, backend):
    add_route(proxy, "/bar", backend.url + "/foo")
    assert echo(request(proxy.port, "GET", "/bar?query=foo"))["url"] == "/foo/bar?query=foo"


def test_encoded_route_matches_and_is_forwarded_encoded(proxy, backend):
    add_route(proxy, "/" + quote("b@r/b r", safe="/"), backend.url + "/foo")
    d = echo(request(proxy.port, "GET", "/b%40r/b%20r/rest/of/it"))
    assert d["url"] == "/foo/b%40r/b%20r/rest/of/it"
    d = echo(request(proxy.port, "GET", "/b@r/b%20r/rest/of/it"))
    assert d["url"] == "/foo/b@r/b%20r/rest/of/it"


def test_longest_segment_prefix_wins(proxy, backend, backend2):
    add_route(proxy, "/seg", backend.url + "/one")
    add_route(proxy, "/seg/deeper", backend2.url + "/two")
    assert echo(request(proxy.port, "GET", "/seg/deeper/x"))["url"] == "/two/seg/deeper/x"
    assert echo(request(proxy.port, "GET", "/seg/deeperx"))["url"] == "/one/seg/deeperx"


def test_target_query_comes_first(proxy, backend):
    add_route(proxy, "/t3", backend.url + "/base?tq=1")
    assert echo(request(proxy.port, "GET", "/t3/a?q=2"))["url"] == "/base/t3/a?tq=1&q=2"


def test_dot_segments_are_resolved_before_routing(proxy, backend):
    add_route(proxy, "/t2", backend.url + "/base")
    assert echo(request(proxy.port, "GET", "/t1/../t2/a"))["url"] == "/base/t2/a"


@pytest.fixture(scope="module", params=[
    ("--no-prepend-path",), ("--no-include-prefix",), ("--no-prepend-path", "--no-include-prefix")])
def flagged_proxy(request, backend):
    with ProxyProcess("--default-target", backend.url, *request.param) as p:
        add_route(p, "/bar", backend.url + "/foo")
        yield request.param, p


def test_prepend_and_include_prefix_flags(flagged_proxy):
    flags, p = flagged_proxy
    expected = {
        ("--no-prepend-path",): "/bar/rest/of/it",
        ("--no-include-prefix",): "/foo/rest/of/it",
        ("--no-prepend-path", "--no-include-prefix"): "/rest/of/it",
    }[flags]
    assert echo(request(p.port, "GET", "/bar/rest/of/it"))["url"] == expected


def test_host_routing_routes_on_host_and_is_case_insensitive(backend, backend2):
    with ProxyProcess("--default-target", backend.url, "--host-routing") as p:
        add_route(p, "/test.localhost.jovyan.org", backend2.url)
        d = echo(request(p.port, "GET", "/some/path", host=f"test.localhost.jovyan.org:{p.port}"))
        assert d["url"] == "/some/path" and d["conn"] and backend2.requests[-1].url == "/some/path"
        n = len(backend2.requests)
        echo(request(p.port, "GET", "/x", host="TEST.localhost.Jovyan.org"))
        assert len(backend2.requests) == n + 1
        # other hosts fall through to the root route
        n = len(backend2.requests)
        echo(request(p.port, "GET", "/x", host="other.example"))
        assert len(backend2.requests) == n


def test_host_routing_with_ipv6_host_header(backend, backend2):
    with ProxyProcess("--default-target", backend.url, "--host-routing") as p:
        add_route(p, "/[::1]", backend2.url)
        n = len(backend2.requests)
        echo(request(p.port, "GET", "/v6", host="[::1]:8000"))
        assert len(backend2.requests) == n + 1


def test_no_route_without_default_is_404_page(backend):
    with ProxyProcess() as p:
        r = request(p.port, "GET", "/nothing/here")
        assert r.status == 404 and b"404:" in r.body
        assert r.header("content-type") == "text/html"


# --- request headers (4.2) -----------------------------------------------------------------

def test_x_forwarded_headers_added(proxy):
    d = echo(request(proxy.port, "GET", "/xf", host="public.example:8443"))
    h = d["headers"]
    names = [k.lower() for k, _ in h]
    assert ["x-forwarded-for", "x-forwarded-port", "x-forwarded-proto", "x-forwarded-host"] == [
        n for n in names if n.startswith("x-forwarded")]
    hd = {k.lower(): v for k, v in h}
    assert hd["x-forwarded-for"] == "127.0.0.1"
    assert hd["x-forwarded-port"] == "8443"
    assert hd["x-forwarded-proto"] == "http"
    assert hd["x-forwarded-host"] == "public.example:8443"


def test_existing_x_forwarded_values_are_appended_in_place(proxy):
    d = echo(request(proxy.port, "GET", "/xf", [
        ("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "orig.example"), ("X-Other", "1")], host="h:81"))
    h = d["headers"]
    assert h[1] == ["X-Forwarded-For", "10.0.0.1,127.0.0.1"]
    assert h[2] == ["X-Forwarded-Proto", "https,http"]
    assert h[3] == ["X-Forwarded-Host", "orig.example"]  # kept, not appended
    hd = {k.lower(): v for k, v in h}
    assert hd["x-forwarded-port"] == "81"


def test_x_forwarded_port_defaults_and_ipv6_host(proxy):
    hd = {k.lower(): v for k, v in echo(request(proxy.port, "GET", "/xf", host="plain"))["headers"]}
    assert hd["x-forwarded-port"] == "80"
    hd = {k.lower(): v for k, v in echo(request(proxy.port, "GET", "/xf", host="[::1]:9000"))["headers"]}
    assert hd["x-forwarded-port"] == "9000"  # Q17 fixed (CHP says "1")


def test_no_x_forward_adds_nothing(backend):
    with ProxyProcess("--default-target", backend.url, "--no-x-forward") as p:
        d = echo(request(p.port, "GET", "/", [("X-Forwarded-For", "1.2.3.4")]))
        assert [v for k, v in d["headers"] if k.lower().startswith("x-forwarded")] == ["1.2.3.4"]


def test_client_headers_forwarded_as_received_in_order(proxy):
    sent = [("X-B", "2"), ("x-a", "1"), ("X-Dup", "a"), ("X-Dup", "b"), ("Cookie", "a=1"),
            ("Cookie", "b=2"), ("Keep-Alive", "timeout=5"), ("TE", "trailers")]
    d = echo(request(proxy.port, "GET", "/h", sent))
    got = [tuple(x) for x in d["headers"]]
    assert got[0] == ("Host", "x")
    assert got[1:1 + len(sent)] == sent


def test_trailer_header_is_stripped(proxy):
    d = echo(request(proxy.port, "GET", "/h", [("Trailer", "X-Foo"), ("X-Keep", "1")]))
    names = [k.lower() for k, _ in d["headers"]]
    assert "trailer" not in names and "x-keep" in names


def test_connection_keep_alive_added_only_when_client_sent_none(proxy):
    d = echo(request(proxy.port, "GET", "/h"))
    assert ["Connection", "keep-alive"] in d["headers"]
    with RawConn(proxy.port) as c:
        c.send(build_request("GET", "/h", [("Connection", "keep-alive, x-hop")]))
        d = c.read_response().json()
    assert [v for k, v in d["headers"] if k.lower() == "connection"] == ["keep-alive, x-hop"]


def test_a_clients_connection_close_is_not_forwarded(proxy):
    # Q23: it ends the client hop only; the target sees keep-alive, the client's
    # connection closes after the answer
    with RawConn(proxy.port) as c:
        c.send(build_request("GET", "/h", [("Connection", "close")]))
        r = c.read_response()
        assert r.header("connection") == "close" and c.closed_by_peer()
    d = r.json()
    assert [v for k, v in d["headers"] if k.lower() == "connection"] == ["keep-alive"]


def test_delete_and_options_without_body_get_content_length_zero(proxy):
    for m in ("DELETE", "OPTIONS"):
        d = echo(request(proxy.port, m, "/h"))
        assert ["content-length", "0"] in d["headers"], m
    d = echo(request(proxy.port, "GET", "/h"))
    assert not [k for k, _ in d["headers"] if k.lower() == "content-length"]


def test_http10_client_without_host_gets_target_host(proxy, backend):
    with RawConn(proxy.port) as c:
        c.send(b"GET /old HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert c.closed_by_peer()
    d = r.json()
    assert ["Host", f"127.0.0.1:{backend.port}"] in d["headers"]
    assert d["version"] == "HTTP/1.1"  # always HTTP/1.1 upstream
    assert r.header("connection") == "close"


def test_custom_headers_replace_in_place_and_append(backend):
    with ProxyProcess("--default-target", backend.url, "--custom-header", "k1: v1",
                      "--custom-header", " k2 : host:123 ", "--custom-header",
                      "X-Forwarded-Proto: custom") as p:
        d = echo(request(p.port, "GET", "/", [("K1", "client"), ("X-Other", "o")]))
    h = [tuple(x) for x in d["headers"]]
    assert h[1] == ("k1", "v1")  # replaced in place, custom spelling
    assert ("k2", "host:123") in h
    xfp = [v for k, v in h if k.lower() == "x-forwarded-proto"]
    assert xfp == ["custom"]


def test_change_origin_sets_host_to_target(backend):
    with ProxyProcess("--default-target", backend.url, "--change-origin",
                      "--custom-header", "Host: custom.example") as p:
        d = echo(request(p.port, "GET", "/", host="public.example"))
    hosts = [v for k, v in d["headers"] if k.lower() == "host"]
    assert hosts == [f"127.0.0.1:{backend.port}"]
    assert [v for k, v in d["headers"] if k.lower() == "x-forwarded-host"] == ["public.example"]


# --- response relay (4.3, 4.6) -------------------------------------------------------------

def test_response_headers_and_status_relayed_as_received(proxy):
    r = request(proxy.port, "GET", "/r?x-status=201&x-reason=Made%20It&x-header=X-Dup:%201")
    assert r.status == 201 and r.reason == "Made It"
    assert r.header("x-dup") == "1"


def test_upstream_connection_close_is_relayed_and_closes_client(proxy):
    with RawConn(proxy.port) as c:
        c.send(build_request("GET", "/r?x-connection=close"))
        r = c.read_response()
        assert r.header("connection") == "close"
        assert c.closed_by_peer()


REWRITE_CASES = [
    # (flags, status, location from upstream (format with backend port), expected (proxy port))
    ((), 301, "http://foo.com:12345/whatever", "http://foo.com:12345/whatever"),
    (("--auto-rewrite",), 302, "http://127.0.0.1:{b}/foo?x=1", "http://public.example:8443/foo?x=1"),
    (("--protocol-rewrite", "https"), 307, "http://127.0.0.1:{b}/foo?x=1",
     "https://127.0.0.1:{b}/foo?x=1"),
    (("--auto-rewrite", "--protocol-rewrite", "https"), 308, "http://127.0.0.1:{b}/foo?x=1",
     "https://public.example:8443/foo?x=1"),
    (("--auto-rewrite",), 201, "https://127.0.0.1:{b}/s", "https://public.example:8443/s"),
    (("--auto-rewrite",), 303, "http://127.0.0.1:{b}/s", "http://127.0.0.1:{b}/s"),
    (("--auto-rewrite",), 301, "/rel/path", "/rel/path"),
    (("--auto-rewrite",), 301, "http://other.host/foo", "http://other.host/foo"),
]


@pytest.mark.parametrize("flags", sorted({c[0] for c in REWRITE_CASES}))
def test_location_rewriting_table(backend, flags):
    with ProxyProcess("--default-target", backend.url, *flags) as p:
        for f, status, loc, expected in REWRITE_CASES:
            if f != flags:
                continue
            loc = loc.format(b=backend.port)
            r = request(p.port, "GET", f"/loc?x-status={status}&x-location={quote(loc, safe='')}",
                        host="public.example:8443")
            assert r.status == status
            assert r.header("location") == expected.format(b=backend.port), (flags, status, loc)


def test_auto_rewrite_with_protocol_rewrite_uses_proxy_host(backend):
    # 9.2 item 22: https://127.0.0.1:<backend>/whatever -> https://127.0.0.1:<proxy>/whatever
    with ProxyProcess("--default-target", backend.url, "--auto-rewrite",
                      "--protocol-rewrite", "https") as p:
        loc = quote(f"https://127.0.0.1:{backend.port}/whatever", safe="")
        r = request(p.port, "GET", f"/?x-status=301&x-location={loc}", host=f"127.0.0.1:{p.port}")
        assert r.header("location") == f"https://127.0.0.1:{p.port}/whatever"


# --- health check (3.5) --------------------------------------------------------------------

def test_health_check_answers_without_proxying(proxy, backend):
    n = len(backend.requests)
    r = request(proxy.port, "GET", "/_chp_healthz")
    assert r.status == 200 and r.json() == {"status": "OK"}
    assert r.header("content-type") == "application/json"
    assert len(backend.requests) == n


def test_health_check_with_query_is_routed(proxy, backend):
    n = len(backend.requests)
    echo(request(proxy.port, "GET", "/_chp_healthz?x=1"))
    assert len(backend.requests) == n + 1


# --- Unix sockets (9.2 items 26, 27) -------------------------------------------------------

def test_unix_socket_target(proxy):
    d = tempfile.mkdtemp()
    with EchoBackend(unix_path=os.path.join(d, "b.sock")) as ub:
        add_route(proxy, "/unix", ub.url + "/pre")
        assert echo(request(proxy.port, "GET", "/unix/a"))["url"] == "/pre/unix/a"
        assert echo(request(proxy.port, "GET", "/unix/b"))["url"] == "/pre/unix/b"
        assert ub.connections == 1  # pooled


def test_public_unix_socket_listener_omits_x_forwarded_for(backend):
    d = tempfile.mkdtemp()
    sock = os.path.join(d, "public.sock")
    with ProxyProcess("--socket", sock, "--default-target", backend.url):
        with RawConn(unix_path=sock) as c:
            c.send(build_request("GET", "/via-unix"))
            d = c.read_response().json()
    names = [k.lower() for k, _ in d["headers"]]
    assert "x-forwarded-for" not in names  # Q17 fixed: CHP sends "undefined"
    assert "x-forwarded-proto" in names
