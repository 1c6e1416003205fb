"""Bad input on the public port: every parser rejection class, smuggling attempts, huge heads.

Each rejection must come back with its status and a closed connection, and the backend
must never see the request (nor anything smuggled behind it).
"""

from __future__ import annotations

import pytest

from tests.support.backends import RawConn, build_request
from tests.support.proxy_process import ProxyProcess


@pytest.fixture(scope="module")
def proxy(backend):
    with ProxyProcess("--default-target", backend.url, "--max-head-size", "8192") as p:
        yield p


def seen_paths(backend) -> list[str]:
    return [r.url for r in backend.requests]


REJECTIONS = [
    ("bare LF", b"GET /rej HTTP/1.1\nHost: x\n\n", 400),
    ("obs-fold", b"GET /rej HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    ("bare CR", b"GET /rej HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", 400),
    ("NUL in value", b"GET /rej HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    ("space before colon", b"GET /rej HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n", 400),
    ("bad token in name", b"GET /rej HTTP/1.1\r\nHost: x\r\nX(A): b\r\n\r\n", 400),
    ("bad method", b"G(T /rej HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("space in target", b"GET /rej bad HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("missing Host", b"GET /rej HTTP/1.1\r\n\r\n", 400),
    ("duplicate Host", b"GET /rej HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("bad Content-Length", b"POST /rej HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello", 400),
    ("conflicting CL", b"POST /rej HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    ("CL list", b"POST /rej HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\nab", 400),
    ("CL and TE", b"POST /rej HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE gzip", b"POST /rej HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("TE identity", b"POST /rej HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n", 501),
    ("HTTP/2.0", b"GET /rej HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    ("no HTTP version", b"GET /rej\r\nHost: x\r\n\r\n", 400),  # issue 13: was 505
    ("long request line", b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ("huge head", b"GET /rej HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),
]


@pytest.mark.parametrize("raw,status", [(r, s) for _, r, s in REJECTIONS],
                         ids=[n for n, _, _ in REJECTIONS])
def test_rejected_request_gets_status_and_closed_connection(proxy, backend, raw, status):
    before = len(backend.requests)
    with RawConn(proxy.port) as c:
        c.send(raw)
        r = c.read_response()
        assert r.status == status, r.body
        assert r.header("connection") == "close"
        assert c.closed_by_peer()
    assert len(backend.requests) == before


def test_huge_head_trickled_without_end_is_rejected(proxy):
    with RawConn(proxy.port) as c:
        c.send(b"GET /x HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(20):
                c.send(b"X-Pad: " + b"p" * 1000 + b"\r\n")
        except OSError:
            pass
        assert c.read_response().status == 431


SMUGGLES = [
    # CL.TE: a front end using CL would pass "G..." as body; TE-first would see a new request
    ("CL.TE", b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n"
              b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    # TE.CL
    ("TE.CL", b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n"
              b"\r\n5c\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n0\r\n\r\n"),
    # TE obfuscation
    ("TE space", b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n"
                 b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("TE twice", b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n"
                 b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("xchunked", b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\nContent-Length: 4\r\n"
                 b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("bad chunk size", b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                       b"\r\n0x5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("negative chunk", b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                       b"\r\n-1\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("chunk data overrun", b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                           b"\r\n3\r\nhelloGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
]


@pytest.mark.parametrize("raw", [r for _, r in SMUGGLES], ids=[n for n, _ in SMUGGLES])
def test_smuggling_attempt_on_keep_alive_connection_never_reaches_backend(proxy, backend, raw):
    with RawConn(proxy.port) as c:
        c.send(build_request("GET", "/first"))
        assert c.read_response().status == 200
        c.send(raw)
        statuses = []
        try:
            while True:
                statuses.append(c.read_response().status)
        except (ConnectionError, TimeoutError, OSError):
            pass
        assert statuses and statuses[0] in (400, 501), statuses
    assert "/smuggled" not in seen_paths(backend)


def test_pipelined_request_after_valid_chunked_body_is_a_separate_request(proxy, backend):
    # the honest counterpart: a correctly framed body followed by a real second request
    with RawConn(proxy.port) as c:
        c.send(b"POST /honest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n0\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\n")
        first = c.read_response().json()
        second = c.read_response().json()
    assert first["body"] == "hello" and second["path"] == "/second"
    assert backend.requests[-2].body == b"hello"


def test_connect_method_is_refused(proxy, backend):
    before = len(backend.requests)
    with RawConn(proxy.port) as c:
        c.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        assert c.read_response().status in (400, 501)
    assert len(backend.requests) == before


def test_garbage_bytes_are_rejected(proxy):
    with RawConn(proxy.port) as c:
        c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 100 + b"\r\n\r\n")
        assert c.read_response().status == 400
        assert c.closed_by_peer()
