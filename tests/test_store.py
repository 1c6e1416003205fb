"""Stores, sans I/O: MemoryStore ported from CHP's store_spec.js (reference 9.4), the
RouteStore contract, load_store (--storage-backend), and table mirroring for stores
that do not own the table.

DictStore and FailingStore below are also loaded by the API tests through
`--storage-backend tests.test_store:DictStore` (they must stay importable).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from cfproxy.config import Config
from cfproxy.routing.table import RouteTable
from cfproxy.routing.trie import URLTrie
from cfproxy.store import MemoryStore, RouteStore, StoreLoadError, clean_path, load_store
from cfproxy.store.base import to_timestamp
from cfproxy.store.sync import StoreSync, load_routes_into

T = "http://127.0.0.1:9000"


def run(coro):
    return asyncio.run(coro)


class DictStore(RouteStore):
    """A third-party style store: its own dict and trie, does not own the app's table."""

    def __init__(self, config=None, table=None) -> None:
        self.routes: dict[str, dict] = {}
        self.trie = URLTrie()
        self.calls: list[str] = []

    async def get_target(self, path):
        key = self.trie.lookup(path)
        return None if key is None else (key, self.routes[key])

    async def get_all(self):
        self.calls.append("get_all")
        return {k: dict(v) for k, v in self.routes.items()}

    async def add(self, path, data):
        self.calls.append(f"add {path}")
        path = self.clean_path(path)
        self.routes[path] = dict(data)
        self.trie.add(path, path)

    async def update(self, path, data):
        self.calls.append(f"update {path}")
        path = self.clean_path(path)
        if path in self.routes:
            self.routes[path].update(data)

    async def remove(self, path):
        self.calls.append(f"remove {path}")
        path = self.clean_path(path)
        self.routes.pop(path, None)
        self.trie.remove(path)


class FailingStore(DictStore):
    """Fails every operation once the proxy has started (the API must answer 500, not hang).

    Start-up (loading the routes, adding the default route) still works.
    """

    async def get_all(self):
        if self.calls.count("get_all") >= 1:
            raise RuntimeError("store is down")
        return await super().get_all()

    async def add(self, path, data):
        if path != "/":
            raise RuntimeError("store is down")
        await super().add(path, data)

    async def get(self, path):
        raise RuntimeError("store is down")

    async def remove(self, path):
        raise RuntimeError("store is down")


class NotAStore:
    def __init__(self, config, table) -> None:
        pass


# --- store_spec.js -------------------------------------------------------------------------

def test_get_returns_stored_data_and_none_when_absent():
    async def go():
        store = MemoryStore(RouteTable())
        await store.add("/myRoute", {"target": T, "test": "value"})
        data = await store.get("/myRoute")
        assert data["target"] == T and data["test"] == "value"
        assert isinstance(data["last_activity"], datetime)
        assert data["last_activity"].tzinfo is not None
        assert await store.get("/wut") is None
    run(go())


def test_get_target_returns_prefix_and_data_of_the_longest_match():
    async def go():
        store = MemoryStore(RouteTable())
        await store.add("/myRoute", {"target": T})
        prefix, data = await store.get_target("/myRoute/sub/path")
        assert prefix == "/myRoute" and data["target"] == T
        assert await store.get_target("/other") is None
    run(go())


def test_get_all_returns_all_routes_or_an_empty_dict():
    async def go():
        store = MemoryStore(RouteTable())
        assert await store.get_all() == {}
        await store.add("/a", {"target": T})
        await store.add("/b", {"target": T, "x": 1})
        routes = await store.get_all()
        assert list(routes) == ["/a", "/b"]
        assert routes["/b"]["x"] == 1
    run(go())


def test_add_stores_and_add_overwrites_without_merging():
    async def go():
        store = MemoryStore(RouteTable())
        await store.add("/r", {"target": T, "old": True})
        await store.add("/r", {"target": "http://127.0.0.1:9001"})
        data = await store.get("/r")
        assert data["target"] == "http://127.0.0.1:9001" and "old" not in data
    run(go())


def test_update_shallow_merges():
    async def go():
        store = MemoryStore(RouteTable())
        await store.add("/r", {"target": T, "version": 1, "test": "value"})
        await store.update("/r", {"version": 2})
        data = await store.get("/r")
        assert data["version"] == 2 and data["test"] == "value" and data["target"] == T
    run(go())


def test_update_of_last_activity_and_target_reaches_the_table():
    async def go():
        table = RouteTable()
        store = MemoryStore(table)
        await store.add("/a", {"target": T})
        await store.add("/b", {"target": T})
        when = datetime(2020, 1, 1, tzinfo=timezone.utc)
        await store.update("/a", {"last_activity": when})
        assert table.get("/a").last_activity == when.timestamp()
        await store.update("/a", {"target": "http://127.0.0.1:9009"})
        assert table.longest_match("/a/x").target.port == 9009
        assert table.get("/a").last_activity == when.timestamp()  # kept
        assert [r.prefix for r in table] == ["/a", "/b"]  # position kept
        await store.update("/missing", {"x": 1})  # no-op, no error
    run(go())


def test_remove_deletes_and_missing_remove_is_not_an_error():
    async def go():
        store = MemoryStore(RouteTable())
        await store.add("/r", {"target": T})
        await store.remove("/r")
        assert await store.get("/r") is None
        await store.remove("/nope")
    run(go())


def test_has_route_through_get():
    async def go():
        store = MemoryStore(RouteTable())
        await store.add("/r", {"target": T})
        assert (await store.get("/r")) is not None
        assert (await store.get("/s")) is None
    run(go())


def test_memory_store_writes_are_visible_to_the_table_at_once():
    async def go():
        table = RouteTable()
        store = MemoryStore(table)
        assert not store.keeps_activity  # the table is the store
        await store.add("/user/x/", {"target": T})
        assert table.longest_match("/user/x/lab").prefix == "/user/x"
        await store.remove("/user/x")
        assert table.longest_match("/user/x/lab") is None
    run(go())


def test_returned_data_is_a_copy():
    async def go():
        table = RouteTable()
        store = MemoryStore(table)
        await store.add("/r", {"target": T})
        data = await store.get("/r")
        data["target"] = "mutated"
        assert table.get("/r").data["target"] == T
    run(go())


def test_touch_never_moves_last_activity_backwards():
    async def go():
        table = RouteTable()
        store = MemoryStore(table)
        await store.add("/r", {"target": T})
        now = table.get("/r").last_activity
        await store.touch("/r", datetime(2000, 1, 1, tzinfo=timezone.utc))
        assert table.get("/r").last_activity == now
        later = datetime.fromtimestamp(now + 10, timezone.utc)
        await store.touch("/r", later)
        assert table.get("/r").last_activity == pytest.approx(now + 10)
    run(go())


@pytest.mark.parametrize("raw, clean", [
    ("", "/"), ("/", "/"), ("foo", "/foo"), ("/foo/", "/foo"), ("//double", "/double"),
    ("/x//y/", "/x//y"), ("/Case/MiXed", "/Case/MiXed"), ("/sp ace", "/sp ace"),
])
def test_clean_path(raw, clean):
    assert clean_path(raw) == clean
    assert MemoryStore().clean_path(raw) == clean


@pytest.mark.parametrize("value, expected", [
    (None, None), (True, None), (12.5, 12.5), (3, 3.0), (float("nan"), None),
    (datetime(2020, 1, 1, tzinfo=timezone.utc), 1577836800.0),
    (datetime(2020, 1, 1), 1577836800.0),  # naive = UTC
    ("2020-01-01T00:00:00.000Z", 1577836800.0), ("garbage", None), ([], None),
])
def test_to_timestamp_reads_what_stores_return(value, expected):
    assert to_timestamp(value) == expected


# --- the default base-class get ------------------------------------------------------------

def test_base_get_is_derived_from_get_all_and_cleans_the_path():
    async def go():
        store = DictStore()
        await store.add("/a", {"target": T})
        assert (await store.get("/a/"))["target"] == T
        assert await store.get("/b") is None
    run(go())


# --- load_store ----------------------------------------------------------------------------

def test_load_store_defaults_to_a_memory_store_over_the_given_table():
    table = RouteTable()
    store = load_store(Config(), table)
    assert isinstance(store, MemoryStore) and store.table is table


@pytest.mark.parametrize("spec", ["tests.test_store:DictStore", "tests.test_store.DictStore"])
def test_load_store_imports_a_class_path_and_passes_config_and_table(spec):
    store = load_store(Config(storage_backend=spec), RouteTable())
    assert type(store).__name__ == "DictStore"
    assert store.keeps_activity


def test_load_store_memory_store_by_path_shares_the_table():
    table = RouteTable()
    store = load_store(Config(storage_backend="cfproxy.store.memory:MemoryStore"), table)
    assert isinstance(store, MemoryStore) and store.table is table


@pytest.mark.parametrize("spec, words", [
    ("mybackend", ["--storage-backend", "Cannot find module 'mybackend'"]),
    ("no.such.module:Store", ["Cannot find module 'no.such.module'"]),
    ("tests.test_store:NoSuchClass", ["has no attribute 'NoSuchClass'"]),
    ("tests.test_store", ["package.module:Class"]),
    ("tests.test_store:T", ["not a class"]),
    ("json:loads", ["constructing the store failed"]),
    ("tests.test_store:NotAStore", ["lacks required methods: get, get_target"]),
    (":Cls", ["expected package.module:Class"]),
])
def test_load_store_failures_name_the_flag_and_the_problem(spec, words):
    with pytest.raises(StoreLoadError) as info:
        load_store(Config(storage_backend=spec), RouteTable())
    msg = str(info.value)
    assert "--storage-backend" in msg
    for w in words:
        assert w in msg


# --- StoreSync: the store first, the table once it acknowledged ---------------------------------

def test_sync_writes_a_third_party_store_then_the_table():
    async def go():
        table, store = RouteTable(), DictStore()
        sync = StoreSync(store, table)
        route = await sync.add("/a/", {"target": T}, 100.0)
        assert route is table.get("/a") and route.last_activity == 100.0
        assert store.routes["/a"]["target"] == T
        assert to_timestamp(store.routes["/a"]["last_activity"]) == 100.0  # CHP's add + update
        assert store.calls == ["add /a", "update /a"]
        assert await sync.remove("/a") is True
        assert len(table) == 0 and store.routes == {}
        assert await sync.remove("/a") is False
    run(go())


def test_sync_leaves_the_table_alone_when_the_store_refuses():
    async def go():
        table, store = RouteTable(), FailingStore()
        sync = StoreSync(store, table)
        with pytest.raises(RuntimeError):
            await sync.add("/x", {"target": T})
        assert len(table) == 0
    run(go())


def test_sync_with_the_memory_store_keeps_one_copy():
    async def go():
        table = RouteTable()
        store = MemoryStore(table)
        sync = StoreSync(store, table)
        await sync.add("/a", {"target": T})
        assert [r.prefix for r in table] == ["/a"]
        assert await store.get("/a") is not None  # the table is the store
        assert await sync.remove("/a") is True and len(table) == 0
    run(go())


def test_load_routes_into_fills_the_table_and_skips_unroutable_targets():
    async def go():
        store = DictStore()
        await store.add("/one", {"target": T, "last_activity": datetime(2020, 1, 1, tzinfo=timezone.utc)})
        await store.add("/two", {"target": "not a url"})
        table = RouteTable()
        assert await load_routes_into(store, table) == 1
        assert [r.prefix for r in table] == ["/one"]
        assert table.get("/one").last_activity == 1577836800.0
        assert "last_activity" not in table.get("/one").data
    run(go())


def test_sync_flushes_moved_activity_once_and_applies_feed_activity_as_the_maximum():
    async def go():
        table, store = RouteTable(), DictStore()
        sync = StoreSync(store, table)
        await sync.add("/a", {"target": T}, 100.0)
        await sync.add("/b", {"target": T}, 100.0)
        assert await sync.flush() == 0
        table.get("/a").last_activity = 150.0
        assert await sync.flush() == 1
        assert to_timestamp(store.routes["/a"]["last_activity"]) == 150.0
        assert await sync.flush() == 0
        from cfproxy.store.base import RouteChange
        sync.apply(RouteChange("activity", activity={"/a": 120.0, "/b": 200.0}))
        assert table.get("/a").last_activity == 150.0 and table.get("/b").last_activity == 200.0
        assert await sync.flush() == 0  # the store reported it: nothing to send back
        sync.note_activity({"/a": 300.0})  # seen by another process: saved at the next flush
        assert await sync.flush() == 1
    run(go())


class GatedStore(RouteStore):
    """Writes wait for `gate`; records what it stored (a store doing slow I/O)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.routes: dict[str, dict] = {}
        self.puts = 0

    async def load_routes(self):
        return []

    async def put_route(self, prefix, data, last_activity):
        self.puts += 1
        await self.gate.wait()
        self.routes[prefix] = data

    async def delete_route(self, prefix):
        await self.gate.wait()
        return self.routes.pop(prefix, None) is not None

    async def save_activity(self, batch):
        pass


def test_a_write_whose_caller_is_cancelled_still_reaches_store_and_table_in_order():
    async def go():
        table, store = RouteTable(), GatedStore()
        sync = StoreSync(store, table)
        first = asyncio.ensure_future(sync.add("/a", {"target": T, "v": 1}))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(sync.add("/a", {"target": T, "v": 2}))
        await asyncio.sleep(0)
        first.cancel()  # the API client of the first write walked away mid-write
        await asyncio.sleep(0)
        store.gate.set()
        await second
        assert first.cancelled()
        assert store.routes["/a"]["v"] == 2 and table.get("/a").data["v"] == 2  # order kept
        other = asyncio.ensure_future(sync.add("/b", {"target": T}))
        await asyncio.sleep(0)
        other.cancel()
        await asyncio.sleep(0.01)
        assert "/b" in store.routes and table.get("/b") is not None  # finished in the background
    run(go())


def test_writes_to_one_key_wait_for_each_other_and_others_do_not():
    async def go():
        table, store = RouteTable(), GatedStore()
        sync = StoreSync(store, table)
        a1 = asyncio.ensure_future(sync.add("/a", {"target": T}))
        a2 = asyncio.ensure_future(sync.remove("/a"))
        b = asyncio.ensure_future(sync.add("/b", {"target": T}))
        await asyncio.sleep(0.01)
        assert store.puts == 2  # /a and /b are at the store; the remove of /a waits
        store.gate.set()
        await asyncio.gather(a1, a2, b)
        assert [r.prefix for r in table] == ["/b"] and list(store.routes) == ["/b"]
    run(go())
