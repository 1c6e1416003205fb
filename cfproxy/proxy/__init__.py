"""The public proxy listener: `make_proxy_protocol_factory(app)`.

The data path: client.py (the exchange), lookup.py (target_for_req), headers.py (what
the proxy adds to heads), upstream.py (connections to targets and their pools),
upgrade.py + tunnel.py (101 and raw bytes), flow.py (backpressure), deadline.py
(timeouts). Fast paths and memos: cfproxy.http.fastpath."""

from __future__ import annotations

from collections.abc import Callable


def make_proxy_protocol_factory(app) -> Callable:
    """A zero-argument protocol factory for loop.create_server / create_unix_server."""
    from cfproxy.proxy.client import make_client_protocol_factory

    return make_client_protocol_factory(app)
