"""Backpressure where cfproxy answers by itself: the API, metrics and redirect ports.

A client that pipelines requests and never reads must not make the proxy queue its answers
without limit (DESIGN rule 10, issue 10 item 4): reading that connection stops while its
write buffer is above the high-water mark, so the flood stalls, the proxy's memory stays
flat, other clients are still served, and once the flooder reads again every request it
sent is answered (the read pause is released).
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
import time

import pytest

from tests.support.certs import make_certs
from tests.support.flood import flood, rss_kib
from tests.support.proxy_process import TOKEN, ProxyProcess, free_port, wait_for_port

MAX_GROWTH_KIB = 20 * 1024
FLOOD_SECONDS = 4.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(str(tmp_path_factory.mktemp("certs")))


def _resumes(sock: socket.socket, timeout: float, retry: bytes = b"") -> bool:
    """Read answers until the proxy takes requests from this socket again (or timeout).
    `retry`: a TLS write that would block must be retried with the same bytes."""
    deadline = time.monotonic() + timeout
    filler = retry or b"X" * 65536  # pipelined garbage is fine: only progress is looked at
    while time.monotonic() < deadline:
        readable, writable, _ = select.select([sock], [sock], [], 0.1)
        if readable:
            try:
                if not sock.recv(1 << 20):
                    return False
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
        if writable:
            try:
                if sock.send(filler):
                    return True
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
    return False


def check_flood(p: ProxyProcess, port: int, request: bytes, served_by_others,
                tls: ssl.SSLContext | None = None) -> None:
    """Flood `port` with `request`; the proxy stalls the flooder, stays small and serves others."""
    before = rss_kib(p.pid)
    result = flood(port, request, total=100 << 20, seconds=FLOOD_SECONDS, tls=tls)
    try:
        growth = rss_kib(p.pid) - before
        assert result.stalled, (
            f"the proxy kept reading: {result.sent >> 20} MiB of requests in "
            f"{result.seconds:.1f} s, RSS +{growth >> 10} MiB")
        assert growth < MAX_GROWTH_KIB, f"RSS grew {growth >> 10} MiB"
        t0 = time.monotonic()
        served_by_others()
        assert time.monotonic() - t0 < 5.0  # generous: 2 shared cores under load
        # the flooder reads again: the proxy reads its requests again (the pause is released)
        assert _resumes(result.sock, timeout=10.0, retry=result.retry)
    finally:
        result.sock.close()


def _get(port: int, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_unauthenticated_api_flood_is_held_back(proxy):
    p = proxy()
    request = b"GET /api/routes HTTP/1.1\r\nHost: x\r\n\r\n"
    check_flood(p, p.api_port, request,
                lambda: _get(p.api_port, "/api/routes")[0] == 403 or pytest.fail("no 403"))


def test_authenticated_route_list_flood_is_held_back(proxy):
    p = proxy()
    for i in range(50):
        conn = http.client.HTTPConnection("127.0.0.1", p.api_port, timeout=5)
        conn.request("POST", f"/api/routes/user/someone-{i}",
                     body=json.dumps({"target": f"http://127.0.0.1:{10000 + i}", "user": f"u{i}"}),
                     headers={"Authorization": f"token {TOKEN}"})
        assert conn.getresponse().status == 201
        conn.close()
    request = (b"GET /api/routes HTTP/1.1\r\nHost: x\r\nAuthorization: token "
               + TOKEN.encode() + b"\r\n\r\n")

    def others() -> None:
        status, body = _get(p.api_port, "/api/routes", {"Authorization": f"token {TOKEN}"})
        assert status == 200 and len(json.loads(body)) == 50

    check_flood(p, p.api_port, request, others)


def test_api_flood_over_tls_is_held_back(proxy, certs):
    p = proxy("--api-ssl-key", certs.server_key, "--api-ssl-cert", certs.server_cert)
    tls = ssl.create_default_context(cafile=certs.ca_cert)

    def others() -> None:
        conn = http.client.HTTPSConnection("127.0.0.1", p.api_port, timeout=5, context=tls)
        try:
            conn.request("GET", "/api/routes")
            assert conn.getresponse().status == 403
        finally:
            conn.close()

    check_flood(p, p.api_port, b"GET /api/routes HTTP/1.1\r\nHost: x\r\n\r\n", others, tls)


def test_metrics_flood_is_held_back(proxy):
    mport = free_port()
    p = proxy("--metrics-ip", "127.0.0.1", "--metrics-port", str(mport))
    wait_for_port(mport)
    check_flood(p, mport, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                lambda: _get(mport, "/metrics")[0] == 200 or pytest.fail("no metrics"))


def test_redirect_flood_is_held_back(proxy, certs):
    rport = free_port()
    p = proxy("--ssl-key", certs.server_key, "--ssl-cert", certs.server_cert,
              "--redirect-port", str(rport))
    p.wait_for_output("Added HTTP to HTTPS redirection")
    # a long path: each redirect echoes it in Location, so unbounded answers would show fast
    check_flood(p, rport, b"GET /hub/" + b"a" * 4000 + b" HTTP/1.1\r\nHost: pub.example\r\n\r\n",
                lambda: _get(rport, "/x")[0] == 301 or pytest.fail("no redirect"))
