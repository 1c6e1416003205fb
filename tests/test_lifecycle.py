"""Process lifecycle: start-up lines, listeners, pid file, signals, graceful shutdown.

Reference 1.3, 1.7, 1.8; quirks Q8 (bind failure exits 1) and Q22 (stale Unix socket).
Every test runs the real command as a subprocess on loopback.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.support.backends import EchoBackend
from tests.support.proxy_process import ProxyProcess, free_port, wait_for_port

TOKEN_ENV = {"CONFIGPROXY_AUTH_TOKEN": "secret", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def backend():
    with EchoBackend() as b:
        yield b


def spawn(*args: str, env: dict | None = None) -> subprocess.Popen:
    """The CLI with stdout and stderr kept apart (for 'must be on stdout' checks)."""
    e = {**os.environ, **TOKEN_ENV, **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "cfproxy", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=e)


def read_until(proc: subprocess.Popen, text: str, timeout: float = 10.0) -> list[str]:
    """stdout lines up to and including the first containing `text` (reader thread, bounded)."""
    lines: list[str] = []
    done = threading.Event()

    def reader() -> None:
        for line in proc.stdout:
            lines.append(line)
            if text in line:
                break
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    if not done.wait(timeout):
        proc.kill()
        raise TimeoutError(f"{text!r} not seen on stdout: {lines}")
    return lines


def finish(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> tuple[int, str, str]:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"did not exit within {timeout}s: {out} {err}") from None
    return proc.returncode, out, err


def messages(lines) -> list[str]:
    """The message part of each log line."""
    return [line.split(": ", 1)[1].rstrip("\n") for line in lines if "[ConfigProxy]" in line]


# --- start-up ---------------------------------------------------------------------


def test_startup_lines_are_chp_lines_on_stdout_in_order(tmp_path):
    port, api_port = free_port(), free_port()
    pid_file = tmp_path / "p.pid"
    target = "http://127.0.0.1:9"
    proc = spawn("--ip", "127.0.0.1", "--port", str(port), "--api-ip", "127.0.0.1",
                 "--api-port", str(api_port), "--default-target", target,
                 "--pid-file", str(pid_file), "--auto-rewrite", "--change-origin",
                 "--protocol-rewrite", "https", env={"CONFIGPROXY_AUTH_TOKEN": ""})
    lines = read_until(proc, "Route added /")
    code, out, err = finish(proc)
    assert messages(lines) == [
        "AutoRewrite of Location headers enabled.",
        "Change Origin of host headers enabled.",
        "ProtocolRewrite enabled. Rewriting to https",
        "REST API is not authenticated.",
        f"Adding route / -> {target}",
        f"Proxying http://{port}:127.0.0.1 to {target}",
        f"Proxy API at http://{api_port}:127.0.0.1/api/routes",
        f"Writing pid {proc.pid} to {pid_file}",
        f"Route added / -> {target}",
    ]
    assert code == 0 and err == ""


def test_route_added_line_means_both_listeners_accept():
    port, api_port = free_port(), free_port()
    proc = spawn("--ip", "127.0.0.1", "--port", str(port), "--api-ip", "127.0.0.1",
                 "--api-port", str(api_port), "--default-target", "http://127.0.0.1:9")
    try:
        read_until(proc, "Route added /")
        for p in (port, api_port):
            socket.create_connection(("127.0.0.1", p), timeout=2).close()
    finally:
        finish(proc)


def test_no_default_and_ip_star_lines(proxy):
    p = proxy("--ip", "*", token=None)
    out = p.wait_for_output("Proxy API at")
    msgs = messages(out.splitlines())
    assert "Interpreting ip='*' as all-interfaces. Preferred usage is 0.0.0.0 for all IPv4 " \
           "or '' for all-interfaces." in msgs
    assert f"Proxying http://{p.port}: to (no default)" in msgs
    assert "REST API is not authenticated." in msgs


def test_token_set_means_no_unauthenticated_warning(proxy):
    p = proxy()
    out = p.wait_for_output("Proxy API at")
    assert "not authenticated" not in out


def test_api_port_defaults_to_port_plus_one_on_localhost(proxy):
    port = free_port()
    while True:  # need port+1 free as well
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                break
            except OSError:
                port = free_port()
    p = ProxyProcess("--ip", "127.0.0.1", "--port", str(port), "--api-port", "0",
                     "--api-ip", "localhost", wait=False)
    with p:
        wait_for_port(port + 1, timeout=10, proc=p.proc)
        assert f"Proxy API at http://{port + 1}:localhost/api/routes" in p.wait_for_output("Proxy API")


def test_all_interfaces_listen_on_ipv4_and_ipv6(proxy):
    p = proxy("--ip", "")
    socket.create_connection(("127.0.0.1", p.port), timeout=2).close()
    if socket.has_ipv6:
        try:
            s = socket.create_connection(("::1", p.port), timeout=2)
        except OSError as e:
            pytest.skip(f"no IPv6 loopback here: {e}")
        s.close()


def test_ipv6_address_listens(proxy):
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    p = proxy("--ip", "::1", wait=False)
    wait_for_port(p.port, "::1", 10, p.proc)


# --- pid file and signals -------------------------------------------------------------


@pytest.mark.parametrize("sig,word", [(signal.SIGTERM, "Terminated"), (signal.SIGINT, "Interrupted")])
def test_signal_exits_0_and_removes_pid_file(proxy, tmp_path, sig, word):
    pid_file = tmp_path / "cfproxy.pid"
    p = proxy("--pid-file", str(pid_file))
    p.wait_for_output("Writing pid")
    assert pid_file.read_text() == str(p.pid)  # decimal, no newline
    p.signal(sig)
    assert p.proc.wait(10) == 0
    assert not pid_file.exists()
    assert f"warn: {word}" in p.output()


def test_pid_file_removal_is_logged_at_debug(proxy, tmp_path):
    pid_file = tmp_path / "x.pid"
    p = proxy("--pid-file", str(pid_file), "--log-level", "debug")
    p.signal(signal.SIGTERM)
    assert p.proc.wait(10) == 0
    assert f"debug: Removing {pid_file}" in p.output()


def test_unwritable_pid_file_is_an_error(proxy, tmp_path):
    p = proxy("--pid-file", str(tmp_path / "no" / "such" / "dir" / "p.pid"), wait=False)
    assert p.proc.wait(10) == 1
    assert "--pid-file" in p.output()


def test_sighup_keeps_running(proxy):
    p = proxy()
    p.signal(signal.SIGHUP)
    p.wait_for_output("SIGHUP")
    time.sleep(0.1)
    assert p.proc.poll() is None
    socket.create_connection(("127.0.0.1", p.port), timeout=2).close()


def test_second_signal_cuts_the_grace_period_short(proxy, backend):
    p = proxy("--default-target", backend.url, "--shutdown-timeout", "20000")
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    conn.request("GET", "/slow", headers={"x-action": "hang"})
    time.sleep(0.3)
    p.signal(signal.SIGTERM)
    time.sleep(0.2)
    assert p.proc.poll() is None  # draining
    start = time.monotonic()
    p.signal(signal.SIGTERM)
    assert p.proc.wait(5) == 0
    assert time.monotonic() - start < 5
    conn.close()


# --- bind failures (Q8 fix) ------------------------------------------------------------


def test_port_in_use_exits_1_naming_the_flag(proxy):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = proxy("--port", str(port), wait=False)
        assert p.proc.wait(10) == 1
    out = p.output()
    errors = [line for line in out.splitlines() if "error:" in line]
    assert len(errors) == 1, out
    assert f"127.0.0.1:{port}" in errors[0] and "--ip/--port" in errors[0]
    assert "in use" in errors[0]


def test_api_port_in_use_exits_1_naming_the_flag(proxy, tmp_path):
    pid_file = tmp_path / "p.pid"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        api_port = busy.getsockname()[1]
        p = proxy("--api-port", str(api_port), "--pid-file", str(pid_file), wait=False)
        assert p.proc.wait(10) == 1
    assert "--api-ip/--api-port" in p.output()
    assert not pid_file.exists()


def test_unresolvable_ip_exits_1(proxy):
    p = proxy("--ip", "no-such-host.invalid", wait=False)
    assert p.proc.wait(20) == 1
    assert "no-such-host.invalid" in p.output() and "--ip/--port" in p.output()


# --- Unix sockets (Q22 fix) -------------------------------------------------------------


def _stale_socket(path: str) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()  # the file stays, nobody listens


def test_unix_sockets_listen_and_are_removed_on_exit(proxy, tmp_path):
    sock, api_sock = str(tmp_path / "proxy.sock"), str(tmp_path / "api.sock")
    p = proxy("--socket", sock, "--api-socket", api_sock)
    assert f"Proxying http://{sock} to (no default)" in p.output()
    assert f"Proxy API at http://{api_sock}/api/routes" in p.output()
    p.signal(signal.SIGTERM)
    assert p.proc.wait(10) == 0
    assert not os.path.exists(sock) and not os.path.exists(api_sock)


def test_stale_unix_socket_is_replaced(proxy, tmp_path):
    sock = str(tmp_path / "proxy.sock")
    _stale_socket(sock)
    p = proxy("--socket", sock)
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(sock)
    assert "Removed stale socket file" in p.output()


def test_live_unix_socket_is_not_stolen(proxy, tmp_path):
    sock = str(tmp_path / "proxy.sock")
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(sock)
        live.listen()
        p = proxy("--socket", sock, wait=False)
        assert p.proc.wait(10) == 1
        assert "another process is listening" in p.output() and "--socket" in p.output()
        assert os.path.exists(sock)


def test_regular_file_in_the_way_of_a_socket_is_an_error(proxy, tmp_path):
    path = tmp_path / "api.sock"
    path.write_text("precious")
    p = proxy("--api-socket", str(path), wait=False)
    assert p.proc.wait(10) == 1
    assert "not a socket" in p.output() and "--api-socket" in p.output()
    assert path.read_text() == "precious"


# --- the data path through the lifecycle ---------------------------------------------------


def test_time_to_first_proxied_request(backend):
    """Not asserted against a number: printed, so `pytest -s` shows the start-up cost."""
    port, api_port = free_port(), free_port()
    start = time.monotonic()
    proc = spawn("--ip", "127.0.0.1", "--port", str(port), "--api-ip", "127.0.0.1",
                 "--api-port", str(api_port), "--default-target", backend.url)
    try:
        status = None
        deadline = start + 15
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/first")
                status = conn.getresponse().status
                conn.close()
                break
            except OSError:
                time.sleep(0.005)
        elapsed = time.monotonic() - start
        assert status == 200
        print(f"\ntime to first proxied request: {elapsed * 1000:.0f} ms")
    finally:
        finish(proc)


def test_graceful_shutdown_finishes_in_flight_request_and_refuses_new_ones(proxy, backend, tmp_path):
    pid_file = tmp_path / "p.pid"
    p = proxy("--default-target", backend.url, "--pid-file", str(pid_file),
              "--shutdown-timeout", "10000")
    result: dict = {}

    def slow_request() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=15)
        conn.request("GET", "/in-flight", headers={"x-delay": "1.0"})
        resp = conn.getresponse()
        result["status"], result["body"] = resp.status, resp.read()
        conn.close()

    t = threading.Thread(target=slow_request)
    t.start()
    # the request reached the backend before the signal
    deadline = time.monotonic() + 5
    while not any(r.url == "/in-flight" for r in backend.requests) and time.monotonic() < deadline:
        time.sleep(0.01)
    idle = socket.create_connection(("127.0.0.1", p.port), timeout=2)  # an idle keep-alive client
    time.sleep(0.05)
    started = time.monotonic()
    p.signal(signal.SIGTERM)
    time.sleep(0.2)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", p.port), timeout=1).close()
    assert idle.recv(1) == b""  # idle connections are closed at once
    idle.close()
    assert p.proc.wait(10) == 0
    t.join(10)
    assert result.get("status") == 200 and b"/in-flight" in result["body"]
    assert time.monotonic() - started < 5
    assert not pid_file.exists()


def test_shutdown_timeout_bounds_the_drain(proxy, backend):
    p = proxy("--default-target", backend.url, "--shutdown-timeout", "300")
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    conn.request("GET", "/hang", headers={"x-action": "hang"})
    deadline = time.monotonic() + 5
    while not any(r.url == "/hang" for r in backend.requests) and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    p.signal(signal.SIGTERM)
    assert p.proc.wait(10) == 0
    assert 0.25 < time.monotonic() - started < 5
    with pytest.raises((OSError, http.client.HTTPException)):
        conn.getresponse()
    conn.close()


def test_shutdown_closes_websocket_tunnels_without_waiting_for_the_grace_period(proxy, tmp_path):
    from tests.support.ws_backend import WSBackend
    from tests.support.ws_client import WSClient

    with WSBackend() as ws_backend:
        p = proxy("--default-target", ws_backend.url, "--shutdown-timeout", "20000")

        async def scenario() -> float:
            ws = await WSClient.connect(port=p.port, path="/ws")
            assert await ws.recv() == "connected"
            await ws.send("hi")
            assert await ws.recv() == "hi"
            started = time.monotonic()
            p.signal(signal.SIGTERM)
            assert await asyncio.wait_for(ws.recv(), 10) is None  # the tunnel was closed
            return time.monotonic() - started

        elapsed = asyncio.run(scenario())
        assert p.proc.wait(10) == 0
        assert elapsed < 5


def test_storage_backend_that_fails_to_construct_exits_1_naming_the_flag(proxy, tmp_path):
    (tmp_path / "broken_store.py").write_text(
        "class Store:\n    def __init__(self, config, table):\n        raise RuntimeError('no db')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    p = proxy("--storage-backend", "broken_store:Store", env=env, wait=False)
    assert p.proc.wait(10) == 1
    errors = [line for line in p.output().splitlines() if "error:" in line]
    assert len(errors) == 1 and "--storage-backend" in errors[0] and "no db" in errors[0]
    assert errors[0].count("--storage-backend") == 1
