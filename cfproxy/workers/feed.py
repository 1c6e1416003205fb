"""The workers' change feed: every write to the primary's route table, to every worker, acknowledged.

    table = FeedTable(host_routing=...)        the primary's RouteTable; reports each write
    feed = Feed(table, on_timeout)             batches writes, numbers them, sends them
    await feed.applied_everywhere()            the API's read-your-writes barrier (api.py)

Theory of operation. Whatever writes the primary's table (the memory store, the
store sync layer applying an API write or a Redis change feed, a resync) goes
through `RouteTable.add/remove/clear`; `FeedTable` records each write as an op
(`("a", prefix, data, last_activity)`, `("r", prefix)`, `("c",)`) right after it
succeeded. Ops written in one event-loop iteration travel as one batch
`("ops", seq, [op, ...])`, pickled once and written to every worker's channel;
`seq` grows by one per batch. A worker applies a batch to its own table and answers
`("ack", seq)`.

`applied_everywhere` (called by the API before it answers a write) sends what is
pending and waits until every *live* worker acknowledged the current seq, at most
`ack_timeout` seconds; a worker that did not is handed to `on_timeout` (the
supervisor replaces it) and the answer goes out. Live = the worker was told to
start accepting. A worker still starting needs no wait: it received the whole table
and every later batch before the "go" that lets it accept (see primary.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from cfproxy.routing.table import Route, RouteTable
from cfproxy.workers.channel import encode

DEFAULT_ACK_TIMEOUT = 2.0


class FeedTable(RouteTable):
    """A RouteTable that calls `on_write(op)` after every successful write (primary only)."""

    __slots__ = ("on_write",)

    def __init__(self, host_routing: bool = False) -> None:
        super().__init__(host_routing=host_routing)
        self.on_write: Callable[[tuple], None] | None = None

    def add(self, prefix: str, data: dict, last_activity: float | None = None,
            *args: Any, **kwargs: Any) -> Route:
        route = super().add(prefix, data, last_activity, *args, **kwargs)
        if self.on_write is not None:
            self.on_write(("a", prefix, data, route.last_activity))
        return route

    def remove(self, prefix: str) -> bool:
        removed = super().remove(prefix)
        if removed and self.on_write is not None:
            self.on_write(("r", prefix))
        return removed

    def clear(self) -> None:
        super().clear()
        if self.on_write is not None:
            self.on_write(("c",))


def apply_ops(table: RouteTable, ops: list) -> None:
    """Apply a batch of ops to a worker's table (the primary's table already accepted them)."""
    from cfproxy.routing.target import InvalidTarget

    for op in ops:
        kind = op[0]
        if kind == "a":
            try:
                table.add(op[1], op[2], op[3])
            except InvalidTarget:  # pragma: no cover - the primary parsed the same target
                table.remove(op[1])
        elif kind == "r":
            table.remove(op[1])
        elif kind == "c":
            table.clear()


class Barrier:
    """One API write waiting for several workers: a future resolved when the last of them
    acknowledged (one future and one timer per write, not one per worker: asyncio.wait
    over per-worker futures cost ~25 us more per API write)."""

    __slots__ = ("seq", "pending", "future")

    def __init__(self, seq: int, pending: int, future: asyncio.Future) -> None:
        self.seq = seq
        self.pending = pending
        self.future = future

    def one_done(self) -> None:
        self.pending -= 1
        if self.pending <= 0 and not self.future.done():
            self.future.set_result(None)


class Subscriber:
    """What the feed needs of a worker: a channel to write to and its acknowledgements."""

    def __init__(self, send_frame: Callable[[bytes], None]) -> None:
        self.send_frame = send_frame
        self.live = False  # told to accept: writes wait for its ack
        self.acked = 0  # highest seq it applied
        self.waiters: list[Barrier] = []  # in seq order

    def acknowledge(self, seq: int) -> None:
        if seq > self.acked:
            self.acked = seq
        waiters = self.waiters
        while waiters and waiters[0].seq <= self.acked:
            waiters.pop(0).one_done()

    def release(self) -> None:
        """The worker is gone: nobody waits for it any more."""
        self.live = False
        waiters, self.waiters = self.waiters, []
        for barrier in waiters:
            barrier.one_done()


class Feed:
    """Sequence numbers, batching and the acknowledged broadcast of table writes."""

    def __init__(self, table: FeedTable, on_timeout: Callable[[Subscriber, int], None],
                 ack_timeout: float = DEFAULT_ACK_TIMEOUT) -> None:
        self.table = table
        self.on_timeout = on_timeout
        self.ack_timeout = ack_timeout
        self.seq = 0
        self.subscribers: list[Subscriber] = []
        self._pending: list[tuple] = []
        self._scheduled = False
        table.on_write = self._record

    def _record(self, op: tuple) -> None:
        self._pending.append(op)
        if not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop yet: the next flush or snapshot carries it
            self._scheduled = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send the pending ops as one numbered batch to every subscriber."""
        self._scheduled = False
        if not self._pending:
            return
        ops, self._pending = self._pending, []
        self.seq += 1
        if not self.subscribers:
            return
        frame = encode(("ops", self.seq, ops))
        for sub in self.subscribers:
            sub.send_frame(frame)

    def snapshot(self) -> tuple:
        """("table", seq, [(prefix, data, last_activity), ...]): the whole table as of seq."""
        self.flush()
        return ("table", self.seq, [(r.prefix, r.data, r.last_activity) for r in self.table])

    def subscribe(self, sub: Subscriber) -> None:
        """Start sending batches to `sub` (call right after sending it `snapshot()`)."""
        sub.acked = self.seq
        self.subscribers.append(sub)

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub in self.subscribers:
            self.subscribers.remove(sub)
        sub.release()

    async def applied_everywhere(self) -> None:
        """Return once every live worker applied every write made so far (bounded wait)."""
        self.flush()
        target = self.seq
        laggards = [s for s in self.subscribers if s.live and s.acked < target]
        if not laggards:
            return
        loop = asyncio.get_running_loop()
        barrier = Barrier(target, len(laggards), loop.create_future())
        for sub in laggards:
            sub.waiters.append(barrier)
        timer = loop.call_later(self.ack_timeout, _expire, barrier.future)
        try:
            await barrier.future
        finally:
            timer.cancel()
        if barrier.pending > 0:
            for sub in laggards:
                if barrier in sub.waiters:
                    sub.waiters.remove(barrier)
                if sub.live and sub.acked < target:
                    self.on_timeout(sub, target)


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)

