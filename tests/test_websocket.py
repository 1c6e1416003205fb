"""WebSockets through cfproxy, end to end: real sockets, cfproxy as a subprocess, wsproto peers.

Reference 4.5 (websockets), 4.10 item 3 and quirk Q16 (activity = client->target bytes only),
5.1 (ws errors are raw status lines), Q13 (fixed: the socket is closed after a raw 404/503),
9.2 items 2, 16 and 28. The backend is tests/support/ws_backend.py (echo + knobs), the client
tests/support/ws_client.py.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import resource
import socket
import struct
import tempfile
import time
from datetime import datetime

import pytest
import uvloop
from wsproto.events import CloseConnection, Ping, Pong

from tests.support.proxy_process import TOKEN, ProxyProcess, free_port
from tests.support.ws_backend import WSBackend
from tests.support.ws_client import HandshakeRefused, WSClient


def _raise_nofile(want: int = 8192) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def run(coro):
    return uvloop.run(coro) if hasattr(uvloop, "run") else asyncio.run(coro)


# --- API helpers -------------------------------------------------------------

def api(p: ProxyProcess, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", p.api_port, timeout=10)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, "/api/routes" + path, body=data,
                     headers={"Authorization": f"token {TOKEN}"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def add_route(p: ProxyProcess, prefix: str, target: str) -> None:
    status, body = api(p, "POST", prefix, {"target": target})
    assert status == 201, (status, body)


def last_activity(p: ProxyProcess, prefix: str) -> datetime:
    status, body = api(p, "GET", "")
    assert status == 200, (status, body)
    value = json.loads(body)[prefix]["last_activity"]
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- raw socket helpers ------------------------------------------------------

UPGRADE = (
    b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def raw_exchange(port: int, request: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send `request`, read until the proxy closes (True) or `timeout` passes (False)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        got = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                return got, False
            except ConnectionResetError:
                return got, True
            if not chunk:
                return got, True
            got += chunk
        return got, False


# --- fixtures ----------------------------------------------------------------

@pytest.fixture(scope="module")
def backend():
    with WSBackend() as b:
        yield b


@pytest.fixture(scope="module")
def wsproxy(backend):
    """Default route to the backend; a custom header; --timeout that must not touch websockets."""
    _raise_nofile()
    with ProxyProcess("--default-target", backend.url, "--custom-header", "X-Custom: yes",
                      "--timeout", "500") as p:
        yield p
        # Everything the module's clients and backend did (resets, vanishing peers, refusals)
        # must leave no traceback or asyncio "Fatal error" in the proxy's output.
        out = p.output()
        for marker in ("Traceback", "Fatal error", "Uncaught Exception", "Exception in callback"):
            assert marker not in out, out[-4000:]


@pytest.fixture(scope="module")
def bare_proxy(backend):
    """No default route: /ws -> backend, /dead -> a port nobody listens on."""
    with ProxyProcess() as p:
        add_route(p, "/ws", backend.url)
        add_route(p, "/dead", f"http://127.0.0.1:{free_port()}")
        yield p


# --- echo ----------------------------------------------------------------------

def test_text_message_is_echoed_after_connected(wsproxy):
    async def main():
        ws = await WSClient.connect(port=wsproxy.port, path="/")
        assert await ws.recv() == "connected"
        await ws.send("hi there ✓")
        assert await ws.recv() == "hi there ✓"
        await ws.close()
    run(main())


def test_binary_message_is_echoed(wsproxy):
    async def main():
        ws = await WSClient.connect(port=wsproxy.port, path="/bin")
        assert await ws.recv() == "connected"
        payload = bytes(range(256)) * 4
        await ws.send(payload)
        assert await ws.recv() == payload
        await ws.close()
    run(main())


def test_16_mib_message_is_echoed_intact(wsproxy):
    async def main():
        ws = await WSClient.connect(port=wsproxy.port)
        assert await ws.recv() == "connected"
        payload = os.urandom(1024) * (16 * 1024)
        await ws.send(payload)
        got = await ws.recv(timeout=30)
        assert len(got) == len(payload) and got == payload
        await ws.close()
    run(main())


def test_ten_thousand_small_messages_on_one_connection_arrive_in_order(wsproxy):
    async def main():
        ws = await WSClient.connect(port=wsproxy.port)
        assert await ws.recv() == "connected"
        n = 10_000
        for i in range(n):
            ws.send_nowait(f"m{i}")
            if i % 500 == 499:
                await asyncio.sleep(0)
        for i in range(n):
            assert await ws.recv() == f"m{i}"
        await ws.close()
    run(main())


def test_500_concurrent_websockets_each_get_their_own_echo(wsproxy, backend):
    _raise_nofile()

    async def one(i: int, sem: asyncio.Semaphore) -> WSClient:
        async with sem:  # bounded connect burst (the accept backlog is finite)
            ws = await WSClient.connect(port=wsproxy.port, path=f"/user/u{i}")
        assert await ws.recv() == "connected"
        return ws

    async def main():
        sem = asyncio.Semaphore(100)
        clients = await asyncio.gather(*(one(i, sem) for i in range(500)))
        assert backend.open_connections >= 500
        for i, ws in enumerate(clients):
            ws.send_nowait(f"from {i}")
        for i, ws in enumerate(clients):
            assert await ws.recv() == f"from {i}"
        await asyncio.gather(*(ws.close() for ws in clients))
    run(main())


# --- control frames and close codes ------------------------------------------

def test_close_code_from_client_reaches_backend_and_its_answer_comes_back(wsproxy, backend):
    async def main():
        ws = await WSClient.connect(port=wsproxy.port)
        assert await ws.recv() == "connected"
        await ws.close(4001, "client bye")
        assert (ws.close_code, ws.close_reason) == (4001, "client bye")
    run(main())
    assert 4001 in backend.close_codes


def test_close_code_from_backend_reaches_client(wsproxy):
    async def main():
        ws = await WSClient.connect(port=wsproxy.port)
        assert await ws.recv() == "connected"
        await ws.send("!close 4002 server done")
        ev = await ws.recv_event()
        assert isinstance(ev, CloseConnection)
        assert (ev.code, ev.reason) == (4002, "server done")
        await ws.wait_closed(5)
    run(main())


def test_ping_from_client_gets_pong_with_payload(wsproxy):
    async def main():
        ws = await WSClient.connect(port=wsproxy.port)
        assert await ws.recv() == "connected"
        await ws.ping(b"are you there")
        ev = await ws.recv_event()
        assert isinstance(ev, Pong) and bytes(ev.payload) == b"are you there"
        await ws.close()
    run(main())


def test_ping_from_backend_is_answered_by_client(wsproxy):
    async def main():
        ws = await WSClient.connect(port=wsproxy.port)
        assert await ws.recv() == "connected"
        await ws.send("!ping xyz")
        ev = await ws.recv_event()
        assert isinstance(ev, Ping) and bytes(ev.payload) == b"xyz"
        assert await ws.recv() == "pong:xyz"  # the backend got the client's pong
        await ws.close()
    run(main())


# --- handshake variants --------------------------------------------------------

def test_first_frame_in_the_same_packet_as_the_head_is_not_lost(wsproxy):
    async def main():
        ws = await WSClient.connect(port=wsproxy.port, path="/early", first_frame="early bird")
        assert await ws.recv() == "connected"
        assert await ws.recv() == "early bird"
        await ws.close()
    run(main())


@pytest.mark.parametrize("status", [403, 200])
def test_target_refusing_the_upgrade_has_its_response_relayed_then_closed(wsproxy, status):
    async def main():
        with pytest.raises(HandshakeRefused) as info:
            await WSClient.connect(port=wsproxy.port, path=f"/?refuse={status}")
        assert info.value.status == status
        assert info.value.body == f"refused {status}".encode()
    run(main())
    # on the wire: the status line and body, then the proxy closes the connection
    got, closed = raw_exchange(wsproxy.port, UPGRADE % f"/?refuse={status}".encode())
    assert got.startswith(f"HTTP/1.1 {status} ".encode()), got
    assert got.endswith(f"refused {status}".encode()), got
    assert closed, "the proxy must close the connection after a refused upgrade"


def test_upgrade_headers_are_forwarded_with_ws_x_forwarded_and_custom_headers(wsproxy):
    async def main():
        ws = await WSClient.connect(port=wsproxy.port, path="/hdr/x?q=1",
                                    headers=[("X-Client", "abc")],
                                    host_header=f"127.0.0.1:{wsproxy.port}")
        assert await ws.recv() == "connected"
        await ws.send("!info")
        info = json.loads(await ws.recv())
        await ws.close()
        return info
    info = run(main())
    assert info["target"] == "/hdr/x?q=1"
    headers = {}
    for name, value in info["headers"]:
        headers.setdefault(name.lower(), []).append(value)
    assert headers["x-forwarded-proto"] == ["ws"]
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-port"] == [str(wsproxy.port)]
    assert "x-forwarded-host" not in headers  # reference 4.2: none for websockets
    assert headers["x-custom"] == ["yes"]
    assert headers["x-client"] == ["abc"]
    assert headers["upgrade"] == ["websocket"]
    assert "upgrade" in headers["connection"][0].lower()
    assert headers["sec-websocket-key"] and headers["sec-websocket-version"] == ["13"]


def test_missing_route_answers_raw_404_and_closes_the_socket(bare_proxy):
    got, closed = raw_exchange(bare_proxy.port, UPGRADE % b"/nowhere")
    assert got == b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"  # Q24: with reason
    assert closed, "Q13 fix: the socket must be closed after the raw 404"


def test_malformed_escape_in_an_upgrade_path_answers_400_with_its_reason(bare_proxy):
    # Q26 + Q24: a client error, and a status line standard WebSocket clients accept
    got, closed = raw_exchange(bare_proxy.port, UPGRADE % b"/dead/%zz")
    assert got == b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
    assert closed


def test_dead_target_answers_raw_503_and_closes_the_socket(bare_proxy):
    got, closed = raw_exchange(bare_proxy.port, UPGRADE % b"/dead/ws")
    assert got == b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
    assert closed


def test_dead_target_does_not_move_last_activity(bare_proxy):
    before = last_activity(bare_proxy, "/dead")

    async def main():
        with pytest.raises(HandshakeRefused) as info:
            await WSClient.connect(port=bare_proxy.port, path="/dead/ws")
        assert info.value.status == 503
    run(main())
    assert last_activity(bare_proxy, "/dead") == before


# --- vanishing peers -----------------------------------------------------------

def test_target_vanishing_mid_stream_closes_the_client_promptly(wsproxy):
    async def main():
        ws = await WSClient.connect(port=wsproxy.port)
        assert await ws.recv() == "connected"
        await ws.send("!vanish")
        t0 = time.monotonic()
        await ws.wait_closed(3)
        assert time.monotonic() - t0 < 2
        assert ws.close_code is None  # no close frame: the connection just went away
    run(main())


def _wait_until(pred, timeout: float = 5.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def test_clients_vanishing_mid_stream_leave_no_fds_behind(wsproxy, backend):
    # settle: earlier tests' connections are closing
    _wait_until(lambda: backend.open_connections == 0, 5)
    baseline = wsproxy.open_fds()
    backend_base = backend.open_connections

    async def main():
        clients = [await WSClient.connect(port=wsproxy.port, path=f"/v{i}") for i in range(20)]
        for ws in clients:
            assert await ws.recv() == "connected"
            ws.send_nowait("mid-stream message without a close frame")
        assert wsproxy.open_fds() >= baseline + 40
        for i, ws in enumerate(clients):
            sock = ws.transport.get_extra_info("socket")
            if i % 2:  # half of them reset, half just close (FIN) without a close frame
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            ws.abort()
        await asyncio.sleep(0)
    run(main())
    assert _wait_until(lambda: wsproxy.open_fds() <= baseline), (wsproxy.open_fds(), baseline)
    assert _wait_until(lambda: backend.open_connections <= backend_base)


# --- activity (reference 4.10 item 3, quirk Q16) --------------------------------

def test_last_activity_moves_on_client_to_target_traffic_only(wsproxy, backend):
    add_route(wsproxy, "/act", backend.url)
    added = last_activity(wsproxy, "/act")
    time.sleep(1.1)  # the API shows milliseconds; leave a visible gap

    async def main():
        ws = await WSClient.connect(port=wsproxy.port,
                                    path="/act/ws?push=3&push_size=100&push_interval=0.2")
        assert await ws.recv() == "connected"
        for _ in range(3):
            assert len(await ws.recv()) == 100
        assert await ws.recv() == "pushed 3"
        # handshake and server pushes: no activity
        assert last_activity(wsproxy, "/act") == added
        await ws.send("client speaks")
        assert await ws.recv() == "client speaks"
        moved = last_activity(wsproxy, "/act")
        assert (moved - added).total_seconds() >= 1.0
        await ws.close()
    run(main())


# --- memory ------------------------------------------------------------------

def test_slow_reader_of_200_mb_of_pushes_does_not_grow_proxy_memory(wsproxy):
    total = 200 * 1024 * 1024
    size = 1024 * 1024
    rss_before = wsproxy.rss_kib()
    with socket.create_connection(("127.0.0.1", wsproxy.port)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(UPGRADE % f"/slow?silent=1&push={total // size}&push_size={size}".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        # The backend pushes as fast as the proxy takes it; we read nothing for a while.
        peak = rss_before
        for _ in range(15):
            time.sleep(0.1)
            peak = max(peak, wsproxy.rss_kib())
        # then drain slowly-ish at first, fast afterwards, checking memory on the way
        buf = bytearray(1024 * 1024)
        got = 0
        want = total + (total // size) * 10 + len(b"pushed 200") + 2  # frame headers included
        s.settimeout(10)
        reads = 0
        while got < want:
            n = s.recv_into(buf)
            if not n:
                break
            got += n
            reads += 1
            if reads % 200 == 0:
                peak = max(peak, wsproxy.rss_kib())
            if reads < 100:
                time.sleep(0.005)
        assert got >= want, (got, want)
    growth_mib = (peak - rss_before) / 1024
    assert growth_mib < 48, f"proxy RSS grew by {growth_mib:.0f} MiB for a slow reader"


# --- flags and listeners -------------------------------------------------------

def test_timeout_flag_does_not_close_an_idle_websocket(wsproxy):
    # wsproxy runs with --timeout 500: web requests only (reference 4.5, 4.7)
    async def main():
        ws = await WSClient.connect(port=wsproxy.port)
        assert await ws.recv() == "connected"
        await asyncio.sleep(1.2)
        await ws.send("still here")
        assert await ws.recv() == "still here"
        await ws.close()
    run(main())


def test_websocket_over_the_public_unix_socket_echoes_and_moves_activity(backend):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "proxy.sock")
        with ProxyProcess("--socket", path, "--default-target", backend.url) as p:
            added = last_activity(p, "/")
            time.sleep(0.05)

            async def main():
                ws = await WSClient.connect(unix_path=path, path="/unix")
                assert await ws.recv() == "connected"
                await ws.send("over unix")
                assert await ws.recv() == "over unix"
                await ws.close()
            run(main())
            assert last_activity(p, "/") > added


def test_sigterm_closes_open_websockets_and_the_proxy_exits(backend):
    with ProxyProcess("--default-target", backend.url) as p:
        async def main():
            ws = await WSClient.connect(port=p.port)
            assert await ws.recv() == "connected"
            p.signal()
            await ws.wait_closed(15)
        run(main())
        assert p.proc.wait(15) is not None


def test_upgrade_through_a_route_with_a_target_path(bare_proxy, backend):
    add_route(bare_proxy, "/prefixed", backend.url + "/base")

    async def main():
        ws = await WSClient.connect(port=bare_proxy.port, path="/prefixed/lab/ws?token=t")
        assert await ws.recv() == "connected"
        await ws.send("!info")
        info = json.loads(await ws.recv())
        await ws.close()
        return info
    assert run(main())["target"] == "/base/prefixed/lab/ws?token=t"


# --- metrics (reference 4.5 last item, 6) --------------------------------------------

def test_requests_ws_counts_every_upgrade_and_a_101_is_no_requests_proxy_sample(backend):
    mport = free_port()
    with ProxyProcess("--metrics-port", str(mport), "--metrics-ip", "127.0.0.1") as p:
        add_route(p, "/ok", backend.url)

        async def main():
            for _ in range(3):
                ws = await WSClient.connect(port=p.port, path="/ok/ws")
                assert await ws.recv() == "connected"
                await ws.close()
        run(main())
        got, closed = raw_exchange(p.port, UPGRADE % b"/missing")
        assert got.startswith(b"HTTP/1.1 404") and closed
        conn = http.client.HTTPConnection("127.0.0.1", mport, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
    lines = text.splitlines()
    assert "requests_ws 4" in lines, [x for x in lines if x.startswith("requests_ws")]
    assert 'requests_proxy{status="404"} 1' in lines
    assert not any(x.startswith('requests_proxy{status="101"}') for x in lines)


# --- route changes under open websockets (reference 4.4) ------------------------------

def test_deleting_the_route_keeps_an_open_websocket_working(wsproxy, backend):
    add_route(wsproxy, "/gone", backend.url)

    async def main():
        ws = await WSClient.connect(port=wsproxy.port, path="/gone/ws")
        assert await ws.recv() == "connected"
        status, _ = api(wsproxy, "DELETE", "/gone")
        assert status == 204
        await ws.send("still tunnelled")
        assert await ws.recv() == "still tunnelled"
        await ws.close()
    run(main())


def test_replacing_the_route_keeps_the_websocket_and_its_activity_moves_the_new_route(
        wsproxy, backend):
    add_route(wsproxy, "/swap", backend.url)

    async def main():
        ws = await WSClient.connect(port=wsproxy.port, path="/swap/ws")
        assert await ws.recv() == "connected"
        add_route(wsproxy, "/swap", backend.url + "/other")  # a new Route object
        replaced = last_activity(wsproxy, "/swap")
        await asyncio.sleep(1.2)  # past the tunnel's once-a-second route check
        await ws.send("after the swap")
        assert await ws.recv() == "after the swap"
        assert (last_activity(wsproxy, "/swap") - replaced).total_seconds() >= 1.0
        await ws.close()
    run(main())
