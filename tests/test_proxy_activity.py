"""last_activity moves exactly when CHP's does on the web path (reference 4.10).

Route add; every request-body chunk (whatever the final status); completion of a
response with status < 300. Not: 3xx/4xx/5xx responses, proxy-generated 503s, requests
without a matching route. Checked through the REST API, as JupyterHub's culler reads it.
"""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from tests.support.backends import RawConn, api, build_request, request
from tests.support.proxy_process import ProxyProcess, free_port


@pytest.fixture(scope="module")
def proxy(backend):
    with ProxyProcess() as p:
        yield p


def last_activity(p, prefix: str) -> float:
    status, data = api(p.api_port, "GET", "/api/routes" + prefix)
    assert status == 200
    return datetime.fromisoformat(data["last_activity"].replace("Z", "+00:00")).timestamp()


def fresh_route(p, prefix: str, target: str) -> float:
    assert api(p.api_port, "POST", "/api/routes" + prefix, {"target": target})[0] == 201
    t = last_activity(p, prefix)
    assert abs(t - time.time()) < 5  # route add sets it
    time.sleep(0.02)  # the API renders milliseconds
    return t


def test_successful_response_moves_last_activity(proxy, backend):
    t0 = fresh_route(proxy, "/ok", backend.url)
    assert request(proxy.port, "GET", "/ok/x").status == 200
    assert last_activity(proxy, "/ok") > t0


@pytest.mark.parametrize("status", [301, 404, 500])
def test_non_2xx_response_does_not_move_it(proxy, backend, status):
    t0 = fresh_route(proxy, f"/s{status}", backend.url)
    assert request(proxy.port, "GET", f"/s{status}/x?x-status={status}").status == status
    assert last_activity(proxy, f"/s{status}") == t0


def test_request_body_moves_it_even_when_the_answer_is_an_error(proxy, backend):
    t0 = fresh_route(proxy, "/body", backend.url)
    assert request(proxy.port, "POST", "/body/x?x-status=500", body=b"data").status == 500
    assert last_activity(proxy, "/body") > t0


def test_dead_target_does_not_move_it(proxy):
    t0 = fresh_route(proxy, "/dead", f"http://127.0.0.1:{free_port()}")
    assert request(proxy.port, "GET", "/dead/x").status == 503
    assert last_activity(proxy, "/dead") == t0


def test_dead_https_target_is_503_and_does_not_move_it(proxy):
    # 9.2 item 16: route to a dead https target
    t0 = fresh_route(proxy, "/deadtls", f"https://127.0.0.1:{free_port()}")
    assert request(proxy.port, "GET", "/deadtls/x").status == 503
    assert last_activity(proxy, "/deadtls") == t0


def test_streaming_response_counts_only_when_it_ends(proxy, backend):
    t0 = fresh_route(proxy, "/stream", backend.url)
    with RawConn(proxy.port) as c:
        c.send(build_request("GET", "/stream/x?x-sse=3&x-chunk-delay=0.3"))
        c._read_until(b"data: 0")
        assert last_activity(proxy, "/stream") == t0  # head and first event are not "done"
        while b"0\r\n\r\n" not in c.buf:
            assert c._fill()
    time.sleep(0.05)
    assert last_activity(proxy, "/stream") > t0


def test_health_check_and_other_routes_do_not_move_it(proxy, backend):
    t0 = fresh_route(proxy, "/quiet", backend.url)
    fresh_route(proxy, "/loud", backend.url)
    assert request(proxy.port, "GET", "/_chp_healthz").status == 200
    assert request(proxy.port, "GET", "/loud/x").status == 200
    assert request(proxy.port, "GET", "/nomatch").status == 404
    assert last_activity(proxy, "/quiet") == t0
