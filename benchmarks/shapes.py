"""Real-shaped traffic: browser request heads through JupyterHub, real servers' response heads.

Owns the shapes of the bytes the benchmark and the soak put on the wire, so a
proxy is measured on the heads it meets in production, not only on the
leanest possible exchange:

- **Requests** (`browser_head`): what a browser running JupyterLab sends through
  JupyterHub: `/user/<name>/api/...` paths spread over many users, a ~300-byte
  cookie (the hub's per-user auth cookie, `_xsrf`, the session id), user agent,
  accept, accept-language, accept-encoding, referer, `X-XSRFToken`.
  The wrk Lua script (benchmarks/wrkload.py) builds the same heads in Lua.
- **Responses** (`SHAPES`, `shape_response`): one small body (13 bytes) under
  the heads real single-user servers and web servers send: tornado's (`Server`,
  `Content-Type`, `Date`, `Etag`, `X-Content-Type-Options`,
  `Content-Security-Policy`, sometimes `Set-Cookie`), nginx's (`Connection:
  keep-alive`), and chunked bodies. `Date` is the real date, so heads change
  every second as they do in production.
"""

from __future__ import annotations

import hashlib
import random
import time
from email.utils import formatdate

BODY = b"Hello, world\n"
USERS = 1000  # users whose routes exist in the proxies during the HTTP scenarios

# name -> (description, head lines after the status line; {date} and framing filled in)
_TORNADO = (b"Server: TornadoServer/6.4\r\nContent-Type: application/json\r\nDate: {date}\r\n"
            b"Content-Security-Policy: frame-ancestors 'self'; report-uri "
            b"/user/u0000/api/security/csp-report\r\nX-Content-Type-Options: nosniff\r\n"
            b"Etag: \"" + hashlib.sha1(BODY).hexdigest().encode() + b"\"\r\n")
_NGINX = b"Server: nginx/1.22.1\r\nDate: {date}\r\nContent-Type: text/plain\r\n"
_COOKIE = (b"Set-Cookie: _xsrf=2|7a1c0e5b|5f0b8c0e1d8a4f2e9c3b7a6d5e4f3a2b|1765083210; "
           b"expires=Wed, 06 Jan 2027 03:00:10 GMT; Path=/user/u0000/\r\n")
_CL = b"Content-Length: 13\r\n"
_CHUNKED = b"Transfer-Encoding: chunked\r\n"
_KA = b"Connection: keep-alive\r\n"
_CHUNKED_BODY = b"d\r\n" + BODY + b"\r\n0\r\n\r\n"

SHAPES: dict[str, tuple[str, bytes, bytes]] = {
    # name: (what it is, head lines, body bytes on the wire)
    "plain": ("Content-Type + Content-Length only (the lean backend)",
              b"Content-Type: text/plain\r\n" + _CL, BODY),
    "tornado": ("tornado: Server, Content-Type, Date, CSP, X-Content-Type-Options, Etag, "
                "Content-Length", _TORNADO + _CL, BODY),
    "tornado-cookie": ("tornado + Set-Cookie", _TORNADO + _COOKIE + _CL, BODY),
    "tornado-chunked": ("tornado, chunked body", _TORNADO + _CHUNKED, _CHUNKED_BODY),
    "nginx": ("nginx: Server, Date, Content-Type, Content-Length, Connection: keep-alive",
              _NGINX + _CL + _KA, BODY),
    "nginx-chunked": ("nginx, chunked body, Connection: keep-alive",
                      _NGINX + _CHUNKED + _KA, _CHUNKED_BODY),
}

_CACHE: dict[bytes, tuple[int, bytes]] = {}


def http_date(now: float | None = None) -> bytes:
    return formatdate(now if now is not None else time.time(), usegmt=True).encode()


def shape_response(name: bytes) -> bytes | None:
    """The full response of shape `name` with the current `Date` (None for an unknown shape).

    Built at most once per shape and second: the backend serving it shares a core
    with the load generator and must stay cheap.
    """
    sec = int(time.time())
    hit = _CACHE.get(name)
    if hit is not None and hit[0] == sec:
        return hit[1]
    shape = SHAPES.get(name.decode("latin-1"))
    if shape is None:
        return None
    resp = (b"HTTP/1.1 200 OK\r\n" + shape[1].replace(b"{date}", http_date(sec)) + b"\r\n"
            + shape[2])
    _CACHE[name] = (sec, resp)
    return resp


# --- browser request heads ---------------------------------------------------------------

USER_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/131.0.0.0 Safari/537.36")
ACCEPT = "application/json, text/plain, */*"
ACCEPT_LANGUAGE = "en-GB,en-US;q=0.9,en;q=0.8,de;q=0.7"
ACCEPT_ENCODING = "gzip, deflate, br, zstd"
# what JupyterLab polls and fetches under /user/<name>/
BROWSER_PATHS = ("/api/kernels?{ts}", "/api/sessions?{ts}", "/api/terminals?{ts}",
                 "/api/contents/work/analysis-{n}.ipynb?content=0&hash=0&{ts}",
                 "/api/metrics/v1?{ts}", "/lab/api/workspaces/auto-{n}?{ts}",
                 "/api/kernelspecs?{ts}", "/static/lab/main.{n}.js?v=4.3.{n}")


def user_name(i: int) -> str:
    return f"u{i:04d}"


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def browser_xsrf(rng: random.Random) -> str:
    """A tornado `_xsrf` token (JupyterLab sends the cookie's value as X-XSRFToken)."""
    return f"2|{_hex(rng, 8)}|{_hex(rng, 32)}|1765083210"


def browser_cookie(user: str, rng: random.Random, xsrf: str | None = None) -> str:
    """The cookies a logged-in JupyterHub user's browser sends to /user/<name>/ (~300 bytes)."""
    return (f"jupyterhub-user-{user}=2|1:0|10:1765083210|21:jupyterhub-user-{user}|44:"
            f"{_hex(rng, 44)}|{_hex(rng, 64)}; _xsrf={xsrf or browser_xsrf(rng)}; "
            f"jupyterhub-session-id={_hex(rng, 32)}")


def browser_head(host: str, user: str, path: str, rng: random.Random,
                 method: str = "GET", extra: str = "") -> bytes:
    """A browser-shaped request head (~750 bytes) for `path` under /user/<user>/."""
    xsrf = browser_xsrf(rng)
    return (f"{method} /user/{user}{path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n"
            f"User-Agent: {USER_AGENT}\r\nAccept: {ACCEPT}\r\nX-XSRFToken: {xsrf}\r\n"
            f"Referer: http://{host}/user/{user}/lab\r\nAccept-Encoding: {ACCEPT_ENCODING}\r\n"
            f"Accept-Language: {ACCEPT_LANGUAGE}\r\nCookie: {browser_cookie(user, rng, xsrf)}\r\n"
            f"{extra}\r\n").encode()


def browser_path(rng: random.Random) -> str:
    return rng.choice(BROWSER_PATHS).format(ts=1765083210000 + rng.randrange(10**6),
                                            n=rng.randrange(100))
