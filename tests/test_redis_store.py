"""Scale-out: several cfproxy replicas sharing routes through Redis (`--storage-backend redis://`).

Real redis-server (tests/support/redis_server.py: $REDIS_URL when set, else one started for
the module) and real cfproxy processes. Every replica pair uses its own key prefix, so tests
sharing a Redis never see each other's routes. Tests that stop or restart Redis start their
own redis-server. The in-process tests at the end drive RedisStore directly (ordering rules,
host-routing keys, update/touch, errors).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from datetime import datetime, timezone

import pytest

from cfproxy.routing.table import RouteTable
from tests.support.backends import EchoBackend, api, request, wait_until
from tests.support.proxy_process import ProxyProcess, free_port, run_cli
from tests.support.redis_server import RedisServer, redis_url, require_redis_server

redis = pytest.importorskip("redis", reason="the redis package is needed (pip install cfproxy[redis])")

# fast intervals so the tests do not wait long for a flush or a periodic resync
FAST = "resync_interval=1&flush_interval=0.2"


def store_url(base: str, prefix: str, extra: str = FAST) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}prefix={prefix}&{extra}"


def new_prefix() -> str:
    return "t" + uuid.uuid4().hex[:12]


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def routed(port: int, path: str) -> int:
    return request(port, "GET", path).status


def api_status(api_port: int, method: str, path: str) -> int:
    return request(api_port, method, path, [("Authorization", "token secret")]).status


def route_keys(api_port: int, under: str) -> list[str]:
    status, data = api(api_port, "GET", "/api/routes")
    assert status == 200, data
    return [k for k in data if k.startswith(under)]


@pytest.fixture(scope="module")
def redis_base():
    if not os.environ.get("REDIS_URL"):
        require_redis_server()
    with redis_url() as url:
        yield url


@pytest.fixture(scope="module")
def backend():
    with EchoBackend() as b:
        yield b


@pytest.fixture(scope="module")
def pair(redis_base):
    """Two replicas (A, B) sharing one prefix, and that store URL."""
    url = store_url(redis_base, new_prefix())
    with ProxyProcess("--storage-backend", url) as a, ProxyProcess("--storage-backend", url) as b:
        yield a, b, url


# --- routes written on one replica are routed by the other --------------------------------

def test_route_posted_to_one_replica_is_routed_by_the_other_within_a_second(pair, backend):
    a, b, _ = pair
    assert routed(b.port, "/sync/add/x") == 404
    assert api(a.api_port, "POST", "/api/routes/sync/add", {"target": backend.url})[0] == 201
    assert routed(a.port, "/sync/add/x") == 200  # the writer routes it at once
    assert wait_until(lambda: routed(b.port, "/sync/add/x") == 200, timeout=1.0)
    assert backend.requests[-1].url == "/sync/add/x"


def test_route_deleted_on_one_replica_stops_routing_on_the_other_within_a_second(pair, backend):
    a, b, _ = pair
    assert api(b.api_port, "POST", "/api/routes/sync/del", {"target": backend.url})[0] == 201
    assert wait_until(lambda: routed(a.port, "/sync/del/x") == 200, timeout=1.0)
    assert api(a.api_port, "DELETE", "/api/routes/sync/del")[0] == 204
    assert routed(a.port, "/sync/del/x") == 404
    assert wait_until(lambda: routed(b.port, "/sync/del/x") == 404, timeout=1.0)
    assert api(b.api_port, "GET", "/api/routes/sync/del")[0] == 404
    assert api(b.api_port, "DELETE", "/api/routes/sync/del")[0] == 404


def test_route_replaced_on_one_replica_gets_the_new_target_on_the_other(pair, backend):
    a, b, _ = pair
    assert api(a.api_port, "POST", "/api/routes/sync/swap", {"target": "http://127.0.0.1:9"})[0] == 201
    assert wait_until(lambda: routed(b.port, "/sync/swap") == 503, timeout=1.0)
    assert api(a.api_port, "POST", "/api/routes/sync/swap", {"target": backend.url})[0] == 201
    assert wait_until(lambda: routed(b.port, "/sync/swap") == 200, timeout=1.0)


def test_get_routes_on_the_other_replica_lists_routes_in_insertion_order(pair, backend):
    a, b, _ = pair
    for name in ("c", "a", "b"):
        assert api(a.api_port, "POST", f"/api/routes/order/{name}", {"target": backend.url})[0] == 201
    assert route_keys(b.api_port, "/order/") == ["/order/c", "/order/a", "/order/b"]
    # replacing keeps the position; delete + add moves to the end (reference 2.7)
    assert api(b.api_port, "POST", "/api/routes/order/c", {"target": backend.url, "v": 2})[0] == 201
    assert api(b.api_port, "DELETE", "/api/routes/order/a")[0] == 204
    assert api(b.api_port, "POST", "/api/routes/order/a", {"target": backend.url})[0] == 201
    expected = ["/order/c", "/order/b", "/order/a"]
    assert route_keys(a.api_port, "/order/") == expected
    assert route_keys(b.api_port, "/order/") == expected
    assert api(a.api_port, "GET", "/api/routes/order/c")[1]["v"] == 2


def test_route_data_round_trips_between_replicas_unchanged(pair, backend):
    a, b, _ = pair
    data = {"target": backend.url, "user": "zoë", "nested": {"list": [1, 2.5, None, True]},
            "empty": {}, "slash/key": "x y"}
    assert api(a.api_port, "POST", "/api/routes/data/%E2%9C%93", data)[0] == 201
    status, got = api(b.api_port, "GET", "/api/routes/data/%E2%9C%93")
    assert status == 200
    got.pop("last_activity")
    assert got == data
    assert wait_until(lambda: routed(b.port, "/data/%E2%9C%93/x") == 200, timeout=1.0)


# --- last_activity is aggregated over the replicas ----------------------------------------

def test_activity_through_one_replica_shows_in_the_others_last_activity(pair, backend):
    a, b, _ = pair
    assert api(a.api_port, "POST", "/api/routes/busy", {"target": backend.url})[0] == 201
    posted = ts(api(a.api_port, "GET", "/api/routes/busy")[1]["last_activity"])
    assert wait_until(lambda: routed(b.port, "/busy/x") == 200, timeout=1.0)
    time.sleep(0.3)
    before_traffic = time.time()
    assert routed(b.port, "/busy/x") == 200

    def seen_on_a() -> bool:
        return ts(api(a.api_port, "GET", "/api/routes")[1]["/busy"]["last_activity"]) >= before_traffic - 0.001

    assert wait_until(seen_on_a, timeout=3.0)
    assert ts(api(a.api_port, "GET", "/api/routes/busy")[1]["last_activity"]) > posted
    # the culler's query on A no longer lists the route as inactive
    since = datetime.fromtimestamp(before_traffic - 0.1, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    status, inactive = api(a.api_port, "GET", f"/api/routes?inactive_since={since}")
    assert status == 200
    assert "/busy" not in inactive


# --- start-up and repair ------------------------------------------------------------------

def test_replica_started_later_loads_every_route_at_start(pair, backend):
    a, _, url = pair
    for name in ("one", "two", "three"):
        assert api(a.api_port, "POST", f"/api/routes/late/{name}", {"target": backend.url})[0] == 201
    with ProxyProcess("--storage-backend", url) as c:
        assert routed(c.port, "/late/two/x") == 200  # no waiting: loaded before listening
        assert route_keys(c.api_port, "/late/") == ["/late/one", "/late/two", "/late/three"]
        assert list(api(c.api_port, "GET", "/api/routes")[1]) == list(
            api(a.api_port, "GET", "/api/routes")[1])


def test_default_target_of_a_replica_is_shared(redis_base, backend):
    url = store_url(redis_base, new_prefix())
    with ProxyProcess("--storage-backend", url, "--default-target", backend.url) as a:
        assert "Route added / -> " in a.wait_for_output("Route added /")
        with ProxyProcess("--storage-backend", url) as b:
            assert routed(b.port, "/anything") == 200
            assert list(api(b.api_port, "GET", "/api/routes")[1]) == ["/"]


def test_change_missed_by_pubsub_is_repaired_by_the_periodic_resync(pair, backend, redis_base):
    a, b, url = pair
    prefix = url.split("prefix=")[1].split("&")[0]
    assert api(a.api_port, "POST", "/api/routes/missed", {"target": backend.url})[0] == 201
    assert wait_until(lambda: routed(b.port, "/missed") == 200, timeout=1.0)
    # a remove whose message is lost: the same writes as the remove script, without PUBLISH
    client = redis.Redis.from_url(redis_base)
    try:
        for name in ("routes", "versions"):
            assert client.hdel(f"{prefix}:{name}", "/missed") == 1
        client.zrem(f"{prefix}:order", "/missed")
        client.zrem(f"{prefix}:activity", "/missed")
        client.incr(f"{prefix}:seq")
    finally:
        client.close()
    assert routed(b.port, "/missed") == 200  # not yet known
    assert wait_until(lambda: routed(a.port, "/missed") == 404 and routed(b.port, "/missed") == 404,
                      timeout=3.0)


# --- Redis down / restarted ---------------------------------------------------------------

def test_proxy_serves_on_while_redis_is_down_and_replicas_resync_after_restart(backend):
    with RedisServer() as server:
        url = store_url(server.url, new_prefix())
        with ProxyProcess("--storage-backend", url) as a, ProxyProcess("--storage-backend", url) as b:
            for name in ("first", "second"):
                assert api(a.api_port, "POST", f"/api/routes/ha/{name}", {"target": backend.url})[0] == 201
            assert wait_until(lambda: routed(b.port, "/ha/second") == 200, timeout=1.0)

            server.stop()
            # the hot path never needed Redis
            for p in (a, b):
                assert routed(p.port, "/ha/first/x") == 200
                assert routed(p.port, "/ha/second/x") == 200
            # the API cannot write: 500 naming the cause; reads come from memory
            r = request(a.api_port, "POST", "/api/routes/ha/third",
                        [("Authorization", "token secret")], b'{"target": "http://127.0.0.1:9"}')
            assert r.status == 500
            assert b"Redis unavailable: connection refused (redis://127.0.0.1:" in r.body
            assert route_keys(b.api_port, "/ha/") == ["/ha/first", "/ha/second"]
            assert wait_until(lambda: "Lost Redis" in a.output(), timeout=3.0)
            assert routed(b.port, "/ha/first/x") == 200

            server.start()  # empty: no persistence
            # one replica puts the routes back (in its order), the other adopts that data set
            assert wait_until(lambda: "refilled it with this replica's 2 route(s)" in a.output() + b.output(),
                              timeout=8.0)
            assert route_keys(b.api_port, "/ha/") == ["/ha/first", "/ha/second"]
            assert api(b.api_port, "POST", "/api/routes/ha/third", {"target": backend.url})[0] == 201
            # A hears it once its reconnect backoff (at most 5 s) has run out
            assert wait_until(lambda: routed(a.port, "/ha/third/x") == 200, timeout=8.0)
            assert "Reconnected to Redis" in a.output()


def test_a_delete_right_after_redis_restarted_empty_stays_deleted_when_replicas_reconnect_late(backend):
    """Redis loses its data; the first replica refills it; the hub deletes /r1 through it (204);
    the other two reconnect later: they adopt that data set, /r1 never comes back."""
    import signal

    with RedisServer() as server:
        url = store_url(server.url, new_prefix())
        with ProxyProcess("--storage-backend", url) as a, ProxyProcess("--storage-backend", url) as b, \
                ProxyProcess("--storage-backend", url) as c:
            for name in ("r1", "r2"):
                assert api(a.api_port, "POST", f"/api/routes/{name}", {"target": backend.url})[0] == 201
            for p in (b, c):
                assert wait_until(lambda p=p: routed(p.port, "/r1/x") == 200, timeout=2.0)
            for p in (b, c):
                p.signal(signal.SIGSTOP)  # slow replicas: they notice the restart late
            try:
                server.stop()
                server.start()  # empty: no persistence
                assert api(a.api_port, "DELETE", "/api/routes/r1")[0] == 204
            finally:
                for p in (b, c):
                    p.signal(signal.SIGCONT)
            for p in (b, c):  # they notice the new data set (reconnect or periodic check)
                assert wait_until(lambda p=p: "adopting" in p.output(), timeout=10.0), p.output()
            time.sleep(1.5)  # and a periodic resync on every replica after that
            for p in (a, b, c):
                assert routed(p.port, "/r1/x") == 404, p.output()
                assert routed(p.port, "/r2/x") == 200
                assert route_keys(p.api_port, "/r") == ["/r2"]
            client = redis.Redis.from_url(server.url)
            try:
                assert client.hkeys(url.split("prefix=")[1].split("&")[0] + ":routes") == [b"/r2"]
            finally:
                client.close()
            assert "refilled it with this replica's 2 route(s)" in a.output()
            for p in (b, c):
                assert "adopting its 1 route(s)" in p.output()
                assert "Reconnected to Redis at" in p.output()  # every reconnect is logged


def test_replica_exits_1_naming_the_backend_when_redis_is_unreachable_at_start():
    port = free_port()
    r = run_cli("--port", str(free_port()), "--api-port", str(free_port()),
                "--storage-backend", f"redis://127.0.0.1:{port}/0")
    assert r.returncode == 1
    out = r.stdout + r.stderr
    assert "--storage-backend" in out
    assert f"Redis unavailable: connection refused (redis://127.0.0.1:{port}/0)" in out


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("query, word", [
    ("resync_interval=soon", "resync_interval"),
    ("flush_interval=0", "flush_interval"),
    ("flush_interval=-1", "flush_interval"),
    ("resync_interval=nan", "resync_interval"),
    ("prefix=", "prefix"),
])
def test_bad_store_url_option_exits_1_naming_it(query, word):
    r = run_cli("--port", str(free_port()), "--api-port", str(free_port()),
                "--storage-backend", f"redis://127.0.0.1:{free_port()}/0?{query}")
    assert r.returncode == 1
    out = r.stdout + r.stderr
    assert "--storage-backend" in out and word in out
    assert "Traceback" not in out


@pytest.mark.parametrize("where, error", [
    ("user:{pw}@127.0.0.1:{port}/0", "Redis unavailable"),
    ("127.0.0.1:{port}/0?password={pw}", "Redis unavailable"),
    ("user:{pw}@127.0.0.1:{port}/0?flush_interval=never", "flush_interval"),
])
def test_password_in_the_store_url_is_not_logged(where, error):
    url = "redis://" + where.format(pw="hunter2", port=free_port())
    r = run_cli("--port", str(free_port()), "--api-port", str(free_port()), "--storage-backend", url)
    assert r.returncode == 1
    out = r.stdout + r.stderr
    assert error in out
    assert "hunter2" not in out


def test_garbage_on_the_change_channel_is_ignored(pair, backend, redis_base):
    a, b, url = pair
    prefix = url.split("prefix=")[1].split("&")[0]
    client = redis.Redis.from_url(redis_base)
    try:
        for junk in (b"", b"nonsense", b"x 1 {", b"x notanumber {}", b"x 1 {\"op\": \"add\"}",
                     b"\xff\xfe 3 []"):
            client.publish(f"{prefix}:changes", junk)
    finally:
        client.close()
    assert api(a.api_port, "POST", "/api/routes/after/junk", {"target": backend.url})[0] == 201
    assert wait_until(lambda: routed(b.port, "/after/junk") == 200, timeout=1.0)
    assert b.proc.poll() is None


def test_unreadable_route_in_redis_is_skipped_by_a_starting_replica(redis_base, backend):
    prefix = new_prefix()
    url = store_url(redis_base, prefix)
    with ProxyProcess("--storage-backend", url) as a:
        assert api(a.api_port, "POST", "/api/routes/good", {"target": backend.url})[0] == 201
        client = redis.Redis.from_url(redis_base)
        try:
            client.hset(f"{prefix}:routes", "/bad", b"{not json")
            client.zadd(f"{prefix}:order", {"/bad": 0})
        finally:
            client.close()
        with ProxyProcess("--storage-backend", url) as b:
            assert routed(b.port, "/good") == 200
            assert list(api(b.api_port, "GET", "/api/routes")[1]) == ["/good"]
            assert "Skipping unreadable route" in b.output()


# --- RedisStore in-process, under a StoreSync ------------------------------------------------

class _Config:
    def __init__(self, url: str, host_routing: bool = False) -> None:
        self.storage_backend = url
        self.host_routing = host_routing


class Replica:
    """One replica's table, RedisStore and StoreSync, in this event loop."""

    def __init__(self, url: str, host_routing: bool = False) -> None:
        from cfproxy.store.redis import RedisStore
        from cfproxy.store.sync import StoreSync

        self.table = RouteTable(host_routing=host_routing)
        self.store = RedisStore(_Config(url, host_routing), self.table)
        self.sync = StoreSync(self.store, self.table)

    def keys(self) -> list[str]:
        return [r.prefix for r in self.table]


def _with_store(redis_base: str, body, host_routing: bool = False):
    async def main():
        r = Replica(store_url(redis_base, new_prefix()), host_routing)
        await r.sync.start()
        try:
            return await body(r)
        finally:
            await r.sync.close()

    return asyncio.run(main())


def _with_replicas(redis_base: str, body, n: int = 2):
    """n replicas on one prefix, in one event loop (no periodic resync or flush)."""
    async def main():
        url = store_url(redis_base, new_prefix(), "resync_interval=60&flush_interval=60")
        replicas = [Replica(url) for _ in range(n)]
        for r in replicas:
            await r.sync.start()
        try:
            return await body(*replicas)
        finally:
            for r in replicas:
                await r.sync.close()

    return asyncio.run(main())


async def _wipe(redis_base: str, keys: list[str]) -> None:
    client = redis.asyncio.Redis.from_url(redis_base)
    try:
        await client.delete(*keys)  # as a restart without persistence would
    finally:
        await client.aclose()


def test_an_older_last_activity_flushed_later_does_not_win(redis_base):
    async def body(one, two):
        await one.sync.add("/r", {"target": "http://127.0.0.1:9"})
        await two.store.resync()
        newer, older = time.time() + 100, time.time() + 50
        one.table.get("/r").last_activity = newer
        two.table.get("/r").last_activity = older
        assert await one.sync.flush() == 1
        # two's older value reaches Redis after the newer one. (Through two.sync.flush()
        # this raced with the pub/sub message of one's flush: once two has heard the
        # newer value it has nothing left to flush.)
        await two.store.save_activity({"/r": older})
        assert await one.store._redis.zscore(one.store._keys.activity, "/r") == pytest.approx(newer, abs=1e-3)
        await one.store.resync()
        await two.store.resync()
        for r in (one, two):
            assert r.table.get("/r").last_activity == pytest.approx(newer, abs=1e-3)

    _with_replicas(redis_base, body)


def test_activity_flushed_by_one_replica_reaches_the_others_table(redis_base):
    async def body(one, two):
        await one.sync.add("/r", {"target": "http://127.0.0.1:9"})
        await two.store.resync()
        later = time.time() + 30
        one.table.get("/r").last_activity = later
        assert await one.sync.flush() == 1
        for _ in range(100):
            if two.table.get("/r").last_activity == pytest.approx(later, abs=1e-3):
                break
            await asyncio.sleep(0.01)
        assert two.table.get("/r").last_activity == pytest.approx(later, abs=1e-3)
        assert await two.sync.flush() == 0  # what it heard from Redis is not sent back

    _with_replicas(redis_base, body)


def test_flush_does_not_resurrect_a_route_removed_meanwhile(redis_base):
    async def body(one, two):
        await one.sync.add("/gone", {"target": "http://127.0.0.1:9"})
        await two.store.resync()
        two.table.get("/gone").last_activity = time.time() + 10
        await one.sync.remove("/gone")
        await two.sync.flush()  # before two heard of the remove
        await two.store.resync()
        assert one.keys() == [] and two.keys() == []
        assert await one.store._redis.zscore(one.store._keys.activity, "/gone") is None  # no orphan

    _with_replicas(redis_base, body)


def test_redis_that_lost_its_data_is_refilled_by_a_replica_holding_routes_not_an_empty_one(redis_base):
    async def body(one, two):
        for name in ("/a", "/b"):
            await one.sync.add(name, {"target": "http://127.0.0.1:9"})
        await two.store.resync()
        await _wipe(redis_base, one.store._keys.in_script_order)
        # a replica with an empty table starting now does not make "no routes" the truth
        fresh = Replica(store_url(redis_base, one.store.prefix))
        await fresh.sync.start()
        try:
            assert fresh.keys() == []
            assert await one.store._redis.get(one.store._keys.epoch) is None  # no data set claimed
            await one.store.resync()  # holds routes: refills, once
            await two.store.resync()  # adopts that data set
            await fresh.store.resync()
            for r in (one, two, fresh):
                assert r.keys() == ["/a", "/b"]
            assert fresh.table.longest_match("/b/x") is not None
        finally:
            await fresh.sync.close()

    _with_replicas(redis_base, body)


def test_a_replica_seeing_a_data_set_it_did_not_build_adopts_it_instead_of_merging(redis_base):
    """The acknowledged DELETE after a refill stays deleted when a late replica reconnects."""
    async def body(one, two, three):
        for name in ("/r1", "/r2"):
            await one.sync.add(name, {"target": "http://127.0.0.1:9"})
        for r in (two, three):
            await r.store.resync()
        await _wipe(redis_base, one.store._keys.in_script_order)
        await one.store.resync()  # the first to notice refills
        assert await one.sync.remove("/r1") is True  # the hub's DELETE, 204
        await two.store.resync()  # late: sees a data set it did not build
        await three.store.resync()
        for r in (one, two, three):
            assert r.keys() == ["/r2"]
        assert await one.store._redis.hkeys(one.store._keys.routes) == [b"/r2"]

    _with_replicas(redis_base, body, n=3)


def test_only_one_of_several_replicas_refills(redis_base):
    async def body(one, two):
        await one.sync.add("/a", {"target": "http://127.0.0.1:9"})
        await two.store.resync()
        two.table.add("/only-two", {"target": "http://127.0.0.1:9"})  # a divergent table
        await _wipe(redis_base, one.store._keys.in_script_order)
        await asyncio.gather(one.store.resync(), two.store.resync())
        assert one.keys() == two.keys()
        assert one.keys() in (["/a"], ["/a", "/only-two"])

    _with_replicas(redis_base, body)


def test_late_echo_of_an_older_write_does_not_undo_a_newer_one(redis_base):
    async def body(r):
        store = r.store
        await r.sync.add("/r", {"target": "http://127.0.0.1:9"})
        seq_add = store._versions["/r"]
        await r.sync.remove("/r")
        assert r.table.get("/r") is None
        # the add's echo arrives after the remove was applied: ignored
        store.on_message(store._epoch + f" {seq_add} ".encode()
                         + b'{"op":"add","k":"/r","p":"/r","d":{"target":"http://127.0.0.1:9"},"t":1}')
        assert r.table.get("/r") is None
        # a message from another data set asks for a resync instead of being applied
        store.on_message(b"otherepoch 999999 {\"op\":\"remove\",\"k\":\"/x\"}")
        assert store._resync_wanted
        return True

    assert _with_store(redis_base, body)


def test_host_routing_keys_are_one_route_whatever_the_host_case(redis_base):
    async def body(r):
        await r.sync.add("/Example.COM/x", {"target": "http://127.0.0.1:9"})
        await r.sync.add("/example.com/x", {"target": "http://127.0.0.1:10"})
        assert r.keys() == ["/example.com/x"]  # one route, the latest spelling (as in memory)
        assert r.table.longest_match("/example.com/x/y").target.url == "http://127.0.0.1:10"
        assert await r.store._redis.hkeys(r.store._keys.routes) == [b"/example.com/x"]
        assert await r.sync.remove("/EXAMPLE.COM/x/") is True
        assert r.keys() == []
        assert await r.store._redis.hkeys(r.store._keys.routes) == []

    _with_store(redis_base, body, host_routing=True)


def test_store_raises_redis_unavailable_naming_the_cause_when_redis_is_gone():
    from cfproxy.store.redis import RedisUnavailable

    async def main():
        r = Replica(f"redis://127.0.0.1:{free_port()}/0?prefix=x")
        pattern = r"Redis unavailable: connection refused \(redis://127\.0\.0\.1:\d+/0"
        try:
            with pytest.raises(RedisUnavailable, match=pattern):
                await r.sync.start()
            for call in (r.store.put_route("/a", {"target": "http://h"}, 1.0),
                         r.store.delete_route("/a")):
                with pytest.raises(RedisUnavailable, match=pattern):
                    await call
        finally:
            await r.sync.close()

    asyncio.run(main())


def test_missing_redis_package_names_the_extra(monkeypatch):
    from cfproxy.store.redis import RedisStore

    for name in [m for m in sys.modules if m == "redis" or m.startswith("redis.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ImportError, match=r"pip install cfproxy\[redis\]"):
        RedisStore(_Config("redis://127.0.0.1:1/0"), RouteTable())
