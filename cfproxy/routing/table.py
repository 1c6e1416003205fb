"""RouteTable: the routes, their data and last_activity, over a radix trie.

Owns the in-memory route table the proxy's hot path reads synchronously:

    table = RouteTable(host_routing=False)
    route = table.add("/user/a", {"target": "http://127.0.0.1:9000", ...})  # key already cleaned
    table.get("/user/a") -> Route | None            # exact key
    table.longest_match("/user/a/lab/tree") -> Route | None   # segment-wise longest prefix
    table.remove("/user/a") -> bool
    for route in table: ...                         # insertion order (replace keeps position)
    len(table)

Route has: prefix (the key as posted), data (dict, as posted, without
last_activity), target (cfproxy.routing.target.Target, parsed once),
last_activity (float, time.time(); the proxy's hot path writes it), pool_key
(target.pool_key, computed once: the proxy reads it per request), api_json /
api_json_la (the REST API's cached JSON rendering of the route and the
last_activity it was rendered with), saved_activity (the last_activity the
store holds: StoreSync flushes routes where the two differ).

`RouteTable.version` grows by one on every write (add, remove, clear): a reader
that caches lookup results (the proxy does, per request-target) drops its cache
when the version moved.

Keys. A prefix is canonicalised as "/" + its segments joined by "/" (all
leading and trailing slashes dropped, inner empty segments kept), the same
rule the trie splits on, so the dict and the trie always agree (quirk Q4:
CHP stores "//double" but routes it as "/double"). Under host routing the
first segment (the host) is lower-cased for matching (quirk Q10) while
`Route.prefix` keeps the case it was posted with; "/Example.com/x" and
"/example.com/x" are therefore the same route.

Ordering is CHP's (reference 2.7): replacing a key keeps its position,
delete + add moves it to the end. Replacing creates a new Route object;
a connection holding the old one keeps its target (reference 2.6).

Must not: await, do I/O, or log — stores and the API do that.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from cfproxy.routing.target import Target, parse_target
from cfproxy.routing.trie import URLTrie, join_path, split_path


class Route:
    """One route: prefix -> data (with a parsed target) and its last activity."""

    __slots__ = ("prefix", "data", "target", "last_activity", "pool_key", "api_json", "api_json_la",
                 "saved_activity")

    def __init__(self, prefix: str, data: dict, target: Target, last_activity: float) -> None:
        self.prefix = prefix
        self.data = data
        self.target = target
        self.last_activity = last_activity
        self.pool_key = target.pool_key
        # The API's cached `"prefix":{...}` JSON fragment and the last_activity it shows
        # (api/handlers.py owns both; whoever mutates `data` in place sets api_json = None).
        self.api_json: bytes | None = None
        self.api_json_la = 0.0
        # What the store has (cfproxy/store/sync.py owns it): a route is flushed when the hot
        # path moved last_activity past it. A float compare per route and second, no dirty set.
        self.saved_activity = last_activity

    def __repr__(self) -> str:
        return f"<Route {self.prefix!r} -> {self.target.url!r}>"


def canonical_prefix(prefix: str) -> str:
    """"/" + segments joined by "/": "//a/b//" -> "/a/b", "/x//y/" -> "/x//y", "" -> "/"."""
    return join_path(split_path(prefix))


class RouteTable:
    """Insertion-ordered routes plus a URLTrie for longest-prefix lookup."""

    __slots__ = ("host_routing", "_routes", "_trie", "version")

    def __init__(self, host_routing: bool = False) -> None:
        self.host_routing = host_routing
        self.version = 0  # +1 on every write
        self._routes: dict[str, Route] = {}  # match key -> Route, in insertion order
        self._trie = URLTrie()  # match key -> Route

    # --- keys --------------------------------------------------------------
    def match_key(self, prefix: str) -> str:
        """The key a prefix is stored and matched under (host lower-cased under host routing)."""
        segments = split_path(prefix)
        if self.host_routing and segments:
            segments[0] = segments[0].lower()
        return join_path(segments)

    # --- writes ------------------------------------------------------------
    def add(self, prefix: str, data: dict, last_activity: float | None = None,
            target: Target | None = None) -> Route:
        """Store (or replace) the route at `prefix`; parse data["target"] first.

        Raises cfproxy.routing.target.InvalidTarget (nothing stored) when the
        target cannot be parsed. `last_activity` defaults to now. `target`, when
        given, is data["target"] already parsed (StoreSync parses it before the
        store write).
        """
        if target is None:
            target = parse_target(data.get("target"))  # type: ignore[arg-type]
        segments = split_path(prefix)
        canonical = join_path(segments)
        key = canonical  # one string for both unless the host is lower-cased (100k: 5.7 MB less)
        if self.host_routing and segments:
            host = segments[0].lower()
            if host != segments[0]:
                key = join_path([host, *segments[1:]])
        route = Route(
            canonical,
            data,
            target,
            time.time() if last_activity is None else last_activity,
        )
        self._routes[key] = route  # an existing key keeps its position
        self._trie.add(key, route)
        self.version += 1
        return route

    def remove(self, prefix: str) -> bool:
        """Remove the route at exactly `prefix`; False if there was none."""
        key = self.match_key(prefix)
        if self._routes.pop(key, None) is None:
            return False
        self._trie.remove(key)
        self.version += 1
        return True

    def clear(self) -> None:
        self._routes.clear()
        self._trie = URLTrie()
        self.version += 1

    # --- reads -------------------------------------------------------------
    def get(self, prefix: str) -> Route | None:
        """The route stored at exactly `prefix` (after canonicalisation), or None."""
        return self._routes.get(self.match_key(prefix))

    def longest_match(self, key: str) -> Route | None:
        """Segment-wise longest prefix match for a decoded request path (hot path).

        Under host routing `key` is "/<host><path>" with the host already
        lower-cased by the caller.
        """
        return self._trie.lookup(key)

    def __iter__(self) -> Iterator[Route]:
        return iter(list(self._routes.values()))

    def __len__(self) -> int:
        return len(self._routes)

    def __contains__(self, prefix: str) -> bool:
        return self.match_key(prefix) in self._routes
