"""One worker process of `--workers N`: accepts on the public sockets the primary bound and
routes by the table the primary feeds it.

The primary starts it as `python -m cfproxy.workers <channel fd> <primary pid>` (a fresh
interpreter, never a fork: see the package docstring), passing the channel (one end of a
socketpair) and the listening sockets as inherited descriptors.

Start-up, in order:
1. PR_SET_PDEATHSIG(SIGKILL), so the kernel kills this process when the primary dies by
   whatever means (JupyterHub SIGKILLs the pid-file process); if the primary is already
   gone, exit. (The channel's EOF is the portable backstop, below.)
2. Read `("hello", index, config, fds)` and `("table", seq, routes)` (blocking reads).
3. Build an App over its own RouteTable and a MemoryStore: a worker never talks to the
   user's store (Redis, SQLite...): only the primary does.
4. Attach the channel to the event loop, say `("ready", seq)`, wait for `("go",)`: every
   batch of writes sent before "go" is applied first, so this worker never accepts with
   a table older than the one the API last answered for. Then accept, and say
   `("serving",)`.

While serving: `("ops", seq, ops)` -> apply to the table, answer `("ack", seq)`; every
second `("report", activity, metrics, gauges)`: routes whose last_activity moved, the
metrics registry, open connections/tunnels/idle upstreams. `("activity?",)` (the API is
about to answer a GET) -> `("activity", moved)` at once. `("reload_tls",)` reloads the
certificates (answered `("tls", ok, error)`).

Exits: `("drain",)`, SIGTERM or SIGINT drain like a single process (stop accepting,
in-flight requests finish within --shutdown-timeout) and exit 0 after a final report;
`("now",)` or a second signal cuts the grace short. EOF on the channel means the
primary is gone: exit at once with status 1, no orphan keeps accepting.
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import socket
import sys
import time
from typing import Any

from cfproxy.log import log, setup_logging
from cfproxy.workers.channel import ChannelProtocol, open_channel, recv_blocking
from cfproxy.workers.feed import apply_ops

REPORT_INTERVAL = 1.0  # seconds between activity + metrics reports
PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send `sig` to this process when its parent dies (False where unsupported)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def pooled_counts(app: Any) -> dict:
    """Idle pooled upstream connections by pool key (for the by-target gauge)."""
    idle = getattr(app.upstreams, "idle", None)
    if not isinstance(idle, dict):
        return {}
    return {key: len(conns) for key, conns in list(idle.items()) if conns}


def moved_activity(table: Any, since: float) -> list[tuple[str, float]]:
    """(prefix, last_activity) of the routes whose activity is newer than `since`."""
    return [(r.prefix, r.last_activity) for r in table if r.last_activity > since]


class Worker:
    def __init__(self, index: int, config: Any, channel_sock: socket.socket,
                 listen_fds: list[int], seq: int, routes: list) -> None:
        from cfproxy.app import App
        from cfproxy.routing.table import RouteTable
        from cfproxy.server import Stopping
        from cfproxy.store.memory import MemoryStore

        self.index = index
        self.config = config
        self.channel_sock = channel_sock
        self.listen_fds = listen_fds
        table = RouteTable(host_routing=config.host_routing)
        for prefix, data, last_activity in routes:
            try:
                table.add(prefix, data, last_activity)
            except ValueError as e:  # InvalidTarget: the primary parsed it, so not expected
                log.warning("Worker %d: not routing %s: %s", index, prefix, e)
        self.app = App(config, table=table, store=MemoryStore(table))
        self.seq = seq
        self.channel: ChannelProtocol | None = None
        self.stopping = Stopping()
        self.go = asyncio.Event()
        self.primary_gone = asyncio.Event()
        self.exiting = False  # draining is over: the channel closing is expected
        self.half_closed = False  # our EOF is sent: nothing more may be written
        self.channel_done = asyncio.Event()
        self.signals = 0
        self.reported_at = time.time()

    # --- the channel ------------------------------------------------------------------
    def on_message(self, msg: Any) -> None:
        kind = msg[0]
        if kind == "ops":
            apply_ops(self.app.table, msg[2])
            self.seq = msg[1]
            self.send(("ack", msg[1]))
        elif kind == "go":
            self.go.set()
        elif kind == "drain":
            self.stop(urgent=False)
        elif kind == "now":
            self.stop(urgent=True)
        elif kind == "activity?":
            self.send(("activity", self.moved_activity()))
        elif kind == "reload_tls":
            self.reload_tls(report=True)

    def on_closed(self, reason: str) -> None:
        if self.exiting:
            self.channel_done.set()
            return
        # The primary is gone (EOF): nobody feeds our table any more. Stop accepting now.
        log.warning("Worker %d: primary process gone (%s); exiting", self.index, reason)
        self.primary_gone.set()

    def send(self, msg: Any) -> None:
        if self.channel is not None and not self.half_closed:
            self.channel.send(msg)

    # --- signals and requests ------------------------------------------------------------
    def stop(self, urgent: bool) -> None:
        if urgent:
            self.stopping.again.set()
        self.stopping.first.set()

    def on_signal(self) -> None:
        self.signals += 1
        self.stop(urgent=self.signals > 1)

    def reload_tls(self, report: bool = False) -> None:
        try:
            ok = bool(self.app.tls.reload()) if self.app.tls is not None else True
            error = "" if ok else "reload failed (see the log)"
        except Exception as e:  # noqa: BLE001 - keep serving with the old certificates
            ok, error = False, str(e)
        if report:
            self.send(("tls", ok, error))

    def moved_activity(self) -> list[tuple[str, float]]:
        """Routes whose last_activity moved since the previous call (1 ms slack for clock steps)."""
        now = time.time()
        activity = moved_activity(self.app.table, self.reported_at - 0.001)
        self.reported_at = now
        return activity

    def report(self) -> None:
        activity = self.moved_activity()
        app = self.app
        idle = 0
        fn = getattr(app.upstreams, "idle_count", None)
        if fn is not None:
            try:
                idle = int(fn())
            except Exception:  # noqa: BLE001 - a report must not fail because of a pool
                idle = 0
        gauges: dict[str, Any] = {"connections": len(app.connections), "tunnels": len(app.tunnels),
                                  "idle_upstreams": idle, "pooled": pooled_counts(app)}
        metrics = copy.copy(app.metrics)  # shallow: the registry's own objects, pickled as they are
        lag = metrics.loop_lag
        metrics.loop_lag = None  # a gauge of this process, not a sum: sent as its figures
        if lag is not None and lag.loop is not None:
            gauges["loop_lag"] = {"last": lag.last, **lag.take()}
        self.send(("report", activity, metrics, gauges))

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            self.report()

    # --- the life of a worker ---------------------------------------------------------------
    async def run(self) -> int:
        from cfproxy.server import Listeners, _uncaught_exception, drain, listener_factory

        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_uncaught_exception)  # CHP's: log and keep serving
        # A signal from a terminal or from systemd reaches every process of the group, the
        # primary's "drain" follows: only a second *signal* (or "now") cuts the drain short.
        loop.add_signal_handler(signal.SIGTERM, self.on_signal)
        loop.add_signal_handler(signal.SIGINT, self.on_signal)
        loop.add_signal_handler(signal.SIGHUP, self.reload_tls)
        if self.config.metrics_enabled:
            self.app.metrics.loop_lag.start(loop)  # nodejs_eventloop_lag_*: the workers' loops
        self.channel = await open_channel(self.channel_sock, self.on_message, self.on_closed)
        self.send(("ready", self.seq))
        gone = asyncio.ensure_future(self.primary_gone.wait())
        go = asyncio.ensure_future(self.go.wait())
        stop = asyncio.ensure_future(self.stopping.first.wait())
        await asyncio.wait([gone, go, stop], return_when=asyncio.FIRST_COMPLETED)
        for fut in (gone, go, stop):
            fut.cancel()
        if self.primary_gone.is_set():
            return 1
        listeners = Listeners()
        if self.go.is_set() and not self.stopping.first.is_set():
            factory = listener_factory("proxy", self.app)
            for fd in self.listen_fds:
                sock = socket.socket(fileno=fd)
                if sock.family == socket.AF_UNIX:
                    server = await loop.create_unix_server(factory, sock=sock, ssl=self.app.tls.public)
                else:
                    server = await loop.create_server(factory, sock=sock, ssl=self.app.tls.public)
                listeners.servers.append(server)
            self.send(("serving",))
        reporter = asyncio.ensure_future(self._report_loop())
        gone = asyncio.ensure_future(self.primary_gone.wait())
        stop = asyncio.ensure_future(self.stopping.first.wait())
        await asyncio.wait([gone, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if self.primary_gone.is_set():
            listeners.close()  # no orphan keeps accepting
            for conn in list(self.app.connections):
                transport = getattr(conn, "transport", None)
                if transport is not None:
                    transport.abort()
            reporter.cancel()
            return 1
        await drain(self.app, listeners, self.stopping)
        reporter.cancel()
        gone.cancel()
        self.exiting = True
        self.report()  # the final figures: counters of an ended worker are kept by the primary
        await self._close_channel()
        return 0

    async def _close_channel(self) -> None:
        """Half-close, then wait for the primary to close its end (at most 1 s).

        Closing a Unix socket while frames the primary sent are still unread in it makes
        the primary's end fail with ECONNRESET, and what we wrote last (the final report)
        could be lost with it. So: EOF after the last frame, keep reading (and ignoring)
        until the primary, having read everything, closes."""
        channel = self.channel
        if channel is None or channel.transport is None or channel.closed:
            return
        transport = channel.transport
        if not transport.can_write_eof():  # pragma: no cover - Unix stream transports can
            transport.close()
            return
        transport.write_eof()  # after the buffered frames
        self.half_closed = True
        try:
            await asyncio.wait_for(self.channel_done.wait(), timeout=1.0)
        except asyncio.TimeoutError:
            transport.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    channel_fd, primary_pid = int(args[0]), int(args[1])
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != primary_pid:
        return 1  # the primary died before we could ask to die with it
    channel_sock = socket.socket(fileno=channel_fd)
    hello = recv_blocking(channel_sock)
    _, index, config, listen_fds = hello
    table_msg = recv_blocking(channel_sock)
    _, seq, routes = table_msg
    setup_logging(config.log_level)
    from cfproxy.server import new_event_loop

    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        worker = Worker(index, config, channel_sock, listen_fds, seq, routes)
        del routes, table_msg
        return loop.run_until_complete(worker.run())
    except KeyboardInterrupt:
        return 0
    finally:
        try:
            tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in tasks:
                t.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        finally:
            asyncio.set_event_loop(None)
            loop.close()
