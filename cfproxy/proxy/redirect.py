"""The HTTP -> HTTPS redirect listener (`--redirect-port`, `--redirect-to`; reference 1.6).

    make_redirect_protocol_factory(app)   -> protocol factory for loop.create_server
    redirect_port(config) -> str | int     the P put into Location (and the start-up log line)
    redirect_location(host, target, port) -> bytes | None

Every request, any method and path: `301`, `Location: https://<host-without-port>[:P]
<raw request-target>`, empty body. P is `--redirect-to` kept as the *string* given, else
the public port as a number; `:P` is omitted only when P is the number 443 (so
`--redirect-to 443` still yields `:443`, quirk Q18, replicated). No Host header ->
`400` with CHP's text (no Content-Type).

Where we do better than CHP (which builds the URL by string concatenation):
- HTTP/1.1 without Host gets CHP's 400 text too (Node answers a bare 400);
- a bracketed IPv6 Host keeps its brackets (`[::1]:80` -> `https://[::1]:P`, CHP: `https://[:P`);
- an absolute-form target (`GET http://h/p?q`) redirects to its path and query, and
  `OPTIONS *` to `/`, instead of gluing the whole URL after the port;
- an empty Host is a 400, not `https://:P/...`.

Whether the listener is started at all (not with --socket, not when --port is 80, only with
--ssl-key/--ssl-cert) is decided by the CLI and server.py, which log
`Added HTTP to HTTPS redirection from <redirect-port> to <P>` once it listens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, MutableMapping
from typing import Any

import h11

from cfproxy.config import Config
from cfproxy.http.small_server import Reply, SmallHTTPProtocol


def redirect_port(config: Config) -> str | int:
    """CHP's `options.redirectTo ? options.redirectTo : listen.port` (a string or a number)."""
    return config.redirect_to if config.redirect_to else config.port


def _host_without_port(host: bytes) -> bytes:
    host = host.strip()
    if host.startswith(b"["):  # [v6]:port
        end = host.find(b"]")
        return host[: end + 1] if end != -1 else host
    return host.split(b":", 1)[0]


def _path_of(target: bytes) -> bytes:
    if target.startswith(b"/"):
        return target
    if target == b"*":
        return b"/"
    # absolute-form: scheme://authority/path?query -> /path?query
    scheme_end = target.find(b"://")
    if scheme_end != -1:
        rest = target[scheme_end + 3:]
        cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i != -1), default=-1)
        if cut == -1:
            return b"/"
        path = rest[cut:]
        return path if path.startswith(b"/") else b"/" + path
    return b"/" + target


def redirect_location(host: bytes, target: bytes, port: str | int) -> bytes | None:
    """The Location for a request with this Host and raw target; None = no usable host."""
    name = _host_without_port(host)
    if not name:
        return None
    if port != 443:  # the number 443 only: "443" from --redirect-to keeps ":443" (Q18)
        name += b":" + str(port).encode()
    return b"https://" + name + _path_of(target)


class RedirectProtocol(SmallHTTPProtocol):
    timeout_prefix = "redirect"

    def __init__(self, port: str | int, timeouts: MutableMapping[str, int] | None = None) -> None:
        super().__init__(timeouts)
        self.port = port
        self.no_host = (
            f"This server is HTTPS-only on port {port}, but an HTTP request was made and the "
            "host could not be determined from the request."
        ).encode()

    def handle(self, request: h11.Request) -> Reply:
        host = None
        for name, value in request.headers:
            if name == b"host":
                host = value
                break
        location = None if host is None else redirect_location(host, request.target, self.port)
        if location is None:
            return 400, [], self.no_host
        return 301, [(b"Location", location)], b""

    def bad_request(self, error: h11.RemoteProtocolError) -> Reply:
        if "host" in str(error).lower():
            return 400, [], self.no_host
        return super().bad_request(error)


def make_redirect_protocol_factory(app: Any) -> Callable[[], asyncio.Protocol]:
    """Zero-arg protocol factory for the `--redirect-port` listener."""
    port = redirect_port(app.config)
    timeouts = app.metrics.timeouts

    def factory() -> asyncio.Protocol:
        return RedirectProtocol(port, timeouts)

    return factory
