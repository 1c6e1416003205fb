"""The `state` scenario: cfproxy with the SQLite store beside CHP (memory) and itself (memory).

Measured in one run, with N routes (the profile's `routes`), each with its own target URL:

- API adds/s, sequential (one keep-alive connection, N/2 routes) and with 16 concurrent
  keep-alive connections (the other N/2): cfproxy+SQLite, cfproxy+memory, CHP;
- GET /api/routes (median of 3) and requests/s over random routes (wrk), SQLite vs memory
  store, interleaved, and their ratio;
- restart: cfproxy+SQLite stopped (SIGTERM) and spawned again on the same file with N
  routes -> ms to the first proxied 200 on the last route added.

`run(run, scenario)` is called by benchmarks/runner.py for the "state" group.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

from benchmarks.httpc import HTTPClient
from benchmarks.peers import TOKEN, Peer

CONCURRENT = 16


def scenario() -> Any:
    """The state Scenario (scenarios.py appends it to its catalogue)."""
    from benchmarks.scenarios import Metric, Scenario, Target

    def t(ref: str | None, op: str, factor: float, text: str) -> tuple:
        return (Target(ref, op, factor, text),)

    return Scenario("state", "routes that survive a restart (SQLite store)", "state", [
        Metric("adds_seq_per_s", "API adds/s, sequential (cfproxy: SQLite)", "adds/s", True, 0,
               t("chp", ">=", 0.5, "≥ 0.5× CHP")),
        Metric("adds_16_per_s", "API adds/s, 16 connections (cfproxy: SQLite)", "adds/s", True, 0,
               t("chp", ">=", 1, "≥ CHP")),
        Metric("adds_seq_memory_per_s", "API adds/s, sequential, memory store", "adds/s", True, 0),
        Metric("adds_16_memory_per_s", "API adds/s, 16 connections, memory store", "adds/s", True, 0),
        Metric("restart_ms", "restart with N routes in SQLite → first proxied 200", "ms", False, 0,
               t(None, "<=", 2000, "≤ 2 s")),
        Metric("get_sqlite_ms", "GET /api/routes, SQLite store", "ms", False, 1),
        Metric("get_memory_ms", "GET /api/routes, memory store", "ms", False, 1),
        Metric("get_sqlite_vs_memory", "GET /api/routes SQLite ÷ memory", "×", False, 2,
               t(None, "<=", 1.25, "≤ 1.25 (scatter)")),
        Metric("req_sqlite_per_s", "requests/s, random routes, SQLite store", "req/s", True, 0),
        Metric("req_memory_per_s", "requests/s, random routes, memory store", "req/s", True, 0),
        Metric("req_sqlite_vs_memory", "requests/s SQLite ÷ memory", "×", True, 2,
               t(None, ">=", 0.9, "≥ 0.9 (scatter)")),
    ], {}, ("cfproxy", "chp"))


def _body(peer: Peer, i: int) -> bytes:
    return b'{"target": "%s/t%d"}' % (peer.backends.http_url.encode(), i)


def adds_sequential(peer: Peer, start: int, n: int) -> float:
    """POST /api/routes/r/<i> for i in [start, start+n) over one connection; adds/s."""
    with HTTPClient(peer.api_port, token=TOKEN) as c:
        reqs = [c.build("POST", f"/api/routes/r/{i}", _body(peer, i)) for i in range(start, start + n)]
        t0 = time.perf_counter()
        for raw in reqs:
            status, resp = c.send_raw(raw)
            if status != 201:
                raise RuntimeError(f"route add -> {status} {resp[:100]!r}")
        return n / (time.perf_counter() - t0)


def adds_concurrent(peer: Peer, start: int, n: int, conns: int = CONCURRENT) -> float:
    """The same adds spread over `conns` keep-alive connections at once; adds/s."""
    auth = b"Authorization: token " + TOKEN.encode() + b"\r\n"

    async def one(k: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", peer.api_port)
        try:
            for i in range(start + k, start + n, conns):
                body = _body(peer, i)
                writer.write(b"POST /api/routes/r/%d HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n%s"
                             % (i, auth, len(body), body))
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 201"):
                    raise RuntimeError(f"route add -> {head[:60]!r}")
                length, chunked = 0, False
                for line in head.split(b"\r\n"):
                    low = line.lower()
                    if low.startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                    elif low.startswith(b"transfer-encoding:") and b"chunked" in low:
                        chunked = True
                if chunked:  # CHP: an empty chunked body; read chunks up to the last one
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        await reader.readexactly(size + 2)
                        if size == 0:
                            break
                elif length:
                    await reader.readexactly(length)
        finally:
            writer.close()

    async def all_of_them() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(k) for k in range(conns)))
        return n / (time.perf_counter() - t0)

    return asyncio.run(all_of_them())


def get_ms(peer: Peer, expect: int) -> float:
    from benchmarks.scenarios import get_routes_ms
    return statistics.median(get_routes_ms(peer, expect) for _ in range(3))


def fill(peer: Peer, n: int) -> dict:
    half = n // 2
    return {"adds_seq_per_s": adds_sequential(peer, 0, half),
            "adds_16_per_s": adds_concurrent(peer, half, n - half)}


def restart_ms(peer: Peer, extra: tuple[str, ...], last: int, timeout: float = 30.0) -> float:
    """Stop `peer`, spawn it again with `extra`; ms to the first proxied 200 on /r/<last>."""
    peer.stop()
    t0 = time.perf_counter()
    proc = peer.spawn(extra)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {peer.log_tail(300)}")
        try:
            with HTTPClient(peer.port, timeout=2) as c:
                if c.request("GET", f"/r/{last}/x")[0] == 200:
                    return (time.perf_counter() - t0) * 1000
        except OSError:
            pass
        time.sleep(0.002)
    raise RuntimeError(f"no proxied 200 within {timeout:.0f}s")


def run(runner: Any, sc: Any) -> None:
    """The state group: see the module docstring. Errors become error cells."""
    from benchmarks import scenarios

    res = runner.results
    res.ran.append(sc.id)
    n = runner.prof["routes"]
    names = runner.peers_for(sc)
    db = os.path.join(runner.tmp, "state", "routes.db")
    os.makedirs(os.path.dirname(db), exist_ok=True)
    sqlite_args = ("--storage-backend", f"sqlite:///{db}")
    started: list[Peer] = []
    try:
        peers: dict[str, Peer] = {}
        for name, extra in (("cfproxy", sqlite_args), ("memory", ()), ("chp", ())):
            base = "cfproxy" if name == "memory" else name
            if base not in names:
                continue
            runner.progress.step(f"{sc.id} · {name} · adding {n:,} routes")
            peer = runner.make_peer(base)
            started.append(peer)

            def add(peer: Peer = peer, extra: tuple = extra) -> dict:
                peer.start(extra)
                return fill(peer, n)

            if name == "memory":
                try:
                    got = add()
                    res.add(sc.id, "cfproxy", {"adds_seq_memory_per_s": got["adds_seq_per_s"],
                                               "adds_16_memory_per_s": got["adds_16_per_s"]})
                    peers[name] = peer
                except Exception as e:  # noqa: BLE001 - an error cell
                    res.error(sc.id, "cfproxy", f"memory store: {type(e).__name__}: {e}")
                continue
            before = len(res.errors.get(sc.id, {}))
            runner.attempt(sc.id, name, add)
            if len(res.errors.get(sc.id, {})) == before:
                peers[name] = peer
        if "cfproxy" in peers and "memory" in peers:
            rounds = runner.prof["rounds"]
            for r in range(rounds):
                for which in (("cfproxy", "memory"), ("memory", "cfproxy"))[r % 2]:
                    runner.progress.step(f"{sc.id} · {which} store · GET + random routes · round {r + 1}")
                    key = "sqlite" if which == "cfproxy" else "memory"
                    runner.attempt(sc.id, "cfproxy", lambda p=peers[which], key=key: {
                        f"get_{key}_ms": get_ms(p, n),
                        f"req_{key}_per_s": scenarios.measure_route_throughput(
                            p, n, runner.prof["duration"], runner.tmp)})
            for a, b, out in (("get_sqlite_ms", "get_memory_ms", "get_sqlite_vs_memory"),
                              ("req_sqlite_per_s", "req_memory_per_s", "req_sqlite_vs_memory")):
                va, vb = res.median(sc.id, a, "cfproxy"), res.median(sc.id, b, "cfproxy")
                if va and vb:
                    res.add(sc.id, "cfproxy", {out: va / vb})
        if "cfproxy" in peers:
            runner.progress.step(f"{sc.id} · cfproxy · restart with {n:,} routes in SQLite")
            runner.attempt(sc.id, "cfproxy", lambda: {
                "restart_ms": restart_ms(peers["cfproxy"], sqlite_args, n - 1)})
    finally:
        for peer in started:
            peer.stop()
