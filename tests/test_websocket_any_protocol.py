"""Upgrades to protocols other than WebSocket, end to end (issue 4 part 1).

CHP destroys the socket of an upgrade request that is not `GET` + `Upgrade: websocket`
(reference 4.5); cfproxy routes any upgrade like any request and, when the target answers
`101 Switching Protocols`, tunnels both connections whatever the protocol. A target that
does not switch has its answer relayed as a normal response. The backend here is a raw
socket server speaking a made-up `echo-proto`: after its 101 it echoes every byte.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time

import pytest

from tests.support.proxy_process import ProxyProcess

SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo-proto\r\nConnection: Upgrade\r\n\r\n"


class _EchoProtoHandler(socketserver.BaseRequestHandler):
    """Reads one request (head + Content-Length or chunked body), then either refuses
    (path contains `refuse`: a plain 200) or switches to echo-proto: first line
    `body:<the request body>\\n`, then every byte received is echoed."""

    def handle(self) -> None:
        s: socket.socket = self.request
        s.settimeout(10)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                return
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        self.server.heads.append(head)
        lines = head.split(b"\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if b"content-length" in headers:
            n = int(headers[b"content-length"])
            while len(rest) < n:
                rest += s.recv(65536)
            body, rest = rest[:n], rest[n:]
        elif headers.get(b"transfer-encoding") == b"chunked":
            while not rest.endswith(b"0\r\n\r\n"):
                rest += s.recv(65536)
            # good enough for the test bodies: one data chunk, then the last chunk
            size_line, _, after = rest.partition(b"\r\n")
            size = int(size_line, 16)
            body, rest = after[:size], b""
        if b"refuse" in lines[0]:
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n"
                      b"\r\nnot today\r\n")
            return
        s.sendall(SWITCH + b"body:" + body + b"\n")
        if rest:
            s.sendall(rest)
        while True:
            try:
                data = s.recv(65536)
            except OSError:
                return
            if not data:
                return
            s.sendall(data)


class _EchoProtoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoProtoHandler)
        self.heads: list[bytes] = []


@pytest.fixture(scope="module")
def echo_backend():
    server = _EchoProtoServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def proxy(echo_backend):
    port = echo_backend.server_address[1]
    with ProxyProcess("--default-target", f"http://127.0.0.1:{port}",
                      "--custom-header", "X-Custom: yes") as p:
        yield p


def _connect(p: ProxyProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", p.port), timeout=5)


def _read_until(s: socket.socket, marker: bytes, have: bytes = b"") -> bytes:
    deadline = time.monotonic() + 5
    while marker not in have:
        assert time.monotonic() < deadline, have
        chunk = s.recv(65536)
        assert chunk, f"closed before {marker!r}; got {have!r}"
        have += chunk
    return have


def _read_to_close(s: socket.socket) -> bytes:
    got = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk


def _head_fields(head: bytes) -> dict[bytes, list[bytes]]:
    fields: dict[bytes, list[bytes]] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    return fields


def test_non_websocket_upgrade_is_tunnelled_end_to_end(proxy, echo_backend):
    with _connect(proxy) as s:
        s.sendall(b"GET /echo/a HTTP/1.1\r\nHost: example.org\r\nConnection: Upgrade\r\n"
                  b"Upgrade: echo-proto\r\n\r\n")
        got = _read_until(s, b"body:\n")
        assert got.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), got
        assert b"\r\nupgrade: echo-proto\r\n" in got.lower()
        # raw bytes both ways, several round trips, binary included
        for i in range(20):
            msg = bytes([i]) * (i + 1) + b"\x00\xff|"
            s.sendall(msg)
            assert _read_until(s, b"|") == msg
        big = bytes(range(256)) * 4096  # 1 MiB through the tunnel
        s.sendall(big)
        echoed = b""
        while len(echoed) < len(big):
            chunk = s.recv(1 << 20)
            assert chunk
            echoed += chunk
        assert echoed == big
        s.shutdown(socket.SHUT_WR)  # FIN reaches the target, which closes; so does the proxy
        assert _read_to_close(s) == b""


def test_non_websocket_upgrade_gets_web_x_forwarded_headers_and_custom_headers(proxy,
                                                                               echo_backend):
    with _connect(proxy) as s:
        s.sendall(b"GET /xf HTTP/1.1\r\nHost: example.org:8443\r\nConnection: upgrade\r\n"
                  b"Upgrade: echo-proto\r\n\r\n")
        _read_until(s, b"body:\n")
    head = next(h for h in reversed(echo_backend.heads) if h.startswith(b"GET /xf "))
    fields = _head_fields(head)
    assert fields[b"x-forwarded-proto"] == [b"http"]  # http/https for non-WebSocket upgrades
    assert fields[b"x-forwarded-host"] == [b"example.org:8443"]
    assert fields[b"x-forwarded-port"] == [b"8443"]
    assert fields[b"x-forwarded-for"] == [b"127.0.0.1"]
    assert fields[b"x-custom"] == [b"yes"]
    assert fields[b"upgrade"] == [b"echo-proto"]
    assert fields[b"connection"] == [b"upgrade"]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_upgrade_request_body_reaches_the_target_before_it_switches(proxy, framing):
    if framing == "content-length":
        body = b"Content-Length: 5\r\n\r\nhello"
    else:
        body = b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    with _connect(proxy) as s:
        # the first bytes of the new protocol arrive in the same packet as the body
        s.sendall(b"POST /with-body HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                  b"Upgrade: echo-proto\r\n" + body + b"early|")
        got = _read_until(s, b"early|")
        assert got.startswith(b"HTTP/1.1 101 "), got
        assert got.endswith(b"body:hello\nearly|"), got
        s.sendall(b"late|")
        assert _read_until(s, b"late|") == b"late|"


@pytest.mark.parametrize("method", [b"GET", b"OPTIONS"])
def test_target_not_switching_protocols_has_its_response_relayed_then_closed(proxy, method):
    with _connect(proxy) as s:
        s.sendall(method + b" /refuse HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                  b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
        got = _read_to_close(s)
    assert got.startswith(b"HTTP/1.1 200 OK\r\n"), got
    assert got.endswith(b"\r\n\r\nnot today\r\n"), got


def test_upgrade_to_another_protocol_without_a_route_answers_raw_404(echo_backend):
    with ProxyProcess() as p, _connect(p) as s:
        s.sendall(b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                  b"Upgrade: echo-proto\r\n\r\n")
        assert _read_to_close(s) == b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
