"""Start cfproxy as a real subprocess on loopback and wait until it serves.

    with ProxyProcess("--default-target", url) as proxy:
        proxy.port, proxy.api_port, proxy.api_url, proxy.url, proxy.pid

Ports are picked free unless given in the arguments. Readiness = both the
public and the API listener accept TCP connections (or their Unix sockets
exist and accept). Output (stdout+stderr) is collected in `proxy.output()`.
On exit the process gets SIGTERM, then SIGKILL after 10 s.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

TOKEN = "secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def wait_for_unix(path: str, timeout: float = 10.0, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {path}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(0.5)
                s.connect(path)
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {path} after {timeout}s")


def _has_flag(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def _flag_value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


class ProxyProcess:
    def __init__(self, *args: str, token: str | None = TOKEN, env: dict | None = None,
                 wait: bool = True, ip: str = "127.0.0.1") -> None:
        self.args = list(args)
        if not _has_flag(self.args, "--socket"):
            if not _has_flag(self.args, "--port"):
                self.args += ["--port", str(free_port())]
            if not _has_flag(self.args, "--ip"):
                self.args += ["--ip", ip]
        if not _has_flag(self.args, "--api-socket"):
            if not _has_flag(self.args, "--api-port"):
                self.args += ["--api-port", str(free_port())]
            if not _has_flag(self.args, "--api-ip"):
                self.args += ["--api-ip", "127.0.0.1"]
        self.token = token
        self.env = dict(os.environ)
        self.env.pop("CONFIGPROXY_AUTH_TOKEN", None)
        if token is not None:
            self.env["CONFIGPROXY_AUTH_TOKEN"] = token
        self.env["PYTHONUNBUFFERED"] = "1"
        if env:
            self.env.update(env)
        self.wait = wait
        self.proc: subprocess.Popen | None = None
        self._out = tempfile.TemporaryFile()

    # --- addresses ---------------------------------------------------------
    @property
    def port(self) -> int:
        return int(_flag_value(self.args, "--port"))

    @property
    def api_port(self) -> int:
        return int(_flag_value(self.args, "--api-port"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    # --- lifecycle ---------------------------------------------------------
    def start(self) -> ProxyProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cfproxy", *self.args],
            stdout=self._out, stderr=subprocess.STDOUT, env=self.env,
        )
        if self.wait:
            try:
                self.wait_ready()
            except Exception:
                self.stop()
                raise RuntimeError(f"cfproxy did not start: {self.output()}") from None
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        sock = _flag_value(self.args, "--socket")
        if sock:
            wait_for_unix(sock, timeout, self.proc)
        else:
            wait_for_port(self.port, "127.0.0.1", timeout, self.proc)
        api_sock = _flag_value(self.args, "--api-socket")
        if api_sock:
            wait_for_unix(api_sock, timeout, self.proc)
        else:
            wait_for_port(self.api_port, "127.0.0.1", timeout, self.proc)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def output(self) -> str:
        self._out.flush()
        self._out.seek(0)
        return self._out.read().decode("utf-8", "replace")

    def wait_for_output(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.output()
            if text in out:
                return out
            time.sleep(0.02)
        raise TimeoutError(f"{text!r} not in output: {self.output()}")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self._out.close()


def run_cli(*args: str, env: dict | None = None, timeout: float = 20.0) -> subprocess.CompletedProcess:
    """Run the CLI to completion (for --help, --version and error cases)."""
    e = dict(os.environ)
    e.pop("CONFIGPROXY_AUTH_TOKEN", None)
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", "cfproxy", *args], capture_output=True,
                          text=True, timeout=timeout, env=e)


