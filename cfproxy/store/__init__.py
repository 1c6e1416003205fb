"""Route stores: where routes live (reference 8), and `load_store` to pick one.

    store = load_store(config, table)

- `config.storage_backend` None/"" -> MemoryStore(table), writing straight
  into the RouteTable the proxy reads;
- "package.module:Class" or "package.module.Class" -> import it and
  instantiate `Class(config, table)` (a cfproxy.store.base.RouteStore);
- "redis://..." -> cfproxy.store.redis.RedisStore(config, table) when that
  module exists;
- "sqlite:///relative/path.db" or "sqlite:////absolute/path.db" ->
  cfproxy.store.sqlite.SQLiteStore(config, table).

A class that is no RouteStore but has CHP's methods (get, get_target, get_all,
add, update, remove, clean_path) is wrapped in ContractStore.

Any failure raises StoreLoadError whose message names --storage-backend and
the problem; the CLI prints it and exits 1.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from cfproxy.store.base import (
    CONTRACT_METHODS,
    ContractStore,
    RouteChange,
    RouteStore,
    StoredRoute,
    StoreUnavailable,
    clean_path,
)
from cfproxy.store.memory import MemoryStore

__all__ = ["ContractStore", "MemoryStore", "RouteChange", "RouteStore", "StoreLoadError",
           "StoreUnavailable", "StoredRoute", "clean_path", "load_store"]


class StoreLoadError(ValueError):
    """--storage-backend names something that cannot be loaded as a store."""


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _import_class(spec: str) -> Any:
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
    elif "." in spec:
        module_name, _, attr = spec.rpartition(".")
        if _is_module(spec):
            module_name, attr = spec, ""  # "pkg.module" names a module, not a class
    else:
        module_name, attr = spec, ""
    if not module_name:
        raise StoreLoadError(f"--storage-backend {spec!r}: expected package.module:Class")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            raise StoreLoadError(
                f"--storage-backend {spec!r}: Cannot find module {module_name!r}"
            ) from None
        raise StoreLoadError(
            f"--storage-backend {spec!r}: importing {module_name!r} failed: {e}"
        ) from None
    except Exception as e:
        raise StoreLoadError(
            f"--storage-backend {spec!r}: importing {module_name!r} failed: {type(e).__name__}: {e}"
        ) from None
    if not attr:
        raise StoreLoadError(
            f"--storage-backend {spec!r}: name the store class as package.module:Class"
        )
    try:
        return getattr(module, attr)
    except AttributeError:
        raise StoreLoadError(
            f"--storage-backend {spec!r}: module {module_name!r} has no attribute {attr!r}"
        ) from None


def load_store(config: Any, table: Any) -> RouteStore:
    """The store named by `config.storage_backend`, constructed over `table`."""
    spec = getattr(config, "storage_backend", None)
    if not spec:
        return MemoryStore(table)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        try:
            module = importlib.import_module("cfproxy.store.redis")
        except ImportError as e:
            raise StoreLoadError(f"--storage-backend {spec!r}: redis store unavailable: {e}") from None
        cls = module.RedisStore
        spec = module.redacted_url(spec)  # the messages below never show a password
    elif spec.startswith("sqlite:"):
        from cfproxy.store.sqlite import SQLiteStore

        cls = SQLiteStore
    else:
        cls = _import_class(spec)
    if not callable(cls):
        raise StoreLoadError(f"--storage-backend {spec!r}: {cls!r} is not a class")
    try:
        store = cls(config, table)
    except Exception as e:
        raise StoreLoadError(
            f"--storage-backend {spec!r}: constructing the store failed: {type(e).__name__}: {e}"
        ) from None
    if isinstance(store, RouteStore):
        return store
    missing = [m for m in CONTRACT_METHODS if not callable(getattr(store, m, None))]
    if missing:
        raise StoreLoadError(
            f"--storage-backend {spec!r}: store lacks required methods: {', '.join(missing)}"
        )
    return ContractStore(store)
