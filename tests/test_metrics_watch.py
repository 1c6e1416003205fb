"""Metrics to watch the proxy in production (issue 13 item 2), through real /metrics scrapes.

- event-loop lag under prom-client's `nodejs_eventloop_lag_*` names, reset at every scrape;
- idle pooled upstream connections by target, the busiest few with a series each and the
  rest summed as `target="other"` (bounded cardinality);
- connections and requests cut by each timeout (`cfproxy_timeouts_total{kind}`).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time

import pytest

from cfproxy.metrics import LoopLag
from cfproxy.metrics_server import POOL_TARGETS_SHOWN
from tests.support.backends import EchoBackend, wait_until
from tests.support.proxy_process import TOKEN, ProxyProcess, free_port, wait_for_port

AUTH = {"Authorization": f"token {TOKEN}"}


def start(proxy, *args: str) -> ProxyProcess:
    port = free_port()
    p = proxy("--metrics-ip", "127.0.0.1", "--metrics-port", str(port), *args)
    p.metrics_port = port
    wait_for_port(port)
    return p


def samples(p: ProxyProcess) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", p.metrics_port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        assert r.status == 200
        text = r.read().decode()
    finally:
        conn.close()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def add_route(p: ProxyProcess, prefix: str, target: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", p.api_port, timeout=10)
    try:
        conn.request("POST", f"/api/routes{prefix}", body=json.dumps({"target": target}),
                     headers=AUTH)
        assert conn.getresponse().status == 201
    finally:
        conn.close()


def get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


# --- event-loop lag -------------------------------------------------------------------------

def test_loop_lag_summary_covers_the_samples_since_the_last_take():
    lag = LoopLag()
    for ms in range(1, 101):
        lag.record(ms / 1000)
    stats = lag.take()
    assert (stats["min"], stats["max"], stats["p50"], stats["p90"], stats["p99"]) == (
        0.001, 0.1, 0.05, 0.09, 0.099)
    assert stats["mean"] == pytest.approx(0.0505)
    assert stats["stddev"] == pytest.approx(0.028866, abs=1e-5)
    assert lag.last == 0.1
    assert set(lag.take().values()) == {0.0}  # started over


def test_a_stalled_event_loop_shows_as_lag_until_the_next_scrape(proxy):
    p = start(proxy)
    time.sleep(0.2)
    quiet = samples(p)
    assert 0 <= quiet["nodejs_eventloop_lag_max_seconds"] < 0.1
    os.kill(p.pid, signal.SIGSTOP)  # the loop cannot run for 0.4 s
    try:
        time.sleep(0.4)
    finally:
        os.kill(p.pid, signal.SIGCONT)
    time.sleep(0.1)
    stalled = samples(p)
    assert stalled["nodejs_eventloop_lag_max_seconds"] >= 0.3
    assert stalled["nodejs_eventloop_lag_seconds"] < 0.1  # the latest sample: running again
    time.sleep(0.2)
    after = samples(p)  # the histogram restarts at every scrape, as prom-client's
    assert after["nodejs_eventloop_lag_max_seconds"] < 0.1
    for stat in ("min", "mean", "stddev", "p50", "p90", "p99"):
        assert f"nodejs_eventloop_lag_{stat}_seconds" in after


# --- pooled upstream connections by target ------------------------------------------------------

def _concurrent_gets(port: int, path: str, n: int) -> None:
    """n requests at once on n client connections, so the proxy opens n upstream connections."""
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(get(port, path))) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert statuses == [200] * n


def test_pooled_connections_show_the_busiest_targets_and_the_rest_as_other(proxy):
    n_targets = POOL_TARGETS_SHOWN + 2
    backends = [EchoBackend(host=f"127.0.0.{2 + i}").__enter__() for i in range(n_targets)]
    try:
        p = start(proxy)
        for i, b in enumerate(backends):
            add_route(p, f"/t{i}", b.url)
        _concurrent_gets(p.port, "/t0/x?x-delay=0.3", 3)  # 3 pooled to target 0
        _concurrent_gets(p.port, "/t1/x?x-delay=0.3", 2)  # 2 pooled to target 1
        for i in range(2, n_targets):
            assert get(p.port, f"/t{i}/x") == 200  # 1 pooled each
        s = samples(p)
        by_target = {k[len('cfproxy_upstream_pooled_connections{target="'):-2]: v
                     for k, v in s.items() if k.startswith("cfproxy_upstream_pooled_connections{")}
        assert by_target[f"http://127.0.0.2:{backends[0].port}"] == 3
        assert by_target[f"http://127.0.0.3:{backends[1].port}"] == 2
        assert len(by_target) == POOL_TARGETS_SHOWN + 1  # the busiest N, then "other"
        assert by_target["other"] == 2
        assert sum(by_target.values()) == s["cfproxy_upstream_idle_connections"] == n_targets + 3
    finally:
        for b in backends:
            b.__exit__(None, None, None)


def test_no_pooled_connections_is_one_other_series_at_zero(proxy):
    s = samples(start(proxy))
    assert {k: v for k, v in s.items() if k.startswith("cfproxy_upstream_pooled")} == {
        'cfproxy_upstream_pooled_connections{target="other"}': 0}


# --- timeouts ----------------------------------------------------------------------------------

def test_every_timeout_kind_is_a_series_from_the_start(proxy):
    s = samples(start(proxy))
    for kind in ("header", "request", "activity", "proxy", "keep_alive", "upstream_idle",
                 "api_header", "api_keep_alive", "metrics_request", "redirect_request"):
        assert s[f'cfproxy_timeouts_total{{kind="{kind}"}}'] == 0


def test_each_timeout_that_fires_is_counted_by_kind(proxy, backend):
    p = start(proxy, "--header-timeout", "300", "--proxy-timeout", "800",
              "--keep-alive-timeout", "300", "--request-timeout", "300",
              "--upstream-idle-timeout", "300", "--default-target", backend.url)

    def count(kind: str) -> float:
        return samples(p)[f'cfproxy_timeouts_total{{kind="{kind}"}}']

    # a request head that never ends: 408 after --header-timeout
    with socket.create_connection(("127.0.0.1", p.port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        s.settimeout(5)
        assert s.recv(100).startswith(b"HTTP/1.1 408")
    assert wait_until(lambda: count("header") == 1)
    # a target slower than --proxy-timeout: 503
    assert get(p.port, "/slow?x-delay=2") == 503
    assert wait_until(lambda: count("proxy") == 1)
    # a kept-alive client connection left idle: closed after --keep-alive-timeout
    with socket.create_connection(("127.0.0.1", p.port)) as s:
        s.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200")
    assert wait_until(lambda: count("keep_alive") == 1)
    # ...and the upstream connection that served it, idle in its pool: closed by us
    assert wait_until(lambda: count("upstream_idle") >= 1)
    # a request body that never ends: 408 after --request-timeout
    with socket.create_connection(("127.0.0.1", p.port)) as s:
        s.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        s.settimeout(5)
        assert s.recv(100).startswith(b"HTTP/1.1 408")
    assert wait_until(lambda: count("request") == 1)
    # an API request head that never ends: dropped after --header-timeout
    with socket.create_connection(("127.0.0.1", p.api_port)) as s:
        s.sendall(b"GET /api/routes HTTP/1.1\r\n")
        s.settimeout(5)
        assert s.recv(100) == b""
    assert wait_until(lambda: count("api_header") == 1)
    s = samples(p)
    assert s['cfproxy_timeouts_total{kind="header"}'] == 1  # each counted once, where it fired
    assert s['cfproxy_timeouts_total{kind="proxy"}'] == 1


# --- the metrics listener's own connection timeouts (cfproxy/http/small_server.py) ------------

def _read_to_close(s: socket.socket) -> tuple[bytes, float]:
    s.settimeout(10)
    t0 = time.monotonic()
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data, time.monotonic() - t0


def test_idle_api_and_metrics_connections_are_closed_after_five_seconds(proxy):
    p = start(proxy)
    with socket.create_connection(("127.0.0.1", p.metrics_port)) as m, \
            socket.create_connection(("127.0.0.1", p.api_port)) as a:
        m.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # one request, then nothing
        a.sendall(b"GET /api/routes HTTP/1.1\r\nHost: x\r\n\r\n")
        (m_data, m_waited), (a_data, a_waited) = _read_to_close(m), _read_to_close(a)
    assert m_data.startswith(b"HTTP/1.1 200 OK\r\n") and a_data.startswith(b"HTTP/1.1 403 ")
    assert 4.5 < m_waited < 7.0  # Node's keepAliveTimeout, as CHP's servers
    assert a_waited < 7.0
    s = samples(p)
    assert s['cfproxy_timeouts_total{kind="api_keep_alive"}'] == 1
    assert s['cfproxy_timeouts_total{kind="api_header"}'] == 0
    assert s['cfproxy_timeouts_total{kind="metrics_request"}'] == 0  # no request was cut


def test_an_api_connection_that_sends_nothing_is_cut_by_the_header_timeout(proxy):
    p = start(proxy, "--header-timeout", "300")
    with socket.create_connection(("127.0.0.1", p.api_port)) as a:
        data, waited = _read_to_close(a)
    assert data == b"" and waited < 3.0
    assert wait_until(lambda: samples(p)['cfproxy_timeouts_total{kind="api_header"}'] == 1)
    assert samples(p)['cfproxy_timeouts_total{kind="api_keep_alive"}'] == 0
