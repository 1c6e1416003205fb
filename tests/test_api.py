"""REST API behaviours (reference 2 and 9.1) through real sockets against `python -m cfproxy`.

One proxy is shared by the module (token `secret`, debug logs, metrics on); tests use
their own route prefixes so they do not depend on each other. Wire-level and bad-input
behaviours are in tests/test_api_wire.py, other stores in tests/test_api_stores.py.
"""

from __future__ import annotations

import re
import time
import urllib.request

import pytest

from tests.api_client import Conn, build, call, post
from tests.support.proxy_process import ProxyProcess, free_port

DEFAULT = "http://127.0.0.1:9"
T = "http://127.0.0.1:9100"
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(scope="module")
def px():
    metrics_port = free_port()
    with ProxyProcess("--default-target", DEFAULT, "--log-level", "debug",
                      "--metrics-port", str(metrics_port), "--metrics-ip", "127.0.0.1") as p:
        p.metrics_port = metrics_port
        yield p


@pytest.fixture(scope="module")
def api(px) -> int:
    return px.api_port


def routes(api: int, query: str = "") -> dict:
    r = call(api, "GET", "/api/routes" + query)
    assert r.status == 200, r
    return r.json()


# --- 9.1: listing, single get -----------------------------------------------------------------

def test_fresh_proxy_lists_exactly_the_default_route(proxy):
    p = proxy("--default-target", DEFAULT)
    r = call(p.api_port, "GET", "/api/routes")
    assert r.status == 200
    assert r.headers["content-type"] == "application/json"
    data = r.json()
    assert list(data) == ["/"]
    assert list(data["/"]) == ["target", "last_activity"]
    assert data["/"]["target"] == DEFAULT
    assert ISO_MS.match(data["/"]["last_activity"])


def test_list_with_trailing_slash_is_the_list(api):
    assert "/" in call(api, "GET", "/api/routes/").json()


def test_get_single_route_returns_its_data_with_target(api):
    assert post(api, "/api/routes/single/a", {"target": T, "user": "a"}).status == 201
    r = call(api, "GET", "/api/routes/single/a")
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    data = r.json()
    assert data["target"] == T and data["user"] == "a"
    assert ISO_MS.match(data["last_activity"])


def test_get_missing_route_is_404_with_empty_body(api):
    r = call(api, "GET", "/api/routes/no/such/route")
    assert r.status == 404 and r.body == b""
    assert "content-type" not in r.headers


def test_get_single_route_is_exact_not_prefix_matching(api):
    post(api, "/api/routes/exact/a", {"target": T})
    assert call(api, "GET", "/api/routes/exact").status == 404
    assert call(api, "GET", "/api/routes/exact/a/b").status == 404
    assert call(api, "GET", "/api/routes/exact/a/").status == 200


# --- POST -----------------------------------------------------------------------------------

def test_post_stores_route_and_answers_201_with_empty_body(api):
    before = time.time()
    r = post(api, "/api/routes/user/foo", {"target": T})
    assert r.status == 201 and r.body == b""
    route = routes(api)["/user/foo"]
    assert route["target"] == T
    assert ISO_MS.match(route["last_activity"])
    ts = time.mktime(time.strptime(route["last_activity"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert before - 2 <= ts <= time.time() + 1


def test_post_percent_encoded_at_sign_is_stored_decoded(api):
    assert post(api, "/api/routes/user/foo%40bar", {"target": T}).status == 201
    assert "/user/foo@bar" in routes(api)
    assert call(api, "GET", "/api/routes/user/foo@bar").status == 200


def test_post_encoded_slash_becomes_a_real_separator(api):
    post(api, "/api/routes/enc/a%2Fb", {"target": T})
    assert "/enc/a/b" in routes(api)


def test_post_non_ascii_key_round_trips(api):
    post(api, "/api/routes/user/zo%C3%AB", {"target": T, "name": "zoë"})
    data = routes(api)
    assert data["/user/zoë"]["name"] == "zoë"
    assert call(api, "GET", "/api/routes/user/zo%C3%AB").json()["name"] == "zoë"
    assert call(api, "DELETE", "/api/routes/user/zo%C3%AB").status == 204
    assert "/user/zoë" not in routes(api)


@pytest.mark.parametrize("raw, key", [
    ("/sp%20ace", "/sp ace"), ("/Case/MiXed", "/Case/MiXed"), ("/q?foo=bar", "/q"),
    ("/x//y/", "/x//y"), ("/dot/%2e%2e/up", "/up"), ("/dot2/./here", "/dot2/here"),
    ("/plus+sign", "/plus+sign"),
])
def test_post_keys_are_normalised_like_chp(api, raw, key):
    assert post(api, "/api/routes" + raw, {"target": T}).status == 201
    assert key in routes(api)
    assert call(api, "GET", "/api/routes" + key.replace(" ", "%20")).status == 200


def test_post_double_leading_slash_key_is_stored_as_its_routed_form(api):
    # quirk Q4: CHP stores "//double" yet routes it as "/double"
    post(api, "/api/routes//double", {"target": T})
    data = routes(api)
    assert "/double" in data and "//double" not in data
    assert call(api, "GET", "/api/routes/double").status == 200


def test_post_without_path_creates_the_root_route(api):
    r = post(api, "/api/routes", {"target": DEFAULT, "root": True})
    assert r.status == 201
    assert routes(api)["/"]["root"] is True
    post(api, "/api/routes/", {"target": DEFAULT})
    assert "root" not in routes(api)["/"]


def test_post_replaces_existing_route_without_merging_and_keeps_its_position(api):
    post(api, "/api/routes/replace/a", {"target": T, "old": 1})
    post(api, "/api/routes/replace/b", {"target": T})
    post(api, "/api/routes/replace/a", {"target": "http://127.0.0.1:9101"})
    data = routes(api)
    keys = [k for k in data if k.startswith("/replace/")]
    assert keys == ["/replace/a", "/replace/b"]
    assert data["/replace/a"] == {"target": "http://127.0.0.1:9101",
                                  "last_activity": data["/replace/a"]["last_activity"]}


def test_delete_then_add_moves_the_route_to_the_end(api):
    post(api, "/api/routes/order/a", {"target": T})
    post(api, "/api/routes/order/b", {"target": T})
    call(api, "DELETE", "/api/routes/order/a")
    post(api, "/api/routes/order/a", {"target": T})
    assert [k for k in routes(api) if k.startswith("/order/")] == ["/order/b", "/order/a"]


def test_post_body_is_stored_as_parsed_in_body_order_then_last_activity(api):
    body = b'{"z": 1, "target": "' + T.encode() + b'", "a": [1, {"b": null}], "m": "x"}'
    post(api, "/api/routes/order/keys", body)
    data = call(api, "GET", "/api/routes/order/keys").json()
    assert list(data) == ["z", "target", "a", "m", "last_activity"]
    assert data["a"] == [1, {"b": None}]


def test_posted_last_activity_is_overwritten_in_place(api):
    body = b'{"last_activity": "1999-01-01", "target": "' + T.encode() + b'"}'
    post(api, "/api/routes/la/posted", body)
    data = call(api, "GET", "/api/routes/la/posted").json()
    assert list(data) == ["last_activity", "target"]
    assert data["last_activity"].startswith(time.strftime("%Y", time.gmtime()))


def test_json_numbers_render_like_javascript(api):
    body = b'{"target": "' + T.encode() + b'", "big": 2.5e10, "f": 1.5, "neg": -0.0, "i": 7, "huge": 9007199254740993}'
    post(api, "/api/routes/json/numbers", body)
    raw = call(api, "GET", "/api/routes/json/numbers").body
    assert b'"big":25000000000,' in raw
    assert b'"f":1.5,' in raw and b'"neg":0,' in raw and b'"i":7,' in raw
    assert b'"huge":9007199254740992' in raw  # a JS double


def test_json_output_is_compact_utf8_with_escaped_controls_and_unescaped_slash(api):
    body = f'{{"target": "{T}", "s": "é/\\u2028\\u0001"}}'
    post(api, "/api/routes/json/text", body.encode())
    raw = call(api, "GET", "/api/routes/json/text").body
    assert '"s":"é/\u2028\\u0001"'.encode() in raw
    assert b": " not in raw and b", " not in raw


def test_duplicate_keys_in_a_post_body_last_wins(api):
    post(api, "/api/routes/json/dup", b'{"target": "http://127.0.0.1:1", "target": "' + T.encode() + b'"}')
    assert call(api, "GET", "/api/routes/json/dup").json()["target"] == T


def test_post_needs_no_content_type(api):
    # JupyterHub posts without a JSON content type; curl -d sends form-urlencoded
    for ctype in (None, "text/plain", "application/x-www-form-urlencoded"):
        headers = {"Content-Type": ctype} if ctype else {}
        body = b'{"target": "' + T.encode() + b'"}'
        assert call(api, "POST", "/api/routes/ctype/x", body, headers=headers).status == 201


@pytest.mark.parametrize("target", [
    "http://127.0.0.1:9000", "https://hub.example:8443/prefix?x=1",
    "http+unix://%2Ftmp%2Fapp.sock/prefix", "unix+http://%2Ftmp%2Fapp.sock", "HTTP://127.0.0.1:1",
])
def test_post_accepts_every_scheme_the_proxy_can_reach(api, target):
    assert post(api, "/api/routes/schemes/ok", {"target": target}).status == 201
    assert call(api, "GET", "/api/routes/schemes/ok").json()["target"] == target


# --- DELETE ---------------------------------------------------------------------------------

def test_delete_removes_route_with_empty_204_then_404(api):
    post(api, "/api/routes/user/bar", {"target": T})
    r = call(api, "DELETE", "/api/routes/user/bar")
    assert r.status == 204 and r.body == b""
    assert "/user/bar" not in routes(api)
    r = call(api, "DELETE", "/api/routes/user/bar")
    assert r.status == 404 and r.body == b""


def test_delete_of_a_prefix_keeps_longer_routes(api):
    post(api, "/api/routes/del/p", {"target": T})
    post(api, "/api/routes/del/p/longer", {"target": T})
    assert call(api, "DELETE", "/api/routes/del/p").status == 204
    data = routes(api)
    assert "/del/p/longer" in data and "/del/p" not in data


def test_delete_with_trailing_slash_removes_the_route(api):
    post(api, "/api/routes/del/slash", {"target": T})
    assert call(api, "DELETE", "/api/routes/del/slash/").status == 204
    assert call(api, "GET", "/api/routes/del/slash").status == 404


def test_delete_without_path_deletes_the_root_route(proxy):
    # quirk Q3: CHP never answers this request
    p = proxy("--default-target", DEFAULT)
    assert call(p.api_port, "DELETE", "/api/routes").status == 204
    assert routes(p.api_port) == {}
    assert call(p.api_port, "DELETE", "/api/routes").status == 404
    post(p.api_port, "/api/routes/", {"target": DEFAULT})
    assert call(p.api_port, "DELETE", "/api/routes/").status == 204


# --- inactive_since -------------------------------------------------------------------------

def test_inactive_since_returns_routes_strictly_earlier(api):
    post(api, "/api/routes/idle/old", {"target": T})
    time.sleep(0.02)
    post(api, "/api/routes/idle/new", {"target": T})
    data = routes(api)
    old, new = data["/idle/old"]["last_activity"], data["/idle/new"]["last_activity"]
    assert old < new
    for name in ("inactive_since", "inactiveSince"):
        got = routes(api, f"?{name}={new}")
        assert "/idle/old" in got and "/idle/new" not in got
        got = routes(api, f"?{name}={old}")
        assert "/idle/old" not in got  # not strictly earlier than itself
        assert routes(api, f"?{name}=1970-01-01T00:00:00.001Z") == {}
        assert {"/idle/old", "/idle/new"} <= set(routes(api, f"?{name}=2999-01-01"))


def test_inactive_since_camel_case_wins_unless_empty(api):
    assert routes(api, "?inactiveSince=1970-01-02&inactive_since=2999-01-01") == {}
    assert routes(api, "?inactiveSince=&inactive_since=1970-01-02") == {}
    assert "/" in routes(api, "?inactiveSince=&inactive_since=")


@pytest.mark.parametrize("value", [
    "2020-01-01", "2020-01-01T00:00:00Z", "2030-01-01T00:00:00.000Z", "2030-01-01T00:00:00%2B05:00",
    "2030-01-01T00:00:00.123456-0130", "2030", "2030-06", "2030-01-01 00:00", "2030-01-01T10:20",
    "Tue, 01 Jan 2030 00:00:00 GMT", "01 Jan 2030 00:00:00 %2B0200",
])
def test_inactive_since_accepts_iso_8601_and_rfc_2822(api, value):
    assert call(api, "GET", "/api/routes?inactive_since=" + value.replace(" ", "%20")).status == 200


@pytest.mark.parametrize("value, shown", [
    ("endoftheuniverse", "endoftheuniverse"), ("2030-13-01", "2030-13-01"), ("now", "now"),
    ("1e3", "1e3"), ("20300101", "20300101"), ("%20", " "), ("2030-02-30", "2030-02-30"),
    ("2030-01-01T00:00:00+05:00", "2030-01-01T00:00:00 05:00"),  # "+" is a space in a query
    ("Mon, 32 Jan 2030 00:00:00 GMT", "Mon, 32 Jan 2030 00:00:00 GMT"),
])
def test_inactive_since_rejects_other_formats_with_chp_message(api, value, shown):
    r = call(api, "GET", "/api/routes?inactiveSince=" + value.replace(" ", "%20"))
    assert r.status == 400
    assert r.text == f"Invalid datestamp '{shown}' must be ISO8601."


def test_single_route_get_ignores_inactive_since(api):
    post(api, "/api/routes/idle/single", {"target": T})
    assert call(api, "GET", "/api/routes/idle/single?inactive_since=bogus").status == 200


# --- authentication (2.3, quirk Q1) ---------------------------------------------------------

@pytest.mark.parametrize("header, ok", [
    ("token secret", True), ("token secret extra", True), ("Bearer token secret", True),
    ("xtoken secret", True), ("token    secret", True), ("token\tsecret", True),
    ("Token secret", False), ("xtokensecret", False), ("token wrong", False),
    ("token secretX", False), ("token secre", False), ("token ", False), ("secret", False),
    ("Bearer secret", False), (None, False),
])
def test_token_variants(api, header, ok):
    headers = {"Authorization": header} if header is not None else {}
    r = call(api, "GET", "/api/routes", token=None, headers=headers)
    assert r.status == (200 if ok else 403)
    if not ok:
        assert r.body == b"" and "content-type" not in r.headers


@pytest.mark.parametrize("method, path, body", [
    ("GET", "/api/routes", None), ("GET", "/api/routes/x", None),
    ("POST", "/api/routes/unauth", b'{"target": "http://127.0.0.1:1"}'),
    ("DELETE", "/api/routes/", None),
])
def test_every_endpoint_requires_the_token(api, method, path, body):
    assert call(api, method, path, body, token=None).status == 403
    assert call(api, method, path, body, token="wrong").status == 403
    assert "/unauth" not in routes(api)
    assert "/" in routes(api)


def test_unauthenticated_bad_json_is_403_not_400(api):
    # quirk Q2 fix: authentication before the body is read
    assert call(api, "POST", "/api/routes/x", b"{not json", token=None).status == 403


def test_rejected_request_logs_the_peer_not_the_credential(px):
    call(px.api_port, "GET", "/api/routes", token="hunter2-credential")
    out = px.wait_for_output("Rejecting API request from: 127.0.0.1")
    assert "hunter2-credential" not in out
    assert "secret" not in out


def test_api_without_a_token_is_open(proxy):
    p = proxy("--default-target", DEFAULT, token=None)
    assert call(p.api_port, "GET", "/api/routes", token=None).status == 200
    assert post(p.api_port, "/api/routes/open", {"target": T}, token=None).status == 201


# --- dispatch (2.2) -------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["PUT", "PATCH", "OPTIONS", "HEAD", "TRACE", "get"])
def test_other_methods_are_405_before_authentication(api, method):
    r = call(api, method, "/api/routes/x", token=None)
    assert r.status == 405
    if method != "HEAD":
        assert r.text == "Method not supported"
        assert r.headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize("path", ["/", "/api", "/api/", "/api/routesX", "/api/route",
                                  "/api/routes%2Fx", "/API/routes", "/favicon.ico", "*"])
def test_paths_outside_api_routes_are_404_not_found(api, path):
    for method in ("GET", "POST", "PUT"):
        r = call(api, method, path, token=None)
        assert r.status == 404 and r.text == "Not Found"


@pytest.mark.parametrize("path", ["/api/x/../routes", "/api/routes/./", "/api/%2e%2e/api/routes",
                                  "/x/..%2F/api/routes", "http://other.example/api/routes",
                                  "//evil.example/api/routes", "/api\\routes"])
def test_request_target_is_resolved_like_a_url_before_dispatch(api, path):
    if path == "/x/..%2F/api/routes":  # "..%2F" is not a dot segment
        assert call(api, "GET", path).status == 404
    else:
        assert call(api, "GET", path).status == 200


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_malformed_escape_is_400_invalid_url_escape(api, method):
    # quirk Q3: CHP never answers these
    for path in ("/api/routes/%E0%A4%A", "/api/routes/%zz", "/api/routes/a%", "/api/routes/%C3"):
        body = b'{"target": "http://127.0.0.1:1"}' if method == "POST" else None
        r = call(api, method, path, body)
        assert r.status == 400 and r.text == "Invalid URL escape"


def test_target_with_an_invalid_host_is_400_and_the_api_keeps_serving(api):
    # CHP's `new URL` throws on these and the request hangs (reference 2.9)
    for target in ("//[zz/api/routes", "http://a:99999/api/routes"):
        r = call(api, "GET", target)
        assert r.status == 400 and r.text == "Invalid URL"
    assert call(api, "GET", "/api/routes").status == 200


# --- logs (reference 7) and metrics (6) -----------------------------------------------------

def test_post_and_delete_log_chp_lines(px):
    api = px.api_port
    post(api, "/api/routes/logs/a?qmarker=1", {"target": T})
    call(api, "DELETE", "/api/routes/logs/a/")
    out = px.wait_for_output("204 DELETE /api/routes/logs/a/ ")
    assert f"info: Adding route /logs/a -> {T}" in out
    assert f"info: Route added /logs/a -> {T}" in out
    assert "info: 201 POST /api/routes/logs/a \n" in out
    assert "info: Removing route /logs/a/\n" in out
    assert "qmarker" not in out


def test_bad_post_logs_warning_with_the_data(px):
    post(px.api_port, "/api/routes/logs/bad", {"nottarget": 2.5e10})
    # the access line is written after the response, so wait for it rather than race it
    out = px.wait_for_output("warn: 400 POST /api/routes/logs/bad Must specify 'target' as string")
    assert 'Bad POST data: {"nottarget":25000000000}' in out


def metric(px, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{px.metrics_port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_api_metrics_count_successful_operations_and_statuses(px):
    api = px.api_port
    get0, add0, del0 = metric(px, "api_route_get"), metric(px, "api_route_add"), metric(px, "api_route_delete")
    s403 = metric(px, 'requests_api{status="403"}')
    routes(api)
    call(api, "GET", "/api/routes/metrics/none")  # single get: not counted
    post(api, "/api/routes/metrics/a", {"target": T})
    post(api, "/api/routes/metrics/b", {"x": 1})  # 400: not an add
    call(api, "DELETE", "/api/routes/metrics/a")  # 204
    call(api, "DELETE", "/api/routes/metrics/a")  # 404 counts too
    call(api, "GET", "/api/routes", token="bad")
    assert metric(px, "api_route_get") == get0 + 1
    assert metric(px, "api_route_add") == add0 + 1
    assert metric(px, "api_route_delete") == del0 + 2
    assert metric(px, 'requests_api{status="403"}') == s403 + 1
    assert metric(px, 'requests_api{status="201"}') >= 1


# --- keep-alive -----------------------------------------------------------------------------

def test_responses_carry_keep_alive_headers_and_the_connection_is_reused(api):
    with Conn(api) as c:
        for _i in range(3):
            c.send(build("GET", "/api/routes"))
            r = c.read_response()
            assert r.status == 200
            assert r.headers["connection"] == "keep-alive"
            assert r.headers["keep-alive"] == "timeout=5"
            assert "date" in r.headers
        c.send(build("POST", "/api/routes/ka/x", b"{bad"))
        assert c.read_response().status == 400
        c.send(build("GET", "/api/routes/ka/x"))
        assert c.read_response().status == 404  # still the same connection
