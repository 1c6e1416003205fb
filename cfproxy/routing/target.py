"""Target: a route's `target` URL, parsed once when the route is stored.

Owns the rules of which targets the proxy can reach (CHP's schemes: http,
https, http+unix, unix+http) and how their parts are used: the host:port to
connect to (or the Unix socket path), the path and query prepended to
forwarded requests, and the Host value used by --change-origin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

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
    target = _parse_target(url)
    _parsed.put(url, target)
    return target


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
    default_port = _DEFAULT_PORTS[scheme]
    real_port = port if port is not None else default_port
    shown_host = f"[{host}]" if ":" in host else host
    host_header = shown_host if real_port == default_port else f"{shown_host}:{real_port}"
    return Target(url, scheme, host, real_port, None, path, query, host_header)
