"""Fixtures and clients for the end-to-end tests with the real JupyterHub.

Owns: finding the proxy command the hub will run (cfproxy's `configurable-http-proxy`
console script, first on PATH, CHP's Node.js one nowhere on it), running a hub as a
subprocess with the config files next to this module, a proxy started on its own
(JupyterHub's "proxy as a separate service" set-up), a small cookie-keeping HTTP client
(a "browser") and a blocking WebSocket client. Every process here is started by these
fixtures and ended by its PID.

To run the same tests against another proxy (e.g. CHP 5.3.0, to tell a hub problem from a
proxy problem) set CFPROXY_E2E_PROXY_BIN_DIR to the directory holding its
`configurable-http-proxy`; the check that the command is cfproxy's is then replaced by a
check that it comes from that directory. Set CFPROXY_E2E_WORKERS=2 to run every proxy of
these tests with `--workers 2` (`HubSetup.workers` does it for one test).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.support.proxy_process import free_port, wait_for_port

HERE = Path(__file__).resolve().parent
HUB_CONFIG = HERE / "jupyterhub_config.py"
HUB_CONFIG_EXTERNAL = HERE / "jupyterhub_config_external_proxy.py"
PROXY_COMMAND = "configurable-http-proxy"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: end-to-end test with the real JupyterHub (runs when jupyterhub is importable)"
    )


# --- which configurable-http-proxy the hub finds ----------------------------------------


def is_cfproxy_script(path: str) -> bool:
    """True if `path` is the console script pip generated for cfproxy's entry point."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b"cfproxy" in head and b"main" in head


def proxy_search_path() -> tuple[str, str]:
    """PATH for the hub and the directory its `configurable-http-proxy` must come from.

    The current environment's console-script directory goes first; every PATH entry that
    holds a Node.js configurable-http-proxy (CHP) is dropped, so only cfproxy can be found.
    """
    override = os.environ.get("CFPROXY_E2E_PROXY_BIN_DIR")
    first = override or sysconfig.get_path("scripts")
    rest = []
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if not entry or entry == first:
            continue
        candidate = os.path.join(entry, PROXY_COMMAND)
        if os.path.exists(candidate) and not is_cfproxy_script(os.path.realpath(candidate)):
            continue  # a CHP (or anything else) that must not shadow cfproxy
        rest.append(entry)
    return os.pathsep.join([first, *rest]), first


@pytest.fixture(scope="session")
def hub_path() -> str:
    """The PATH every hub and proxy process gets; asserts which proxy it resolves to."""
    path, first = proxy_search_path()
    found = shutil.which(PROXY_COMMAND, path=path)
    assert found is not None, (
        f"no {PROXY_COMMAND} on PATH {path!r}: install cfproxy into this environment "
        "(pip install -e '.[test,jupyterhub]')"
    )
    assert os.path.dirname(found) == first, f"{PROXY_COMMAND} resolved to {found}, not in {first}"
    if not os.environ.get("CFPROXY_E2E_PROXY_BIN_DIR"):
        assert is_cfproxy_script(found), f"{found} is not cfproxy's console script"
        assert "/tmp/chp" not in path
    return path


# --- processes ----------------------------------------------------------------------------


def _stop_pid(proc: subprocess.Popen, timeout: float = 15.0) -> int | None:
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


class HubSetup:
    """Ports, tokens and the working directory shared by a hub and its proxy."""

    def __init__(self, workdir: Path, path: str) -> None:
        self.dir = workdir
        self.path = path
        self.public_port = free_port()
        self.api_port = free_port()
        self.hub_port = free_port()
        self.proxy_token = secrets.token_hex(16)
        self.service_token = secrets.token_hex(16)
        # `--workers N` for every proxy of this set-up (None: one process)
        self.workers: str | None = os.environ.get("CFPROXY_E2E_WORKERS") or None

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.public_port}"

    @property
    def hub_url(self) -> str:
        return f"http://127.0.0.1:{self.hub_port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "PATH": self.path,
            "PYTHONUNBUFFERED": "1",
            "CFPROXY_E2E_DIR": str(self.dir),
            "CFPROXY_E2E_PUBLIC_PORT": str(self.public_port),
            "CFPROXY_E2E_API_PORT": str(self.api_port),
            "CFPROXY_E2E_HUB_PORT": str(self.hub_port),
            "CFPROXY_E2E_API_TOKEN": self.service_token,
            "CFPROXY_E2E_PROXY_TOKEN": self.proxy_token,
            "CONFIGPROXY_AUTH_TOKEN": self.proxy_token,
        })
        env.pop("CFPROXY_E2E_WORKERS", None)
        if self.workers:
            env["CFPROXY_E2E_WORKERS"] = self.workers  # read by jupyterhub_config.py
        return env

    def user_server_pid(self, user: str) -> int | None:
        try:
            return int((self.dir / "home" / user / "singleuser.pid").read_text())
        except (OSError, ValueError):
            return None

    def kill_user_server(self, user: str) -> None:
        """End the single-user server a hub left running (it lives in its own session)."""
        pid = self.user_server_pid(user)
        if pid is None:
            return
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"singleuser.py" not in f.read():
                    return  # the pid was reused by something else
            os.kill(pid, signal.SIGTERM)
        except (OSError, ProcessLookupError):
            pass


class HubProcess:
    """`python -m jupyterhub -f <config>` in the setup's directory; ready = hub says running."""

    def __init__(self, setup: HubSetup, config: Path) -> None:
        self.setup = setup
        self.config = config
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="hub-", suffix=".log", dir=setup.dir,
                                                delete=False)

    def start(self, timeout: float = 40.0) -> HubProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(self.config)],
            cwd=self.setup.dir, env=self.setup.env(),
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "JupyterHub is now running" in self.output():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.1)
        raise TimeoutError(f"hub not running after {timeout}s:\n{self.output()[-5000:]}")

    def output(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        return _stop_pid(self.proc, timeout=20)


def proxy_extra_args(setup: HubSetup) -> list[str]:
    """`--workers N` when the set-up asks for it (the hub-started proxy gets it through
    jupyterhub_config.py): the same tests, run with a primary and N worker processes."""
    return ["--workers", setup.workers] if setup.workers else []


class SeparateProxy:
    """The proxy as its own service: `configurable-http-proxy` from the hub's PATH."""

    def __init__(self, setup: HubSetup) -> None:
        self.setup = setup
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="proxy-", suffix=".log", dir=setup.dir,
                                                delete=False)

    def start(self) -> SeparateProxy:
        s = self.setup
        command = shutil.which(PROXY_COMMAND, path=s.path)
        assert command, "no configurable-http-proxy on PATH"
        self.proc = subprocess.Popen(
            [command, "--ip", "127.0.0.1", "--port", str(s.public_port),
             "--api-ip", "127.0.0.1", "--api-port", str(s.api_port),
             "--default-target", s.hub_url, "--error-target", f"{s.hub_url}/hub/error",
             *proxy_extra_args(s)],
            env=s.env(), stdout=self._log, stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(s.public_port, timeout=15, proc=self.proc)
            wait_for_port(s.api_port, timeout=15, proc=self.proc)
        except Exception as e:
            self.stop()
            raise RuntimeError(f"proxy did not start ({e}):\n{self.output()}") from None
        return self

    def output(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        return _stop_pid(self.proc)


@pytest.fixture
def hub_setup(hub_path: str, tmp_path: Path) -> Iterator[HubSetup]:
    setup = HubSetup(tmp_path, hub_path)
    yield setup
    setup.kill_user_server("alice")


# --- clients ------------------------------------------------------------------------------


class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> object:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:200]!r}>"


def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 15.0) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return Response(r.status, r.getheaders(), r.read())
    finally:
        conn.close()


class Browser:
    """Keeps cookies like a browser (path-agnostic, good enough for one hub) and follows
    redirects on request. Every request goes to the proxy's public port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, follow: bool = False,
                max_redirects: int = 10) -> Response:
        for _ in range(max_redirects + 1):
            h = dict(headers or {})
            if self.cookies:
                h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            r = http_request(self.port, method, path, body, h)
            for k, v in r.headers:
                if k.lower() == "set-cookie":
                    c = SimpleCookie()
                    c.load(v)
                    for name, morsel in c.items():
                        self.cookies[name] = morsel.value
            location = r.header("Location")
            if not follow or r.status not in (301, 302, 303, 307) or not location:
                return r
            path = re.sub(r"^https?://[^/]+", "", location)
            method, body = "GET", None
        raise AssertionError(f"too many redirects, last {path}")

    def get(self, path: str, **kw: object) -> Response:
        return self.request("GET", path, **kw)

    def login(self, user: str) -> Response:
        """Log in through the hub's form, with JupyterHub's _xsrf cookie + form field."""
        page = self.get("/hub/login")
        assert page.status == 200, page
        m = re.search(r'name="_xsrf"\s+value="([^"]+)"', page.text)
        assert m, f"no _xsrf field in the login page: {page.text[:2000]}"
        assert "_xsrf" in self.cookies, f"no _xsrf cookie set by {page.headers}"
        form = urlencode({"username": user, "password": "any", "_xsrf": m.group(1)}).encode()
        r = self.request("POST", "/hub/login", body=form,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status == 302, r
        return r


class WebSocketClient:
    """A blocking WebSocket client on wsproto over one TCP connection."""

    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None,
                 timeout: float = 10.0) -> None:
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import AcceptConnection, RejectConnection, Request

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.ws = WSConnection(ConnectionType.CLIENT)
        extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        self.sock.sendall(self.ws.send(Request(host=f"127.0.0.1:{port}", target=path,
                                               extra_headers=extra)))
        self._events: list = []
        while True:
            ev = self._next_event()
            if isinstance(ev, AcceptConnection):
                return
            if isinstance(ev, RejectConnection):
                self.sock.close()
                raise ConnectionRefusedError(f"websocket rejected with {ev.status_code}")

    def _next_event(self):
        while not self._events:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("websocket connection closed by peer")
            self.ws.receive_data(data)
            self._events.extend(self.ws.events())
        return self._events.pop(0)

    def send(self, message: str | bytes) -> None:
        from wsproto.events import BytesMessage, TextMessage

        ev = BytesMessage(data=message) if isinstance(message, bytes) else TextMessage(data=message)
        self.sock.sendall(self.ws.send(ev))

    def recv(self) -> str | bytes:
        from wsproto.events import BytesMessage, CloseConnection, Message, Ping

        parts: list = []
        while True:
            ev = self._next_event()
            if isinstance(ev, Ping):
                self.sock.sendall(self.ws.send(ev.response()))
            elif isinstance(ev, CloseConnection):
                raise ConnectionError(f"websocket closed: {ev.code} {ev.reason}")
            elif isinstance(ev, Message):
                parts.append(ev.data)
                if ev.message_finished:
                    joiner = b"" if isinstance(ev, BytesMessage) else ""
                    return joiner.join(parts)

    def echo(self, message: str | bytes) -> str | bytes:
        self.send(message)
        return self.recv()

    def close(self) -> None:
        from wsproto.events import CloseConnection

        try:
            self.sock.sendall(self.ws.send(CloseConnection(code=1000)))
        except Exception:
            pass
        self.sock.close()


def wait_until(check, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"):
    """Poll `check()` until it returns a truthy value; returns it."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
