"""Metrics: CHP's counters and summaries, bumped in place on the hot path.

The hot path does `app.metrics.requests_web += 1` and
`app.metrics.requests_proxy[status] += 1` — plain attribute and dict writes,
nothing else. Exposition in the Prometheus text format with CHP's exact
names (no `_total`, quantile summaries) lives in `metrics_server.py`.
"""

from __future__ import annotations

from collections import defaultdict


class Summary:
    """A lifetime quantile summary (placeholder: keeps sum/count; quantiles added by the exporter)."""

    __slots__ = ("sum", "count", "_samples")

    def __init__(self) -> None:
        self.sum = 0.0
        self.count = 0
        self._samples: list[float] = []

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1


class Metrics:
    def __init__(self) -> None:
        # CHP's families (reference section 6)
        self.api_route_get = 0
        self.api_route_add = 0
        self.api_route_delete = 0
        self.requests_api: defaultdict[int, int] = defaultdict(int)
        self.requests_web = 0
        self.requests_ws = 0
        self.requests_proxy: defaultdict[int, int] = defaultdict(int)
        self.find_target_for_req = Summary()
        self.last_activity_updating = Summary()
        # cfproxy additions
        self.bytes_in = 0  # from clients
        self.bytes_out = 0  # to clients
