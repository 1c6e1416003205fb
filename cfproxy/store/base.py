"""RouteStore: the one interface every route store implements, and the key helpers.

The proxy routes from an in-memory RouteTable; a store only keeps routes
somewhere (a file, Redis, a service of yours) and feeds them back. The one
bridge between the two is `cfproxy.store.sync.StoreSync`; it is the only
caller of the methods below and the API never talks to a store directly.

The interface (everything StoreSync calls; all but the feed are coroutines):

    await store.start()                         connect/open; raise StoreUnavailable to refuse
    await store.load_routes() -> [StoredRoute]  every route, in insertion order (CHP 2.7)
    await store.put_route(prefix, data, last_activity)   add or replace, durably
    await store.delete_route(prefix) -> bool | None      True if it was there (None: unknown)
    await store.save_activity({prefix: epoch seconds})   a batch of moved last_activity
    store.watch(sink)                           optional change feed (see ChangeSink)
    await store.close()                         flush and release; called once
    store.keeps_activity                        False: StoreSync never calls save_activity
    store.flush_interval                        seconds between save_activity batches (1)

`prefix` is the canonical key (`clean_path`), `data` the route's data as
posted (without the proxy's last_activity; a posted "last_activity" key stays
in it, CHP keeps its position), `last_activity` epoch seconds. A write raises
StoreUnavailable (or any exception) when the store did not take it; the API
then answers 500 with the message and the table stays as it was.

CHP's storage-backend contract (reference 8: `get`, `get_target`, `get_all`,
`add`, `update`, `remove`, `clean_path`) keeps working two ways: a subclass of
RouteStore may implement those instead, and the defaults below translate (load
= get_all, put = add, delete = get + remove, activity = update per route); an
object that is no RouteStore at all is wrapped in `ContractStore` by
`load_store`. Keys are cleaned with `clean_path` ("/" + the path without
leading and trailing slashes; inner "//" kept), the table's own rule (quirk Q4).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar, Protocol

from cfproxy.routing.trie import join_path, split_path


def clean_path(path: str) -> str:
    """Canonical route key: "/" + segments joined by "/" ("//a/b//" -> "/a/b", "" -> "/")."""
    return join_path(split_path(path))


def positive_option(options: Mapping[str, str], name: str, default: float,
                    where: str = "") -> float:
    """A positive number from a store URL's query options (`default` when absent).

    Raises ValueError naming the option (and `where` it was given) for anything else."""
    raw = options.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={raw!r}{where}: expected a positive number")
    return value


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


class StoreUnavailable(RuntimeError):
    """The store did not take a write (down, full, I/O error); the message says why.

    The API answers 500 with this message; routing goes on from the table.
    """


@dataclass(frozen=True)
class StoredRoute:
    """One route as a store keeps it."""

    prefix: str
    data: dict
    last_activity: float | None = None  # None: unknown (StoreSync uses "now")


@dataclass(frozen=True)
class RouteChange:
    """One change applied to the table, from the API or from a store's feed.

    kind "add":      `prefix`, `data`, `last_activity` (the route as it now is);
    kind "remove":   `prefix`;
    kind "activity": `activity` {prefix: epoch seconds}, merged as the maximum.
    `origin` is "api" for this process's API writes, "store" for the store's feed,
    or whatever a caller of StoreSync.apply gives.
    """

    kind: str
    prefix: str = "/"
    data: dict | None = None
    last_activity: float | None = None
    activity: Mapping[str, float] = field(default_factory=dict)
    origin: str = "store"


class ChangeSink(Protocol):
    """What a store's change feed writes to (StoreSync). Call on the event loop thread."""

    def apply(self, change: RouteChange) -> None:
        """Apply a change made elsewhere to the table now (synchronously)."""


class RouteStore:
    """Base class of route stores; see the module docstring for the contract."""

    # False when the store keeps no last_activity (the memory store: the table is the store).
    keeps_activity: ClassVar[bool] = True
    # Seconds between StoreSync's last_activity flushes (a store may read it from its URL).
    flush_interval: float = 1.0

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect or open; called once before load_routes. Default: nothing to do."""
        return None

    async def close(self) -> None:
        """Release connections and files; called once at shutdown."""
        return None

    # --- what StoreSync calls -----------------------------------------------------------------
    async def load_routes(self) -> list[StoredRoute]:
        """Every route, in insertion order. Default: from CHP's get_all()."""
        routes = await self.get_all()
        return [StoredRoute(prefix, _without_la(data), to_timestamp(data.get("last_activity")))
                for prefix, data in routes.items()]

    async def put_route(self, prefix: str, data: dict, last_activity: float) -> None:
        """Add or replace the route; return once stored. Default: CHP's add(), as CHP's
        POST does it (add, then update last_activity)."""
        await self.add(prefix, dict(data))
        await self.update(prefix, {"last_activity": to_datetime(last_activity)})

    async def delete_route(self, prefix: str) -> bool | None:
        """Remove the route; True when it was there, False when not, None when unknown.
        Default: CHP's DELETE (get, then remove)."""
        if await self.get(prefix) is None:
            return False
        await self.remove(prefix)
        return True

    async def save_activity(self, batch: Mapping[str, float]) -> None:
        """Store moved last_activity values (max with what is stored is the caller's rule:
        values only grow). Default: CHP's update() per route."""
        for prefix, ts in batch.items():
            await self.update(prefix, {"last_activity": to_datetime(ts)})

    def watch(self, sink: ChangeSink) -> None:
        """Start feeding changes made by others (other replicas) into `sink.apply`.
        Called once, before start(). Default: a store nobody else writes has no feed."""
        return None

    # --- CHP's contract (reference 8); implement these or the methods above ----------------------
    def clean_path(self, path: str) -> str:
        return clean_path(path)

    async def get(self, path: str) -> dict | None:
        """Data of the route at exactly `path` (cleaned here), or None."""
        routes = await self.get_all()
        return routes.get(self.clean_path(path))

    async def get_target(self, path: str) -> tuple[str, dict] | None:
        raise NotImplementedError

    async def get_all(self) -> dict[str, dict]:
        raise NotImplementedError(f"{type(self).__name__} implements neither load_routes nor get_all")

    async def add(self, path: str, data: dict) -> None:
        raise NotImplementedError(f"{type(self).__name__} implements neither put_route nor add")

    async def update(self, path: str, data: dict) -> None:
        raise NotImplementedError(f"{type(self).__name__} implements neither put_route nor update")

    async def remove(self, path: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} implements neither delete_route nor remove")

    async def touch(self, path: str, when: datetime) -> None:
        """Record activity: last_activity = max(current, when) (CHP-contract helper)."""
        data = await self.get(path)
        if data is None:
            return
        current = to_timestamp(data.get("last_activity"))
        if current is None or current < when.timestamp():
            await self.update(path, {"last_activity": when})


CONTRACT_METHODS = ("get", "get_target", "get_all", "add", "update", "remove", "clean_path")


class ContractStore(RouteStore):
    """A store written to CHP's contract only (any object with CONTRACT_METHODS, sync or
    async, as CHP's `require(X)` classes), seen through the RouteStore interface."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def _call(self, name: str, *args: Any) -> Any:
        result = getattr(self.inner, name)(*args)
        if inspect.isawaitable(result):
            result = await result
        return result

    def clean_path(self, path: str) -> str:
        return self.inner.clean_path(path)

    async def start(self) -> None:
        if callable(getattr(self.inner, "start", None)):
            await self._call("start")

    async def close(self) -> None:
        if callable(getattr(self.inner, "close", None)):
            await self._call("close")

    async def get(self, path: str) -> dict | None:
        return await self._call("get", path)

    async def get_target(self, path: str) -> tuple[str, dict] | None:
        return await self._call("get_target", path)

    async def get_all(self) -> dict[str, dict]:
        return dict(await self._call("get_all") or {})

    async def add(self, path: str, data: dict) -> None:
        await self._call("add", path, data)

    async def update(self, path: str, data: dict) -> None:
        await self._call("update", path, data)

    async def remove(self, path: str) -> None:
        await self._call("remove", path)


def _without_la(data: dict) -> dict:
    data = dict(data)
    data.pop("last_activity", None)
    return data

