"""Two stores a user might write, each keeping routes in a JSON file named by $TEST_STORE_FILE
(so a test can restart cfproxy and see what the store kept):

- InterfaceStore: written to cfproxy's documented RouteStore interface (load_routes,
  put_route, delete_route, save_activity);
- ContractOnlyStore: written to CHP's storage-backend contract only (get, get_target, get_all,
  add, update, remove, clean_path; synchronous methods, no base class), as a port of a CHP
  plugin would be.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import datetime, timezone

from cfproxy.store.base import RouteStore, StoredRoute


def _path() -> str:
    return os.environ["TEST_STORE_FILE"]


def _read() -> dict:
    try:
        with open(_path()) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def _write(routes: dict) -> None:
    tmp = _path() + ".tmp"
    with open(tmp, "w") as f:
        json.dump(routes, f)
    os.replace(tmp, _path())


class InterfaceStore(RouteStore):
    """{prefix: {"data": {...}, "la": epoch seconds}} in a JSON file."""

    def __init__(self, config, table) -> None:
        self.routes: dict = {}

    async def start(self) -> None:
        self.routes = _read()

    async def load_routes(self) -> list[StoredRoute]:
        return [StoredRoute(p, r["data"], r["la"]) for p, r in self.routes.items()]

    async def put_route(self, prefix: str, data: dict, last_activity: float) -> None:
        self.routes[prefix] = {"data": data, "la": last_activity}
        _write(self.routes)

    async def delete_route(self, prefix: str) -> bool:
        existed = self.routes.pop(prefix, None) is not None
        _write(self.routes)
        return existed

    async def save_activity(self, batch: Mapping[str, float]) -> None:
        for prefix, ts in batch.items():
            if prefix in self.routes:
                self.routes[prefix]["la"] = max(self.routes[prefix]["la"], ts)
        _write(self.routes)


class ContractOnlyStore:
    """CHP's contract, synchronous, last_activity as an ISO string in the file."""

    def __init__(self, config, table) -> None:
        self.routes = _read()

    def clean_path(self, path: str) -> str:
        return "/" + path.strip("/")

    def get(self, path):
        data = self.routes.get(self.clean_path(path))
        if data is None:
            return None
        out = dict(data)
        if "last_activity" in out:
            out["last_activity"] = datetime.fromisoformat(out["last_activity"])
        return out

    def get_target(self, path):
        best = None
        for prefix in self.routes:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                if best is None or len(prefix) > len(best):
                    best = prefix
        return None if best is None else (best, self.get(best))

    def get_all(self):
        return {p: self.get(p) for p in self.routes}

    def add(self, path, data):
        self.routes[self.clean_path(path)] = _jsonable(data)
        _write(self.routes)

    def update(self, path, data):
        key = self.clean_path(path)
        if key in self.routes:
            self.routes[key].update(_jsonable(data))
            _write(self.routes)

    def remove(self, path):
        self.routes.pop(self.clean_path(path), None)
        _write(self.routes)


def _jsonable(data: dict) -> dict:
    out = dict(data)
    la = out.get("last_activity")
    if isinstance(la, datetime):
        out["last_activity"] = la.astimezone(timezone.utc).isoformat()
    return out
