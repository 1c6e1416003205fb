"""A tiny stand-in for jupyterhub-singleuser, spawned by JupyterHub in the e2e tests.

It owns nothing but the behaviour the hub and the tests need from a user's server:
  * listen where the hub says: JUPYTERHUB_SERVICE_URL (http://ip:port/prefix/), with the
    prefix also in JUPYTERHUB_SERVICE_PREFIX; no command-line arguments needed;
  * answer the hub's readiness check `GET <prefix>api` (any non-5xx will do for the hub;
    we answer 200 JSON with the X-JupyterHub-Version header so the hub does not warn);
  * `GET <prefix>` : an HTML page naming the user (the "page" the tests fetch);
  * `GET <prefix>echo` : JSON with what arrived (path, headers) for forwarding checks;
  * `<prefix>ws` : a WebSocket echo (text and binary);
  * anything else under the prefix: 404 JSON.
It writes its PID to $HOME/singleuser.pid so a test can end exactly this process.
It does no authentication: it is a test fixture, never run it anywhere else.
Only tornado (a JupyterHub dependency) is needed.
"""

from __future__ import annotations

import json
import os
import sys
from urllib.parse import urlsplit

from tornado import ioloop, web, websocket

try:
    from jupyterhub import __version__ as HUB_VERSION
except ImportError:  # pragma: no cover - the hub is always importable where it spawns us
    HUB_VERSION = ""


class ApiHandler(web.RequestHandler):
    def get(self) -> None:
        if HUB_VERSION:
            self.set_header("X-JupyterHub-Version", HUB_VERSION)
        self.finish({"version": HUB_VERSION, "server": "cfproxy-e2e-singleuser"})


class PageHandler(web.RequestHandler):
    def get(self) -> None:
        user = os.environ.get("JUPYTERHUB_USER", "?")
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            "<!doctype html><html><head><title>e2e single-user</title></head>"
            f"<body><h1>single-user server of {user}</h1></body></html>"
        )


class EchoHandler(web.RequestHandler):
    def get(self) -> None:
        self.finish({
            "user": os.environ.get("JUPYTERHUB_USER"),
            "uri": self.request.uri,
            "headers": {k.lower(): v for k, v in self.request.headers.get_all()},
        })


class EchoSocket(websocket.WebSocketHandler):
    def check_origin(self, origin: str) -> bool:
        return True

    def on_message(self, message: str | bytes) -> None:
        self.write_message(message, binary=isinstance(message, bytes))


class NotFound(web.RequestHandler):
    def get(self, *args: str) -> None:
        self.set_status(404)
        self.finish({"error": "not found", "uri": self.request.uri})


def make_app(prefix: str) -> web.Application:
    if not prefix.endswith("/"):
        prefix += "/"
    p = prefix.rstrip("/")
    return web.Application([
        (rf"{p}/api/?", ApiHandler),
        (rf"{p}/?", PageHandler),
        (rf"{p}/echo", EchoHandler),
        (rf"{p}/ws", EchoSocket),
        (rf"{p}/(.*)", NotFound),
    ])


def main() -> int:
    service_url = os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8888/")
    parts = urlsplit(service_url)
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or parts.path or "/"
    ip = parts.hostname or "127.0.0.1"
    port = parts.port or 8888
    for arg in sys.argv[1:]:  # also honour --port=N / --ip=X like jupyterhub-singleuser
        if arg.startswith("--port="):
            port = int(arg.split("=", 1)[1])
        elif arg.startswith("--ip="):
            ip = arg.split("=", 1)[1]
    app = make_app(prefix)
    app.listen(port, ip)
    home = os.environ.get("HOME")
    if home and os.path.isdir(home):
        with open(os.path.join(home, "singleuser.pid"), "w") as f:
            f.write(str(os.getpid()))
    print(f"e2e single-user server listening on http://{ip}:{port}{prefix}", flush=True)
    print(json.dumps({"prefix": prefix, "port": port}), flush=True)
    try:
        ioloop.IOLoop.current().start()
    except KeyboardInterrupt:  # the spawner stops us with SIGINT first
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
