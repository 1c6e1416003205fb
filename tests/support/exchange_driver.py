"""Drive ClientProtocol in process with fake transports, for profiling the hot path.

`python -m tests.support.exchange_driver SCENARIO N` runs N keep-alive exchanges on one
client connection (no sockets, no event-loop I/O) so callgrind counts are repeatable on a
shared machine:

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p \\
        python -m tests.support.exchange_driver browser 20000

Instructions per exchange = (Ir at N2 - Ir at N1) / (N2 - N1), which cancels start-up.
Scenarios: `plain` (wrk's GET, nginx response), `lean` (wrk's GET, the lean backend's
response: Content-Type and Content-Length only), `browser` (4,000 browser heads of 1,000
users as the benchmark sends them), `browser-session` (the same, with the per-session
X-XSRFToken a real browser sends), and `tornado`, `tornado-chunked`, `nginx-chunked`
(plain request, that response shape), `routes` (the routes benchmark: 100,000 routes
/r/<i>, `GET /r/<i>/` with i at random, so nearly every request-target is new: route cache
and head memo misses) and `routes-one` (the same table, always `GET /r/0/`).
Each request is a fresh bytes object, as a read is.
"""

from __future__ import annotations

import asyncio
import random
import sys

from benchmarks import shapes
from cfproxy.app import App
from cfproxy.config import Config
from cfproxy.proxy.client import make_client_protocol_factory
from cfproxy.proxy.upstream import UpstreamConnection


class FakeTransport:
    __slots__ = ("n", "closing")

    def __init__(self) -> None:
        self.n = 0
        self.closing = False

    def write(self, data) -> None:
        self.n += 1

    def writelines(self, lines) -> None:
        self.n += 1

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closing = True

    abort = close

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return 0


PLAIN = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
ROUTES = 100_000


def route_head(i: int) -> bytes:
    # wrk.format("GET", "/r/" .. i .. "/") as benchmarks/wrkload.py sends it
    return b"GET /r/%d/ HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n" % i


def browser_heads(session_token: bool) -> list[bytes]:
    rng = random.Random(12345)
    heads = []
    for u in range(shapes.USERS):
        user = shapes.user_name(u)
        for _ in range(4):
            # the user's own rng: the same cookie and X-XSRFToken on each of their heads
            heads.append(shapes.browser_head("127.0.0.1:8000", user, shapes.browser_path(rng),
                                             random.Random(u) if session_token else rng))
    return heads


def scenario(name: str) -> tuple[list[bytes], bytes]:
    if name in ("plain", "browser", "browser-session"):
        shape = "nginx"
    elif name in ("lean", "routes", "routes-one"):
        shape = "plain"
    else:
        shape = name
    response = shapes.shape_response(shape.encode())
    if name == "browser":
        return browser_heads(False), response
    if name == "browser-session":
        return browser_heads(True), response
    if name == "routes":
        return [route_head(i) for i in range(ROUTES)], response
    if name == "routes-one":
        return [route_head(0)], response
    return [PLAIN], response


async def run(name: str, n: int) -> None:
    requests, response = scenario(name)
    app = App(Config())
    app.table.add("/", {"target": "http://127.0.0.1:9"})
    for u in range(shapes.USERS):
        app.table.add(f"/user/{shapes.user_name(u)}", {"target": "http://127.0.0.1:9"})
    if name.startswith("routes"):
        for i in range(ROUTES):
            app.table.add(f"/r/{i}", {"target": "http://127.0.0.1:9"})
    proto = make_client_protocol_factory(app)()
    proto.connection_made(FakeTransport())
    pools = proto.ctx.pools
    up = UpstreamConnection(pools, app.table.get("/").target.pool_key)
    up.connection_made(FakeTransport())
    pools.release(up)
    rng = random.Random(1)
    picks = [rng.randrange(len(requests)) for _ in range(n)]
    resp = bytearray(response)
    for i in picks:
        proto.data_received(bytes(bytearray(requests[i])))  # a fresh object, as a read
        proto.up.data_received(bytes(resp))
    assert app.metrics.requests_proxy[200] == n, dict(app.metrics.requests_proxy)
    proto.connection_lost(None)


if __name__ == "__main__":
    # the proxy's loop (server.py): uvloop, unless CFPROXY_DRIVER_LOOP=asyncio
    import os
    if os.environ.get("CFPROXY_DRIVER_LOOP") == "asyncio":
        asyncio.run(run(sys.argv[1], int(sys.argv[2])))
    else:
        import uvloop
        loop = uvloop.new_event_loop()
        loop.run_until_complete(run(sys.argv[1], int(sys.argv[2])))
        loop.close()
