"""REST API semantics: dispatch, authentication and the /api/routes handlers.

Owns everything the API decides, sans I/O (api/server.py owns the sockets):

    outcome = preflight(app, method, target, headers, peer)   # steps 1-6 of reference 2.2
    if isinstance(outcome, ApiResponse): answer it now, never read the body
    else: response = await outcome.run(body)                     # after the body arrived

Dispatch order (reference 2.2 with quirk Q2 fixed):
1. pathname of the request-target, WHATWG style (dot segments, "\\" -> "/");
2. `^/api/routes(/.*)?$` on the pathname, else 404 `Not Found`;
3. method not GET/POST/DELETE -> 405 `Method not supported` with `Allow: GET, POST, DELETE`
   (before auth, as CHP, which sends no Allow);
4. decodeURIComponent of the captured path; malformed -> 400 `Invalid URL escape` (Q3 fix);
   "."/".." segments that decoding produced ("%2F..%2F") are resolved as step 1 resolves
   raw ones, as the proxy's lookups do (CHP stores "/a/../b", a route no URL reaches);
5. authentication (`token\\s+(\\S+)`, constant-time compare) -> 403, *before* the body is read;
6. the handler, with the (bounded) body; a bad body with a valid token is 400.

Responses are values (ApiResponse); logs and metrics follow reference 6 and 7.
"""

from __future__ import annotations

import calendar
import hmac
import math
import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_tz
from typing import Any
from urllib.parse import parse_qsl

import orjson

from cfproxy.api.render import (  # noqa: F401 - iso_ms, route_fragment: the API's renderers
    iso_ms,
    render_route,
    render_route_list,
    render_table_list,
    route_fragment,
)
from cfproxy.http.urlpath import (
    MalformedPath,
    decode_uri_component,
    pathname_and_query,
    resolve_dot_segments,
)
from cfproxy.log import log
from cfproxy.routing.target import InvalidTarget, parse_target
from cfproxy.store.base import StoreUnavailable
from cfproxy.workers import api as workers_api

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"


class ApiResponse:
    """A response to send: status, body, content type, the text for the access line, and
    any further header lines (`extra_headers`: complete `name: value\r\n` lines)."""

    __slots__ = ("status", "body", "content_type", "log_msg", "extra_headers")

    def __init__(self, status: int, body: bytes = b"", content_type: str | None = None,
                 log_msg: str = "", extra_headers: bytes = b"") -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.log_msg = log_msg
        self.extra_headers = extra_headers

    def __repr__(self) -> str:
        return f"<ApiResponse {self.status} {self.body[:60]!r}>"


def fail(status: int, msg: str) -> ApiResponse:
    """CHP's `fail()`: a text body, also used as the access-line message."""
    return ApiResponse(status, msg.encode("utf-8"), TEXT, msg)


NOT_FOUND = ApiResponse(404, b"Not Found", TEXT, "")  # CHP logs no message for this 404
# CHP's 405 text, with the `Allow` RFC 9110 15.5.6 requires (CHP sends none)
METHOD_NOT_ALLOWED = ApiResponse(405, b"Method not supported", TEXT, "Method not supported",
                                 b"allow: GET, POST, DELETE\r\n")
EMPTY_404 = ApiResponse(404)
FORBIDDEN = ApiResponse(403)


# --- 1. request-target -> pathname and query; 4. decodeURIComponent --------------------------
# The proxy's URL rules (cfproxy/http/urlpath.py) serve the API too: one WHATWG subset.

InvalidEscape = MalformedPath


def split_target(target: str) -> tuple[str, str]:
    """(pathname, query) of a request-target as `new URL(target, base)` gives them; the query
    excludes "?" and any fragment ("" when absent). Raises MalformedPath on an invalid host."""
    pathname, query = pathname_and_query(target)
    return pathname, query or ""


# --- 5. authentication ----------------------------------------------------------------------

_TOKEN_RE = re.compile(rb"token\s+(\S+)")


def token_ok(expected: str | None, authorization: bytes | None) -> bool:
    """CHP's check: unanchored `token\\s+(\\S+)`, first match, compared in constant time."""
    if not expected:
        return True  # API not authenticated (warned at start-up)
    if not authorization:
        return False
    m = _TOKEN_RE.search(authorization)
    if m is None:
        return False
    return hmac.compare_digest(m.group(1), expected.encode("utf-8"))


# --- inactive_since ---------------------------------------------------------------------------

_ISO_RE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2}))?)?"
    r"(?:[Tt ](?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:[.,](?P<f>\d+))?)?"
    r"(?P<tz>[Zz]|[+-]\d{2}(?::?\d{2})?)?)?"
)


def parse_datestamp(value: str) -> int | None:
    """Epoch milliseconds of an ISO 8601 or RFC 2822 date, or None (quirk Q5).

    ISO: date-only forms are UTC, date-times without an offset are local time
    (as JS Date.parse). RFC 2822 / RFC 1123: "Tue, 01 Jan 2030 00:00:00 GMT".
    """
    m = _ISO_RE.fullmatch(value)
    if m is not None:
        g = m.groupdict()
        try:
            frac = (g["f"] or "0")[:6].ljust(6, "0")
            dt = datetime(int(g["y"]), int(g["m"] or 1), int(g["d"] or 1),
                          int(g["H"] or 0), int(g["M"] or 0), int(g["S"] or 0), int(frac))
        except ValueError:
            return None
        tz = g["tz"]
        if g["H"] is None:
            dt = dt.replace(tzinfo=timezone.utc)
        elif tz is None:
            dt = dt.astimezone()  # naive -> local time
        elif tz in ("Z", "z"):
            dt = dt.replace(tzinfo=timezone.utc)
        else:
            sign = -1 if tz[0] == "-" else 1
            digits = tz[1:].replace(":", "")
            hours, minutes = int(digits[:2]), int(digits[2:] or 0)
            if hours > 23 or minutes > 59:
                return None
            dt = dt.replace(tzinfo=timezone(sign * timedelta(hours=hours, minutes=minutes)))
        return math.floor(dt.timestamp() * 1000)
    parts = parsedate_tz(value)
    if parts is None:
        return None
    try:
        datetime(*parts[:6])  # validates day/hour ranges
    except ValueError:
        return None
    offset = parts[9] or 0
    return (calendar.timegm(parts[:6] + (0, 0, 0)) - offset) * 1000


def _inactive_since(query: str) -> tuple[int | None, ApiResponse | None]:
    params: dict[str, str] = {}
    for k, v in parse_qsl(query, keep_blank_values=True, errors="replace"):
        params.setdefault(k, v)  # URLSearchParams.get: the first value
    value = params.get("inactiveSince") or params.get("inactive_since")
    if not value:
        return None, None
    ms = parse_datestamp(value)
    if ms is None:
        return None, fail(400, f"Invalid datestamp '{value}' must be ISO8601.")
    return ms, None


# --- JSON ------------------------------------------------------------------------------------


_MAX_SAFE = 2**53
_I64 = 2**63


def _js_number(v: Any) -> Any:
    """A number as a JS double would print it: 2.5e10 -> 25000000000, 2**60+1 -> 2**60."""
    if type(v) is float:
        if v.is_integer() and abs(v) < _I64:
            return int(v)
        return v
    if abs(v) > _MAX_SAFE:
        f = float(v)
        return int(f) if abs(f) < _I64 else f
    return v


def js_numbers(value: Any) -> Any:
    """Normalise every number in a parsed JSON value in place (iterative: no recursion limit)."""
    t = type(value)
    if t is float or t is int:
        return _js_number(value)
    if t is not dict and t is not list:
        return value
    stack = [value]
    while stack:
        container = stack.pop()
        items = container.items() if type(container) is dict else enumerate(container)
        changes = []
        for k, v in items:
            tv = type(v)
            if tv is float or (tv is int and abs(v) > _MAX_SAFE):
                changes.append((k, _js_number(v)))
            elif tv is dict or tv is list:
                stack.append(v)
        for k, v in changes:
            container[k] = v
    return value


def _is_js_falsy(v: Any) -> bool:
    # `JSON.parse(body) || {}`: null, false, 0, -0 and "" become {} ([] and {} are truthy)
    return v is None or v is False or v == "" or (type(v) in (int, float) and v == 0)


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


# --- handlers -------------------------------------------------------------------------------


class Prepared:
    """A request that passed dispatch and auth; `run(body)` produces its response."""

    __slots__ = ("handler", "app", "path", "query", "method", "log_path")

    def __init__(self, handler: Callable[..., Awaitable[ApiResponse]], app: Any, path: str | None,
                 query: str, method: str, log_path: str) -> None:
        self.handler = handler
        self.app = app
        self.path = path
        self.query = query
        self.method = method
        self.log_path = log_path

    async def run(self, body: bytes) -> ApiResponse:
        if self.method == "GET":
            await workers_api.before_read(self.app)  # --workers N: activity up to now
        try:
            return await self.handler(self.app, self.path, self.query, body)
        except StoreUnavailable as e:  # the store said why: pass it on (routing goes on)
            log.error("%s %s: %s", self.method, self.log_path, e)
            return fail(500, f"Internal Server Error: {e}")
        except Exception as e:  # store failure: answer instead of hanging (2.9)
            log.error("Error in handler for %s %s: %s", self.method, self.log_path, e,
                      exc_info=True)
            return fail(500, f"Internal Server Error: {type(e).__name__}")


async def get_routes(app: Any, path: str | None, query: str, body: bytes) -> ApiResponse:
    if path and path != "/":
        return get_route(app, path)
    since, error = _inactive_since(query)
    if error is not None:
        return error
    # answered from memory: the table holds every route and the activity (store/sync.py)
    table = app.table
    body = render_table_list(table) if since is None else render_route_list(table, since)
    app.metrics.api_route_get += 1
    return ApiResponse(200, body, JSON)


def get_route(app: Any, path: str) -> ApiResponse:
    route = app.table.get(app.sync.clean_path(path))
    if route is None:
        return EMPTY_404
    return ApiResponse(200, render_route(route), JSON)


async def post_routes(app: Any, path: str | None, query: str, body: bytes) -> ApiResponse:
    try:
        data = orjson.loads(body.decode("utf-8", "replace"))
    except orjson.JSONDecodeError as e:
        return fail(400, f"Body not valid JSON: {e}")
    if _is_js_falsy(data):
        data = {}
    data = js_numbers(data)
    if type(data) is not dict or type(data.get("target")) is not str:
        try:
            shown = _dumps(data).decode()
        except orjson.JSONEncodeError:
            shown = "<too deeply nested>"
        log.warning("Bad POST data: %s", shown)
        return fail(400, "Must specify 'target' as string")
    try:
        _dumps(data)  # what is stored must render (orjson nests at most 254 levels)
    except orjson.JSONEncodeError as e:
        return fail(400, f"Body cannot be stored: {e}")
    target = data["target"]
    try:
        parsed = parse_target(target)
    except InvalidTarget as e:
        return fail(400, f"Bad target: {e}")
    data["target"] = target = parsed.url  # equal text; routes with one target share one string

    sync = app.sync
    path = sync.clean_path(path or "/")
    if app.config.host_routing and path != "/":
        data["host"] = path.split("/")[1]
    log.info("Adding route %s -> %s", path, target)
    route = await sync.add(path, data)  # the store took it; the table routes it
    if route is not None:  # render its list fragment now: the first GET stays cheap
        route_fragment(route, route.last_activity)
    log.info("Route added %s -> %s", path, target)
    app.metrics.api_route_add += 1
    return ApiResponse(201)


async def delete_routes(app: Any, path: str | None, query: str, body: bytes) -> ApiResponse:
    path = path or "/"  # DELETE /api/routes deletes the root route (Q3 fix; CHP hangs)
    sync = app.sync
    if app.table.get(sync.clean_path(path)) is not None:
        log.info("Removing route %s", path)
    status = 204 if await sync.remove(path) else 404
    app.metrics.api_route_delete += 1
    return ApiResponse(status)


HANDLERS: dict[str, Callable[..., Awaitable[ApiResponse]]] = {
    "GET": get_routes,
    "POST": post_routes,
    "DELETE": delete_routes,
}


def preflight(app: Any, method: str, target: str, authorization: bytes | None,
              peer: Any = None) -> ApiResponse | Prepared:
    """Dispatch steps 1-5 (everything before the body is read)."""
    log_path = target.split("?", 1)[0]
    try:
        pathname, query = split_target(target)
    except MalformedPath:
        return fail(400, "Invalid URL")
    if pathname == "/api/routes":
        raw_path = None
    elif pathname.startswith("/api/routes/"):
        raw_path = pathname[len("/api/routes"):]
    else:
        return NOT_FOUND
    handler = HANDLERS.get(method)
    if handler is None:
        return METHOD_NOT_ALLOWED
    if raw_path is not None:
        try:
            raw_path = resolve_dot_segments(decode_uri_component(raw_path))
        except InvalidEscape:
            return fail(400, "Invalid URL escape")
    if not token_ok(app.config.auth_token, authorization):
        # never log the presented credential (CHP does)
        log.debug("Rejecting API request from: %s", _peer_text(peer))
        return FORBIDDEN
    return Prepared(handler, app, raw_path, query, method, log_path)


def _peer_text(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = peer[0]
        return f"[{host}]:{peer[1]}" if ":" in str(host) else f"{host}:{peer[1]}"
    return str(peer) if peer else "unix socket"
