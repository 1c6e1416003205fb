"""What the proxy writes itself at the start of a response: status lines, reason phrases
and the `Date` header, each in one place; and `HTTPError`, a message refused with the
status to answer it with (raised by the parser and the chunked reader).

Every status line cfproxy writes is `HTTP/1.1 <code> <reason>` (quirk Q24: a line
without its reason phrase is rejected by standard WebSocket clients). `Date` is
formatted at most once per second (formatdate costs ~5 us; the proxy adds Date to
every response that lacks one).
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

_status_lines: dict[int, bytes] = {}


class HTTPError(Exception):
    """A message we refuse to process. ``status`` is the HTTP status to answer
    with (400, 413, 414, 431, 501, 505 for requests; 502 for responses) and
    ``message`` a short human-readable reason for the error body and the log."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"{self.status} {self.message}"


def reason(code: int) -> str:
    """The standard reason phrase of `code` ("Unknown" for codes without one)."""
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"


def status_line(code: int) -> bytes:
    """`HTTP/1.1 <code> <reason>\\r\\n`."""
    line = _status_lines.get(code)
    if line is None:
        line = _status_lines[code] = b"HTTP/1.1 %d %s\r\n" % (code, reason(code).encode())
    return line


_date_cache = [0, b""]


def date_header() -> bytes:
    """`Date: <IMF-fixdate>\\r\\n`, formatted once per second."""
    now = int(time.time())
    if now != _date_cache[0]:
        _date_cache[0] = now
        _date_cache[1] = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
    return _date_cache[1]
