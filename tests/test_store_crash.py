"""Crash safety of the SQLite store: SIGKILL at a random moment during a burst of API writes,
20 times in a row on one file. After each restart every acknowledged write is there (and every
acknowledged DELETE stays deleted), nothing half-written appears, and a write in flight at the
kill is either fully there or absent (real cfproxy processes, real SQLite file, ~20 s)."""

from __future__ import annotations

import random
import threading
import time

import orjson

from tests.api_client import Conn, build, call
from tests.support.proxy_process import ProxyProcess

ROUNDS = 20
CLIENTS = 4


class Client(threading.Thread):
    """Posts new routes (and deletes some of its own acknowledged ones) until the proxy dies."""

    def __init__(self, api: int, name: str, target: str, live: dict, pad: str) -> None:
        super().__init__(daemon=True)
        self.api, self.name, self.target, self.pad = api, name, target, pad
        self.live = live  # path -> data of acknowledged routes (shared model; own keys only)
        self.deleted: set[str] = set()
        self.in_flight: tuple[str, str, dict | None] | None = None
        self.error: str | None = None

    def run(self) -> None:
        mine: list[str] = []
        try:
            with Conn(self.api, timeout=5) as c:
                for i in range(100_000):
                    if i % 5 == 4 and mine:
                        path = mine.pop(random.randrange(len(mine)))
                        self.in_flight = ("DELETE", path, None)
                        c.send(build("DELETE", f"/api/routes{path}"))
                        if c.read_response().status != 204:
                            raise AssertionError(f"DELETE {path} not 204")
                        del self.live[path]
                        self.deleted.add(path)
                    else:
                        path = f"/{self.name}/{i}"
                        data = {"target": self.target, "i": i, "pad": self.pad[: i % 200]}
                        self.in_flight = ("POST", path, data)
                        c.send(build("POST", f"/api/routes{path}", orjson.dumps(data)))
                        if c.read_response().status != 201:
                            raise AssertionError(f"POST {path} not 201")
                        self.live[path] = data
                        mine.append(path)
                    self.in_flight = None
        except AssertionError as e:
            self.error = str(e)
        except Exception:  # noqa: BLE001 - the proxy was killed mid-request: `in_flight` is open
            return


def test_sigkill_during_writes_never_loses_or_half_writes_anything(tmp_path, backend):
    db = f"sqlite:///{tmp_path / 'routes.db'}"
    rng = random.Random(11)
    live: dict[str, dict] = {}  # every acknowledged, not deleted route
    gone: set[str] = set()  # every acknowledged DELETE
    uncertain: dict[str, tuple[str, dict | None]] = {}  # path -> (method, data) in flight at a kill
    t0 = time.monotonic()
    for rnd in range(ROUNDS):
        with ProxyProcess("--storage-backend", db) as p:
            got = call(p.api_port, "GET", "/api/routes").json()
            check(got, live, gone, uncertain)
            for path, (method, data) in uncertain.items():  # settle what the kill left open
                if path in got:
                    live[path] = data if method == "POST" else strip(got[path])
                    gone.discard(path)
                else:
                    live.pop(path, None)
                    gone.add(path)
            uncertain.clear()
            clients = [Client(p.api_port, f"r{rnd}c{n}", backend.url, live, "é" * 200)
                       for n in range(CLIENTS)]
            for c in clients:
                c.start()
            time.sleep(rng.uniform(0.02, 0.4))
            p.proc.kill()
            p.proc.wait(5)
            for c in clients:
                c.join(5)
                assert c.error is None, c.error
                gone |= c.deleted
                if c.in_flight is not None:
                    method, path, data = c.in_flight
                    uncertain[path] = (method, data)
    with ProxyProcess("--storage-backend", db) as p:
        check(call(p.api_port, "GET", "/api/routes").json(), live, gone, uncertain)
    assert len(live) > 100  # the bursts really wrote
    assert time.monotonic() - t0 < 60


def strip(data: dict) -> dict:
    return {k: v for k, v in data.items() if k != "last_activity"}


def check(got: dict, live: dict, gone: set, uncertain: dict) -> None:
    for path, data in live.items():
        if path in uncertain:
            continue
        assert path in got, f"acknowledged {path} lost"
        assert strip(got[path]) == data, f"{path} changed: {got[path]} != {data}"
    for path in gone:
        if path not in uncertain:
            assert path not in got, f"acknowledged DELETE {path} undone"
    for path, (method, data) in uncertain.items():
        if path in got and method == "POST":
            assert strip(got[path]) == data, f"in-flight {path} half-written: {got[path]}"
    unexpected = set(got) - set(live) - set(uncertain)
    assert not unexpected, f"routes nobody acknowledged: {sorted(unexpected)[:5]}"
