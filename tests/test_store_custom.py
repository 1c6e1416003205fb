"""Stores written by users, run by real cfproxy processes: one written to the RouteStore
interface, one to CHP's contract only. Each reports activity through GET /api/routes exactly
as the memory store does, keeps what the API wrote, and gets the activity saved (a restart
shows it)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import orjson
import pytest

from tests.api_client import call
from tests.support.proxy_process import ProxyProcess

STORES = {
    "memory": None,
    "interface": "tests.stores.file_stores:InterfaceStore",
    "contract": "tests.stores.file_stores:ContractOnlyStore",
}


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def start(kind: str, path) -> ProxyProcess:
    args = [] if STORES[kind] is None else ["--storage-backend", STORES[kind]]
    return ProxyProcess(*args, env={"TEST_STORE_FILE": str(path)})


@pytest.mark.parametrize("kind", list(STORES))
def test_activity_shows_in_get_api_routes_as_with_the_memory_store(kind, tmp_path, backend):
    with start(kind, tmp_path / "routes.json") as p:
        assert call(p.api_port, "POST", "/api/routes/u/a",
                    orjson.dumps({"target": backend.url, "user": "a"})).status == 201
        posted = ts(call(p.api_port, "GET", "/api/routes").json()["/u/a"]["last_activity"])
        time.sleep(0.05)
        before = time.time()
        assert call(p.port, "GET", "/u/a/lab").status == 200
        listed = call(p.api_port, "GET", "/api/routes").json()["/u/a"]
        assert listed["user"] == "a"
        assert ts(listed["last_activity"]) >= before - 0.002 > posted
        single = call(p.api_port, "GET", "/api/routes/u/a").json()
        assert single["last_activity"] == listed["last_activity"]
        since = datetime.fromtimestamp(before - 0.01, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        assert "/u/a" not in call(p.api_port, "GET", f"/api/routes?inactive_since={since}").json()


@pytest.mark.parametrize("kind", ["interface", "contract"])
def test_the_store_keeps_writes_and_gets_the_activity_saved(kind, tmp_path, backend):
    path = tmp_path / "routes.json"
    with start(kind, path) as p:
        for name in ("a", "b"):
            assert call(p.api_port, "POST", f"/api/routes/u/{name}",
                        orjson.dumps({"target": backend.url})).status == 201
        assert call(p.api_port, "DELETE", "/api/routes/u/b").status == 204
        assert call(p.api_port, "DELETE", "/api/routes/u/b").status == 404
        time.sleep(0.05)
        assert call(p.port, "GET", "/u/a/x").status == 200
        moved = call(p.api_port, "GET", "/api/routes").json()["/u/a"]["last_activity"]
        time.sleep(1.3)  # one flush interval: the store gets the moved activity
    assert sorted(json.loads(path.read_text())) == ["/u/a"]
    with start(kind, path) as p:
        again = call(p.api_port, "GET", "/api/routes").json()
        assert list(again) == ["/u/a"]
        assert abs(ts(again["/u/a"]["last_activity"]) - ts(moved)) < 0.002
        assert call(p.port, "GET", "/u/a/x").status == 200  # loaded before listening
