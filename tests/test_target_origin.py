"""parse_target's known-origin shortcut gives exactly the Target (or the error) of the full
urlsplit parse, for any URL (differential, hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cfproxy.routing import target as target_mod
from cfproxy.routing.target import InvalidTarget, _parse_target, _with_known_origin

pieces = st.sampled_from(["http://", "https://", "http+unix://", "unix+http://", "ftp://", "HTTP://",
                          "127.0.0.1", "[::1]", "h", ":8080", ":99999", ":x", "%2Ftmp%2Fs", "@",
                          "/", "/a/b", "?", "q=1", "#", "frag", "//", " ", "\t", "é", "%", ";"])


def outcome(fn, url):
    try:
        return fn(url)
    except InvalidTarget:
        return "invalid"


@settings(max_examples=3000, deadline=None)
@given(st.lists(pieces, max_size=8).map("".join))
def test_the_shortcut_agrees_with_the_full_parse(url):
    target_mod._origins.clear()
    fast = outcome(_with_known_origin, url)
    if fast is None:
        return  # the shortcut declined: the full parse answers
    assert fast == outcome(_parse_target, url)
    assert outcome(_with_known_origin, url) == fast  # and again from the origin cache
