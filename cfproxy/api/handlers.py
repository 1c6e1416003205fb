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
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_tz
from typing import Any
from urllib.parse import parse_qsl

import orjson

from cfproxy.http.urlpath import (
    MalformedPath,
    decode_uri_component,
    pathname_and_query,
    resolve_dot_segments,
)
from cfproxy.log import log
from cfproxy.routing.target import InvalidTarget, parse_target
from cfproxy.store.base import to_timestamp
from cfproxy.store.sync import mirror_add, mirror_remove

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


def iso_ms(ts: float) -> str:
    """`YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, exactly 3 fraction digits), as JS Date.toISOString."""
    ms = math.floor(ts * 1000)
    secs, frac = divmod(ms, 1000)
    t = time.gmtime(secs)
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{frac:03d}Z")


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


def _route_json(data: dict, last_activity: float | None) -> dict:
    out = dict(data)
    if last_activity is not None:
        out["last_activity"] = iso_ms(last_activity)  # a posted key keeps its position
    else:
        out.pop("last_activity", None)
    return out


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


# --- GET /api/routes: cached per-route fragments ----------------------------------------------
#
# The list is `{` + `"prefix":{data...,"last_activity":"ISO"}` joined by "," + `}`, byte for
# byte what orjson.dumps({prefix: _route_json(data, la)}) gives. Each route keeps its rendered
# fragment (Route.api_json) and the last_activity it shows (Route.api_json_la): a route whose
# data and activity did not change costs one attribute compare per GET. A route whose activity
# moved re-renders only the 24-byte timestamp at the end of its fragment. Whoever mutates
# route.data in place (MemoryStore.update) drops the fragment (api_json = None).
# POST renders the new route's fragment at once (~1 us), so even the first GET finds them.
# Measured, 100,000 routes: proxy CPU per GET ~300 ms -> ~20 ms.

_MS_TAILS = [b"%03dZ" % i for i in range(1000)]  # milliseconds + "Z"
_iso_seconds: dict[int, bytes] = {}  # epoch second -> b"YYYY-MM-DDTHH:MM:SS."
_ISO_SECONDS_MAX = 4096
_ISO_LEN = 24  # len(b"YYYY-MM-DDTHH:MM:SS.mmmZ") for years 0000-9999
_TS_MAX = 253402300800.0  # 10000-01-01T00:00:00Z: later timestamps render longer
_LA_KEY = b',"last_activity":"'
_FRAG_END = b'"}'
_TAIL_END = -_ISO_LEN - len(_FRAG_END)  # where the timestamp starts, from the end
_TAIL_START = _TAIL_END - len(_LA_KEY)


def _iso_bytes(ts: float) -> bytes:
    """iso_ms(ts) as bytes, with the date part rendered once per second."""
    secs, frac = divmod(math.floor(ts * 1000), 1000)
    head = _iso_seconds.get(secs)
    if head is None:
        if len(_iso_seconds) >= _ISO_SECONDS_MAX:
            _iso_seconds.clear()
        t = time.gmtime(secs)
        head = _iso_seconds[secs] = (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
                                     f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.").encode()
    return head + _MS_TAILS[frac]


_renders = [0]  # fragments (re)rendered so far


def route_fragment(route: Any, la: float) -> bytes:
    """`"prefix":{...}` for the list response, from the route's cache when still valid."""
    frag = route.api_json
    if frag is not None and route.api_json_la == la:
        return frag
    _renders[0] += 1
    if frag is not None:
        if 0.0 <= la < _TS_MAX and frag[_TAIL_START:_TAIL_END] == _LA_KEY:
            # only the timestamp changed, and it ends the fragment as 24 bytes: swap it.
            # (Inside a JSON string every '"' is escaped, so `,"last_activity":"` + 24 bytes
            # + `"}` at the very end can only be the route's own top-level timestamp.)
            frag = frag[:_TAIL_END] + _iso_bytes(la) + _FRAG_END
            route.api_json = frag
            route.api_json_la = la
            return frag
    data = route.data
    if not data or "last_activity" in data or not (0.0 <= la < _TS_MAX):
        body = _dumps(_route_json(data, la))  # a posted last_activity key keeps its position
        frag = _dumps(route.prefix) + b":" + body
    else:
        frag = _dumps(route.prefix) + b":" + _dumps(data)[:-1] + _LA_KEY + _iso_bytes(la) + _FRAG_END
    route.api_json = frag
    route.api_json_la = la
    return frag


# The last whole-table list: (table, table.version, _renders[0], body). Reused when the table
# had no write, no fragment was (re)rendered anywhere, and every route's fragment still shows
# its current last_activity: then nothing in the body can differ. 100k routes: ~6 ms instead
# of ~13 ms (the 8.6 MB join and its page faults are gone), for the body's memory.
_whole_list: list[Any] = [None, -1, -1, b""]


def render_table_list(table: Any) -> bytes:
    """The whole GET /api/routes body of a RouteTable (see _whole_list)."""
    cached_table, version, renders, body = _whole_list
    if cached_table is table and version == table.version and renders == _renders[0]:
        for route in table:
            if route.api_json is None or route.api_json_la != route.last_activity:
                break
        else:
            return body
    version = table.version
    body = render_route_list(table, None)
    _whole_list[:] = [table, version, _renders[0], body]
    return body


def render_route_list(routes: Any, since: int | None) -> bytes:
    """The GET /api/routes body for table routes, optionally only those inactive since `since` ms."""
    # A plain loop: Python 3.11's attribute access on slots beats map/attrgetter here
    # (100k routes: 3.9 ms against 7.9 ms for the C-level scans).
    parts = []
    append = parts.append
    for route in routes:
        la = route.last_activity
        if since is not None and not la * 1000 < since:  # floor(la * 1000) < since, as CHP
            continue
        frag = route.api_json
        append(frag if frag is not None and route.api_json_la == la else route_fragment(route, la))
    if not parts:
        return b"{}"
    return _join_object(parts)


def _join_object(parts: list) -> bytes:
    """b"{" + b",".join(parts) + b"}" without copying the (large) joined body twice."""
    first, last = parts[0], parts[-1]
    try:
        parts[0] = b"{" + first
        parts[-1] = parts[-1] + b"}"
        return b",".join(parts)
    finally:
        parts[0] = first
        parts[-1] = last


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
        try:
            return await self.handler(self.app, self.path, self.query, body)
        except Exception as e:  # store failure: answer instead of hanging (2.9)
            log.error("Error in handler for %s %s: %s", self.method, self.log_path, e,
                      exc_info=True)
            return fail(500, f"Internal Server Error: {type(e).__name__}")


async def get_routes(app: Any, path: str | None, query: str, body: bytes) -> ApiResponse:
    if path and path != "/":
        return await get_route(app, path)
    since, error = _inactive_since(query)
    if error is not None:
        return error
    store = app.store
    if getattr(store, "owns_table", False) and getattr(store, "table", None) is app.table:
        # fast path: render straight from the table, from cached fragments
        body = render_table_list(app.table) if since is None else render_route_list(app.table, since)
    else:
        out: dict[str, dict] = {}
        for prefix, data in (await store.get_all()).items():
            la = to_timestamp(data.get("last_activity"))
            if since is None or (la is not None and math.floor(la * 1000) < since):
                out[prefix] = _route_json(data, la)
        body = _dumps(out)
    app.metrics.api_route_get += 1
    return ApiResponse(200, body, JSON)


async def get_route(app: Any, path: str) -> ApiResponse:
    store = app.store
    if getattr(store, "owns_table", False) and getattr(store, "table", None) is app.table:
        route = app.table.get(store.clean_path(path))
        if route is None:
            return EMPTY_404
        return ApiResponse(200, _dumps(_route_json(route.data, route.last_activity)), JSON)
    data = await store.get(store.clean_path(path))
    if data is None:
        return EMPTY_404
    return ApiResponse(200, _dumps(_route_json(data, to_timestamp(data.get("last_activity")))), JSON)


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

    store = app.store
    path = store.clean_path(path or "/")
    if app.config.host_routing and path != "/":
        data["host"] = path.split("/")[1]
    log.info("Adding route %s -> %s", path, target)
    await store.add(path, data)
    if getattr(store, "owns_table", False):
        route = app.table.get(path)
        if route is not None:  # render its list fragment now: the first GET stays cheap
            route_fragment(route, route.last_activity)
    else:
        now = time.time()
        await store.update(path, {"last_activity": datetime.fromtimestamp(now, timezone.utc)})
        mirror_add(store, app.table, path, data, now)
    log.info("Route added %s -> %s", path, target)
    app.metrics.api_route_add += 1
    return ApiResponse(201)


async def delete_routes(app: Any, path: str | None, query: str, body: bytes) -> ApiResponse:
    path = path or "/"  # DELETE /api/routes deletes the root route (Q3 fix; CHP hangs)
    store = app.store
    if await store.get(path) is None:
        status = 404
    else:
        log.info("Removing route %s", path)
        await store.remove(path)
        mirror_remove(store, app.table, store.clean_path(path))
        status = 204
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
