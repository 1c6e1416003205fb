"""The metrics endpoint: CHP's exposition byte for byte, values that move with traffic (reference 6).

In-process: the quantile estimator, the latency histogram, number formatting, and the CHP
families of a fresh process compared with what CHP 5.3.0 itself prints. Against the real
process (`--metrics-port`, `--metrics-socket`): names/HELP/TYPE/labels of every family,
routing of `/metrics`, and counters moving with web, websocket and API traffic.
"""

from __future__ import annotations

import asyncio
import bisect
import http.client
import json
import random
import re
import socket
import time
import types

import pytest

from cfproxy.metrics import LATENCY_BUCKETS, SUMMARY_QUANTILES, Metrics, Summary
from cfproxy.metrics_server import format_value, render_metrics
from tests.support.backends import EchoBackend, wait_until
from tests.support.proxy_process import (
    TOKEN,
    ProxyProcess,
    free_port,
    wait_for_port,
    wait_for_unix,
)
from tests.support.ws_backend import WSBackend
from tests.support.ws_client import HandshakeRefused, WSClient

# What CHP 5.3.0 prints for its own families right after start-up (captured from
# `configurable-http-proxy --metrics-port`, everything from `# HELP api_route_get` on).
CHP_FRESH = (
    "# HELP api_route_get Count of API route get requests\n# TYPE api_route_get counter\n"
    "api_route_get 0\n\n"
    "# HELP api_route_add Count of API route add requests\n# TYPE api_route_add counter\n"
    "api_route_add 0\n\n"
    "# HELP api_route_delete Count of API route delete requests\n"
    "# TYPE api_route_delete counter\napi_route_delete 0\n\n"
    "# HELP find_target_for_req Summary of find target requests\n"
    "# TYPE find_target_for_req summary\n"
    'find_target_for_req{quantile="0.01"} 0\nfind_target_for_req{quantile="0.05"} 0\n'
    'find_target_for_req{quantile="0.5"} 0\nfind_target_for_req{quantile="0.9"} 0\n'
    'find_target_for_req{quantile="0.95"} 0\nfind_target_for_req{quantile="0.99"} 0\n'
    'find_target_for_req{quantile="0.999"} 0\n'
    "find_target_for_req_sum 0\nfind_target_for_req_count 0\n\n"
    "# HELP last_activity_updating Summary of last activity updating requests\n"
    "# TYPE last_activity_updating summary\n"
    'last_activity_updating{quantile="0.01"} 0\nlast_activity_updating{quantile="0.05"} 0\n'
    'last_activity_updating{quantile="0.5"} 0\nlast_activity_updating{quantile="0.9"} 0\n'
    'last_activity_updating{quantile="0.95"} 0\nlast_activity_updating{quantile="0.99"} 0\n'
    'last_activity_updating{quantile="0.999"} 0\n'
    "last_activity_updating_sum 0\nlast_activity_updating_count 0\n\n"
    "# HELP requests_ws Count of websocket requests\n# TYPE requests_ws counter\n"
    "requests_ws 0\n\n"
    "# HELP requests_web Count of web requests\n# TYPE requests_web counter\n"
    "requests_web 0\n\n"
    "# HELP requests_proxy Count of proxy requests\n# TYPE requests_proxy counter\n\n"
    "# HELP requests_api Count of API requests\n# TYPE requests_api counter\n"
)

# (name, type, HELP) of every family, in exposition order
FAMILIES = [
    ("process_cpu_user_seconds_total", "counter", "Total user CPU time spent in seconds."),
    ("process_cpu_system_seconds_total", "counter", "Total system CPU time spent in seconds."),
    ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds."),
    ("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds."),
    ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes."),
    ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes."),
    ("process_heap_bytes", "gauge", "Process heap size in bytes."),
    ("process_open_fds", "gauge", "Number of open file descriptors."),
    ("process_max_fds", "gauge", "Maximum number of open file descriptors."),
    # prom-client's eventLoopLag families (names, types and HELP as CHP 5.3.0 prints them)
    ("nodejs_eventloop_lag_seconds", "gauge", "Lag of event loop in seconds."),
    ("nodejs_eventloop_lag_min_seconds", "gauge", "The minimum recorded event loop delay."),
    ("nodejs_eventloop_lag_max_seconds", "gauge", "The maximum recorded event loop delay."),
    ("nodejs_eventloop_lag_mean_seconds", "gauge", "The mean of the recorded event loop delays."),
    ("nodejs_eventloop_lag_stddev_seconds", "gauge",
     "The standard deviation of the recorded event loop delays."),
    ("nodejs_eventloop_lag_p50_seconds", "gauge",
     "The 50th percentile of the recorded event loop delays."),
    ("nodejs_eventloop_lag_p90_seconds", "gauge",
     "The 90th percentile of the recorded event loop delays."),
    ("nodejs_eventloop_lag_p99_seconds", "gauge",
     "The 99th percentile of the recorded event loop delays."),
    ("api_route_get", "counter", "Count of API route get requests"),
    ("api_route_add", "counter", "Count of API route add requests"),
    ("api_route_delete", "counter", "Count of API route delete requests"),
    ("find_target_for_req", "summary", "Summary of find target requests"),
    ("last_activity_updating", "summary", "Summary of last activity updating requests"),
    ("requests_ws", "counter", "Count of websocket requests"),
    ("requests_web", "counter", "Count of web requests"),
    ("requests_proxy", "counter", "Count of proxy requests"),
    ("requests_api", "counter", "Count of API requests"),
    ("cfproxy_open_connections", "gauge", None),
    ("cfproxy_open_tunnels", "gauge", None),
    ("cfproxy_upstream_idle_connections", "gauge", None),
    ("cfproxy_upstream_pooled_connections", "gauge", None),
    ("cfproxy_routes", "gauge", None),
    ("cfproxy_client_received_bytes_total", "counter", None),
    ("cfproxy_client_sent_bytes_total", "counter", None),
    ("cfproxy_request_duration_seconds", "histogram", None),
    ("cfproxy_timeouts_total", "counter", None),
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
AUTH = {"Authorization": f"token {TOKEN}"}


def fake_app(**kw) -> types.SimpleNamespace:
    base = dict(metrics=Metrics(), connections=set(), tunnels=set(), upstreams=None, table=[])
    base.update(kw)
    return types.SimpleNamespace(**base)


def parse(text: str) -> tuple[list[tuple[str, str, str]], dict[str, float]]:
    """Families [(name, type, help)] in order, and samples {'name{labels}': value}."""
    families, samples = [], {}
    helps: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, h = line[7:].partition(" ")
            helps[name] = h
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            families.append((name, kind, helps[name]))
        elif line:
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return families, samples


# --- in process: formats and estimators ------------------------------------------------------


def test_fresh_chp_families_are_byte_identical_to_chp():
    text = render_metrics(fake_app()).decode()
    start, end = text.index("# HELP api_route_get"), text.index("# HELP cfproxy_")
    assert text[start:end] == CHP_FRESH + "\n"


def test_families_are_separated_by_one_blank_line_and_text_ends_with_newline():
    text = render_metrics(fake_app()).decode()
    assert text.endswith("\n") and not text.endswith("\n\n\n")
    blocks = text.split("\n\n")
    assert all(b.startswith("# HELP ") for b in blocks)
    assert len(blocks) == len(FAMILIES)


def test_labelled_counters_print_values_once_seen_in_insertion_order():
    app = fake_app()
    app.metrics.requests_proxy[503] += 1
    app.metrics.requests_proxy[200] += 2
    app.metrics.requests_api[201] += 1
    text = render_metrics(app).decode()
    assert ('# TYPE requests_proxy counter\nrequests_proxy{status="503"} 1\n'
            'requests_proxy{status="200"} 2\n\n') in text
    assert '# TYPE requests_api counter\nrequests_api{status="201"} 1\n' in text


def test_label_values_are_escaped():
    app = fake_app()
    app.metrics.requests_api['a"b\\c\nd'] += 1
    assert 'requests_api{status="a\\"b\\\\c\\nd"} 1' in render_metrics(app).decode()


@pytest.mark.parametrize("value, text", [
    (0, "0"), (7, "7"), (2.0, "2"), (0.5, "0.5"), (1e-5, "0.00001"), (2.5e-7, "0.00000025"),
    (1e-8, "1e-08"), (0.000320611, "0.000320611"), (1795667056.0, "1795667056"),
    (1e21, "1e+21"), (float("inf"), "+Inf"), (float("-inf"), "-Inf"), (float("nan"), "NaN"),
])
def test_values_are_written_as_javascript_writes_numbers(value, text):
    assert format_value(value) == text


def test_empty_summary_reports_zero_quantiles():
    s = Summary()
    assert [s.quantile(q) for q in SUMMARY_QUANTILES] == [0.0] * 7
    assert (s.sum, s.count) == (0.0, 0)


def test_single_observation_is_every_quantile():
    s = Summary()
    s.observe(0.000320611)
    assert {s.quantile(q) for q in SUMMARY_QUANTILES} == {0.000320611}
    assert (s.sum, s.count) == (0.000320611, 1)


def test_small_summary_interpolates_between_observations():
    s = Summary()
    for v in (1.0, 2.0, 3.0, 4.0):
        s.observe(v)
    assert s.quantile(0.01) == 1.0 and s.quantile(0.999) == 4.0
    assert 2.0 <= s.quantile(0.5) <= 3.0


@pytest.mark.parametrize("dist", ["uniform", "lognormal", "bimodal"])
def test_lifetime_quantiles_are_accurate_and_memory_bounded(dist):
    rng = random.Random(5)
    draw = {
        "uniform": rng.random,
        "lognormal": lambda: rng.lognormvariate(-9, 1.5),
        "bimodal": lambda: rng.gauss(0.001, 0.0001) if rng.random() < 0.9 else rng.gauss(0.5, 0.05),
    }[dist]
    values = [draw() for _ in range(100_000)]
    s = Summary()
    for v in values:
        s.observe(v)
    values.sort()
    for q in SUMMARY_QUANTILES:
        rank = bisect.bisect_left(values, s.quantile(q)) / len(values)
        assert abs(rank - q) < 0.002 + q * 0.002, (q, rank)
    assert s.centroid_count() <= 250
    assert s.count == len(values) and s.sum == pytest.approx(sum(values))
    assert s.quantile(0.0) >= values[0] and s.quantile(1.0) <= values[-1]


def test_summary_keeps_the_whole_lifetime_not_a_window():
    s = Summary()
    for _ in range(50_000):
        s.observe(1.0)
    for _ in range(50_000):
        s.observe(3.0)
    assert s.quantile(0.25) == pytest.approx(1.0)
    assert s.quantile(0.75) == pytest.approx(3.0)


def test_request_latency_histogram_by_status_class():
    app = fake_app()
    m = app.metrics
    m.observe_request(0.004, 200)
    m.observe_request(0.005, 204)  # on a bound: counted in le="0.005"
    m.observe_request(100.0, 503)  # beyond the last bucket: only +Inf
    m.observe_request(0.01, 0)  # no status: "other"
    _, samples = parse(render_metrics(app).decode())
    name = "cfproxy_request_duration_seconds"
    assert samples[f'{name}_bucket{{class="2xx",le="0.0025"}}'] == 0
    assert samples[f'{name}_bucket{{class="2xx",le="0.005"}}'] == 2
    assert samples[f'{name}_bucket{{class="2xx",le="+Inf"}}'] == 2
    assert samples[f'{name}_count{{class="2xx"}}'] == 2
    assert samples[f'{name}_sum{{class="2xx"}}'] == pytest.approx(0.009)
    assert samples[f'{name}_bucket{{class="5xx",le="{format_value(LATENCY_BUCKETS[-1])}"}}'] == 0
    assert samples[f'{name}_bucket{{class="5xx",le="+Inf"}}'] == 1
    assert samples[f'{name}_count{{class="other"}}'] == 1
    assert not any('class="4xx"' in k for k in samples)  # classes appear once seen


def test_cfproxy_gauges_read_the_app():
    class Pools:
        def idle_count(self) -> int:
            return 3

    app = fake_app(connections={1, 2}, tunnels={1}, upstreams=Pools(), table=[1, 2, 3, 4])
    app.metrics.bytes_in, app.metrics.bytes_out = 10, 20
    _, samples = parse(render_metrics(app).decode())
    assert samples["cfproxy_open_connections"] == 2
    assert samples["cfproxy_open_tunnels"] == 1
    assert samples["cfproxy_upstream_idle_connections"] == 3
    assert samples["cfproxy_routes"] == 4
    assert samples["cfproxy_client_received_bytes_total"] == 10
    assert samples["cfproxy_client_sent_bytes_total"] == 20


def test_a_broken_upstream_pool_does_not_break_the_scrape():
    class Broken:
        def idle_count(self) -> int:
            raise RuntimeError("boom")

    _, samples = parse(render_metrics(fake_app(upstreams=Broken())).decode())
    assert samples["cfproxy_upstream_idle_connections"] == 0


# --- the real process ------------------------------------------------------------------


@pytest.fixture(scope="module")
def backend():
    with EchoBackend() as b:
        yield b


@pytest.fixture(scope="module")
def ws_backend():
    with WSBackend() as b:
        yield b


@pytest.fixture(scope="module")
def proxy(backend, ws_backend):
    """No default route: /echo -> EchoBackend, /ws -> WSBackend, added through the API."""
    with ProxyProcess("--metrics-ip", "127.0.0.1", "--metrics-port", str(free_port())) as p:
        for prefix, target in (("/echo", backend.url), ("/ws", ws_backend.url)):
            status, _ = api(p, "POST", f"/api/routes{prefix}", {"target": target})
            assert status == 201
        wait_for_port(metrics_port(p))
        yield p


def metrics_port(p: ProxyProcess) -> int:
    return int(p.args[p.args.index("--metrics-port") + 1])


def api(p: ProxyProcess, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", p.api_port, timeout=10)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers=AUTH)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def get(port: int, path: str, method: str = "GET", headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def scrape(p: ProxyProcess) -> tuple[list[tuple[str, str, str]], dict[str, float]]:
    status, headers, body = get(metrics_port(p), "/metrics")
    assert status == 200 and headers["Content-Type"] == CONTENT_TYPE
    return parse(body.decode())


def test_every_family_is_exposed_with_chp_names_types_and_help(proxy):
    families, _ = scrape(proxy)
    assert [(n, t) for n, t, _h in families] == [(n, t) for n, t, _h in FAMILIES]
    for (name, _t, got), (_n, _t2, want) in zip(families, FAMILIES, strict=True):
        if want is not None:
            assert got == want, name
        else:
            assert got, name
    assert not any(n.endswith("_created") for n, _t, _h in families)


def test_summaries_expose_chp_quantiles_sum_and_count(proxy):
    _, samples = scrape(proxy)
    for name in ("find_target_for_req", "last_activity_updating"):
        for q in ("0.01", "0.05", "0.5", "0.9", "0.95", "0.99", "0.999"):
            assert f'{name}{{quantile="{q}"}}' in samples
        assert f"{name}_sum" in samples and f"{name}_count" in samples


@pytest.mark.parametrize("method", ["GET", "POST", "HEAD", "DELETE", "PUT"])
def test_metrics_answers_any_method(proxy, method):
    status, headers, body = get(metrics_port(proxy), "/metrics", method)
    assert status == 200 and headers["Content-Type"] == CONTENT_TYPE
    assert (body == b"") if method == "HEAD" else body.startswith(b"# HELP process_")


@pytest.mark.parametrize("path", ["/", "/metrics/", "/metrics?x=1", "/Metrics", "//metrics",
                                  "/metrics/x", "/metricsx", "/%6detrics"])
def test_anything_but_exactly_slash_metrics_is_404(proxy, path):
    status, headers, body = get(metrics_port(proxy), path)
    assert (status, body) == (404, b"Not Found")
    assert "Content-Type" not in headers


def test_metrics_connection_is_kept_alive(proxy):
    conn = http.client.HTTPConnection("127.0.0.1", metrics_port(proxy), timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", "/metrics")
            r = conn.getresponse()
            assert r.status == 200
            r.read()
        first = conn.sock
        conn.request("GET", "/nope")
        r = conn.getresponse()
        assert r.status == 404 and r.read() == b"Not Found"
        assert conn.sock is first
    finally:
        conn.close()


def test_malformed_request_to_metrics_gets_400_and_close(proxy):
    with socket.create_connection(("127.0.0.1", metrics_port(proxy)), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ")


def test_web_requests_move_requests_web_and_requests_proxy(proxy):
    _, before = scrape(proxy)
    for _ in range(3):
        assert get(proxy.port, "/echo/x")[0] == 200
    assert get(proxy.port, "/no/such/route")[0] == 404
    _, after = scrape(proxy)
    assert after["requests_web"] - before["requests_web"] == 4
    ok, missing = 'requests_proxy{status="200"}', 'requests_proxy{status="404"}'
    assert after[ok] - before.get(ok, 0) == 3
    assert after[missing] - before.get(missing, 0) == 1
    assert after["find_target_for_req_count"] - before["find_target_for_req_count"] == 4
    assert after["find_target_for_req_sum"] > before["find_target_for_req_sum"]
    assert 0 < after['find_target_for_req{quantile="0.5"}'] < 1


def test_health_check_is_not_a_web_request(proxy):
    _, before = scrape(proxy)
    assert get(proxy.port, "/_chp_healthz")[0] == 200
    _, after = scrape(proxy)
    assert after["requests_web"] == before["requests_web"]


def test_api_requests_move_api_counters(proxy, backend):
    _, before = scrape(proxy)
    assert api(proxy, "GET", "/api/routes")[0] == 200
    assert api(proxy, "GET", "/api/routes/echo")[0] == 200  # single GET: not api_route_get
    assert api(proxy, "POST", "/api/routes/tmp", {"target": backend.url})[0] == 201
    assert api(proxy, "DELETE", "/api/routes/tmp")[0] == 204
    assert api(proxy, "DELETE", "/api/routes/tmp")[0] == 404
    _, after = scrape(proxy)

    def delta(key: str) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert (delta("api_route_get"), delta("api_route_add"), delta("api_route_delete")) == (1, 1, 2)
    assert delta('requests_api{status="200"}') == 2
    assert delta('requests_api{status="201"}') == 1
    assert delta('requests_api{status="204"}') == 1
    assert delta('requests_api{status="404"}') == 1


def test_websocket_requests_move_requests_ws_and_open_tunnels(proxy):
    _, before = scrape(proxy)

    async def go() -> None:
        ws = await WSClient.connect(port=proxy.port, path="/ws/a")
        try:
            assert await ws.recv() is not None
            _, during = scrape(proxy)
            assert during["cfproxy_open_tunnels"] >= 1
        finally:
            await ws.close()
        with pytest.raises(HandshakeRefused):
            await WSClient.connect(port=proxy.port, path="/nowhere")

    asyncio.run(go())
    _, after = scrape(proxy)
    assert after["requests_ws"] - before["requests_ws"] == 2
    assert after["requests_web"] == before["requests_web"]
    assert wait_until(lambda: scrape(proxy)[1]["cfproxy_open_tunnels"] == 0)


def test_open_connections_gauge_follows_client_connections(proxy):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        conn.request("GET", "/echo/keep")
        r = conn.getresponse()
        r.read()
        assert scrape(proxy)[1]["cfproxy_open_connections"] >= 1
    finally:
        conn.close()
    assert wait_until(lambda: scrape(proxy)[1]["cfproxy_open_connections"] == 0)


def test_routes_gauge_counts_the_table(proxy):
    routes = json.loads(api(proxy, "GET", "/api/routes")[1])
    assert scrape(proxy)[1]["cfproxy_routes"] == len(routes)


def test_process_metrics_describe_the_proxy_process(proxy):
    _, s = scrape(proxy)
    assert abs(s["process_open_fds"] - proxy.open_fds()) <= 4
    rss = proxy.rss_kib() * 1024
    assert 0.5 * rss < s["process_resident_memory_bytes"] < 2 * rss
    assert s["process_virtual_memory_bytes"] >= s["process_resident_memory_bytes"]
    assert s["process_heap_bytes"] > 0 and s["process_max_fds"] >= s["process_open_fds"]
    assert time.time() - 600 < s["process_start_time_seconds"] <= time.time() + 1
    assert s["process_cpu_seconds_total"] == pytest.approx(
        s["process_cpu_user_seconds_total"] + s["process_cpu_system_seconds_total"], abs=2e-6)
    assert s["process_cpu_seconds_total"] > 0


def test_metrics_text_has_no_total_suffix_on_chp_counters(proxy):
    text = get(metrics_port(proxy), "/metrics")[2].decode()
    for name in ("api_route_get", "api_route_add", "api_route_delete", "requests_web",
                 "requests_ws", "requests_proxy", "requests_api"):
        assert not re.search(rf"^{name}_total", text, re.M)


def test_metrics_socket_serves_metrics_over_a_unix_socket(tmp_path):
    path = str(tmp_path / "metrics.sock")
    with ProxyProcess("--metrics-socket", path) as p:
        wait_for_unix(path)  # listening, not only bound
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(path)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"Content-Type: " + CONTENT_TYPE.encode() in head
        assert b"# TYPE requests_web counter\nrequests_web 0\n" in body
        assert wait_until(lambda: "Serve metrics at http://" in p.output())


def test_no_metrics_listener_without_the_flags():
    with ProxyProcess() as p:
        assert "Serve metrics" not in p.output()


def test_expect_100_continue_is_answered_before_the_body(proxy):
    with socket.create_connection(("127.0.0.1", metrics_port(proxy)), timeout=5) as s:
        s.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 100 ")
        s.sendall(b"body")
        data = b""
        while b"requests_api" not in data:
            chunk = s.recv(65536)
            assert chunk
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 ")


def test_a_client_that_never_reads_cannot_grow_proxy_memory(proxy):
    """Pipelined scrapes from a client that reads nothing: the server stops reading."""
    before = proxy.rss_kib()
    req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", metrics_port(proxy)), timeout=5) as s:
        s.setblocking(False)
        sent, deadline = 0, time.monotonic() + 3
        while sent < 20_000 and time.monotonic() < deadline:
            try:
                s.send(req)
                sent += 1
            except BlockingIOError:
                time.sleep(0.01)
        # without backpressure the replies pile up at ~10 MiB/s here; watch for 3 s
        grown_kib, deadline = 0, time.monotonic() + 3
        while time.monotonic() < deadline and grown_kib < 8_000:
            time.sleep(0.1)
            grown_kib = max(grown_kib, proxy.rss_kib() - before)
    assert grown_kib < 8_000, (sent, grown_kib)
    assert get(metrics_port(proxy), "/metrics")[0] == 200


# --- data-path counters moving with plain HTTP traffic ---------------------------------

def _delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0) - before.get(key, 0)


def test_plain_http_bytes_move_client_byte_counters(proxy):
    _, before = scrape(proxy)
    body = b"u" * 100_000
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        conn.request("POST", "/echo/up", body=body, headers={"x-body-size": "300000"})
        r = conn.getresponse()
        got = r.read()
    finally:
        conn.close()
    assert r.status == 200 and len(got) == 300_000
    _, after = scrape(proxy)
    received = _delta(before, after, "cfproxy_client_received_bytes_total")
    sent = _delta(before, after, "cfproxy_client_sent_bytes_total")
    # request head + body in, response head + body out (heads are a few hundred bytes;
    # other tests' scrapes go to the metrics port, which is not counted)
    assert 100_000 < received < 102_000, received
    assert 300_000 < sent < 302_000, sent


def test_finished_2xx_responses_observe_last_activity_updating_sampled(proxy):
    """One finished 2xx response in 16 times its last_activity write (client.LA_SAMPLE);
    non-2xx answers and missing routes never count."""
    from cfproxy.proxy.client import LA_SAMPLE

    _, before = scrape(proxy)
    for _ in range(LA_SAMPLE * 3):
        assert get(proxy.port, "/echo/la", headers={"x-status": "404"})[0] == 404
        assert get(proxy.port, "/nowhere")[0] == 404
    _, mid = scrape(proxy)
    assert _delta(before, mid, "last_activity_updating_count") == 0
    for _ in range(LA_SAMPLE * 3):
        assert get(proxy.port, "/echo/la")[0] == 200
    _, after = scrape(proxy)
    assert _delta(mid, after, "last_activity_updating_count") == 3
    assert 0 < _delta(mid, after, "last_activity_updating_sum") < 0.01


def test_request_latency_histogram_counts_every_answered_request_by_class(proxy):
    _, before = scrape(proxy)
    assert get(proxy.port, "/echo/lat")[0] == 200
    assert get(proxy.port, "/echo/lat", headers={"x-status": "302"})[0] == 302
    assert get(proxy.port, "/nowhere")[0] == 404  # the proxy's own answer counts too
    _, after = scrape(proxy)
    for cls in ("2xx", "3xx", "4xx"):
        key = f'cfproxy_request_duration_seconds_count{{class="{cls}"}}'
        assert _delta(before, after, key) == 1, (cls, key)
