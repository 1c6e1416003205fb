"""Bad input to the REST API is a 4xx, and nothing is stored that cannot be used (issue 13.3).

- route targets: only http, https, http+unix and unix+http URLs with a host (or socket path)
  and no whitespace or control characters anywhere; else 400 with the reason;
- route paths whose `.`/`..` segments come from decoding (`%2F..%2F`) mean the same route as
  the raw ones do, for POST, GET, DELETE and proxied requests (reference 2.5);
- methods the API does not serve: 405 with `Allow`.
"""

from __future__ import annotations

import http.client
import json

import pytest

from tests.api_client import call, post
from tests.support.proxy_process import ProxyProcess

DEFAULT = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def px(backend):
    with ProxyProcess("--default-target", DEFAULT) as p:
        yield p


def routes(px) -> dict:
    r = call(px.api_port, "GET", "/api/routes")
    assert r.status == 200
    return r.json()


def proxied(px, path: str) -> dict | int:
    """The echo backend's view of a proxied GET, or the status when it did not reach it."""
    conn = http.client.HTTPConnection("127.0.0.1", px.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        r = conn.getresponse()
        body = r.read()
        return json.loads(body) if r.status == 200 else r.status
    finally:
        conn.close()


# --- targets -------------------------------------------------------------------------------

@pytest.mark.parametrize("target, reason", [
    ("http://127.0.0.1:9000/a b", "whitespace or a control character"),
    ("http://127.0.0.1:9000/x HTTP/1.1\r\nX-Injected: 1", "whitespace or a control character"),
    ("http://127.0.0.1:9000/\tx", "whitespace or a control character"),
    (" http://127.0.0.1:9000", "whitespace or a control character"),
    ("http://127.0.0.1:9000/\x00", "whitespace or a control character"),
    ("http://127.0.0.1:9000/\x7f", "whitespace or a control character"),
    ("http://127.0.0.1:9000/\u00a0", "whitespace or a control character"),
    ("http://127.0.0.1:9000/\u2028", "whitespace or a control character"),
    ("ftp://127.0.0.1:9000", "unsupported target scheme"),
    ("javascript:alert(1)", "unsupported target scheme"),
    ("not a url", "whitespace or a control character"),
    ("127.0.0.1:9000", "unsupported target scheme"),
    ("//127.0.0.1:9000", "unsupported target scheme"),
    ("http://", "has no host"),
    ("http:///path", "has no host"),
    ("https://:443", "has no host"),
    ("http://127.0.0.1:99999", "Port out of range"),
    ("http+unix://", "has no socket path"),
    ("", "non-empty"),
])
def test_unusable_target_is_400_with_the_reason_and_not_stored(px, target, reason):
    r = post(px.api_port, "/api/routes/bad-target", {"target": target})
    assert r.status == 400
    assert r.text.startswith("Bad target: ") and reason in r.text
    assert not any(c in r.text for c in "\r\n\t\x00")  # shown escaped
    assert "/bad-target" not in routes(px)


@pytest.mark.parametrize("target", [
    "http://127.0.0.1:9000", "https://example.org/base?x=1", "HTTP://127.0.0.1:9000",
    "http://[::1]:9000", "http+unix://%2Ftmp%2Fsock", "unix+http://%2Ftmp%2Fsock/x",
    "http://127.0.0.1:9000/p%20q",
])
def test_usable_target_is_stored_as_given(px, target):
    assert post(px.api_port, "/api/routes/good-target", {"target": target}).status == 201
    assert routes(px)["/good-target"]["target"] == target


def test_a_target_with_a_space_never_reaches_the_upstream_request_line(px, backend):
    r = post(px.api_port, "/api/routes/inject", {"target": backend.url + "/x HTTP/1.1\r\nX-A: 1"})
    assert r.status == 400
    assert proxied(px, "/inject/y") == 503  # the default target (nothing listens there)


# --- dot segments ------------------------------------------------------------------------------

@pytest.mark.parametrize("posted, key", [
    ("/dots/a/%2e%2e/b1", "/dots/b1"),  # WHATWG resolves %2e%2e (reference 2.5)
    ("/dots/a/../b1r", "/dots/b1r"),  # and raw ones
    ("/dots/c/./d", "/dots/c/d"),
    ("/dots/a%2F..%2Fb2", "/dots/b2"),  # decoding made the "..": resolved the same way
    ("/dots/a%2F%2e%2e%2Fb3", "/dots/b3"),
    ("/dots/x/..%2F..%2F..%2F..%2Fg", "/g"),  # never above the root
    ("/dots/e%2F.%2Ff", "/dots/e/f"),
    ("/dots/l/%252e%252e/m", "/dots/l/%2e%2e/m"),  # a decoded "%2e" is text, not a dot
])
def test_dot_segments_are_resolved_for_post_get_and_delete(px, posted, key):
    assert post(px.api_port, "/api/routes" + posted, {"target": DEFAULT}).status == 201
    listed = routes(px)
    assert key in listed
    assert not any(seg in (".", "..") for k in listed for seg in k.split("/"))
    got = call(px.api_port, "GET", "/api/routes" + posted)
    assert got.status == 200 and got.json()["target"] == DEFAULT
    assert call(px.api_port, "DELETE", "/api/routes" + posted).status == 204
    assert key not in routes(px)


def test_a_proxied_request_finds_the_route_its_dotted_path_names(px, backend):
    assert post(px.api_port, "/api/routes/dotted%2F..%2Fuser%2Fdot", {"target": backend.url}).status == 201
    assert "/user/dot" in routes(px)
    # the same spellings reach it as proxied requests; the path sent on is the one received
    for path in ("/user/dot/x", "/zz/%2e%2e/user/dot/x", "/zz%2F..%2Fuser/dot/x"):
        seen = proxied(px, path)
        assert isinstance(seen, dict), (path, seen)
        assert seen["path"] in ("/user/dot/x", path)


# --- methods ----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["PUT", "PATCH", "OPTIONS", "HEAD", "TRACE"])
def test_other_methods_are_405_with_allow(px, method):
    r = call(px.api_port, method, "/api/routes/x", token=None)
    assert r.status == 405
    assert r.headers["allow"] == "GET, POST, DELETE"


# --- non-ASCII targets: usable, as CHP uses them ------------------------------------------------

def test_a_non_ascii_target_path_and_query_are_sent_percent_encoded(px, backend):
    """CHP (WHATWG URL) sends UTF-8 percent-escapes; a raw non-ASCII target was a 500 here."""
    assert post(px.api_port, "/api/routes/intl", {"target": backend.url + "/é?q=ü"}).status == 201
    assert routes(px)["/intl"]["target"] == backend.url + "/é?q=ü"  # listed as posted
    seen = proxied(px, "/intl/x")
    assert isinstance(seen, dict), seen
    assert seen["url"] == "/%C3%A9/intl/x?q=%C3%BC"


def test_an_internationalised_target_host_is_used_in_its_ascii_form():
    from cfproxy.routing.target import parse_target

    t = parse_target("http://bücher.example:8080/p")
    assert (t.host, t.host_header) == ("xn--bcher-kva.example", "xn--bcher-kva.example:8080")
