"""What the proxy writes itself at the start of a response: status lines, reason phrases
and the `Date` header, each in one place.

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
