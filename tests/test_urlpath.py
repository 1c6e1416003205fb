"""cfproxy.http.urlpath: the routing key (reference 3.1) and the forwarded path (3.4).

Expected values were produced with CHP 5.3.0's own machinery (Node's WHATWG
URL + decodeURIComponent for the key; http-proxy-3's getPath/urlJoin for the
forwarded path) on this machine, then written down here.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cfproxy.http.urlpath import MalformedPath, forward_path, routing_path

# --- 3.1 routing key ------------------------------------------------------------

# (request-target, decodeURIComponent(new URL(target, "http://example.com").pathname))
WHATWG_KEYS = [
    (b"/", "/"),
    (b"/t1", "/t1"),
    (b"/t1/", "/t1/"),
    (b"/t1//a", "/t1//a"),
    (b"/t1/./a", "/t1/a"),
    (b"/t1/../t2/a", "/t2/a"),
    (b"/t1/%2e/a", "/t1/a"),
    (b"/t1/%2E%2e/a", "/a"),
    (b"/t1/.%2e/x", "/x"),
    (b"/a/..", "/"),
    (b"/a/.", "/a/"),
    (b"/a/b/..", "/a/"),
    (b"/..", "/"),
    (b"/../a", "/a"),
    (b"/./", "/"),
    (b"/a\\b", "/a/b"),
    (b"\\a\\b", "/a/b"),
    (b"/a\\..\\b", "/b"),
    (b"//x/t1/y", "/t1/y"),
    (b"\\\\x/t1/y", "/t1/y"),
    (b"/\\x/t1/y", "/t1/y"),
    (b"\\/x/t1/y", "/t1/y"),
    (b"///a/b", "/b"),
    (b"////x", "/"),
    (b"//x", "/"),
    (b"//x?q", "/"),
    (b"//x#f", "/"),
    (b"//u@x/p", "/p"),
    (b"//x:80/p", "/p"),
    (b"//[::1]/p", "/p"),
    (b"//[::1]:80/p", "/p"),
    (b"//a%41/p", "/p"),
    (b"http://h/abs?q=1", "/abs"),
    (b"HTTP://H/abs", "/abs"),
    (b"http:/abs", "/abs"),
    (b"http:abs", "/abs"),
    (b"http:\\\\h\\x", "/x"),
    (b"https://h/abs", "/abs"),
    (b"https:h/abs", "/abs"),
    (b"https:///h/abs", "/abs"),
    (b"ws://h/x/../y", "/y"),
    (b"wss:h", "/"),
    (b"ftp://h/a", "/a"),
    (b"*", "/*"),
    (b"a", "/a"),
    (b"a/b", "/a/b"),
    (b"a/../b", "/b"),
    (b"./a", "/a"),
    (b"../a", "/a"),
    (b"?q", "/"),
    (b"#f", "/"),
    (b"/t1?q=1", "/t1"),
    (b"/t1#frag", "/t1"),
    (b"/t1?q#f", "/t1"),
    (b"/user/x%20y/z", "/user/x y/z"),
    (b"/t1/a{b}", "/t1/a{b}"),
    (b'/t1/a?x="y"&z={1}', "/t1/a"),
    (b"/b%40r/b%20r/rest", "/b@r/b r/rest"),
    (b"/b@r/b r", "/b@r/b r"),
    (b"/t1;x", "/t1;x"),
    (b"/%74%31", "/t1"),
    (b"/t1%2Fa", "/t1/a"),
    (b"/%C3%A9", "/é"),
    (b"/a|b^c'd", "/a|b^c'd"),
    (b"/a%2fb%2F", "/a/b/"),
    (b"/%2e%2e/%2e", "/"),
    (b"/.a/..b/...", "/.a/..b/..."),
]


@pytest.mark.parametrize("target, key", WHATWG_KEYS, ids=[r[0].decode() for r in WHATWG_KEYS])
def test_routing_key_is_decoded_whatwg_pathname(target, key):
    assert routing_path(target) == key


# Node: `new URL` throws (invalid host/port) or decodeURIComponent throws; CHP answers 500.
MALFORMED = [
    b"//x:99999/p",  # INVALID_URL
    b"//%/p",  # INVALID_URL
    b"//a^b/p",  # INVALID_URL
    b"//a|b/p",  # INVALID_URL
    b"/%",  # MALFORMED_DECODE
    b"/%zz",  # MALFORMED_DECODE
    b"/%C3",  # MALFORMED_DECODE
    b"/%ED%A0%80",  # MALFORMED_DECODE
    b"/%FF",  # MALFORMED_DECODE
]


@pytest.mark.parametrize("target", MALFORMED, ids=[t.decode() for t in MALFORMED])
def test_malformed_path_raises(target):
    with pytest.raises(MalformedPath):
        routing_path(target)


def test_query_and_fragment_never_take_part_in_routing():
    assert routing_path(b"/t1?q=1/../x") == "/t1"
    assert routing_path(b"/t1?%zz") == "/t1"  # a bad escape in the query is not a routing error


def test_escaped_slash_decodes_to_a_separator():
    assert routing_path(b"/t1%2Fa") == "/t1/a"


def test_absolute_form_routes_on_its_path():
    assert routing_path(b"http://other.example/abs?q=1") == "/abs"


def test_network_path_target_drops_the_authority_for_routing():
    assert routing_path(b"//x/t1/y") == "/t1/y"


def test_options_asterisk_routes_on_slash_star():
    assert routing_path(b"*") == "/*"


def test_opaque_path_targets_route_as_an_absolute_path():
    # WHATWG pathname "bar" (no leading slash); CHP's trie ignores leading
    # slashes, so "/bar" routes the same.
    assert routing_path(b"foo:bar") == "/bar"
    assert routing_path(b"mailto:a@b") == "/a@b"


segment = st.text(alphabet="abcXYZ019-_~!$&'()*+,;=:@|^.", max_size=6)


def outcome(f, *args):
    try:
        return f(*args)
    except MalformedPath:
        return MalformedPath


@settings(max_examples=300, deadline=None)
@given(st.lists(segment, max_size=5), st.booleans())
def test_fast_path_and_general_path_agree(segments, query):
    target = "/" + "/".join(segments) + ("?a=1" if query else "")
    raw = target.encode()
    # the same target made to take the general road by a harmless %-escape of "a"
    general = raw.replace(b"a", b"%61")
    assert outcome(routing_path, raw) == outcome(routing_path, general)
    fast = outcome(forward_path, raw, "/", "/base", "", True, True)
    slow = outcome(forward_path, general, "/", "/base", "", True, True)
    assert fast == (slow if slow is MalformedPath else slow.replace(b"%61", b"a"))


# every character class the plain-target regex treats specially, plus a non-ASCII byte
_TRICKY = st.lists(st.sampled_from(
    [b"a", b"Z", b"0", b"/", b"//", b".", b"..", b"%", b"%2e", b"%2F", b"%41", b"?", b"#",
     b"\\", b'"', b"<", b">", b"`", b"{", b"}", b"'", b"~", b";", b"=", b"&", b"\xc3\xa9",
     b"http:", b"*"]), max_size=12)


@settings(max_examples=1500, deadline=None)
@given(_TRICKY, st.booleans(),
       st.sampled_from([("", ""), ("/", ""), ("/base", ""), ("/base/", "t=1"), ("", "t=1")]),
       st.sampled_from([(True, True), (False, True), (True, False), (False, False)]))
def test_plain_target_fast_paths_agree_with_the_general_algorithm(parts, leading_slash, target,
                                                                  flags):
    from cfproxy.http import fastpath
    from cfproxy.http.urlpath import (
        _forward_path_general,
        _routing_path_general,
        routing_path_and_query,
    )

    raw = (b"/" if leading_slash else b"") + b"".join(parts)
    assert outcome(routing_path, raw) == outcome(_routing_path_general, raw)
    args = (raw, "/", target[0], target[1], *flags)
    assert outcome(forward_path, *args) == outcome(_forward_path_general, *args)
    # the lookup's single plain-target match, handed on to forward_path
    both = outcome(routing_path_and_query, raw)
    if both is MalformedPath:
        assert outcome(routing_path, raw) is MalformedPath
    else:
        assert both == (routing_path(raw), fastpath.plain_target_query(raw))
        assert outcome(forward_path, *args, both[1]) == outcome(_forward_path_general, *args)


def test_plain_targets_take_the_fast_path():
    from cfproxy.http import fastpath

    if not fastpath.ENABLED:
        pytest.skip("fast paths switched off (CFPROXY_FAST_PATHS=0)")
    for raw in (b"/", b"/user/alice/api/kernels", b"/a/b?x=1&y={2}", b"/a//b/", b"/r/1/?",
                b"/a.b/c_d~e", b"/a?%zz"):
        assert fastpath.plain_target_query(raw) is not None, raw
    for raw in (b"//a", b"/a/./b", b"/.x", b"/a%2e", b"/a\\b", b"/a#f", b'/a"b', b"/a?'",
                b"/\xc3\xa9", b"a/b", b"", b"*", b"/a b"):
        assert fastpath.plain_target_query(raw) is None, raw
    assert forward_path(b"/user/a?x=1", "/user/a", "", "", True, True) == b"/user/a?x=1"


# --- 3.4 forwarded path ------------------------------------------------------------

FLAGS = {
    "default": (True, True),
    "no-prepend-path": (False, True),
    "no-include-prefix": (True, False),
    "both": (False, False),
}

# reference 3.4 table: route prefix, target path, target query, req_target, then the
# four flag combinations (None = not listed)
TABLE = [
    ("/t1", "", "", b"/t1", "/t1", "/t1", "/", "/"),
    ("/t1", "", "", b"/t1/", "/t1/", "/t1/", "/", "/"),
    ("/t1", "", "", b"/t1/a", "/t1/a", "/t1/a", "/a", "/a"),
    ("/t1", "", "", b"/t1?q=1", "/t1?q=1", "/t1?q=1", "/?q=1", "/?q=1"),
    ("/t2", "/base", "", b"/t2", "/base/t2", "/t2", "/base", "/"),
    ("/t2", "/base", "", b"/t2/a?q=1", "/base/t2/a?q=1", "/t2/a?q=1", "/base/a?q=1", "/a?q=1"),
    ("/b2", "/base/", "", b"/b2/a", "/base/b2/a", None, None, None),
    (
        "/t3",
        "/base",
        "tq=1",
        b"/t3/a?q=2",
        "/base/t3/a?tq=1&q=2",
        "/t3/a?q=2",
        "/base/a?tq=1&q=2",
        "/a?q=2",
    ),
    ("/", "/root", "", b"/zz/a", "/root/zz/a", "/zz/a", "/root/zz/a", "/zz/a"),
    (
        "/bar",
        "/foo",
        "",
        b"/bar/rest/of/it",
        "/foo/bar/rest/of/it",
        "/bar/rest/of/it",
        "/foo/rest/of/it",
        "/rest/of/it",
    ),
]

TABLE_CASES = [
    pytest.param(
        prefix,
        tpath,
        tquery,
        req_target,
        flags,
        expected,
        id=f"{prefix}->{tpath or '/'}?{tquery} {req_target.decode()} {name}",
    )
    for prefix, tpath, tquery, req_target, *results in TABLE
    for (name, flags), expected in zip(FLAGS.items(), results, strict=True)
    if expected is not None
]


@pytest.mark.parametrize("prefix, tpath, tquery, req_target, flags, expected", TABLE_CASES)
def test_forwarded_path_table(prefix, tpath, tquery, req_target, flags, expected):
    prepend, include = flags
    assert forward_path(req_target, prefix, tpath, tquery, prepend, include) == expected.encode()


# "More observed (default flags)": (route prefix, target path, req_target, forwarded)
MORE_OBSERVED = [
    ("/t1", "", b"/t1//a", "/t1//a"),
    ("/t1", "", b"/t1/./a", "/t1/a"),
    ("/t2", "/base", b"/t1/../t2/a", "/base/t2/a"),
    ("/user", "/pre", b"/user/x%20y/z", "/pre/user/x%20y/z"),
    ("/b@r/b r", "", b"/b%40r/b%20r/rest", "/b%40r/b%20r/rest"),
    ("/b@r/b r", "", b"/b@r/b%20r/rest", "/b@r/b%20r/rest"),
    ("/t1", "", b"/t1/a{b}", "/t1/a%7Bb%7D"),
    ("/t1", "", b'/t1/a?x="y"&z={1}', "/t1/a?x=%22y%22&z={1}"),
    ("/t1", "", b"//x/t1/y", "//x/t1/y"),  # QUIRK kept: routed on /t1/y, forwarded as sent
    ("/abs", "", b"http://h/abs?q=1", "/abs?q=1"),
]


@pytest.mark.parametrize("prefix, tpath, req_target, expected", MORE_OBSERVED)
def test_forwarded_path_more_observed(prefix, tpath, req_target, expected):
    assert routing_path(req_target).startswith(prefix)
    assert forward_path(req_target, prefix, tpath, "", True, True) == expected.encode()


def test_semicolon_is_part_of_the_segment():
    assert routing_path(b"/t1;x") == "/t1;x"


# Cases checked against http-proxy-3's getPath + urlJoin (default flags)
NODE_CHECKED = [
    ("/base", "", b"/t1?", "/base/t1"),  # empty query dropped
    ("", "", b"/t1?", "/t1"),
    ("", "", b"/t1?#", "/t1"),
    ("", "", b"/t1#frag", "/t1"),
    ("/base/", "", b"/t1/a", "/base/t1/a"),
    ("", "a=b", b"/t1?c=d", "/t1?a=b&c=d"),
    ("", "", b"/t1/a?x='y'", "/t1/a?x=%27y%27"),
    ("", "", b"/t1/a`b<c>", "/t1/a%60b%3Cc%3E"),
    ("", "", b"/t1/a?q=<>", "/t1/a?q=%3C%3E"),
    ("", "", b"/a\\..\\b", "/b"),
    ("", "", b"*", "/*"),
    ("", "", b"", "/"),
    ("/base", "", b"?q=1", "/base?q=1"),
    ("", "", b"http://h/a/../b?q", "/b?q"),
    ("", "", b"/%2e%2e/x", "/x"),
    ("", "", b"/a|b^c'd", "/a|b^c'd"),
]


@pytest.mark.parametrize("tpath, tquery, req_target, expected", NODE_CHECKED)
def test_forwarded_path_matches_http_proxy(tpath, tquery, req_target, expected):
    assert forward_path(req_target, "/t1", tpath, tquery, True, True) == expected.encode()


# --- Q11 fixed: --no-include-prefix strips segments of the encoded path ------------


def test_no_include_prefix_with_escaped_prefix_strips_whole_segments():
    # CHP: route /x@y, req_target /x%40y/a -> upstream /enc/0y/a (sliced by decoded length)
    assert forward_path(b"/x%40y/a", "/x@y", "/enc", "", True, False) == b"/enc/a"


def test_no_include_prefix_with_escaped_slash_in_path():
    assert routing_path(b"/t1%2Fa/b").startswith("/t1/a")
    assert forward_path(b"/t1%2Fa/b", "/t1/a", "", "", True, False) == b"/b"
    assert forward_path(b"/t1%2fa", "/t1", "", "", True, False) == b"/a"


def test_no_include_prefix_after_dot_segments_strips_the_routed_prefix():
    # routed on /t2 (the req_target resolved to /t2/a): the /t2 segment goes
    assert forward_path(b"/t1/../t2/a", "/t2", "/base", "", True, False) == b"/base/a"


def test_no_include_prefix_under_host_routing_gets_the_prefix_without_host():
    # route /example.com/app; the proxy passes "/app"
    assert forward_path(b"/app/x?y=1", "/app", "", "", True, False) == b"/x?y=1"


def test_no_include_prefix_network_path_strips_from_the_routed_path():
    assert forward_path(b"//x/t1/y", "/t1", "", "", True, False) == b"/y"


def test_no_include_prefix_root_route():
    assert forward_path(b"/", "/", "/base", "", True, False) == b"/base"
    assert forward_path(b"/zz/a", "/", "/root", "", True, False) == b"/root/zz/a"


def test_no_include_prefix_keeps_inner_empty_segments():
    assert forward_path(b"/t1//a", "/t1", "", "", True, False) == b"//a"


def test_no_include_prefix_encodes_like_the_default():
    assert forward_path(b'/t1/a{b}?x="y"', "/t1", "", "", True, False) == b"/a%7Bb%7D?x=%22y%22"


def test_forward_path_rejects_unparsable_targets():
    with pytest.raises(MalformedPath):
        forward_path(b"//a^b/p", "/p", "", "", True, False)
