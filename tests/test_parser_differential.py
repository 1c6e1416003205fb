"""Differential test: cfproxy.http.parser against h11 on generated request heads.

The contract (DESIGN.md rule 5): wherever h11 rejects a request head, we reject
it too; where both accept, they agree on method, target, version and headers
(h11 lower-cases names, so names compare case-insensitively). We may reject more
(bare LF, obs-fold, CTLs, CL+TE, ... see the parser's module docstring).

The one deliberate acceptance h11 does not make is RFC 9112 2.2's leading empty
lines; test_leading_empty_lines_only_deviation pins that down.
"""

from __future__ import annotations

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfproxy.http.parser import HTTPError, parse_request_head

MAX = 1 << 20
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def h11_parse(data: bytes):
    """('reject', None) | ('need', None) | ('ok', h11.Request)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return "reject", None
    if event is h11.NEED_DATA:
        return "need", None
    assert isinstance(event, h11.Request), event
    return "ok", event


def ours_parse(data: bytes):
    try:
        result = parse_request_head(data, MAX)
    except HTTPError as e:
        assert e.status in (400, 414, 431, 501, 505), e
        return "reject", None
    if result is None:
        return "need", None
    return "ok", result[0]


def check(data: bytes) -> str:
    theirs, event = h11_parse(data)
    ours, head = ours_parse(data)
    if theirs == "reject":
        assert ours == "reject", f"h11 rejects, we {ours}: {data!r}"
    if ours == "ok":
        assert theirs == "ok", f"we accept, h11 {theirs}: {data!r}"
        assert head.method == event.method
        assert head.target == event.target
        assert head.version == {b"1.1": 11, b"1.0": 10}[event.http_version]
        # h11 also lower-cases the Transfer-Encoding value
        ours_fields = [
            (n.lower(), v.lower() if n.lower() == b"transfer-encoding" else v)
            for n, v in head.headers
        ]
        assert ours_fields == list(event.headers)
    return ours


# --- generators ---------------------------------------------------------------

TCHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VCHARS = bytes(range(0x21, 0x7F))

tokens = st.binary(min_size=1, max_size=12).map(lambda b: bytes(TCHARS[x % len(TCHARS)] for x in b))
methods = st.one_of(
    st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"HEAD", b"PATCH"]), tokens
)
targets = st.one_of(
    st.sampled_from(
        [b"/", b"/user/a/api?x=1", b"*", b"http://h/abs?q", b"//x/y", b"/a%20b", b"/%zz"]
    ),
    st.binary(max_size=20).map(lambda b: b"/" + bytes(VCHARS[x % len(VCHARS)] for x in b)),
    st.binary(min_size=1, max_size=20).map(lambda b: bytes(VCHARS[x % len(VCHARS)] for x in b)),
)
versions = st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0"] * 2 + [b"HTTP/2.0", b"HTTP/0.9"])
# Fields that decide framing, with values valid, invalid and smuggling-shaped.
special_fields = st.tuples(
    st.sampled_from(
        [
            b"Host",
            b"host",
            b"Content-Length",
            b"Transfer-Encoding",
            b"Connection",
            b"Upgrade",
            b"Expect",
        ]
    ),
    st.sampled_from(
        [
            b"h",
            b"example.org:8000",
            b"0",
            b"5",
            b"5, 5",
            b"1, 2",
            b"+5",
            b"chunked",
            b"Chunked",
            b"gzip, chunked",
            b"identity",
            b"keep-alive",
            b"close",
            b"Upgrade",
            b"websocket",
            b"100-continue",
            b"",
        ]
    ),
)
vchar_text = st.binary(max_size=16).map(lambda b: bytes(VCHARS[x % len(VCHARS)] for x in b))
# Ordinary fields: mostly valid values, sometimes arbitrary bytes.
plain_fields = st.tuples(
    st.one_of(st.sampled_from([b"Cookie", b"X-Forwarded-For", b"Accept"]), tokens),
    st.one_of(
        st.sampled_from([b"", b"  padded\t", b"caf\xc3\xa9", b"a b\tc"]),
        vchar_text,
        vchar_text,
        st.binary(max_size=16),
    ),
)
fields = st.lists(st.one_of(plain_fields, plain_fields, special_fields), max_size=6)


@st.composite
def heads(draw) -> bytes:
    line = draw(methods) + b" " + draw(targets) + b" " + draw(versions)
    out = [line]
    if draw(st.integers(0, 4)):
        out.append(b"Host: " + draw(st.sampled_from([b"h", b"a.example", b"[::1]:80"])))
    for name, value in draw(fields):
        out.append(name + b":" + draw(st.sampled_from([b"", b" ", b"\t", b"  "])) + value)
    return b"\r\n".join(out) + b"\r\n\r\n"


@st.composite
def mutated_heads(draw) -> bytes:
    data = bytearray(draw(heads()))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "insert", "delete", "bare-lf", "fold", "ws"]))
        # never touch the final CRLFCRLF, so the head stays complete for both parsers
        pos = draw(st.integers(0, max(0, len(data) - 5)))
        if kind == "replace":
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = bytes([draw(st.integers(0, 255))])
        elif kind == "delete" and len(data) > 5:
            del data[pos]
        elif kind == "bare-lf":
            i = data.find(b"\r\n", pos)
            if 0 <= i < len(data) - 4:
                del data[i]
        elif kind == "fold":
            i = data.find(b"\r\n", pos)
            if 0 <= i < len(data) - 4:
                data[i + 2 : i + 2] = draw(st.sampled_from([b" ", b"\t", b"  x"]))
        else:
            data[pos:pos] = draw(st.sampled_from([b" ", b"\t", b"\r", b"\n", b"\x00"]))
    return bytes(data)


# --- properties ------------------------------------------------------------------


@SETTINGS
@given(heads())
def test_generated_heads_agree_with_h11(data):
    check(data)


@SETTINGS
@given(mutated_heads())
def test_mutated_heads_never_accepted_where_h11_rejects(data):
    check(data)


@settings(max_examples=150, deadline=None)
@given(heads(), st.integers(1, 3))
def test_leading_empty_lines_only_deviation(data, n):
    # h11 rejects leading CRLFs; we skip them (RFC 9112 2.2) and then must
    # decide exactly as h11 does on the rest.
    ours, head = ours_parse(b"\r\n" * n + data)
    theirs, event = h11_parse(data)
    if theirs == "reject":
        assert ours == "reject"
    if ours == "ok":
        assert theirs == "ok" and head.target == event.target


def test_known_h11_rejections_are_rejected():
    # hand-picked shapes to prove check() can fail in each direction
    for data in (
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n",
    ):
        assert check(data) == "reject"
    assert check(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\r\n") == "ok"
