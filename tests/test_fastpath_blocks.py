"""The request field-block memo (fastpath.FIELD_BLOCKS) and its decision, field_block,
give exactly the general parse, and h11 accepts nothing we do not.

A browser's field block (cookie, user agent, accept headers) repeats across a user's
requests while the request line changes; fastpath.request_fields remembers the block's
decision per block bytes. Each generated head is parsed with the fast paths on (a miss,
then a hit under another request line) and off; the outcomes must be equal, and where
h11 rejects a head we reject it too.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cfproxy.http import fastpath, parser
from tests.test_parser_differential import fields, mutated_heads

LINES = [b"GET /user/a/api/kernels?1 HTTP/1.1", b"HEAD /x HTTP/1.1", b"GET / HTTP/1.1",
         b"POST /p HTTP/1.1", b"GET /b HTTP/1.0"]


@pytest.fixture(autouse=True)
def fast_paths_restored():
    yield
    fastpath.set_enabled(fastpath._env_enabled())


def outcome(head: bytes) -> tuple:
    try:
        parsed = parser.parse_request_head(head + b"NEXT", 64 * 1024)
    except parser.HTTPError as e:
        return ("error", e.status, e.message)
    req, n = parsed
    return (req.method, req.target, req.version, req.headers, req.content_length, req.chunked,
            req.keep_alive, req.upgrade, req.host, req.expect_continue, req.connection,
            req.raw, n)


def h11_accepts(head: bytes) -> bool:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    try:
        return isinstance(conn.next_event(), h11.Request)
    except h11.RemoteProtocolError:
        return False


def check_block(block: bytes) -> None:
    """block: CRLF, field lines, CRLF CRLF. Two request lines share it: the second is
    decided from the memo when the first was the dominant request."""
    fastpath.set_enabled(True)
    heads = [line + block for line in LINES]
    fast = [outcome(h) for h in heads]
    fast_again = [outcome(bytes(bytearray(h))) for h in heads]  # memo hits
    fastpath.set_enabled(False)
    general = [outcome(h) for h in heads]
    assert fast == general, block
    assert fast_again == general, block
    for head, result in zip(heads, general, strict=True):
        if result[0] != "error" and not head.startswith(b"GET / HTTP"):
            assert h11_accepts(head), head


@st.composite
def blocks(draw) -> bytes:
    lines = [b""]
    if draw(st.integers(0, 4)):
        lines.append(b"Host: " + draw(st.sampled_from([b"h", b"a.example:80", b"[::1]:80", b"a b"])))
    for name, value in draw(fields):
        lines.append(name + b":" + draw(st.sampled_from([b"", b" ", b"\t"])) + value)
    if draw(st.booleans()):
        lines.insert(draw(st.integers(1, len(lines))), b"Connection: "
                     + draw(st.sampled_from([b"keep-alive", b"Keep-Alive ", b"close", b"keep-alive, x"])))
    return b"\r\n".join(lines) + b"\r\n\r\n"


@settings(max_examples=400, deadline=None)
@given(blocks())
def test_field_block_decision_is_the_general_parse(block):
    check_block(block)


@settings(max_examples=400, deadline=None)
@given(mutated_heads())
def test_mutated_blocks_decide_as_the_general_parse(head):
    # the mutated head's field block under our request lines (bare CR/LF, obs-fold, NUL,
    # whitespace before a colon, bytes out of range)
    i = head.find(b"\r\n")
    if i >= 0:
        check_block(head[i:])


BROWSER_BLOCK = (b"\r\nHost: hub.example.org\r\nConnection: keep-alive\r\nUser-Agent: Mozilla/5.0"
                 b"\r\nAccept: application/json, */*\r\nCookie: jupyterhub-user-a=2|1:0|abc; _xsrf=2|x"
                 b"\r\nAccept-Language: en-GB,en;q=0.9\r\n\r\n")


def test_a_new_path_of_a_known_block_is_decided_from_the_memo(monkeypatch):
    fastpath.set_enabled(True)
    decided = []
    real = fastpath.field_block
    monkeypatch.setattr(fastpath, "field_block", lambda b: decided.append(b) or real(b))
    targets = [b"/user/a/api/kernels?%d" % i for i in range(50)]
    for t in targets:
        req, _ = parser.parse_request_head(b"GET " + t + b" HTTP/1.1" + BROWSER_BLOCK, 65536)
        assert (req.target, req.host, req.connection, req.keep_alive) == (
            t, b"hub.example.org", b"keep-alive", True)
    assert decided == [BROWSER_BLOCK]  # decided once, then remembered


def test_block_memo_is_bounded_keeps_learning_and_skips_big_blocks():
    fastpath.set_enabled(True)
    memo = fastpath.FIELD_BLOCKS
    for i in range(3 * memo.size):
        block = b"\r\nHost: a\r\nCookie: u=%d\r\n\r\n" % i
        req, _ = parser.parse_request_head(b"GET / HTTP/1.1" + block, 65536)
        assert req.host == b"a"
    assert len(memo) <= memo.size
    assert block in memo
    big = b"\r\nHost: a\r\nCookie: " + b"c" * fastpath.FIELD_BLOCK_MEMO_MAX + b"\r\n\r\n"
    assert parser.parse_request_head(b"GET / HTTP/1.1" + big, 65536)[0].host == b"a"
    assert big not in memo
    fastpath.set_enabled(False)
    assert len(memo) == 0
