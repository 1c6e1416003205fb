"""Upstream connections to targets and their keep-alive pools (reference 4.4, 4.8, 4.9).

Owns the sockets to targets:

- `UpstreamConnection`, the asyncio.Protocol of one connection to a target. It has no
  HTTP logic: while it serves a request it hands every event to its `owner` (the
  ClientProtocol whose request it carries: `upstream_data`, `upstream_lost`, and the
  backpressure pair); while idle in the pool, any byte or EOF from the target closes it.
- `UpstreamPools`, one idle list per `Target.pool_key`, LIFO reuse, at most
  `MAX_IDLE_PER_KEY` idle connections per key. An idle connection is closed by us after
  `--upstream-idle-timeout` (default 4 s, below common servers' keep-alive), so we close
  first instead of racing the target's close with a new request; a close by the target
  is noticed at once because idle connections keep reading. A connection returns to its
  pool only after its response was framed to the end (the client protocol decides,
  `release`).
- `--max-upstream-connections N`: at most N connections per key (open or opening); a
  request that finds none free waits in a queue of at most `WAIT_QUEUE_MAX` per key
  (`wait`) and gets a connection as one is released or closed; beyond it, 503.
- `connect()`: opening a new connection (TCP, TLS with SNI = target host and
  `app.tls.client_context()` so --insecure/--client-ssl-* apply, or a Unix socket) as
  a task whose completion calls back; the request path never awaits.

Unix-socket targets are pooled like TCP ones (CHP sends `connection: close` to them and
never reuses; pooling is safe for HTTP/1.1 servers and saves a connect per request).
"""

from __future__ import annotations

import asyncio
import errno
import ssl
from collections import deque
from collections.abc import Callable

from cfproxy.proxy.flow import PEER_BUSY, ReadGate
from cfproxy.routing.target import Target

MAX_IDLE_PER_KEY = 256  # Node's default maxFreeSockets for CHP's keep-alive agent
WAIT_QUEUE_MAX = 64  # requests waiting per key for a connection under a cap
# Seconds a request waits in that queue when --proxy-timeout is not set (which bounds the
# wait when it is); then 503. nginx's upstream `queue` timeout defaults to 60 s too.
QUEUE_WAIT_TIMEOUT = 60.0
IDLE_TICKS = 8  # idle sweeps per --upstream-idle-timeout


class UpstreamConnection(asyncio.Protocol):
    """One connection to a target; forwards its events to the current owner."""

    __slots__ = ("pools", "key", "transport", "gate", "owner", "alive", "reused", "idle_tick")

    def __init__(self, pools: UpstreamPools, key: tuple) -> None:
        self.pools = pools
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.gate: ReadGate | None = None
        self.owner = None  # the ClientProtocol using it; None while idle or dead
        self.alive = False
        self.reused = False  # taken from the pool (a failure then allows one retry)
        self.idle_tick = 0  # UpstreamPools.tick when it was last put into its pool

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.gate = ReadGate(transport)
        self.alive = True

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is not None:
            owner.upstream_data(data)
        else:  # bytes nobody asked for: the connection is not reusable
            self.alive = False
            self.transport.close()

    def eof_received(self) -> bool:
        return False  # close; connection_lost tells the owner

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        owner = self.owner
        if owner is not None:
            self.owner = None
            owner.upstream_lost(self, exc)
        else:
            self.pools.discard(self)
        if self.pools.cap:
            self.pools.closed_one(self.key)

    # backpressure: the target reads slower than the client sends
    def pause_writing(self) -> None:
        owner = self.owner
        if owner is not None:
            owner.gate.hold(PEER_BUSY)

    def resume_writing(self) -> None:
        owner = self.owner
        if owner is not None:
            owner.gate.release(PEER_BUSY)

    def close(self) -> None:
        self.alive = False
        self.owner = None
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.alive = False
        self.owner = None
        if self.transport is not None:
            self.transport.abort()


class UpstreamPools:
    """Idle keep-alive connections per target, LIFO, plus connection opening."""

    def __init__(self, app) -> None:
        self.app = app
        self.idle: dict[tuple, list[UpstreamConnection]] = {}
        self.closed = False
        self.loop: asyncio.AbstractEventLoop | None = None  # set by the first connect()
        c = app.config
        self.idle_timeout = c.upstream_idle_timeout / 1000.0
        self.tick = 0  # idle sweeps so far
        self.sweeper: asyncio.TimerHandle | None = None
        # --max-upstream-connections: open (or opening) connections and waiting requests
        # per key; only kept when a cap is set
        self.cap = c.max_upstream_connections
        self.open: dict[tuple, int] = {}
        self.waiters: dict[tuple, deque] = {}

    def acquire(self, target: Target) -> UpstreamConnection | None:
        """A live idle connection to `target`, or None (then `connect`)."""
        return self.acquire_key(target.pool_key)

    def acquire_key(self, key: tuple) -> UpstreamConnection | None:
        """A live idle connection of pool `key` (a Target.pool_key), or None."""
        lst = self.idle.get(key)
        while lst:
            conn = lst.pop()
            if conn.alive and not conn.transport.is_closing():
                conn.reused = True
                return conn
        return None

    # --- --upstream-idle-timeout -------------------------------------------------------------
    # A sweep runs every idle_timeout / IDLE_TICKS seconds while anything is pooled and
    # closes the connections pooled IDLE_TICKS + 1 ticks ago or earlier: each is closed
    # after between 1 and 1 + 1/IDLE_TICKS idle timeouts. Pooling a connection is then one
    # attribute write (`idle_tick = tick`), not a timer per request.
    def pooled(self, conn: UpstreamConnection) -> None:
        """Note when a connection was put into its pool (and make sure the sweep runs)."""
        conn.idle_tick = self.tick
        if self.sweeper is None and self.idle_timeout:
            self.arm_sweep()

    def arm_sweep(self) -> None:
        loop = self.loop or asyncio.get_running_loop()
        self.sweeper = loop.call_later(self.idle_timeout / IDLE_TICKS, self._sweep)

    def _sweep(self) -> None:
        self.sweeper = None
        self.tick += 1
        oldest = self.tick - IDLE_TICKS - 1
        metrics = self.app.metrics
        for lst in list(self.idle.values()):
            while lst and lst[0].idle_tick <= oldest:  # oldest first (LIFO reuse at the end)
                conn = lst.pop(0)
                if conn.alive:
                    metrics.timeouts["upstream_idle"] += 1
                conn.close()
        if any(self.idle.values()):
            self.arm_sweep()

    def release(self, conn: UpstreamConnection) -> None:
        """Put a connection whose response ended cleanly back into its pool."""
        conn.owner = None
        if not conn.alive or self.closed:
            conn.close()
            return
        if self.cap:
            waiting = self.waiters.get(conn.key)
            while waiting:  # a request waits for a connection to this target: hand it over
                if conn.gate.held:
                    conn.gate.release_all()
                conn.reused = True
                if waiting.popleft().handoff(conn):
                    return
        # (a transport closing meanwhile is skipped by acquire_key, and its
        # connection_lost discards it)
        if conn.gate.held:
            conn.gate.release_all()  # idle connections read, so a close by the target is seen
        lst = self.idle.get(conn.key)
        if lst is None:
            lst = self.idle[conn.key] = []
        lst.append(conn)
        self.pooled(conn)
        if len(lst) > MAX_IDLE_PER_KEY:
            lst.pop(0).close()

    def discard(self, conn: UpstreamConnection) -> None:
        lst = self.idle.get(conn.key)
        if lst:
            try:
                lst.remove(conn)
            except ValueError:
                pass
            if not lst:
                del self.idle[conn.key]

    def connect(self, target: Target,
                done: Callable[[asyncio.Task], None]) -> asyncio.Task:
        """Start opening a connection to `target`; `done(task)` runs when it finished."""
        # The loop is looked up once: asyncio.get_running_loop() makes a getpid()
        # syscall on every call (py-spy --native showed it on each upstream connect;
        # the CPU it saves was within the noise of a new-connection-per-request run).
        loop = self.loop
        if loop is None or loop.is_closed():
            loop = self.loop = asyncio.get_running_loop()
        key = target.pool_key

        def factory() -> UpstreamConnection:
            return UpstreamConnection(self, key)

        if target.scheme == "unix":
            coro = loop.create_unix_connection(factory, target.unix_path)
        elif target.tls:
            coro = loop.create_connection(factory, target.host, target.port,
                                          ssl=self.app.tls.client_context(),
                                          server_hostname=target.host)
        else:
            coro = loop.create_connection(factory, target.host, target.port)
        task = loop.create_task(coro)
        if self.cap:
            self.open[key] = self.open.get(key, 0) + 1
            task.add_done_callback(lambda t: self._connect_done(t, key))
        task.add_done_callback(done)
        return task

    # --- --max-upstream-connections ---------------------------------------------------------
    def may_open(self, key: tuple) -> bool:
        """Whether one more connection to `key` stays within the cap."""
        return not self.cap or self.open.get(key, 0) < self.cap

    def wait(self, key: tuple, client) -> bool:
        """Queue `client` for the next connection to `key`; False when the queue is full.
        The client gets `client.handoff(conn)` (a pooled connection) or
        `client.may_connect()` (room to open one); it leaves with `unwait`."""
        waiting = self.waiters.get(key)
        if waiting is None:
            waiting = self.waiters[key] = deque()
        if len(waiting) >= WAIT_QUEUE_MAX:
            return False
        waiting.append(client)
        return True

    def unwait(self, key: tuple, client) -> None:
        waiting = self.waiters.get(key)
        if waiting:
            try:
                waiting.remove(client)
            except ValueError:
                pass
            if not waiting:
                del self.waiters[key]

    def _connect_done(self, task: asyncio.Task, key: tuple) -> None:
        # nothing was opened: uncount it (an opened one counts until its connection_lost)
        if task.cancelled() or task.exception() is not None:
            self.closed_one(key)

    def closed_one(self, key: tuple) -> None:
        """A connection to `key` closed (or failed to open): room for a waiting request."""
        n = self.open.get(key, 0) - 1
        if n > 0:
            self.open[key] = n
        else:
            self.open.pop(key, None)
        waiting = self.waiters.get(key)
        while waiting and self.may_open(key):
            client = waiting.popleft()
            if not waiting:
                del self.waiters[key]
            if client.may_connect():
                break

    def idle_count(self) -> int:
        return sum(len(v) for v in self.idle.values())

    def close(self) -> None:
        """Close every idle connection (shutdown)."""
        self.closed = True
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        for lst in self.idle.values():
            for conn in lst:
                conn.close()
        self.idle.clear()


def describe_error(exc: BaseException | None, target: Target) -> str:
    """A Node-style message for a failed upstream, for the `503 GET /p <msg>` log line."""
    if exc is None:
        return "socket hang up"
    where = target.unix_path if target.scheme == "unix" else f"{target.host}:{target.port}"
    if isinstance(exc, ssl.SSLError):
        return f"Error: {getattr(exc, 'verify_message', None) or exc.reason or exc}"
    if isinstance(exc, OSError) and exc.errno:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        if name == "ECONNRESET":
            return "read ECONNRESET"
        if name in ("ECONNREFUSED", "EHOSTUNREACH", "ETIMEDOUT"):
            return f"connect {name} {where}"
        return f"Error: connect {name} {where}"
    if isinstance(exc, ConnectionResetError):
        return "read ECONNRESET"
    return f"Error: {exc}" if str(exc) else f"Error: {type(exc).__name__}"
