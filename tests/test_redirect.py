"""The HTTP -> HTTPS redirect listener: `--redirect-port`, `--redirect-to` (reference 1.6, Q18).

Unit cases for the Location rule, then the real process with TLS on the public port.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl

import pytest

from cfproxy.config import Config
from cfproxy.proxy.redirect import redirect_location, redirect_port
from tests.support.backends import EchoBackend
from tests.support.certs import make_certs
from tests.support.proxy_process import ProxyProcess, free_port


def no_host_text(port: int | str) -> bytes:
    return (f"This server is HTTPS-only on port {port}, but an HTTP request was made and the "
            "host could not be determined from the request.").encode()


# --- the Location rule ---------------------------------------------------------------


@pytest.mark.parametrize("host, target, port, location", [
    (b"pub.example:80", b"/some/path?q=1", 9443, b"https://pub.example:9443/some/path?q=1"),
    (b"pub.example", b"/", 9443, b"https://pub.example:9443/"),
    (b"pub.example:80", b"/x", 443, b"https://pub.example/x"),  # the number 443: no port
    (b"pub.example:80", b"/x", "443", b"https://pub.example:443/x"),  # Q18: the string keeps it
    (b"pub.example", b"/x", "8443", b"https://pub.example:8443/x"),
    (b"[::1]:8080", b"/x", 9443, b"https://[::1]:9443/x"),
    (b"[::1]", b"/x", 443, b"https://[::1]/x"),
    (b"a", b"http://a.b/x?y", 9443, b"https://a:9443/x?y"),
    (b"a", b"http://a.b?y", 9443, b"https://a:9443/?y"),
    (b"a", b"http://a.b", 9443, b"https://a:9443/"),
    (b"a", b"*", 9443, b"https://a:9443/"),
    (b"a", b"/%2e%2e/raw%20path?x=%41", 9443, b"https://a:9443/%2e%2e/raw%20path?x=%41"),
])
def test_location_is_https_host_without_port_then_p_then_raw_target(host, target, port,
                                                                     location):
    assert redirect_location(host, target, port) == location


@pytest.mark.parametrize("host", [b"", b"   ", b":80"])
def test_empty_host_has_no_location(host):
    assert redirect_location(host, b"/", 9443) is None


def test_redirect_to_is_kept_as_given_else_the_public_port_number():
    assert redirect_port(Config(port=9443)) == 9443
    assert redirect_port(Config(port=9443, redirect_to="443")) == "443"
    assert redirect_port(Config(port=443)) == 443


# --- the real process -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(str(tmp_path_factory.mktemp("certs")))


@pytest.fixture(scope="module")
def backend():
    with EchoBackend() as b:
        yield b


def start_with_redirect(certs, *extra: str) -> tuple[ProxyProcess, int]:
    rport = free_port()
    p = ProxyProcess("--ssl-key", certs.server_key, "--ssl-cert", certs.server_cert,
                     "--redirect-port", str(rport), *extra).start()
    try:
        p.wait_for_output("Added HTTP to HTTPS redirection")
    except Exception:
        p.__exit__(None, None, None)
        raise
    return p, rport


@pytest.fixture(scope="module")
def redirecting(certs, backend):
    p, rport = start_with_redirect(certs, "--default-target", backend.url)
    try:
        yield p, rport
    finally:
        p.__exit__(None, None, None)


def raw(port: int, data: bytes) -> bytes:
    """Send bytes, read until the server closes (or 2 s pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            pass
    return out


def head_and_body(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


def request(port: int, method: str, path: str, headers: dict | None = None, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def test_startup_line_names_redirect_port_and_target_port(redirecting):
    p, rport = redirecting
    assert f"Added HTTP to HTTPS redirection from {rport} to {p.port}" in p.output()


def test_request_is_redirected_to_https_on_the_public_port(redirecting):
    p, rport = redirecting
    status, headers, body = request(rport, "GET", "/some/path?q=1")
    assert status == 301 and body == b""
    assert headers["Location"] == f"https://127.0.0.1:{p.port}/some/path?q=1"


def test_host_port_is_replaced_by_the_public_port(redirecting):
    p, rport = redirecting
    status, headers, _ = request(rport, "GET", "/some/path?q=1", {"Host": "pub.example:80"})
    assert status == 301
    assert headers["Location"] == f"https://pub.example:{p.port}/some/path?q=1"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"])
def test_every_method_is_redirected(redirecting, method):
    p, rport = redirecting
    status, headers, body = request(rport, method, "/a/b", body=b"x" * 10 if method != "HEAD" else None)
    assert status == 301 and headers["Location"] == f"https://127.0.0.1:{p.port}/a/b"
    assert body == b""


def test_raw_request_target_is_kept_undecoded(redirecting):
    p, rport = redirecting
    status, headers, _ = head_and_body(raw(
        rport, b"GET /a%20b/%2F/..;x?q=%41&r HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"))
    assert status == 301 and headers["location"] == f"https://h:{p.port}/a%20b/%2F/..;x?q=%41&r"


def test_http10_without_host_is_400_with_chp_text(redirecting):
    p, rport = redirecting
    status, headers, body = head_and_body(raw(rport, b"GET /x HTTP/1.0\r\n\r\n"))
    assert status == 400 and body == no_host_text(p.port)
    assert "content-type" not in headers


def test_http11_without_host_is_400_with_chp_text(redirecting):
    p, rport = redirecting
    status, _, body = head_and_body(raw(rport, b"GET /x HTTP/1.1\r\n\r\n"))
    assert status == 400 and body == no_host_text(p.port)


def test_malformed_request_is_400_and_closed(redirecting):
    _, rport = redirecting
    status, _, _ = head_and_body(raw(rport, b"GET /x HTTP/1.1\r\nHost: h\r\nno colon\r\n\r\n"))
    assert status == 400


def test_redirects_are_kept_alive_and_pipelined(redirecting):
    p, rport = redirecting
    out = raw(rport, b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
                     b"POST /2 HTTP/1.1\r\nHost: b:1\r\nContent-Length: 3\r\n\r\nabc"
                     b"GET /3 HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 301 ") == 3
    for loc in (f"https://a:{p.port}/1", f"https://b:{p.port}/2", f"https://c:{p.port}/3"):
        assert f"Location: {loc}\r\n".encode() in out


def test_following_the_redirect_reaches_the_target_over_https(redirecting, certs):
    p, rport = redirecting
    status, headers, _ = request(rport, "GET", "/followed?x=1")
    assert status == 301
    url = headers["Location"]
    assert url.startswith(f"https://127.0.0.1:{p.port}/")
    ctx = ssl.create_default_context(cafile=certs.ca_cert)
    conn = http.client.HTTPSConnection("127.0.0.1", p.port, context=ctx, timeout=10)
    try:
        conn.request("GET", url.split(str(p.port), 1)[1])
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["url"] == "/followed?x=1"
    finally:
        conn.close()


def test_redirect_to_sets_the_port_in_location(certs):
    p, rport = start_with_redirect(certs, "--redirect-to", "9999")
    try:
        status, headers, _ = request(rport, "GET", "/x")
        assert status == 301 and headers["Location"] == "https://127.0.0.1:9999/x"
        assert f"Added HTTP to HTTPS redirection from {rport} to 9999" in p.output()
    finally:
        p.__exit__(None, None, None)


def test_redirect_to_443_still_appends_the_port_as_chp_does(certs):
    p, rport = start_with_redirect(certs, "--redirect-to", "443")
    try:
        status, headers, body = request(rport, "GET", "/x", {"Host": "hub.example"})
        assert status == 301 and headers["Location"] == "https://hub.example:443/x"
        _, _, body = head_and_body(raw(rport, b"GET / HTTP/1.0\r\n\r\n"))
        assert body == no_host_text("443")
    finally:
        p.__exit__(None, None, None)


def test_redirect_listener_is_on_all_interfaces(redirecting):
    _, rport = redirecting
    try:
        s = socket.create_connection(("::1", rport), timeout=2)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with s:
        s.sendall(b"GET /v6 HTTP/1.1\r\nHost: [::1]:1\r\nConnection: close\r\n\r\n")
        data = s.recv(4096)
    assert data.startswith(b"HTTP/1.1 301 ") and b"Location: https://[::1]:" in data
