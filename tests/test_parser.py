"""cfproxy.http.parser: request/response heads and chunked framing, fed as bytes (no sockets)."""

from __future__ import annotations

import pytest

from cfproxy.http.parser import (
    ChunkedReader,
    HTTPError,
    RequestHead,
    parse_request_head,
    parse_response_head,
)

MAX = 64 * 1024

BROWSER_GET = (
    b"GET /user/alice/lab?reset HTTP/1.1\r\n"
    b"Host: hub.example.org\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n"
    b"Accept: text/html,application/xhtml+xml,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: jupyterhub-session-id=abc; _xsrf=2|x|y|z\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"Sec-Fetch-Dest: document\r\n"
    b"Sec-Fetch-Mode: navigate\r\n"
    b"\r\n"
)


def parse(data: bytes) -> RequestHead:
    result = parse_request_head(data, MAX)
    assert result is not None
    head, consumed = result
    assert consumed == len(data)
    return head


def rejects(data: bytes, status: int, max_size: int = MAX) -> str:
    with pytest.raises(HTTPError) as info:
        parse_request_head(data, max_size)
    assert info.value.status == status, info.value
    return info.value.message


def req(*fields: bytes, line: bytes = b"GET / HTTP/1.1") -> bytes:
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


# --- acceptance ------------------------------------------------------------


def test_browser_get_is_parsed_with_fields_in_order_and_names_as_received():
    head = parse(BROWSER_GET)
    assert head.method == b"GET"
    assert head.target == b"/user/alice/lab?reset"
    assert head.version == 11
    assert head.headers[0] == (b"Host", b"hub.example.org")
    assert head.headers[5] == (b"Connection", b"keep-alive")
    assert len(head.headers) == 10
    assert head.host == b"hub.example.org"
    assert head.keep_alive is True
    assert head.content_length is None and head.chunked is False
    assert head.upgrade is None and head.expect_continue is False
    assert head.connection == b"keep-alive"
    assert head.raw == BROWSER_GET


def test_values_lose_surrounding_whitespace_but_keep_inner_whitespace():
    head = parse(req(b"Host: h", b"X-A:\t  a  b \t", b"X-Empty:", b"X-Sp:   "))
    assert head.headers[1:] == [(b"X-A", b"a  b"), (b"X-Empty", b""), (b"X-Sp", b"")]


def test_obs_text_in_values_is_accepted():
    head = parse(req(b"Host: h", b"X-Name: caf\xc3\xa9"))
    assert head.headers[1] == (b"X-Name", b"caf\xc3\xa9")


def test_http10_request_without_host_is_accepted_and_closes():
    head = parse(b"GET /x HTTP/1.0\r\n\r\n")
    assert head.version == 10 and head.host is None and head.keep_alive is False
    assert head.headers == []


def test_http10_keep_alive_only_when_asked():
    assert parse(req(b"Connection: Keep-Alive", line=b"GET / HTTP/1.0")).keep_alive is True


def test_http11_connection_close_is_not_keep_alive():
    assert parse(req(b"Host: h", b"Connection: close")).keep_alive is False
    assert parse(req(b"Host: h", b"Connection: foo, CLOSE")).keep_alive is False


def test_content_length_body():
    head = parse(req(b"Host: h", b"Content-Length: 42", line=b"POST /api HTTP/1.1"))
    assert head.content_length == 42 and head.chunked is False


def test_chunked_body_case_insensitive():
    head = parse(req(b"Host: h", b"Transfer-Encoding: Chunked", line=b"POST / HTTP/1.1"))
    assert head.chunked is True and head.content_length is None


def test_websocket_upgrade_value_lower_cased():
    head = parse(req(b"Host: h", b"Connection: keep-alive, Upgrade", b"Upgrade: WebSocket"))
    assert head.upgrade == b"websocket"


def test_upgrade_without_connection_token_is_not_an_upgrade():
    assert parse(req(b"Host: h", b"Upgrade: websocket")).upgrade is None
    head = parse(req(b"Connection: upgrade", b"Upgrade: websocket", line=b"GET / HTTP/1.0"))
    assert head.upgrade is None  # RFC 9110 7.8: ignored in HTTP/1.0


def test_expect_100_continue_on_http11_only():
    assert parse(req(b"Host: h", b"Expect: 100-Continue")).expect_continue is True
    head = parse(req(b"Expect: 100-continue", line=b"PUT / HTTP/1.0"))
    assert head.expect_continue is False


def test_several_connection_fields_are_joined():
    head = parse(req(b"Host: h", b"Connection: keep-alive", b"Connection: close"))
    assert head.connection == b"keep-alive, close" and head.keep_alive is False


def test_leading_empty_lines_are_skipped():
    data = b"\r\n\r\n" + req(b"Host: h")
    head, consumed = parse_request_head(data, MAX)
    assert consumed == len(data) and head.raw == data[4:]


def test_absolute_form_and_asterisk_targets():
    assert (
        parse(req(b"Host: h", line=b"GET http://h/abs?q=1 HTTP/1.1")).target == b"http://h/abs?q=1"
    )
    assert parse(req(b"Host: h", line=b"OPTIONS * HTTP/1.1")).target == b"*"


def test_ipv6_host_with_port_is_accepted():
    assert parse(req(b"Host: [::1]:8000")).host == b"[::1]:8000"


def test_empty_host_is_accepted():
    assert parse(req(b"Host:")).host == b""


def test_incomplete_head_needs_more():
    assert parse_request_head(b"", MAX) is None
    assert parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\n", MAX) is None
    assert parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\n\r", MAX) is None


def test_bytearray_buffer_gives_bytes_fields():
    head, consumed = parse_request_head(bytearray(BROWSER_GET + b"tail"), MAX)
    assert consumed == len(BROWSER_GET)
    assert type(head.raw) is bytes and type(head.method) is bytes


def test_pipelined_heads_in_one_buffer():
    first = req(b"Host: h", b"Content-Length: 3", line=b"POST /a HTTP/1.1") + b"abc"
    buf = first + req(b"Host: h", line=b"GET /b HTTP/1.1") + b"GET /c HTTP/1.1\r\n"
    head, n = parse_request_head(buf, MAX)
    assert head.target == b"/a" and buf[n : n + head.content_length] == b"abc"
    buf = buf[n + 3 :]
    head, n = parse_request_head(buf, MAX)
    assert head.target == b"/b"
    buf = buf[n:]
    assert parse_request_head(buf, MAX) is None
    head, n = parse_request_head(buf + b"Host: h\r\n\r\n", MAX)
    assert head.target == b"/c"


@pytest.mark.parametrize("data", [BROWSER_GET, b"\r\n" + req(b"Host: h", b"X: y")])
def test_head_split_at_every_offset_parses_the_same(data):
    whole, n = parse_request_head(data, MAX)
    for cut in range(len(data)):
        assert parse_request_head(data[:cut], MAX) is None, cut
        head, consumed = parse_request_head(data[:cut] + data[cut:], MAX)
        assert consumed == n
    assert head.headers == whole.headers and head.target == whole.target


def test_bad_head_is_rejected_as_soon_as_the_bad_byte_arrives_or_at_the_end():
    data = req(b"Host: h", b"Bad\nField: x")
    for cut in range(len(data) + 1):
        try:
            assert parse_request_head(data[:cut], MAX) is None
        except HTTPError as e:
            assert e.status == 400
            break
    else:
        pytest.fail("never rejected")


# --- rejections: 400 --------------------------------------------------------

BAD_400 = {
    "obs-fold": req(b"Host: h", b"X-A: a", b" folded"),
    "obs-fold tab": req(b"Host: h", b"X-A: a", b"\tfolded"),
    "first line folded": b"GET / HTTP/1.1\r\n Host: h\r\n\r\n",
    "bare LF terminator": b"GET / HTTP/1.1\nHost: h\n\n",
    "bare LF in one field": req(b"Host: h", b"X-A: a\nX-B: b"),
    "bare CR in value": req(b"Host: h", b"X-A: a\rb"),
    "bare CR terminator": b"GET / HTTP/1.1\rHost: h\r\n\r\n",
    "NUL in value": req(b"Host: h", b"X-A: a\x00b"),
    "CTL in value": req(b"Host: h", b"X-A: a\x01b"),
    "DEL in value": req(b"Host: h", b"X-A: a\x7fb"),
    "VT in value": req(b"Host: h", b"X-A: a\x0bb"),
    "space before colon": req(b"Host: h", b"X-A : a"),
    "tab before colon": req(b"Host: h", b"X-A\t: a"),
    "no colon": req(b"Host: h", b"X-A a"),
    "empty name": req(b"Host: h", b": a"),
    "bad name char": req(b"Host: h", b"X(A): a"),
    "non-ascii name": req(b"Host: h", b"X\xc3\xa9: a"),
    "bad method char": req(b"Host: h", line=b"G(T / HTTP/1.1"),
    "empty method": req(b"Host: h", line=b" / HTTP/1.1"),
    "space in target": req(b"Host: h", line=b"GET /a b HTTP/1.1"),
    "non-ascii target": req(b"Host: h", line=b"GET /caf\xc3\xa9 HTTP/1.1"),
    "double space": req(b"Host: h", line=b"GET  / HTTP/1.1"),
    "trailing space": req(b"Host: h", line=b"GET / HTTP/1.1 "),
    "lower-case version": req(b"Host: h", line=b"GET / http/1.1"),
    "garbage line": req(b"Host: h", line=b"hello"),
    "missing host": req(b"X-A: a"),
    "missing host no fields": b"GET / HTTP/1.1\r\n\r\n",
    "duplicate host": req(b"Host: a", b"Host: a"),
    "duplicate host case": req(b"Host: a", b"host: b"),
    "host with space": req(b"Host: a b"),
    "host with slash": req(b"Host: a/b"),
    "host with at": req(b"Host: u@a"),
    "CL not a number": req(b"Host: h", b"Content-Length: abc"),
    "CL negative": req(b"Host: h", b"Content-Length: -1"),
    "CL plus sign": req(b"Host: h", b"Content-Length: +5"),
    "CL list": req(b"Host: h", b"Content-Length: 1, 2"),
    "CL identical list": req(b"Host: h", b"Content-Length: 5, 5"),
    "CL twice identical": req(b"Host: h", b"Content-Length: 5", b"Content-Length: 5"),
    "CL twice conflicting": req(b"Host: h", b"Content-Length: 5", b"Content-Length: 6"),
    "CL empty": req(b"Host: h", b"Content-Length:"),
    "CL hex": req(b"Host: h", b"Content-Length: 0x5"),
    "CL huge": req(b"Host: h", b"Content-Length: " + b"9" * 30),
    "CL then TE (CL.TE)": req(b"Host: h", b"Content-Length: 5", b"Transfer-Encoding: chunked"),
    "TE then CL (TE.CL)": req(b"Host: h", b"Transfer-Encoding: chunked", b"Content-Length: 5"),
    "TE in HTTP/1.0": req(b"Transfer-Encoding: chunked", line=b"POST / HTTP/1.0"),
    "TE with obs-fold": req(b"Host: h", b"Transfer-Encoding:", b" chunked"),
    "TE name with space": req(b"Host: h", b"Transfer-Encoding : chunked"),
    "TLS handshake": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
}


@pytest.mark.parametrize("data", BAD_400.values(), ids=BAD_400.keys())
def test_malformed_request_is_rejected_with_400(data):
    rejects(data, 400)


# --- rejections: 501, 505, 414, 431 -----------------------------------------

BAD_501 = {
    "gzip, chunked": req(b"Host: h", b"Transfer-Encoding: gzip, chunked"),
    "chunked, gzip": req(b"Host: h", b"Transfer-Encoding: chunked, gzip"),
    "chunked, chunked": req(b"Host: h", b"Transfer-Encoding: chunked, chunked"),
    "identity": req(b"Host: h", b"Transfer-Encoding: identity"),
    "xchunked": req(b"Host: h", b"Transfer-Encoding: xchunked"),
    "chunked;": req(b"Host: h", b"Transfer-Encoding: chunked;"),
    "empty": req(b"Host: h", b"Transfer-Encoding:"),
    "chunked twice": req(b"Host: h", b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
    "CONNECT": req(b"Host: h:443", line=b"CONNECT h:443 HTTP/1.1"),
}


@pytest.mark.parametrize("data", BAD_501.values(), ids=BAD_501.keys())
def test_unsupported_transfer_coding_or_connect_is_rejected_with_501(data):
    rejects(data, 501)


def test_leading_whitespace_in_transfer_encoding_value_is_ows_and_means_chunked():
    # ` chunked` after the colon is optional whitespace, not a different coding
    assert parse(req(b"Host: h", b"Transfer-Encoding:   chunked  ")).chunked is True


@pytest.mark.parametrize(
    "line",
    [b"GET / HTTP/2.0", b"GET / HTTP/1.2", b"GET / HTTP/0.9", b"GET / HTTP/3.0"],
)
def test_unsupported_http_version_is_rejected_with_505(line):
    rejects(req(b"Host: h", line=line), 505)


def test_request_line_without_http_version_is_a_bad_request():
    # issue 13: a client error (400, as Node's parser), not 505
    assert "without HTTP version" in rejects(req(b"Host: h", line=b"GET /"), 400)


def test_request_line_longer_than_limit_is_rejected_with_414():
    rejects(b"GET /" + b"a" * 200, 414, max_size=100)
    rejects(b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414, max_size=100)


def test_head_larger_than_limit_is_rejected_with_431():
    fields = [b"X-%d: %s" % (i, b"v" * 50) for i in range(10)]
    data = req(b"Host: h", *fields)
    rejects(data, 431, max_size=len(data) - 1)
    assert parse_request_head(data, len(data)) is not None
    rejects(data[:-2], 431, max_size=len(data) - 10)  # still incomplete, already too big


def test_head_exactly_at_limit_is_accepted():
    data = req(b"Host: h")
    assert parse_request_head(data, len(data)) is not None


def test_error_messages_name_the_problem():
    assert "Content-Length" in rejects(req(b"Host: h", b"Content-Length: 1, 2"), 400)
    assert "fold" in rejects(BAD_400["obs-fold"], 400)
    assert "colon" in rejects(BAD_400["space before colon"], 400)
    assert "Host" in rejects(BAD_400["missing host"], 400)


# --- responses ---------------------------------------------------------------


def resp(line: bytes, *fields: bytes) -> bytes:
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


def parse_resp(data: bytes):
    head, consumed = parse_response_head(data, MAX)
    assert consumed == len(data)
    return head


def test_response_with_content_length_keeps_connection():
    head = parse_resp(resp(b"HTTP/1.1 200 OK", b"Content-Type: text/plain", b"Content-Length: 5"))
    assert (head.status, head.reason, head.version) == (200, b"OK", 11)
    assert head.content_length == 5 and head.keep_alive is True
    assert head.headers[0] == (b"Content-Type", b"text/plain")


def test_response_chunked_after_other_codings_is_chunked():
    head = parse_resp(resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: gzip, chunked"))
    assert head.chunked is True and head.keep_alive is True


def test_response_without_length_is_close_delimited():
    head = parse_resp(resp(b"HTTP/1.1 200 OK", b"Content-Type: text/event-stream"))
    assert head.content_length is None and head.chunked is False and head.keep_alive is False
    head = parse_resp(resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: gzip"))
    assert head.chunked is False and head.keep_alive is False


def test_bodyless_statuses_keep_connection_without_length():
    for line in (
        b"HTTP/1.1 204 No Content",
        b"HTTP/1.1 304 Not Modified",
        b"HTTP/1.1 100 Continue",
    ):
        assert parse_resp(resp(line)).keep_alive is True


def test_switching_protocols_response():
    head = parse_resp(
        resp(b"HTTP/1.1 101 Switching Protocols", b"Upgrade: websocket", b"Connection: Upgrade")
    )
    assert head.status == 101 and head.connection == b"Upgrade"


def test_response_leniency_real_servers_need():
    assert parse_resp(resp(b"HTTP/1.1 200", b"Content-Length: 0")).reason == b""
    assert parse_resp(resp(b"HTTP/1.1 200 ", b"Content-Length: 0")).reason == b""
    head = parse_resp(resp(b"HTTP/1.1 200 OK", b"Set-Cookie: a=\x01b", b"Content-Length: 5, 5"))
    assert head.content_length == 5
    head = parse_resp(resp(b"HTTP/1.1 200 OK", b"Content-Length: 7", b"Content-Length: 7"))
    assert head.content_length == 7


def test_http10_response_closes_unless_keep_alive():
    assert parse_resp(resp(b"HTTP/1.0 200 OK", b"Content-Length: 1")).keep_alive is False
    head = parse_resp(resp(b"HTTP/1.0 200 OK", b"Content-Length: 1", b"Connection: keep-alive"))
    assert head.keep_alive is True and head.version == 10


def test_response_connection_close():
    head = parse_resp(resp(b"HTTP/1.1 200 OK", b"Content-Length: 1", b"Connection: close"))
    assert head.keep_alive is False


BAD_502 = {
    "CL and TE": resp(b"HTTP/1.1 200 OK", b"Content-Length: 5", b"Transfer-Encoding: chunked"),
    "conflicting CL": resp(b"HTTP/1.1 200 OK", b"Content-Length: 5", b"Content-Length: 6"),
    "conflicting CL list": resp(b"HTTP/1.1 200 OK", b"Content-Length: 5, 6"),
    "bad CL": resp(b"HTTP/1.1 200 OK", b"Content-Length: +5"),
    "garbage status line": resp(b"HTTP/1.1 OK"),
    "not http": resp(b"SSH-2.0-OpenSSH"),
    "HTTP/2": resp(b"HTTP/2.0 200 OK"),
    "status 099": resp(b"HTTP/1.1 099 Low"),
    "NUL in value": resp(b"HTTP/1.1 200 OK", b"X: a\x00b"),
    "space before colon": resp(b"HTTP/1.1 200 OK", b"Content-Length : 5"),
    "obs-fold": resp(b"HTTP/1.1 200 OK", b"X: a", b" b"),
    "bare LF": b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    "TE in HTTP/1.0": resp(b"HTTP/1.0 200 OK", b"Transfer-Encoding: chunked"),
}


@pytest.mark.parametrize("data", BAD_502.values(), ids=BAD_502.keys())
def test_malformed_response_is_rejected_with_502(data):
    with pytest.raises(HTTPError) as info:
        parse_response_head(data, MAX)
    assert info.value.status == 502


def test_response_head_too_large_is_502():
    with pytest.raises(HTTPError) as info:
        parse_response_head(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 200, 100)
    assert info.value.status == 502


def test_response_split_at_every_offset_parses_the_same():
    data = resp(b"HTTP/1.1 200 OK", b"Content-Type: text/html", b"Content-Length: 12")
    for cut in range(len(data)):
        assert parse_response_head(data[:cut], MAX) is None
    assert parse_response_head(data + b"hello", MAX)[1] == len(data)


# --- chunked bodies ------------------------------------------------------------

CHUNKED = b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"


def test_chunked_body_end_is_found_and_rest_left():
    r = ChunkedReader()
    assert r.feed(CHUNKED + b"GET / HTTP/1.1") == len(CHUNKED)
    assert r.done and r.feed(b"more") == 0


def test_chunked_body_split_at_every_offset():
    data = CHUNKED + b"NEXT"
    for cut in range(len(data) + 1):
        r = ChunkedReader()
        first = r.feed(data[:cut])
        if first >= 0:
            assert first == len(CHUNKED) and cut >= len(CHUNKED)
            continue
        assert r.feed(data[cut:]) == len(CHUNKED) - cut


def test_chunked_body_fed_byte_by_byte():
    r = ChunkedReader()
    for i in range(len(CHUNKED) - 1):
        assert r.feed(CHUNKED[i : i + 1]) == -1
    assert r.feed(CHUNKED[-1:] + b"x") == 1


def test_chunked_last_chunk_without_trailers_and_many_zeros():
    r = ChunkedReader()
    assert r.feed(b"000\r\n\r\n") == 7


def test_big_chunk_is_counted_not_scanned():
    r = ChunkedReader()
    assert r.feed(b"100000\r\n") == -1
    piece = b"\n" * 65536  # LF bytes inside data must not confuse the reader
    for _ in range(16):
        assert r.feed(piece) == -1
    assert r.feed(b"\r\n0\r\n\r\n") == 7


def test_chunked_reader_accepts_bytearray():
    body = b"1\r\na\r\n0\r\n\r\n"
    assert ChunkedReader().feed(bytearray(body + b"x")) == len(body)


BAD_CHUNKS = {
    "non-hex size": b"g\r\n",
    "empty size": b"\r\n",
    "0x prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
    "negative": b"-1\r\n",
    "plus sign": b"+5\r\nhello\r\n",
    "leading space": b" 5\r\nhello\r\n",
    "trailing space without ext": b"5 \r\nhello\r\n",
    "space inside size": b"5 5\r\n",
    "huge size": b"ffffffffffffffffff\r\n",
    "size with bare LF": b"5\nhello\r\n",
    "data without CRLF": b"5\r\nhelloX\r\n",
    "data then LF only": b"5\r\nhello\n0\r\n\r\n",
    "data then CR then junk": b"5\r\nhello\rX",
    "CTL in extension": b"5;a=\x01\r\nhello\r\n",
    "bad trailer": b"0\r\nBad Trailer: x\r\n\r\n",
    "trailer obs-fold": b"0\r\nX: a\r\n b\r\n\r\n",
    "trailer bare LF": b"0\r\nX: a\n\r\n",
}


@pytest.mark.parametrize("data", BAD_CHUNKS.values(), ids=BAD_CHUNKS.keys())
def test_bad_chunk_framing_is_rejected_with_400(data):
    with pytest.raises(HTTPError) as info:
        ChunkedReader().feed(data)
    assert info.value.status == 400


@pytest.mark.parametrize("data", BAD_CHUNKS.values(), ids=BAD_CHUNKS.keys())
def test_bad_chunk_framing_is_rejected_when_fed_byte_by_byte(data):
    r = ChunkedReader()
    with pytest.raises(HTTPError):
        for i in range(len(data)):
            r.feed(data[i : i + 1])
        r.feed(b"\r\n")  # a reader still waiting must fail once the line ends


def test_endless_chunk_size_line_is_rejected():
    r = ChunkedReader()
    with pytest.raises(HTTPError):
        for _ in range(100):
            r.feed(b"1;" + b"a" * 100)


def test_endless_trailers_are_rejected():
    r = ChunkedReader()
    r.feed(b"0\r\n")
    with pytest.raises(HTTPError):
        for _ in range(1000):
            r.feed(b"X-T: " + b"a" * 100 + b"\r\n")


# --- smuggling shapes on a keep-alive stream ------------------------------------


def test_cl_te_smuggling_never_yields_a_second_request():
    # A front end honouring CL would see the smuggled "GPOST" as body.
    data = (
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGPOST / HTTP/1.1\r\n\r\n"
    )
    rejects(data, 400)


def test_te_cl_smuggling_never_yields_a_second_request():
    data = (
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"
    )
    rejects(data, 400)


def test_head_ending_in_bare_lf_is_rejected_without_waiting():
    # no CRLFCRLF will ever come: answer now rather than at the header timeout
    rejects(b"GET / HTTP/1.1\r\nHost: h\n\n", 400)
    rejects(b"GET / HTTP/1.1\r\nHost: h\n\r\n", 400)


@pytest.mark.parametrize("target", [b"foo", b"a:b", b"http:/x", b"\\a", b"?q", b"#f", b"**"])
def test_request_target_in_no_request_form_is_rejected_as_chp_does(target):
    # observed: CHP (Node's parser) answers 400 to each of these
    rejects(req(b"Host: h", line=b"GET " + target + b" HTTP/1.1"), 400)


@pytest.mark.parametrize("target", [b"/a\\b", b"//x/y", b"/a#f", b"foo://h/x", b"HTTP://h/x"])
def test_request_target_forms_chp_accepts_are_accepted(target):
    assert parse(req(b"Host: h", line=b"GET " + target + b" HTTP/1.1")).target == target


def test_endless_leading_empty_lines_hit_the_head_limit():
    # skipped empty lines are still buffered by the caller: they must count
    rejects(b"\r\n" * 100, 400, max_size=100)
    rejects(b"\r\n" * 30 + req(b"Host: h"), 431, max_size=80)
