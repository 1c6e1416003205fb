"""StoreSync: the one bridge between a route store and the in-memory RouteTable.

The proxy routes from the table only (DESIGN.md, rule 1); every store, the
default memory store included, reaches the table through this class:

- `await sync.start()` opens the store, lets it attach its change feed, loads
  every route into the table (server.py awaits it before any listener accepts),
  and starts the activity flush (stores with `keeps_activity` only);
- `await sync.add(prefix, data)` / `await sync.remove(prefix)` are the API's
  writes: the store first, the table once the store acknowledged (a failed
  store write raises and leaves the table as it was). Writes to one key run
  one after the other; writes to different keys overlap (so a store can share
  one commit between them); a write that started finishes even when the API
  client walks away (it is run again in the background: puts and deletes are
  idempotent);
- every `flush_interval` seconds (default 1 s) the routes whose last_activity
  the hot path moved past `Route.saved_activity` go to `store.save_activity` in
  one batch; a failed flush is retried at the next tick;
- `sync.apply(change)` applies a change made elsewhere (the store's feed: Redis
  pub/sub; other processes) to the table at once, synchronously;
- `await sync.close()` stops the flush, flushes one last time and closes the
  store (server.py calls it on SIGTERM *before* the drain, so a successor can
  open the store at once); later writes raise StoreUnavailable.

For other layers (the `--workers` primary) the API is:

    unsubscribe = sync.subscribe(listener)   # listener(RouteChange) after every applied change
    sync.note_activity({prefix: ts})          # activity seen elsewhere: max-merged, then flushed

A listener runs on the event loop thread right after the table changed, with
RouteChange(kind "add" | "remove" | "activity", origin "api" | "store" | ...).
When it returns an awaitable, an API write waits for it before it is answered
(so "answered" can mean "every worker applied it"); for changes from a feed
the awaitable runs as a task. Routes whose target the proxy cannot parse are
skipped with a warning (they stay in the store, as CHP would keep them).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from cfproxy.log import log
from cfproxy.routing.table import Route, RouteTable
from cfproxy.routing.target import InvalidTarget, parse_target
from cfproxy.store.base import RouteChange, RouteStore, StoredRoute, StoreUnavailable, clean_path

DEFAULT_FLUSH_INTERVAL = 1.0  # seconds between last_activity flushes
CLOSE_FLUSH_TIMEOUT = 2.0  # the last flush at shutdown waits at most this long

# A store's put_route / delete_route returns this when a newer change to the same route
# was already applied to the table (a shared store's feed outran the write's reply):
# StoreSync then leaves the table alone.
SUPERSEDED = "superseded"

Listener = Callable[[RouteChange], "Awaitable[None] | None"]


class StoreSync:
    """Keeps `table` in step with `store` (see the module docstring)."""

    def __init__(self, store: RouteStore, table: RouteTable,
                 flush_interval: float | None = None) -> None:
        self.store = store
        self.table = table
        self.flush_interval = (flush_interval if flush_interval is not None
                               else getattr(store, "flush_interval", DEFAULT_FLUSH_INTERVAL))
        self.closed = False
        self._listeners: list[Listener] = []
        self._writing: dict[str, asyncio.Future] = {}  # match key -> the last write's future
        self._flush_task: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> int:
        """Open the store and load the table from it; returns the number of routes loaded."""
        self.store.watch(self)
        await self.store.start()
        routes = await self.store.load_routes()
        for stored in routes:
            self._table_add(stored.prefix, stored.data, stored.last_activity)
        if self.store.keeps_activity and self._flush_task is None:
            self._flush_task = asyncio.get_running_loop().create_task(
                self._flush_loop(), name="cfproxy-activity-flush")
        return len(self.table)

    async def close(self) -> None:
        """Flush activity one last time, close the store; later writes fail. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._flush_task is not None:
            self._flush_task.cancel()
            with contextlib.suppress(BaseException):
                await self._flush_task
            self._flush_task = None
        pending = [f for f in self._writing.values() if not f.done()]
        if pending:  # writes the store is committing: let them finish and reach the table
            await asyncio.wait(pending, timeout=CLOSE_FLUSH_TIMEOUT)
        if self.store.keeps_activity:
            try:
                await asyncio.wait_for(self.flush(), timeout=CLOSE_FLUSH_TIMEOUT)
            except Exception as e:  # noqa: BLE001 - shutting down: say so, go on
                log.warning("Could not save last_activity at shutdown: %s", e)
        await self.store.close()

    # --- the API's writes -----------------------------------------------------------------------
    def clean_path(self, path: str) -> str:
        return clean_path(path)

    async def add(self, prefix: str, data: dict, last_activity: float | None = None) -> Route | None:
        """Store the route, then route it; returns the table's new Route (None if superseded).

        Raises InvalidTarget (nothing stored) for a target the proxy cannot parse, and
        StoreUnavailable or the store's own exception when the store did not take it.
        """
        prefix = clean_path(prefix)
        parse_target(data.get("target"))  # type: ignore[arg-type]  # before the store; cached
        la = time.time() if last_activity is None else last_activity
        return await self._write(prefix, self._add, (prefix, data, la))

    async def remove(self, prefix: str) -> bool:
        """Delete the route from the store, then from the table; False when there was none."""
        prefix = clean_path(prefix)
        return await self._write(prefix, self._remove, (prefix,))

    async def _add(self, prefix: str, data: dict, la: float) -> Route | None:
        if await self.store.put_route(prefix, data, la) == SUPERSEDED:
            return None
        # (table.add parses the target again: parse_target answers it from its cache;
        # subclasses of RouteTable, e.g. the --workers FeedTable, take exactly these arguments)
        route = self.table.add(prefix, data, la)
        if self._listeners:  # (none without --workers: no RouteChange, no coroutine per add)
            await self._notify(RouteChange("add", prefix, data, la, origin="api"))
        return route

    async def _remove(self, prefix: str) -> bool:
        existed = await self.store.delete_route(prefix)
        if existed == SUPERSEDED:
            return True
        in_table = self.table.remove(prefix)
        if in_table:
            await self._notify(RouteChange("remove", prefix, origin="api"))
        return bool(existed) or in_table

    def _check_open(self) -> None:
        if self.closed:
            raise StoreUnavailable("route store closed: cfproxy is shutting down")

    async def _write(self, prefix: str, step: Callable[..., Coroutine], args: tuple) -> Any:
        """Run `step(*args)` (store, then table) after the previous write to the same key.

        No Task of its own: a write that never suspends (the memory store) completes inside
        the caller's first step, so the API answers it inside data_received. When the caller
        is cancelled while the store is busy (the API client walked away), the store may
        already have the write: it is run again in the background (puts and deletes are
        idempotent) so that store and table agree, and later writes to the key wait for it.
        """
        loop = asyncio.get_running_loop()
        key = self.table.match_key(prefix)
        previous = self._writing.get(key)
        mine = loop.create_future()
        self._writing[key] = mine
        release = True
        try:
            if previous is not None and not previous.done():
                await asyncio.shield(previous)  # (a cancelled waiter must not cancel it)
            self._check_open()
            try:
                return await step(*args)
            except asyncio.CancelledError:
                redo = loop.create_task(step(*args))
                self._background.add(redo)
                redo.add_done_callback(self._background.discard)
                redo.add_done_callback(lambda t: self._release(key, mine, t))
                release = False
                raise
        finally:
            if release:
                self._release(key, mine, None)

    def _release(self, key: str, mine: asyncio.Future, redo: asyncio.Task | None) -> None:
        if redo is not None and not redo.cancelled() and redo.exception() is not None:
            log.error("Finishing an API write whose client left failed: %s", redo.exception())
        if not mine.done():
            mine.set_result(None)
        if self._writing.get(key) is mine:
            del self._writing[key]

    # --- changes made elsewhere -------------------------------------------------------------------
    def apply(self, change: RouteChange) -> None:
        """Apply a change from the store's feed (or another process) to the table now."""
        kind = change.kind
        if kind == "add":
            if self._table_add(change.prefix, change.data or {}, change.last_activity) is None:
                if self._listeners:  # not routable: whatever was routed there is gone too
                    self._notify_now(RouteChange("remove", change.prefix, origin=change.origin))
                return
        elif kind == "remove":
            if not self.table.remove(change.prefix):
                return
        elif kind == "activity":
            self._merge_activity(change.activity, saved=change.origin == "store")
        else:
            log.warning("Ignoring a route change of unknown kind %r", kind)
            return
        if self._listeners:
            self._notify_now(change)

    def note_activity(self, batch: Mapping[str, float]) -> None:
        """last_activity seen by another process: max-merged now, saved at the next flush."""
        self.apply(RouteChange("activity", activity=batch, origin="peer"))

    def _merge_activity(self, batch: Mapping[str, float], saved: bool) -> None:
        get = self.table.get
        for prefix, ts in batch.items():
            route = get(prefix)
            if route is None:
                continue
            if route.last_activity < ts:
                route.last_activity = ts
            if saved and route.saved_activity < ts:
                route.saved_activity = ts  # the store has it already: no flush back

    def _table_add(self, prefix: str, data: dict, la: float | None) -> Route | None:
        try:
            return self.table.add(prefix, data, time.time() if la is None else la)
        except InvalidTarget as e:
            log.warning("Not routing %s: %s", prefix, e)
            self.table.remove(prefix)
            return None

    # --- listeners ------------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(change)` after every change applied to the table; returns unsubscribe."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)
        return unsubscribe

    async def _notify(self, change: RouteChange) -> None:
        for listener in list(self._listeners):
            result = listener(change)
            if inspect.isawaitable(result):
                await result

    def _notify_now(self, change: RouteChange) -> None:
        for listener in list(self._listeners):
            try:
                result = listener(change)
            except Exception as e:  # noqa: BLE001 - one listener must not stop the feed
                log.error("Route change listener failed: %s", e, exc_info=True)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    # --- last_activity --------------------------------------------------------------------------
    def moved_activity(self) -> list[tuple[Route, float]]:
        """(route, last_activity) of every route the hot path moved since the last save."""
        return [(route, route.last_activity) for route in self.table
                if route.last_activity > route.saved_activity]

    async def flush(self) -> int:
        """Save moved last_activity in one batch; returns how many routes it carried."""
        moved = self.moved_activity()
        if not moved:
            return 0
        await self.store.save_activity({route.prefix: la for route, la in moved})
        for route, la in moved:
            if route.saved_activity < la:
                route.saved_activity = la
        return len(moved)

    async def _flush_loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except Exception as e:  # noqa: BLE001 - retried at the next tick
                if not failing:
                    log.warning("Saving last_activity to the route store failed (retrying): %s", e)
                failing = True
            else:
                if failing:
                    log.info("Saving last_activity to the route store works again")
                failing = False


async def load_routes_into(store: RouteStore, table: RouteTable) -> int:
    """Fill `table` from `store` once, without a running sync (tools and tests)."""
    sync = StoreSync(store, table)
    for stored in await store.load_routes():
        sync._table_add(stored.prefix, stored.data, stored.last_activity)
    return len(table)


__all__ = ["SUPERSEDED", "StoreSync", "StoredRoute", "load_routes_into"]
