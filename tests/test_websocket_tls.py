"""WebSockets through cfproxy over TLS: wss:// clients on a TLS listener, and https:// targets.

TLS transports cannot half-close, so these exercise the tunnel's other close path
(cfproxy/proxy/tunnel.py closes the peer instead of write_eof).
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import time

import pytest

from tests.support.certs import make_certs
from tests.support.proxy_process import ProxyProcess
from tests.support.ws_backend import WSBackend
from tests.support.ws_client import WSClient
from tests.test_websocket import run


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(str(tmp_path_factory.mktemp("wscerts")))


@pytest.fixture(scope="module")
def client_ctx(certs):
    ctx = ssl.create_default_context(cafile=certs.ca_cert)
    return ctx


@pytest.fixture(scope="module")
def backend():
    with WSBackend() as b:
        yield b


@pytest.fixture(scope="module")
def tls_backend(certs):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.server_cert, certs.server_key)
    with WSBackend(ssl=ctx) as b:
        yield b


@pytest.fixture(scope="module")
def tls_proxy(certs, backend):
    """TLS on the public listener; default route to a plain ws backend."""
    with ProxyProcess("--ssl-cert", certs.server_cert, "--ssl-key", certs.server_key,
                      "--default-target", backend.url) as p:
        yield p


@pytest.fixture(scope="module")
def to_tls_proxy(certs, tls_backend):
    """Plain public listener; default route to an https (wss) backend."""
    with ProxyProcess("--client-ssl-ca", certs.ca_cert, "--default-target", tls_backend.url) as p:
        yield p


def test_wss_client_gets_echo_and_x_forwarded_proto_wss(tls_proxy, client_ctx):
    async def main():
        ws = await WSClient.connect(port=tls_proxy.port, ssl=client_ctx, path="/secure")
        assert await ws.recv() == "connected"
        await ws.send("over tls")
        assert await ws.recv() == "over tls"
        await ws.send("!info")
        info = json.loads(await ws.recv())
        await ws.close(4010, "tls bye")
        assert ws.close_code == 4010
        return info
    info = run(main())
    headers = {k.lower(): v for k, v in info["headers"]}
    assert headers["x-forwarded-proto"] == "wss"
    assert headers["x-forwarded-port"] == str(tls_proxy.port)


def test_wss_client_large_message_round_trips(tls_proxy, client_ctx):
    async def main():
        ws = await WSClient.connect(port=tls_proxy.port, ssl=client_ctx)
        assert await ws.recv() == "connected"
        payload = os.urandom(4096) * 1024  # 4 MiB
        await ws.send(payload)
        assert await ws.recv(timeout=30) == payload
        await ws.close()
    run(main())


def test_wss_client_sees_a_vanishing_target_promptly(tls_proxy, client_ctx):
    async def main():
        ws = await WSClient.connect(port=tls_proxy.port, ssl=client_ctx)
        assert await ws.recv() == "connected"
        await ws.send("!vanish")
        t0 = time.monotonic()
        await ws.wait_closed(3)
        assert time.monotonic() - t0 < 2
    run(main())


def test_wss_clients_vanishing_leave_no_fds_behind(tls_proxy, client_ctx, backend):
    from tests.test_websocket import _wait_until
    _wait_until(lambda: backend.open_connections == 0, 5)
    baseline = tls_proxy.open_fds()

    async def main():
        clients = [await WSClient.connect(port=tls_proxy.port, ssl=client_ctx) for _ in range(10)]
        for ws in clients:
            assert await ws.recv() == "connected"
        assert tls_proxy.open_fds() >= baseline + 20
        for ws in clients:
            ws.abort()
        await asyncio.sleep(0)
    run(main())
    assert _wait_until(lambda: tls_proxy.open_fds() <= baseline, 15), (tls_proxy.open_fds(), baseline)


def test_websocket_to_an_https_target_echoes_and_closes_both_ways(to_tls_proxy, tls_backend):
    async def main():
        ws = await WSClient.connect(port=to_tls_proxy.port, path="/to-tls")
        assert await ws.recv() == "connected"
        payload = os.urandom(1024) * 1024
        await ws.send(payload)
        assert await ws.recv(timeout=30) == payload
        await ws.close(4011, "done")
        assert ws.close_code == 4011
        ws2 = await WSClient.connect(port=to_tls_proxy.port)
        assert await ws2.recv() == "connected"
        await ws2.send("!close 4012 server side")
        assert await ws2.recv() is None
        assert ws2.close_code == 4012
        await ws2.wait_closed(5)
    run(main())
    assert 4011 in tls_backend.close_codes
