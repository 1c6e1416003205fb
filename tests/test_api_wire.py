"""REST API: bad input and the wire (bodies, size caps, pipelining, broken HTTP), host routing,
and stores other than the default — through real sockets against `python -m cfproxy`."""

from __future__ import annotations

import socket
import time

import orjson
import pytest

from tests.api_client import Conn, build, call, post
from tests.support.proxy_process import ProxyProcess

DEFAULT = "http://127.0.0.1:9"
T = "http://127.0.0.1:9100"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def px():
    with ProxyProcess("--default-target", DEFAULT) as p:
        yield p


@pytest.fixture(scope="module")
def api(px) -> int:
    return px.api_port


def keys(api: int) -> set[str]:
    return set(call(api, "GET", "/api/routes").json())


# --- bad bodies -----------------------------------------------------------------------------

@pytest.mark.parametrize("body", [b"{not json", b"", b"{'target': 'x'}", b'{"target": "x",}',
                                  b"\xff\xfe{", b'{"target": NaN}', b"[1, 2"])
def test_invalid_json_is_400_body_not_valid_json(api, body):
    r = call(api, "POST", "/api/routes/bad/json", body)
    assert r.status == 400
    assert r.text.startswith("Body not valid JSON: ")
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert "/bad/json" not in keys(api)


@pytest.mark.parametrize("body", [b"null", b"0", b"false", b'""', b"[]", b"{}", b"5", b'"http://x"',
                                  b'[{"target": "http://127.0.0.1:1"}]', b'{"target": 5}',
                                  b'{"target": null}', b'{"target": ["http://x"]}',
                                  b'{"target": {"url": "http://x"}}', b'{"Target": "http://x"}', b"true"])
def test_non_object_or_missing_string_target_is_400_must_specify_target(api, body):
    r = call(api, "POST", "/api/routes/bad/target", body)
    assert r.status == 400
    assert r.text == "Must specify 'target' as string"
    assert "/bad/target" not in keys(api)


@pytest.mark.parametrize("target, words", [
    ("ftp://127.0.0.1/x", ["ftp:"]), ("not a url", ["whitespace"]), ("nourl", ["(none)"]), ("javascript:alert(1)", ["javascript:"]),
    ("", ["non-empty"]), ("ws://127.0.0.1:1", ["ws:"]), ("http://", ["no host"]),
    ("http://127.0.0.1:99999", ["99999"]), ("http+unix://", ["socket path"]),
])
def test_unreachable_target_is_400_naming_the_problem_and_not_stored(api, target, words):
    post(api, "/api/routes/bad/scheme", {"target": T})
    r = post(api, "/api/routes/bad/scheme", {"target": target})
    assert r.status == 400
    assert r.text.startswith("Bad target: ")
    for w in words:
        assert w in r.text
    # the previous route is untouched
    assert call(api, "GET", "/api/routes/bad/scheme").json()["target"] == T


def test_too_deeply_nested_body_is_refused_not_stored(api):
    body = b'{"target": "' + T.encode() + b'", "deep": ' + b"[" * 600 + b"]" * 600 + b"}"
    r = call(api, "POST", "/api/routes/bad/deep", body)
    assert r.status == 400
    assert call(api, "GET", "/api/routes").status == 200  # the list still renders


def test_multibyte_utf8_split_anywhere_is_decoded_whole(api):
    # CHP decodes chunk by chunk and corrupts a character split across reads
    name = "zoë-日本-🙂" * 200
    body = orjson.dumps({"target": T, "name": name})
    with Conn(api) as c:
        head = build("POST", "/api/routes/utf8/split", body)
        split = len(head) - len(body) + body.index("日".encode()) + 1
        c.send(head[:split])
        time.sleep(0.05)
        c.send(head[split:])
        assert c.read_response().status == 201
    assert call(api, "GET", "/api/routes/utf8/split").json()["name"] == name


def test_invalid_utf8_in_body_is_replaced_not_fatal(api):
    body = b'{"target": "' + T.encode() + b'", "s": "a\xffb"}'
    assert call(api, "POST", "/api/routes/utf8/invalid", body).status == 201
    assert call(api, "GET", "/api/routes/utf8/invalid").json()["s"] == "a\ufffdb"


# --- body size cap (1 MiB) ------------------------------------------------------------------

def test_body_of_exactly_one_mib_is_accepted(api):
    pad = MIB - len(b'{"target": "' + T.encode() + b'", "pad": ""}')
    body = b'{"target": "' + T.encode() + b'", "pad": "' + b"x" * pad + b'"}'
    assert len(body) == MIB
    assert call(api, "POST", "/api/routes/size/ok", body).status == 201
    assert "/size/ok" in keys(api)


def test_content_length_over_one_mib_is_413_before_reading_and_table_unchanged(api):
    before = keys(api)
    with Conn(api) as c:
        c.send(build("POST", "/api/routes/size/big", None,
                     headers={"Content-Length": str(50 * MIB)}) + b'{"target": "' + T.encode())
        r = c.read_response()
        assert r.status == 413
        assert "1048576" in r.text
        assert r.headers["connection"] == "close"
        assert c.closed_by_peer()
    assert keys(api) == before


def test_chunked_body_over_one_mib_is_413_and_table_unchanged(api):
    before = keys(api)
    with Conn(api) as c:
        c.send(build("POST", "/api/routes/size/chunked", None,
                     headers={"Transfer-Encoding": "chunked"}))
        chunk = b"x" * 65536
        r = None
        for _ in range(40):  # 2.5 MiB at most
            try:
                c.send(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            c.sock.settimeout(0.01)
            try:
                data = c.sock.recv(65536)
                c.buf += data
                if b"\r\n\r\n" in c.buf:
                    break
            except TimeoutError:
                pass
        c.sock.settimeout(10)
        r = c.read_response()
        assert r.status == 413
    assert keys(api) == before


def test_chunked_body_under_the_cap_is_accepted(api):
    body = orjson.dumps({"target": T})
    with Conn(api) as c:
        c.send(build("POST", "/api/routes/size/chunked-ok", None, headers={"Transfer-Encoding": "chunked"})
               + b"%x\r\n" % 5 + body[:5] + b"\r\n" + b"%x\r\n" % (len(body) - 5) + body[5:] + b"\r\n0\r\n\r\n")
        assert c.read_response().status == 201
        c.send(build("GET", "/api/routes/size/chunked-ok"))
        assert c.read_response().status == 200


def test_unauthenticated_huge_body_gets_403_without_the_body_being_read(api):
    with Conn(api) as c:
        c.send(build("POST", "/api/routes/unauth/huge", None, token="wrong",
                     headers={"Content-Length": str(100 * MIB)}) + b"x" * 65536)
        t0 = time.monotonic()
        r = c.read_response()
        assert r.status == 403
        assert r.headers["connection"] == "close"
        assert c.closed_by_peer()
        assert time.monotonic() - t0 < 5
    assert "/unauth/huge" not in keys(api)


def test_unauthenticated_request_with_complete_small_body_keeps_the_connection(api):
    with Conn(api) as c:
        c.send(build("POST", "/api/routes/unauth/small", b'{"target": "http://127.0.0.1:1"}', token="wrong"))
        assert c.read_response().status == 403
        c.send(build("GET", "/api/routes/unauth/small"))
        assert c.read_response().status == 404


def test_expect_100_continue_gets_continue_then_the_answer(api):
    body = orjson.dumps({"target": T})
    with Conn(api) as c:
        c.send(build("POST", "/api/routes/expect/ok", None,
                     headers={"Expect": "100-continue", "Content-Length": str(len(body))}))
        interim = c.read_response()
        assert interim.status == 100
        c.send(body)
        assert c.read_response().status == 201


def test_expect_100_continue_without_token_is_refused_before_the_body(api):
    with Conn(api) as c:
        c.send(build("POST", "/api/routes/expect/no", None, token=None,
                     headers={"Expect": "100-continue", "Content-Length": "10"}))
        assert c.read_response().status == 403


# --- keep-alive, pipelining, broken HTTP ----------------------------------------------------

def test_pipelined_requests_on_one_connection_are_answered_in_order(api):
    reqs = [
        build("POST", "/api/routes/pipe/a", orjson.dumps({"target": T})),
        build("GET", "/api/routes/pipe/a"),
        build("PUT", "/api/routes/pipe/a"),
        build("GET", "/nope"),
        build("POST", "/api/routes/pipe/a", b"{bad"),
        build("GET", "/api/routes/pipe/a", token="wrong"),
        build("DELETE", "/api/routes/pipe/a"),
        build("GET", "/api/routes/pipe/a"),
    ]
    with Conn(api) as c:
        c.send(b"".join(reqs))
        statuses = [c.read_response().status for _ in reqs]
    assert statuses == [201, 200, 405, 404, 400, 403, 204, 404]


def test_many_pipelined_requests_do_not_exhaust_the_server(api):
    n = 2000
    with Conn(api, timeout=30) as c:
        c.send(build("GET", "/api/routes/pipe/none") * n)
        statuses = {c.read_response().status for _ in range(n)}
    assert statuses == {404}


def test_http_1_0_request_is_answered_and_closed(api):
    with Conn(api) as c:
        c.send(build("GET", "/api/routes", version="1.0"))
        r = c.read_response()
        assert r.status == 200 and "/" in r.json()
        assert c.closed_by_peer()


def test_connection_close_request_is_honoured(api):
    with Conn(api) as c:
        c.send(build("GET", "/api/routes", headers={"Connection": "close"}))
        assert c.read_response().status == 200
        assert c.closed_by_peer()


@pytest.mark.parametrize("raw", [
    b"garbage\r\n\r\n",
    b"GET /api/routes HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /api/routes HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"POST /api/routes/x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET /api/routes/\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api/routes HTTP/1.1\r\n" + b"X-Long: " + b"a" * 70000 + b"\r\n\r\n",
])
def test_malformed_http_gets_4xx_and_a_closed_connection(api, raw):
    with Conn(api) as c:
        c.send(raw)
        r = c.read_response()
        assert 400 <= r.status < 500
        assert c.closed_by_peer()
    assert call(api, "GET", "/api/routes").status == 200  # the server is fine


def test_client_closing_mid_body_does_not_disturb_the_server(api):
    for _ in range(20):
        with Conn(api) as c:
            c.send(build("POST", "/api/routes/abort/x", None, headers={"Content-Length": "1000"}) + b'{"tar')
    assert "/abort/x" not in keys(api)
    assert call(api, "GET", "/api/routes").status == 200


def test_half_closed_client_still_gets_its_answer(api):
    with Conn(api) as c:
        c.send(build("GET", "/api/routes"))
        c.sock.shutdown(socket.SHUT_WR)
        assert c.read_response().status == 200


def test_api_connections_do_not_leak_file_descriptors(px):
    api = px.api_port
    call(api, "GET", "/api/routes")
    time.sleep(0.2)
    before = px.open_fds()
    for i in range(50):
        with Conn(api) as c:
            c.send(build("GET", "/api/routes", headers={"Connection": "close"}))
            c.read_response()
        with Conn(api) as c:  # abandoned mid-request
            c.send(b"POST /api/routes/x HTTP/1.1\r\nContent-Length: 10\r\n\r\n" if i % 2 else b"GE")
    deadline = time.monotonic() + 5
    while px.open_fds() > before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert px.open_fds() <= before + 2


# --- host routing ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def host_api():
    with ProxyProcess("--default-target", DEFAULT, "--host-routing") as p:
        yield p.api_port


def test_host_routing_adds_the_host_field_after_the_body_keys(host_api):
    body = b'{"target": "' + T.encode() + b'", "user": "u"}'
    assert call(host_api, "POST", "/api/routes/Example.COM/user/u", body).status == 201
    data = call(host_api, "GET", "/api/routes/Example.COM/user/u").json()
    assert list(data) == ["target", "user", "host", "last_activity"]
    assert data["host"] == "Example.COM"


def test_host_routing_overwrites_a_posted_host_in_place(host_api):
    body = b'{"host": "evil.example", "target": "' + T.encode() + b'"}'
    call(host_api, "POST", "/api/routes/good.example", body)
    data = call(host_api, "GET", "/api/routes/good.example").json()
    assert list(data) == ["host", "target", "last_activity"]
    assert data["host"] == "good.example"


def test_host_routing_root_route_gets_no_host(host_api):
    assert "host" not in call(host_api, "GET", "/api/routes/").json()["/"]


def test_host_routing_host_case_differences_name_one_route(host_api):
    post(host_api, "/api/routes/Case.Example/x", {"target": T})
    assert call(host_api, "GET", "/api/routes/case.example/x").status == 200
    assert call(host_api, "DELETE", "/api/routes/CASE.EXAMPLE/x").status == 204
    assert call(host_api, "GET", "/api/routes/Case.Example/x").status == 404


# --- other stores ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dict_store_api():
    with ProxyProcess("--default-target", DEFAULT, "--storage-backend", "tests.test_store:DictStore") as p:
        yield p.api_port


def test_third_party_store_serves_the_whole_api(dict_store_api):
    api = dict_store_api
    data = call(api, "GET", "/api/routes").json()
    assert data["/"]["target"] == DEFAULT
    assert post(api, "/api/routes/store/a", {"target": T, "x": 1}).status == 201
    got = call(api, "GET", "/api/routes/store/a").json()
    assert got["x"] == 1 and got["last_activity"].endswith("Z")
    assert "/store/a" in call(api, "GET", "/api/routes").json()
    assert call(api, "GET", "/api/routes?inactive_since=1970-01-02").json() == {}
    assert call(api, "DELETE", "/api/routes/store/a").status == 204
    assert call(api, "DELETE", "/api/routes/store/a").status == 404


@pytest.fixture(scope="module")
def failing_store():
    with ProxyProcess("--default-target", DEFAULT, "--storage-backend",
                      "tests.test_store:FailingStore", wait=False) as p:
        p.wait_ready()
        yield p


def test_store_exception_is_500_with_text_and_an_error_log_not_a_hang(failing_store):
    api = failing_store.api_port
    # reads come from memory: a broken store does not stop them
    assert call(api, "GET", "/api/routes").status == 200
    for method, path, body in [("POST", "/api/routes/x", orjson.dumps({"target": T})),
                               ("DELETE", "/api/routes/x", None)]:
        r = call(api, method, path, body)
        assert r.status == 500
        assert r.text.startswith("Internal Server Error")
    out = failing_store.wait_for_output("Error in handler for DELETE /api/routes/x: store is down")
    assert "error: 500 POST /api/routes/x" in out
    assert call(api, "GET", "/api/routes/x").status == 404  # the refused write is not routed
    with Conn(api) as c:  # the connection is still usable after a 500
        c.send(build("DELETE", "/api/routes/none"))
        assert c.read_response().status == 500
        c.send(build("PUT", "/api/routes/none"))
        assert c.read_response().status == 405


# --- API writes reach the proxy at once (9.1 #1-3, #8) ----------------------------------------

@pytest.fixture(scope="module")
def routed():
    from tests.support.backends import EchoBackend

    with EchoBackend() as a, EchoBackend() as b:
        with ProxyProcess("--default-target", a.url, "--host-routing") as p:
            yield p, a, b


def test_api_routes_are_used_by_the_proxy_immediately_and_deletes_stop_them(routed):
    from tests.support.backends import request

    p, default, other = routed
    r = request(p.port, "GET", "/any/random/url", host="www.example")
    assert r.status == 200 and r.json()["url"] == "/any/random/url"
    assert len(default.requests) >= 1
    assert post(p.api_port, "/api/routes/Hub.Example/user/foo%40bar", {"target": other.url}).status == 201
    n = len(other.requests)
    r = request(p.port, "GET", "/user/foo@bar/path", host="hub.example")
    assert r.status == 200 and len(other.requests) == n + 1
    r = request(p.port, "GET", "/user/foo%40bar/path", host="HUB.EXAMPLE:8000")
    assert r.status == 200 and len(other.requests) == n + 2
    assert call(p.api_port, "DELETE", "/api/routes/hub.example/user/foo@bar").status == 204
    r = request(p.port, "GET", "/user/foo@bar/path", host="hub.example")
    assert r.status == 200 and len(other.requests) == n + 2  # back on the default route
