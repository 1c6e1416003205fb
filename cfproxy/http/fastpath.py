"""Every fast path of the proxy, as pure functions, and the one switch that turns them off.

A fast path is a twin, not a second semantics (DESIGN.md rule 8): each function here
recognises the dominant case of one general function, answers exactly what that function
would answer, and returns None for anything else, so the caller takes the general code.
Each names its twin, and tests/test_proxy_fastpath.py,
tests/test_parser_fastpath.py and tests/test_fastpath_blocks.py check every pair against each other.
No I/O and no per-connection state: bytes in, decision out.

The switch: `CFPROXY_FAST_PATHS=0` in the environment (or `Config.fast_paths = False`,
applied by `set_enabled` when the app starts) turns every fast path and every memo off;
the proxy then runs the general code only. CI runs the proxy tests both ways.

Memos. Every remembered answer lives in a `BoundedCache` (one policy for all): two
generations of at most `size / 2` keys each; a lookup reads the current generation, a key
found only in the previous one is moved forward, and when the current generation is full
it becomes the previous one (the old previous one is dropped). So new keys always enter,
and a key used at least once per `size / 2` insertions is never lost; a flood of unique
keys (one client's) evicts a hot key at most once per generation, after which its next use
brings it back. A hit is one dict lookup. A memo maps the *whole input* of a pure function
to its answer, so a hit can never differ from the general path.
"""

from __future__ import annotations

import os
import re
import sys
import weakref

from cfproxy.http.grammar import (
    FIELD_LINE,
    HOST,
    LENIENT_FIELD_LINES,
    STATUS_LINE,
    VCHAR,
)

__all__ = [
    "ENABLED",
    "BoundedCache",
    "set_enabled",
    "request_fields",
    "response_shape",
    "plain_target_query",
]


def _env_enabled() -> bool:
    return os.environ.get("CFPROXY_FAST_PATHS", "1").strip().lower() not in (
        "0", "false", "no", "off")


ENABLED = _env_enabled()
_caches: weakref.WeakSet = weakref.WeakSet()


def set_enabled(on: bool) -> None:
    """Turn every fast path and memo on or off (process-wide; the app calls it at start)."""
    global ENABLED
    ENABLED = bool(on)
    for cache in list(_caches):
        cache.clear()
        cache.half = max(1, cache.size // 2) if on else 0


class BoundedCache:
    """The one memo policy: two generations, O(1), keeps learning (see the module text).

    Values must not be None (None means "not remembered"). With the fast paths off it
    remembers nothing.
    """

    __slots__ = ("size", "half", "cur", "prev", "__weakref__")

    def __init__(self, size: int) -> None:
        self.size = size
        self.half = max(1, size // 2) if ENABLED else 0
        self.cur: dict = {}
        self.prev: dict = {}
        _caches.add(self)

    def get(self, key):
        value = self.cur.get(key)
        if value is None and self.prev:
            return self.promote(key)
        return value

    def promote(self, key):
        """The value of a key of the previous generation, moved to the current one (None
        when absent). Hot callers read `cur.get(key)` themselves and call this on a miss
        while `prev` is not empty."""
        value = self.prev.pop(key, None)
        if value is not None:
            self.put(key, value)
        return value

    def put(self, key, value) -> None:
        half = self.half
        if not half:
            return
        cur = self.cur
        if len(cur) >= half:
            self.prev = cur
            cur = self.cur = {}
        cur[key] = value

    def clear(self) -> None:
        self.cur = {}
        self.prev = {}

    def __len__(self) -> int:
        return len(self.cur) + len(self.prev)

    def __contains__(self, key) -> bool:
        return key in self.cur or key in self.prev


# =========================================================================== requests

# Twin of parser.parse_request_head's general code, for the dominant request: an
# HTTP/1.1 GET or HEAD with an origin-form target, exactly one valid Host, at most one
# `Connection: keep-alive` (what browsers send), and none of Content-Length,
# Transfer-Encoding, another Connection, Upgrade, Expect; every field line valid as
# FIELD_LINE. Its framing is then fixed (no body, keep-alive) and only method, target,
# Host and the Connection value's spelling vary.
#
# The request line and the field block (everything after the request line) are decided
# apart: a browser's field block (cookie, user agent, accept headers) repeats for every
# request of one user while the request line changes, so the block's decision is
# remembered per block bytes (FIELD_BLOCKS) and a new path of a known user costs the
# request-line match and one dict lookup. A block not remembered is decided by one C-level
# match with no field scan; the two alternatives (Host first or Connection first) make the
# match deterministic. (Validating the block with bytes.translate, a structure match
# skipping values with [^\r]* and CR/LF counts measured slower than this one match: four
# passes over the bytes against one; benchmarks/README.md.)
_request_line_re = re.compile(rb"(GET|HEAD) (/" + VCHAR + rb"*) HTTP/1\.1")
_REQ_OTHER = (rb"(?:\r\n(?!(?i:host|content-length|transfer-encoding|connection|upgrade|expect):)"
              + FIELD_LINE + rb")*")
_REQ_HOST = rb"\r\n(?i:host):[ \t]*(" + HOST + rb")[ \t]*"
_REQ_CONNECTION = rb"\r\n(?i:connection):[ \t]*((?i:keep-alive))[ \t]*"
_field_block_re = re.compile(
    _REQ_OTHER
    + rb"(?:" + _REQ_HOST + _REQ_OTHER + rb"(?:" + _REQ_CONNECTION + _REQ_OTHER + rb")?"
    + rb"|" + _REQ_CONNECTION + _REQ_OTHER + _REQ_HOST + _REQ_OTHER + rb")"
    + rb"\r\n\r\n"
)

# (Host value, Connection value or None) per dominant field block, starting with the
# CRLF that ends the request line. Sized for ~1,000 active users' browsers: a block is
# kept while it is used at least once per 1,024 new blocks; at most 2,048 blocks of at
# most FIELD_BLOCK_MEMO_MAX bytes (~1.6 MiB for 750-byte browser heads, 4.3 MiB at most).
FIELD_BLOCKS = BoundedCache(2048)
FIELD_BLOCK_MEMO_MAX = 2048


def field_block(block: bytes) -> tuple[bytes, bytes | None] | None:
    """(Host value, Connection value or None) when `block` (the head after its request
    line: CRLF, field lines each ending in CRLF, CRLF) is a dominant request's field
    block; None for anything else. Not memoised (request_fields is)."""
    m = _field_block_re.fullmatch(block)
    if m is None:
        return None
    host, connection, connection2, host2 = m.groups()
    if host is None:
        return host2, connection2
    return host, connection


def request_fields(raw: bytes) -> tuple[bytes, bytes, bytes, bytes | None] | None:
    """(method, target, Host value, Connection value or None) when `raw` (one whole head,
    request line through the empty line) is the dominant request; None for anything else
    (take the general code)."""
    if not ENABLED:
        return None
    line_end = raw.find(b"\r\n")
    m = _request_line_re.fullmatch(raw, 0, line_end)
    if m is None:
        return None
    block = raw[line_end:]
    fields = FIELD_BLOCKS.cur.get(block)  # BoundedCache.get, inlined (hot path)
    if fields is None:
        if FIELD_BLOCKS.prev:
            fields = FIELD_BLOCKS.prev.pop(block, None)  # BoundedCache.promote, inlined
        if fields is None:
            fields = field_block(block)
            if fields is None:
                return None
            if len(block) <= FIELD_BLOCK_MEMO_MAX:
                FIELD_BLOCKS.put(block, fields)
        else:
            FIELD_BLOCKS.put(block, fields)
    method, target = m.groups()
    return method, target, fields[0], fields[1]


# The RequestHead of recent dominant heads (parser.parse_request_head): parsing is a
# pure function of the head bytes and clients repeat heads. Heads longer than
# REQUEST_HEAD_MEMO_MAX are not remembered (bounds the memo's bytes: ~1 MiB).
REQUEST_HEADS = BoundedCache(1024)
REQUEST_HEAD_MEMO_MAX = 1024
# Host values the general parser found valid (a set lookup instead of the match).
VALID_HOSTS = BoundedCache(1024)


# =========================================================================== responses

_response_head_re = re.compile(STATUS_LINE + rb"\r\n" + LENIENT_FIELD_LINES + rb"\r\n")
_response_special_re = re.compile(
    rb"\r\n(content-length|transfer-encoding|connection|date):[ \t]*([^\r]*)", re.IGNORECASE
)
# What the fast response path appends: Connection when the target sent none.
KEEP_ALIVE_TAIL = b"Connection: keep-alive\r\n\r\n"
CRLF = b"\r\n"

# response_shape's answers, per head bytes (heads up to RESPONSE_HEAD_MEMO_MAX bytes).
RESPONSE_SHAPES = BoundedCache(2048)
RESPONSE_HEAD_MEMO_MAX = 2048


def response_shape(head: bytes) -> tuple[int, int, bool, bytes] | None:
    """Decide a response head for an HTTP/1.1 client that sent no Connection field and
    no HEAD request; twin of parse_response_head + HeaderRewriter.response_head.

    Covers what real servers send for most requests: HTTP/1.1 2xx (not 204), framed by
    one plain Content-Length or by `Transfer-Encoding: chunked`, with no Connection field
    or `Connection: keep-alive`, any other fields (Date, Server, Set-Cookie, Etag, ...).
    Answers (status, Content-Length or -1 for chunked, has Date, tail) where the bytes for
    the client are `head[:-2] + (Date line if not has Date) + tail`, the client
    connection stays open and the upstream connection is reusable after the body. None:
    take the general code. Memoised per head (RESPONSE_SHAPES).
    """
    shape = RESPONSE_SHAPES.get(head)
    if shape is not None:
        return shape
    if not ENABLED:
        return None
    m = _response_head_re.fullmatch(head)
    if m is None:
        return None
    major, minor, status_b, _ = m.groups()
    if major != b"1" or minor != b"1" or status_b[0] != 50 or status_b == b"204":  # 50: "2"
        return None
    length = -2
    has_date = has_connection = False
    for name, value in _response_special_re.findall(head):
        lname = name.lower()
        value = value.rstrip(b" \t")
        if lname == b"content-length":
            if length != -2 or not value.isdigit() or len(value) > 18:
                return None
            length = int(value)
        elif lname == b"transfer-encoding":
            if length != -2 or value.lower() != b"chunked":
                return None
            length = -1
        elif lname == b"connection":
            if has_connection or value.lower() != b"keep-alive":
                return None
            has_connection = True
        else:
            has_date = True
    if length == -2:
        return None  # close-delimited: the general code re-frames it
    shape = (int(status_b), length, has_date, CRLF if has_connection else KEEP_ALIVE_TAIL)
    if len(head) <= RESPONSE_HEAD_MEMO_MAX:
        RESPONSE_SHAPES.put(head, shape)
    return shape


_chunk_size_re = re.compile(rb"([0-9A-Fa-f]{1,16})\r\n")
_LAST_CHUNK_END = b"0\r\n\r\n"
_ONE_CHUNK_END = b"\r\n0\r\n\r\n"  # a chunk's CRLF, the last chunk, the empty trailer
# The size line of a chunk of n bytes as servers write it, for n < 4096 (~200 KB; a
# tuple index instead of formatting, ~1.5k instructions saved per small chunked body).
_CHUNK_SIZE_LINES_N = 4096
_CHUNK_SIZE_LINES = tuple(b"%x\r\n" % n for n in range(_CHUNK_SIZE_LINES_N))


def chunked_body_complete(data: bytes, start: int = 0) -> bool:
    """True when `data[start:]` is exactly one whole chunked body: chunks without
    extensions, the last chunk, no trailers (what servers send for a small response, in
    one read). Twin of parser.ChunkedReader: a fresh reader's `feed(data[start:])` returns
    its length and is done. False: not decided here (feed a ChunkedReader)."""
    if not ENABLED or data[-5:] != _LAST_CHUNK_END:
        return False
    end = len(data)
    # The common single chunk as servers write it ("%x" CRLF, data, CRLF, the last chunk,
    # the empty trailer section), checked without a method call: the length tells the size
    # (digits + size = length - 9), two slice compares check the rest. Method calls on
    # bytes cost ~1-2k instructions each here; the loop below costs ~8.7k per body.
    size = end - start - 10  # one hex digit
    digits = 1
    while size >= 1 << 4 * digits:
        size -= 1
        digits += 1
    if size > 0 and data[-7:] == _ONE_CHUNK_END and data[start:start + digits + 2] == (
            _CHUNK_SIZE_LINES[size] if size < _CHUNK_SIZE_LINES_N else b"%x\r\n" % size):
        return True
    match = _chunk_size_re.match
    pos = start
    while True:
        m = match(data, pos)
        if m is None:
            return False
        size = int(m.group(1), 16)
        pos = m.end()
        if not size:
            return pos + 2 == end  # the CRLF that ends the (empty) trailer section
        pos += size
        if pos + 7 == end:  # the common single chunk: its CRLF and the last chunk remain
            return data[pos:pos + 2] == b"\r\n"
        if data[pos:pos + 2] != b"\r\n":
            return False
        pos += 2


# =========================================================================== request-targets

# Twin of urlpath._routing_path_general / _forward_path_general for a plain
# request-target: "/" not followed by "/", segments that do not start with "." and hold
# no / \\ % ? # nor a character of the path encode set, then an optional query (group 1)
# without # or a character of the query encode set; ASCII VCHAR only. Exactly one way to
# match any input (linear time), so the quantifiers are possessive where Python has them
# (3.11+): sre then keeps no backtracking state (~1.1k fewer instructions per match, of
# ~4.4k), the same language. For such a target the
# routing key is its path as is and the forwarded path is the target itself when the
# route's target adds nothing.
_POSSESSIVE = b"+" if sys.version_info >= (3, 11) else b""
_SEG = (rb'(?:[^/\\%?#."<>`{}\x00-\x20\x7f-\xff][^/\\%?#"<>`{}\x00-\x20\x7f-\xff]*'
        + _POSSESSIVE + rb")?" + _POSSESSIVE)
_plain_target_re = re.compile(
    rb"/(?!/)" + _SEG + rb"(?:/" + _SEG + rb")*" + _POSSESSIVE
    + rb"(\?[^#\"<>'\x00-\x20\x7f-\xff]*)?")


def plain_target_query(raw_target: bytes) -> int | None:
    """For a plain request-target: where its query starts (the index of "?", -1 when it
    has none); None when it is not plain (take the general code)."""
    if not ENABLED:
        return None
    m = _plain_target_re.fullmatch(raw_target)
    return None if m is None else m.start(1)


# (route, forwarded path) per request-target, while the route table is unchanged
# (client.py); request-targets are the input, the table version guards the rest.
ROUTE_CACHE_SIZE = 8192
# Target per target URL (routing/target.py): parse_target is a pure function of the URL.
TARGET_CACHE_SIZE = 1024
# Forwarded-head tails per (Host, client address, TLS, Connection present) (headers.py).
TAIL_CACHE_SIZE = 1024
