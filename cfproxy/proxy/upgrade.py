"""The upgrade handshake (reference 4.5): route and forward a request with
`Connection: upgrade`, wait for the target's answer, and hand both sockets to
cfproxy.proxy.tunnel after a `101` (any other answer is relayed as a normal response).

`UpgradeExchange` is a mixin of ClientProtocol (cfproxy.proxy.client): it shares the
connection's state (transport, gate, deadlines, the upstream connection) and only adds
the steps that differ from a plain exchange. Errors before the switch are a raw status
line with its reason phrase (Q24) and a closed socket (Q13).
"""

from __future__ import annotations

import asyncio
import time

from cfproxy.http.status import status_line
from cfproxy.log import log
from cfproxy.proxy.flow import CONNECTING, QUEUED
from cfproxy.proxy.lookup import RouteError
from cfproxy.proxy.upstream import describe_error

# ClientProtocol's connection states (defined here, imported by client.py)
IDLE = 0  # between requests / reading a head
ACTIVE = 1  # an exchange is in flight
UPGRADING = 2  # an upgrade request waits for the target's 101
CLOSED = 3


def log_path(target: bytes) -> str:
    """The request-target without its query, for log lines (reference 7)."""
    i = target.find(b"?")
    return (target if i < 0 else target[:i]).decode("latin-1")


class UpgradeExchange:
    """The upgrade steps of ClientProtocol."""

    def _start_upgrade(self, req) -> None:
        """Route and forward a request with `Connection: upgrade` (any method, any protocol).

        CHP destroys the socket unless it is a GET asking for `websocket` (4.5); issue 4
        decided to tunnel whatever protocol the target accepts (a 101) and to relay any
        other answer as a normal response. WebSocket keeps CHP's ws/wss X-Forwarded-Proto
        and no X-Forwarded-Host; other protocols get the http/https rules of web requests.
        A request body (Content-Length or chunked) is forwarded as usual, since the target
        answers only after reading it; bytes after the body (or after a bodiless head) are
        held until the target switched, then they open the tunnel.
        """
        ctx = self.ctx
        ctx.metrics.requests_ws += 1
        self.t_start = time.perf_counter()
        self.state = UPGRADING
        self.ws_buf = []
        buf = self.buf
        self.buf = b""
        if self.req_done:
            if buf:
                self.ws_buf.append(buf)
            self.gate.hold(QUEUED)
        try:
            route = ctx.lookup.upgrade_route(req)
        except RouteError as e:
            self._ws_error(e.status, e.message)
            return
        self.route = route
        if ctx.debug:
            log.debug("PROXY WS %s to %s", log_path(req.target), route.target.url)
        try:
            head = ctx.rewriter.request_head(req, ctx.lookup.forward_path(req.target, route),
                                             route.target, self.client_ip, self.tls,
                                             req.upgrade == b"websocket")
        except Exception as e:  # noqa: BLE001
            self.route = None
            self._ws_error(500, f"Error: {e}")
            return
        up = ctx.pools.acquire(route.target)
        if up is not None:
            self._bind(up)
            up.transport.write(head)
        else:
            self.pending = [head]
            self.connecting = ctx.pools.connect(route.target, self._ws_connected)
        if buf and not self.req_done:
            self._request_body(buf)

    def _ws_connected(self, task: asyncio.Task) -> None:
        if self.connecting is not task:
            if not task.cancelled() and task.exception() is None:
                task.result()[1].close()
            return
        self.connecting = None
        exc = task.exception()
        if exc is not None:
            self.pending = None
            self._upgrade_failed(exc)
            return
        _, up = task.result()
        self._bind(up)
        pending = self.pending
        self.pending = None
        up.transport.writelines(pending)
        self.gate.release(CONNECTING)  # (held while a request body waited in `pending`)

    def _ws_error(self, code: int, message: str) -> None:
        """Raw status line, then close (Q13 fixed: CHP leaves the socket open)."""
        metrics = self.ctx.metrics
        metrics.requests_proxy[code] += 1
        metrics.observe_request(time.perf_counter() - self.t_start, code)
        req = self.req
        log.error("%s %s %s %s", code, req.method.decode("latin-1"), log_path(req.target), message)
        data = status_line(code) + b"Content-Length: 0\r\n\r\n"  # Q24: with its reason
        metrics.bytes_out += len(data)
        self.transport.write(data)
        self._close()

    def _upgrade_failed(self, exc: BaseException | None) -> None:
        if self.state != UPGRADING:
            return
        self._drop_upstream(abort=True)
        route = self.route
        self.route = None
        self._ws_error(503, describe_error(exc, route.target) if route else "")

    def _upgrade_response(self, resp, rest: bytes) -> None:
        """The target answered the upgrade request."""
        ctx = self.ctx
        up = self.up
        if resp.status != 101:
            # relayed as a normal response, then the connection is closed (4.5)
            # (a request body still arriving is forwarded to the end as usual)
            self.state = ACTIVE
            self.keep_alive = False
            self.ws_buf = None
            self._response_head(resp, rest)
            return
        from cfproxy.proxy.tunnel import open_tunnel

        self.transport.write(resp.raw)
        to_upstream = b"".join(self.ws_buf or ())
        metrics = ctx.metrics
        metrics.observe_request(time.perf_counter() - self.t_start, 101)  # time to the switch
        metrics.bytes_out += len(resp.raw)
        metrics.bytes_in -= len(to_upstream)  # counted by data_received; open_tunnel counts them
        self.ws_buf = None
        self.up = None
        up.owner = None
        self.state = CLOSED
        ctx.connections.discard(self)
        self.deadline.cancel()
        if self.pdeadline is not None:
            self.pdeadline.cancel()
        self.gate.release_all()
        up.gate.release_all()
        open_tunnel(ctx.app, self.route, self.transport, up.transport, to_upstream, rest)
        self.route = None
