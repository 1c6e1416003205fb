"""Proxy-generated errors, upstream failures and timeouts (reference 4.7, 4.8, 5; Q14).

Every failure class of the upstream matrix answered as CHP does (503 + log line), the
error-target / error-path / built-in pages, --proxy-timeout, --timeout,
--keep-alive-timeout, and no file descriptor left behind when peers vanish.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from urllib.parse import quote

import pytest

from tests.support.backends import (
    ErrorPageBackend,
    RawConn,
    api,
    build_request,
    request,
    wait_until,
)
from tests.support.proxy_process import ProxyProcess, free_port


@pytest.fixture(scope="module")
def proxy(backend):
    with ProxyProcess("--default-target", backend.url, "--log-level", "debug") as p:
        yield p


def add_route(p, prefix: str, target: str) -> None:
    assert api(p.api_port, "POST", "/api/routes" + prefix, {"target": target})[0] == 201


# --- upstream failure matrix (4.8) ---------------------------------------------------------

def test_refused_target_is_503_page_with_log_line(proxy):
    port = free_port()
    add_route(proxy, "/refused", f"http://127.0.0.1:{port}")
    r = request(proxy.port, "GET", "/refused/x?q=1")
    assert r.status == 503 and b"503:" in r.body and r.header("content-type") == "text/html"
    proxy.wait_for_output(f"503 GET /refused/x connect ECONNREFUSED 127.0.0.1:{port}")


@pytest.mark.parametrize("action", ["close", "reset"])
def test_target_gone_without_response_is_503(proxy, action):
    r = request(proxy.port, "GET", f"/gone-{action}?x-action={action}")
    assert r.status == 503
    word = "socket hang up" if action == "close" else "ECONNRESET"
    proxy.wait_for_output(f"503 GET /gone-{action} ")
    assert word in proxy.output().split(f"503 GET /gone-{action} ")[1].splitlines()[0]


def test_missing_unix_socket_target_is_503(proxy):
    path = os.path.join(tempfile.mkdtemp(), "nothing.sock")
    add_route(proxy, "/nounix", "http+unix://" + quote(path, safe=""))
    assert request(proxy.port, "GET", "/nounix").status == 503
    proxy.wait_for_output(f"503 GET /nounix Error: connect ENOENT {path}")


def test_target_reset_after_head_aborts_client_at_once(proxy):
    # Q14 fixed: CHP leaves the client hanging; we close so the client sees the truncation
    with RawConn(proxy.port) as c:
        c.send(build_request("GET", "/trunc?x-body-size=100000&x-action=reset-after-headers"))
        t0 = time.monotonic()
        with pytest.raises(ConnectionError):
            c.read_response()
        assert time.monotonic() - t0 < 3


def test_error_is_counted_and_connection_stays_usable(proxy):
    with RawConn(proxy.port) as c:
        c.send(build_request("GET", "/gone?x-action=close"))
        assert c.read_response().status == 503
        c.send(build_request("GET", "/fine"))
        assert c.read_response().status == 200


def test_malformed_escape_is_400(proxy):
    # Q26 fixed: a malformed percent-escape is the client's error (CHP answers 500)
    r = request(proxy.port, "GET", "/t1/%zz")
    assert r.status == 400 and r.reason == "Bad Request" and b"Proxy Error" in r.body
    proxy.wait_for_output("400 GET /t1/%zz")


def test_no_route_logs_404_with_trailing_space(backend):
    with ProxyProcess() as p:
        assert request(p.port, "GET", "/nope?x=1").status == 404
        p.wait_for_output("404 GET /nope \n")


# --- timeouts (4.7) ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def timeout_proxy(backend):
    with ProxyProcess("--default-target", backend.url, "--proxy-timeout", "300",
                      "--timeout", "1500", "--keep-alive-timeout", "400",
                      "--header-timeout", "500") as p:
        yield p


def test_proxy_timeout_answers_503_socket_hang_up(timeout_proxy):
    t0 = time.monotonic()
    r = request(timeout_proxy.port, "GET", "/slow?x-delay=2")
    assert r.status == 503 and time.monotonic() - t0 < 1.5
    timeout_proxy.wait_for_output("503 GET /slow socket hang up")


def test_timeout_closes_client_without_response(backend):
    with ProxyProcess("--default-target", backend.url, "--timeout", "300") as p:
        with RawConn(p.port) as c:
            c.send(build_request("GET", "/hang?x-delay=3"))
            t0 = time.monotonic()
            assert c.closed_by_peer(timeout=2.5)
            assert c.buf == b"" and time.monotonic() - t0 < 2
        # a streaming response that keeps moving is not cut by the inactivity timeout
        r = request(p.port, "GET", "/stream?x-body-size=5000&x-chunk-size=1000&x-chunk-delay=0.1")
        assert r.status == 200 and len(r.body) == 5000


def test_keep_alive_timeout_closes_idle_connection(timeout_proxy):
    with RawConn(timeout_proxy.port) as c:
        c.send(build_request("GET", "/ka"))
        assert c.read_response().status == 200
        t0 = time.monotonic()
        assert c.closed_by_peer(timeout=3)
        assert 0.2 < time.monotonic() - t0 < 2


def test_trickled_head_is_cut_off_by_header_timeout(timeout_proxy, backend):
    n = len(backend.requests)
    with RawConn(timeout_proxy.port) as c:
        t0 = time.monotonic()
        c.send(b"GET /trickle HTTP/1.1\r\n")
        closed = False
        for _ in range(20):
            try:
                c.send(b"X-A: b\r\n")
            except OSError:
                closed = True
                break
            time.sleep(0.1)
            if time.monotonic() - t0 > 1.5:
                break
        if not closed:
            r = c.read_response()
            assert r.status == 408
    assert time.monotonic() - t0 < 2
    assert len(backend.requests) == n


# --- error pages (5.2-5.5) -----------------------------------------------------------------

@pytest.fixture(scope="module")
def error_backend():
    with ErrorPageBackend() as b:
        yield b


def test_error_target_404_copies_content_type_and_body(error_backend):
    with ProxyProcess("--error-target", error_backend.url) as p:
        r = request(p.port, "GET", "/foo/bar")
        assert r.status == 404 and r.header("content-type") == "text/plain"
        assert r.body == b"/foo/bar"
        assert error_backend.requests[-1].url == "/404?url=%2Ffoo%2Fbar"
        got = error_backend.requests[-1]
        assert not any(k.lower().startswith("x-forwarded") for k, _ in got.headers)


def test_error_target_500_and_form_encoding(error_backend):
    with ProxyProcess("--error-target", error_backend.url + "/hub/error") as p:
        r = request(p.port, "GET", "/%")  # a malformed escape: 400 (Q26; CHP 500)
        assert r.status == 400 and r.body == b"/%"
        assert error_backend.requests[-1].url == "/hub/error/400?url=%2F%25"
        r = request(p.port, "GET", "/no/route?a=b&c=%20d")
        assert error_backend.requests[-1].url == (
            "/hub/error/404?url=%2Fno%2Froute%3Fa%3Db%26c%3D%2520d")


def test_error_target_for_dead_route_is_503(error_backend):
    with ProxyProcess("--error-target", error_backend.url) as p:
        add_route(p, "/dead", f"http://127.0.0.1:{free_port()}")
        r = request(p.port, "GET", "/dead/x")
        assert r.status == 503 and r.body == b"/dead/x"


def test_error_target_over_unix_socket():
    path = os.path.join(tempfile.mkdtemp(), "err.sock")
    with ErrorPageBackend(unix_path=path) as eb, ProxyProcess("--error-target", eb.url) as p:
        r = request(p.port, "GET", "/foo/bar")
        assert r.status == 404 and r.body == b"/foo/bar"


def test_unreachable_error_target_falls_back_to_reason_phrase():
    with ProxyProcess("--error-target", f"http://127.0.0.1:{free_port()}") as p:
        r = request(p.port, "GET", "/x")
        assert r.status == 404 and r.body == b"Not Found"
        p.wait_for_output("Failed to get custom error page")


def test_error_path_pages_and_fallback_order(tmp_path):
    (tmp_path / "404.html").write_text("<p>404'D</p>")
    (tmp_path / "error.html").write_text("<p>UNKNOWN ERROR</p>")
    with ProxyProcess("--error-path", str(tmp_path)) as p:
        r = request(p.port, "GET", "/nope")
        assert r.status == 404 and b"404'D" in r.body and r.header("content-type") == "text/html"
        add_route(p, "/dead", f"http://127.0.0.1:{free_port()}")
        r = request(p.port, "GET", "/dead")
        assert r.status == 503 and b"UNKNOWN" in r.body


def test_error_path_without_files_uses_reason_phrase(tmp_path):
    with ProxyProcess("--error-path", str(tmp_path)) as p:
        r = request(p.port, "GET", "/nope")
        assert r.status == 404 and r.body == b"Not Found"
        assert r.header("content-type") is None
        p.wait_for_output("No error file")


def test_builtin_pages(backend):
    with ProxyProcess() as p:
        r = request(p.port, "GET", "/nope")
        assert r.status == 404 and b"404:" in r.body and r.header("content-type") == "text/html"
        add_route(p, "/dead", f"http://127.0.0.1:{free_port()}")
        r = request(p.port, "GET", "/dead")
        assert r.status == 503 and b"503:" in r.body and r.header("content-type") == "text/html"


# --- no leaks when peers vanish ------------------------------------------------------------

def test_vanishing_clients_and_backends_leave_no_file_descriptors(backend):
    with ProxyProcess("--default-target", backend.url) as p:
        assert request(p.port, "GET", "/warm").status == 200
        time.sleep(0.2)
        baseline = p.open_fds()
        for i in range(10):
            # client vanishes mid-head, mid-body, and while the backend is still working
            s = socket.create_connection(("127.0.0.1", p.port))
            s.sendall(b"GET /half HTTP/1.1\r\nHost: x\r\n")
            s.close()
            s = socket.create_connection(("127.0.0.1", p.port))
            s.sendall(build_request("POST", "/body", [("Content-Length", "100000")]) + b"x" * 500)
            s.close()
            s = socket.create_connection(("127.0.0.1", p.port))
            s.sendall(build_request("GET", f"/hang{i}?x-action=hang"))
            time.sleep(0.02)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
            # backends vanish before and after the response head
            assert request(p.port, "GET", "/gone?x-action=reset").status == 503
            with RawConn(p.port) as c:
                c.send(build_request("GET", "/t?x-body-size=50000&x-action=reset-after-headers"))
                with pytest.raises(ConnectionError):
                    c.read_response()
        assert request(p.port, "GET", "/after").status == 200
        assert wait_until(lambda: p.open_fds() <= baseline + 1, timeout=5), (baseline, p.open_fds())
