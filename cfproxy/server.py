"""Process wiring and lifecycle: event loop, listeners, pid file, signals, graceful shutdown.

Owns everything between a finished Config and a running proxy, and back:

    run(config) -> exit code        uvloop loop (asyncio if uvloop is missing), logging, App
    await serve(app) -> exit code    start-up lines, listeners, pid file, wait for a signal, drain

It never parses HTTP and never touches routes except adding --default-target
at start-up. With `--workers N` (N > 1) this process is the primary: the public
listener is opened by `cfproxy.workers.primary.open_public_with_workers` (bind
here, accept in N worker processes), the drain also drains the workers and
SIGHUP is passed on to them; everything else is as below. Start-up lines are CHP's (reference 1.7), on stdout, in CHP's order,
ending with `Route added / -> T` (JupyterHub and CHP's tests wait for it).

Deviations from CHP, all deliberate (reference 1.7/1.8, quirks Q8, Q22):
- a listener that cannot bind is one error line and exit 1 (CHP keeps running without it);
- a stale Unix socket file (nothing listening) is replaced; a live one is an error;
  socket files we created are removed on exit;
- SIGINT/SIGTERM stop accepting, let in-flight requests finish for up to
  --shutdown-timeout ms, close tunnels, remove the pid file and exit 0 (CHP exits 2
  at once); a second signal cuts the grace period short;
- SIGHUP reloads the TLS certificates (CHP dies).
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import stat
import time
from collections.abc import Callable, Sequence
from typing import Any

from cfproxy.config import Config
from cfproxy.log import log, setup_logging

LISTEN_BACKLOG = 1024


class ListenError(Exception):
    """A listener could not be set up; the message is the one error line."""


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(config: Config, startup_warnings: Sequence[str] = ()) -> int:
    """Run the proxy until SIGINT/SIGTERM; return the process exit code."""
    setup_logging(config.log_level)
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_main(config, startup_warnings))
    except KeyboardInterrupt:  # a SIGINT before the handlers were installed
        log.warning("Interrupted")
        return 0
    finally:
        try:
            _cancel_all(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


async def _main(config: Config, startup_warnings: Sequence[str]) -> int:
    from cfproxy.app import App

    try:
        app = App(config, table=_primary_table(config))
    except Exception as e:  # noqa: BLE001 - e.g. a storage backend that fails to construct
        if config.storage_backend:
            msg = str(e)
            if "--storage-backend" not in msg:
                msg = f"--storage-backend {config.storage_backend}: {msg}"
            log.error("%s", msg)
        else:
            log.error("Failed to start: %s", e, exc_info=True)
        return 1
    return await serve(app, startup_warnings=startup_warnings)


def _primary_table(config: Config) -> Any:
    """With --workers N the primary's table reports every write to the workers' feed."""
    if config.workers <= 1:
        return None  # App builds the plain RouteTable
    from cfproxy.workers.feed import FeedTable

    return FeedTable(host_routing=config.host_routing)


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in tasks:
        t.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


# --- listeners -------------------------------------------------------------------


def listener_factory(kind: str, app: Any) -> Callable[[], asyncio.BaseProtocol] | None:
    """The protocol factory for a listener kind; None when an optional module is missing."""
    if kind == "proxy":
        from cfproxy.proxy import make_proxy_protocol_factory

        return make_proxy_protocol_factory(app)
    if kind == "api":
        return _lazy_api_factory(app)
    if kind == "metrics":
        try:
            from cfproxy.metrics_server import make_metrics_protocol_factory
        except ImportError as e:
            log.error("Metrics server unavailable (%s); --metrics-* ignored", e)
            return None
        return make_metrics_protocol_factory(app)
    if kind == "redirect":
        try:
            from cfproxy.proxy.redirect import make_redirect_protocol_factory
        except ImportError as e:
            log.error("Redirect server unavailable (%s); --redirect-port ignored", e)
            return None
        return make_redirect_protocol_factory(app)
    raise ValueError(kind)


def _lazy_api_factory(app: Any) -> Callable[[], asyncio.BaseProtocol]:
    """The API's protocol factory, importing the API stack (api/, orjson) on the first API
    connection: the proxy serves its first request ~10 ms sooner (measured without .pyc
    files, as an editable install under PYTHONDONTWRITEBYTECODE=1 runs)."""
    if getattr(app, "api_connections", None) is None:
        app.api_connections = set()
    real: list[Callable[[], asyncio.BaseProtocol]] = []

    def factory() -> asyncio.BaseProtocol:
        if not real:
            from cfproxy.api.server import make_api_protocol_factory

            real.append(make_api_protocol_factory(app))
        return real[0]()

    return factory


def prepare_unix_path(path: str, flag: str) -> None:
    """Q22: unlink a stale socket file nobody listens on; refuse a live one or a non-socket."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise ListenError(f"cannot listen on {path} ({flag}): {e.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(f"cannot listen on {path} ({flag}): file exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        try:
            os.unlink(path)  # stale: left behind by a process that died
            log.info("Removed stale socket file %s", path)
        except FileNotFoundError:
            pass
        return
    except OSError:
        # e.g. EAGAIN (backlog full) or a timeout: somebody is there
        pass
    finally:
        probe.close()
    raise ListenError(f"cannot listen on {path} ({flag}): another process is listening on it")


def bind_tcp(host: str | None, port: int, flag: str) -> list[socket.socket]:
    """Bound, listening sockets for host:port. "" / None = every interface, dual stack."""
    socks: list[socket.socket] = []
    if not host:
        try:
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError:
            s = None
        if s is not None:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                s.bind(("::", port))
                s.listen(LISTEN_BACKLOG)
                s.setblocking(False)
                return [s]
            except OSError as e:
                s.close()
                if e.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
                    raise ListenError(f"cannot listen on port {port} ({flag}): {e.strerror}") from None
        host = "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ListenError(f"cannot listen on {host}:{port} ({flag}): {e.strerror}") from None
    seen = set()
    errors: list[str] = []
    for family, type_, proto, _, addr in infos:
        key = (family, addr[0])
        if key in seen:
            continue
        seen.add(key)
        s = socket.socket(family, type_, proto)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(addr)
            s.listen(LISTEN_BACKLOG)
            s.setblocking(False)
        except OSError as e:
            s.close()
            shown = f"[{addr[0]}]:{port}" if family == socket.AF_INET6 else f"{addr[0]}:{port}"
            # A name that also resolves to an address family this host lacks (localhost -> ::1
            # without IPv6) is fine as long as one address binds.
            if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) and len(infos) > 1:
                errors.append(f"{shown}: {e.strerror}")
                continue
            for done in socks:
                done.close()
            raise ListenError(f"cannot listen on {shown} ({flag}): {e.strerror}") from None
        socks.append(s)
        if port == 0:
            port = s.getsockname()[1]  # the same random port on every address
    if not socks:
        raise ListenError(f"cannot listen on {host}:{port} ({flag}): {'; '.join(errors)}")
    return socks


class Listeners:
    """The servers we opened, and the Unix socket files to remove at the end."""

    def __init__(self) -> None:
        self.servers: list[asyncio.AbstractServer] = []
        self.unix_paths: list[str] = []

    async def open_tcp(self, factory: Callable, host: str | None, port: int, flag: str,
                       ssl: Any = None) -> int:
        loop = asyncio.get_running_loop()
        socks = bind_tcp(host, port, flag)
        bound_port = socks[0].getsockname()[1]
        for i, s in enumerate(socks):
            try:
                server = await loop.create_server(factory, sock=s, ssl=ssl, backlog=LISTEN_BACKLOG)
            except Exception:
                for rest in socks[i:]:
                    rest.close()
                raise
            self.servers.append(server)
        return bound_port

    async def open_unix(self, factory: Callable, path: str, flag: str, ssl: Any = None) -> None:
        loop = asyncio.get_running_loop()
        prepare_unix_path(path, flag)
        try:
            server = await loop.create_unix_server(factory, path, ssl=ssl, backlog=LISTEN_BACKLOG)
        except OSError as e:
            raise ListenError(f"cannot listen on {path} ({flag}): {e.strerror or e}") from None
        self.servers.append(server)
        self.unix_paths.append(path)

    def close(self) -> None:
        """Stop accepting (existing connections stay open)."""
        for server in self.servers:
            server.close()

    def remove_socket_files(self) -> None:
        for path in self.unix_paths:
            try:
                os.unlink(path)
            except OSError:
                pass
        self.unix_paths.clear()


def addr_text(port: Any, ip: Any) -> str:
    """CHP's `[port, ip].join(":")`: port first, undefined ip -> empty (quirk Q19)."""
    return f"{port}:{'' if ip is None else ip}"


# --- the lifecycle -----------------------------------------------------------------


async def serve(app: Any, startup_warnings: Sequence[str] = ()) -> int:
    """Start every listener of `app`, serve until SIGINT/SIGTERM, drain, return the exit code."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_uncaught_exception)
    # installed first, so a signal during start-up still ends in a clean shutdown
    stopping = _install_signal_handlers(app)
    listeners = Listeners()
    pid_written: list[str] = []
    try:
        return await _start_and_wait(app, listeners, stopping, startup_warnings, pid_written)
    except ListenError as e:
        log.error("%s", e)
        return 1
    finally:
        workers = getattr(app, "workers", None)
        if workers is not None:
            workers.terminate()  # normally all gone already; never leave one behind
        listeners.close()
        listeners.remove_socket_files()
        await _close_store(app)  # no-op after a clean shutdown; releases the store on errors
        for path in pid_written:
            log.debug("Removing %s", path)
            try:
                os.unlink(path)
            except OSError:
                pass
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            try:
                loop.remove_signal_handler(sig)
            except (ValueError, RuntimeError, NotImplementedError):
                pass


async def _start_and_wait(app: Any, listeners: Listeners, stopping: Stopping,
                          startup_warnings: Sequence[str], pid_written: list[str]) -> int:
    config: Config = app.config
    # CHP's start-up lines, step 2 (reference 1.7)
    if config.auto_rewrite:
        log.info("AutoRewrite of Location headers enabled.")
    if config.change_origin:
        log.info("Change Origin of host headers enabled.")
    if config.protocol_rewrite:
        log.info("ProtocolRewrite enabled. Rewriting to %s", config.protocol_rewrite)
    if not config.auth_token:
        log.warning("REST API is not authenticated.")

    # step 3: routes (stored ones, then the default route) go in before anything listens
    try:
        await _load_routes(app)
        if config.default_target:
            log.info("Adding route / -> %s", config.default_target)
            await _add_default_route(app, config.default_target)
    except Exception as e:  # noqa: BLE001 - e.g. the store's server is unreachable
        log.error("Could not set up routes in the store (--storage-backend): %s", e)
        return 1

    # steps 4-6: listen, say where, pid file, readiness line
    for line in startup_warnings:
        log.warning("%s", line)
    redirect_port = await _open_listeners(app, listeners)
    if config.pid_file:
        _write_pid_file(config.pid_file)  # before the line, so whoever reads the line finds it
        pid_written.append(config.pid_file)
        log.info("Writing pid %s to %s", os.getpid(), config.pid_file)
    if config.default_target:
        log.info("Route added / -> %s", config.default_target)
    if redirect_port is not None:
        log.info("Added HTTP to HTTPS redirection from %s to %s", redirect_port, _redirect_to(config))

    await stopping.first.wait()
    await drain(app, listeners, stopping)
    return 0


async def _load_routes(app: Any) -> None:
    """Open the store and load every route into the table (before anything listens)."""
    n = await app.sync.start()
    if n:
        log.info("Loaded %d route(s) from the route store", n)


async def _add_default_route(app: Any, target: str) -> None:
    await app.sync.add("/", {"target": target})


def _redirect_to(config: Config) -> Any:
    return config.redirect_to if config.redirect_to else config.port


async def _open_listeners(app: Any, listeners: Listeners) -> int | None:
    """Open every listener and log where; returns the redirect server's port, if started."""
    config: Config = app.config
    tls = app.tls
    public_scheme = "https" if tls.public is not None or config.public_tls else "http"
    api_scheme = "https" if tls.api is not None or config.api_tls else "http"

    if config.workers > 1:
        from cfproxy.workers.primary import open_public_with_workers

        proxy_addr = await open_public_with_workers(app, listeners)
    elif config.socket:
        await listeners.open_unix(listener_factory("proxy", app), config.socket, "--socket",
                                  ssl=tls.public)
        proxy_addr = config.socket
    else:
        await listeners.open_tcp(listener_factory("proxy", app), config.ip, config.port,
                                 "--ip/--port", ssl=tls.public)
        proxy_addr = addr_text(config.port, config.ip)

    api_factory = listener_factory("api", app)
    if config.api_socket:
        await listeners.open_unix(api_factory, config.api_socket, "--api-socket", ssl=tls.api)
        api_addr = config.api_socket
    else:
        await listeners.open_tcp(api_factory, config.api_ip, config.api_port,
                                 "--api-ip/--api-port", ssl=tls.api)
        api_addr = addr_text(config.api_port, config.api_ip)

    metrics_addr = None
    if config.metrics_enabled:
        factory = listener_factory("metrics", app)
        if factory is not None:
            if config.metrics_socket:
                await listeners.open_unix(factory, config.metrics_socket, "--metrics-socket")
                metrics_addr = config.metrics_socket
            else:
                port = await listeners.open_tcp(factory, config.metrics_ip, config.metrics_port,
                                                "--metrics-ip/--metrics-port")
                metrics_addr = addr_text(port, config.metrics_ip)

    # CHP: no redirect server on a Unix socket or when the public port is 80
    redirect_port = None
    if config.redirect_port is not None and not config.socket and config.port != 80:
        factory = listener_factory("redirect", app)
        if factory is not None:
            redirect_port = await listeners.open_tcp(
                factory, "", config.redirect_port, "--redirect-port")

    log.info("Proxying %s://%s to %s", public_scheme, proxy_addr,
             config.default_target or "(no default)")
    log.info("Proxy API at %s://%s/api/routes", api_scheme, api_addr)
    if metrics_addr is not None:
        log.info("Serve metrics at http://%s/metrics", metrics_addr)
    return redirect_port


def _write_pid_file(path: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise ListenError(f"cannot write pid file {path} (--pid-file): {e.strerror}") from None


class Stopping:
    def __init__(self) -> None:
        self.first = asyncio.Event()  # first SIGINT/SIGTERM: drain
        self.again = asyncio.Event()  # another one: stop draining now


def _install_signal_handlers(app: Any) -> Stopping:
    loop = asyncio.get_running_loop()
    stopping = Stopping()

    def on_stop(word: str) -> None:
        log.warning("%s", word)
        if stopping.first.is_set():
            stopping.again.set()
        stopping.first.set()

    def on_hup() -> None:
        log.info("SIGHUP received: reloading TLS certificates")
        try:
            app.tls.reload()
        except Exception as e:  # noqa: BLE001 - keep serving with the old certificates
            log.error("TLS reload failed, keeping the current certificates: %s", e)
        workers = getattr(app, "workers", None)
        if workers is not None:
            workers.reload_tls()

    loop.add_signal_handler(signal.SIGINT, on_stop, "Interrupted")
    loop.add_signal_handler(signal.SIGTERM, on_stop, "Terminated")
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    return stopping


async def drain(app: Any, listeners: Listeners, stopping: Stopping) -> None:
    """Stop accepting, let in-flight requests finish (bounded), then close everything."""
    app.shutting_down = True
    listeners.close()
    listeners.remove_socket_files()
    workers = getattr(app, "workers", None)  # --workers N: the primary's supervisor
    if workers is not None:
        workers.start_drain()
        await workers.gather_activity()  # what they saw goes into the store's last flush
    await _close_store(app)  # flushed and released before the drain: a successor can open it
    for conn in list(app.connections):
        _call(conn, "close_when_idle")
    grace = app.config.shutdown_timeout / 1000.0
    deadline = time.monotonic() + grace
    while app.connections and not stopping.again.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            await asyncio.wait_for(stopping.again.wait(), timeout=min(left, 0.02))
        except asyncio.TimeoutError:
            pass
    if app.connections:
        log.warning("Shutdown: closing %d connection(s) still busy", len(app.connections))
        for conn in list(app.connections):
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.abort()
    if workers is not None:
        await workers.finish_drain(stopping, app.config.shutdown_timeout)
    for tunnel in list(app.tunnels):
        _call(tunnel, "close")
    upstreams = getattr(app, "upstreams", None)
    if upstreams is not None:
        _call(upstreams, "close")
    await asyncio.sleep(0)  # let transports flush their close


async def _close_store(app: Any) -> None:
    try:
        await asyncio.wait_for(app.sync.close(), timeout=5)
    except Exception as e:  # noqa: BLE001 - shutting down regardless
        log.warning("Closing the route store (--storage-backend) failed: %s", e)


def _call(obj: Any, method: str) -> None:
    try:
        getattr(obj, method)()
    except Exception as e:  # noqa: BLE001 - one broken connection must not stop the shutdown
        log.debug("%s.%s() failed during shutdown: %s", type(obj).__name__, method, e)


def _uncaught_exception(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """CHP's process-wide handler: log and keep running."""
    exc = context.get("exception")
    msg = str(exc) if exc is not None else context.get("message", "unknown error")
    if exc is not None:
        log.error("Uncaught Exception: %s", msg, exc_info=(type(exc), exc, exc.__traceback__))
    else:
        log.error("Uncaught Exception: %s", msg)
