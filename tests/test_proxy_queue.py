"""A request waiting for a connection under --max-upstream-connections has a deadline.

The queue wait is bounded by --proxy-timeout when it is set, else by
upstream.QUEUE_WAIT_TIMEOUT (60 s, nginx's upstream queue default); then the request gets
CHP's 503 and leaves the queue.
"""

from __future__ import annotations

import asyncio
import time

from cfproxy.app import App
from cfproxy.config import Config
from cfproxy.proxy import client as client_mod
from cfproxy.proxy.client import make_client_protocol_factory
from tests.test_proxy_fastpath import FakeTransport
from tests.test_proxy_hygiene import connect, read_response, target  # noqa: F401


def _trickle(conn, t):
    """Answer the first request slowly: a byte every 0.2 s for 3 s (each resets the
    first request's --proxy-timeout, so its connection stays busy)."""
    t.read_request(conn, bytearray())
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n")
    for _ in range(15):
        time.sleep(0.2)
        try:
            conn.sendall(b"x")
        except OSError:
            return


def test_a_queued_request_gets_503_after_the_proxy_timeout(proxy, target):  # noqa: F811
    t = target(_trickle)
    p = proxy("--default-target", t.url, "--max-upstream-connections", "1",
              "--proxy-timeout", "1000")
    first = connect(p.port)
    first.sendall(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.3)
    queued = connect(p.port)
    t0 = time.monotonic()
    queued.sendall(b"GET /queued HTTP/1.1\r\nHost: x\r\n\r\n")
    queued.settimeout(10)
    head, _, _ = read_response(queued)
    waited = time.monotonic() - t0
    assert head.startswith(b"HTTP/1.1 503 ")
    assert 0.7 < waited < 5, waited
    assert t.max_open == 1 and len(t.heads) == 1  # the queued one never reached the target
    first.settimeout(10)
    assert read_response(first)[1] == b"x" * 15
    first.close()
    queued.close()


def test_a_queued_request_gets_503_after_the_queue_timeout_without_proxy_timeout(monkeypatch):
    monkeypatch.setattr(client_mod, "QUEUE_WAIT_TIMEOUT", 0.3)

    async def run() -> tuple:
        app = App(Config(max_upstream_connections=1))
        app.table.add("/", {"target": "http://127.0.0.1:9"})
        pools = make_client_protocol_factory(app)().ctx.pools
        key = app.table.get("/").target.pool_key
        pools.open[key] = 1  # the one allowed connection is busy with another request
        proto = make_client_protocol_factory(app)()
        ct = FakeTransport()
        proto.connection_made(ct)
        proto.data_received(b"GET /queued HTTP/1.1\r\nHost: x\r\n\r\n")
        assert proto.waiting and not ct.out
        t0 = asyncio.get_running_loop().time()
        while not ct.out and asyncio.get_running_loop().time() - t0 < 5:
            await asyncio.sleep(0.05)
        waited = asyncio.get_running_loop().time() - t0
        out = b"".join(ct.out)
        state = (proto.waiting, len(pools.waiters.get(key, ())), app.metrics.timeouts["proxy"])
        proto.connection_lost(None)
        return out, waited, state

    out, waited, state = asyncio.run(run())
    assert out.startswith(b"HTTP/1.1 503 "), out
    assert 0.25 < waited < 2, waited
    assert state == (False, 0, 1)
