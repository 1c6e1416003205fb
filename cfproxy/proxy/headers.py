"""Header rewriting between client and target (reference 4.2, 4.3, 4.6; quirks Q15, Q17).

Owns exactly what the proxy adds, replaces or removes in a head; every other header line
is forwarded as received (bytes in, bytes out):

- request heads to the target: the request line (method, forwarded path, always HTTP/1.1),
  X-Forwarded-For/-Port/-Proto/-Host (4.2, Q17 fixed: no XFF for Unix-socket clients, the
  port of an IPv6 Host parsed properly), `--custom-header`s replacing same-named headers in
  place, `--change-origin` Host, `Host` for clients that sent none, `Connection: keep-alive`
  when the client sent no Connection header, the client's `Connection` replaced by
  `Connection: keep-alive` when it ends the client hop (`close`, or HTTP/1.0 without
  keep-alive: quirk Q23, the upstream connection stays pooled), `content-length: 0` for DELETE/OPTIONS without
  a body, `Trailer` dropped (the only hop-by-hop header CHP strips, Q15).
- response heads to the client: `Connection` (4.3), `Date` when absent, re-framing
  (Transfer-Encoding added or removed), Location rewriting (4.6).

It does no I/O and keeps no per-request state (only a bounded cache of the lines it
appends, keyed by everything they depend on). Hot-path note: a request with none of the
headers we touch (the common case) is forwarded by slicing its received head bytes and
appending our lines, which measured ~3x faster than rebuilding every line from the parsed
list (1.1 µs vs 3.4 µs for a 10-header request on the reference machine).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from cfproxy.config import Config
from cfproxy.http import fastpath
from cfproxy.http.fastpath import TAIL_CACHE_SIZE, BoundedCache
from cfproxy.http.status import date_header
from cfproxy.routing.target import Target

_XFF = b"x-forwarded-for"
_XFPORT = b"x-forwarded-port"
_XFPROTO = b"x-forwarded-proto"
_XFHOST = b"x-forwarded-host"
_TRAILER = b"trailer"
_CONNECTION = b"connection"
_HOST = b"host"
_BODYLESS_DEFAULT_CL = (b"DELETE", b"OPTIONS")
_CONNECTION_KEEP_ALIVE = b"Connection: keep-alive\r\n"
_CONNECTION_CLOSE = b"Connection: close\r\n"

def forwarded_port(host: bytes | None, tls: bool) -> bytes:
    """X-Forwarded-Port: the port of the Host header, else 443/80 by the client's scheme.

    CHP takes the first `:(\\d+)` in Host, which gives `1` for `[::1]:9000` (Q17); we parse
    the port after an IPv6 literal's closing bracket instead.
    """
    if host:
        if host[:1] == b"[":
            end = host.find(b"]")
            rest = host[end + 1:] if end >= 0 else b""
            if rest[:1] == b":" and rest[1:].isdigit():
                return rest[1:]
        else:
            i = host.find(b":")
            if i >= 0:
                j = i + 1
                while j < len(host) and 48 <= host[j] <= 57:
                    j += 1
                if j > i + 1:
                    return host[i + 1:j]
    return b"443" if tls else b"80"


def host_routing_name(host: bytes | None) -> str:
    """The host part of the routing key: Host without port, lower-cased; `[v6]` kept whole (Q10)."""
    if not host:
        return "undefined"  # CHP's key for a missing Host (HTTP/1.0), kept for parity
    if host[:1] == b"[":
        end = host.find(b"]")
        name = host[: end + 1] if end >= 0 else host
    else:
        i = host.find(b":")
        name = host if i < 0 else host[:i]
    return name.decode("latin-1").lower()


def _head_block(raw: bytes) -> bytes:
    """The header lines of a received head (each ending in CRLF), without the request line."""
    start = 0
    while raw.startswith(b"\r\n", start):  # leading empty lines RFC 9112 2.2 lets through
        start += 2
    i = raw.index(b"\r\n", start)
    return raw[i + 2:-2]


class HeaderRewriter:
    """Per-app header rules, precomputed from the Config once."""

    def __init__(self, config: Config) -> None:
        self.x_forward = config.x_forward
        self.change_origin = config.change_origin
        self.custom = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in config.custom_headers]
        self.custom_lower = {n.lower(): i for i, (n, _) in enumerate(self.custom)}
        self.auto_rewrite = config.auto_rewrite
        self.protocol_rewrite = config.protocol_rewrite
        self.rewrite_location = bool(config.auto_rewrite or config.protocol_rewrite)
        # Header names whose presence in a request forces the line-by-line path.
        special = {_TRAILER}
        if self.x_forward:
            special |= {_XFF, _XFPORT, _XFPROTO, _XFHOST}
        if self.change_origin:
            special.add(_HOST)
        special |= set(self.custom_lower)
        self.special = frozenset(special)
        # One C-level search over the received head finds any of them (a field name
        # only ever follows CRLF): 0.2 us, against ~1 us for a loop over the parsed
        # field list (measured on a 11-field browser GET).
        self.special_re = re.compile(
            rb"\r\n(?:" + b"|".join(re.escape(n) for n in sorted(special)) + rb"):", re.IGNORECASE)
        # Appended as a block on the fast path; a custom Host loses to --change-origin.
        self.custom_lines = b"".join(n + b": " + v + b"\r\n" for n, v in self.custom
                                     if not (self.change_origin and n.lower() == _HOST))
        self._tails = BoundedCache(TAIL_CACHE_SIZE)  # see request_head

    # --- request -------------------------------------------------------------------------
    def request_head(self, req, path: bytes, target: Target, client_ip: bytes | None,
                     tls: bool, ws: bool) -> bytes:
        """The head to send to the target for `req` (a parser RequestHead)."""
        raw = req.raw
        # Q23: a Connection that ends the client hop is not forwarded (line-by-line path)
        drop_connection = not req.keep_alive and req.connection is not None and not ws
        slow = drop_connection or self.special_re.search(raw) is not None
        host = req.host
        if not slow and not ws and host is not None and fastpath.ENABLED and (
                req.method not in _BODYLESS_DEFAULT_CL or req.content_length is not None
                or req.chunked):
            # Fast path (twin of the `not slow` branch below, switched off with the other
            # fast paths): the common request's head as received plus a tail that depends
            # only on (Host, client address, TLS, Connection present), built once per such
            # combination (1.3 us -> 0.3 us per small GET).
            key = (host, client_ip, tls, req.connection is None)
            tail = self._tails.get(key)
            if tail is None:
                tail = self._tail(host, client_ip, tls, req.connection is None)
                self._tails.put(key, tail)
            if path == req.target and req.version == 11:
                return raw[:-2] + tail  # the request line is forwarded unchanged
            return b"".join((req.method, b" ", path, b" HTTP/1.1\r\n", _head_block(raw), tail))
        xf: list[bytes] = []
        if self.x_forward:
            proto = (b"wss" if tls else b"ws") if ws else (b"https" if tls else b"http")
            port = forwarded_port(host, tls)
        if not slow:
            if path == req.target and req.version == 11:
                out = [raw[:-2]]  # the request line is forwarded unchanged
            else:
                out = [req.method, b" ", path, b" HTTP/1.1\r\n", _head_block(raw)]
            if self.x_forward:
                if client_ip is not None:
                    out += (b"x-forwarded-for: ", client_ip, b"\r\n")
                out += (b"x-forwarded-port: ", port, b"\r\nx-forwarded-proto: ", proto, b"\r\n")
                if not ws:
                    out += (b"x-forwarded-host: ", host or b"", b"\r\n")
            if self.custom_lines:
                out.append(self.custom_lines)
        else:
            out = [req.method, b" ", path, b" HTTP/1.1\r\n"]
            custom_lower = self.custom_lower
            custom_used = set()
            seen = set()
            for name, value in req.headers:
                ln = name.lower()
                if ln in custom_lower:
                    if ln in custom_used:
                        continue  # a second same-named client header: the custom one replaced it
                    custom_used.add(ln)
                    cn, cv = self.custom[custom_lower[ln]]
                    if ln == _HOST and self.change_origin:
                        cv = target.host_header.encode("latin-1")
                    out += (cn, b": ", cv, b"\r\n")
                    continue
                if ln == _TRAILER or (drop_connection and ln == _CONNECTION):
                    continue
                if self.x_forward:
                    if ln == _XFF:
                        seen.add(ln)
                        if client_ip is not None:
                            value = value + b"," + client_ip
                    elif ln == _XFPORT:
                        seen.add(ln)
                        value = value + b"," + port
                    elif ln == _XFPROTO:
                        seen.add(ln)
                        value = value + b"," + proto
                    elif ln == _XFHOST:
                        seen.add(ln)
                if ln == _HOST and self.change_origin:
                    value = target.host_header.encode("latin-1")
                out += (name, b": ", value, b"\r\n")
            if self.x_forward:
                if _XFF not in seen and client_ip is not None and _XFF not in custom_lower:
                    xf += (b"x-forwarded-for: ", client_ip, b"\r\n")
                if _XFPORT not in seen and _XFPORT not in custom_lower:
                    xf += (b"x-forwarded-port: ", port, b"\r\n")
                if _XFPROTO not in seen and _XFPROTO not in custom_lower:
                    xf += (b"x-forwarded-proto: ", proto, b"\r\n")
                if not ws and _XFHOST not in seen and _XFHOST not in custom_lower:
                    xf += (b"x-forwarded-host: ", host or b"", b"\r\n")
                out += xf
            for n, v in self.custom:
                if n.lower() not in custom_used:
                    if n.lower() == _HOST and self.change_origin:
                        continue  # the target's Host is added below
                    out += (n, b": ", v, b"\r\n")
        if host is None and not (self.custom and _HOST in self.custom_lower and not self.change_origin):
            out += (b"Host: ", target.host_header.encode("latin-1"), b"\r\n")
        if (req.connection is None or drop_connection) and not ws:
            out.append(b"Connection: keep-alive\r\n")
        if req.content_length is None and not req.chunked and req.method in _BODYLESS_DEFAULT_CL:
            out.append(b"content-length: 0\r\n")
        out.append(b"\r\n")
        return b"".join(out)

    def _tail(self, host: bytes, client_ip: bytes | None, tls: bool, add_connection: bool) -> bytes:
        """What the common request's head gets after its own field lines (see request_head)."""
        out = []
        if self.x_forward:
            if client_ip is not None:
                out += (b"x-forwarded-for: ", client_ip, b"\r\n")
            out += (b"x-forwarded-port: ", forwarded_port(host, tls),
                    b"\r\nx-forwarded-proto: ", b"https" if tls else b"http",
                    b"\r\nx-forwarded-host: ", host, b"\r\n")
        out.append(self.custom_lines)
        if add_connection:
            out.append(b"Connection: keep-alive\r\n")
        out.append(b"\r\n")
        return b"".join(out)

    # --- response ------------------------------------------------------------------------
    def response_head(self, resp, req, no_body: bool, target: Target) -> tuple[bytes, int, bool]:
        """(head bytes for the client, body mode, client connection stays open) per 4.3.

        The status line and every header line are relayed as received; we add `Date`
        when absent and `Connection` when absent (the client's own value, else
        keep-alive for HTTP/1.1 / close for HTTP/1.0), and re-frame: a target body
        without length becomes chunked for HTTP/1.1 clients; a chunked body is decoded
        for HTTP/1.0 clients (close-delimited).
        """
        client11 = req.version == 11
        if no_body:
            mode = BODY_NONE
        elif resp.chunked:
            mode = BODY_CHUNKED if client11 else BODY_DECHUNK
        elif resp.content_length is not None:
            mode = BODY_LENGTH
        else:
            mode = BODY_RECHUNK if client11 else BODY_CLOSE
        conn = resp.connection
        add_conn = None
        # Q23: the client's hop ends (its Connection: close was not forwarded) while the
        # target keeps its connection: the client is told close, not the target's value
        replace_conn = conn is not None and not req.keep_alive and not has_close(conn)
        if replace_conn:
            conn = None
            add_conn = _CONNECTION_CLOSE
            keep_alive = False
        elif conn is None:
            conn = req.connection
            if conn is None:
                if client11:
                    add_conn = _CONNECTION_KEEP_ALIVE
                    keep_alive = req.keep_alive and mode < BODY_DECHUNK
                else:
                    add_conn = _CONNECTION_CLOSE
                    keep_alive = False
            else:
                add_conn = b"Connection: " + conn + b"\r\n"
        if not replace_conn and (add_conn is None or conn is not None):
            keep_alive = req.keep_alive and mode < BODY_DECHUNK and not has_close(conn)
        rewrite = self.rewrite_location and resp.status in REDIRECT_STATUSES
        raw = resp.raw
        if resp.version != 11:
            # Node writes its own status line: always HTTP/1.1, whatever the target spoke
            raw = b"HTTP/1.1" + raw[8:]
        if mode <= BODY_CHUNKED and not rewrite and not replace_conn:
            # the common case: the head as received plus what is missing (one join)
            if resp.date is not None:
                if add_conn is None:
                    return raw, mode, keep_alive
                return b"".join((raw[:-2], add_conn, b"\r\n")), mode, keep_alive
            return (b"".join((raw[:-2], date_header(), add_conn or b"", b"\r\n")), mode,
                    keep_alive)
        else:
            out = [raw[: raw.index(b"\r\n") + 2]]
            for name, value in resp.headers:
                ln = name.lower()
                if ln == b"transfer-encoding" and mode == BODY_DECHUNK:
                    continue
                if replace_conn and ln == _CONNECTION:
                    continue
                if rewrite and ln == b"location":
                    value = self.location(value, target, req.host)
                out += (name, b": ", value, b"\r\n")
            if mode == BODY_RECHUNK:
                out.append(b"Transfer-Encoding: chunked\r\n")
        if resp.date is None:
            out.append(date_header())
        if add_conn is not None:
            out.append(add_conn)
        out.append(b"\r\n")
        return b"".join(out), mode, keep_alive

    def location(self, value: bytes, target: Target, client_host: bytes | None) -> bytes:
        """Location rewriting per 4.6 (caller checked the status and that a rewrite flag is on)."""
        try:
            loc = urlsplit(value.decode("latin-1"))
        except ValueError:
            return value
        if not loc.scheme or not loc.netloc:
            return value  # relative Locations never match
        if _url_host(loc.scheme, loc.netloc) != _target_host(target):
            return value
        scheme, netloc = loc.scheme, loc.netloc
        if self.auto_rewrite:
            netloc = (client_host or b"").decode("latin-1")
        if self.protocol_rewrite:
            scheme = self.protocol_rewrite.rstrip(":")
        out = f"{scheme}://{netloc}{loc.path}"
        if loc.query:
            out += "?" + loc.query
        if loc.fragment:
            out += "#" + loc.fragment
        return out.encode("latin-1")


_DEFAULT_PORT = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


def _url_host(scheme: str, netloc: str) -> str:
    """WHATWG URL `.host` of an absolute URL: lower-case host, port only when not the default."""
    netloc = netloc.rpartition("@")[2].lower()
    if netloc.startswith("["):
        end = netloc.find("]")
        name, rest = netloc[: end + 1], netloc[end + 1:]
    else:
        name, _, port = netloc.partition(":")
        rest = ":" + port if port else ""
    port = rest[1:]
    if not port or port == _DEFAULT_PORT.get(scheme.lower()):
        return name
    return f"{name}:{int(port) if port.isdigit() else port}"


def _target_host(target: Target) -> str:
    if target.scheme == "unix":
        return "localhost"
    return target.host_header.lower()


REDIRECT_STATUSES = frozenset((201, 301, 302, 307, 308))

# Response body modes for the client (ordered: modes >= BODY_DECHUNK end with a close).
BODY_NONE = 0  # HEAD, 1xx, 204, 304
BODY_LENGTH = 1  # Content-Length, relayed as received
BODY_CHUNKED = 2  # chunked, relayed as received
BODY_RECHUNK = 3  # target body ends at close; HTTP/1.1 client gets it chunked
BODY_DECHUNK = 4  # chunked target body, HTTP/1.0 client: decoded, close-delimited
BODY_CLOSE = 5  # target body ends at close; HTTP/1.0 client: close-delimited too


def has_close(value: bytes) -> bool:
    """Whether a Connection value lists the `close` token."""
    v = value.lower()
    if b"close" not in v:
        return False
    return any(t.strip() == b"close" for t in v.split(b","))
