"""The REST API listener: HTTP/1.1 connections handled by h11, one asyncio.Protocol each.

Owns the wire side of the API (api/handlers.py owns what the answers are):

- one request at a time per connection; pipelined requests wait in h11's
  buffer (reading pauses when more than ~1 MiB is waiting) and are answered in
  order; keep-alive with `Keep-Alive: timeout=5` like Node, idle connections
  closed after 5 s, a request that takes longer than --header-timeout to
  arrive is dropped;
- dispatch and authentication run on the request head (`handlers.preflight`),
  *before* any body is read; a request rejected there is answered at once and,
  if its body has not fully arrived, the connection is closed (lingering: we
  half-close and discard what the client still sends for up to 2 s, so the
  client sees the answer instead of a reset);
- bodies are bounded (1 MiB): a larger Content-Length is refused with 413
  before reading, a chunked body is refused with 413 as soon as it passes the cap;
- malformed HTTP gets a 400 (h11's verdict) and a closed connection.

`make_api_protocol_factory(app)` returns the zero-arg factory for
loop.create_server / create_unix_server. Open API connections are kept in
`app.api_connections` (each has `close_when_idle()`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import h11

from cfproxy.api.handlers import ApiResponse, Prepared, fail, preflight
from cfproxy.config import API_MAX_BODY_SIZE
from cfproxy.log import log
from cfproxy.tls import transport_is_tls

KEEP_ALIVE_S = 5.0  # Node's default, independent of --keep-alive-timeout (reference 2.1)
LINGER_S = 2.0  # how long a rejected request's remaining upload is read and discarded
MAX_PIPELINED = API_MAX_BODY_SIZE + 64 * 1024  # bytes waiting in h11 before reading pauses

_date_cache: list[Any] = [0, b""]


def _http_date() -> bytes:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = formatdate(now, usegmt=True).encode()
    return _date_cache[1]


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _buffered(conn: h11.Connection) -> int:
    """Bytes h11 holds unparsed. `trailing_data` copies the buffer (O(n) per call, quadratic
    under pipelining), so read the buffer's length directly where h11 allows it."""
    buf = getattr(conn, "_receive_buffer", None)
    if buf is not None:
        try:
            return len(buf)
        except TypeError:
            pass
    return len(conn.trailing_data[0])


def _log_level(status: int) -> int:
    if status < 400:
        return logging.INFO
    return logging.WARNING if status < 500 else logging.ERROR


class ApiProtocol(asyncio.Protocol):
    def __init__(self, app: Any, connections: set) -> None:
        # --- connection state ---
        self.app = app
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=app.config.max_head_size)
        self.peer: Any = None
        self.timer: asyncio.TimerHandle | None = None
        self.paused = False  # reading paused while pipelined bytes wait
        self.lingering = False  # answered and half-closed; discarding input
        self.closed = False
        self.close_after_response = False
        # --- per-request state ---
        self.method = ""
        self.log_path = ""
        self.prepared: Prepared | None = None  # passed preflight, waiting for its body
        self.body: bytearray | None = None
        self.task: asyncio.Task | None = None  # handler running
        self.request_started = False

    # --- asyncio callbacks --------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        self.connections.add(self)
        self._arm(self.app.config.header_timeout / 1000.0)

    def data_received(self, data: bytes) -> None:
        if self.lingering or self.closed:
            return
        self.conn.receive_data(data)
        if self.task is not None:  # busy: let h11 buffer the next request, bounded
            if _buffered(self.conn) > MAX_PIPELINED and not self.paused:
                self.paused = True
                self.transport.pause_reading()
            return
        if not self.request_started:
            self.request_started = True
            self._arm(self.app.config.header_timeout / 1000.0)
        self._process()

    def eof_received(self) -> bool | None:
        if self.lingering or self.closed:
            self._close()
            return None
        self.conn.receive_data(b"")
        if self.task is None:
            self._process()
        # keep the write side open for a response in progress; TLS transports cannot
        # half-close, and asyncio warns on stderr when asked to
        return not transport_is_tls(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.connections.discard(self)
        self._cancel_timer()
        if self.task is not None:
            self.task.cancel()
            self.task = None

    # --- graceful shutdown ------------------------------------------------
    def close_when_idle(self) -> None:
        if self.task is None and self.prepared is None and not self.request_started:
            self._close()
        else:
            self.close_after_response = True

    # --- request processing ------------------------------------------------
    def _process(self) -> None:
        """Consume h11 events until it needs data or a handler is running."""
        while not self.closed and not self.lingering and self.task is None:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as e:
                self._bad_request(e)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            etype = type(event)
            if etype is h11.Request:
                self._on_request(event)
            elif etype is h11.Data:
                self._on_data(event.data)
            elif etype is h11.EndOfMessage:
                if self.prepared is not None:
                    self._run(bytes(self.body or b""))
            elif etype is h11.ConnectionClosed:
                self._close()
                return

    def _on_request(self, event: h11.Request) -> None:
        self.method = event.method.decode("ascii", "replace")
        target = event.target.decode("latin-1")
        self.log_path = target.split("?", 1)[0]
        authorization = None
        content_length = None
        for name, value in event.headers:
            if name == b"authorization" and authorization is None:
                authorization = value
            elif name == b"content-length":
                content_length = int(value)
        outcome = preflight(self.app, self.method, target, authorization, self.peer)
        if isinstance(outcome, ApiResponse):
            self._respond_early(outcome)
            return
        if content_length is not None and content_length > API_MAX_BODY_SIZE:
            self._respond_early(self._too_large())
            return
        self.prepared = outcome
        self.body = bytearray()
        if self.conn.they_are_waiting_for_100_continue:
            self.transport.write(self.conn.send(h11.InformationalResponse(
                status_code=100, headers=[], reason=b"Continue")))

    def _on_data(self, data: bytes) -> None:
        if self.body is None:
            return  # not collecting (cannot happen: early answers stop processing)
        self.body += data
        if len(self.body) > API_MAX_BODY_SIZE:
            self.prepared = None
            self.body = None
            self._respond_early(self._too_large())

    def _too_large(self) -> ApiResponse:
        return fail(413, f"Request body larger than {API_MAX_BODY_SIZE} bytes")

    def _run(self, body: bytes) -> None:
        prepared = self.prepared
        self.prepared = None
        self.body = None
        self._cancel_timer()
        self.task = asyncio.get_running_loop().create_task(prepared.run(body))
        self.task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Task) -> None:
        if task is not self.task:
            return
        self.task = None
        if self.closed or task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # Prepared.run catches store errors; this is a bug of ours
            log.error("Error in handler for %s %s: %s", self.method, self.log_path, exc,
                      exc_info=exc)
            response = fail(500, "Internal Server Error")
        else:
            response = task.result()
        self._send(response, close=self.close_after_response)
        self._next_cycle()
        if not self.closed and not self.lingering and self.request_started:
            self._process()  # a pipelined request is waiting in h11's buffer

    # --- responses ---------------------------------------------------------
    def _respond_early(self, response: ApiResponse) -> None:
        """Answer before (all of) the body was read; keep the connection only if it had ended."""
        self.prepared = None
        self.body = None
        complete = self._skip_buffered_body()
        self._send(response, close=not complete or self.close_after_response)
        if complete:
            self._next_cycle()
        else:
            self._close(linger=True)

    def _skip_buffered_body(self) -> bool:
        """Discard body bytes already received; True if the request is complete."""
        while self.conn.their_state is h11.SEND_BODY:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError:
                return False
            if event is h11.NEED_DATA or event is h11.PAUSED or type(event) is h11.ConnectionClosed:
                return False
        return self.conn.their_state is h11.DONE

    def _send(self, response: ApiResponse, close: bool) -> None:
        status = response.status
        headers = [(b"date", _http_date())]
        if response.content_type:
            headers.append((b"content-type", response.content_type.encode()))
        body = response.body if self.method != "HEAD" else b""
        if status != 204 and status >= 200:
            headers.append((b"content-length", str(len(body)).encode()))
        if close:
            headers.append((b"connection", b"close"))
        else:
            headers.append((b"connection", b"keep-alive"))
            headers.append((b"keep-alive", b"timeout=5"))
        try:
            out = self.conn.send(h11.Response(status_code=status, headers=headers,
                                              reason=_reason(status)))
            if body:
                out += self.conn.send(h11.Data(data=body))
            out += self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as e:
            log.error("API response %s could not be sent: %s", status, e)
            self._close()
            return
        self.transport.write(out)
        self.app.metrics.requests_api[status] += 1
        log.log(_log_level(status), "%s %s %s %s", status, self.method, self.log_path,
                response.log_msg)

    def _bad_request(self, e: h11.RemoteProtocolError) -> None:
        status = e.error_status_hint or 400
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            msg = f"Bad request: {e}"
            self.method = self.method or "-"
            try:
                self._send(fail(status, msg), close=True)
            except Exception:  # noqa: BLE001 - best effort on a broken connection
                pass
        self._close(linger=True)

    def _next_cycle(self) -> None:
        """After a complete exchange: keep-alive or close (the caller processes what waits)."""
        if self.closed:
            return
        if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is not h11.DONE \
                or self.close_after_response or getattr(self.app, "shutting_down", False):
            self._close(linger=self.conn.their_state not in (h11.DONE, h11.CLOSED, h11.MUST_CLOSE))
            return
        self.conn.start_next_cycle()
        self.method = ""
        self.log_path = ""
        self.request_started = _buffered(self.conn) > 0 or self.conn.their_state is h11.CLOSED
        self._arm(self.app.config.header_timeout / 1000.0 if self.request_started else KEEP_ALIVE_S)
        if self.paused:
            self.paused = False
            self.transport.resume_reading()

    # --- closing and timers ------------------------------------------------
    def _close(self, linger: bool = False) -> None:
        if self.closed:
            return
        transport = self.transport
        if linger and not self.lingering and transport.can_write_eof():
            self.lingering = True
            if self.paused:
                self.paused = False
                transport.resume_reading()
            try:
                transport.write_eof()
            except (OSError, RuntimeError):
                pass
            self._arm(LINGER_S)
            return
        self.closed = True
        self._cancel_timer()
        transport.close()

    def _arm(self, seconds: float) -> None:
        self._cancel_timer()
        self.timer = asyncio.get_running_loop().call_later(seconds, self._on_timeout)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _on_timeout(self) -> None:
        self.timer = None
        if self.task is not None:
            return
        self._close()


def make_api_protocol_factory(app: Any) -> Callable[[], ApiProtocol]:
    """The zero-arg protocol factory for the REST API listener."""
    connections = getattr(app, "api_connections", None)
    if connections is None:
        connections = set()
        app.api_connections = connections

    def factory() -> ApiProtocol:
        return ApiProtocol(app, connections)

    return factory
