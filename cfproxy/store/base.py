"""RouteStore: the async storage-backend contract (CHP's --storage-backend, reference 8).

Owns the interface every store implements and the conversions between the
store's view of a route and the table's:

- keys are cleaned with `clean_path` ("/" + the path without leading and
  trailing slashes; inner "//" kept), the same canonical form the RouteTable
  and its trie use, so a key never means two different routes (quirk Q4);
- `get`, `get_target` and `get_all` return data dicts that carry
  `last_activity` as an aware UTC `datetime` (CHP's Date);
- `add` replaces, `update` shallow-merges, `remove` of a missing key is a no-op.

A store either *owns the table* (`owns_table = True`: MemoryStore writes
straight into the RouteTable the proxy reads), or it does not, in which case
`cfproxy.store.sync` mirrors every successful API write into `app.table` and
loads the table from `get_all()` at start-up. The proxy's hot path never
awaits a store (DESIGN.md, rule 1).

Third-party stores: `--storage-backend package.module:Class` is instantiated
as `Class(config, table)`; subclass RouteStore and implement the abstract
methods.
"""

from __future__ import annotations

import abc
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cfproxy.routing.trie import join_path, split_path


def clean_path(path: str) -> str:
    """Canonical route key: "/" + segments joined by "/" ("//a/b//" -> "/a/b", "" -> "/")."""
    return join_path(split_path(path))


def to_datetime(ts: float) -> datetime:
    """An epoch timestamp (seconds) as an aware UTC datetime."""
    return datetime.fromtimestamp(ts, timezone.utc)


def to_timestamp(value: Any) -> float | None:
    """Epoch seconds from a store's last_activity value (datetime, number or ISO string).

    Naive datetimes are taken as UTC. Returns None for missing or unreadable values.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp()
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return None
        return to_timestamp(parsed)
    return None


@dataclass(frozen=True)
class RouteChange:
    """A change another replica made to a shared store (for `watch`)."""

    kind: str  # "add", "remove" or "resync"
    path: str = "/"
    data: dict | None = None


class RouteStore(abc.ABC):
    """The async store interface (reference 8, "Recommended Python contract")."""

    # True when writes to this store are already visible in the app's RouteTable.
    owns_table: bool = False

    def clean_path(self, path: str) -> str:
        return clean_path(path)

    async def get(self, path: str) -> dict | None:
        """Data of the route at exactly `path` (cleaned here), or None."""
        routes = await self.get_all()
        return routes.get(self.clean_path(path))

    @abc.abstractmethod
    async def get_target(self, path: str) -> tuple[str, dict] | None:
        """(prefix, data) of the longest segment-wise match for a request path, or None."""

    @abc.abstractmethod
    async def get_all(self) -> dict[str, dict]:
        """{key: data} of every route, in insertion order."""

    @abc.abstractmethod
    async def add(self, path: str, data: dict) -> None:
        """Store `data` at `path`, replacing any route there."""

    @abc.abstractmethod
    async def update(self, path: str, data: dict) -> None:
        """Shallow-merge `data` into the route at `path` (no-op when absent)."""

    @abc.abstractmethod
    async def remove(self, path: str) -> None:
        """Remove the route at `path` (cleaned here); a missing route is not an error."""

    # --- optional, for shared (HA) stores --------------------------------
    async def touch(self, path: str, when: datetime) -> None:
        """Record activity: last_activity = max(current, when). Default: via get + update."""
        data = await self.get(path)
        if data is None:
            return
        current = to_timestamp(data.get("last_activity"))
        if current is None or current < when.timestamp():
            await self.update(path, {"last_activity": when})

    async def watch(self) -> AsyncIterator[RouteChange]:
        """Changes made by others; the default store sees none (yields nothing)."""
        return
        yield  # pragma: no cover - makes this an async generator

    async def close(self) -> None:
        """Release connections; called once at shutdown."""
        return None
