"""URL path rules of the proxy: the routing key and the forwarded path (pure functions).

Owns reference sections 3.1 (the lookup key for a proxied request) and 3.4
(the path sent upstream), including CHP's observable quirks and the fix of
Q11 (``--no-include-prefix`` strips the matched prefix segment-wise from the
*encoded* path). No I/O, no routing table: the proxy calls these per request.

CHP computes both with the WHATWG URL parser (``new URL(req.url, base)``).
We implement the subset of that algorithm a request-target can exercise
(the HTTP parser already guarantees 1*VCHAR: no spaces, controls or non-ASCII):

* network-path targets (two leading ``/`` or ``\\``): the authority is dropped;
* absolute-form ``scheme://host/path``: the path is used;
* ``\\`` is a path separator (special schemes);
* dot segments ``.``, ``..`` and their percent-encoded forms (``%2e``) are
  resolved;
* in the forwarded path, ``"``, ``<``, ``>``, backtick, ``{``, ``}`` (and
  space) are percent-encoded in the path, ``"``, ``<``, ``>``, ``'`` in the
  query; existing escapes are kept; the fragment is dropped.

Fast path: a "plain" origin-form target (``fastpath.plain_target_query``: no ``\\``,
no ``%`` in the path, no segment starting with ``.``, nothing either encode set holds,
no fragment, ASCII) skips all of that: its routing key is its path decoded as ASCII, and
when the route's target has no path or query (the common JupyterHub route) its forwarded
path is the received target itself. ``tests/test_urlpath.py`` checks fast == general on
generated targets.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from cfproxy.http.fastpath import plain_target_query

__all__ = [
    "MalformedPath",
    "decode_uri_component",
    "forward_path",
    "pathname_and_query",
    "resolve_dot_segments",
    "routing_path",
]


class MalformedPath(ValueError):
    """The request path cannot be decoded (CHP answers 500: decodeURIComponent threw),
    or the request-target is not a URL at all (CHP: ``new URL`` threw)."""


# WHATWG URL "special" schemes; \ is a path separator for them.
_SPECIAL_SCHEMES = frozenset(("http", "https", "ws", "wss", "ftp", "file"))
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
# decodeURIComponent throws on "%" not followed by two hex digits.
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SINGLE_DOT = frozenset((".", "%2e", "%2E"))
_DOUBLE_DOT = frozenset(
    ("..", ".%2e", ".%2E", "%2e.", "%2E.", "%2e%2e", "%2E%2E", "%2e%2E", "%2E%2e")
)
# WHATWG path percent-encode set minus what a 1*VCHAR target cannot contain,
# and the special-query percent-encode set likewise.
_PATH_ENCODE = {ord(c): f"%{ord(c):02X}" for c in ' "<>`{}'}
_QUERY_ENCODE = {ord(c): f"%{ord(c):02X}" for c in " \"<>'"}
_PATH_ENCODE_RE = re.compile(r'[ "<>`{}]')
_QUERY_ENCODE_RE = re.compile(r"[ \"<>']")
# Characters that end a host in the WHATWG authority state, and those a host
# may not contain (forbidden domain code points that a VCHAR target can hold).
_HOST_END_RE = re.compile(r"[/\\?#]")
_FORBIDDEN_HOST_RE = re.compile(r"[ #/<>?@\[\\\]^|%]")


def _resolve_path(path: str, special: bool) -> str:
    """WHATWG path state over ``path`` (the text after the leading slash):
    split into segments, resolve dot segments, return the pathname."""
    if special and "\\" in path:
        path = path.replace("\\", "/")
    segments = path.split("/")
    out: list[str] = []
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        if seg in _DOUBLE_DOT or (len(seg) <= 6 and seg.lower() in _DOUBLE_DOT):
            if out:
                out.pop()
            if i == last:
                out.append("")
        elif seg in _SINGLE_DOT:
            if i == last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


def _split_query(s: str) -> tuple[str, str | None]:
    """Split ``s`` into (path part, query or None), dropping any fragment."""
    h = s.find("#")
    if h >= 0:
        s = s[:h]
    q = s.find("?")
    if q >= 0:
        return s[:q], s[q + 1 :]
    return s, None


def _after_authority(rest: str) -> str:
    """``rest`` follows the slashes that introduce an authority: drop the
    authority (validating it loosely as WHATWG would), return the path part
    (with its leading slash, or "/" when there is none) plus query/fragment."""
    m = _HOST_END_RE.search(rest)
    authority = rest if m is None else rest[: m.start()]
    tail = "" if m is None else rest[m.start() :]
    host = authority.rpartition("@")[2]
    if host.startswith("["):
        close = host.find("]")
        if close < 0:
            raise MalformedPath("invalid host in request target")
        port = host[close + 1 :]
        if port and not port.startswith(":"):
            raise MalformedPath("invalid host in request target")
        port = port[1:]
    else:
        host, _, port = host.partition(":")
        try:
            host = unquote_to_bytes(host).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedPath("invalid host in request target") from None
        if not host or _FORBIDDEN_HOST_RE.search(host):
            raise MalformedPath("invalid host in request target")
    if port and (not port.isdigit() or int(port) > 65535):
        raise MalformedPath("invalid port in request target")
    if not tail or tail[0] in "?#":
        return "/" + tail
    return tail


def _whatwg(target: str) -> tuple[str, str | None]:
    """(pathname, query or None) of ``new URL(target, "http://example.com")``
    for a VCHAR-only target. Raises MalformedPath where WHATWG fails."""
    special = True
    m = _SCHEME_RE.match(target)
    if m is not None:
        scheme = m.group()[:-1].lower()
        rest = target[m.end() :]
        if scheme == "http":
            # same scheme as the base: "special relative or authority state",
            # i.e. parsed like a scheme-less relative reference.
            target = rest
        elif scheme in _SPECIAL_SCHEMES:
            # "special authority slashes state": all leading slashes skipped.
            i = 0
            while i < len(rest) and rest[i] in "/\\":
                i += 1
            return _split_path(_after_authority(rest[i:]), True)
        else:
            special = False
            if rest.startswith("//"):
                rest = _after_authority(rest[2:]) if len(rest) > 2 else "/"
                return _split_path(rest, False)
            if rest.startswith("/"):
                return _split_path(rest, False)
            # opaque path ("mailto:x"): no dot segments; made absolute so
            # it routes as CHP's trie sees it (leading slashes do not count).
            path, query = _split_query(rest)
            return "/" + path, query
    seps = "/\\" if special else "/"
    # (test characters, not slices: "" is "in" every string)
    first = target[0] if target else ""
    if first and first in seps and len(target) > 1 and target[1] in seps:
        i = 2
        while i < len(target) and target[i] in seps:
            i += 1
        return _split_path(_after_authority(target[i:]), special)
    if first and first in seps:
        return _split_path(target, special)
    # relative reference against base path "/" (also "?q" and "#f")
    path, query = _split_query(target)
    return _resolve_path(path, special), query


def _split_path(s: str, special: bool) -> tuple[str, str | None]:
    """``s`` starts with a slash (or is empty): resolve its path, split its query."""
    path, query = _split_query(s)
    return _resolve_path(path[1:], special), query


def _decode(path: str) -> str:
    """decodeURIComponent: strict %XX, UTF-8, else MalformedPath."""
    if _BAD_ESCAPE_RE.search(path):
        raise MalformedPath("malformed percent-escape in path")
    try:
        return unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPath("percent-escapes in path are not UTF-8") from None


def _plain(path: bytes) -> bool:
    """True when the origin-form path needs no WHATWG work: starts with a
    single "/", no backslash, no "%" (hence no %2e) and no dot segment."""
    return (
        path[:1] == b"/"
        and path[1:2] != b"/"
        and b"\\" not in path
        and b"%" not in path
        and b"/." not in path
    )


def _path_end(raw: bytes) -> int:
    q = raw.find(b"?")
    h = raw.find(b"#")
    if h >= 0 and (q < 0 or h < q):
        q = h
    return len(raw) if q < 0 else q


def routing_path(raw_target: bytes) -> str:
    """The decoded lookup key of a request-target (reference 3.1).

    WHATWG pathname (base ``http://example.com``) percent-decoded as
    ``decodeURIComponent`` does. Raises MalformedPath (the proxy answers 500,
    as CHP) on a malformed escape, non-UTF-8 escapes or an unparsable target.
    """
    q = plain_target_query(raw_target)  # the twin of the general code below
    if q is not None:
        return (raw_target if q < 0 else raw_target[:q]).decode("ascii")
    return _routing_path_general(raw_target)


def routing_path_and_query(raw_target: bytes) -> tuple[str, int | None]:
    """(routing_path(raw_target), fastpath.plain_target_query(raw_target)): the proxy's
    lookup needs both on a route cache miss and passes the second to forward_path, so
    the plain-target match runs once per new request-target instead of twice (~5k
    instructions)."""
    q = plain_target_query(raw_target)
    if q is not None:
        return (raw_target if q < 0 else raw_target[:q]).decode("ascii"), q
    return _routing_path_general(raw_target), None


def _routing_path_general(raw_target: bytes) -> str:
    """routing_path without the fast path (tests compare the two)."""
    end = _path_end(raw_target)
    path = raw_target[:end]
    if _plain(path):
        try:
            return path.decode("ascii")
        except UnicodeDecodeError:
            pass  # not from our parser; take the general road
    pathname, _ = _whatwg(raw_target.decode("latin-1"))
    if "%" in pathname:
        return resolve_dot_segments(_decode(pathname))
    return pathname


def _prefix_segments(prefix: str) -> int:
    p = prefix.strip("/")
    return p.count("/") + 1 if p else 0


def _strip_segments(path: str, k: int) -> str:
    """Drop the first ``k`` segments of an encoded pathname, counting as the
    trie does on the *decoded* key: leading slashes skipped, a "/" or an
    escaped "%2F" ends a segment. Returns the rest ("" or starting with "/")."""
    if k == 0:
        # root route: CHP slices the one "/" off, so a bare "/" leaves nothing
        # ("/" -> target path unchanged, as for "/t1" under route "/t1")
        return "" if path == "/" else path
    n = len(path)
    i = 0

    def sep(i: int) -> int:
        c = path[i]
        if c == "/":
            return 1
        if c == "%" and path[i + 1 : i + 3] in ("2F", "2f"):
            return 3
        return 0

    while i < n and (step := sep(i)):
        i += step
    count = 0
    while i < n:
        step = sep(i)
        if step:
            count += 1
            if count == k:
                return "/" + path[i + step :]
            i += step
        else:
            i += 1
    return ""


def _normalise(raw: str) -> tuple[str, str | None]:
    """Step R of 3.4: (encoded pathname, query) as http-proxy's getPath()
    computes them (a leading "//" is forced to be a path)."""
    if raw.startswith("//"):
        path, query = _split_query(raw)
        pathname = _resolve_path(path[1:], True)
    else:
        pathname, query = _whatwg(raw)
    if _PATH_ENCODE_RE.search(pathname):
        pathname = pathname.translate(_PATH_ENCODE)
    if query is not None and _QUERY_ENCODE_RE.search(query):
        query = query.translate(_QUERY_ENCODE)
    return pathname, query


def _join(b_path: str, b_query: str, r_path: str, r_query: str | None) -> str:
    """http-proxy-3 urlJoin(B, R): concatenate non-empty paths merging one
    "/" at the boundary, queries joined with "&" (target's first)."""
    if not b_path:
        path = r_path
    elif not r_path:
        path = b_path
    elif b_path[-1] == "/":
        path = b_path + (r_path[1:] if r_path[0] == "/" else r_path)
    else:
        path = b_path + (r_path if r_path[0] == "/" else "/" + r_path)
    if b_query and r_query:
        return f"{path}?{b_query}&{r_query}"
    if b_query or r_query:
        return f"{path}?{b_query or r_query}"
    return path


def forward_path(
    raw_target: bytes,
    prefix: str,
    target_path: str,
    target_query: str,
    prepend_path: bool,
    include_prefix: bool,
    plain_query: int | None = -2,
) -> bytes:
    """The request-target sent upstream (reference 3.4), as bytes.

    ``prefix`` is the matched route key as decoded (under host routing:
    without the host segment), ``target_path``/``target_query`` the route
    target's path ("" = none) and query (without "?"). ``prepend_path`` and
    ``include_prefix`` are the inverted ``--no-prepend-path`` /
    ``--no-include-prefix`` flags. ``plain_query`` is
    ``fastpath.plain_target_query(raw_target)`` when the caller has it (-2: not known).
    """
    if include_prefix:
        # the twin of the general code below
        q = plain_target_query(raw_target) if plain_query == -2 else plain_query
        if q is not None:
            if not prepend_path or (not target_query and target_path in ("", "/")):
                # the target adds nothing: forwarded as received (an empty query, a
                # bare "?" at the end, is dropped as http-proxy's urlJoin drops it)
                return raw_target if q != len(raw_target) - 1 else raw_target[:-1]
            raw = raw_target.decode("ascii")
            if q < 0:
                return _join(target_path or "/", target_query, raw, None).encode("ascii")
            return _join(target_path or "/", target_query, raw[:q], raw[q + 1:]).encode("ascii")
    return _forward_path_general(raw_target, prefix, target_path, target_query, prepend_path,
                                 include_prefix)


def _forward_path_general(raw_target: bytes, prefix: str, target_path: str, target_query: str,
                          prepend_path: bool, include_prefix: bool) -> bytes:
    """forward_path without its first fast path (tests compare the two)."""
    if prepend_path:
        b_path = target_path or "/"
        b_query = target_query
    else:
        b_path = "/"
        b_query = ""
    if include_prefix:
        end = _path_end(raw_target)
        if _plain(raw_target[:end]) and b'"' not in raw_target:
            try:
                raw = raw_target.decode("ascii")
            except UnicodeDecodeError:
                raw = None
            if raw is not None and not _needs_encoding(raw, end):
                # fast path: R is the target minus any fragment
                h = raw.find("#")
                if h >= 0:
                    raw = raw[:h]
                q = raw.find("?")
                if b_path == "/" and not b_query and q != len(raw) - 1:
                    return raw.encode("ascii")
                if q < 0:
                    return _join(b_path, b_query, raw, None).encode("ascii")
                return _join(b_path, b_query, raw[:q], raw[q + 1 :]).encode("ascii")
        raw = raw_target.decode("latin-1")
        # http-proxy-3 getPath(): "" and "?..." are used as they are
        if not raw or raw[0] == "?":
            r_path, r_query = _split_query(raw)
        else:
            r_path, r_query = _normalise(raw)
    else:
        # Q11 fixed: strip the matched segments from the encoded pathname
        # the routing key was computed from.
        pathname, r_query = _whatwg(raw_target.decode("latin-1"))
        r_path = _strip_segments(pathname, _prefix_segments(prefix))
        if _PATH_ENCODE_RE.search(r_path):
            r_path = r_path.translate(_PATH_ENCODE)
        if r_query is not None and _QUERY_ENCODE_RE.search(r_query):
            r_query = r_query.translate(_QUERY_ENCODE)
    return _join(b_path, b_query, r_path, r_query).encode("utf-8")


def _needs_encoding(raw: str, path_end: int) -> bool:
    """Characters WHATWG would percent-encode in the path or the query."""
    if _PATH_ENCODE_RE.search(raw, 0, path_end):
        return True
    return _QUERY_ENCODE_RE.search(raw, path_end) is not None


# --- the same rules for the REST API's dispatch (reference 2.2 and 2.5) ------------------

def pathname_and_query(target: str) -> tuple[str, str | None]:
    """(pathname, query or None) as ``new URL(target, base)`` gives them: dot segments
    resolved, ``\\`` a separator, an authority dropped; escapes kept. Raises MalformedPath
    where the WHATWG parser fails (an invalid host in an absolute or network-path target)."""
    return _whatwg(target)


def resolve_dot_segments(key: str) -> str:
    """Resolve the "." and ".." segments a decoded key still has ("/a%2F..%2Fb" decodes to
    "/a/../b" after the URL parser resolved the raw ones), by the same rule, so such a
    path means the same route in the API (POST, GET, DELETE) and in proxied lookups.
    Only literal dots count here: a decoded "%2e" is text ("%252e" was sent)."""
    if "/." not in key:
        return key
    segments = key.split("/")
    out: list[str] = []
    last = len(segments) - 1
    for i, seg in enumerate(segments[1:], 1):
        if seg == "..":
            if out:
                out.pop()
            if i == last:
                out.append("")
        elif seg == ".":
            if i == last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


def decode_uri_component(s: str) -> str:
    """JS ``decodeURIComponent``: every %XX decoded (``%2F`` too), strict UTF-8, ``+`` kept.
    Raises MalformedPath on a malformed escape."""
    return _decode(s) if "%" in s else s
