"""The peers a benchmark compares: cfproxy, CHP 5.3.0, nginx, and direct (no proxy).

Owns how each peer is found, configured, started on the proxy core, made to
route `/ws` to the WebSocket backend, measured (RSS, CPU) and stopped by PID.
Also owns the backends (the lean uvloop server in benchmarks/backend.py, or
nginx serving static files) because they are started the same way.

cfproxy and CHP get the same command line (`--ip --port --api-ip --api-port
--default-target`, CONFIGPROXY_AUTH_TOKEN set) and all their default features.
nginx runs as a non-daemon child with a generated config in a temp dir: one
worker, keep-alive upstream pool, X-Forwarded-* headers like CHP, request
bodies streamed (no request buffering), responses buffered in memory only (no
temp files), WebSocket upgrade on /ws, no access log.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import procs
from benchmarks.httpc import HTTPClient
from benchmarks.shapes import user_name

TOKEN = "bench-secret"
REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CFPROXY_BENCH_CACHE")
             or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cfproxy-bench")


def find_chp() -> str | None:
    """CHP's entry script: $CFPROXY_BENCH_CHP, the install-chp.sh cache, or /tmp/chp."""
    env = os.environ.get("CFPROXY_BENCH_CHP")
    if env:
        return env if os.path.exists(env) else None
    for cand in (CACHE / "chp/node_modules/.bin/configurable-http-proxy",
                 Path("/tmp/chp/node_modules/.bin/configurable-http-proxy")):
        if cand.exists():
            return str(cand)
    return None


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
         if os.path.exists(p)), None)


def _nofile() -> int:
    import resource
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Backends:
    """The upstream servers: HTTP (nginx or python), the response-shape server, WebSocket echo.

    The python backend always runs: it serves the WebSocket echo and the response
    shapes (`/shape/<name>`, heads no stock nginx can send, e.g. without
    `Connection: keep-alive`). With kind "python" it is the HTTP backend too.
    """

    def __init__(self, kind: str, tmp: str) -> None:
        self.kind = kind
        self.tmp = tmp
        self.http_port = 0
        self.shape_port = 0
        self.ws_port = 0
        self._procs: list[subprocess.Popen] = []

    def start(self) -> None:
        self.ws_port = procs.free_port()
        self.shape_port = procs.free_port()
        if self.kind == "nginx":
            self.http_port = procs.free_port()
            self._procs.append(start_nginx_backend(self.tmp, self.http_port))
        else:
            self.http_port = self.shape_port
        proc = procs.spawn([sys.executable, "-m", "benchmarks.backend", "--http-port",
                            str(self.shape_port), "--ws-port", str(self.ws_port)],
                           cwd=str(REPO), env=_env(), log_path=os.path.join(self.tmp, "backend.log"))
        self._procs.append(proc)
        procs.wait_port(self.ws_port, proc=proc)
        procs.wait_port(self.shape_port, proc=proc)
        procs.wait_port(self.http_port, proc=self._procs[0])

    def stop(self) -> None:
        for p in self._procs:
            procs.stop(p)
        self._procs.clear()

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"http://127.0.0.1:{self.ws_port}"

    @property
    def shape_url(self) -> str:
        return f"http://127.0.0.1:{self.shape_port}"


_PYCACHE: list[str] = []


def _compiled_cache() -> str:
    """A bytecode cache folder with cfproxy compiled into it (once per run)."""
    if not _PYCACHE:
        path = str(CACHE / "pycache")
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "cfproxy")],
                       env={**os.environ, "PYTHONPYCACHEPREFIX": path}, check=False,
                       stdout=subprocess.DEVNULL, timeout=120)
        _PYCACHE.append(path)
    return _PYCACHE[0]


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def _nginx_common(tmp: str) -> str:
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(tmp, d), exist_ok=True)
    nofile = _nofile()
    return f"""
worker_processes 1;
worker_rlimit_nofile {nofile};
error_log {tmp}/error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections {max(1024, nofile - 64)}; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_timeout 120s;
    keepalive_requests 10000000;
    client_max_body_size 0;
    sendfile on;
    tcp_nopush on;
"""


def _start_nginx(tmp: str, conf: str, port: int) -> subprocess.Popen:
    os.makedirs(tmp, exist_ok=True)
    os.chmod(tmp, 0o755)
    path = os.path.join(tmp, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    user = ["-g", "daemon off; master_process on;" + (" user root;" if os.geteuid() == 0 else "")]
    # not pinned here: a backend inherits the runner's (load core) affinity
    proc = procs.spawn([find_nginx(), "-p", tmp, "-c", path, *user],
                       log_path=os.path.join(tmp, "stderr.log"))
    try:
        procs.wait_port(port, proc=proc)
    except Exception:
        procs.stop(proc)
        log = Path(tmp, "error.log").read_text() if Path(tmp, "error.log").exists() else ""
        raise RuntimeError(f"nginx did not start: {log[-500:]}") from None
    return proc


def start_nginx_backend(tmp: str, port: int) -> subprocess.Popen:
    """nginx (1 worker, on the load core) serving the backend paths from memory/sendfile."""
    root = os.path.join(tmp, "nginx-backend")
    www = os.path.join(root, "www")
    os.makedirs(www, exist_ok=True)
    for name, size in (("1m", 1 << 20), ("64m", 64 << 20)):
        with open(os.path.join(www, name), "wb") as f:
            f.write(b"x" * size)
    for d in (root, www):
        os.chmod(d, 0o755)
    conf = _nginx_common(root) + f"""
    server {{
        listen 127.0.0.1:{port} backlog=4096 reuseport;
        default_type application/octet-stream;
        location ~ ^/(1m|64m)$ {{ root {www}; }}
        location / {{ return 200 "Hello, world\\n"; }}
    }}
}}
"""
    return _start_nginx(root, conf, port)


class Peer:
    """A thing to benchmark. `port` takes HTTP load; `ws_port` + `ws_path` take WebSockets."""

    name = "peer"
    has_api = False  # CHP's REST API (route scenarios)

    def __init__(self, backends: Backends, tmp: str) -> None:
        self.backends = backends
        self.tmp = os.path.join(tmp, self.name)
        os.makedirs(self.tmp, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.api_port = 0
        self.metrics_port = 0
        self.ws_path = "/ws"

    @property
    def ws_port(self) -> int:
        return self.port

    def unavailable(self) -> str | None:
        """Why this peer cannot run here (None when it can)."""
        return None

    def port_for(self, backend: str) -> int:
        """The port taking load meant for `backend` ("http" or "shape"): the proxy's own port."""
        return self.port

    def command(self, port: int, api_port: int, extra: tuple[str, ...]) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict:
        return _env(CONFIGPROXY_AUTH_TOKEN=TOKEN)

    def spawn(self, extra: tuple[str, ...] = (), metrics: bool = False) -> subprocess.Popen:
        """Start the process without waiting (start-up timing uses this).

        metrics=True also opens the metrics port (`--metrics-port`) on a free port.
        """
        self.port = procs.free_port()
        self.api_port = procs.free_port()
        if metrics:
            self.metrics_port = procs.free_port()
            extra = (*extra, "--metrics-ip", "127.0.0.1", "--metrics-port", str(self.metrics_port))
        self.proc = procs.spawn([*procs.proxy_prefix(), *self.command(self.port, self.api_port, extra)],
                                env=self.env(), cwd=str(REPO),
                                log_path=os.path.join(self.tmp, "proxy.log"))
        return self.proc

    def start(self, extra: tuple[str, ...] = (), users: int = 0, metrics: bool = False) -> None:
        """Start, wait until listening, add the /ws and /shape routes (+ `users` users' routes)."""
        self.spawn(extra, metrics=metrics)
        try:
            procs.wait_port(self.port, proc=self.proc)
            if self.has_api:
                procs.wait_port(self.api_port, proc=self.proc)
            if metrics:
                procs.wait_port(self.metrics_port, proc=self.proc)
            self.after_start(users)
        except Exception as e:
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {e}; log: {self.log_tail()}") from None

    def after_start(self, users: int = 0) -> None:
        if not self.has_api:
            return
        b = self.backends
        routes = [("/ws", b.ws_url), ("/shape", b.shape_url)]
        # the browser-shaped scenario's users, each with a route as JupyterHub adds them
        routes += [(f"/user/{user_name(i)}", b.http_url) for i in range(users)]
        with HTTPClient(self.api_port, token=TOKEN) as c:
            for path, target in routes:
                body = b'{"target": "%s"}' % target.encode()
                if path.startswith("/user/"):  # JupyterHub's route data
                    body = body[:-1] + b', "user": "%s", "server_name": ""}' % path[6:].encode()
                status, resp = c.request("POST", "/api/routes" + path, body)
                if status != 201:
                    raise RuntimeError(f"POST /api/routes{path} -> {status} {resp[:100]!r}")

    def stop(self) -> None:
        procs.stop(self.proc)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kib(self) -> int:
        return procs.rss_kib(self.proc.pid) if self.proc else 0

    def cpu_seconds(self) -> float:
        return procs.cpu_seconds(self.proc.pid) if self.proc else 0.0

    def log_tail(self, n: int = 600) -> str:
        p = Path(self.tmp, "proxy.log")
        return p.read_text(errors="replace")[-n:] if p.exists() else ""


class CFProxy(Peer):
    name = "cfproxy"
    has_api = True
    workers = 1  # `python -m benchmarks --workers N`: CPU is measured over the process tree

    def unavailable(self) -> str | None:
        if not (REPO / "cfproxy" / "__main__.py").exists():
            return "cfproxy package not found"
        return None

    def env(self) -> dict:
        # Run cfproxy as an installed package runs: with compiled bytecode. `pip install`
        # byte-compiles; a checkout under PYTHONDONTWRITEBYTECODE=1 would recompile every
        # module at every start (~25-40 ms of start-up measured here). The bytecode goes to
        # a cache folder, never into the repository.
        env = super().env()
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = _compiled_cache()
        return env

    def command(self, port: int, api_port: int, extra: tuple[str, ...]) -> list[str]:
        return [sys.executable, "-m", "cfproxy", "--ip", "127.0.0.1", "--port", str(port),
                "--api-ip", "127.0.0.1", "--api-port", str(api_port),
                "--default-target", self.backends.http_url,
                *(("--workers", str(self.workers)) if self.workers > 1 else ()), *extra]


class CHP(Peer):
    name = "chp"
    has_api = True

    def unavailable(self) -> str | None:
        if not find_chp():
            return "CHP not installed (run scripts/install-chp.sh, or set CFPROXY_BENCH_CHP)"
        if not shutil.which("node"):
            return "node not found"
        return None

    def command(self, port: int, api_port: int, extra: tuple[str, ...]) -> list[str]:
        return [shutil.which("node") or "node", find_chp(), "--ip", "127.0.0.1", "--port", str(port),
                "--api-ip", "127.0.0.1", "--api-port", str(api_port),
                "--default-target", self.backends.http_url, *extra]


class Nginx(Peer):
    name = "nginx"

    def unavailable(self) -> str | None:
        return None if find_nginx() else "nginx not found (scripts/install-bench-tools.sh)"

    def config(self, port: int) -> str:
        b = self.backends
        return _nginx_common(self.tmp) + f"""
    upstream backend {{ server 127.0.0.1:{b.http_port}; keepalive 256; keepalive_requests 10000000; }}
    upstream wsbackend {{ server 127.0.0.1:{b.ws_port}; }}
    upstream shapebackend {{ server 127.0.0.1:{b.shape_port}; keepalive 256;
                             keepalive_requests 10000000; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        proxy_http_version 1.1;
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $http_host;
        proxy_set_header X-Forwarded-Port $server_port;
        location / {{
            proxy_pass http://backend;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering on;
            proxy_buffers 16 64k;
            proxy_busy_buffers_size 128k;
            proxy_max_temp_file_size 0;
        }}
        location /shape/ {{
            proxy_pass http://shapebackend;
            proxy_set_header Connection "";
            proxy_buffering on;
        }}
        location /ws {{
            proxy_pass http://wsbackend;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""

    def spawn(self, extra: tuple[str, ...] = (), metrics: bool = False) -> subprocess.Popen:
        self.port = procs.free_port()
        path = os.path.join(self.tmp, "nginx.conf")
        os.chmod(self.tmp, 0o755)
        with open(path, "w") as f:
            f.write(self.config(self.port))
        user = "daemon off; master_process on;" + (" user root;" if os.geteuid() == 0 else "")
        self.proc = procs.spawn([*procs.proxy_prefix(), find_nginx(), "-p", self.tmp, "-c", path,
                                 "-g", user], log_path=os.path.join(self.tmp, "proxy.log"))
        return self.proc

    def log_tail(self, n: int = 600) -> str:
        p = Path(self.tmp, "error.log")
        return (p.read_text(errors="replace")[-n:] if p.exists() else "") + super().log_tail(n)


class Direct(Peer):
    """No proxy: load straight at the backends — the ceiling of load generator + backend."""

    name = "direct"

    def spawn(self, extra: tuple[str, ...] = (), metrics: bool = False) -> subprocess.Popen | None:
        self.port = self.backends.http_port
        return None

    def start(self, extra: tuple[str, ...] = (), users: int = 0, metrics: bool = False) -> None:
        self.port = self.backends.http_port

    def port_for(self, backend: str) -> int:
        return self.backends.shape_port if backend == "shape" else self.port

    @property
    def ws_port(self) -> int:
        return self.backends.ws_port

    def stop(self) -> None:
        pass

    def alive(self) -> bool:
        return True


PEER_CLASSES: dict[str, type[Peer]] = {c.name: c for c in (CFProxy, CHP, Nginx, Direct)}
ALL_PEERS = tuple(PEER_CLASSES)


def make_tmp() -> str:
    return tempfile.mkdtemp(prefix="cfproxy-bench-")


def wait_until(pred, timeout: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False
