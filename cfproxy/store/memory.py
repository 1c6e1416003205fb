"""MemoryStore: the default store, backed directly by the app's RouteTable.

Owns nothing but the translation between the async store contract
(store/base.py) and the synchronous RouteTable: every write lands in the
table the proxy reads, so the hot path sees it at once (CHP's MemoryStore
kept a dict and a trie; the RouteTable is both). Returned data dicts are
copies with `last_activity` as a UTC datetime; mutating them does not
change the table.
"""

from __future__ import annotations

from datetime import datetime

from cfproxy.routing.table import Route, RouteTable
from cfproxy.store.base import RouteStore, to_datetime, to_timestamp


def route_data(route: Route) -> dict:
    """The store view of a route: its data plus last_activity (a posted key keeps its place)."""
    data = dict(route.data)
    data["last_activity"] = to_datetime(route.last_activity)
    return data


class MemoryStore(RouteStore):
    owns_table = True

    def __init__(self, *args: object) -> None:
        """MemoryStore(table), MemoryStore(config, table) (the --storage-backend form) or MemoryStore()."""
        tables = [a for a in args if isinstance(a, RouteTable)]
        self.table: RouteTable = tables[0] if tables else RouteTable()

    async def get(self, path: str) -> dict | None:
        route = self.table.get(self.clean_path(path))
        return None if route is None else route_data(route)

    async def get_target(self, path: str) -> tuple[str, dict] | None:
        route = self.table.longest_match(path)
        return None if route is None else (route.prefix, route_data(route))

    async def get_all(self) -> dict[str, dict]:
        return {route.prefix: route_data(route) for route in self.table}

    async def add(self, path: str, data: dict) -> None:
        # Raises InvalidTarget (and stores nothing) for a target the proxy cannot reach.
        self.table.add(self.clean_path(path), data)

    async def update(self, path: str, data: dict) -> None:
        route = self.table.get(self.clean_path(path))
        if route is None:
            return
        data = dict(data)
        if "last_activity" in data:
            ts = to_timestamp(data.pop("last_activity"))
            if ts is not None:
                route.last_activity = ts
        if not data:
            return
        if "target" in data and data["target"] != route.data.get("target"):
            # a new target must be parsed: re-add in place (keeps position and activity)
            self.table.add(route.prefix, {**route.data, **data}, route.last_activity)
        else:
            route.data.update(data)
            route.api_json = None  # the API's cached rendering shows the old data

    async def remove(self, path: str) -> None:
        self.table.remove(self.clean_path(path))

    async def touch(self, path: str, when: datetime) -> None:
        route = self.table.get(self.clean_path(path))
        if route is not None:
            route.last_activity = max(route.last_activity, when.timestamp())
