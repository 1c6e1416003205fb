"""Route lookup for proxied requests: `target_for_req` (reference 3.1, 3.4; CHP's
`targetForReq`, timed into the `find_target_for_req` summary).

Owns which route a request goes to and the request-target sent upstream: the routing
key (`urlpath.routing_path`, host-prefixed under --host-routing), the longest matching
route (`RouteTable.longest_match`) and the forwarded path (`urlpath.forward_path`),
remembered per request-target while the route table is unchanged (`table.version`), in
the fast paths' BoundedCache (a hit is one dict lookup instead of the three steps). Each
request is observed exactly once in `find_target_for_req`, hit or miss.
"""

from __future__ import annotations

import time

from cfproxy.http.fastpath import ROUTE_CACHE_SIZE, BoundedCache
from cfproxy.http.urlpath import MalformedPath, forward_path, routing_path, routing_path_and_query
from cfproxy.proxy.headers import host_routing_name


class RouteError(Exception):
    """No route for the request: answer `status` (400 bad path, 404 none, 500 CHP's
    catch-all) with `message` in the log line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


class RouteLookup:
    """target_for_req and its cache, one per app (ProxyContext.lookup)."""

    def __init__(self, app) -> None:
        c = app.config
        self.table = app.table
        self.observe = app.metrics.find_target_for_req.observe
        self.host_routing = c.host_routing
        self.prepend_path = c.prepend_path
        self.include_prefix = c.include_prefix
        # request-target (host-prefixed under host routing) -> (Route, forwarded path),
        # valid while table.version == self.version
        self.cache = BoundedCache(ROUTE_CACHE_SIZE)
        self.version = -1

    def target_for_req(self, req, t0: float) -> tuple:
        """(Route, forwarded request-target) for a parsed request; raises RouteError.
        `t0` is the perf_counter at which the lookup started (for the observation)."""
        table = self.table
        cache = self.cache
        if self.version != table.version:
            cache.clear()
            self.version = table.version
        raw_target = req.target
        key = (req.host or b"") + b" " + raw_target if self.host_routing else raw_target
        hit = cache.get(key)
        if hit is not None:
            self.observe(time.perf_counter() - t0)
            return hit
        try:
            lookup, plain_query = routing_path_and_query(raw_target)
        except MalformedPath as e:  # Q26: a client error (CHP: 500)
            self.observe(time.perf_counter() - t0)
            raise RouteError(400, f"URIError: {e}") from None
        if self.host_routing:
            lookup = "/" + host_routing_name(req.host) + lookup
        route = table.longest_match(lookup)
        self.observe(time.perf_counter() - t0)
        if route is None:
            raise RouteError(404, "")
        try:
            path = self.forward_path(raw_target, route, plain_query)
        except Exception as e:  # noqa: BLE001 - CHP: any dispatch exception -> 500
            raise RouteError(500, f"Error: {e}") from None
        hit = (route, path)
        cache.put(key, hit)
        return hit

    def upgrade_route(self, req):
        """The Route of an upgrade request (not cached: upgrades are rare); raises
        RouteError."""
        t0 = time.perf_counter()
        try:
            key = routing_path(req.target)
        except MalformedPath as e:  # Q26
            raise RouteError(400, f"URIError: {e}") from None
        if self.host_routing:
            key = "/" + host_routing_name(req.host) + key
        route = self.table.longest_match(key)
        self.observe(time.perf_counter() - t0)
        if route is None:
            raise RouteError(404, "")
        return route

    def forward_path(self, raw_target: bytes, route, plain_query: int | None = -2) -> bytes:
        """The request-target sent to `route`'s target (reference 3.4); `plain_query` as
        urlpath.forward_path takes it."""
        prefix = route.prefix
        if self.host_routing and not self.include_prefix:
            i = prefix.find("/", 1)
            prefix = prefix[i:] if i > 0 else "/"
        target = route.target
        return forward_path(raw_target, prefix, target.path, target.query,
                            self.prepend_path, self.include_prefix, plain_query)
