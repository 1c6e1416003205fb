"""The REST API listener: HTTP/1.1 connections, one asyncio.Protocol each.

Owns the wire side of the API (api/handlers.py owns what the answers are):

- request heads are parsed by cfproxy/http/parser.py, the proxy's strict
  RFC 9112 parser (checked against h11 on generated input: nothing h11 rejects
  is accepted); Content-Length and chunked bodies are framed here;
- one request at a time per connection; pipelined requests wait in our buffer
  (reading pauses when more than ~1 MiB is waiting) and are answered in
  order;
- backpressure (DESIGN rule 10): while the connection's write buffer is above
  its high-water mark, reading stops and buffered requests wait (`WriteFlow`);
  so a client that pipelines requests and never reads its answers costs one
  write buffer, not a queue of answers. Every hold is released when its cause
  ends (the answer drained, the handler finished, the connection lingers); keep-alive with `Keep-Alive: timeout=5` like Node, idle connections
  closed after 5 s, a request that takes longer than --header-timeout to
  arrive is dropped; HTTP/1.0 and `Connection: close` requests are answered,
  then the connection is closed;
- dispatch and authentication run on the request head (`handlers.preflight`),
  *before* any body is read; a request rejected there is answered at once and,
  if its body has not fully arrived, the connection is closed (lingering: we
  half-close and discard what the client still sends for up to 2 s, so the
  client sees the answer instead of a reset);
- bodies are bounded (1 MiB): a larger Content-Length is refused with 413
  before reading, a chunked body is refused with 413 as soon as it passes the cap;
- malformed HTTP gets the parser's status (400, 414, 431, 501, 505) with
  `Bad request: <reason>` and a closed connection;
- a handler runs eagerly inside data_received; only if it really suspends
  (a shared store doing I/O) is the rest of it driven by a Task.

Why not h11 (which served the API until the route-add benchmark): one add
(head + body + 201) cost 68 us in h11 alone against 5 us with the proxy's
parser and a pre-built response head (timeit, this machine). Responses are
byte-identical to what h11 wrote for us (lower-case field names as we gave
them; a close the client asked for is h11's `keep-alive: timeout=5` then
`Connection: close`).

`make_api_protocol_factory(app)` returns the zero-arg factory for
loop.create_server / create_unix_server. Open API connections are kept in
`app.api_connections` (each has `close_when_idle()`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from cfproxy.api.handlers import ApiResponse, Prepared, fail, preflight
from cfproxy.config import API_MAX_BODY_SIZE
from cfproxy.http.chunked import Dechunker
from cfproxy.http.parser import ChunkedReader, HTTPError, parse_request_head
from cfproxy.http.status import date_header, status_line
from cfproxy.log import log
from cfproxy.proxy.deadline import Deadline
from cfproxy.proxy.flow import QUEUED, ReadGate, WriteFlow
from cfproxy.tls import transport_is_tls

KEEP_ALIVE_S = 5.0  # Node's default, independent of --keep-alive-timeout (reference 2.1)
LINGER_S = 2.0  # how long a rejected request's remaining upload is read and discarded
MAX_PIPELINED = API_MAX_BODY_SIZE + 64 * 1024  # bytes waiting in our buffer before reading pauses

# what the connection is reading
_HEAD = 0  # a request head (or nothing yet)
_BODY_LENGTH = 1  # a Content-Length body
_BODY_CHUNKED = 2  # a chunked body

_KEEP_ALIVE = b"connection: keep-alive\r\nkeep-alive: timeout=5\r\n\r\n"
_CLOSE = b"connection: close\r\n\r\n"
_CLIENT_CLOSE = b"keep-alive: timeout=5\r\nConnection: close\r\n\r\n"  # as h11 rewrote ours
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# The first Authorization field's value (surrounding OWS dropped) from the validated head's
# bytes, as the parser's field list gives it (a field name only ever follows CRLF, a value
# holds no CR), without splitting every field line: the parser leaves them unsplit until asked.
_AUTHORIZATION_RE = re.compile(rb"\r\nauthorization:[ \t]*([^\r]*)", re.IGNORECASE)
_SEPARATE_WRITE = 64 * 1024  # bodies at least this big go out with writev, not copied behind the head


def _log_level(status: int) -> int:
    if status < 400:
        return logging.INFO
    return logging.WARNING if status < 500 else logging.ERROR


class _Resume:
    """Awaitable that drives a coroutine which already ran its first step and yielded
    `first`: `yield from` semantics, so a Task can take over from an eager start."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine, first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self.coro
        value = self.first
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as e:  # noqa: BLE001 - thrown in by the Task (cancellation)
                try:
                    value = coro.throw(e)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as done:
                    return done.value


async def _finish(resume: _Resume) -> Any:
    return await resume


class ApiProtocol(asyncio.Protocol):
    def __init__(self, app: Any, connections: set) -> None:
        # --- connection state ---
        self.app = app
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.peer: Any = None
        self.max_head = app.config.max_head_size
        self.header_timeout = app.config.header_timeout / 1000.0
        self.buf = bytearray()  # received, not yet consumed
        self.deadline: Deadline | None = None  # header, keep-alive or linger timeout
        self.gate: ReadGate | None = None  # holds reading: QUEUED (pipelined bytes wait
        self.flow: WriteFlow | None = None  # behind a running handler), OWN_WRITES (flow)
        self.lingering = False  # answered and half-closed; discarding input
        self.served = False  # an exchange completed: between requests we wait KEEP_ALIVE_S
        self.closed = False
        self.eof = False  # the client half-closed
        self.close_after_response = False
        # --- per-request state ---
        self.state = _HEAD
        self.request_started = False
        self.method = ""
        self.log_path = ""
        self.keep_alive = True  # the client allows another request after this one
        self.prepared: Prepared | None = None  # passed preflight, waiting for its body
        self.body: bytearray | None = None
        self.left = 0  # Content-Length bytes still to read
        self.chunks: ChunkedReader | None = None
        self.dechunk: Dechunker | None = None
        self.task: asyncio.Task | None = None  # a handler that suspended

    # --- asyncio callbacks --------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.loop = asyncio.get_running_loop()  # once: each lookup is a getpid() syscall on 3.11
        self.deadline = Deadline(self.loop, self._on_timeout)
        self.peer = transport.get_extra_info("peername")
        self.gate = ReadGate(self.transport)
        self.flow = WriteFlow(self.gate, self._on_drain)
        self.connections.add(self)
        self._arm(self.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self.lingering or self.closed:
            return
        self.buf += data
        if self.task is not None:  # busy: buffer the next request, bounded
            if len(self.buf) > MAX_PIPELINED:
                self.gate.hold(QUEUED)
            return
        if not self.request_started:
            self.request_started = True
            self._arm(self.header_timeout)
        self._process()

    def eof_received(self) -> bool | None:
        if self.lingering or self.closed:
            self._close()
            return None
        self.eof = True
        if self.task is None:
            self._process()  # (a no-op while our answers back up; _on_drain goes on)
        # keep the write side open for a response in progress; TLS transports cannot
        # half-close, and asyncio warns on stderr when asked to
        return not transport_is_tls(self.transport)

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    def _on_drain(self) -> None:
        """Our answers drained below the low-water mark: go on with buffered requests."""
        if not self.closed and not self.lingering and self.task is None:
            self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.connections.discard(self)
        self._drop_timer()
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
        """Consume buffered bytes until more are needed, a handler is running, or our
        answers back up (the client does not read them)."""
        buf = self.buf
        flow = self.flow
        while not self.closed and not self.lingering and self.task is None \
                and not flow.blocked:
            state = self.state
            if state == _HEAD:
                if not buf:
                    if self.eof:
                        self._close()
                    return
                try:
                    parsed = parse_request_head(buf, self.max_head)
                except HTTPError as e:
                    self._bad_request(e.status, e.message)
                    return
                if parsed is None:
                    if self.eof:
                        self._bad_request(400, "peer unexpectedly closed connection")
                    return
                head, consumed = parsed
                del buf[:consumed]
                self._on_request(head)
            elif state == _BODY_LENGTH:
                take = min(self.left, len(buf))
                if take:
                    self.body += buf[:take]
                    del buf[:take]
                    self.left -= take
                if self.left:
                    if self.eof:
                        self._bad_request(400, "peer unexpectedly closed connection")
                    return
                self._run()
            else:  # _BODY_CHUNKED
                if not buf:
                    if self.eof:
                        self._bad_request(400, "peer unexpectedly closed connection")
                    return
                try:
                    end = self.chunks.feed(buf)
                except HTTPError as e:
                    self._bad_request(e.status, e.message)
                    return
                # ChunkedReader validated these bytes; Dechunker only extracts the data
                # (its own, stricter line limit can still refuse a long trailer line)
                part = bytes(buf) if end < 0 else bytes(buf[:end])
                try:
                    self.body += b"".join(self.dechunk.feed(part)[0])
                except ValueError as e:
                    self._bad_request(400, f"invalid chunked body: {e}")
                    return
                if end < 0:
                    buf.clear()
                else:
                    del buf[:end]
                if len(self.body) > API_MAX_BODY_SIZE:
                    self._respond_early(self._too_large(), complete=False)
                    return
                if end >= 0:
                    self._run()

    def _on_request(self, head: Any) -> None:
        self.method = head.method.decode("ascii", "replace")
        target = head.target.decode("latin-1")
        self.log_path = target.split("?", 1)[0]
        self.keep_alive = head.keep_alive and head.version == 11  # no keep-alive for HTTP/1.0
        m = _AUTHORIZATION_RE.search(head.raw)
        authorization = m.group(1).rstrip(b" \t") if m is not None else None
        outcome = preflight(self.app, self.method, target, authorization, self.peer)
        if isinstance(outcome, ApiResponse):
            self._respond_early(outcome, self._skip_body(head))
            return
        content_length = head.content_length
        if content_length is not None and content_length > API_MAX_BODY_SIZE:
            self._respond_early(self._too_large(), self._skip_body(head))
            return
        self.prepared = outcome
        self.body = bytearray()
        if head.expect_continue:
            self.transport.write(_CONTINUE)
        if head.chunked:
            self.state = _BODY_CHUNKED
            self.chunks = ChunkedReader()
            self.dechunk = Dechunker()
        elif content_length:
            self.state = _BODY_LENGTH
            self.left = content_length
        else:
            self._run()

    def _skip_body(self, head: Any) -> bool:
        """Drop the body of a request answered early if all of it is here; True if it was."""
        buf = self.buf
        if head.chunked:
            try:
                end = ChunkedReader().feed(buf)
            except HTTPError:
                return False
            if end < 0:
                return False
            del buf[:end]
            return True
        n = head.content_length or 0
        if len(buf) < n:
            return False
        del buf[:n]
        return True

    def _too_large(self) -> ApiResponse:
        return fail(413, f"Request body larger than {API_MAX_BODY_SIZE} bytes")

    def _run(self) -> None:
        """Run the handler of the request whose body is complete, eagerly."""
        prepared = self.prepared
        body = bytes(self.body or b"")
        self.prepared = None
        self.body = None
        self.chunks = None
        self.dechunk = None
        self.state = _HEAD
        self._cancel_timer()
        coro = prepared.run(body)
        try:
            waiting = coro.send(None)
        except StopIteration as done:
            self._respond(done.value)
            return
        except Exception as e:  # noqa: BLE001 - Prepared.run catches store errors; a bug of ours
            self._handler_failed(e)
            return
        # it suspended (a store doing real I/O): a Task drives the rest
        self.task = self.loop.create_task(_finish(_Resume(coro, waiting)))
        self.task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Task) -> None:
        if task is not self.task:
            return
        self.task = None
        if self.closed or task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._handler_failed(exc)
        else:
            self._respond(task.result())
        if not self.closed and not self.lingering and self.request_started:
            self._process()  # a pipelined request is waiting in the buffer

    def _handler_failed(self, exc: BaseException) -> None:
        log.error("Error in handler for %s %s: %s", self.method, self.log_path, exc, exc_info=exc)
        self._respond(fail(500, "Internal Server Error"))

    def _respond(self, response: ApiResponse) -> None:
        self._send(response, close=self.close_after_response)
        self._next_cycle()

    # --- responses ---------------------------------------------------------
    def _respond_early(self, response: ApiResponse, complete: bool) -> None:
        """Answer before (all of) the body was read; keep the connection only if it had ended."""
        self.prepared = None
        self.body = None
        self.chunks = None
        self.dechunk = None
        self.state = _HEAD
        self._send(response, close=not complete or self.close_after_response)
        if complete:
            self._next_cycle()
        else:
            self._close(linger=True)

    def _send(self, response: ApiResponse, close: bool) -> None:
        status = response.status
        body = response.body if self.method != "HEAD" else b""
        head = status_line(status) + b"date: " + date_header()[6:]  # (h11's lower-case name)
        if response.content_type:
            head += b"content-type: " + response.content_type.encode() + b"\r\n"
        if response.extra_headers:
            head += response.extra_headers
        if status != 204 and status >= 200:
            head += b"content-length: %d\r\n" % len(body)
        if close:
            head += _CLOSE
        elif not self.keep_alive:
            head += _CLIENT_CLOSE
        else:
            head += _KEEP_ALIVE
        if len(body) < _SEPARATE_WRITE:
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))
        self.app.metrics.requests_api[status] += 1
        log.log(_log_level(status), "%s %s %s %s", status, self.method, self.log_path,
                response.log_msg)

    def _bad_request(self, status: int, message: str) -> None:
        self.method = self.method or "-"
        self.keep_alive = False
        try:
            self._send(fail(status, f"Bad request: {message}"), close=True)
        except Exception:  # noqa: BLE001 - best effort on a broken connection
            pass
        self._close(linger=True)

    def _next_cycle(self) -> None:
        """After a complete exchange: keep-alive or close (the caller processes what waits)."""
        if self.closed:
            return
        if not self.keep_alive or self.close_after_response \
                or getattr(self.app, "shutting_down", False):
            self._close()
            return
        self.method = ""
        self.log_path = ""
        self.served = True
        self.request_started = bool(self.buf) or self.eof
        self._arm(self.header_timeout if self.request_started else KEEP_ALIVE_S)
        self.gate.release(QUEUED)

    # --- closing and timers ------------------------------------------------
    def _close(self, linger: bool = False) -> None:
        if self.closed:
            return
        transport = self.transport
        if linger and not self.lingering and not self.eof and transport.can_write_eof():
            self.lingering = True
            self.buf.clear()
            self.gate.release_all()  # what still comes is read and dropped
            try:
                transport.write_eof()
            except (OSError, RuntimeError):
                pass
            self._arm(LINGER_S)
            return
        self.closed = True
        self._drop_timer()
        transport.close()

    # The connection's one deadline (proxy/deadline.py: moving it is a float write,
    # it shares the loop's timer wheel); each request moves it twice (header timeout, then
    # keep-alive), so it must be cheap to move.
    def _arm(self, seconds: float) -> None:
        self.deadline.set(seconds)

    def _cancel_timer(self) -> None:
        self.deadline.clear()

    def _drop_timer(self) -> None:
        self.deadline.cancel()

    def _on_timeout(self) -> None:
        if self.task is not None or self.closed:
            return
        if not self.lingering:
            idle = self.served and not self.request_started and self.prepared is None
            self.app.metrics.timeouts["api_keep_alive" if idle else "api_header"] += 1
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
