"""The primary process of `--workers N`: binds the public sockets, starts and supervises the workers.

    await open_public_with_workers(app, listeners) -> the address text for the start-up line

The primary keeps what has one owner: the REST API, the metrics and redirect
listeners, the store, the pid file. It binds the public socket(s) itself, exactly as
a single process would (SO_REUSEADDR, never SO_REUSEPORT: a port somebody else holds
is an error and exit 1, quirk Q8, and no other process can join ours with its own
table), and hands the listening descriptors to N worker processes, which accept on
them (one shared accept queue; the kernel gives each connection to one worker).

Workers are spawned with subprocess (fork + immediate exec of a fresh interpreter,
`python -m cfproxy.workers`), never forked as copies of this process: by the time
workers start, the primary may run threads (the SQLite store's writer) and hold store
connections (Redis), and a forked copy would inherit locks held by threads that do
not exist in it and sockets it must not use. `pass_fds` hands over exactly the channel
and the listening sockets. Workers are spawned from the event-loop (main) thread: the
kernel's parent-death signal (worker.py) fires when the *thread* that started a child
ends, so spawning from a short-lived helper thread would kill workers with it.

Supervision (`Supervisor`):
- a worker is `starting` (gets the table and every later write, not waited for by the
  API), then `live` (sent "go": the API waits for its ack), then `serving`;
- a worker whose channel closes has ended: it is reaped (exit code or signal logged,
  with its index and pid), its last metrics and CPU time are kept, and a new one is
  started at once (after a back-off when workers keep dying young);
- a live worker that does not acknowledge a write within the feed's timeout is killed
  and replaced (feed.py); the API answer is not held longer;
- SIGHUP: each worker reloads its certificates; SIGTERM: each drains within
  --shutdown-timeout, stragglers are killed after a short margin.

The store sync (cfproxy/store/sync.py) is the only writer of the primary's table the
API waits for: `on_route_change` is subscribed to it, so an API write is answered once
the feed's barrier passed. Activity from the workers goes to `StoreSync.note_activity`
(max-merged into the table, saved to the store with the next batch).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import cfproxy
from cfproxy.log import log
from cfproxy.metrics import Metrics
from cfproxy.workers.channel import ChannelProtocol, encode, open_channel
from cfproxy.workers.feed import Feed, FeedTable, Subscriber
from cfproxy.workers.metrics import MergedView, merge_into

START_TIMEOUT = 60.0  # seconds for every worker to serve at start-up
YOUNG = 2.0  # a worker that ends sooner than this after its start died "young": back off
MAX_BACKOFF = 5.0
DRAIN_MARGIN = 2.0  # seconds beyond --shutdown-timeout before stragglers are killed


class WorkerStartError(Exception):
    """A worker could not be started at start-up; the message is the one error line."""


class Report:
    """A worker's last report: its metrics registry and gauges."""

    __slots__ = ("metrics", "gauges")

    def __init__(self, metrics: Any, gauges: dict) -> None:
        self.metrics = metrics
        self.gauges = gauges


class WorkerProcess:
    """The primary's handle on one worker process."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.channel: ChannelProtocol | None = None
        self.sub: Subscriber | None = None
        self.started_at = time.monotonic()
        self.serving = False
        self.ended = False
        self.report: Report | None = None
        self.activity_waiters: list[asyncio.Future] = []  # GETs waiting for its activity
        self.serving_future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.ended_future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.exit_text = ""

    def send(self, msg: Any) -> None:
        if self.channel is not None:
            self.channel.send(msg)


def describe_status(status: int) -> str:
    """'exited with code 3' / 'was killed by signal 9 (SIGKILL)' from a wait status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "?"
        return f"was killed by signal {sig} ({name})"
    if os.WIFEXITED(status):
        return f"exited with code {os.WEXITSTATUS(status)}"
    return f"ended (status {status})"


def _child_env() -> dict[str, str]:
    """The environment of a worker: ours. When this cfproxy was not imported from a
    site-packages directory (a source tree on a path set at run time), that tree goes first
    on PYTHONPATH so the worker runs the same code as the primary. A site-packages directory
    is never put there: ahead of the standard library it could shadow it (old backports)."""
    import site

    env = dict(os.environ)
    root = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(cfproxy.__file__))))
    site_dirs = {os.path.realpath(d) for d in (*site.getsitepackages(), site.getusersitepackages())}
    old = env.get("PYTHONPATH", "")
    if root in site_dirs or root in {os.path.realpath(p) for p in old.split(os.pathsep) if p}:
        return env
    env["PYTHONPATH"] = root if not old else root + os.pathsep + old
    return env


class Supervisor:
    def __init__(self, app: Any, sockets: list[socket.socket], count: int) -> None:
        self.app = app
        self.sockets = sockets
        self.count = count
        self.feed = Feed(app.table, self._ack_timed_out)
        self.workers: list[WorkerProcess] = []  # started and not yet reaped
        self.retired_metrics = Metrics()  # sums of the workers that ended
        self.retired_cpu = (0.0, 0.0)  # (user, system) seconds of the workers that ended
        self.restarts = 0
        self.started = False
        self.stopping = False
        self._deaths: dict[int, int] = {}  # index -> young deaths in a row
        self._tasks: set[asyncio.Task] = set()
        self._env = _child_env()

    # --- start ------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every worker and wait until all serve (WorkerStartError if one cannot)."""
        workers = [await self.spawn(i) for i in range(self.count)]
        deadline = time.monotonic() + START_TIMEOUT
        for w in workers:
            left = max(deadline - time.monotonic(), 0.0)
            done, _ = await asyncio.wait([w.serving_future, w.ended_future], timeout=left,
                                         return_when=asyncio.FIRST_COMPLETED)
            if w.serving_future in done and w.serving_future.result():
                continue
            if not done:
                raise WorkerStartError(
                    f"worker {w.index} (pid {w.pid}) did not start serving within {START_TIMEOUT:.0f} s (--workers)")
            await w.ended_future
            raise WorkerStartError(f"worker {w.index} (pid {w.pid}) {w.exit_text} before it served (--workers)")
        self.started = True

    async def spawn(self, index: int) -> WorkerProcess:
        w = WorkerProcess(index)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [s.fileno() for s in self.sockets]
        try:
            w.proc = subprocess.Popen(
                [sys.executable, "-m", "cfproxy.workers", str(child.fileno()), str(os.getpid())],
                pass_fds=[child.fileno(), *fds], env=self._env, stdin=subprocess.DEVNULL)
        except OSError:
            parent.close()
            raise
        finally:
            child.close()
        w.pid = w.proc.pid
        self.workers.append(w)
        w.channel = await open_channel(parent, lambda msg: self._on_message(w, msg),
                                       lambda reason: self._on_closed(w, reason))
        w.sub = Subscriber(w.channel.send_frame)
        w.send(("hello", index, self.app.config, fds))
        # the whole table as of feed.seq, then (subscribed) every later batch, in order
        w.channel.send_frame(encode(self.feed.snapshot()))
        self.feed.subscribe(w.sub)
        if self.started:  # (at start-up, start() bounds the wait and reports)
            loop = asyncio.get_running_loop()
            loop.call_later(START_TIMEOUT, self._check_started, w)
        return w

    def _check_started(self, w: WorkerProcess) -> None:
        """A replacement that never came to serve (hung while starting) is replaced in turn."""
        if not w.serving and not w.ended and not self.stopping and w in self.workers:
            self._replace(w, f"did not start serving within {START_TIMEOUT:.0f} s")

    # --- messages ----------------------------------------------------------------------
    def _on_message(self, w: WorkerProcess, msg: Any) -> None:
        kind = msg[0]
        if kind == "ack":
            w.sub.acknowledge(msg[1])
        elif kind == "report":
            self._apply_activity(msg[1])
            w.report = Report(msg[2], msg[3])
        elif kind == "activity":
            self._apply_activity(msg[1])
            waiters, w.activity_waiters = w.activity_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        elif kind == "ready":
            w.sub.acknowledge(msg[1])
            w.sub.live = True  # from now on the API waits for this worker's acks...
            w.send(("go",))  # ...and every write before this point is applied before it accepts
        elif kind == "serving":
            w.serving = True
            if not w.serving_future.done():
                w.serving_future.set_result(True)
            ms = (time.monotonic() - w.started_at) * 1000
            if self.started:
                log.info("Worker %d (pid %d) serving, %.0f ms after its start", w.index, w.pid, ms)
            else:
                log.debug("Worker %d (pid %d) serving, %.0f ms after its start", w.index, w.pid, ms)
        elif kind == "tls":
            if not msg[1]:
                log.error("Worker %d (pid %d): TLS reload failed, keeping the current certificates: %s",
                          w.index, w.pid, msg[2])

    async def gather_activity(self) -> None:
        """Ask every serving worker for the activity it has not reported yet, and apply it:
        GET /api/routes then shows last_activity as of now, not as of the last report.
        Waits at most the feed's timeout; a worker that did not answer by then is stuck and
        is replaced, as one that does not acknowledge a write."""
        loop = asyncio.get_running_loop()
        asked: list[tuple[WorkerProcess, asyncio.Future]] = []
        for w in self.workers:
            if w.serving and not w.ended and w.channel is not None and not w.channel.closed:
                fut = loop.create_future()
                w.activity_waiters.append(fut)
                asked.append((w, fut))
                w.send(("activity?",))
        if not asked:
            return
        await asyncio.wait([fut for _, fut in asked], timeout=self.feed.ack_timeout)
        for w, fut in asked:
            if not fut.done() and not w.ended and not self.stopping:
                self._replace(w, f"did not answer within {self.feed.ack_timeout:.1f} s")

    def _apply_activity(self, activity: list) -> None:
        """A worker's moved last_activity: the table keeps the maximum over the workers, and
        the store sync saves it with the next batch (StoreSync.note_activity)."""
        if activity:
            self.app.sync.note_activity(dict(activity))

    def on_route_change(self, change: Any) -> Any:
        """StoreSync listener: an API write is answered once every live worker applied it."""
        if change.origin == "api":
            return self.feed.applied_everywhere()
        return None  # a store's feed or activity: the ops travel anyway, nobody waits

    def _on_closed(self, w: WorkerProcess, reason: str) -> None:
        if w.sub is not None:
            self.feed.unsubscribe(w.sub)
        task = asyncio.ensure_future(self._reap(w))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _ack_timed_out(self, sub: Subscriber, seq: int) -> None:
        for w in self.workers:
            if w.sub is sub and not w.ended:
                self._replace(w, f"did not apply write {seq} within {self.feed.ack_timeout:.1f} s")

    def _replace(self, w: WorkerProcess, why: str) -> None:
        """Kill a stuck worker; its channel closing starts the replacement (see _reap)."""
        log.warning("Worker %d (pid %d) %s; replacing it", w.index, w.pid, why)
        if w.sub is not None:
            self.feed.unsubscribe(w.sub)
        w.serving = False
        self._kill(w)
        if w.channel is not None:
            w.channel.close()

    # --- ending and replacing ---------------------------------------------------------------
    def _kill(self, w: WorkerProcess) -> None:
        try:
            os.kill(w.pid, signal.SIGKILL)
        except (ProcessLookupError, TypeError):
            pass

    async def _wait_exit(self, w: WorkerProcess, patience: float = 2.0) -> tuple[int, Any]:
        """Reap the worker (killing it after `patience` s); (wait status, rusage)."""
        deadline = time.monotonic() + patience
        delay = 0.002
        killed = False
        while True:
            try:
                pid, status, rusage = os.wait4(w.pid, os.WNOHANG)
            except ChildProcessError:
                return 0, None
            if pid:
                return status, rusage
            if not killed and time.monotonic() > deadline:
                self._kill(w)
                killed = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def _reap(self, w: WorkerProcess) -> None:
        status, rusage = await self._wait_exit(w)
        w.ended = True
        w.serving = False
        if w.proc is not None:
            w.proc.returncode = status  # reaped here: Popen must not wait for it again
        if rusage is not None:
            u, s = self.retired_cpu
            self.retired_cpu = (u + rusage.ru_utime, s + rusage.ru_stime)
        if w.report is not None:
            merge_into(self.retired_metrics, w.report.metrics)
            w.report = None
        if w in self.workers:
            self.workers.remove(w)
        w.exit_text = describe_status(status)
        if not w.ended_future.done():
            w.ended_future.set_result(status)
        if not w.serving_future.done():
            w.serving_future.set_result(False)
        for fut in w.activity_waiters:
            if not fut.done():
                fut.set_result(None)
        w.activity_waiters = []
        if self.stopping:
            log.debug("Worker %d (pid %d) %s", w.index, w.pid, w.exit_text)
            return
        if not self.started:
            return  # start() reports it
        young = time.monotonic() - w.started_at < YOUNG
        deaths = self._deaths[w.index] = self._deaths.get(w.index, 0) + 1 if young else 0
        delay = min(0.1 * 2 ** (deaths - 1), MAX_BACKOFF) if deaths else 0.0
        log.warning("Worker %d (pid %d) %s; starting a new one%s", w.index, w.pid, w.exit_text,
                    f" in {delay:.1f} s" if delay else "")
        while True:
            if delay:
                await asyncio.sleep(delay)
            if self.stopping:
                return
            try:
                await self.spawn(w.index)
            except Exception as e:  # noqa: BLE001 - e.g. out of processes: the others keep serving
                delay = MAX_BACKOFF
                log.error("Worker %d could not be started (%s); trying again in %.0f s",
                          w.index, e, delay)
                continue
            self.restarts += 1
            return

    def current_workers(self) -> list[WorkerProcess]:
        """The newest handle of every worker index (for the up gauge)."""
        newest: dict[int, WorkerProcess] = {}
        for w in self.workers:
            newest[w.index] = w
        return list(newest.values())

    # --- signals -------------------------------------------------------------------------
    def reload_tls(self) -> None:
        for w in self.workers:
            w.send(("reload_tls",))

    def start_drain(self) -> None:
        """Every worker stops accepting and finishes what is in flight (no restarts from now)."""
        self.stopping = True
        self.close_sockets()
        for w in list(self.workers):
            w.send(("drain",))

    async def finish_drain(self, stopping: Any, grace_ms: int) -> None:
        """Wait for the workers to end (grace_ms + a margin for their last report); then kill."""
        deadline = time.monotonic() + grace_ms / 1000.0 + DRAIN_MARGIN
        told_now = False
        while self.workers and time.monotonic() < deadline:
            if not told_now and stopping.again.is_set():
                told_now = True
                for w in list(self.workers):
                    w.send(("now",))
            await asyncio.sleep(0.02)
        if self.workers:
            log.warning("Shutdown: killing %d worker(s) still draining", len(self.workers))
            for w in list(self.workers):
                self._kill(w)
            end = time.monotonic() + 2.0
            while self.workers and time.monotonic() < end:
                await asyncio.sleep(0.02)

    def close_sockets(self) -> None:
        for s in self.sockets:
            s.close()

    def terminate(self) -> None:
        """Last resort at exit: no worker outlives the primary's serve()."""
        self.stopping = True
        for w in list(self.workers):
            self._kill(w)
        self.close_sockets()


# --- wiring into server.py ------------------------------------------------------------------


def _bind_unix(path: str, flag: str) -> socket.socket:
    from cfproxy.server import LISTEN_BACKLOG, ListenError, prepare_unix_path

    prepare_unix_path(path, flag)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(path)
        s.listen(LISTEN_BACKLOG)
    except OSError as e:
        s.close()
        raise ListenError(f"cannot listen on {path} ({flag}): {e.strerror or e}") from None
    return s


async def open_public_with_workers(app: Any, listeners: Any) -> str:
    """Bind the public socket(s), start `config.workers` workers on them, wait until all serve.

    Sets `app.workers` (the Supervisor: the API's barriers, api.py) and `app.metrics_view`
    (what /metrics renders). Returns the address for the start-up line.
    Raises ListenError (one line, exit 1) when a socket cannot be bound or a worker cannot
    start.
    """
    from cfproxy.server import ListenError, addr_text, bind_tcp

    config = app.config
    if not isinstance(app.table, FeedTable):
        raise TypeError("--workers needs the primary's table to be a FeedTable")
    if config.socket:
        sockets = [_bind_unix(config.socket, "--socket")]
        listeners.unix_paths.append(config.socket)
        addr = config.socket
    else:
        sockets = bind_tcp(config.ip, config.port, "--ip/--port")
        addr = addr_text(config.port, config.ip)
    for s in sockets:
        s.set_inheritable(False)  # pass_fds makes them inheritable in the child only
    supervisor = Supervisor(app, sockets, config.workers)
    app.workers = supervisor
    app.sync.subscribe(supervisor.on_route_change)
    app.metrics_view = MergedView(app, supervisor)
    try:
        await supervisor.start()
    except WorkerStartError as e:
        raise ListenError(str(e)) from None
    log.info("Started %d workers (pids %s)", config.workers,
             ", ".join(str(w.pid) for w in supervisor.workers))
    return addr
