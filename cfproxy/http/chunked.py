"""Chunked transfer coding (RFC 9112 section 7.1), in one place (sans I/O).

- `ChunkedReader` finds where a chunked body ends without copying it: the proxy relays
  chunked bodies as received (requests and responses) and only needs the end.
- `Dechunker` decodes one incrementally, for HTTP/1.0 clients of chunked targets.
- `dechunk` decodes a whole body at once (error pages fetched from --error-target).

fastpath.chunked_body_complete is the fast twin of ChunkedReader for a small body that
arrives whole.
"""

from __future__ import annotations

import re

from cfproxy.http.grammar import CHUNK_HEADER, TRAILER_LINE
from cfproxy.http.status import HTTPError

_chunk_header_re = re.compile(CHUNK_HEADER)
_trailer_line_re = re.compile(TRAILER_LINE)

# ChunkedReader states
_SIZE = 0  # reading a chunk-size line
_DATA = 1  # inside chunk-data, _remaining bytes to go
_DATA_CRLF = 2  # expecting the CRLF after chunk-data (_crlf_seen bytes of it seen)
_TRAILER = 3  # reading trailer field lines until the empty line
_DONE = 4

MAX_CHUNK_LINE = 4096  # chunk-size line incl. extensions
MAX_TRAILER_SIZE = 16 * 1024  # whole trailer section


class ChunkedReader:
    """Find where a chunked body ends, without copying it.

    ``feed(data)`` returns -1 when all of ``data`` belongs to the body and the
    body is not finished, or ``n`` (0 <= n <= len(data)) when the body ended
    after ``data[:n]`` (the rest belongs to the next message). Once finished,
    every further feed returns 0. Raises ``HTTPError(400, ...)`` on a framing
    error; a caller reading a *response* maps it to 502.

    Cost: O(1) per feed while inside chunk-data (just a counter), so big
    chunks are free; only size lines and trailers (bounded by MAX_CHUNK_LINE /
    MAX_TRAILER_SIZE) are looked at byte-wise.
    """

    __slots__ = ("_state", "_remaining", "_crlf_seen", "_line", "_trailer_size")

    def __init__(self) -> None:
        self._state = _SIZE
        self._remaining = 0
        self._crlf_seen = 0
        self._line = b""  # partial size/trailer line carried between feeds
        self._trailer_size = 0

    @property
    def done(self) -> bool:
        """True once the last chunk and the trailer section were seen."""
        return self._state == _DONE

    def feed(self, data: bytes | bytearray) -> int:
        n = len(data)
        state = self._state
        if state == _DATA:
            remaining = self._remaining
            if remaining > n:  # the hot path: a piece of a big chunk
                self._remaining = remaining - n
                return -1
        elif state == _DONE:
            return 0
        pos = 0
        while pos < n:
            if state == _DATA:
                take = self._remaining
                if take > n - pos:
                    self._remaining = take - (n - pos)
                    return -1
                pos += take
                self._remaining = 0
                state = self._state = _DATA_CRLF
                self._crlf_seen = 0
            elif state == _DATA_CRLF:
                # RFC 9112 7.1: chunk = ... chunk-data CRLF
                seen = self._crlf_seen
                if seen == 0 and n - pos >= 2:
                    if data[pos] != 0x0D or data[pos + 1] != 0x0A:
                        raise HTTPError(400, "missing CRLF after chunk data")
                    pos += 2
                    state = self._state = _SIZE
                    continue
                expected = 0x0D if seen == 0 else 0x0A
                if data[pos] != expected:
                    raise HTTPError(400, "missing CRLF after chunk data")
                pos += 1
                if seen == 1:
                    state = self._state = _SIZE
                else:
                    self._crlf_seen = 1
            else:  # _SIZE or _TRAILER: line based
                lf = data.find(b"\n", pos)
                limit = MAX_CHUNK_LINE if state == _SIZE else MAX_TRAILER_SIZE
                if lf < 0:
                    part = bytes(data[pos:])
                    self._line += part
                    if len(self._line) > limit or (
                        state == _TRAILER and self._trailer_size + len(self._line) > limit
                    ):
                        raise HTTPError(400, "chunk size line or trailers too long")
                    return -1
                line = bytes(data[pos : lf + 1])
                if self._line:
                    line = self._line + line
                    self._line = b""
                pos = lf + 1
                if state == _SIZE:
                    if len(line) > MAX_CHUNK_LINE:
                        raise HTTPError(400, "chunk size line too long")
                    m = _chunk_header_re.fullmatch(line)
                    if m is None:
                        raise HTTPError(400, "invalid chunk size line")
                    size = int(m.group(1), 16)
                    if size == 0:
                        state = self._state = _TRAILER
                    else:
                        self._remaining = size
                        state = self._state = _DATA
                else:
                    if line == b"\r\n":
                        self._state = _DONE
                        return pos
                    self._trailer_size += len(line)
                    if self._trailer_size > MAX_TRAILER_SIZE:
                        raise HTTPError(400, "chunked trailers too long")
                    if _trailer_line_re.fullmatch(line) is None:
                        raise HTTPError(400, "invalid trailer field")
        self._state = state
        return -1


class Dechunker:
    """Incremental decoder of a chunked body, for HTTP/1.0 clients of chunked targets.

    `feed(data) -> (payload: list[bytes], done: bool)`. Rare path (1.0 clients), so
    plain and byte-range based. Trailers are dropped. Raises ValueError on bad framing.
    """

    __slots__ = ("state", "left", "line")

    def __init__(self) -> None:
        self.state = 0  # 0 size line, 1 data, 2 CRLF after data, 3 trailers, 4 done
        self.left = 0
        self.line = b""

    def feed(self, data: bytes) -> tuple[list[bytes], bool]:
        out: list[bytes] = []
        i, n = 0, len(data)
        while i < n and self.state != 4:
            if self.state == 1:
                take = min(self.left, n - i)
                out.append(data[i:i + take])
                i += take
                self.left -= take
                if not self.left:
                    self.state = 2
                    self.line = b""
                continue
            j = data.find(b"\n", i)
            if j < 0:
                self.line += data[i:]
                if len(self.line) > 8192:
                    raise ValueError("chunk line too long")
                break
            line = (self.line + data[i:j]).rstrip(b"\r")
            self.line = b""
            i = j + 1
            if self.state == 0:
                size = int(line.split(b";")[0].strip(), 16)
                if size:
                    self.left, self.state = size, 1
                else:
                    self.state = 3
            elif self.state == 2:
                if line:
                    raise ValueError("missing CRLF after chunk data")
                self.state = 0
            elif self.state == 3 and not line:
                self.state = 4
        return out, self.state == 4


def dechunk(data: bytes) -> bytes:
    """Decode a complete chunked body (error pages only; lenient, stops at what parses)."""
    out = []
    i = 0
    while True:
        j = data.find(b"\r\n", i)
        if j < 0:
            break
        try:
            size = int(data[i:j].split(b";")[0].strip(), 16)
        except ValueError:
            break
        if size == 0:
            break
        out.append(data[j + 2:j + 2 + size])
        i = j + 2 + size + 2
    return b"".join(out)
