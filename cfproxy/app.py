"""App: the objects one running proxy shares between its listeners.

Created once by `server.py` (or by a library user) and handed to every
protocol factory. It owns no behaviour of its own; it is the wiring point:

- `config`        the frozen Config
- `table`         the in-memory RouteTable the hot path reads synchronously
- `store`         the RouteStore (memory by default)
- `sync`          the StoreSync between store and table: the API writes through it
- `metrics`       counters and summaries bumped in place
- `connections`   open public client connections (for graceful shutdown and gauges)
- `upstreams`     the keep-alive pools to targets (set by the proxy package)
- `tls`           SSL contexts built from the config (public, api, client)
"""

from __future__ import annotations

from typing import Any

from cfproxy.config import Config
from cfproxy.metrics import Metrics
from cfproxy.tls import build_tls


class App:
    def __init__(self, config: Config, table: Any = None, store: Any = None) -> None:
        from cfproxy.http import fastpath
        from cfproxy.routing.table import RouteTable
        from cfproxy.store import load_store
        from cfproxy.store.sync import StoreSync

        self.config = config
        if config.fast_paths != fastpath.ENABLED:
            fastpath.set_enabled(config.fast_paths)  # the one switch (process-wide)
        self.metrics = Metrics()
        self.table = table if table is not None else RouteTable(host_routing=config.host_routing)
        self.store = store if store is not None else load_store(config, self.table)
        self.sync = StoreSync(self.store, self.table)
        # Public client connections currently open; each has `.close_when_idle()`.
        self.connections: set = set()
        # Open tunnels (upgraded connections); each has `.close()`.
        self.tunnels: set = set()
        self.upstreams: Any = None  # cfproxy.proxy.upstream.UpstreamPools, set on first use
        self.tls = build_tls(config)  # cfproxy.tls.TLSContexts
        self.shutting_down = False
