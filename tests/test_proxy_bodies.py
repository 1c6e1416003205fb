"""Bodies, framing and connection reuse through the proxy (reference 4.1, 4.3, 4.4).

Content-Length and chunked bodies both ways (byte-exact), HEAD/204/304, Expect:
100-continue, pipelining, HTTP/1.0 clients, streaming (SSE) without buffering,
backpressure with a slow reader, keep-alive reuse towards the backend.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.support.backends import (
    RawConn,
    body_pattern,
    build_request,
    request,
)
from tests.support.proxy_process import ProxyProcess

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def proxy(backend):
    with ProxyProcess("--default-target", backend.url) as p:
        yield p


def test_one_mib_upload_content_length_byte_exact(proxy):
    data = body_pattern(MiB)
    r = request(proxy.port, "POST", "/up?x-echo-body=1", body=data)
    assert r.status == 200 and r.body == data


def test_one_mib_upload_chunked_byte_exact(proxy, backend):
    data = body_pattern(MiB)
    with RawConn(proxy.port) as c:
        c.send(build_request("PUT", "/up?x-echo-body=1", [("Transfer-Encoding", "chunked")]))
        for i in range(0, len(data), 100_000):
            piece = data[i:i + 100_000]
            c.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        c.send(b"0\r\n\r\n")
        r = c.read_response()
    assert r.body == data
    assert backend.requests[-1].header("transfer-encoding") == "chunked"


@pytest.mark.parametrize("frame", ["length", "chunked", "close"])
def test_one_mib_download_byte_exact(proxy, frame):
    with RawConn(proxy.port) as c:
        c.send(build_request("GET", f"/down?x-body-size={MiB}&x-frame={frame}&x-chunk-size=50000"))
        r = c.read_response()
    assert r.status == 200 and r.body == body_pattern(MiB)
    if frame == "length":
        assert r.header("content-length") == str(MiB)
    else:  # chunked relayed as is; close-delimited re-framed as chunked for HTTP/1.1
        assert r.header("transfer-encoding") == "chunked"


def test_close_delimited_response_to_http10_client_is_close_delimited(proxy):
    with RawConn(proxy.port) as c:
        c.send(b"GET /down?x-body-size=100000&x-frame=close HTTP/1.0\r\nHost: x\r\n\r\n")
        r = c.read_response()
    assert r.header("transfer-encoding") is None and r.body == body_pattern(100000)


def test_chunked_response_to_http10_client_is_decoded(proxy):
    with RawConn(proxy.port) as c:
        c.send(b"GET /down?x-body-size=100000&x-frame=chunked&x-chunk-size=3000 HTTP/1.0\r\n"
               b"Host: x\r\n\r\n")
        r = c.read_response()
    assert r.header("transfer-encoding") is None
    assert r.body == body_pattern(100000)


def test_http10_keep_alive_client_stays_open(proxy):
    with RawConn(proxy.port) as c:
        for _ in range(2):
            c.send(b"GET /k HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
            r = c.read_response()
            assert r.status == 200 and r.header("connection") == "keep-alive"


def test_head_response_has_no_body_and_connection_is_reused(proxy):
    with RawConn(proxy.port) as c:
        c.send(build_request("HEAD", "/h?x-body-size=5000"))
        r = c.read_response("HEAD")
        assert r.status == 200 and r.header("content-length") == "5000"
        c.send(build_request("GET", "/after-head"))
        assert c.read_response().json()["path"] == "/after-head"


@pytest.mark.parametrize("status", [204, 304])
def test_bodyless_statuses(proxy, status):
    with RawConn(proxy.port) as c:
        c.send(build_request("GET", f"/s?x-status={status}&x-frame=chunked"))
        r = c.read_response()
        assert r.status == status and r.body == b""
        c.send(build_request("GET", "/after"))
        assert c.read_response().json()["path"] == "/after"


def test_expect_100_continue_answered_by_proxy_and_forwarded(proxy, backend):
    with RawConn(proxy.port) as c:
        c.send(build_request("POST", "/exp", [("Expect", "100-continue"), ("Content-Length", "5")]))
        interim = c.read_response(skip_interim=False)
        assert interim.status == 100
        c.send(b"hello")
        r = c.read_response()
    d = r.json()
    assert d["body"] == "hello"
    assert ["Expect", "100-continue"] in d["headers"]


def test_three_pipelined_requests_answered_in_order(proxy):
    reqs = b"".join(build_request("GET", f"/p{i}?x-delay={0.05 * (3 - i)}") for i in range(3))
    with RawConn(proxy.port) as c:
        c.send(reqs)
        paths = [c.read_response().json()["path"] for _ in range(3)]
    assert paths == ["/p0", "/p1", "/p2"]


def test_pipelined_post_bodies_stay_separate(proxy):
    reqs = (build_request("POST", "/a", body=b"first") + build_request("POST", "/b", body=b"second")
            + build_request("GET", "/_chp_healthz") + build_request("GET", "/c"))
    with RawConn(proxy.port) as c:
        c.send(reqs)
        bodies = [c.read_response().body for _ in range(4)]
    assert b'"body": "first"' in bodies[0] and b'"body": "second"' in bodies[1]
    assert bodies[2] == b'{"status":"OK"}' and b'"path": "/c"' in bodies[3]


def test_many_pipelined_health_checks_in_one_packet(proxy):
    n = 2000
    with RawConn(proxy.port) as c:
        c.send(build_request("GET", "/_chp_healthz") * n)
        for _ in range(n):
            assert c.read_response().status == 200


def test_backend_sees_one_connection_for_many_requests(backend):
    with ProxyProcess("--default-target", backend.url) as p:
        before = backend.connections
        with RawConn(p.port) as c:
            for i in range(20):
                c.send(build_request("GET", f"/ka{i}"))
                assert c.read_response().status == 200
        for i in range(5):  # separate client connections reuse the pooled connection too
            assert request(p.port, "GET", f"/other{i}").status == 200
        assert backend.connections - before == 1


def test_server_sent_events_arrive_as_produced(proxy):
    with RawConn(proxy.port) as c:
        c.send(build_request("GET", "/sse?x-sse=4&x-chunk-delay=0.4"))
        c.sock.settimeout(5)
        head = c._read_until(b"\r\n\r\n")
        assert b"text/event-stream" in head
        t0 = time.monotonic()
        seen = c.buf
        arrivals = [0.0] * seen.count(b"data: ")
        while len(arrivals) < 4:
            data = c.sock.recv(65536)
            assert data
            seen += data
            while seen.count(b"data: ") > len(arrivals):
                arrivals.append(time.monotonic() - t0)
    # each event arrives before the next one is produced (0.4 s apart at the backend)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert all(g > 0.2 for g in gaps), arrivals


def test_slow_reader_of_huge_response_keeps_proxy_memory_bounded(backend):
    size = 256 * MiB
    with ProxyProcess("--default-target", backend.url) as p:
        base_rss = p.rss_kib()
        s = socket.create_connection(("127.0.0.1", p.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(build_request("GET", f"/huge?x-body-size={size}&x-chunk-size=262144"))
        got = 0
        peak = 0
        deadline = time.monotonic() + 60
        while got < size and time.monotonic() < deadline:
            data = s.recv(1 << 20)
            assert data
            got += len(data)
            if got < 32 * MiB:
                time.sleep(0.002)  # slow at first: the proxy must stop reading the backend
            if got % (8 * MiB) < len(data):
                peak = max(peak, p.rss_kib())
        s.close()
        peak = max(peak, p.rss_kib())
    assert got >= size  # head + body
    assert peak - base_rss < 64 * 1024, (base_rss, peak)



def test_http10_target_status_line_reaches_client_as_http11():
    """Node writes its own status line: a target speaking HTTP/1.0 is relayed as HTTP/1.1."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def answer():
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        conn.close()

    import threading

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        with ProxyProcess("--default-target", f"http://127.0.0.1:{port}") as p:
            with RawConn(p.port) as c:
                c.send(build_request("GET", "/old"))
                raw = c.sock.recv(65536)
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n"), raw
        assert raw.endswith(b"\r\n\r\nok")
    finally:
        t.join(5)
        srv.close()
