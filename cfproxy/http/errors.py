"""Proxy-generated error responses: --error-target, --error-path, built-in pages (reference 5).

Owns what a client receives when the proxy itself answers 404/500/503 on the web path:

1. `--error-target`: GET `<base><code>?url=<raw request-target, form-encoded>` to the error
   server (no client headers), then answer with CHP's code, only `Content-Type` and
   `Content-Encoding` copied from the error server, and its body (5.2).
2. `--error-path DIR`: `DIR/<code>.html`, then `DIR/error.html`, as `text/html` (5.3).
3. Default: the built-in pages in `error_pages/` (CHP's own three pages, BSD-3-Clause,
   Project Jupyter) looked up exactly like an --error-path (5.4).
4. Last resort: the reason phrase as the body, no Content-Type (5.5).

This module never touches a client transport: it returns complete response bytes
(`response_bytes`) and the client protocol writes them. The error-target fetch is the one
coroutine on the data path; it only runs on an error, never per successful request.
Websocket errors never come here (they get a raw status line, 4.5).
"""

from __future__ import annotations

import asyncio
import os
from urllib.parse import parse_qsl, quote_plus, urlsplit

from cfproxy.http.chunked import dechunk
from cfproxy.http.status import reason, status_line
from cfproxy.log import debug_enabled, log

BUILTIN_DIR = os.path.join(os.path.dirname(__file__), "error_pages")
ERROR_PAGE_MAX = 4 * 1024 * 1024  # an error page larger than this is cut (not buffered whole)
ERROR_TARGET_TIMEOUT = 30.0  # seconds for the whole error-target exchange


def form_encode(value: str) -> str:
    """application/x-www-form-urlencoded as WHATWG URLSearchParams serialises (5.2)."""
    return quote_plus(value, safe="*").replace("~", "%7E")


def response_bytes(code: int, headers: list[tuple[bytes, bytes]], body: bytes,
                   keep_alive: bool, keep_alive_timeout_s: int, date: bytes) -> bytes:
    """A complete HTTP/1.1 response the proxy generated (Content-Length framed)."""
    out = [status_line(code)]
    for n, v in headers:
        out += (n, b": ", v, b"\r\n")
    out.append(date)
    if keep_alive:
        out.append(b"Connection: keep-alive\r\nKeep-Alive: timeout=%d\r\n" % keep_alive_timeout_s)
    else:
        out.append(b"Connection: close\r\n")
    out.append(b"Content-Length: %d\r\n\r\n" % len(body))
    out.append(body)
    return b"".join(out)


class ErrorPages:
    """Renders proxy-generated errors per the Config; one per App."""

    def __init__(self, config, tls) -> None:
        self.config = config
        self.tls = tls
        target = config.error_target
        if target and not target.endswith("/"):
            target += "/"  # appended to the raw string, as CHP does (5.2)
        self.error_target = target or None
        self.error_path = config.error_path or (None if target else BUILTIN_DIR)

    # --- --error-path and built-in pages -------------------------------------------------
    def local_page(self, code: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """(headers, body) from --error-path or the built-in pages, else the last resort."""
        if self.error_path:
            filename = os.path.join(self.error_path, f"{code}.html")
            if not os.path.exists(filename):
                if debug_enabled():
                    log.debug("No error file %s", filename)
                filename = os.path.join(self.error_path, "error.html")
                if not os.path.exists(filename):
                    log.error("No error file %s", filename)
                    return self.fallback(code)
            try:
                with open(filename, "rb") as f:
                    body = f.read(ERROR_PAGE_MAX)
            except OSError as e:
                log.error("Error reading %s %s", filename, e)
                return self.fallback(code)
            return [(b"Content-Type", b"text/html")], body
        return self.fallback(code)

    @staticmethod
    def fallback(code: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
        return [], reason(code).encode()

    # --- --error-target --------------------------------------------------------------------
    def error_url(self, code: int, raw_target: bytes) -> tuple[str, str]:
        """(url for the log, request path+query) of the error-target request."""
        parts = urlsplit(self.error_target)
        params = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "url"]
        url_value = raw_target.decode("latin-1")
        # URLSearchParams.set keeps the position of the first existing `url`, else appends
        params.append(("url", url_value))
        query = "&".join(form_encode(k) + "=" + form_encode(v) for k, v in params)
        path = (parts.path or "/") + str(code)
        scheme = parts.scheme.replace("http+unix", "http").replace("unix+http", "http")
        host = "localhost" if parts.scheme in ("http+unix", "unix+http") else parts.netloc
        return f"{scheme}://{host}{path}?{query}", f"{path}?{query}"

    async def fetch(self, code: int, raw_target: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """Ask the error target for the page; on any failure log it and use the fallback."""
        from cfproxy.routing.target import parse_target

        url, path_query = self.error_url(code, raw_target)
        if debug_enabled():
            log.debug("Requesting custom error page: %s", url)
        try:
            target = parse_target(self.error_target)
            return await asyncio.wait_for(self._get(target, path_query), ERROR_TARGET_TIMEOUT)
        except Exception as e:  # noqa: BLE001 - any failure falls back, as CHP does
            log.error("Failed to get custom error page: %s", _describe(e))
            return self.fallback(code)

    async def _get(self, target, path_query: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
        from cfproxy.http.parser import parse_response_head

        if target.scheme == "unix":
            reader, writer = await asyncio.open_unix_connection(target.unix_path)
        elif target.tls:
            reader, writer = await asyncio.open_connection(
                target.host, target.port, ssl=self.tls.client_context(),
                server_hostname=target.host)
        else:
            reader, writer = await asyncio.open_connection(target.host, target.port)
        try:
            writer.write(b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                         % (path_query.encode("latin-1"), target.host_header.encode("latin-1")))
            buf = b""
            while True:
                parsed = parse_response_head(buf, 64 * 1024)
                if parsed is not None:
                    head, consumed = parsed
                    if head.status >= 200:
                        break
                    buf = buf[consumed:]
                    continue
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("socket hang up")
                buf += data
            body = buf[consumed:]
            if head.content_length is not None:
                need = min(head.content_length, ERROR_PAGE_MAX) - len(body)
                if need > 0:
                    body += await reader.readexactly(need)
                body = body[: head.content_length]
            else:
                while len(body) < ERROR_PAGE_MAX:
                    data = await reader.read(65536)
                    if not data:
                        break
                    body += data
                    if head.chunked and body.endswith(b"0\r\n\r\n"):
                        break
                if head.chunked:
                    body = dechunk(body)
            headers = [(b"content-type" if n.lower() == b"content-type" else b"content-encoding", v)
                       for n, v in head.headers
                       if n.lower() in (b"content-type", b"content-encoding")]
            return headers, body
        finally:
            writer.close()


def _describe(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return "Error: timeout"
    return f"Error: {e}" if str(e) else f"Error: {type(e).__name__}"
