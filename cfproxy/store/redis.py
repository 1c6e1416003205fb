"""RedisStore: one route table shared by several cfproxy replicas through Redis.

    --storage-backend 'redis://127.0.0.1:6379/0?prefix=cfproxy&resync_interval=10&flush_interval=1'

Owns the Redis data layout, the writes the API makes through it, and keeping
this replica's in-memory RouteTable in step with every other replica's
writes. The proxy's hot path never waits on Redis (DESIGN.md rule 1): it
reads the local table, which this store feeds.

Theory of operation
-------------------
Redis holds the truth, in six keys under the prefix P (default "cfproxy"):

    P:routes    hash   match key -> {"prefix": posted key, "data": {...}} (orjson)
    P:versions  hash   match key -> sequence number of the write that stored it
    P:order     zset   match key scored by the sequence number of its first add
                       (insertion order; a replace keeps its position, CHP 2.7)
    P:activity  zset   match key scored by last_activity (epoch seconds, max of all replicas)
    P:seq       string the write counter (INCR)
    P:epoch     string a random id naming this data set

The match key is RouteTable.match_key(clean_path(path)) (the host part
lower-cased under --host-routing), so two spellings of one route are one
field; the posted spelling is kept in the value for GET /api/routes.

Rule 1: every write is one Lua script that bumps P:seq, changes the keys and
PUBLISHes "<epoch> <seq> <json>" on the channel P:changes, atomically, so
subscribers see changes in the order Redis applied them.

Rule 2: this replica applies a change to its table when its sequence number
is newer than what it already knows for that key (the writer's StoreSync
applies its own write at once, when the script returns, and the echo is
ignored; a late echo of an older write can never undo a newer one, and a
write whose reply comes after a newer change was heard is not applied:
put_route/delete_route answer SUPERSEDED). Changes reach the table only
through the StoreSync sink (`watch`), on the event loop thread.

Rule 3: a full resync (snapshot of every key in one MULTI) repairs whatever
pub/sub lost. It runs at start-up, after a reconnect, on an epoch change, when
a message arrives out of sequence, and when the periodic check (every
`resync_interval` seconds: P:epoch and P:seq only) finds a change this replica
never heard of; every 6th check resyncs regardless (out-of-band edits). Routes
written after the snapshot (a newer sequence number applied locally) are left
alone; messages older than the snapshot are ignored.

Rule 4: the epoch names a data set and detects a Redis that lost its data
(restart without persistence, FLUSHALL, eviction).
- Refill: a replica that finds no epoch and holds routes refills Redis with
  its table, once and atomically: the REFILL script claims the epoch with
  SET NX semantics and writes every route in the same script, or, when
  another replica claimed it first, writes nothing and returns that epoch.
  A replica with an empty table never refills (it would make "no routes" the
  truth); its first write creates the data set (a fresh deployment).
- Adoption: a replica that sees an epoch it did not build (after a reconnect,
  or announced on the channel) takes that data set as it is: its table
  becomes Redis's (routes Redis does not have are dropped). It never merges
  its own table back, so a DELETE acknowledged after the refill stays done.
Refill, adoption and every reconnect are logged. The window that remains
(docs/scale-out.md): a write acknowledged by a replica just before Redis lost
its data, which the refilling replica had not applied yet, is gone until the
Hub's next check_routes.

last_activity: the hot path writes a float into the local Route (as with the
memory store); StoreSync hands the routes whose activity moved to
`save_activity` every `flush_interval` seconds, which writes them with
`ZADD XX GT` (max of all replicas; a removed route is not resurrected) and
publishes them; the other replicas merge them into their tables (maximum), so
GET /api/routes on any replica, answered from memory, shows traffic through
every replica within about one flush interval.

Redis down: the proxy keeps serving from the local table, GET /api/routes
too; API writes raise RedisUnavailable ("Redis unavailable: connection
refused (redis://...)", the API answers 500 with it); the sync task
reconnects with backoff (0.1 s doubling to 5 s) and resyncs.

Must not: write the table other than through the sink, or be awaited on the
proxy's hot path. Redis Cluster is not supported (the scripts
touch several keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from cfproxy.log import log
from cfproxy.routing.table import RouteTable
from cfproxy.store.base import (
    ChangeSink,
    RouteChange,
    RouteStore,
    StoredRoute,
    StoreUnavailable,
    positive_option,
)
from cfproxy.store.sync import SUPERSEDED

INSTALL_HINT = "--storage-backend redis://... needs `pip install cfproxy[redis]`"

DEFAULT_PREFIX = "cfproxy"
DEFAULT_RESYNC_INTERVAL = 10.0  # seconds between full resyncs
DEFAULT_FLUSH_INTERVAL = 1.0  # seconds between last_activity flushes
RECONNECT_MIN = 0.1  # first reconnect delay (s), doubled per failure ...
RECONNECT_MAX = 5.0  # ... up to this
CONNECT_TIMEOUT = 2.0  # default socket_connect_timeout (s) unless the URL sets one
COMMAND_TIMEOUT = 2.0  # default socket_timeout (s): a hung Redis fails API calls, not hangs them
FLUSH_CHUNK = 1000  # routes per ZADD
CLOSE_TIMEOUT = 2.0  # seconds close() waits for the sync task
FULL_RESYNC_EVERY = 6  # the periodic check reads everything every 6th time, else 2 counters

# Our own URL query options; the rest of the query goes to redis-py (socket_timeout, ...).
_OPTIONS = ("prefix", "resync_interval", "flush_interval")


class RedisUnavailable(StoreUnavailable):
    """Redis could not be reached or answered with an error; the API answers 500 with it."""


# --- Lua: one script per kind of write (rule 1) ---------------------------------------------
# KEYS: 1 routes, 2 versions, 3 order, 4 activity, 5 seq, 6 epoch

_ADD = """
local epoch = redis.call('GET', KEYS[6])
if not epoch then
  if ARGV[6] == '' then return redis.error_reply('NOEPOCH route store not initialised') end
  epoch = ARGV[6]
  redis.call('SET', KEYS[6], epoch)
end
local seq = redis.call('INCR', KEYS[5])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], seq)
redis.call('ZADD', KEYS[3], 'NX', seq, ARGV[1])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1]) end
redis.call('PUBLISH', ARGV[4], epoch .. ' ' .. seq .. ' ' .. ARGV[5])
return {seq, epoch}
"""
# ARGV: 1 match key, 2 value json, 3 last_activity ('' = keep), 4 channel, 5 message json,
#       6 a new epoch to create the data set with when there is none ('' = refuse: NOEPOCH)

_REMOVE = """
local epoch = redis.call('GET', KEYS[6])
if not epoch then
  if ARGV[4] == '' then return redis.error_reply('NOEPOCH route store not initialised') end
  return {0, ''}
end
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return {0, epoch} end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
local seq = redis.call('INCR', KEYS[5])
redis.call('PUBLISH', ARGV[2], epoch .. ' ' .. seq .. ' ' .. ARGV[3])
return {seq, epoch}
"""
# ARGV: 1 match key, 2 channel, 3 message json, 4 '1' = no data set means nothing to remove

_REFILL = """
local epoch = redis.call('GET', KEYS[6])
if epoch then return {0, epoch} end
epoch = ARGV[1]
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('SET', KEYS[6], epoch)
local seq = 0
for i = 3, #ARGV, 3 do
  seq = seq + 1
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[2], ARGV[i], seq)
  redis.call('ZADD', KEYS[3], seq, ARGV[i])
  redis.call('ZADD', KEYS[4], ARGV[i + 2], ARGV[i])
end
redis.call('SET', KEYS[5], seq)
redis.call('PUBLISH', ARGV[2], epoch .. ' 0 {"op":"resync"}')
return {seq, epoch}
"""
# ARGV: 1 the epoch to claim, 2 channel, then (match key, value json, last_activity)*.
# Claims the epoch only when there is none (SET NX semantics, atomic with the refill): of
# several replicas noticing the loss at once exactly one refills; the others adopt its set.


@dataclass(frozen=True)
class Keys:
    """The six keys of one route table under a prefix (see the module docstring)."""

    routes: str
    versions: str
    order: str
    activity: str
    seq: str
    epoch: str

    @classmethod
    def under(cls, prefix: str) -> Keys:
        return cls(*(f"{prefix}:{name}" for name in
                     ("routes", "versions", "order", "activity", "seq", "epoch")))

    @property
    def in_script_order(self) -> list[str]:
        """KEYS[1..6] of the Lua scripts."""
        return [self.routes, self.versions, self.order, self.activity, self.seq, self.epoch]


@dataclass
class Snapshot:
    """Everything in Redis at one instant (one MULTI)."""

    epoch: bytes | None
    seq: int
    routes: list[tuple[str, str, dict, int, float | None]]  # (mkey, prefix, data, version, activity)


def parse_url(url: str) -> tuple[str, dict[str, str]]:
    """Split our options (prefix, resync_interval, flush_interval) off a redis URL."""
    parts = urlsplit(url)
    ours: dict[str, str] = {}
    rest: list[tuple[str, str]] = []
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k in _OPTIONS:
            ours[k] = v
        else:
            rest.append((k, v))
    return urlunsplit(parts._replace(query=urlencode(rest))), ours


def redacted_url(url: str) -> str:
    """The URL without its password (user:password@ or ?password=), for messages."""
    parts = urlsplit(url)
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{netloc}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k == "password" for k, _ in query):
        parts = parts._replace(query=urlencode(
            [(k, "***" if k == "password" else v) for k, v in query], safe="*"))
    return urlunsplit(parts)


class RedisStore(RouteStore):
    """A RouteStore in Redis, feeding this replica's table through StoreSync (module doc)."""

    def __init__(self, config: Any, table: RouteTable | None = None) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import ExponentialBackoff
        except ImportError:
            raise ImportError(INSTALL_HINT) from None
        self._redis_mod = aioredis
        url = config if isinstance(config, str) else config.storage_backend
        # read only (match keys, the routes a refill writes back); written through the sink
        self._table = table if table is not None else RouteTable(
            host_routing=bool(getattr(config, "host_routing", False)))
        redis_url, options = parse_url(url)
        self.url = redacted_url(url)
        prefix = options.get("prefix", DEFAULT_PREFIX)
        if not prefix:
            raise ValueError("prefix= in the redis URL must not be empty")
        self.prefix = prefix
        self.resync_interval = positive_option(options, "resync_interval", DEFAULT_RESYNC_INTERVAL,
                                               " in the redis URL")
        self.flush_interval = positive_option(options, "flush_interval", DEFAULT_FLUSH_INTERVAL,
                                              " in the redis URL")
        kwargs: dict[str, Any] = {
            # one quick retry: the first command on a pooled connection to a restarted Redis
            # fails. Not on a timeout: a hung Redis answers the API in COMMAND_TIMEOUT.
            "retry": Retry(ExponentialBackoff(cap=0.1, base=0.02), 1,
                           supported_errors=(aioredis.ConnectionError,)),
        }
        query = dict(parse_qsl(urlsplit(redis_url).query))
        if "socket_connect_timeout" not in query:
            kwargs["socket_connect_timeout"] = CONNECT_TIMEOUT
        if "socket_timeout" not in query:
            kwargs["socket_timeout"] = COMMAND_TIMEOUT
        self._redis = aioredis.Redis.from_url(redis_url, decode_responses=False, **kwargs)

        self._keys = Keys.under(prefix)
        self.channel = f"{prefix}:changes"
        self._add_script = self._redis.register_script(_ADD)
        self._remove_script = self._redis.register_script(_REMOVE)
        self._refill_script = self._redis.register_script(_REFILL)

        # --- sync state (rules 2-4) ---
        self._sink: ChangeSink | None = None  # StoreSync: where changes go
        self._epoch: bytes | None = None  # the data set the table mirrors
        self._heard = 0  # every change up to this sequence number was heard on the channel
        self._floor = 0  # sequence number of the last applied snapshot
        self._versions: dict[str, int] = {}  # match key -> seq of the locally applied write
        self._removed: dict[str, int] = {}  # match key -> seq of a remove applied since the snapshot
        self._resync_lock = asyncio.Lock()
        self._resync_wanted = False
        self._checks = 0
        self._tasks: list[asyncio.Task] = []
        self._closed = False
        self.connected = False  # the sync task's view: subscribed and resynced

    # --- lifecycle ------------------------------------------------------------------------
    def watch(self, sink: ChangeSink) -> None:
        self._sink = sink

    async def start(self) -> None:
        """Connect, feed every route in Redis to the table, start the sync task.

        Raises RedisUnavailable when Redis cannot be reached (the server exits 1).
        """
        if self._sink is None:
            raise RuntimeError("RedisStore.start() before watch(): run it under a StoreSync")
        pubsub = self._redis.pubsub()
        try:
            await self._call(pubsub.subscribe(self.channel))  # before the snapshot: no gap
            self._watch_reconnects(pubsub)
            n = await self._call(self.resync())
        except BaseException:
            await _aclose(pubsub)
            raise
        log.info("Redis route store %s (prefix %s): %d route(s) loaded", self.url, self.prefix, n)
        self.connected = True
        self._tasks = [asyncio.create_task(self._sync_loop(pubsub), name="cfproxy-redis-sync")]

    async def load_routes(self) -> list[StoredRoute]:
        return []  # start() fed every route through the sink already

    async def close(self) -> None:
        """Stop the sync task and close the connections (StoreSync flushed before)."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # bounded: redis-py's read timeout can absorb a cancellation (Python 3.11
            # asyncio.timeout); the loop also checks _closed after every read
            await asyncio.wait(self._tasks, timeout=CLOSE_TIMEOUT)
        self._tasks = []
        await _aclose(self._redis)

    # --- writes (the RouteStore interface) ---------------------------------------------------
    def match_key(self, path: str) -> str:
        return self._table.match_key(self.clean_path(path))

    async def put_route(self, prefix: str, data: dict, last_activity: float) -> Any:
        """Store (replace) the route in Redis; SUPERSEDED when a newer change was applied."""
        mkey = self._table.match_key(prefix)
        value = orjson.dumps({"prefix": prefix, "data": data})
        message = orjson.dumps({"op": "add", "k": mkey, "p": prefix, "d": data, "t": last_activity})
        create = "" if len(self._table) else os.urandom(8).hex()  # rule 4: only an empty replica
        args = [mkey, value, repr(last_activity), self.channel, message, create]
        result = await self._scripted(self._add_script, args)
        seq, epoch = int(result[0]), result[1]
        if epoch != self._epoch:
            await self._call(self.resync())  # a data set this replica did not have: adopt it
            return SUPERSEDED  # the resync applied Redis as it is, this write included
        if seq <= self._known(mkey):
            return SUPERSEDED
        self._removed.pop(mkey, None)
        self._versions[mkey] = seq
        return None

    async def delete_route(self, prefix: str) -> Any:
        """Remove the route from Redis: True, False when Redis has none, or SUPERSEDED."""
        mkey = self._table.match_key(prefix)
        message = orjson.dumps({"op": "remove", "k": mkey})
        empty = "" if len(self._table) else "1"
        result = await self._scripted(self._remove_script, [mkey, self.channel, message, empty])
        seq, epoch = int(result[0]), result[1]
        if seq == 0:
            return False  # Redis has no such route; a stale local copy goes with it
        if epoch != self._epoch:
            await self._call(self.resync())
            return SUPERSEDED
        if seq <= self._known(mkey):
            return SUPERSEDED
        self._versions.pop(mkey, None)
        self._removed[mkey] = seq
        return True

    async def save_activity(self, batch: Mapping[str, float]) -> None:
        """ZADD XX GT (max over replicas, never resurrecting a removed route), then tell the
        other replicas on the channel."""
        match_key = self._table.match_key
        items = [(match_key(prefix), ts) for prefix, ts in batch.items()]
        epoch = self._epoch
        if not items or epoch is None:
            return  # no data set yet: nothing in Redis to record activity for
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for i in range(0, len(items), FLUSH_CHUNK):
                    chunk = dict(items[i:i + FLUSH_CHUNK])
                    pipe.zadd(self._keys.activity, chunk, xx=True, gt=True)
                    pipe.publish(self.channel, epoch + b" 0 " + orjson.dumps({"op": "activity", "a": chunk}))
                await pipe.execute()
        except self._redis_mod.RedisError as e:
            raise self._unavailable(e) from None

    async def _scripted(self, script: Any, args: list) -> Any:
        """Run a write script; on NOEPOCH (Redis lost its data) resync (refills) and retry once."""
        for attempt in (1, 2):
            try:
                return await script(keys=self._keys.in_script_order, args=args)
            except self._redis_mod.ResponseError as e:
                if attempt == 1 and str(e).startswith("NOEPOCH"):
                    await self._call(self.resync())
                    continue
                raise RedisUnavailable(f"Redis refused the write: {e} ({self.url})") from None
            except self._redis_mod.RedisError as e:
                raise self._unavailable(e) from None
            except OSError as e:
                raise self._unavailable(e) from None
        raise AssertionError("unreachable")  # pragma: no cover

    # --- applying changes to the local table (rule 2) --------------------------------------
    def _known(self, mkey: str) -> int:
        return max(self._versions.get(mkey, 0), self._removed.get(mkey, 0), self._floor)

    def _apply_add(self, mkey: str, prefix: str, data: dict, seq: int, when: float) -> None:
        if seq <= self._known(mkey):
            return
        self._removed.pop(mkey, None)
        self._versions[mkey] = seq
        self._table_add(prefix, data, when)

    def _apply_remove(self, mkey: str, seq: int) -> None:
        if seq <= self._known(mkey):
            return
        self._versions.pop(mkey, None)
        self._removed[mkey] = seq
        self._table_remove(mkey)

    def _table_add(self, prefix: str, data: dict, when: float) -> None:
        self._sink.apply(RouteChange("add", prefix, data, when))  # type: ignore[union-attr]

    def _table_remove(self, mkey: str) -> None:
        if self._table.get(mkey) is not None:
            self._sink.apply(RouteChange("remove", mkey))  # type: ignore[union-attr]

    def _activity(self, seen: dict[str, float]) -> None:
        """Activity Redis has (max over replicas): merged, and known to be saved."""
        if seen:
            self._sink.apply(RouteChange("activity", activity=seen))  # type: ignore[union-attr]

    def on_message(self, raw: bytes) -> None:
        """Apply one pub/sub message "<epoch> <seq> <json>"."""
        try:
            epoch, seq_text, payload = raw.split(b" ", 2)
            seq = int(seq_text)
            msg = orjson.loads(payload)
            op = msg["op"]
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            log.warning("Ignoring a malformed message on %s: %r", self.channel, raw[:200])
            return
        if epoch != self._epoch or op == "resync":
            self._resync_wanted = True
            return
        if op == "activity":  # another replica's flush (no sequence number)
            try:
                seen = {str(k): float(v) for k, v in msg["a"].items()}
            except (KeyError, TypeError, ValueError, AttributeError):
                log.warning("Ignoring a malformed message on %s: %r", self.channel, raw[:200])
                return
            self._activity(seen)
            return
        if seq > self._heard:
            if seq != self._heard + 1:
                self._resync_wanted = True  # a change was lost on the way (rule 3)
            self._heard = seq
        try:
            if op == "add":
                when = msg.get("t")
                if not isinstance(when, (int, float)):
                    route = self._table.get(msg["k"])
                    when = route.last_activity if route is not None else time.time()
                self._apply_add(msg["k"], msg["p"], msg["d"], seq, float(when))
            elif op == "remove":
                self._apply_remove(msg["k"], seq)
        except (KeyError, TypeError, AttributeError):
            log.warning("Ignoring a malformed message on %s: %r", self.channel, raw[:200])

    # --- full resync (rules 3 and 4) ------------------------------------------------------
    async def _snapshot(self) -> Snapshot:
        # One MULTI of plain reads. (A Lua script building one blob was tried: it blocked
        # Redis ~100 ms for 10,000 routes. These replies cost Redis well under 10 ms; parsing
        # them costs ~30 ms here with hiredis installed, ~300 ms with redis-py's pure-Python
        # parser, hence the `hiredis` in the `redis` extra.)
        routes_key, versions_key, order_key, activity_key, seq_key, epoch_key = self._keys.in_script_order
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(epoch_key)
            pipe.get(seq_key)
            pipe.hgetall(routes_key)
            pipe.hgetall(versions_key)
            pipe.zrange(order_key, 0, -1)
            pipe.zrange(activity_key, 0, -1, withscores=True)
            epoch, seq, values, versions, order, activity = await pipe.execute()
        scores = dict(activity)
        routes = []
        if len(order) != len(values):  # routes missing from the order set go last
            ordered = set(order)
            order = [*order, *(k for k in values if k not in ordered)]
        for member in order:
            value = values.get(member)
            if value is None:
                continue
            try:
                prefix, data = _decode_value(value)
                mkey = member.decode("utf-8")
                version = int(versions.get(member) or 0)
            except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
                log.warning("Skipping unreadable route %r in %s", member[:200], routes_key)
                continue
            routes.append((mkey, prefix, data, version, scores.get(member)))
        return Snapshot(epoch, int(seq or 0), routes)

    async def check(self) -> bool:
        """The periodic check (rule 3): a full resync only when a change was not heard, or
        every FULL_RESYNC_EVERY-th time. Returns True when it resynced."""
        self._checks += 1
        if self._checks % FULL_RESYNC_EVERY:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(self._keys.epoch)
                pipe.get(self._keys.seq)
                epoch, seq = await pipe.execute()
            if epoch == self._epoch and int(seq or 0) <= self._heard:
                return False
        await self.resync()
        return True

    async def resync(self) -> int:
        """Make the local table equal Redis (rule 3); refill Redis first when it lost its data
        and this replica holds routes, adopt a data set this replica did not build (rule 4).
        Returns the number of routes in the table."""
        async with self._resync_lock:
            self._resync_wanted = False
            snap = await self._snapshot()
            if snap.epoch is None and len(self._table):
                refilled, epoch = await self._refill()
                if refilled is not None:
                    log.warning("Redis at %s had no routes: refilled it with this replica's %d "
                                "route(s) (data set %s)", self.url, refilled, epoch.decode())
                snap = await self._snapshot()
            if snap.epoch is None:
                return len(self._table)  # nothing to follow yet; the first write creates it
            if snap.epoch != self._epoch and self._epoch is not None:
                log.warning("Redis at %s holds data set %s, not %s: adopting its %d route(s) "
                            "as they are", self.url, snap.epoch.decode(), self._epoch.decode(),
                            len(snap.routes))
            self._apply_snapshot(snap)
            return len(self._table)

    async def _refill(self) -> tuple[int | None, bytes]:
        """Claim the epoch and write this replica's table, atomically; (None, epoch) when
        another replica claimed it first (then this one adopts that data set)."""
        epoch = os.urandom(8).hex()
        args: list = [epoch, self.channel]
        match_key = self._table.match_key
        for route in self._table:
            args += [match_key(route.prefix), orjson.dumps({"prefix": route.prefix, "data": route.data}),
                     repr(route.last_activity)]
        result = await self._refill_script(keys=self._keys.in_script_order, args=args)
        won = result[1] == epoch.encode()
        return (int(result[0]) if won else None), result[1]

    def _apply_snapshot(self, snap: Snapshot) -> None:
        if snap.epoch != self._epoch:
            # another data set: every local write we know of is from the old one
            self._epoch = snap.epoch
            self._versions.clear()
            self._removed.clear()
            self._floor = 0
            self._heard = 0
        newer = snap.seq  # local writes above this happened after the snapshot
        present = set()
        table = self._table
        seen: dict[str, float] = {}
        for mkey, prefix, data, version, activity in snap.routes:
            present.add(mkey)
            if self._versions.get(mkey, 0) > newer or self._removed.get(mkey, 0) > newer:
                continue
            local = table.get(mkey)
            remote = activity if activity is not None else None
            if local is None or local.prefix != prefix or local.data != data:
                when = remote if remote is not None else time.time()
                self._table_add(prefix, data, when)
                if local is not None and local.last_activity > when:
                    # activity Redis does not have yet: keep it, and let it be flushed
                    self._sink.apply(RouteChange(  # type: ignore[union-attr]
                        "activity", activity={mkey: local.last_activity}, origin="replica"))
            elif remote is not None:
                seen[mkey] = remote
            self._versions[mkey] = version
        self._activity(seen)
        for route in list(table):
            mkey = table.match_key(route.prefix)
            if mkey in present or self._versions.get(mkey, 0) > newer:
                continue
            self._table_remove(mkey)
            self._versions.pop(mkey, None)
        self._removed = {k: v for k, v in self._removed.items() if v > newer}
        self._floor = max(self._floor, newer)
        self._heard = max(self._heard, newer)

    # --- background task ------------------------------------------------------------------
    async def _sync_loop(self, pubsub: Any) -> None:
        """Apply pub/sub messages, resync periodically; on failure reconnect with backoff."""
        delay = RECONNECT_MIN
        next_resync = time.monotonic() + self.resync_interval
        while not self._closed:
            try:
                if pubsub is None:
                    pubsub = self._redis.pubsub()
                    await pubsub.subscribe(self.channel)
                    self._watch_reconnects(pubsub)
                    n = await self.resync()
                    next_resync = time.monotonic() + self.resync_interval
                    log.warning("Reconnected to Redis at %s: %d route(s) after resync", self.url, n)
                    self.connected = True
                    delay = RECONNECT_MIN
                while not self._closed:
                    wait = max(0.0, min(1.0, next_resync - time.monotonic()))
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
                    if self._closed:
                        break
                    if msg is not None and msg.get("type") == "message":
                        self.on_message(msg["data"])
                    if self._resync_wanted:
                        await self.resync()
                        next_resync = time.monotonic() + self.resync_interval
                    elif time.monotonic() >= next_resync:
                        await self.check()
                        next_resync = time.monotonic() + self.resync_interval
            except asyncio.CancelledError:
                await _aclose(pubsub)
                raise
            except Exception as e:  # noqa: BLE001 - any failure: reconnect, never die
                if self.connected:
                    log.warning("Lost Redis at %s (%s); serving from the local table, reconnecting",
                                self.url, _cause(e))
                else:
                    log.info("Redis at %s still unreachable (%s); next try in %.1f s",
                             self.url, _cause(e), delay)
                self.connected = False
                await _aclose(pubsub)
                pubsub = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
        await _aclose(pubsub)

    def _watch_reconnects(self, pubsub: Any) -> None:
        """redis-py reconnects a broken subscription by itself (one retry) and subscribes
        again; messages sent meanwhile are lost. Hear about it: log it and resync."""
        connection = getattr(pubsub, "connection", None)
        if connection is not None:
            connection.register_connect_callback(self._on_subscription_reconnect)

    def _on_subscription_reconnect(self, connection: Any) -> None:
        log.warning("Reconnected to Redis at %s (change subscription); resyncing", self.url)
        self._resync_wanted = True

    # --- errors ---------------------------------------------------------------------------
    def _unavailable(self, e: BaseException) -> RedisUnavailable:
        return RedisUnavailable(f"Redis unavailable: {_cause(e)} ({self.url})")

    async def _call(self, awaitable: Any) -> Any:
        """Await a Redis call; its failures become RedisUnavailable with a clear message."""
        try:
            return await awaitable
        except RedisUnavailable:
            raise
        except self._redis_mod.RedisError as e:
            raise self._unavailable(e) from None
        except OSError as e:
            raise self._unavailable(e) from None


def _decode_value(value: bytes) -> tuple[str, dict]:
    obj = orjson.loads(value)
    prefix, data = obj["prefix"], obj["data"]
    if not isinstance(prefix, str) or not isinstance(data, dict):
        raise TypeError("route value must be {prefix: str, data: object}")
    return prefix, data


_CONNECT_ERROR = re.compile(r"Error (-?\d+) connecting to \S+?\.? (.+)$")


def _cause(e: BaseException) -> str:
    """A short, lower-case cause: "connection refused", "timed out", "name or service ..."."""
    text = str(e).strip()
    m = _CONNECT_ERROR.search(text)
    if m is not None:
        code = int(m.group(1))
        if code > 0:  # an errno: "connection refused", "no route to host", ...
            return os.strerror(code).lower()
        return m.group(2).rstrip(".").lower()
    if isinstance(e, (TimeoutError, asyncio.TimeoutError)) or "Timeout" in type(e).__name__:
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    return text or type(e).__name__


async def _aclose(obj: Any) -> None:
    if obj is None:
        return
    close = getattr(obj, "aclose", None) or getattr(obj, "close", None)
    if close is None:
        return
    with contextlib.suppress(Exception):
        res = close()
        if asyncio.iscoroutine(res):
            await res
