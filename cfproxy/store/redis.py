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
is newer than what it already knows for that key (the writer applies its own
write at once, when the script returns, and ignores the echo; a late echo of
an older write can never undo a newer one).

Rule 3: a full resync (snapshot of every key in one MULTI) repairs whatever
pub/sub lost. It runs at start-up, after a reconnect, on an epoch change, when
a message arrives out of sequence, and when the periodic check (every
`resync_interval` seconds: P:epoch and P:seq only) finds a change this replica
never heard of; every 6th check resyncs regardless (out-of-band edits). Routes
written after the snapshot (a newer sequence number applied locally) are left
alone; messages older than the snapshot are ignored.

Rule 4: the epoch detects a Redis that lost its data (restart without
persistence, FLUSHALL, eviction). A replica that finds the epoch missing, or
changed under it, merges its own table back into Redis (routes Redis does not
have are re-added, in the replica's order) and everyone resyncs: a restarted
Redis gets its routes back from the replicas instead of every replica
dropping its routes. API reads and writes that find the epoch gone repair
first, so the Hub never sees the empty interval.

last_activity: the hot path writes a float into the local Route (as with the
memory store). Every `flush_interval` seconds the routes whose activity moved
since the last flush are written with `ZADD XX GT` (max of all replicas; a
removed route is not resurrected). get/get_all answer max(Redis, local), so
JupyterHub's idle culler sees traffic through any replica.

Redis down: the proxy keeps serving from the local table; API calls raise
RedisUnavailable (the API answers 500); the sync task reconnects with backoff
(0.1 s doubling to 5 s) and resyncs.

Must not: touch the table from anywhere but the event loop's thread, or be
awaited on the proxy's hot path. Redis Cluster is not supported (the scripts
touch several keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from cfproxy.log import log
from cfproxy.routing.table import Route, RouteTable
from cfproxy.routing.target import InvalidTarget
from cfproxy.store.base import RouteStore, to_datetime, to_timestamp

INSTALL_HINT = "--storage-backend redis://... needs `pip install cfproxy[redis]`"

DEFAULT_PREFIX = "cfproxy"
DEFAULT_RESYNC_INTERVAL = 10.0  # seconds between full resyncs
DEFAULT_FLUSH_INTERVAL = 1.0  # seconds between last_activity flushes
RECONNECT_MIN = 0.1  # first reconnect delay (s), doubled per failure ...
RECONNECT_MAX = 5.0  # ... up to this
CONNECT_TIMEOUT = 2.0  # default socket_connect_timeout (s) unless the URL sets one
COMMAND_TIMEOUT = 2.0  # default socket_timeout (s): a hung Redis fails API calls, not hangs them
FLUSH_CHUNK = 1000  # routes per ZADD
FULL_RESYNC_EVERY = 6  # the periodic check reads everything every 6th time, else 2 counters

# Our own URL query options; the rest of the query goes to redis-py (socket_timeout, ...).
_OPTIONS = ("prefix", "resync_interval", "flush_interval")


class RedisUnavailable(RuntimeError):
    """Redis could not be reached or answered with an error; the API answers 500."""


# --- Lua: one script per kind of write (rule 1) ---------------------------------------------
# KEYS: 1 routes, 2 versions, 3 order, 4 activity, 5 seq, 6 epoch

_ADD = """
local epoch = redis.call('GET', KEYS[6])
if not epoch then return redis.error_reply('NOEPOCH route store not initialised') end
local seq = redis.call('INCR', KEYS[5])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], seq)
redis.call('ZADD', KEYS[3], 'NX', seq, ARGV[1])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1]) end
redis.call('PUBLISH', ARGV[4], epoch .. ' ' .. seq .. ' ' .. ARGV[5])
return {seq, epoch}
"""
# ARGV: 1 match key, 2 value json, 3 last_activity ('' = keep), 4 channel, 5 message json

_REMOVE = """
local epoch = redis.call('GET', KEYS[6])
if not epoch then return redis.error_reply('NOEPOCH route store not initialised') end
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return {0, epoch} end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
local seq = redis.call('INCR', KEYS[5])
redis.call('PUBLISH', ARGV[2], epoch .. ' ' .. seq .. ' ' .. ARGV[3])
return {seq, epoch}
"""
# ARGV: 1 match key, 2 channel, 3 message json

_MERGE = """
local epoch = redis.call('GET', KEYS[6])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[6], epoch)
end
local added = 0
for i = 3, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    local seq = redis.call('INCR', KEYS[5])
    redis.call('HSET', KEYS[2], ARGV[i], seq)
    redis.call('ZADD', KEYS[3], 'NX', seq, ARGV[i])
    redis.call('ZADD', KEYS[4], 'GT', ARGV[i + 2], ARGV[i])
    added = added + 1
  end
end
if added > 0 then
  redis.call('PUBLISH', ARGV[2], epoch .. ' 0 {"op":"resync"}')
end
return {added, epoch}
"""
# ARGV: 1 new epoch (used when none), 2 channel, then (match key, value json, last_activity)*


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


def _seconds(options: dict[str, str], name: str, default: float) -> float:
    raw = options.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={raw!r} in the redis URL: expected a positive number of seconds")
    return value


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
    """A RouteStore in Redis, mirrored into this replica's RouteTable (see the module doc)."""

    # Writes through this store are applied to the app's table by the store itself, so the
    # API does not mirror them. (No `.table` attribute: GET /api/routes must come from
    # get_all(), which aggregates last_activity over the replicas.)
    owns_table = True

    def __init__(self, config: Any, table: RouteTable | None = None) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import ExponentialBackoff
        except ImportError:
            raise ImportError(INSTALL_HINT) from None
        self._redis_mod = aioredis
        url = config if isinstance(config, str) else config.storage_backend
        self._table = table if table is not None else RouteTable(
            host_routing=bool(getattr(config, "host_routing", False)))
        redis_url, options = parse_url(url)
        self.url = redacted_url(url)
        prefix = options.get("prefix", DEFAULT_PREFIX)
        if not prefix:
            raise ValueError("prefix= in the redis URL must not be empty")
        self.prefix = prefix
        self.resync_interval = _seconds(options, "resync_interval", DEFAULT_RESYNC_INTERVAL)
        self.flush_interval = _seconds(options, "flush_interval", DEFAULT_FLUSH_INTERVAL)
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

        self._keys = [f"{prefix}:{name}" for name in
                      ("routes", "versions", "order", "activity", "seq", "epoch")]
        self.channel = f"{prefix}:changes"
        self._add_script = self._redis.register_script(_ADD)
        self._remove_script = self._redis.register_script(_REMOVE)
        self._merge_script = self._redis.register_script(_MERGE)

        # --- sync state (rules 2-4) ---
        self._routes: dict[str, Route] = {}  # match key -> the Route this store put in the table
        self._epoch: bytes | None = None  # the data set the table mirrors
        self._heard = 0  # every change up to this sequence number was heard on the channel
        self._floor = 0  # sequence number of the last applied snapshot
        self._versions: dict[str, int] = {}  # match key -> seq of the locally applied write
        self._removed: dict[str, int] = {}  # match key -> seq of a remove applied since the snapshot
        self._flushed: dict[str, float] = {}  # match key -> last_activity Redis has at least
        self._resync_lock = asyncio.Lock()
        self._resync_wanted = False
        self._checks = 0
        self._tasks: list[asyncio.Task] = []
        self._closed = False
        self.connected = False  # the sync task's view: subscribed and resynced

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect, load the table from Redis and start the sync and flush tasks.

        Raises RedisUnavailable when Redis cannot be reached (the server exits 1).
        """
        pubsub = self._redis.pubsub()
        try:
            await self._call(pubsub.subscribe(self.channel))  # before the snapshot: no gap
            n = await self._call(self.resync())
        except BaseException:
            await _aclose(pubsub)
            raise
        log.info("Redis route store %s (prefix %s): %d route(s) loaded", self.url, self.prefix, n)
        self.connected = True
        self._tasks = [
            asyncio.create_task(self._sync_loop(pubsub), name="cfproxy-redis-sync"),
            asyncio.create_task(self._flush_loop(), name="cfproxy-redis-flush"),
        ]

    async def close(self) -> None:
        """Flush activity one last time (best effort), stop the tasks, close connections."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks = []
        if self.connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.flush_activity(), timeout=1.0)
        await _aclose(self._redis)

    # --- the store contract ---------------------------------------------------------------
    def match_key(self, path: str) -> str:
        return self._table.match_key(self.clean_path(path))

    async def get(self, path: str) -> dict | None:
        mkey = self.match_key(path)
        for attempt in (1, 2):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(self._keys[5])
                pipe.hget(self._keys[0], mkey)
                pipe.zscore(self._keys[3], mkey)
                epoch, value, activity = await self._call(pipe.execute())
            if epoch == self._epoch or attempt == 2:
                break
            await self._call(self.resync())  # Redis lost its data (rule 4): repair first
        if value is None:
            return None
        try:
            _prefix, data = _decode_value(value)
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            log.warning("Unreadable route %r in %s (a POST replaces it)", mkey, self._keys[0])
            return None
        data["last_activity"] = to_datetime(self._aggregate(mkey, activity))
        return data

    async def get_target(self, path: str) -> tuple[str, dict] | None:
        route = self._table.longest_match(path)
        if route is None:
            return None
        data = dict(route.data)
        data["last_activity"] = to_datetime(route.last_activity)
        return route.prefix, data

    async def get_all(self) -> dict[str, dict]:
        """Every route in insertion order, last_activity = max over the replicas."""
        snap = await self._call(self._snapshot())
        if snap.epoch != self._epoch:  # Redis lost its data (rule 4): repair before answering
            await self._call(self.resync())
            snap = await self._call(self._snapshot())
        out: dict[str, dict] = {}
        for mkey, prefix, data, _version, activity in snap.routes:
            data = dict(data)
            data["last_activity"] = to_datetime(self._aggregate(mkey, activity))
            out[prefix] = data
        return out

    async def add(self, path: str, data: dict) -> None:
        """Store (replace) the route in Redis and in this replica's table; last_activity = now."""
        data = dict(data)
        data.pop("last_activity", None)
        await self._write_add(self.clean_path(path), data, time.time())

    async def update(self, path: str, data: dict) -> None:
        """Shallow-merge into the route (no-op when absent); last_activity alone is a touch."""
        data = dict(data)
        when = to_timestamp(data.pop("last_activity", None)) if "last_activity" in data else None
        mkey = self.match_key(path)
        if data:
            value = await self._call(self._redis.hget(self._keys[0], mkey))
            if value is None:
                return
            prefix, current = _decode_value(value)
            current.update(data)
            await self._write_add(prefix, current, when)
        elif when is not None:
            await self._call(self._redis.zadd(self._keys[3], {mkey: when}, xx=True))
            route = self._routes.get(mkey)
            if route is not None:
                route.last_activity = when
                self._flushed[mkey] = when

    async def remove(self, path: str) -> None:
        mkey = self.match_key(path)
        message = orjson.dumps({"op": "remove", "k": mkey})
        result = await self._scripted(self._remove_script, [mkey, self.channel, message])
        seq, epoch = int(result[0]), result[1]
        if seq == 0:
            return  # Redis has no such route; a stale local copy goes at the next resync
        if epoch != self._epoch:
            await self._call(self.resync())
        else:
            self._apply_remove(mkey, seq)

    async def touch(self, path: str, when: datetime) -> None:
        """last_activity = max(current, when), in Redis and locally."""
        mkey = self.match_key(path)
        ts = when.timestamp()
        await self._call(self._redis.zadd(self._keys[3], {mkey: ts}, xx=True, gt=True))
        route = self._routes.get(mkey)
        if route is not None and route.last_activity < ts:
            route.last_activity = ts

    # --- writes ---------------------------------------------------------------------------
    async def _write_add(self, prefix: str, data: dict, when: float | None) -> None:
        mkey = self._table.match_key(prefix)
        value = orjson.dumps({"prefix": prefix, "data": data})
        message = orjson.dumps({"op": "add", "k": mkey, "p": prefix, "d": data, "t": when})
        args = [mkey, value, "" if when is None else repr(when), self.channel, message]
        result = await self._scripted(self._add_script, args)
        seq, epoch = int(result[0]), result[1]
        if epoch != self._epoch:
            await self._call(self.resync())  # another data set: take all of it
            return
        if when is None:
            route = self._routes.get(mkey)
            when = route.last_activity if route is not None else time.time()
        self._apply_add(mkey, prefix, data, seq, when)

    async def _scripted(self, script: Any, args: list) -> Any:
        """Run a write script; on NOEPOCH (Redis lost its data) resync (merges) and retry once."""
        for attempt in (1, 2):
            try:
                return await script(keys=self._keys, args=args)
            except self._redis_mod.ResponseError as e:
                if attempt == 1 and str(e).startswith("NOEPOCH"):
                    await self._call(self.resync())
                    continue
                raise RedisUnavailable(f"Redis at {self.url} refused the write: {e}") from None
            except self._redis_mod.RedisError as e:
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
        self._table_add(mkey, prefix, data, when)

    def _apply_remove(self, mkey: str, seq: int) -> None:
        if seq <= self._known(mkey):
            return
        self._versions.pop(mkey, None)
        self._removed[mkey] = seq
        self._table_remove(mkey)

    def _table_add(self, mkey: str, prefix: str, data: dict, when: float) -> bool:
        try:
            route = self._table.add(prefix, data, when)
        except InvalidTarget as e:
            log.warning("Not routing %s: %s", prefix, e)
            self._table_remove(mkey)
            return False
        self._routes[mkey] = route
        self._flushed[mkey] = when
        return True

    def _table_remove(self, mkey: str) -> None:
        self._table.remove(mkey)
        self._routes.pop(mkey, None)
        self._flushed.pop(mkey, None)

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
        if seq > self._heard:
            if seq != self._heard + 1:
                self._resync_wanted = True  # a change was lost on the way (rule 3)
            self._heard = seq
        try:
            if op == "add":
                when = msg.get("t")
                if not isinstance(when, (int, float)):
                    route = self._routes.get(msg["k"])
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
        routes_key, versions_key, order_key, activity_key, seq_key, epoch_key = self._keys
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
                pipe.get(self._keys[5])
                pipe.get(self._keys[4])
                epoch, seq = await pipe.execute()
            if epoch == self._epoch and int(seq or 0) <= self._heard:
                return False
        await self.resync()
        return True

    async def resync(self) -> int:
        """Make the local table equal Redis (rule 3); merge it back first when Redis lost
        its data (rule 4). Returns the number of routes in the table."""
        async with self._resync_lock:
            self._resync_wanted = False
            snap = await self._snapshot()
            if snap.epoch is None or (self._epoch is not None and snap.epoch != self._epoch):
                added = await self._merge_local()
                if snap.epoch is None and self._epoch is not None:
                    log.warning("Redis at %s had lost the routes; restored %d from this replica",
                                self.url, added)
                snap = await self._snapshot()
                if snap.epoch is None:
                    raise RedisUnavailable(f"Redis at {self.url}: could not initialise the routes")
            self._apply_snapshot(snap)
            return len(self._table)

    async def _merge_local(self) -> int:
        args: list = [os.urandom(8).hex(), self.channel]
        for mkey, route in self._routes.items():
            args += [mkey, orjson.dumps({"prefix": route.prefix, "data": route.data}),
                     repr(route.last_activity)]
        result = await self._merge_script(keys=self._keys, args=args)
        return int(result[0])

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
        for mkey, prefix, data, version, activity in snap.routes:
            present.add(mkey)
            if self._versions.get(mkey, 0) > newer or self._removed.get(mkey, 0) > newer:
                continue
            local = self._routes.get(mkey)
            remote = activity if activity is not None else 0.0
            if local is None or local.prefix != prefix or local.data != data:
                when = remote if activity is not None else time.time()
                if local is not None:
                    when = max(when, local.last_activity)
                if not self._table_add(mkey, prefix, data, when):
                    continue
            else:
                if local.last_activity < remote:
                    local.last_activity = remote
            self._flushed[mkey] = remote
            self._versions[mkey] = version
        for mkey in [k for k in self._routes if k not in present]:
            if self._versions.get(mkey, 0) > newer:
                continue
            self._table_remove(mkey)
            self._versions.pop(mkey, None)
        self._removed = {k: v for k, v in self._removed.items() if v > newer}
        self._floor = max(self._floor, newer)
        self._heard = max(self._heard, newer)

    # --- last_activity --------------------------------------------------------------------
    def _aggregate(self, mkey: str, remote: float | None) -> float:
        route = self._routes.get(mkey)
        local = route.last_activity if route is not None else None
        if remote is None:
            return local if local is not None else time.time()
        return remote if local is None else max(remote, local)

    async def flush_activity(self) -> int:
        """Write the routes whose last_activity moved since the last flush (ZADD XX GT)."""
        pending: dict[str, float] = {}
        flushed = self._flushed
        for mkey, route in self._routes.items():
            la = route.last_activity
            if la > flushed.get(mkey, 0.0):
                pending[mkey] = la
        if not pending:
            return 0
        items = list(pending.items())
        async with self._redis.pipeline(transaction=False) as pipe:
            for i in range(0, len(items), FLUSH_CHUNK):
                pipe.zadd(self._keys[3], dict(items[i:i + FLUSH_CHUNK]), xx=True, gt=True)
            await pipe.execute()
        for mkey, la in items:
            if flushed.get(mkey, 0.0) < la:
                flushed[mkey] = la
        return len(items)

    # --- background tasks -----------------------------------------------------------------
    async def _sync_loop(self, pubsub: Any) -> None:
        """Apply pub/sub messages, resync periodically; on failure reconnect with backoff."""
        delay = RECONNECT_MIN
        next_resync = time.monotonic() + self.resync_interval
        while True:
            try:
                if pubsub is None:
                    pubsub = self._redis.pubsub()
                    await pubsub.subscribe(self.channel)
                    n = await self.resync()
                    next_resync = time.monotonic() + self.resync_interval
                    log.warning("Reconnected to Redis at %s: %d route(s) after resync", self.url, n)
                    self.connected = True
                    delay = RECONNECT_MIN
                while True:
                    wait = max(0.0, min(1.0, next_resync - time.monotonic()))
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
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
                                self.url, _reason(e))
                else:
                    log.debug("Redis at %s still unreachable: %s", self.url, _reason(e))
                self.connected = False
                await _aclose(pubsub)
                pubsub = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush_activity()
            except Exception as e:  # noqa: BLE001 - retried at the next tick (the sync task logs)
                log.debug("last_activity flush to Redis failed: %s", _reason(e))

    # --- errors ---------------------------------------------------------------------------
    def _unavailable(self, e: BaseException) -> RedisUnavailable:
        return RedisUnavailable(f"Redis at {self.url} is unavailable: {_reason(e)}")

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


def _reason(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


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
