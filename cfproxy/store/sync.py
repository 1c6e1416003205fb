"""Keeping app.table in step with a store that does not own it.

The proxy reads only the in-memory RouteTable. The default MemoryStore
writes straight into it (`owns_table = True`) and needs none of this. For
any other store (a third-party `--storage-backend`, a shared Redis store):

- at start-up, `load_table(store, table)` fills the table from `get_all()`
  (server.py calls it once before listening; the redis store may call it
  again on resync);
- after every successful API write, the API calls `mirror_add` /
  `mirror_remove` so this replica routes the change at once.

Routes whose target the proxy cannot parse are skipped with a warning (they
stay in the store, as CHP would keep them).
"""

from __future__ import annotations

from typing import Any

from cfproxy.log import log
from cfproxy.routing.table import RouteTable
from cfproxy.routing.target import InvalidTarget
from cfproxy.store.base import to_timestamp


def mirror_add(store: Any, table: RouteTable, path: str, data: dict,
               last_activity: float | None = None) -> None:
    """Apply a successful store add to the table (no-op when the store owns it)."""
    if getattr(store, "owns_table", False):
        return
    data = dict(data)
    ts = to_timestamp(data.pop("last_activity", None))
    try:
        table.add(path, data, last_activity if last_activity is not None else ts)
    except InvalidTarget as e:
        log.warning("Not routing %s: %s", path, e)


def mirror_remove(store: Any, table: RouteTable, path: str) -> None:
    """Apply a successful store remove to the table (no-op when the store owns it)."""
    if getattr(store, "owns_table", False):
        return
    table.remove(path)


async def load_table(store: Any, table: RouteTable) -> int:
    """Replace the table's routes with the store's; returns the number loaded."""
    if getattr(store, "owns_table", False):
        return len(table)
    routes = await store.get_all()
    table.clear()
    for path, data in routes.items():
        mirror_add(store, table, path, data)
    return len(table)
