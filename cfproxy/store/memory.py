"""MemoryStore: the default store, which is the app's RouteTable itself.

Under StoreSync it keeps nothing of its own: the table StoreSync writes after
each acknowledged write *is* the store (no second copy), so `put_route` and
`delete_route` have nothing left to do, `load_routes` has nothing to load, and
there is no activity to save (`keeps_activity = False`).

For library users it also offers CHP's contract (store/base.py) over the same
table: `add`, `update`, `remove` write the table directly, `get`/`get_all`
return copies with `last_activity` as a UTC datetime (mutating them does not
change the table). CHP's MemoryStore kept a dict and a trie; the RouteTable
is both.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from cfproxy.routing.table import Route, RouteTable
from cfproxy.store.base import RouteStore, StoredRoute, to_datetime, to_timestamp


def route_data(route: Route) -> dict:
    """The store view of a route: its data plus last_activity (a posted key keeps its place)."""
    data = dict(route.data)
    data["last_activity"] = to_datetime(route.last_activity)
    return data


class MemoryStore(RouteStore):
    keeps_activity = False  # the table holds last_activity; there is nowhere else to save it

    def __init__(self, *args: object) -> None:
        """MemoryStore(table), MemoryStore(config, table) (the --storage-backend form) or MemoryStore()."""
        tables = [a for a in args if isinstance(a, RouteTable)]
        self.table: RouteTable = tables[0] if tables else RouteTable()

    # --- the RouteStore interface: the table is the store ------------------------------------------
    async def load_routes(self) -> list[StoredRoute]:
        return []  # whatever the table holds stays; there is no other copy to load from

    async def put_route(self, prefix: str, data: dict, last_activity: float) -> None:
        return None  # StoreSync writes the table once this returns

    async def delete_route(self, prefix: str) -> bool | None:
        return None  # StoreSync removes it from the table (and knows whether it was there)

    async def save_activity(self, batch: Mapping[str, float]) -> None:
        return None

    # --- CHP's contract, over the table (library use) -------------------------------------------
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
