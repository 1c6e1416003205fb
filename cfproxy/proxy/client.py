"""ClientProtocol: one public client connection, from request head to response end.

Owns the HTTP exchange on the public port (reference 3.5, 4.1-4.5, 4.7, 4.10, 5.1): parse
each request head (cfproxy.http.parser), answer /_chp_healthz, find the route
(cfproxy.proxy.lookup), send the rewritten head (cfproxy.proxy.headers) and the body bytes
to an upstream connection (pooled or being opened, cfproxy.proxy.upstream), relay the
response head and body bytes back, and decide per exchange whether both connections stay
open. Errors before a response head get CHP's 404/500/503 answers (cfproxy.http.errors);
an upstream dying after the head aborts the client at once (Q14). Upgrades are the
UpgradeExchange mixin (cfproxy.proxy.upgrade), tunnels cfproxy.proxy.tunnel.

Theory of operation. One request is in flight per connection at a time. An exchange is
finished when both its request body was read to the end (`req_done`) and its response
was written to the end (`resp_done`); only then is the next head parsed. Bytes arriving
meanwhile (pipelined requests) wait in `buf`, and reading stops while `buf` is large.
Request bodies are framed by Content-Length or ChunkedReader and each received `bytes`
object is written to the upstream as is; the sink is the upstream transport, a pending
list while the connection is being opened, or nothing once the request was answered
locally (the body is then read and dropped, keeping the connection usable).

Backpressure (flow.py): the target's bytes wait while the client's write buffer is full
(PEER_BUSY on the upstream), the client's while the target's is (PEER_BUSY here), and
the client's further requests while its own write buffer is full (WriteFlow), so the
proxy's own answers cannot queue without limit. Every pause is released when its cause
goes away (an upstream detached, a request answered early).

Connection hygiene: a client's `Connection: close` ends the client hop only (Q23); a
client leaving before its answer aborts the upstream request; a request body must arrive
within --request-timeout (408); a request that loses the keep-alive race on a pooled
connection before any response byte is sent again once when all of it is at hand.

Hot path: the dominant request and response are decided by the twins in
cfproxy.http.fastpath (one switch turns them off); a connection repeating its previous
request (same RequestHead object, same table version) reuses its route and forwarded
head; dispatch to a pooled connection and the return to the pool are inlined; one write
per direction per exchange when the response arrives whole. Measurements:
benchmarks/README.md and the git log.

Must not: await per request, log on success unless debug is on, copy body bytes, or touch
a store (last_activity is a float written into the Route, 4.10).
"""

from __future__ import annotations

import asyncio
import time

from cfproxy.http.chunked import Dechunker
from cfproxy.http.errors import ErrorPages, response_bytes
from cfproxy.http.fastpath import (
    CRLF,
    REQUEST_HEADS,
    RESPONSE_SHAPES,
    chunked_body_complete,
    response_shape,
)
from cfproxy.http.parser import (
    ChunkedReader,
    HTTPError,
    parse_request_head,
    parse_response_head,
)
from cfproxy.http.status import date_header
from cfproxy.log import debug_enabled, log
from cfproxy.proxy.deadline import Deadline, TimerWheel, timer_wheel
from cfproxy.proxy.flow import CONNECTING, OWN_WRITES, PEER_BUSY, QUEUED, ReadGate, WriteFlow
from cfproxy.proxy.headers import (
    BODY_CHUNKED,
    BODY_CLOSE,
    BODY_DECHUNK,
    BODY_LENGTH,
    BODY_NONE,
    BODY_RECHUNK,
    HeaderRewriter,
)
from cfproxy.proxy.lookup import RouteError, RouteLookup
from cfproxy.proxy.upgrade import ACTIVE, CLOSED, IDLE, UPGRADING, UpgradeExchange, log_path
from cfproxy.proxy.upstream import (
    MAX_IDLE_PER_KEY,
    QUEUE_WAIT_TIMEOUT,
    UpstreamPools,
    describe_error,
)

HEALTHZ = b"/_chp_healthz"
HEALTHZ_BODY = b'{"status":"OK"}'
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
QUEUE_LIMIT = 64 * 1024  # pipelined bytes buffered before reading stops
RESPONSE_HEAD_MAX = 64 * 1024
LA_SAMPLE = 16  # last_activity_updating: one timed update per this many (see _timed_activity)
REPLAY_MAX = 64 * 1024  # request bytes kept to resend once on a stale pooled connection


# what the connection deadline is guarding
T_KEEPALIVE, T_HEAD, T_ACTIVITY = 1, 2, 3


class ProxyContext:
    """Everything per app the protocols read, resolved once (attribute reads are cheaper
    than walking app.config.x per request)."""

    def __init__(self, app) -> None:
        c = app.config
        self.app = app
        self.table = app.table
        self.metrics = app.metrics
        if app.upstreams is None:
            app.upstreams = UpstreamPools(app)
        self.pools: UpstreamPools = app.upstreams
        self.rewriter = HeaderRewriter(c)
        self.errors = ErrorPages(c, app.tls)
        self.max_head = c.max_head_size
        self.host_routing = c.host_routing
        self.prepend_path = c.prepend_path
        self.include_prefix = c.include_prefix
        self.timeout = c.timeout / 1000.0 if c.timeout else 0.0
        self.proxy_timeout = c.proxy_timeout / 1000.0 if c.proxy_timeout else 0.0
        self.keep_alive_timeout = c.keep_alive_timeout / 1000.0
        self.keep_alive_s = max(1, c.keep_alive_timeout // 1000)
        self.header_timeout = c.header_timeout / 1000.0
        self.request_timeout = c.request_timeout / 1000.0
        self.debug = debug_enabled()
        self.fast_paths = c.fast_paths
        self.connections = app.connections
        self.lookup = RouteLookup(app)  # target_for_req and its cache
        self.wheel: TimerWheel | None = None  # the loop's deadline wheel, on first connection
        self.la_sample = 1  # countdown to the next timed last_activity update (the first is)


class ClientProtocol(UpgradeExchange, asyncio.Protocol):
    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        # --- connection ---
        self.transport: asyncio.Transport | None = None
        self.gate: ReadGate | None = None
        self.deadline: Deadline | None = None
        self.dkind = 0
        self.pdeadline: Deadline | None = None  # --proxy-timeout
        self.client_ip: bytes | None = None
        self.tls = False
        self.state = IDLE
        self.buf = b""  # unparsed bytes (a partial head or pipelined requests)
        self.keep_alive = True  # False: close after the current response
        self.paused_by_client = False  # the client transport's write buffer is full
        self.parsing = False  # inside the _parse loop
        # --- current exchange ---
        self.req = None
        self.route = None
        self.up = None  # UpstreamConnection
        self.connecting: asyncio.Task | None = None
        self.pending: list | None = None  # bytes for an upstream being opened
        self.req_done = True
        self.req_left = 0  # Content-Length body bytes still expected
        self.req_chunks: ChunkedReader | None = None
        self.resp_done = True
        self.resp_buf = b""
        self.resp_status = 0  # 0 = no response head yet
        self.resp_mode = BODY_NONE
        self.resp_left = 0
        self.resp_chunks = None  # ChunkedReader or Dechunker
        self.resp_keep = False  # client connection may stay open after this response
        self.up_reusable = False
        self.sent_upstream = b""  # the head sent, for the one retry on a stale pooled conn
        self.replay: list[bytes] | None = None  # body bytes sent so far (<= REPLAY_MAX)
        self.replay_ok = True  # the whole request sent so far can be sent again
        self.replay_room = REPLAY_MAX
        self.rdeadline: Deadline | None = None  # --request-timeout (requests with a body)
        self.waiting = False  # queued for a connection (--max-upstream-connections)
        self.qdeadline: Deadline | None = None  # the queue wait, when no --proxy-timeout
        self.flow: WriteFlow | None = None
        self.retried = False
        self.t_start = 0.0  # perf_counter at the request head (latency histogram)
        self.error_task: asyncio.Task | None = None
        self.ws_buf: list[bytes] | None = None
        # the previous proxied request on this connection (see _start): its head
        # object, the table version, route and forwarded head
        self.last_req = None
        self.last_version = -1
        self.last_route = None
        self.last_head = b""

    # ================================================================ connection events
    def connection_made(self, transport: asyncio.Transport) -> None:
        ctx = self.ctx
        self.transport = transport
        self.gate = ReadGate(transport)
        self.flow = WriteFlow(self.gate, self._drained)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.client_ip = str(peer[0]).encode("latin-1")
        self.tls = transport.get_extra_info("sslcontext") is not None
        ctx.connections.add(self)
        wheel = ctx.wheel
        if wheel is None:
            wheel = ctx.wheel = timer_wheel(asyncio.get_running_loop())
        self.deadline = Deadline(wheel.loop, self._on_deadline, wheel)
        self.dkind = T_HEAD
        self.deadline.set(ctx.header_timeout)
        if ctx.proxy_timeout:
            self.pdeadline = Deadline(wheel.loop, self._on_proxy_timeout, wheel)
        if ctx.app.shutting_down:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self.ctx.connections.discard(self)
        if self.deadline is not None:
            self.deadline.cancel()
        if self.pdeadline is not None:
            self.pdeadline.cancel()
        if self.rdeadline is not None:
            self.rdeadline.cancel()
        if self.qdeadline is not None:
            self.qdeadline.cancel()
        if self.waiting:
            self.waiting = False
            self.ctx.pools.unwait(self.route.target.pool_key, self)
        up = self.up
        if up is not None:  # client went away mid-exchange: the upstream request dies too
            self.up = None
            up.abort()
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        if self.error_task is not None:
            self.error_task.cancel()
            self.error_task = None
        self.pending = None
        self.buf = b""

    def eof_received(self) -> bool:
        # the client will send nothing more
        self.keep_alive = False
        state = self.state
        if state == IDLE or (state == ACTIVE and not self.req_done):
            return False
        if (state == ACTIVE or state == UPGRADING) and not self.resp_status:
            # It went away while its request waits for the target: abort the upstream
            # request at once (nginx's default), so an abandoned request leaks nothing.
            self._abort_exchange()
            return False
        # A TLS transport cannot stay half-open: it closes whatever we answer, and True
        # only makes the loop warn on stderr (`self.tls` was read once at connection_made).
        return not self.tls

    def pause_writing(self) -> None:  # the client reads slower than we write to it
        # Rule 3: the target's bytes wait (its reading stops); rule 10: so do the
        # client's further requests (our own answers would queue without limit).
        self.paused_by_client = True
        self.flow.pause_writing()
        up = self.up
        if up is not None:
            up.gate.hold(PEER_BUSY)

    def resume_writing(self) -> None:
        self.paused_by_client = False
        up = self.up
        if up is not None:
            up.gate.release(PEER_BUSY)
        self.flow.resume_writing()

    def _drained(self) -> None:
        """The client read its answers: go on with the requests it pipelined meanwhile."""
        if self.state == IDLE and self.buf:
            self._parse(self.buf)

    def close_when_idle(self) -> None:
        """Graceful shutdown: close now if no request is in flight, else after it."""
        self.keep_alive = False
        if self.state == IDLE and self.transport is not None:
            self.transport.close()

    # ================================================================ client bytes
    def data_received(self, data: bytes) -> None:
        self.ctx.metrics.bytes_in += len(data)
        state = self.state
        if state == IDLE:
            if not self.buf:
                # The read is exactly one recent head: the parser's memo holds its
                # RequestHead (parse_request_head would answer it, consumed = all of
                # it), so it starts without the parse loop (BoundedCache.get, inlined).
                req = REQUEST_HEADS.cur.get(data)
                if req is not None and not self.parsing and not self.gate.held & OWN_WRITES:
                    self._start(req)
                    return
                self._parse(data)
                return
            self._parse(self.buf + data)
        elif state == ACTIVE:
            if not self.req_done:
                if self.ctx.timeout:
                    self.deadline.set(self.ctx.timeout)
                self._request_body(data)
            else:
                self._queue(data)
        elif state == UPGRADING:
            if not self.req_done:
                self._request_body(data)  # an upgrade request's body (rare)
            else:
                self.ws_buf.append(data)
                self.gate.hold(QUEUED)

    def _queue(self, data: bytes) -> None:
        buf = self.buf = self.buf + data if self.buf else data
        if len(buf) > QUEUE_LIMIT:
            self.gate.hold(QUEUED)

    def _parse(self, buf: bytes) -> None:
        """Parse and start the requests in `buf` while the connection is IDLE.

        A loop, not recursion: requests answered locally (healthz, 404) finish inside
        `_start`, and a client may pipeline thousands of them in one packet.
        """
        self.buf = buf
        if self.parsing:
            return  # the loop below (further up the stack) continues
        ctx = self.ctx
        self.parsing = True
        try:
            while self.state == IDLE and self.buf and not self.gate.held & OWN_WRITES:
                buf = self.buf
                try:
                    parsed = parse_request_head(buf, ctx.max_head)
                except HTTPError as e:
                    self.buf = b""
                    self._reject(e.status, e.message)
                    return
                if parsed is None:
                    if self.dkind != T_HEAD:
                        self.dkind = T_HEAD
                        self.deadline.set(ctx.header_timeout)
                    return
                req, consumed = parsed
                self.buf = buf[consumed:] if consumed < len(buf) else b""
                self._start(req)
        finally:
            self.parsing = False
        if self.state == IDLE and self.dkind != T_KEEPALIVE:
            self.dkind = T_KEEPALIVE
            self.deadline.set(ctx.keep_alive_timeout)

    def _reject(self, status: int, message: str) -> None:
        """A request we cannot parse: answer with its 4xx/5xx and close (parser rule)."""
        data = response_bytes(status, [(b"Content-Type", b"text/plain; charset=utf-8")],
                              message.encode("latin-1", "replace"), False, 0, date_header())
        self.ctx.metrics.bytes_out += len(data)
        self.transport.write(data)
        self.state = CLOSED
        self.transport.close()

    # ================================================================ request start
    def _start(self, req) -> None:
        ctx = self.ctx
        if req is self.last_req and ctx.table.version == self.last_version and ctx.fast_paths:
            # The same head object as this connection's previous proxied request (the
            # parser hands out one RequestHead per distinct recent head, only for the
            # dominant request: GET/HEAD, no body, keep-alive, no upgrade, no Expect; and
            # a health check never becomes last_req) and an unchanged table: the same
            # route and forwarded head (they depend only on the head, the route and this
            # connection). Skips the framing checks, the lookup and request_head; what
            # the general branch below would set for such a head is set here.
            self.req = req
            self.state = ACTIVE
            self.resp_done = False
            self.resp_status = 0
            self.resp_buf = b""
            self.retried = False
            self.req_chunks = None
            self.req_done = True
            self.replay = None
            self.replay_ok = True
            if ctx.timeout:
                self.dkind = T_ACTIVITY
                self.deadline.set(ctx.timeout)
            else:
                self.dkind = 0
                self.deadline.expires = 0.0  # Deadline.clear(), inlined (hot path)
            ctx.metrics.requests_web += 1
            t0 = self.t_start = time.perf_counter()
            ctx.metrics.find_target_for_req.observe(time.perf_counter() - t0)
            route = self.route = self.last_route
            if ctx.debug:
                log.debug("PROXY WEB %s to %s", log_path(req.target), route.target.url)
            self._dispatch(route, self.last_head)
            return
        self.req = req
        self.state = ACTIVE
        self.route = None
        self.resp_done = False
        self.resp_status = 0
        self.resp_buf = b""
        self.retried = False
        if not req.keep_alive:
            self.keep_alive = False
        # request body framing
        if req.chunked:
            self.req_chunks = ChunkedReader()
            self.req_done = False
        elif req.content_length:
            self.req_chunks = None
            self.req_left = req.content_length
            self.req_done = False
        else:
            self.req_chunks = None
            self.req_done = True
        if not self.req_done:
            self.replay = []
            self.replay_room = REPLAY_MAX
            self.replay_ok = True
            if ctx.request_timeout:
                if self.rdeadline is None:
                    self.rdeadline = Deadline(self.deadline.loop, self._on_request_timeout,
                                              self.deadline.wheel)
                self.rdeadline.set(ctx.request_timeout)
        else:
            self.replay = None
            self.replay_ok = True
        if ctx.timeout and req.upgrade is None:
            self.dkind = T_ACTIVITY
            self.deadline.set(ctx.timeout)
        else:
            self.dkind = 0
            self.deadline.expires = 0.0  # Deadline.clear(), inlined (hot path)

        if req.upgrade is not None:
            self._start_upgrade(req)
            return
        raw_target = req.target
        if raw_target == HEALTHZ:
            self.t_start = time.perf_counter()
            self._respond_local(200, [(b"Content-Type", b"application/json")], HEALTHZ_BODY,
                                observe=False)
            self._after_head()
            return
        ctx.metrics.requests_web += 1
        if req.expect_continue and not self.req_done:
            ctx.metrics.bytes_out += len(CONTINUE)
            self.transport.write(CONTINUE)

        # route lookup (3.1) and the forwarded path (3.4): lookup.py
        t0 = self.t_start = time.perf_counter()
        version = ctx.table.version
        try:
            route, path = ctx.lookup.target_for_req(req, t0)
        except RouteError as e:
            self._proxy_error(e.status, e.message)
            self._after_head()
            return
        self.route = route
        target = route.target
        if ctx.debug:
            log.debug("PROXY WEB %s to %s", log_path(raw_target), target.url)
        try:
            head = ctx.rewriter.request_head(req, path, target, self.client_ip, self.tls, False)
        except Exception as e:  # noqa: BLE001 - CHP: any dispatch exception -> 500
            self.route = None
            self._proxy_error(500, f"Error: {e}")
            self._after_head()
            return
        self.last_req = req
        self.last_version = version
        self.last_route = route
        self.last_head = head
        self._dispatch(route, head)

    def _dispatch(self, route, head: bytes) -> None:
        """Send the request head: a pooled connection, else open one (the head waits
        in `pending`)."""
        ctx = self.ctx
        self.sent_upstream = head
        if self.pdeadline is not None:
            self.pdeadline.set(ctx.proxy_timeout)
        pools = ctx.pools
        # pools.acquire_key, inlined (hot path)
        up = None
        lst = pools.idle.get(route.pool_key)
        while lst:
            conn = lst.pop()
            if conn.alive and not conn.transport.is_closing():
                conn.reused = True
                up = conn
                break
        if up is not None:
            self.up = up  # _bind, inlined (hot path)
            up.owner = self
            self.up_reusable = False
            if self.paused_by_client:
                up.gate.hold(PEER_BUSY)
            up.transport.write(head)
        else:
            self.pending = [head]
            self.gate.hold(CONNECTING)
            if pools.cap and not pools.may_open(route.pool_key):
                # --max-upstream-connections: wait for one in a short queue, else 503
                if pools.wait(route.pool_key, self):
                    self.waiting = True
                    if self.pdeadline is None:
                        # the wait is bounded by --proxy-timeout when set (armed above),
                        # else by QUEUE_WAIT_TIMEOUT (nginx's upstream queue default)
                        qd = self.qdeadline
                        if qd is None:
                            qd = self.qdeadline = Deadline(self.deadline.loop,
                                                           self._on_queue_timeout,
                                                           self.deadline.wheel)
                        qd.set(QUEUE_WAIT_TIMEOUT)
                else:
                    self._upstream_failed(None, "Error: too many requests waiting for the target")
            else:
                self.connecting = pools.connect(route.target, self._connected)
        if self.buf:
            self._after_head()

    def handoff(self, up) -> bool:
        """A connection for this waiting request (--max-upstream-connections)."""
        if not self.waiting:
            return False
        self.waiting = False
        if self.qdeadline is not None:
            self.qdeadline.clear()
        self._attach(up)
        return True

    def may_connect(self) -> bool:
        """Room for a new connection for this waiting request (--max-upstream-connections)."""
        if not self.waiting:
            return False
        self.waiting = False
        if self.qdeadline is not None:
            self.qdeadline.clear()
        self.connecting = self.ctx.pools.connect(self.route.target, self._connected)
        return True

    def _on_queue_timeout(self) -> None:
        """No connection to the target came within QUEUE_WAIT_TIMEOUT: 503, as for
        --proxy-timeout (counted as a proxy timeout)."""
        if not self.waiting or self.state != ACTIVE:
            return
        self.ctx.metrics.timeouts["proxy"] += 1
        self._drop_upstream(abort=True)
        self._upstream_failed(None, "Error: timed out waiting for a connection to the target")

    def _after_head(self) -> None:
        """Feed the bytes that followed the head (body start or pipelined requests)."""
        if self.state != ACTIVE:
            return
        buf = self.buf
        if buf and not self.req_done:
            self.buf = b""
            self._request_body(buf)
        elif len(buf) > QUEUE_LIMIT:
            self.gate.hold(QUEUED)

    # ================================================================ request body
    def _request_body(self, data: bytes) -> None:
        route = self.route
        if route is not None:
            route.last_activity = time.time()  # 4.10: every request-body chunk
        chunks = self.req_chunks
        if chunks is not None:
            try:
                n = chunks.feed(data)
            except HTTPError as e:
                self._body_error(e)
                return
        else:
            left = self.req_left
            if len(data) < left:
                self.req_left = left - len(data)
                n = -1
            else:
                self.req_left = 0
                n = left
        if n < 0:
            self._to_upstream(data)
            return
        if n == len(data):
            self._to_upstream(data)
            rest = b""
        else:
            if n:
                self._to_upstream(data[:n])
            rest = data[n:]
        self.req_done = True
        if self.rdeadline is not None:
            self.rdeadline.expires = 0.0  # Deadline.clear(), inlined
        if self.state == UPGRADING:
            # the body of an upgrade request ended: what follows waits for the 101
            if rest:
                self.ws_buf.append(rest)
            self.gate.hold(QUEUED)
            return
        if rest:
            self._queue(rest)
        if self.resp_done:
            self._finish()

    def _to_upstream(self, data: bytes) -> None:
        up = self.up
        if up is not None:
            up.transport.write(data)
            replay = self.replay
            if replay is not None:  # kept for one resend on a stale pooled connection
                if self.replay_room >= len(data):
                    replay.append(data)
                    self.replay_room -= len(data)
                else:
                    self.replay = None
                    self.replay_ok = False
            if self.pdeadline is not None:
                self.pdeadline.set(self.ctx.proxy_timeout)
        elif self.pending is not None:
            self.pending.append(data)
            self.gate.hold(CONNECTING)
        # else: the request was answered already; the body is read and dropped

    def _body_error(self, e: HTTPError) -> None:
        """A malformed chunked request body: never let the rest reach anyone."""
        self._drop_upstream(abort=True)
        self.pending = None
        if self.resp_status == 0 and not self.resp_done and self.error_task is None:
            data = response_bytes(e.status, [(b"Content-Type", b"text/plain; charset=utf-8")],
                                  e.message.encode("latin-1", "replace"), False, 0, date_header())
            self.ctx.metrics.bytes_out += len(data)
            self.transport.write(data)
            self.transport.close()
        else:
            self.transport.abort()
        self.state = CLOSED

    # ================================================================ upstream dispatch
    def _bind(self, up) -> None:
        self.up = up
        up.owner = self
        self.up_reusable = False
        if self.paused_by_client:
            up.gate.hold(PEER_BUSY)

    def _attach(self, up) -> None:
        """Make `up` (new, or handed over from the per-target queue) this request's upstream:
        send what waited for it and let the client be read again."""
        self._bind(up)
        pending = self.pending
        self.pending = None
        if pending:
            up.transport.writelines(pending)
        self.gate.release(CONNECTING)

    def _connected(self, task: asyncio.Task) -> None:
        if self.connecting is not task:  # client gone or request over: keep a fresh conn
            if not task.cancelled() and task.exception() is None:
                _, up = task.result()
                self.ctx.pools.release(up)
            return
        self.connecting = None
        exc = task.exception()
        if exc is not None:
            self.pending = None
            self.gate.release(CONNECTING)
            self._upstream_failed(exc)
            return
        _, up = task.result()
        self._attach(up)

    def _drop_upstream(self, abort: bool = False) -> None:
        up = self.up
        if up is not None:
            self.up = None
            if abort:
                up.abort()
            else:
                up.close()
            self.gate.release(PEER_BUSY)
        if self.waiting:
            self.waiting = False
            self.ctx.pools.unwait(self.route.target.pool_key, self)
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        self.pending = None
        self.gate.release(CONNECTING)
        if self.pdeadline is not None:
            self.pdeadline.clear()

    # ================================================================ upstream events
    def upstream_data(self, data: bytes) -> None:
        if self.pdeadline is not None:
            self.pdeadline.set(self.ctx.proxy_timeout)
        if self.resp_status:
            self._response_body(data)
            return
        req = self.req
        conn = req.connection
        if (not self.resp_buf and self.state == ACTIVE
                and (conn is None or conn == b"keep-alive")
                and req.version == 11 and req.method != b"HEAD"):
            # The dominant exchange: an HTTP/1.1 client without a Connection field (or
            # with `keep-alive`, which the general code would echo as our tail does) and a
            # response head fastpath.response_shape decides (2xx, Content-Length or
            # chunked, no Connection or keep-alive; memoised per head), relayed without
            # building a ResponseHead. Anything else takes the general code below.
            end = data.find(b"\r\n\r\n")
            if end > 0 and end + 4 <= RESPONSE_HEAD_MAX:
                end += 4
                head = data[:end] if end != len(data) else data
                # RESPONSE_SHAPES' current generation first (a hit is one dict lookup)
                shape = RESPONSE_SHAPES.cur.get(head)
                if shape is None:
                    shape = response_shape(head)
                if shape is not None and (shape[0] != 201
                                          or not self.ctx.rewriter.rewrite_location):
                    status, length, has_date, tail = shape
                    if (len(data) - end == length if length >= 0
                            else chunked_body_complete(data, end)):
                        # the whole response in this read: one write (a syscall saved
                        # per small response)
                        if has_date:
                            out = data if tail is CRLF else b"".join(
                                (data[:end - 2], tail, data[end:]))
                        else:
                            out = b"".join((data[:end - 2], date_header(), tail, data[end:]))
                        ctx = self.ctx
                        self.resp_status = status
                        metrics = ctx.metrics
                        metrics.requests_proxy[status] += 1
                        metrics.bytes_out += len(out)
                        self.resp_mode = BODY_LENGTH if length >= 0 else BODY_CHUNKED
                        self.resp_keep = True  # HTTP/1.1 client, no Connection: close
                        self.up_reusable = True  # HTTP/1.1 target, keep-alive, framed
                        self.resp_left = 0
                        self.transport.write(out)
                        self._response_done()
                        return
                    if has_date:
                        out_head = head if tail is CRLF else head[:-2] + tail
                    else:
                        out_head = b"".join((head[:-2], date_header(), tail))
                    self._relay_head(status, out_head,
                                     BODY_LENGTH if length >= 0 else BODY_CHUNKED, length,
                                     True, True, data[end:])
                    return
        buf = self.resp_buf + data if self.resp_buf else data
        while True:
            try:
                parsed = parse_response_head(buf, RESPONSE_HEAD_MAX)
            except HTTPError as e:
                self.resp_buf = b""
                self._drop_upstream(abort=True)
                self._upstream_failed(None, f"Error: Parse Error: {e.message}")
                return
            if parsed is None:
                self.resp_buf = buf
                return
            resp, consumed = parsed
            buf = buf[consumed:]
            status = resp.status
            if status < 200 and status >= 100 and status != 101:
                continue  # interim responses: the proxy answered 100 Continue itself
            self.resp_buf = b""
            if self.state == UPGRADING:
                self._upgrade_response(resp, buf)
                return
            self._response_head(resp, buf)
            return

    def _response_head(self, resp, rest: bytes) -> None:
        """The general code: decide and relay a parsed response head; `rest` = the body
        bytes that came with it."""
        req = self.req
        status = resp.status
        no_body = status < 200 or status == 204 or status == 304 or req.method == b"HEAD"
        head, mode, keep = self.ctx.rewriter.response_head(resp, req, no_body, self.route.target)
        if not no_body:
            up_keep = resp.keep_alive
        else:
            conn = resp.connection
            up_keep = resp.version == 11 and not (conn and b"close" in conn.lower())
        self._relay_head(status, head, mode, resp.content_length if mode == BODY_LENGTH else -1,
                         keep, up_keep and status != 101, rest)

    def _relay_head(self, status: int, head: bytes, mode: int, length: int, keep: bool,
                    up_reusable: bool, rest: bytes) -> None:
        """Write the decided response head and start relaying its body (both paths)."""
        ctx = self.ctx
        self.resp_status = status
        ctx.metrics.requests_proxy[status] += 1
        # counted here with the body bytes that came along (one add on the small-response
        # path); the branches that relay `rest` differently correct it
        ctx.metrics.bytes_out += len(head) + len(rest)
        if ctx.timeout:
            self.deadline.set(ctx.timeout)
        self.resp_mode = mode
        self.resp_keep = keep
        self.up_reusable = up_reusable
        if mode == BODY_NONE:
            self.transport.write(head)
            self._response_done()
            return
        if mode == BODY_LENGTH:
            left = self.resp_left = length
            if len(rest) == left:
                # the whole small response in one read: one write (a syscall saved per
                # request measured +25% requests/s on small keep-alive GETs)
                self.resp_left = 0
                self.transport.write(head + rest if rest else head)
                self._response_done()
                return
        elif mode == BODY_CHUNKED:
            if rest and chunked_body_complete(rest):  # fastpath twin of ChunkedReader
                self.transport.write(head + rest)
                self._response_done()
                return
            self.resp_chunks = ChunkedReader()
            if rest:
                try:
                    n = self.resp_chunks.feed(rest)
                except HTTPError:
                    self.transport.write(head)
                    self._abort_exchange()
                    return
                if n == len(rest) or n < 0:
                    self.transport.write(head + rest)
                    if n >= 0:
                        self._response_done()
                    return
                self.transport.write(head)
                ctx.metrics.bytes_out -= len(rest)  # _response_body_tail counts its part
                self._response_body_tail(rest, n)
                return
        elif mode == BODY_DECHUNK:
            self.resp_chunks = Dechunker()
        self.transport.write(head)
        if rest and self.state == ACTIVE and not self.resp_done:
            ctx.metrics.bytes_out -= len(rest)  # _response_body counts it
            self._response_body(rest)

    def _response_body_tail(self, data: bytes, n: int) -> None:
        """The chunked body ended inside `data` after n bytes; the rest is not ours."""
        self.ctx.metrics.bytes_out += n
        self.transport.write(data[:n])
        self.up_reusable = False
        self._response_done()

    def _response_body(self, data: bytes) -> None:
        ctx = self.ctx
        ctx.metrics.bytes_out += len(data)
        if ctx.timeout:
            self.deadline.set(ctx.timeout)
        mode = self.resp_mode
        write = self.transport.write
        if mode == BODY_LENGTH:
            left = self.resp_left
            if len(data) < left:
                self.resp_left = left - len(data)
                write(data)
                return
            self.resp_left = 0
            if len(data) == left:
                write(data)
            else:  # more than announced: the target is broken, do not reuse it
                write(data[:left])
                self.up_reusable = False
            self._response_done()
        elif mode == BODY_CHUNKED:
            try:
                n = self.resp_chunks.feed(data)
            except HTTPError:
                self._abort_exchange()
                return
            if n < 0:
                write(data)
                return
            write(data if n == len(data) else data[:n])
            if n != len(data):
                self.up_reusable = False
            self._response_done()
        elif mode == BODY_RECHUNK:
            if data:
                self.transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        elif mode == BODY_DECHUNK:
            try:
                pieces, done = self.resp_chunks.feed(data)
            except ValueError:
                self._abort_exchange()
                return
            if pieces:
                self.transport.writelines(pieces)
            if done:
                self.up_reusable = False
                self._response_done()
        else:  # BODY_CLOSE
            write(data)

    def upstream_lost(self, up, exc: Exception | None) -> None:
        """The upstream connection closed (EOF, reset, error) while it served us."""
        if up is not self.up:
            return
        self.up = None
        self.gate.release(PEER_BUSY)  # its write buffer is gone with it
        if self.state == UPGRADING:
            self._upgrade_failed(exc)
            return
        if not self.resp_status:
            # Before any response byte, on a connection taken from the pool: the target
            # closed it as we sent (the keep-alive race). Send the request once more on a
            # fresh connection when all of it that was sent is still at hand (a body up
            # to REPLAY_MAX), as nginx and Node's agents do; otherwise 503.
            if (up.reused and not self.retried and not self.resp_buf and self.replay_ok
                    and (exc is None or isinstance(exc, (ConnectionResetError, BrokenPipeError)))):
                self.retried = True
                pending = [self.sent_upstream]
                if self.replay:
                    pending += self.replay
                self.replay = None
                self.pending = pending
                self.gate.hold(CONNECTING)
                self.connecting = self.ctx.pools.connect(self.route.target, self._connected)
                return
            self._upstream_failed(exc)
            return
        mode = self.resp_mode
        if mode == BODY_RECHUNK and exc is None:
            self.transport.write(b"0\r\n\r\n")
            self.up_reusable = False
            self._response_done()
        elif mode == BODY_CLOSE and exc is None:
            self.up_reusable = False
            self._response_done()
        elif not self.resp_done:
            # died after the head was sent: the client must see the truncation (Q14)
            self._abort_exchange()

    def _abort_exchange(self) -> None:
        self._drop_upstream(abort=True)
        self.state = CLOSED
        self.transport.abort()

    def _on_proxy_timeout(self) -> None:
        if self.state == UPGRADING or self.state != ACTIVE:
            return
        self.ctx.metrics.timeouts["proxy"] += 1
        if self.resp_status:
            self._abort_exchange()
            return
        self._drop_upstream(abort=True)
        self._upstream_failed(None)

    def _upstream_failed(self, exc: BaseException | None, message: str | None = None) -> None:
        """No response head will come: answer 503 (reference 4.8)."""
        if self.state == UPGRADING:
            self._upgrade_failed(exc)
            return
        if self.state != ACTIVE or self.resp_done or self.error_task is not None:
            return
        route = self.route
        self.route = None  # a 503 never counts as activity
        msg = message or describe_error(exc, route.target)
        self.pending = None
        self.gate.release(CONNECTING)
        self._proxy_error(503, msg)

    # ================================================================ response end
    def _response_done(self) -> None:
        ctx = self.ctx
        self.resp_done = True
        self.resp_chunks = None
        ctx.metrics.observe_request(time.perf_counter() - self.t_start, self.resp_status)
        route = self.route
        if route is not None:
            if self.resp_status < 300:
                ctx.la_sample -= 1
                if ctx.la_sample:
                    route.last_activity = time.time()  # 4.10: response finished with status < 300
                else:
                    self._timed_activity(route)
            elif ctx.debug:
                log.debug("Not recording activity for status %s on %s",
                          self.resp_status, route.prefix)
        if self.pdeadline is not None:
            self.pdeadline.clear()
        up = self.up
        if up is not None:
            self.up = None
            if self.gate.held & PEER_BUSY:
                self.gate.release(PEER_BUSY)  # (never resumed by a detached upstream)
            if self.up_reusable and self.req_done:
                # pools.release, inlined for a live connection whose pool has room
                pools = ctx.pools
                lst = pools.idle.get(up.key)
                if (lst is not None and len(lst) < MAX_IDLE_PER_KEY and up.alive
                        and not up.gate.held and not pools.closed and not pools.cap):
                    up.owner = None
                    lst.append(up)
                    up.idle_tick = pools.tick  # pools.pooled, inlined
                    if pools.sweeper is None and pools.idle_timeout:
                        pools.arm_sweep()
                else:
                    pools.release(up)
            else:
                up.close()
        if not self.resp_keep:
            self.keep_alive = False
        if self.req_done:
            if self.keep_alive and self.state == ACTIVE and not self.buf and not self.gate.held:
                # _finish, inlined for a keep-alive connection with nothing queued
                self.req = None
                self.route = None
                self.up_reusable = False
                self.state = IDLE
                if self.dkind != T_KEEPALIVE:
                    self.dkind = T_KEEPALIVE
                    self.deadline.set(ctx.keep_alive_timeout)
            else:
                self._finish()
        elif not self.keep_alive:
            self._close()

    def _timed_activity(self, route) -> None:
        """The same float write, timed into `last_activity_updating` (CHP times its store
        round trip here). Sampled: one finished response in LA_SAMPLE, because a Summary
        observation (~0.25 us amortised, its t-digest merges) would cost more than the
        write it measures on every small request (measured +0.6 us/request in process)."""
        ctx = self.ctx
        ctx.la_sample = LA_SAMPLE
        t0 = time.perf_counter()
        route.last_activity = time.time()
        ctx.metrics.last_activity_updating.observe(time.perf_counter() - t0)

    def _finish(self) -> None:
        """Both halves of the exchange are over: close, or go on with the next request."""
        self.req = None
        self.route = None
        self.up_reusable = False
        if not self.keep_alive or self.state != ACTIVE:
            self._close()
            return
        self.state = IDLE
        if self.gate.held:
            self.gate.release(QUEUED | CONNECTING)
        if self.buf:
            self._parse(self.buf)
        elif self.dkind != T_KEEPALIVE:
            self.dkind = T_KEEPALIVE
            self.deadline.set(self.ctx.keep_alive_timeout)

    def _close(self) -> None:
        self.state = CLOSED
        self._drop_upstream()
        if self.transport is not None:
            self.transport.close()

    # ================================================================ local answers
    def _respond_local(self, code: int, headers: list, body: bytes, observe: bool = True) -> None:
        """Write a response the proxy generated; the exchange's response half is over."""
        if observe:
            self.ctx.metrics.observe_request(time.perf_counter() - self.t_start, code)
        keep = self.keep_alive and self.req.keep_alive
        data = response_bytes(code, headers, body, keep, self.ctx.keep_alive_s, date_header())
        self.ctx.metrics.bytes_out += len(data)
        self.transport.write(data)
        self.resp_status = code
        self.resp_done = True
        self.resp_keep = keep
        if not keep:
            self.keep_alive = False
        if self.req_done:
            self._finish()

    def _proxy_error(self, code: int, message: str) -> None:
        """CHP's handleProxyError for web requests: count, log, answer with an error page."""
        ctx = self.ctx
        ctx.metrics.requests_proxy[code] += 1
        req = self.req
        log.error("%s %s %s %s", code, req.method.decode("latin-1"), log_path(req.target), message)
        self.route = None
        self.resp_status = code
        errors = ctx.errors
        if errors.error_target:
            self.error_task = asyncio.get_running_loop().create_task(
                self._error_from_target(code, req.target))
            return
        headers, body = errors.local_page(code)
        self._respond_local(code, headers, body)

    async def _error_from_target(self, code: int, raw_target: bytes) -> None:
        headers, body = await self.ctx.errors.fetch(code, raw_target)
        self.error_task = None
        if self.state == ACTIVE and not self.resp_done:
            self._respond_local(code, headers, body)

    # ================================================================ timers
    def _on_deadline(self) -> None:
        kind = self.dkind
        self.dkind = 0
        if self.state == CLOSED or self.transport is None:
            return
        if kind == T_KEEPALIVE and self.state == IDLE:
            self.ctx.metrics.timeouts["keep_alive"] += 1
            self._close()
        elif kind == T_HEAD and self.state == IDLE:
            self.ctx.metrics.timeouts["header"] += 1
            if self.buf:
                self._reject(408, "Request Timeout: the request head took too long")
            else:
                self._close()
        elif kind == T_ACTIVITY and self.state == ACTIVE:
            # --timeout: inactivity during a web request; no response, nothing logged (4.7)
            self.ctx.metrics.timeouts["activity"] += 1
            self._abort_exchange()

    def _on_request_timeout(self) -> None:
        """--request-timeout: the request did not arrive in full; 408 and close, and the
        target connection too (Node's requestTimeout, which CHP inherits)."""
        state = self.state
        if self.req_done or (state != ACTIVE and state != UPGRADING) or self.transport is None:
            return
        self.ctx.metrics.timeouts["request"] += 1
        self._drop_upstream(abort=True)
        if self.error_task is not None:
            self.error_task.cancel()
            self.error_task = None
        if self.resp_done:
            self._close()  # answered already (early); the rest of the body is not awaited
        elif self.resp_status:
            self._abort_exchange()  # a response is under way: cut it
        else:
            self.ctx.metrics.requests_proxy[408] += 1
            self._reject(408, "Request Timeout: the request took too long")


def make_client_protocol_factory(app):
    """A zero-argument factory of ClientProtocol for loop.create_server."""
    ctx = ProxyContext(app)

    def factory() -> ClientProtocol:
        return ClientProtocol(ctx)

    return factory
