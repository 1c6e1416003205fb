"""Connection hygiene and backpressure of the public port (issue 10 items 4 and 5).

Each test drives a real cfproxy subprocess over real sockets against a scripted target
(one thread per upstream connection), and checks what a user or the target sees:
answers, bytes, which connections are open, and the proxy's memory.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from tests.support.backends import wait_until

HEALTHZ = b"GET /_chp_healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def read_head(sock: socket.socket, buf: bytearray | None = None) -> tuple[bytes, bytearray]:
    """One request or response head from `sock` (and what followed it)."""
    buf = bytearray() if buf is None else buf
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a head")
        buf += chunk
    i = buf.index(b"\r\n\r\n") + 4
    return bytes(buf[:i]), buf[i:]


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def read_response(sock: socket.socket, buf: bytearray | None = None) -> tuple[bytes, bytes, bytearray]:
    head, rest = read_head(sock, buf)
    n = content_length(head)
    while len(rest) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in a body")
        rest += chunk
    return head, bytes(rest[:n]), rest[n:]


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


class ScriptedTarget:
    """A target whose every accepted connection runs `script(sock, target)` in a thread.

    Keeps `connections` (accepted count), `open` (currently open) and `heads` (every
    request head a script read with `target.read_request`)."""

    def __init__(self, script) -> None:
        self.script = script
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self.heads: list[bytes] = []
        self.lock = threading.Lock()
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self.open += 1
                self.max_open = max(self.max_open, self.open)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(30)
            self.script(conn, self)
        except OSError:
            pass
        finally:
            with self.lock:
                self.open -= 1
            conn.close()

    def read_request(self, conn: socket.socket, buf: bytearray) -> tuple[bytes, bytes, bytearray]:
        """(head, body, rest) of the next request (Content-Length bodies)."""
        head, body, rest = read_response(conn, buf)
        with self.lock:
            self.heads.append(head)
        return head, body, rest

    def close(self) -> None:
        self.stopping = True
        self.sock.close()


def keep_alive_script(conn: socket.socket, target: ScriptedTarget) -> None:
    """An HTTP/1.1 server like nginx: answers every request with `Connection: keep-alive`,
    or `close` (and closes) when the request said so."""
    buf = bytearray()
    while True:
        try:
            head, body, buf = target.read_request(conn, buf)
        except ConnectionError:
            return
        payload = b"ok:" + body
        close = b"connection: close" in head.lower()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n%s" % (
            len(payload), b"close" if close else b"keep-alive", payload))
        if close:
            return


@pytest.fixture
def target():
    made = []

    def make(script=keep_alive_script) -> ScriptedTarget:
        t = ScriptedTarget(script)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# ------------------------------------------------------------------ backpressure (item 4)

@pytest.mark.parametrize("request_bytes", [
    HEALTHZ,
    b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n",  # 404 page (no route)
], ids=["healthz", "404"])
def test_a_client_pipelining_without_reading_cannot_make_the_proxy_queue_answers(
        proxy, request_bytes):
    p = proxy()
    s = connect(p.port)
    before = rss_kib(p.pid)
    block = request_bytes * (1024 * 1024 // len(request_bytes))
    s.settimeout(0.5)
    sent = 0
    t_end = time.monotonic() + 4
    try:
        while sent < 100 * 1024 * 1024 and time.monotonic() < t_end:
            sent += s.send(block)
    except TimeoutError:
        pass  # the proxy stopped reading us: that is the point
    time.sleep(0.3)
    grown = (rss_kib(p.pid) - before) / 1024
    assert grown < 20, f"RSS grew {grown:.1f} MiB after {sent / 1e6:.0f} MB of requests"
    assert sent < 100 * 1024 * 1024  # it did stop reading
    # reading the answers lets the proxy go on with the buffered requests
    s.settimeout(1)
    got = 0
    t_end = time.monotonic() + 2
    while time.monotonic() < t_end:
        try:
            chunk = s.recv(1 << 20)
        except TimeoutError:
            break  # every request sent was answered
        assert chunk
        got += chunk.count(b"HTTP/1.1 ")
    assert got > 10_000
    s.close()


# ------------------------------------------------------------------ read pauses released

def _answer_early_then_stall(conn, target):
    head, _ = read_head(conn)
    conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
    time.sleep(20)  # reads nothing more: the proxy's writes to us back up


def _die_mid_upload(conn, target):
    read_head(conn)
    conn.recv(65536)
    reset(conn)


@pytest.mark.parametrize("script,status", [(_answer_early_then_stall, b"413"),
                                           (_die_mid_upload, b"503")], ids=["413", "died"])
def test_client_connection_is_read_again_after_its_request_was_answered_early(
        proxy, target, script, status):
    t = target(script)
    p = proxy("--default-target", t.url)
    s = connect(p.port)
    size = 64 * 1024 * 1024
    s.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
    done = threading.Event()

    def upload():
        try:
            chunk = b"x" * (1 << 20)
            for _ in range(size >> 20):
                s.sendall(chunk)
            done.set()
        except OSError:
            pass

    threading.Thread(target=upload, daemon=True).start()
    head, _, buf = read_response(s)
    assert head.split(b" ")[1] == status
    assert done.wait(20), "the proxy stopped reading the client for good"
    s.sendall(HEALTHZ)
    head, body, _ = read_response(s, buf)
    assert head.startswith(b"HTTP/1.1 200 ") and body == b'{"status":"OK"}'
    s.close()


# ------------------------------------------------------------------ Connection: close (Q23)

def test_a_clients_connection_close_ends_only_the_client_hop(proxy, target):
    t = target()
    p = proxy("--default-target", t.url)
    for i in range(5):
        s = connect(p.port)
        s.sendall(b"GET /c/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % i)
        head, body, _ = read_response(s)
        assert head.startswith(b"HTTP/1.1 200 ") and b"connection: close" in head.lower()
        assert b"keep-alive" not in head.lower()  # the target's keep-alive is not relayed
        assert closed_by_peer(s, 5)
        s.close()
        s = connect(p.port)  # HTTP/1.0 without keep-alive: the same
        s.sendall(b"GET /h/%d HTTP/1.0\r\nHost: x\r\n\r\n" % i)
        head, body, _ = read_response(s)
        assert body == b"ok:" and b"connection: close" in head.lower() and closed_by_peer(s, 5)
        s.close()
    # a POST after them works, on the same upstream connection
    s = connect(p.port)
    s.sendall(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    head, body, _ = read_response(s)
    assert head.startswith(b"HTTP/1.1 200 ") and body == b"ok:abc"
    s.close()
    assert t.connections == 1
    assert all(b"connection: close" not in h.lower() for h in t.heads)


def test_an_upstream_connection_is_not_reused_after_the_target_said_close(proxy, target):
    def close_after_first(conn, t):
        head, _, _ = t.read_request(conn, bytearray())
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
        time.sleep(1)  # says close but keeps the socket open a while: must not be reused

    t = target(close_after_first)
    p = proxy("--default-target", t.url)
    for _ in range(3):
        s = connect(p.port)  # (the target's close is relayed: the client hop closes too)
        s.sendall(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz")
        head, body, _ = read_response(s)
        assert head.startswith(b"HTTP/1.1 200 ") and body == b"hi"
        s.close()
    assert t.connections == 3


# ------------------------------------------------------------------ client walks away

def _hold_request(conn, t):
    t.read_request(conn, bytearray())
    closed_by_peer(conn, 20)


@pytest.mark.parametrize("how", ["eof", "reset"])
def test_a_client_that_goes_away_aborts_its_waiting_upstream_request(proxy, target, how):
    t = target(_hold_request)
    p = proxy("--default-target", t.url)
    for i in range(5):
        s = connect(p.port)
        s.sendall(b"GET /slow/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        assert wait_until(lambda n=i + 1: len(t.heads) == n)
        if how == "eof":
            s.shutdown(socket.SHUT_WR)
        else:
            reset(s)
        assert wait_until(lambda: t.open == 0, timeout=3), "upstream request left open"
        s.close()


# ------------------------------------------------------------------ --request-timeout

def test_a_request_body_that_stalls_gets_408_and_both_connections_close(proxy, target):
    t = target(_hold_request)
    p = proxy("--default-target", t.url, "--request-timeout", "500")
    s = connect(p.port)
    s.sendall(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
    t0 = time.monotonic()
    head, body, _ = read_response(s)
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert 0.4 < time.monotonic() - t0 < 3
    assert closed_by_peer(s, 3)
    assert wait_until(lambda: t.open == 0, timeout=3)
    s.close()


def test_request_timeout_leaves_a_steady_upload_alone_when_it_is_off(proxy, target):
    t = target()
    p = proxy("--default-target", t.url, "--request-timeout", "0")
    s = connect(p.port)
    s.sendall(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\na")
    time.sleep(0.3)
    s.sendall(b"bc")
    head, body, _ = read_response(s)
    assert body == b"ok:abc"
    s.close()


# ------------------------------------------------------------------ idle pooled connections

def test_idle_pooled_upstream_connections_are_closed_by_the_proxy_first(proxy, target):
    t = target()
    p = proxy("--default-target", t.url, "--upstream-idle-timeout", "300")
    s = connect(p.port)
    s.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    read_response(s)
    assert t.open == 1
    assert wait_until(lambda: t.open == 0, timeout=3)
    s.sendall(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")  # a fresh connection serves the next
    head, body, _ = read_response(s)
    assert body == b"ok:" and t.connections == 2
    s.close()


def test_a_post_on_a_pooled_connection_the_target_just_closed_is_retried_once(proxy, target):
    def close_on_second_request(conn, t):
        buf = bytearray()
        head, body, buf = t.read_request(conn, buf)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        t.read_request(conn, buf)  # the keep-alive race: closed without an answer
        reset(conn)

    t = target(close_on_second_request)
    p = proxy("--default-target", t.url)
    s = connect(p.port)
    s.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(s)[1] == b"hi"
    s.sendall(b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    head, body, _ = read_response(s)
    assert head.startswith(b"HTTP/1.1 200 ") and body == b"hi"
    assert t.connections == 2
    assert t.heads[-1].startswith(b"POST /b ")
    s.close()


# ------------------------------------------------------------------ --max-upstream-connections

def test_upstream_connections_per_target_can_be_capped(proxy, target):
    def slow(conn, t):
        buf = bytearray()
        while True:
            try:
                head, body, buf = t.read_request(conn, buf)
            except ConnectionError:
                return
            time.sleep(0.1)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")

    t = target(slow)
    p = proxy("--default-target", t.url, "--max-upstream-connections", "2")
    results = []

    def client(i):
        s = connect(p.port)
        s.sendall(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        results.append(read_response(s)[1])
        s.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(10)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(20)
    assert results == [b"hi"] * 10  # all waited their turn
    assert t.max_open <= 2


def test_requests_beyond_the_upstream_queue_get_503(proxy, target):
    t = target(_hold_request)
    p = proxy("--default-target", t.url, "--max-upstream-connections", "1")
    socks = []
    for i in range(80):  # 1 in flight + 64 queued, the rest overflow
        s = connect(p.port)
        s.sendall(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        socks.append(s)
    answered = 0
    for s in socks[-10:]:
        s.settimeout(5)
        head, _, _ = read_response(s)
        assert head.startswith(b"HTTP/1.1 503 ")
        answered += 1
    assert answered == 10 and t.max_open == 1
    for s in socks:
        s.close()
