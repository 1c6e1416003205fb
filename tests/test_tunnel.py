"""cfproxy.proxy.tunnel in-process: two real socket pairs spliced by open_tunnel.

Topology per test (all on 127.0.0.1, one uvloop loop):
    client socket <-> [proxy client transport ==tunnel== proxy upstream transport] <-> backend socket
The proxy-side transports are created with a placeholder protocol that pauses
reading (as the HTTP side may do), then handed to open_tunnel().
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from types import SimpleNamespace

import pytest
import uvloop

from cfproxy.metrics import Metrics
from cfproxy.proxy import tunnel as tunnel_mod
from cfproxy.proxy.tunnel import open_tunnel


class _Placeholder(asyncio.Protocol):
    """Stands in for the HTTP-side protocol until the tunnel takes over."""

    def __init__(self, accepted: asyncio.Queue | None = None) -> None:
        self.accepted = accepted
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.pause_reading()
        if self.accepted is not None:
            self.accepted.put_nowait(transport)


class _Sink(asyncio.Protocol):
    """A peer (client or backend side) recording what it gets."""

    def __init__(self, half_open: bool = False) -> None:
        self.half_open = half_open  # stay open after EOF (else close, like a WebSocket peer)
        self.data = bytearray()
        self.eof = asyncio.Event()
        self.lost = asyncio.Event()
        self.transport = None
        self.got = asyncio.Event()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.got.set()

    def eof_received(self) -> bool:
        self.eof.set()
        return self.half_open

    def connection_lost(self, exc) -> None:
        self.lost.set()

    async def wait_for(self, n: int, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.data) < n:
            self.got.clear()
            await asyncio.wait_for(self.got.wait(), max(0.01, deadline - time.monotonic()))
        return bytes(self.data)


async def _setup(to_upstream: bytes = b"", to_client: bytes = b"", client_sink=None,
                 half_open: bool = False):
    """Return (app, route, tunnel, client_sink, backend_sink, cleanup)."""
    loop = asyncio.get_running_loop()
    backend = _Sink(half_open)
    backend_accepted = asyncio.Queue()

    def backend_factory():
        backend_accepted.put_nowait(True)
        return backend

    bserver = await loop.create_server(backend_factory, "127.0.0.1", 0)
    bport = bserver.sockets[0].getsockname()[1]
    accepted: asyncio.Queue = asyncio.Queue()
    pserver = await loop.create_server(lambda: _Placeholder(accepted), "127.0.0.1", 0)
    pport = pserver.sockets[0].getsockname()[1]
    client = client_sink or _Sink(half_open)
    await loop.create_connection(lambda: client, "127.0.0.1", pport)
    if isinstance(client, _Stalled):
        client.transport.pause_reading()
    client_transport = await asyncio.wait_for(accepted.get(), 5)
    upstream_transport, _ = await loop.create_connection(_Placeholder, "127.0.0.1", bport)
    await asyncio.wait_for(backend_accepted.get(), 5)
    # the HTTP side may leave both transports paused
    client_transport.pause_reading()
    upstream_transport.pause_reading()
    assert not client_transport.is_reading() and not upstream_transport.is_reading()
    old_protocol = client_transport.get_protocol()
    app = SimpleNamespace(tunnels=set(), connections={old_protocol}, metrics=Metrics())
    route = SimpleNamespace(prefix="/user/a", last_activity=0.0)
    t = open_tunnel(app, route, client_transport, upstream_transport, to_upstream, to_client)

    async def cleanup():
        for tr in (client.transport, backend.transport):
            if tr is not None:
                tr.abort()
        bserver.close()
        pserver.close()
        await asyncio.sleep(0)

    return app, route, t, client, backend, cleanup


def run(coro):
    return uvloop.run(coro) if hasattr(uvloop, "run") else asyncio.run(coro)


async def _wait(pred, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def test_bytes_flow_both_ways_with_leftovers_first():
    async def main():
        app, route, t, client, backend, cleanup = await _setup(b"early-client", b"early-upstream")
        assert t in app.tunnels
        assert not app.connections, "the HTTP protocol must leave app.connections"
        client.transport.write(b"+more")
        assert await backend.wait_for(17) == b"early-client+more"
        backend.transport.write(b"+reply")
        assert await client.wait_for(20) == b"early-upstream+reply"
        assert app.metrics.bytes_in == 17 and app.metrics.bytes_out == 20
        await cleanup()
    run(main())


def test_open_tunnel_resumes_reading_on_paused_transports():
    async def main():
        app, route, t, client, backend, cleanup = await _setup()
        assert t.client.is_reading() and t.upstream.is_reading()
        await cleanup()
    run(main())


def test_only_client_bytes_move_last_activity():
    async def main():
        app, route, t, client, backend, cleanup = await _setup()
        assert route.last_activity == 0.0
        backend.transport.write(b"server push")
        await client.wait_for(11)
        assert route.last_activity == 0.0
        before = time.time()
        client.transport.write(b"x")
        await backend.wait_for(1)
        assert before <= route.last_activity <= time.time()
        await cleanup()
    run(main())


def test_leftover_client_bytes_count_as_activity():
    async def main():
        app, route, t, client, backend, cleanup = await _setup(to_upstream=b"frame")
        assert route.last_activity > 0
        await cleanup()
    run(main())


def test_client_half_close_reaches_backend_and_reverse_direction_still_flows():
    async def main():
        app, route, t, client, backend, cleanup = await _setup(half_open=True)
        client.transport.write(b"last words")
        client.transport.write_eof()
        await asyncio.wait_for(backend.eof.wait(), 5)
        assert bytes(backend.data) == b"last words"
        backend.transport.write(b"answer after client FIN")
        assert await client.wait_for(23) == b"answer after client FIN"
        assert t in app.tunnels
        backend.transport.write_eof()
        await asyncio.wait_for(client.eof.wait(), 5)
        await _wait(lambda: not app.tunnels)
        assert t.done  # both proxy-side transports are gone
        await cleanup()
    run(main())


def test_backend_close_closes_client_after_flushing():
    async def main():
        app, route, t, client, backend, cleanup = await _setup()
        backend.transport.write(b"bye")
        backend.transport.close()
        await asyncio.wait_for(client.lost.wait(), 5)
        assert bytes(client.data) == b"bye"
        await _wait(lambda: not app.tunnels)
        await cleanup()
    run(main())


def test_backend_reset_closes_client_promptly():
    async def main():
        app, route, t, client, backend, cleanup = await _setup()
        sock = backend.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        backend.transport.abort()
        await asyncio.wait_for(client.lost.wait(), 2)
        await _wait(lambda: not app.tunnels)
        await cleanup()
    run(main())


def test_client_vanishing_closes_backend_and_leaves_no_tunnel():
    async def main():
        app, route, t, client, backend, cleanup = await _setup()
        client.transport.abort()
        await asyncio.wait_for(backend.lost.wait(), 2)
        await _wait(lambda: not app.tunnels)
        assert t.client.is_closing() and t.upstream.is_closing()
        await cleanup()
    run(main())


def test_close_closes_both_sides():
    async def main():
        app, route, t, client, backend, cleanup = await _setup()
        t.close()
        await asyncio.wait_for(client.lost.wait(), 2)
        await asyncio.wait_for(backend.lost.wait(), 2)
        await _wait(lambda: not app.tunnels)
        await cleanup()
    run(main())


class _Stalled(_Sink):
    """A client that does not read (until the test resumes it)."""


def test_slow_client_pauses_backend_reading_and_memory_stays_bounded():
    async def main():
        client = _Stalled()
        app, route, t, client, backend, cleanup = await _setup(client_sink=client)
        chunk = b"x" * 65536
        high = t.client.get_write_buffer_limits()[1]
        sent = 0
        # the backend writes 64 MiB as fast as its own flow control lets it
        backend_paused = asyncio.Event()
        backend.pause_writing = backend_paused.set
        while sent < 64 * 1024 * 1024 and not backend_paused.is_set():
            backend.transport.write(chunk)
            sent += len(chunk)
            await asyncio.sleep(0)
        assert backend_paused.is_set(), "backend never felt backpressure"
        await asyncio.sleep(0.1)
        assert not t.upstream.is_reading(), "tunnel must stop reading the backend"
        # proxy-side buffer bounded by the high-water mark plus one read
        assert t.client.get_write_buffer_size() <= high + 256 * 1024
        # now the client reads: everything arrives and the backend is read again
        client.transport.resume_reading()
        await client.wait_for(sent, timeout=10)
        assert len(client.data) == sent
        await _wait(lambda: t.upstream.is_reading())
        await cleanup()
    run(main())


def test_linger_aborts_a_peer_that_never_reads(monkeypatch):
    monkeypatch.setattr(tunnel_mod, "LINGER_SECONDS", 0.3)

    async def main():
        client = _Stalled()
        app, route, t, client, backend, cleanup = await _setup(client_sink=client)
        # fill the proxy->client path, then shut the tunnel down
        for _ in range(200):
            backend.transport.write(b"y" * 65536)
            await asyncio.sleep(0)
        await asyncio.sleep(0.1)
        assert t.client.get_write_buffer_size() > 0
        t.close()
        await asyncio.sleep(0.1)
        assert t.upstream_end.lost and not t.client_end.lost  # still flushing to the client
        await _wait(lambda: not app.tunnels, timeout=3)
        await cleanup()
    run(main())


def test_tunnel_on_an_already_closing_transport_delivers_what_it_can_and_closes():
    async def main():
        loop = asyncio.get_running_loop()
        accepted: asyncio.Queue = asyncio.Queue()
        server = await loop.create_server(lambda: _Placeholder(accepted), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client_peer = _Sink()
        await loop.create_connection(lambda: client_peer, "127.0.0.1", port)
        ct = await accepted.get()
        upstream_peer = _Sink()
        await loop.create_connection(lambda: upstream_peer, "127.0.0.1", port)
        ut = await accepted.get()
        ct.close()  # the client side is already going away
        app = SimpleNamespace(tunnels=set(), connections=set(), metrics=Metrics())
        route = SimpleNamespace(prefix="/", last_activity=0.0)
        t = open_tunnel(app, route, ct, ut, b"late client bytes", b"")
        assert t.closed
        assert await upstream_peer.wait_for(17) == b"late client bytes"
        await asyncio.wait_for(upstream_peer.eof.wait(), 2)
        await _wait(lambda: not app.tunnels)
        server.close()
    run(main())


@pytest.mark.parametrize("n", [1000])
def test_many_small_chunks_arrive_in_order(n):
    async def main():
        app, route, t, client, backend, cleanup = await _setup()
        expected = b"".join(b"%06d" % i for i in range(n))
        for i in range(n):
            client.transport.write(b"%06d" % i)
            if i % 100 == 0:
                await asyncio.sleep(0)
        assert await backend.wait_for(len(expected)) == expected
        await cleanup()
    run(main())


def test_activity_follows_a_route_replaced_under_the_same_prefix(monkeypatch):
    monkeypatch.setattr(tunnel_mod, "ROUTE_RECHECK_SECONDS", 0.0)

    async def main():
        app, route, t, client, backend, cleanup = await _setup()
        new_route = SimpleNamespace(prefix="/user/a", last_activity=0.0)
        app.table = SimpleNamespace(get=lambda prefix: new_route if prefix == "/user/a" else None)
        t.client_end.table = app.table
        client.transport.write(b"x")
        await backend.wait_for(1)
        assert new_route.last_activity > 0
        # a removed route (get -> None) keeps the tunnel on the route it has
        app.table.get = lambda prefix: None
        client.transport.write(b"y")
        await backend.wait_for(2)
        await cleanup()
    run(main())
