"""Strict incremental HTTP/1.1 head parser and body framing (sans I/O).

Owns: turning the bytes a peer sent into a parsed request or response *head*
(request/status line + header fields, RFC 9112 sections 2-5), the framing
decision that follows from it (Content-Length / chunked / keep-alive, RFC 9112
section 6), and the chunked-body state machine (RFC 9112 section 7.1). It must
not do I/O, must not copy or join body bytes, and must not know about routes.

Theory of operation
-------------------
Rule 1: the caller owns the buffer. ``parse_request_head(buf, max_size)`` looks
at the start of ``buf`` and either returns ``None`` ("need more bytes"), or
``(head, consumed)``, or raises ``HTTPError``. The caller drops ``consumed``
bytes and keeps the rest (the start of a body or a pipelined request).

Rule 2: strict on what a smuggler could use, on requests. Everything RFC 9112
says a server MUST/SHOULD reject is rejected with the status the RFC (or the
table below) names; nothing h11 rejects is accepted (tests/test_parser_differential.py
checks this on generated input). Deliberate deviations from h11, all stricter,
except the first:

* leading empty lines (CRLF) before the request-line are skipped (RFC 9112
  2.2 "SHOULD ignore at least one empty line"); h11 rejects them.
* bare LF line terminators and obs-fold are rejected (h11 accepts both).
* control characters other than HTAB in field values are rejected (h11 lets
  0x01-0x08, 0x0e-0x1f and 0x7f through).
* Content-Length must be a single header with a single value (identical
  duplicates are rejected, reference 4.3 cfproxy note); CL + TE is rejected.
* Transfer-Encoding in an HTTP/1.0 request is rejected (RFC 9112 6.1).
* HTTP versions other than 1.0 and 1.1 get 505; a request line without a
  version (HTTP/0.9 style) gets 400, as Node's parser answers it.
* the request-target must start with "/", be "*", or start with
  "scheme://" (what Node's parser, hence CHP, accepts; others get 400).
* ``CONNECT`` gets 501: we do not tunnel CONNECT (CHP closes without an
  answer; a status is friendlier and equally safe).
* the Host value must be a syntactically valid ``uri-host [":" port]``
  (RFC 9112 3.2: "a server MUST respond with 400 to ... a Host header field
  with an invalid field value").

Rule 3: lenient on responses where real servers are (missing reason phrase,
control characters in values, identical duplicate Content-Length, any
transfer-coding list ending in chunked), strict where a desync could follow
(CL + TE, conflicting Content-Length, bad chunk framing): those raise
``HTTPError(502, ...)``.

Statuses raised by parse_request_head:

=====  ==========================================================================
400    malformed request line / field line (obs-fold, bare CR or LF, CTL in a
       value, invalid token character, whitespace before the colon), bad or
       duplicate Content-Length, Content-Length with Transfer-Encoding,
       missing (HTTP/1.1) or duplicate Host, invalid Host, bad request-target
431    the head is larger than ``max_size``
414    the request line alone is longer than ``max_size``
501    Transfer-Encoding other than a single ``chunked``; ``CONNECT``
505    HTTP version other than 1.0 / 1.1
=====  ==========================================================================

Speed: this runs once per request on the hot path. A whole head is validated
with one ``re.fullmatch`` (in C); the fields that affect framing are then picked
out with one case-insensitive ``findall`` (a field name only ever follows CRLF
and a value cannot hold CR), and the other field lines are split only when
someone asks for ``headers`` (the proxy forwards ``raw`` and never does). The
dominant request is decided by its twin in fastpath.py and remembered per head
bytes (and its field block per block bytes, so a known browser's new path costs a
request-line match), so RequestHeads are shared and must not be modified by callers. The
measurements behind these choices are in benchmarks/README.md.
"""

from __future__ import annotations

import re

from cfproxy.http import fastpath
from cfproxy.http.chunked import ChunkedReader
from cfproxy.http.fastpath import REQUEST_HEAD_MEMO_MAX, REQUEST_HEADS, VALID_HOSTS
from cfproxy.http.grammar import (
    CONTENT_LENGTH,
    FIELD_LINE,
    FIELD_LINES,
    HOST,
    LENIENT_FIELD_LINES,
    REQUEST_LINE,
    REQUEST_TARGET,
    SIMPLE_REQUEST_LINE,
    STATUS_LINE,
    TOKEN,
)
from cfproxy.http.status import HTTPError

__all__ = [
    "HTTPError",
    "RequestHead",
    "ResponseHead",
    "ChunkedReader",
    "parse_request_head",
    "parse_response_head",
]



_request_line_re = re.compile(REQUEST_LINE)
_simple_request_line_re = re.compile(SIMPLE_REQUEST_LINE)
_status_line_re = re.compile(STATUS_LINE)
_field_line_re = re.compile(FIELD_LINE)
_token_re = re.compile(TOKEN)
_content_length_re = re.compile(CONTENT_LENGTH)
_host_re = re.compile(HOST)
# A whole head in one match (request/status line, field lines, empty line): the fast
# path. Exactly the same language as the line regex + field block regex applied one
# after the other; a head it refuses goes through the step-by-step checks, which name
# the error.
_request_head_re = re.compile(REQUEST_LINE + rb"\r\n" + FIELD_LINES + rb"\r\n")
_response_head_re = re.compile(STATUS_LINE + rb"\r\n" + LENIENT_FIELD_LINES + rb"\r\n")
# The fields that decide framing, picked out of a *validated* head in one C-level scan
# (a field name only ever follows CRLF, and a value cannot contain CR): (name, value
# with leading OWS dropped). Measured on a 11-field browser GET: 1.0 us, against
# 2.3 us for the per-line Python loop it replaces.
_request_special_re = re.compile(
    rb"\r\n(host|content-length|transfer-encoding|connection|upgrade|expect):[ \t]*([^\r]*)",
    re.IGNORECASE,
)
_response_special_re = re.compile(
    rb"\r\n(content-length|transfer-encoding|connection|date):[ \t]*([^\r]*)", re.IGNORECASE
)
# Lower-cased names of the fields that decide framing / connection handling.
_CONTENT_LENGTH = b"content-length"
_TRANSFER_ENCODING = b"transfer-encoding"
_HOST = b"host"
_CONNECTION = b"connection"
_UPGRADE = b"upgrade"
_EXPECT = b"expect"


# ---------------------------------------------------------------------------
# Parsed heads
# ---------------------------------------------------------------------------


def _lazy_headers(head) -> list[tuple[bytes, bytes]]:
    """A head's field lines, split from ``head.raw`` on first use (the proxy's hot path
    never needs them: it forwards ``raw``). Shared by RequestHead and ResponseHead."""
    headers = head._headers
    if headers is None:
        headers = head._headers = _split_fields(head.raw)
    return headers


class RequestHead:
    """One parsed request head.

    ``method``/``target`` are the raw bytes from the request line, ``version``
    is 11 or 10, ``headers`` the field lines in order as ``(name as received,
    value without surrounding OWS)``. ``content_length`` is None when absent,
    ``chunked`` True for ``Transfer-Encoding: chunked`` (never both; neither =
    no body). ``keep_alive``: HTTP/1.1 unless ``Connection: close``, HTTP/1.0
    only with ``Connection: keep-alive``. ``upgrade``: lower-cased Upgrade value
    when Connection lists ``upgrade`` (HTTP/1.1 only, RFC 9110 7.8), else None.
    ``host``: the Host value or None. ``expect_continue``: HTTP/1.1 with
    ``Expect: 100-continue``. ``connection``: the raw Connection value (several
    fields joined with ", ") or None. ``raw``: the head bytes as received,
    request line through the final CRLFCRLF (leading empty lines excluded).
    """

    __slots__ = (
        "method",
        "target",
        "version",
        "_headers",
        "content_length",
        "chunked",
        "keep_alive",
        "upgrade",
        "host",
        "expect_continue",
        "connection",
        "raw",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: int,
        headers: list[tuple[bytes, bytes]] | None,
        content_length: int | None,
        chunked: bool,
        keep_alive: bool,
        upgrade: bytes | None,
        host: bytes | None,
        expect_continue: bool,
        connection: bytes | None,
        raw: bytes,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self._headers = headers
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.host = host
        self.expect_continue = expect_continue
        self.connection = connection
        self.raw = raw

    headers = property(_lazy_headers)

    def __repr__(self) -> str:
        return (
            f"RequestHead({self.method!r} {self.target!r} HTTP/{self.version // 10}."
            f"{self.version % 10} cl={self.content_length} chunked={self.chunked}"
            f" keep_alive={self.keep_alive} upgrade={self.upgrade!r})"
        )


class ResponseHead:
    """One parsed response head (see RequestHead for the shared fields).

    ``status`` int, ``reason`` raw bytes (may be empty). ``keep_alive`` is True
    when the upstream will keep the connection open after this response as far
    as the head tells: version/Connection say so *and* the body is not
    delimited by close (a response without Content-Length and without chunked
    framing whose status allows a body, RFC 9112 6.3 rule 8). A response to
    HEAD never has a body whatever its headers say; the caller knows the
    method, the parser does not, so such a response may be reported with
    keep_alive False although reusing the connection would be safe.
    ``content_length``/``chunked`` as for requests; for 1xx, 204 and 304 they
    are reported as sent but the message has no body (RFC 9112 6.3 rule 1).
    ``date``: the value of the first Date field, or None when there is none.
    """

    __slots__ = (
        "status",
        "reason",
        "version",
        "_headers",
        "content_length",
        "chunked",
        "keep_alive",
        "connection",
        "raw",
        "date",
    )

    def __init__(
        self,
        status: int,
        reason: bytes,
        version: int,
        headers: list[tuple[bytes, bytes]] | None,
        content_length: int | None,
        chunked: bool,
        keep_alive: bool,
        connection: bytes | None,
        raw: bytes,
        date: bytes | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self._headers = headers
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.connection = connection
        self.raw = raw
        self.date = date

    headers = property(_lazy_headers)

    def __repr__(self) -> str:
        return (
            f"ResponseHead({self.status} {self.reason!r} cl={self.content_length}"
            f" chunked={self.chunked} keep_alive={self.keep_alive})"
        )


# ---------------------------------------------------------------------------
# Request heads
# ---------------------------------------------------------------------------


def _split_fields(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(name, value without surrounding OWS) of every field line of a validated head."""
    block = raw[raw.find(b"\r\n") + 2 : -4]
    if not block:
        return []
    out = []
    for line in block.split(b"\r\n"):
        name, _, value = line.partition(b":")
        out.append((name, value.strip(b" \t")))
    return out


def _connection_tokens(value: bytes) -> set[bytes]:
    # RFC 9110 7.6.1: Connection = #connection-option (case-insensitive tokens)
    return {t.strip(b" \t") for t in value.lower().split(b",")}


def _incomplete(buf: bytes | bytearray, start: int, max_size: int, response: bool) -> None:
    """No complete head yet: fail early on what can never become valid, else None."""
    n = len(buf)
    if n > start:
        first = buf[start]
        # A head never starts with a control char or space (TLS handshakes
        # start with 0x16): answer now instead of waiting for the timeout.
        if first < 0x21 and first != 0x0D:
            raise HTTPError(502 if response else 400, "invalid start of message")
    # Bare LF / bare CR as a line terminator: the first LF must follow a CR,
    # and the first CR must be followed by LF.
    lf = buf.find(b"\n", start)
    if lf >= 0 and (
        lf == start
        or buf[lf - 1] != 0x0D
        # with no CRLFCRLF in buf, any LF followed by LF or CRLF is bare
        or buf.find(b"\n\n", lf) >= 0
        or buf.find(b"\n\r\n", lf) >= 0
    ):
        raise HTTPError(502 if response else 400, "bare LF in message head")
    cr = buf.find(b"\r", start)
    if 0 <= cr < n - 1 and buf[cr + 1] != 0x0A:
        raise HTTPError(502 if response else 400, "bare CR in message head")
    if n > max_size:  # leading empty lines count: they are buffered too
        _too_large(buf, start, max_size, response)
    return None


def _too_large(buf: bytes | bytearray, start: int, max_size: int, response: bool) -> None:
    if response:
        raise HTTPError(502, "response head too large")
    if start >= max_size:
        raise HTTPError(400, "too many empty lines before the request line")
    line_end = buf.find(b"\r\n", start, max_size + 2)
    if line_end < 0:
        raise HTTPError(414, "request line too long")
    raise HTTPError(431, "request header fields too large")


def _bad_request_line(line: bytes) -> HTTPError:
    if b"\n" in line:
        return HTTPError(400, "bare LF in request line")
    if b"\r" in line:
        return HTTPError(400, "bare CR in request line")
    if line.startswith(b"CONNECT "):
        return HTTPError(501, "CONNECT is not supported")
    if _simple_request_line_re.fullmatch(line):
        return HTTPError(400, "request line without HTTP version")
    parts = line.split(b" ")
    if len(parts) == 3 and parts[2].startswith(b"HTTP/"):
        if not _token_re.fullmatch(parts[0]):
            return HTTPError(400, "invalid method")
        if not re.fullmatch(REQUEST_TARGET, parts[1]):
            return HTTPError(400, "invalid request target")
    return HTTPError(400, "malformed request line")


def _bad_field_block(raw: bytes, pos: int, end: int, status: int) -> HTTPError:
    """Name the first bad field line (the block failed validation)."""
    for line in raw[pos:end].split(b"\r\n"):
        if _field_line_re.fullmatch(line) is not None:
            continue
        if line[:1] in (b" ", b"\t"):
            return HTTPError(status, "obsolete line folding in header")
        if b"\n" in line:
            return HTTPError(status, "bare LF in header")
        if b"\r" in line:
            return HTTPError(status, "bare CR in header")
        name, colon, _ = line.partition(b":")
        if not colon:
            return HTTPError(status, "header line without colon")
        if name[-1:] in (b" ", b"\t"):
            return HTTPError(status, "whitespace before colon in header")
        if not _token_re.fullmatch(name):
            return HTTPError(status, "invalid header name")
        if status == 502:
            break  # lenient value check failed: NUL
        return HTTPError(status, "invalid character in header value")
    return HTTPError(status, "malformed header")


def parse_request_head(buf: bytes | bytearray, max_size: int) -> tuple[RequestHead, int] | None:
    """Parse the request head at the start of ``buf``.

    Returns None when more bytes are needed, else ``(head, consumed)`` where
    ``consumed`` counts the bytes through the CRLFCRLF that ends the head
    (including skipped leading empty lines). Raises HTTPError (see the module
    docstring for the statuses). ``max_size`` bounds ``consumed`` (leading
    empty lines + request line + fields + final CRLF) in bytes.
    """
    start = 0
    # RFC 9112 2.2: "a server that is expecting to receive and parse a
    # request-line SHOULD ignore at least one empty line (CRLF) received prior
    # to the request-line."
    while buf.startswith(b"\r\n", start):
        start += 2
    end = buf.find(b"\r\n\r\n", start)
    if end < 0:
        return _incomplete(buf, start, max_size, False)
    consumed = end + 4
    if consumed > max_size:
        _too_large(buf, start, max_size, False)
    if start or consumed != len(buf) or type(buf) is not bytes:
        raw = bytes(buf[start:consumed])
    else:
        raw = buf  # the common case: the read holds exactly one head

    # -- the dominant request (fastpath.request_fields, the twin of what follows) ----
    # Parsing is a pure function of the head bytes and clients repeat heads, so a
    # recent head is answered from REQUEST_HEADS (one hash and compare). RequestHeads
    # are therefore shared: callers must not modify them.
    hit = REQUEST_HEADS.cur.get(raw)  # BoundedCache.get, inlined (hot path)
    if hit is None and REQUEST_HEADS.prev:
        hit = REQUEST_HEADS.prev.pop(raw, None)  # BoundedCache.promote, inlined
        if hit is not None:
            REQUEST_HEADS.put(raw, hit)
    if hit is not None:
        return hit, consumed
    fields = fastpath.request_fields(raw)
    if fields is not None:
        method, target, host, connection = fields
        head = RequestHead(method, target, 11, None, None, False, True, None, host, False,
                           connection, raw)
        if len(raw) <= REQUEST_HEAD_MEMO_MAX:
            REQUEST_HEADS.put(raw, head)
        return head, consumed

    # -- request line and field lines: one match validates the whole head -----
    m = _request_head_re.fullmatch(raw)
    if m is None:
        raise _bad_request_head(raw)
    method, target, major, minor = m.groups()
    if major == b"1" and minor == b"1":
        version = 11
    elif major == b"1" and minor == b"0":
        version = 10
    else:
        raise HTTPError(505, "HTTP version not supported")

    # -- the fields that matter for framing (all others are forwarded as is) --
    content_length = None
    chunked = False
    keep_alive = version == 11
    upgrade = None
    host = None
    expect_continue = False
    connection = None
    hosts = 0
    upgrade_value = None
    for name, value in _request_special_re.findall(raw):
        value = value.rstrip(b" \t")
        lname = name.lower()
        if lname == _HOST:
            hosts += 1
            host = value
        elif lname == _CONTENT_LENGTH:
            if content_length is not None:
                raise HTTPError(400, "duplicate Content-Length")
            if _content_length_re.fullmatch(value) is None:
                raise HTTPError(400, "invalid Content-Length")
            content_length = int(value)
        elif lname == _TRANSFER_ENCODING:
            # RFC 9112 6.1 / 7: we only implement chunked; "A server that
            # receives a request message with a transfer coding it does
            # not understand SHOULD respond with 501 (Not Implemented)".
            if chunked:
                raise HTTPError(501, "multiple Transfer-Encoding headers")
            if value.lower() != b"chunked":
                raise HTTPError(501, "unsupported Transfer-Encoding")
            chunked = True
        elif lname == _CONNECTION:
            connection = value if connection is None else connection + b", " + value
        elif lname == _UPGRADE:
            upgrade_value = value if upgrade_value is None else upgrade_value + b", " + value
        else:  # Expect
            # RFC 9110 10.1.1: ignore 100-continue in an HTTP/1.0 request.
            if version == 11 and value.lower() == b"100-continue":
                expect_continue = True
    # RFC 9112 3.2: "A server MUST respond with a 400 (Bad Request) status
    # code to any HTTP/1.1 request message that lacks a Host header field
    # and to any request message that contains more than one Host header
    # field line or a Host header field with an invalid field value."
    if hosts > 1:
        raise HTTPError(400, "duplicate Host header")
    if host is not None and VALID_HOSTS.get(host) is None:
        if _host_re.fullmatch(host) is None:
            raise HTTPError(400, "invalid Host header")
        VALID_HOSTS.put(host, True)
    if chunked:
        # RFC 9112 6.1: "A server MAY reject a request that contains both
        # Content-Length and Transfer-Encoding" - we do (request smuggling).
        if content_length is not None:
            raise HTTPError(400, "both Content-Length and Transfer-Encoding")
        # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
        if version == 10:
            raise HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request")
    if connection is not None:
        tokens = _connection_tokens(connection)
        if version == 11:
            keep_alive = b"close" not in tokens
            if upgrade_value is not None and b"upgrade" in tokens:
                upgrade = upgrade_value.lower()
        else:
            keep_alive = b"keep-alive" in tokens and b"close" not in tokens
    if host is None and version == 11:
        raise HTTPError(400, "missing Host header")
    if method == b"CONNECT":
        raise HTTPError(501, "CONNECT is not supported")
    return (
        RequestHead(
            method,
            target,
            version,
            None,
            content_length,
            chunked,
            keep_alive,
            upgrade,
            host,
            expect_continue,
            connection,
            raw,
        ),
        consumed,
    )


def _bad_request_head(raw: bytes) -> HTTPError:
    """The error for a complete head that failed validation: the request line is
    checked first (its version too), then the field lines."""
    line_end = raw.find(b"\r\n")
    m = _request_line_re.fullmatch(raw, 0, line_end)
    if m is None:
        return _bad_request_line(raw[:line_end])
    _, _, major, minor = m.groups()
    if major != b"1" or minor not in (b"0", b"1"):
        return HTTPError(505, "HTTP version not supported")
    return _bad_field_block(raw, line_end + 2, len(raw) - 2, 400)


# ---------------------------------------------------------------------------
# Response heads
# ---------------------------------------------------------------------------


def parse_response_head(buf: bytes | bytearray, max_size: int) -> tuple[ResponseHead, int] | None:
    """Parse the response head at the start of ``buf`` (one head: a 1xx
    interim response is returned like any other; call again for the next).

    Returns None when more bytes are needed, else ``(head, consumed)``.
    Raises ``HTTPError(502, ...)`` for a response the proxy must not forward.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return _incomplete(buf, 0, max_size, True)
    consumed = end + 4
    if consumed > max_size:
        raise HTTPError(502, "response head too large")
    raw = bytes(buf[:consumed]) if type(buf) is not bytes else buf[:consumed]

    m = _response_head_re.fullmatch(raw)
    if m is None:
        raise _bad_response_head(raw)
    major, minor, status_b, reason = m.groups()
    if major != b"1":
        raise HTTPError(502, "unsupported HTTP version in response")
    version = 10 if minor == b"0" else 11
    status = int(status_b)
    if status < 100:
        raise HTTPError(502, "invalid status code")
    if reason is None:
        reason = b""

    content_length = None
    chunked = False
    te_final = None  # last transfer-coding, lower-cased, when TE present
    connection = None
    date = None
    for name, value in _response_special_re.findall(raw):
        value = value.rstrip(b" \t")
        lname = name.lower()
        if lname == _CONTENT_LENGTH:
            if content_length is None and value.isdigit() and len(value) <= 18:
                content_length = int(value)  # the common case: one plain number
                continue
            # RFC 9110 8.6: a list of identical values may be accepted.
            for item in value.split(b","):
                item = item.strip(b" \t")
                if _content_length_re.fullmatch(item) is None:
                    raise HTTPError(502, "invalid Content-Length in response")
                n = int(item)
                if content_length is not None and n != content_length:
                    raise HTTPError(502, "conflicting Content-Length in response")
                content_length = n
        elif lname == _TRANSFER_ENCODING:
            codings = [c.strip(b" \t") for c in value.lower().split(b",")]
            codings = [c for c in codings if c]
            if codings:
                te_final = codings[-1]
            elif te_final is None:
                te_final = b""
        elif lname == _CONNECTION:
            connection = value if connection is None else connection + b", " + value
        elif date is None:
            date = value
    if te_final is not None:
        if content_length is not None:
            raise HTTPError(502, "both Content-Length and Transfer-Encoding in response")
        if version == 10:
            raise HTTPError(502, "Transfer-Encoding in an HTTP/1.0 response")
        # RFC 9112 6.3 rule 4: chunked last -> chunked; otherwise the body
        # is delimited by the server closing the connection.
        chunked = te_final == b"chunked"
    if connection is not None:
        tokens = _connection_tokens(connection)
        keep_alive = (
            b"close" not in tokens
            if version == 11
            else b"keep-alive" in tokens and b"close" not in tokens
        )
    else:
        keep_alive = version == 11
    if (
        keep_alive
        and not chunked
        and content_length is None
        and status >= 200
        and status != 204
        and status != 304
    ):
        keep_alive = False  # close-delimited body
    return (
        ResponseHead(
            status, reason, version, None, content_length, chunked, keep_alive, connection, raw,
            date,
        ),
        consumed,
    )


def _bad_response_head(raw: bytes) -> HTTPError:
    """The error for a complete response head that failed validation."""
    line_end = raw.find(b"\r\n")
    m = _status_line_re.fullmatch(raw, 0, line_end)
    if m is None:
        return HTTPError(502, "malformed status line")
    if m.group(1) != b"1":
        return HTTPError(502, "unsupported HTTP version in response")
    if int(m.group(3)) < 100:
        return HTTPError(502, "invalid status code")
    return _bad_field_block(raw, line_end + 2, len(raw) - 2, 502)
