"""The soak's traffic: what JupyterHub and its users do to the proxy, bounded and counted.

Tasks, all in the soak's event loop, all stopping by themselves when `stop` is
set, and closing their connections when traffic pauses (`traffic` cleared):

  churn      the hub: 1,000 users' routes added at start, then spawns and culls in
             bursts (10-50 routes every 2-4 s; POST / DELETE /api/routes/user/<name>)
  poll       the hub: GET /api/routes every 3 s (every other one ?inactive_since=)
  browser    N clients: keep-alive connections of 1-40 browser-shaped requests
             (GET, sometimes POST) to random users, 1 in 10 to a faulted user;
             some connections end with a reset instead of a close
  websocket  M sessions at a time: open, echo 3-10 messages, then close or drop
  give_up    clients that walk away: half a request head, half a request body,
             a request to a hanging target, half a trickling answer, connect-and-close
  stopper    stops and restarts the `stoppable` target every 6-10 s

Every answer is counted by kind (`counts`); a 5xx to a request whose user is
served by a healthy target is a failure, and a few are kept as examples.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

from benchmarks.shapes import BROWSER_PATHS, USERS, browser_head, browser_path, user_name
from benchmarks.soak.targets import FAULTS, TargetServer
from benchmarks.wsload import client_frame, echoed_size

FAULTED_USERS = 50  # users u0000..u0049 are served by the faulty targets, 10 per fault
IO_TIMEOUT = 5.0  # a healthy target answers within this, or the request counts as slow


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> tuple[int, bool]:
    """Read one response; return (status, connection closes after it)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    low = head.lower()
    close = b"\r\nconnection: close" in low
    i = low.find(b"\r\ncontent-length:")
    if i >= 0:
        j = low.find(b"\r\n", i + 2)
        await reader.readexactly(int(low[i + 17:j]))
    elif b"\r\ntransfer-encoding: chunked" in low:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                break
            await reader.readexactly(size + 2)
    elif not (status in (204, 304) or 100 <= status < 200 or method == "HEAD"):
        while await reader.read(65536):
            pass
        close = True
    return status, close


def _close(writer: asyncio.StreamWriter, abort: bool = False) -> None:
    if abort:
        writer.transport.abort()
    else:
        writer.close()


class Workload:
    """The traffic of one soak; `counts` is what happened."""

    def __init__(self, port: int, api_port: int, token: str, healthy: list[TargetServer],
                 faulty: dict[str, TargetServer], *, clients: int = 12, websockets: int = 20,
                 users: int = USERS, seed: int = 1) -> None:
        self.port = port
        self.api_port = api_port
        self.token = token
        self.healthy = healthy
        self.faulty = faulty
        self.clients = clients
        self.websockets = websockets
        self.users = users
        self.rng = random.Random(seed)
        self.active: set[int] = set()
        self.counts: Counter[str] = Counter()
        self.bad_examples: list[str] = []  # a few 5xx answers from healthy targets
        self.traffic = asyncio.Event()
        self.stop = asyncio.Event()
        self.busy = 0  # tasks in the middle of traffic (pause waits for 0)
        self.host = f"127.0.0.1:{port}"
        self.heads: dict[int, list[bytes]] = {}
        self._api: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._api_lock = asyncio.Lock()

    # --- who serves whom ----------------------------------------------------------------
    def target_of(self, i: int) -> TargetServer:
        if i < FAULTED_USERS:
            return self.faulty[FAULTS[i % len(FAULTS)]]
        return self.healthy[i % len(self.healthy)]

    def faulted(self, i: int) -> bool:
        return i < FAULTED_USERS

    def head_for(self, i: int, rng: random.Random, method: str = "GET", extra: str = "") -> bytes:
        if method != "GET" or extra:
            return browser_head(self.host, user_name(i), browser_path(rng), rng, method, extra)
        heads = self.heads.get(i)
        if heads is None:  # a user's browser keeps its cookie: build its heads once
            heads = self.heads[i] = [browser_head(self.host, user_name(i), browser_path(rng), rng)
                                     for _ in range(len(BROWSER_PATHS) // 2)]
        return rng.choice(heads)

    def record(self, status: int, faulted: bool, what: str) -> None:
        c = self.counts
        c["requests"] += 1
        if status >= 500:
            if faulted:
                c["5xx_faulted"] += 1
            else:
                c["5xx_healthy"] += 1
                if len(self.bad_examples) < 20:
                    self.bad_examples.append(f"{time.strftime('%H:%M:%S')} {status} {what}")
        elif status >= 400:
            c["4xx"] += 1
        else:
            c["ok"] += 1

    # --- the hub ------------------------------------------------------------------------
    async def api(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """One API request over the hub's keep-alive connection (reconnects when closed)."""
        async with self._api_lock:
            for attempt in (0, 1):
                try:
                    if self._api is None:
                        self._api = await asyncio.wait_for(
                            asyncio.open_connection("127.0.0.1", self.api_port), IO_TIMEOUT)
                    r, w = self._api
                    w.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.api_port}\r\n"
                            f"Authorization: token {self.token}\r\nContent-Type: application/json"
                            f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
                    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
                    low = head.lower()
                    i = low.find(b"\r\ncontent-length:")
                    n = int(low[i + 17:low.find(b"\r\n", i + 2)]) if i >= 0 else 0
                    data = await asyncio.wait_for(r.readexactly(n), 30)
                    status = int(head[9:12])
                    if b"\r\nconnection: close" in low:
                        _close(w)
                        self._api = None
                    return status, data
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                    if self._api is not None:
                        _close(self._api[1], abort=True)
                        self._api = None
                    if attempt:
                        self.counts["api_errors"] += 1
                        return 0, str(e).encode()
        return 0, b""

    async def add_route(self, i: int) -> None:
        user = user_name(i)
        body = (b'{"target": "%s", "user": "%s", "server_name": ""}'
                % (self.target_of(i).url.encode(), user.encode()))
        status, data = await self.api("POST", f"/api/routes/user/{user}", body)
        self._api_result("add", status, data)
        if status == 201:
            self.active.add(i)

    async def delete_route(self, i: int) -> None:
        status, data = await self.api("DELETE", f"/api/routes/user/{user_name(i)}")
        self._api_result("delete", status, data)
        self.active.discard(i)

    def _api_result(self, what: str, status: int, data: bytes) -> None:
        self.counts[f"api_{what}"] += 1
        if status >= 500 or status == 0:
            self.counts["api_5xx"] += 1
            if len(self.bad_examples) < 20:
                self.bad_examples.append(f"{time.strftime('%H:%M:%S')} API {what} -> {status} "
                                         f"{data[:100]!r}")

    async def add_all_routes(self) -> None:
        """All users' routes present (the hub at start-up, and before every pause)."""
        for i in range(self.users):
            if i not in self.active:
                await self.add_route(i)

    async def churn(self) -> None:
        rng = random.Random(2)
        while not self.stop.is_set():
            await asyncio.sleep(rng.uniform(2, 4))
            if not self.traffic.is_set():
                continue
            self.busy += 1
            try:
                k = rng.randint(10, 50)
                if len(self.active) > self.users // 2:
                    for i in rng.sample(sorted(self.active), min(k, len(self.active))):
                        await self.delete_route(i)
                idle = [i for i in range(self.users) if i not in self.active]
                for i in rng.sample(idle, min(rng.randint(10, 50), len(idle))):
                    await self.add_route(i)
            finally:
                self.busy -= 1

    async def poll(self) -> None:
        n = 0
        while not self.stop.is_set():
            await asyncio.sleep(3)
            if not self.traffic.is_set():
                continue
            n += 1
            path = "/api/routes" + ("?inactive_since=2026-01-01T00:00:00.000Z" if n % 2 else "")
            status, data = await self.api("GET", path)
            self._api_result("get", status, data)
            if status == 200 and not data.startswith(b"{"):
                self.counts["api_bad_json"] += 1

    # --- users ----------------------------------------------------------------------------
    def pick_user(self, rng: random.Random) -> int:
        if rng.random() < 0.1:
            return rng.randrange(FAULTED_USERS)
        return rng.randrange(FAULTED_USERS, self.users)

    async def repeat(self, seed: int, session, max_gap: float) -> None:
        """Run `session(rng)` again and again while traffic flows (counted as busy), with a
        random gap of up to `max_gap` seconds between sessions."""
        rng = random.Random(seed)
        while not self.stop.is_set():
            if not self.traffic.is_set():
                await asyncio.sleep(0.2)
                continue
            self.busy += 1
            try:
                await session(rng)
            finally:
                self.busy -= 1
            await asyncio.sleep(rng.uniform(0, max_gap))

    async def browser(self, idx: int) -> None:
        await self.repeat(100 + idx, self.browser_connection, 0.05)

    async def browser_connection(self, rng: random.Random) -> None:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port),
                                          IO_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            self.counts["connect_errors"] += 1
            return
        abort = rng.random() < 0.2
        try:
            for _ in range(rng.randint(1, 40)):
                if not self.traffic.is_set() or self.stop.is_set():
                    break
                i = self.pick_user(rng)
                faulted = self.faulted(i)
                if rng.random() < 0.1:
                    body = b'{"type": "notebook", "content": {"cells": []}, "format": "json"}'
                    head = self.head_for(i, rng, "PUT", "Content-Type: application/json\r\n"
                                         f"Content-Length: {len(body)}\r\n")
                    method = "PUT"
                else:
                    body, method = b"", "GET"
                    head = self.head_for(i, rng)
                w.write(head + body)
                try:
                    status, closed = await asyncio.wait_for(
                        read_response(r, method), 1.0 if faulted else IO_TIMEOUT)
                except asyncio.TimeoutError:
                    self.counts["gave_up_waiting" if faulted else "slow_healthy"] += 1
                    abort = True
                    break
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    self.counts["cut_faulted" if faulted else "cut_healthy"] += 1
                    if not faulted and len(self.bad_examples) < 20:
                        self.bad_examples.append(f"{time.strftime('%H:%M:%S')} connection cut "
                                                 f"on {method} to {user_name(i)}")
                    abort = True
                    break
                self.record(status, faulted, f"{method} {head[:60]!r}")
                if closed:
                    break
                await asyncio.sleep(rng.uniform(0, 0.02))
        finally:
            _close(w, abort)

    async def websocket(self, idx: int) -> None:
        await self.repeat(200 + idx, self.websocket_session, 0.5)

    async def websocket_session(self, rng: random.Random) -> None:
        i = rng.randrange(FAULTED_USERS, self.users)
        kernel = f"{rng.getrandbits(128):032x}"
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port),
                                          IO_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            self.counts["connect_errors"] += 1
            return
        abort = True
        try:
            head = browser_head(self.host, user_name(i), f"/api/kernels/{kernel}/channels", rng,
                                extra="Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
            w.write(head.replace(b"Connection: keep-alive", b"Connection: Upgrade"))
            resp = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
            status = int(resp[9:12])
            if status != 101:
                self.record(status, False, f"websocket upgrade {user_name(i)}")
                return
            self.counts["ws_opened"] += 1
            payload = b'{"header": {"msg_type": "kernel_info_request"}, "content": {}}'
            frame, size = client_frame(payload, 0x1), echoed_size(len(payload))
            for _ in range(rng.randint(3, 10)):
                if not self.traffic.is_set() or self.stop.is_set():
                    break
                w.write(frame)
                await asyncio.wait_for(r.readexactly(size), IO_TIMEOUT)
                self.counts["ws_echoes"] += 1
                await asyncio.sleep(rng.uniform(0.05, 0.3))
            if rng.random() < 0.5:  # a clean close; else the browser tab just goes away
                w.write(client_frame(b"\x03\xe8", 0x8))
                await asyncio.wait_for(r.readexactly(4), IO_TIMEOUT)
                abort = False
                self.counts["ws_closed"] += 1
            else:
                self.counts["ws_dropped"] += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as e:
            self.counts["ws_errors"] += 1
            if len(self.bad_examples) < 20:
                self.bad_examples.append(f"{time.strftime('%H:%M:%S')} websocket to "
                                         f"{user_name(i)}: {type(e).__name__}")
        finally:
            _close(w, abort)

    async def give_up(self) -> None:
        """Clients that walk away in the middle of a request."""
        rng = random.Random(3)
        actions = ("half_head", "half_body", "hang", "trickle", "connect_close")
        while not self.stop.is_set():
            await asyncio.sleep(rng.uniform(0.1, 0.4))
            if not self.traffic.is_set():
                continue
            self.busy += 1
            try:
                action = rng.choice(actions)
                try:
                    r, w = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", self.port), IO_TIMEOUT)
                except (OSError, asyncio.TimeoutError):
                    self.counts["connect_errors"] += 1
                    continue
                try:
                    await self.walk_away(action, rng, r, w)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                    pass
                finally:
                    _close(w, abort=rng.random() < 0.5)
                self.counts[f"gave_up_{action}"] += 1
            finally:
                self.busy -= 1

    async def walk_away(self, action: str, rng: random.Random, r: asyncio.StreamReader,
                        w: asyncio.StreamWriter) -> None:
        if action == "half_head":
            head = self.head_for(rng.randrange(FAULTED_USERS, self.users), rng)
            w.write(head[:rng.randrange(10, len(head) - 4)])
            await asyncio.sleep(rng.uniform(0, 0.3))
        elif action == "half_body":
            i = rng.randrange(FAULTED_USERS, self.users)
            w.write(self.head_for(i, rng, "PUT", "Content-Type: application/octet-stream\r\n"
                                  "Content-Length: 100000\r\n") + b"x" * 1000)
            await asyncio.sleep(rng.uniform(0, 0.3))
        elif action == "hang":
            w.write(self.head_for(FAULTS.index("hang"), rng))
            await asyncio.sleep(rng.uniform(0.1, 0.5))
        elif action == "trickle":
            w.write(self.head_for(FAULTS.index("trickle"), rng))
            await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
            await asyncio.sleep(rng.uniform(0.05, 0.3))

    async def stopper(self) -> None:
        """The `stoppable` single-user server goes away and comes back, connections pooled."""
        rng = random.Random(4)
        target = self.faulty["stoppable"]
        while not self.stop.is_set():
            await asyncio.sleep(rng.uniform(6, 10))
            if not self.traffic.is_set() or self.stop.is_set():
                continue
            await target.stop()
            self.counts["target_stops"] += 1
            await asyncio.sleep(rng.uniform(2, 4))
            if not target.running:  # a pause may have restarted it already
                await target.start()

    # --- control ----------------------------------------------------------------------------
    def tasks(self) -> list:
        return [self.churn(), self.poll(), self.give_up(), self.stopper(),
                *(self.browser(k) for k in range(self.clients)),
                *(self.websocket(k) for k in range(self.websockets))]

    async def pause(self, timeout: float = 10.0) -> None:
        """Stop traffic, wait for every task to let go of its connections, restore all routes
        and the stopped target: each pause starts from the same state."""
        self.traffic.clear()
        deadline = time.monotonic() + timeout
        while self.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if not self.faulty["stoppable"].running:
            await self.faulty["stoppable"].start()
        await self.add_all_routes()
        if self._api is not None:  # the hub's API connection is closed too
            _close(self._api[1])
            self._api = None

    def resume(self) -> None:
        self.traffic.set()

    async def close(self) -> None:
        self.stop.set()
        self.traffic.clear()
        if self._api is not None:
            _close(self._api[1], abort=True)
            self._api = None
