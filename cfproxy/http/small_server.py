"""The small HTTP/1.1 server the metrics and redirect listeners share (h11 underneath).

    class Hello(SmallHTTPProtocol):
        def handle(self, request: h11.Request) -> Reply:
            return 200, [(b"Content-Type", b"text/plain")], b"hello"

A subclass says what each request gets; this module owns the connection: keep-alive,
pipelined requests answered in order, `100 Continue`, bodies read and dropped, `Date` and
`Content-Length` on every answer, a malformed request answered with `bad_request()`'s reply
and closed. It is not for the hot path (h11 costs ~25 us a request); these listeners see a
scrape every few seconds or a browser's first plain-HTTP request.

What it guarantees whatever the peer does:
- backpressure (DESIGN rule 10): while the connection's write buffer is above its
  high-water mark, reading stops and buffered requests wait (`WriteFlow`); below it,
  reading resumes and the buffered requests are answered. A client that pipelines requests
  and never reads costs one write buffer;
- timeouts: a connection idle between requests is closed after `idle_timeout` (5 s,
  Node's keepAliveTimeout, as CHP's metrics and redirect servers), a request that has not
  arrived in full after `request_timeout` (60 s, Node's headersTimeout) is closed and
  counted once in `timeouts["<timeout_prefix>_request"]` (the metrics' counter by kind);
- a request head is at most 16 KiB (h11 answers 431-style errors as 400 here).
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping

import h11

from cfproxy.http.status import date_header, reason, status_line
from cfproxy.log import log
from cfproxy.proxy.deadline import Deadline
from cfproxy.proxy.flow import ReadGate, WriteFlow

Reply = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, extra headers, body

MAX_HEAD = 16 * 1024


class SmallHTTPProtocol(asyncio.Protocol):
    """A minimal HTTP/1.1 server connection over h11 for low-traffic listeners.

    Subclasses implement `handle(request) -> (status, headers, body)`; it is called once
    the whole request (body discarded) has arrived. `timeouts`, when given, is the counter
    mapping (kind -> count) bumped as `"<timeout_prefix>_request"` when a request is cut.
    """

    idle_timeout = 5.0  # Node's keepAliveTimeout default, as CHP's metrics server
    request_timeout = 60.0  # Node's headersTimeout default
    timeout_prefix = "small"  # the label prefix of this listener's timeouts

    def __init__(self, timeouts: MutableMapping[str, int] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.flow: WriteFlow | None = None  # made with the transport
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.timeouts = timeouts
        self._request: h11.Request | None = None
        self._deadline: Deadline | None = None  # idle or request timeout (made with the transport)
        self._in_request = False  # a request has started arriving (request_timeout runs)

    # subclass hooks ----------------------------------------------------------
    def handle(self, request: h11.Request) -> Reply:
        raise NotImplementedError

    def bad_request(self, error: h11.RemoteProtocolError) -> Reply:
        return 400, [], b"Bad Request"

    # asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flow = WriteFlow(ReadGate(self.transport), self._process)
        self._deadline = Deadline(asyncio.get_running_loop(), self._timed_out)
        self._arm(self.idle_timeout)

    def data_received(self, data: bytes) -> None:
        if not self._in_request:
            self._in_request = True
            self._arm(self.request_timeout)
        self.conn.receive_data(data)
        self._process()

    def eof_received(self) -> bool | None:
        self.conn.receive_data(b"")
        self._process()
        return None  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.cancel()
        self.transport = None

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()  # then _process() answers what waits

    # internals ------------------------------------------------------------------
    def _arm(self, seconds: float) -> None:
        self._deadline.set(seconds)

    def _timed_out(self) -> None:
        if self.transport is None:
            return
        if self._in_request and self.timeouts is not None:
            self.timeouts[self.timeout_prefix + "_request"] += 1
        self.transport.close()
        self.transport = None

    def _process(self) -> None:
        while self.transport is not None and not self.flow.blocked:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as e:
                self._send_error(e)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._request = event
                if self.conn.they_are_waiting_for_100_continue:
                    self.transport.write(self.conn.send(
                        h11.InformationalResponse(status_code=100, headers=[])) or b"")
            elif isinstance(event, h11.EndOfMessage):
                self._respond()
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.close()
                self.transport = None
                return
            # h11.Data: request bodies are read and dropped

    def _respond(self) -> None:
        request = self._request
        assert request is not None and self.transport is not None
        try:
            status, headers, body = self.handle(request)
        except Exception:  # noqa: BLE001 - one bad request must not kill the connection silently
            log.exception("Error answering %s %s", request.method.decode(), request.target)
            status, headers, body = 500, [], b"Internal Server Error"
        head = h11.Response(status_code=status, reason=reason(status).encode(), headers=[
            *headers,
            (b"Date", date_header()[6:-2]),
            (b"Content-Length", str(len(body)).encode()),
        ])
        out = [self.conn.send(head)]
        if body and request.method != b"HEAD":
            out.append(self.conn.send(h11.Data(data=body)))
        out.append(self.conn.send(h11.EndOfMessage()))
        self._request = None
        self.transport.write(b"".join(x for x in out if x))  # may pause: flow.blocked
        if self.conn.our_state is h11.MUST_CLOSE:
            self.transport.close()
            self.transport = None
            return
        self.conn.start_next_cycle()
        self._in_request = bool(self.conn.trailing_data[0])
        self._arm(self.request_timeout if self._in_request else self.idle_timeout)

    def _send_error(self, error: h11.RemoteProtocolError) -> None:
        assert self.transport is not None
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            status, headers, body = self.bad_request(error)
            head = [status_line(status)]
            head += [k + b": " + v + b"\r\n" for k, v in headers]
            head.append(date_header())
            head.append(b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
            self.transport.write(b"".join(head) + body)
        self.transport.close()
        self.transport = None
