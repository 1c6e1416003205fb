"""Tunnels: upgraded connections (WebSocket or any other protocol) as raw byte pipes.

Owns everything that happens after the target answered `101 Switching Protocols`
and `client.py` wrote that head to the client. `open_tunnel()` takes both
transports over (`transport.set_protocol`) and from then on:

- **Bytes in, bytes out.** Each end's `data_received` bytes go straight to the
  other transport's `write` -- the very `bytes` object, no copy, no join, and no
  WebSocket frame parsing (wsproto is for test peers only).
- **Backpressure both ways.** When one transport's write buffer passes its high
  water mark (`pause_writing` on that end), reading stops on the *other* transport;
  `resume_writing` resumes it. Each end only ever pauses its peer, so the two
  directions are independent and memory per tunnel stays bounded (about two write
  buffers' high water marks, 64 KiB each by default, plus the kernel's buffers).
- **Close and half-close.** FIN on one side -> `write_eof()` on the other, once
  its pending bytes are flushed (half-close; TLS transports cannot half-close, so
  the other side is closed instead). When both directions saw EOF, or either
  transport is lost (close, reset, error), the other transport is closed
  gracefully (pending bytes flushed); if that flush does not finish within
  `LINGER_SECONDS` (a peer that stopped reading), it is aborted, so no file
  descriptor outlives its tunnel.
- **Activity (quirk Q16, reference 4.10 item 3).** Only client->target bytes move
  `route.last_activity`: one float written into the Route per `data_received`
  chunk (no store call, no I/O; the API renders it when asked). Target->client
  traffic (server pushes, pongs) and the handshake never do. Bytes of the
  client's first frame that arrived together with the request head (`to_upstream`)
  count like any other client bytes. A route replaced under the same prefix
  while the tunnel is open gets the activity from then on (CHP updates by prefix).
- **Timeouts.** None. Reference 4.5/4.7: CHP sets the client socket timeout of an
  upgraded connection to 0, so `--timeout` never closes an idle WebSocket (issue 4
  says "`--timeout` applies to idle tunnels as in CHP", i.e. not at all). Jupyter
  kernels sit idle for hours; dead peers are found by TCP keep-alive, which is
  switched on for both sockets here (as CHP does).
- **Bookkeeping.** Every live tunnel is in `app.tunnels` until both transports
  are gone; `Tunnel.close()` closes it (graceful shutdown). `app.metrics.bytes_in`
  / `bytes_out` count client->target / target->client bytes.

What this module must not do: parse or buffer frames, await anything, log per chunk.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from time import time as _time
from typing import Any

from cfproxy.log import log

# How long a closing transport may take to flush what is still buffered for a
# peer that stopped reading, before it is aborted.
LINGER_SECONDS = 10.0
# How often a tunnel checks that its Route object is still the one stored at its
# prefix (a re-POST replaces the Route object).
ROUTE_RECHECK_SECONDS = 1.0


class _End(asyncio.Protocol):
    """One side of a tunnel: the protocol of one transport, writing into `peer`."""

    __slots__ = ("tunnel", "transport", "peer", "metrics", "eof", "lost")

    def __init__(self, tunnel: Tunnel, transport: Any, peer: Any, metrics: Any) -> None:
        self.tunnel = tunnel
        self.transport = transport  # the transport this protocol reads from
        self.peer = peer  # the other transport: where our bytes go
        self.metrics = metrics
        self.eof = False  # this side sent FIN
        self.lost = False  # connection_lost seen for this side

    # Flow control: our transport's write buffer is full -> stop reading the peer.
    def pause_writing(self) -> None:
        self.peer.pause_reading()

    def resume_writing(self) -> None:
        self.peer.resume_reading()

    def eof_received(self) -> bool:
        return self.tunnel._eof(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel._lost(self, exc)


class _ClientEnd(_End):
    """Reads the client; every chunk is activity on the route (Q16)."""

    __slots__ = ("route", "table", "recheck_at")

    def __init__(self, tunnel: Tunnel, transport: Any, peer: Any, metrics: Any, route: Any,
                 table: Any) -> None:
        super().__init__(tunnel, transport, peer, metrics)
        self.route = route
        self.table = table
        self.recheck_at = _time() + ROUTE_RECHECK_SECONDS

    def data_received(self, data: bytes) -> None:
        self.peer.write(data)
        now = _time()
        self.route.last_activity = now
        if now >= self.recheck_at:
            self._recheck_route(now)
        self.metrics.bytes_in += len(data)

    def _recheck_route(self, now: float) -> None:
        """Follow a route that was replaced (re-POSTed) under the same prefix.

        CHP updates activity by prefix through the store, so a replaced route
        keeps receiving the activity of tunnels opened before the replacement; a
        removed one receives none. Checked at most once per ROUTE_RECHECK_SECONDS.
        """
        self.recheck_at = now + ROUTE_RECHECK_SECONDS
        if self.table is None:
            return
        current = self.table.get(self.route.prefix)
        if current is not None and current is not self.route:
            self.route = current
            current.last_activity = now


class _UpstreamEnd(_End):
    """Reads the target; its traffic never moves last_activity."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        self.peer.write(data)
        self.metrics.bytes_out += len(data)


class Tunnel:
    """A client transport and an upstream transport spliced together."""

    __slots__ = ("app", "route", "client", "upstream", "client_end", "upstream_end",
                 "_linger", "closed", "__weakref__")

    def __init__(self, app: Any, route: Any, client_transport: Any, upstream_transport: Any) -> None:
        self.app = app
        self.route = route
        self.client = client_transport
        self.upstream = upstream_transport
        metrics = app.metrics
        self.client_end = _ClientEnd(self, client_transport, upstream_transport, metrics, route,
                                     getattr(app, "table", None))
        self.upstream_end = _UpstreamEnd(self, upstream_transport, client_transport, metrics)
        self._linger: asyncio.TimerHandle | None = None
        self.closed = False  # close() was called or one side is gone: no way back

    # --- public -------------------------------------------------------------
    def close(self) -> None:
        """Close both sides (pending bytes are flushed, then the sockets close)."""
        self._close_both()

    def abort(self) -> None:
        """Drop both sides at once (no flush)."""
        self.closed = True
        for t in (self.client, self.upstream):
            t.abort()

    @property
    def done(self) -> bool:
        """Both transports are gone."""
        return self.client_end.lost and self.upstream_end.lost

    def __repr__(self) -> str:
        return (f"<Tunnel {getattr(self.route, 'prefix', '?')} closed={self.closed}"
                f" client_lost={self.client_end.lost} upstream_lost={self.upstream_end.lost}>")

    # --- events from the ends ----------------------------------------------
    def _eof(self, end: _End) -> bool:
        """FIN from `end`: half-close the peer, or close both when both are done."""
        end.eof = True
        other = self.upstream_end if end is self.client_end else self.client_end
        if other.eof or self.closed:
            self._close_both()
            return False
        peer = end.peer
        if not peer.is_closing():
            if peer.can_write_eof():
                # sent once the peer's pending bytes are flushed
                peer.write_eof()
                # Keep our transport open so the other direction still flows; a TLS
                # transport closes after EOF whatever we answer (and warns on True).
                return end.transport.can_write_eof()
            self._close_both()  # TLS cannot half-close
        return False

    def _lost(self, end: _End, exc: Exception | None) -> None:
        end.lost = True
        if self.done:
            self._finish()
            return
        # One side is gone (close, reset or error): the other follows promptly,
        # after flushing what was already written to it.
        self._close_both()

    # --- internals ----------------------------------------------------------
    def _close_both(self) -> None:
        self.closed = True
        for t in (self.client, self.upstream):
            if not t.is_closing():
                t.close()
        if self._linger is None and not self.done:
            loop = asyncio.get_running_loop()
            self._linger = loop.call_later(LINGER_SECONDS, self._abort_stragglers)

    def _abort_stragglers(self) -> None:
        self._linger = None
        if not self.client_end.lost:
            self.client.abort()
        if not self.upstream_end.lost:
            self.upstream.abort()

    def _finish(self) -> None:
        self.closed = True
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self.app.tunnels.discard(self)


def _keepalive(transport: Any) -> None:
    """TCP keep-alive on (CHP does it for both ws sockets): finds dead idle peers."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def _over_high_water(transport: Any) -> bool:
    try:
        return transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]
    except (AttributeError, NotImplementedError):
        return False


def open_tunnel(app: Any, route: Any, client_transport: Any, upstream_transport: Any,
                to_upstream: bytes = b"", to_client: bytes = b"") -> Tunnel:
    """Splice `client_transport` and `upstream_transport` into a raw byte tunnel.

    Call right after the 101 head was written to the client. `to_upstream` are
    client bytes that arrived after the request head, `to_client` upstream bytes
    that arrived after the 101 head; both are forwarded first. The transports'
    previous protocols get no further callbacks (they must have cancelled their
    own timers); the client's old protocol is removed from `app.connections`,
    because its `connection_lost` will never be called. Both transports are made
    to read (the HTTP side may have paused them), unless the opposite write buffer
    is already full. Returns the Tunnel, registered in `app.tunnels` while alive.
    """
    tunnel = Tunnel(app, route, client_transport, upstream_transport)
    app.connections.discard(client_transport.get_protocol())
    app.tunnels.add(tunnel)
    client_transport.set_protocol(tunnel.client_end)
    upstream_transport.set_protocol(tunnel.upstream_end)
    if client_transport.is_closing() or upstream_transport.is_closing():
        # One side is already going away. Whether its connection_lost already went
        # to the old protocol is unknown, so count it as gone now (a later callback
        # is harmless); deliver what we can to the other side and close it.
        for end in (tunnel.client_end, tunnel.upstream_end):
            if end.transport.is_closing():
                end.lost = True
        if to_client and not client_transport.is_closing():
            client_transport.write(to_client)
        if to_upstream and not upstream_transport.is_closing():
            upstream_transport.write(to_upstream)
        if tunnel.done:
            tunnel._finish()
        else:
            tunnel._close_both()
        return tunnel
    _keepalive(client_transport)
    _keepalive(upstream_transport)
    if to_upstream:
        upstream_transport.write(to_upstream)
        route.last_activity = _time()
        app.metrics.bytes_in += len(to_upstream)
    if to_client:
        client_transport.write(to_client)
        app.metrics.bytes_out += len(to_client)
    # Read each side only while the opposite write buffer has room; otherwise the
    # opposite end's resume_writing (its transport is flagged paused) resumes it.
    if _over_high_water(upstream_transport):
        client_transport.pause_reading()
    else:
        client_transport.resume_reading()
    if _over_high_water(client_transport):
        upstream_transport.pause_reading()
    else:
        upstream_transport.resume_reading()
    if log.isEnabledFor(logging.DEBUG):
        log.debug("Tunnel open %s", getattr(route, "prefix", route))
    return tunnel
