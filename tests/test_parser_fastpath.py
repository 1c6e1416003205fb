"""The parser's shortcuts give the answers of the long way round.

parse_request_head / parse_response_head validate a whole head with one match, pick
the framing fields with one scan, split the other fields only when asked, skip the
copy when the buffer is exactly one head, remember Host values that were valid, and
read a plain Content-Length without the list rules. Each test pins one shortcut
against the general behaviour.
"""

from __future__ import annotations

import pytest

from cfproxy.http import fastpath
from cfproxy.http.parser import HTTPError, parse_request_head, parse_response_head

MAX = 64 * 1024
HEAD = (b"GET /a?b=1 HTTP/1.1\r\nHost: Example.org:8080\r\nX-A:  spaced value \t\r\n"
        b"connection: Keep-Alive, Upgrade\r\nupgrade: WebSocket\r\nX-Empty:\r\n\r\n")


def fields(head) -> tuple:
    return (head.method, head.target, head.version, head.headers, head.content_length,
            head.chunked, head.keep_alive, head.upgrade, head.host, head.expect_continue,
            head.connection, head.raw)


def test_same_head_from_bytes_bytearray_leading_crlf_and_with_a_tail():
    whole, n = parse_request_head(HEAD, MAX)
    assert n == len(HEAD) and whole.raw is HEAD  # no copy of an exact buffer
    for buf, consumed in [(bytearray(HEAD), len(HEAD)), (b"\r\n\r\n" + HEAD, len(HEAD) + 4),
                          (HEAD + b"GET / HTTP/1.1\r\n", len(HEAD))]:
        head, n = parse_request_head(buf, MAX)
        assert n == consumed and fields(head) == fields(whole)
        assert type(head.raw) is bytes


def test_lazy_headers_are_every_field_line_with_ows_trimmed():
    head, _ = parse_request_head(HEAD, MAX)
    assert head.headers == [(b"Host", b"Example.org:8080"), (b"X-A", b"spaced value"),
                            (b"connection", b"Keep-Alive, Upgrade"), (b"upgrade", b"WebSocket"),
                            (b"X-Empty", b"")]
    assert head.upgrade == b"websocket" and head.keep_alive
    head, _ = parse_request_head(b"GET / HTTP/1.0\r\n\r\n", MAX)
    assert head.headers == [] and head.host is None


def test_framing_fields_are_found_whatever_their_case_and_position():
    head, _ = parse_request_head(
        b"POST /u HTTP/1.1\r\nX-Content-Length: 9\r\nHOST: h\r\nCONTENT-LENGTH: 5\r\n"
        b"EXPECT: 100-Continue\r\n\r\n", MAX)
    assert head.content_length == 5 and head.host == b"h" and head.expect_continue
    # a name that only ends like a framing field is not one
    head, _ = parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\nX-Host: evil\r\n\r\n", MAX)
    assert head.host == b"h"


def test_an_invalid_host_is_refused_after_many_valid_ones():
    memo = fastpath.VALID_HOSTS
    for i in range(memo.size + 10):  # fills the memo, which keeps learning
        parse_request_head(b"GET / HTTP/1.1\r\nHost: h%d.example\r\n\r\n" % i, MAX)
    assert len(memo) <= memo.size
    for bad in (b"a b", b"x/y", b"[::1", b"h:8o"):
        with pytest.raises(HTTPError) as e:
            parse_request_head(b"GET / HTTP/1.1\r\nHost: " + bad + b"\r\n\r\n", MAX)
        assert e.value.status == 400
        assert bad not in memo


@pytest.mark.parametrize("head,status", [
    (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
    (b"GET / HTTP/2.0\r\nBad Field: x\r\n\r\n", 505),  # the version is judged first
    (b"GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\n x: folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX-A : b\r\n\r\n", 400),
    (b"CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n", 501),
])
def test_a_head_the_single_match_refuses_gets_the_step_by_step_error(head, status):
    with pytest.raises(HTTPError) as e:
        parse_request_head(head, MAX)
    assert e.value.status == status


@pytest.mark.parametrize("value,expected", [
    (b"2", 2), (b"007", 7), (b"5, 5", 5), (b"123456789012345678", 123456789012345678),
])
def test_response_content_length_plain_and_list_forms(value, expected):
    resp, _ = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\n", MAX)
    assert resp.content_length == expected


@pytest.mark.parametrize("value", [b"1234567890123456789", b"+5", b"5 5", b"", b"0x5", b"\xd9\xa3"])
def test_response_content_length_that_is_no_plain_number_is_refused(value):
    with pytest.raises(HTTPError) as e:
        parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\n", MAX)
    assert e.value.status == 502


def test_response_reports_its_first_date_and_splits_headers_lazily():
    data = (b"HTTP/1.1 200 OK\r\nDATE: Sun, 06 Nov 1994 08:49:37 GMT\r\nX-Date: no\r\n"
            b"Date: second\r\nContent-Length: 0\r\n\r\n")
    resp, n = parse_response_head(data + b"next", MAX)
    assert n == len(data) and resp.date == b"Sun, 06 Nov 1994 08:49:37 GMT"
    assert resp.headers[1] == (b"X-Date", b"no") and len(resp.headers) == 4
    resp, _ = parse_response_head(b"HTTP/1.1 204 No Content\r\n\r\n", MAX)
    assert resp.date is None and resp.headers == []
