"""A real redis-server for tests, on a free loopback port in a temp dir.

    with RedisServer() as r:          # starts `redis-server`, waits until it answers PING
        r.url, r.port, r.pid
        r.stop(); r.start()           # a restart on the same port (no persistence: data is gone)

    with redis_url() as url:          # $REDIS_URL when set (CI starts one), else an own server

`redis_server_binary()` is None when redis-server is not installed; `require_redis_server()`
then skips the test with the reason (.ci/run installs it). The server is started with no
persistence (`--save '' --appendonly no`) and stopped by its PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

SKIP_REASON = "redis-server is not installed (apt-get install redis-server; .ci/run installs it)"


def redis_server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    for path in ("/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"):
        if os.access(path, os.X_OK):
            return path
    return None


def require_redis_server() -> str:
    """The redis-server binary, or skip the calling test/fixture with a clear reason."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip(SKIP_REASON)
    return binary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ping(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when a Redis answers PING on host:port (raw RESP, no client library)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, port: int | None = None) -> None:
        self.binary = require_redis_server()
        self.port = port or _free_port()
        self.dir = tempfile.mkdtemp(prefix="cfproxy-redis-")
        self.proc: subprocess.Popen | None = None
        self._log = open(os.path.join(self.dir, "redis.log"), "ab")  # noqa: SIM115

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--daemonize", "no"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log()}")
            if ping(self.port):
                return self
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"redis-server did not answer on port {self.port}: {self.log()}")

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        self._log.flush()
        with open(os.path.join(self.dir, "redis.log"), "rb") as f:
            return f.read().decode("utf-8", "replace")[-2000:]

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """$REDIS_URL when set, else the URL of a RedisServer started for the duration."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with RedisServer() as server:
        yield server.url
