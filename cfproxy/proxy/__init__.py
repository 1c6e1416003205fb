"""The public proxy listener: `make_proxy_protocol_factory(app)` (the data path lives in
client.py, upstream.py, headers.py, flow.py; upgrades in tunnel.py)."""

from __future__ import annotations

from collections.abc import Callable


def make_proxy_protocol_factory(app) -> Callable:
    """A zero-argument protocol factory for loop.create_server / create_unix_server."""
    from cfproxy.proxy.client import make_client_protocol_factory

    return make_client_protocol_factory(app)
