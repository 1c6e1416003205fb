"""End-to-end: the real JupyterHub driving cfproxy, as its users run it.

a. The hub starts the proxy itself with its default `configurable-http-proxy` command
   (no proxy configuration but addresses): login through the proxy, spawn, the user's
   page and a WebSocket echo through the proxy, last_activity moving, the hub API through
   the proxy, the hub's error pages through --error-target, the hub replacing a proxy that
   died, stopping the server removes its route.
b. The proxy runs as its own service (ConfigurableHTTPProxy.should_start = False): the hub
   stops, users keep working, hub requests get the error handling, a route deleted while
   the hub was down is put back when the hub restarts.

The hub's single-user servers are tests/e2e/singleuser.py (HTTP + WebSocket echo).
Needs `pip install -e '.[test,jupyterhub]'` (cfproxy's console scripts + JupyterHub).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import pytest

pytest.importorskip("jupyterhub")

from tests.e2e.conftest import (  # noqa: E402
    HUB_CONFIG,
    HUB_CONFIG_EXTERNAL,
    PROXY_COMMAND,
    Browser,
    HubProcess,
    HubSetup,
    SeparateProxy,
    WebSocketClient,
    http_request,
    wait_until,
)
from tests.support.proxy_process import free_port  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

USER = "alice"


# --- helpers ------------------------------------------------------------------------------


def proxy_routes(setup: HubSetup) -> dict:
    r = http_request(setup.api_port, "GET", "/api/routes",
                     headers={"Authorization": f"token {setup.proxy_token}"})
    assert r.status == 200, r
    return r.json()


def proxy_routes_or_none(setup: HubSetup) -> dict:
    """GET /api/routes, or {} while the proxy is not (yet) answering."""
    try:
        return proxy_routes(setup)
    except (OSError, AssertionError):
        return {}


def hub_api(setup: HubSetup, method: str, path: str, body: dict | None = None):
    """The hub's REST API, reached through the proxy's public port with the service token."""
    data = json.dumps(body).encode() if body is not None else None
    return http_request(setup.public_port, method, "/hub/api" + path, body=data,
                        headers={"Authorization": f"token {setup.service_token}"})


def server_ready(setup: HubSetup) -> bool:
    r = hub_api(setup, "GET", f"/users/{USER}")
    assert r.status == 200, r
    server = r.json()["servers"].get("")
    return bool(server and server["ready"])


def login_and_spawn(setup: HubSetup) -> Browser:
    """Log in through the proxy's login form and spawn from the browser's /hub/spawn."""
    browser = Browser(setup.public_port)
    browser.login(USER)
    r = browser.get("/hub/spawn", follow=True)
    assert r.status < 500, r
    wait_until(lambda: server_ready(setup), timeout=30, what=f"{USER}'s server ready")
    wait_until(lambda: f"/user/{USER}" in proxy_routes(setup), timeout=10,
               what=f"route /user/{USER} in the proxy")
    return browser


def assert_user_page(browser: Browser) -> None:
    r = browser.get(f"/user/{USER}/")
    assert r.status == 200, r
    assert f"single-user server of {USER}" in r.text


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def worker_pids(pid: int) -> list[int]:
    """Child processes of the proxy (its workers with --workers N; none otherwise)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def proxy_pid(setup: HubSetup) -> int:
    return int((setup.dir / "jupyterhub-proxy.pid").read_text())


# --- a. the hub starts the proxy ----------------------------------------------------------


@pytest.mark.parametrize("proxy_workers", [None, "2"], ids=["one-process", "workers-2"])
def test_hub_started_proxy_serves_login_spawn_page_websocket_api_and_removes_route(
        hub_setup: HubSetup, proxy_workers: str | None) -> None:
    setup = hub_setup
    if proxy_workers:  # the same run with a primary and two worker processes (--workers 2)
        setup.workers = proxy_workers
    hub = HubProcess(setup, HUB_CONFIG).start()
    pid = None
    try:
        # The hub ran the configurable-http-proxy it found on PATH: cfproxy's script.
        pid = proxy_pid(setup)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert shutil.which(PROXY_COMMAND, path=setup.path).encode() in argv, argv
        if not os.environ.get("CFPROXY_E2E_PROXY_BIN_DIR"):  # not a trial against CHP
            assert not any(b"/tmp/chp" in a or os.path.basename(a) == b"node" for a in argv), argv
        if setup.workers:
            assert b"--workers" in argv and worker_pids(pid), argv
        routes = proxy_routes(setup)
        assert routes["/"]["hub"] is True and routes["/"]["jupyterhub"] is True, routes

        browser = login_and_spawn(setup)
        route = proxy_routes(setup)[f"/user/{USER}"]
        assert route["user"] == USER and route["jupyterhub"] is True, route
        assert route["target"].startswith("http://127.0.0.1:"), route

        # The user's page and a forwarded request, through the proxy; traffic moves the
        # route's last_activity (JupyterHub's idle culler reads it from GET /api/routes).
        before = route["last_activity"]
        time.sleep(0.05)
        assert_user_page(browser)
        after = proxy_routes(setup)[f"/user/{USER}"]["last_activity"]
        assert after > before, (before, after)  # same ISO 8601 format: compares as text
        r = browser.get(f"/user/{USER}/echo?x=1&y=%20z")
        assert r.status == 200, r
        seen = r.json()
        assert seen["uri"] == f"/user/{USER}/echo?x=1&y=%20z"
        assert seen["headers"]["x-forwarded-proto"] == "http"
        assert seen["headers"]["x-forwarded-for"]
        assert seen["headers"]["host"] == f"127.0.0.1:{setup.public_port}"

        # A WebSocket echo through the proxy: text, binary, a large message.
        ws = WebSocketClient(setup.public_port, f"/user/{USER}/ws")
        assert ws.echo("hello through cfproxy") == "hello through cfproxy"
        assert ws.echo(b"\x00\x01\xfe\xff") == b"\x00\x01\xfe\xff"
        big = "x" * 300_000
        assert ws.echo(big) == big

        # The hub API through the proxy (version, user model, proxy routes as the hub sees them).
        r = hub_api(setup, "GET", "/")
        assert r.status == 200 and "version" in r.json(), r
        r = hub_api(setup, "GET", "/proxy")
        assert r.status == 200, r
        hub_view = r.json()  # the hub parsed the proxy's GET /api/routes (keys + last_activity)
        assert hub_view[f"/user/{USER}/"]["data"]["user"] == USER, hub_view
        assert hub_view[f"/user/{USER}/"]["data"]["last_activity"], hub_view

        # The hub is the proxy's --error-target: a dead target gets the hub's 503 page.
        dead = f"http://127.0.0.1:{free_port()}"
        r = http_request(setup.api_port, "POST", "/api/routes/user/ghost",
                         body=json.dumps({"target": dead}).encode(),
                         headers={"Authorization": f"token {setup.proxy_token}"})
        assert r.status == 201, r
        r = browser.get("/user/ghost/lab")
        assert r.status == 503, r
        assert "Your server appears to be down" in r.text, r.text[:2000]
        assert (r.header("Content-Type") or "").startswith("text/html")

        # The proxy dies: the hub notices (every 5 s), starts a new one, restores the routes.
        ws.close()
        workers = worker_pids(pid)
        os.kill(pid, signal.SIGKILL)
        # with --workers: its workers go with it at once (the hub's new proxy needs the port)
        wait_until(lambda: not any(pid_alive(w) for w in workers), timeout=2,
                   what="the killed proxy's workers to end")
        wait_until(lambda: proxy_pid(setup) != pid and pid_alive(proxy_pid(setup)), timeout=30,
                   what="the hub to start a new proxy")
        pid = proxy_pid(setup)
        wait_until(lambda: f"/user/{USER}" in proxy_routes_or_none(setup), timeout=20,
                   what="routes restored in the new proxy")
        assert_user_page(browser)
        ws = WebSocketClient(setup.public_port, f"/user/{USER}/ws")
        assert ws.echo("after the proxy restart") == "after the proxy restart"

        # Stopping the server through the hub API removes its route; the open socket closes.
        r = hub_api(setup, "DELETE", f"/users/{USER}/server")
        assert r.status in (202, 204), r
        wait_until(lambda: f"/user/{USER}" not in proxy_routes(setup), timeout=20,
                   what=f"route /user/{USER} removed")
        wait_until(lambda: not server_ready(setup), timeout=20, what="server stopped")
        ws.sock.settimeout(10)
        with pytest.raises(ConnectionError):  # closed or reset, not a timeout
            for _ in range(3):
                ws.echo("still there?")
        ws.sock.close()
        r = browser.get(f"/user/{USER}/")
        assert f"single-user server of {USER}" not in r.text
        assert r.status in (302, 303, 424, 503), r  # the hub answers now, not the user's server
    finally:
        rc = hub.stop()
    assert rc == 0, hub.output()[-3000:]
    # The hub stops the proxy it started when it exits.
    if pid is not None:
        try:
            wait_until(lambda: not pid_alive(pid), timeout=15, what="proxy exit after hub")
        finally:
            if pid_alive(pid):
                os.kill(pid, 9)


# --- b. the proxy as its own service ------------------------------------------------------


def test_users_keep_working_while_the_hub_restarts_and_routes_are_resynced(
        hub_setup: HubSetup) -> None:
    setup = hub_setup
    proxy = SeparateProxy(setup).start()
    hub = HubProcess(setup, HUB_CONFIG_EXTERNAL).start()
    hub2 = None
    try:
        browser = login_and_spawn(setup)
        assert_user_page(browser)
        ws = WebSocketClient(setup.public_port, f"/user/{USER}/ws")
        assert ws.echo("before") == "before"

        # The hub goes away; cleanup_servers = False leaves the user's server running.
        assert hub.stop() == 0, hub.output()[-3000:]
        assert proxy.proc.poll() is None, "the proxy must outlive the hub"
        assert f"/user/{USER}" in proxy_routes(setup)

        # Users keep working: page, the WebSocket opened before, a new WebSocket.
        assert_user_page(browser)
        assert ws.echo("during") == "during"
        ws2 = WebSocketClient(setup.public_port, f"/user/{USER}/ws")
        assert ws2.echo(b"new while hub is down") == b"new while hub is down"
        ws2.close()

        # Requests for the hub get the proxy's error handling: the error target (the hub)
        # is down too, so the built-in fallback answers with 503.
        r = browser.get("/hub/home")
        assert r.status == 503, r
        r = http_request(setup.public_port, "GET", "/hub/api/")
        assert r.status == 503, r

        # A route lost while the hub is down (deleted by hand)...
        r = http_request(setup.api_port, "DELETE", f"/api/routes/user/{USER}",
                         headers={"Authorization": f"token {setup.proxy_token}"})
        assert r.status == 204, r
        assert f"/user/{USER}" not in proxy_routes(setup)
        r = browser.get(f"/user/{USER}/")
        assert r.status == 503, r  # now falls to "/" -> the hub, which is down

        # ...is put back by the restarted hub, which finds the server still running.
        hub2 = HubProcess(setup, HUB_CONFIG_EXTERNAL).start()
        wait_until(lambda: f"/user/{USER}" in proxy_routes(setup), timeout=20,
                   what=f"route /user/{USER} re-added by the restarted hub")
        route = proxy_routes(setup)[f"/user/{USER}"]
        assert route["user"] == USER and route["jupyterhub"] is True, route
        assert server_ready(setup)
        assert_user_page(browser)
        assert ws.echo("after") == "after"
        r = browser.get("/hub/home")
        assert r.status == 200, r  # still logged in: the cookie secret persisted
        ws.close()
    finally:
        if hub2 is not None:
            hub2.stop()
        hub.stop()
        proxy_rc = proxy.stop()
    assert proxy_rc in (0, 2), proxy.output()[-3000:]  # CHP exits 2 on SIGTERM, cfproxy 0
