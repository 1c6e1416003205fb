"""Target: a route's `target` URL, parsed once when the route is stored.

Owns the rules of which targets the proxy can reach (CHP's schemes: http,
https, http+unix, unix+http) and how their parts are used: the host:port to
connect to (or the Unix socket path), the path and query prepended to
forwarded requests, and the Host value used by --change-origin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from cfproxy.http import fastpath
from cfproxy.http.fastpath import TARGET_CACHE_SIZE, BoundedCache

SCHEMES = ("http", "https", "http+unix", "unix+http")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Whitespace and control characters (C0, DEL, C1, and Unicode spaces): never valid in a URL,
# and urlsplit would silently drop some (tab, CR, LF) and keep the others, which would
# then be written into the upstream request line or Host header.
_BAD_CHAR_RE = re.compile(r"[\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]")


class InvalidTarget(ValueError):
    """The target string is not a URL the proxy can forward to."""


@dataclass(frozen=True, slots=True)
class Target:
    url: str  # as given
    scheme: str  # "http", "https" or "unix" (both unix spellings)
    host: str  # hostname ("" for unix); IPv6 without brackets
    port: int  # 0 for unix
    unix_path: str | None  # decoded socket path for unix targets
    path: str  # target path ("" when the URL has none)
    query: str  # target query without "?" ("" when none)
    host_header: str  # host[:port] as --change-origin sends it (port omitted if default)

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def pool_key(self) -> tuple:
        """Connections to targets with the same key are interchangeable."""
        return (self.scheme, self.host, self.port, self.unix_path)


# url -> Target: Targets are immutable, so routes share them (the one memo policy)
_parsed = BoundedCache(TARGET_CACHE_SIZE)


def parse_target(url: str) -> Target:
    """Parse a target URL; raise InvalidTarget with a message a user can act on.

    Recently parsed URLs are answered from a small cache (the API validates a
    target, then the table parses it again; many routes often share a target).
    """
    if type(url) is str:
        target = _parsed.get(url)
        if target is not None:
            return target
    # the origin shortcut is a fast path (twin: _parse_target; tests/test_target_origin.py)
    target = _with_known_origin(url) if fastpath.ENABLED else None
    if target is None:
        target = _parse_target(url)
    _parsed.put(url, target)
    return target


_origins = BoundedCache(TARGET_CACHE_SIZE)  # "scheme://netloc" -> its Target (path and query empty)


def _with_known_origin(url: Any) -> Target | None:
    """The Target of `url` from its parsed origin ("scheme://netloc"), or None to parse it all.

    Loading 100,000 stored routes with distinct target URLs on a few servers: urlsplit per
    URL cost ~20 us (2 s); the origin is parsed once and the path/query split here exactly
    as urlsplit splits them (fragment first, then query). Anything unusual (control or
    whitespace characters, non-ASCII, no "://") takes the full parse."""
    if type(url) is not str:
        return None
    start = url.find("://")
    if start <= 0 or not url.isascii() or _BAD_CHAR_RE.search(url) is not None:
        return None  # the general parse rejects it with its reason
    end = len(url)
    for sep in "/?#":
        i = url.find(sep, start + 3)
        if 0 <= i < end:
            end = i
    origin_url = url[:end]
    origin = _origins.get(origin_url)
    if origin is None:
        try:
            origin = _parse_target(origin_url)
        except InvalidTarget:
            return None  # the full parse says what is wrong, naming the whole URL
        _origins.put(origin_url, origin)
    rest = url[end:].partition("#")[0]
    path, _, query = rest.partition("?")
    return Target(url, origin.scheme, origin.host, origin.port, origin.unix_path, path, query,
                  origin.host_header)


_NON_ASCII_RE = re.compile(r"[^\x00-\x7f]+")


def _percent_encode(m: re.Match) -> str:
    return quote(m.group(), safe="")


def _shown(url: str) -> str:
    """The URL for an error message: repr (control characters escaped), cut at 200 characters."""
    return repr(url) if len(url) <= 200 else repr(url[:200]) + "..."


def _parse_target(url: str) -> Target:
    if not isinstance(url, str) or not url:
        raise InvalidTarget("target must be a non-empty URL string")
    bad = _BAD_CHAR_RE.search(url)
    if bad is not None:
        raise InvalidTarget(f"target URL {_shown(url)} contains whitespace or a control character "
                            f"({bad.group()!r} at position {bad.start()})")
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise InvalidTarget(f"invalid target URL {_shown(url)}: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise InvalidTarget(
            f"unsupported target scheme {parts.scheme + ':' if parts.scheme else '(none)'} in {_shown(url)};"
            " expected http, https, http+unix or unix+http"
        )
    path = parts.path
    query = parts.query
    if not url.isascii():  # as WHATWG's URL parser (CHP): UTF-8 percent-escapes on the wire
        path = _NON_ASCII_RE.sub(_percent_encode, path)
        query = _NON_ASCII_RE.sub(_percent_encode, query)
    if scheme in ("http+unix", "unix+http"):
        netloc = parts.netloc
        if not netloc:
            raise InvalidTarget(f"unix target {_shown(url)} has no socket path")
        return Target(url, "unix", "", 0, unquote(netloc), path, query, "localhost")
    try:
        host = parts.hostname or ""
        port = parts.port
    except ValueError as e:
        raise InvalidTarget(f"invalid target URL {_shown(url)}: {e}") from None
    if not host:
        raise InvalidTarget(f"target URL {_shown(url)} has no host")
    if not host.isascii():  # an internationalised name: its ASCII (punycode) form, as CHP
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as e:
            raise InvalidTarget(f"invalid host in target URL {_shown(url)}: {e}") from None
    default_port = _DEFAULT_PORTS[scheme]
    real_port = port if port is not None else default_port
    shown_host = f"[{host}]" if ":" in host else host
    host_header = shown_host if real_port == default_port else f"{shown_host}:{real_port}"
    return Target(url, scheme, host, real_port, None, path, query, host_header)
