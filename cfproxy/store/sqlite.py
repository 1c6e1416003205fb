"""SQLiteStore: routes that survive a restart, in one local SQLite file.

    --storage-backend sqlite:////var/lib/cfproxy/routes.db     (4 slashes: absolute path)
    --storage-backend sqlite:///routes.db                      (3 slashes: relative to the cwd)
    --storage-backend 'sqlite:////var/lib/cfproxy/routes.db?synchronous=full'

Owns the file's layout, its lock and the one thread that talks to it. The
proxy routes from the in-memory table (StoreSync loads it from here before any
listener accepts); this store only makes the API's writes and the routes'
last_activity durable.

Layout: one table, `routes(key TEXT PRIMARY KEY, prefix, data, last_activity)`
in rowid order (an upsert keeps the row and so the route's position; delete +
add puts it last: CHP's order, reference 2.7). `key` is the table's match key
(the host part lower-cased under --host-routing), `data` the posted JSON,
`last_activity` epoch seconds. `PRAGMA user_version` stamps the schema
version (SCHEMA_VERSION); a file stamped newer than this cfproxy knows is
refused, so a later version can migrate older files in place.

Threading: every sqlite3 call runs on one writer thread; the event loop only
queues jobs and gets futures back (the hot path never waits on the disk).
The thread takes every job queued at that moment and runs them in one
transaction with one commit (group commit: 16 concurrent API writes share a
commit); when that transaction fails it retries the jobs one by one, so one
bad write fails alone.

Durability: a write is acknowledged after its COMMIT returned. Journal mode
is WAL. With the default `synchronous=normal` a commit is in the WAL file
(the OS has it) but not fsynced: a process crash (SIGKILL, OOM kill) loses
nothing acknowledged, a power loss or kernel crash may lose the writes of
the last moments before it (never the file's consistency). `synchronous=full`
fsyncs the WAL at every commit (group commit shares the fsync): a power
loss loses nothing acknowledged, at the cost of one fsync per commit.

Exclusivity: `<file>.lock` beside the database is held with flock(LOCK_EX)
while the store is open (released by the kernel when the process dies, even
by SIGKILL); a second cfproxy on the same file refuses to start, naming the
holder's pid. `close()` commits what is queued, closes the database (SQLite
checkpoints the WAL) and releases the lock.

Options in the URL query: `synchronous` (normal | full), `flush_interval`
(seconds between last_activity saves, default 1), `max_page_count` (an upper
bound on the file's pages: writes beyond it fail with "database or disk is
full"; useful to cap the file, and how the tests fill a "disk").
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import orjson

from cfproxy.log import log
from cfproxy.routing.table import RouteTable
from cfproxy.store.base import RouteStore, StoredRoute, StoreUnavailable, positive_option

SCHEMA_VERSION = 1
GROUP_MAX = 512  # jobs per transaction at most
_SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}
_OPTIONS = ("synchronous", "flush_interval", "max_page_count")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS routes (
    key TEXT PRIMARY KEY,
    prefix TEXT NOT NULL,
    data TEXT NOT NULL,
    last_activity REAL NOT NULL
)
"""
_PUT = ("INSERT INTO routes (key, prefix, data, last_activity) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET prefix = excluded.prefix, data = excluded.data, "
        "last_activity = excluded.last_activity")
_DELETE = "DELETE FROM routes WHERE key = ?"
# One statement for the whole batch ({key: ts} as a JSON object): the writer thread holds the
# GIL for one call instead of one per route (executemany of 100,000 rows released and took
# the GIL 100,000 times, stalling the event loop; proxied req/s over 100k busy routes 0.88x
# of the memory store's).
_ACTIVITY = ("UPDATE routes SET last_activity = j.value FROM json_each(?1) AS j "
             "WHERE routes.key = j.key AND routes.last_activity < j.value")
_ACTIVITY_ROW = "UPDATE routes SET last_activity = ?1 WHERE key = ?2 AND last_activity < ?1"
_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)  # UPDATE ... FROM (2020); else per row
_LOAD = "SELECT prefix, data, last_activity FROM routes ORDER BY rowid"


def parse_sqlite_url(url: str) -> tuple[str, dict[str, str]]:
    """(database path, options) of `sqlite:///relative` or `sqlite:////absolute`."""
    base, _, query = url.partition("?")
    if not base.startswith("sqlite:///"):
        raise ValueError("expected sqlite:///relative/path.db or sqlite:////absolute/path.db")
    path = base[len("sqlite:///"):]
    if not path or path.endswith("/"):
        raise ValueError("the URL names no database file")
    options: dict[str, str] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        if k not in _OPTIONS:
            raise ValueError(f"unknown option {k!r} (known: {', '.join(_OPTIONS)})")
        options[k] = v
    return path, options


class SQLiteStore(RouteStore):
    """Routes in a local SQLite file (see the module docstring)."""

    def __init__(self, config: Any, table: RouteTable | None = None) -> None:
        url = config if isinstance(config, str) else config.storage_backend
        path, options = parse_sqlite_url(url)
        self.path = os.path.abspath(path)
        sync = options.get("synchronous", "normal").lower()
        if sync not in _SYNCHRONOUS:
            raise ValueError(f"synchronous={sync!r}: expected normal or full")
        self.synchronous = _SYNCHRONOUS[sync]
        self.flush_interval = positive_option(options, "flush_interval", 1.0)
        max_pages = options.get("max_page_count")
        self.max_page_count = int(positive_option(options, "max_page_count", 1)) if max_pages else None
        host_routing = bool(getattr(config, "host_routing", False))
        self._table = table if table is not None else RouteTable(host_routing=host_routing)
        self._writer: _Writer | None = None

    def _key(self, prefix: str) -> str:
        return self._table.match_key(prefix)

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Lock and open the file (on the writer thread); StoreUnavailable says why not."""
        writer = _Writer(self, asyncio.get_running_loop())
        self._writer = writer
        writer.start()
        try:
            await writer.submit(writer.open)
        except BaseException:
            await writer.stop()
            raise

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.stop()

    # --- the RouteStore interface ---------------------------------------------------------------
    async def load_routes(self) -> list[StoredRoute]:
        return await self._run(_load)

    async def put_route(self, prefix: str, data: dict, last_activity: float) -> None:
        # a put is queued as its row (a tuple): the writer runs a group's puts as one executemany
        await self._run((self._key(prefix), prefix, orjson.dumps(data).decode(), last_activity))

    async def delete_route(self, prefix: str) -> bool:
        key = self._key(prefix)
        return await self._run(lambda conn: conn.execute(_DELETE, (key,)).rowcount > 0)

    async def save_activity(self, batch: Mapping[str, float]) -> None:
        key = self._key
        if _UPDATE_FROM:
            doc = orjson.dumps({key(prefix): ts for prefix, ts in batch.items()}).decode()
            await self._run(lambda conn: conn.execute(_ACTIVITY, (doc,)) and None)
        else:
            rows = [(ts, key(prefix)) for prefix, ts in batch.items()]
            await self._run(lambda conn: conn.executemany(_ACTIVITY_ROW, rows) and None)

    async def _run(self, job: Callable[[sqlite3.Connection], Any] | tuple) -> Any:
        writer = self._writer
        if writer is None:
            raise StoreUnavailable(f"SQLite store {self.path} is not open")
        return await writer.submit(job)

    def describe(self) -> str:
        return f"SQLite store {self.path}"


def _load(conn: sqlite3.Connection) -> list[StoredRoute]:
    routes = []
    loads = orjson.loads
    for prefix, data, la in conn.execute(_LOAD):
        routes.append(StoredRoute(prefix, loads(data), la))
    return routes


class _Stop:
    """The job that ends the writer thread (after every job queued before it)."""


class _Writer(threading.Thread):
    """The one thread that owns the sqlite3 connection; jobs come in through a queue."""

    def __init__(self, store: SQLiteStore, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name="cfproxy-sqlite", daemon=True)
        self.store = store
        self.loop = loop
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()  # lists of (job, future)
        self.pending: list = []  # submitted in this loop iteration, not yet handed over
        self.conn: sqlite3.Connection | None = None
        self.lock_fd: int | None = None
        self.stopped = asyncio.Event()  # set on the loop when the thread is done
        self.failed: StoreUnavailable | None = None  # why the thread died, if it did

    # --- the loop's side --------------------------------------------------------------------
    def submit(self, job: Callable[[sqlite3.Connection], Any] | tuple) -> asyncio.Future:
        """Queue a job; jobs submitted in one loop iteration reach the thread together (one
        wake-up, one transaction: waking the thread per job cost the loop ~35 us in GIL
        hand-overs, more than the job)."""
        if self.stopped.is_set():
            raise self.failed or StoreUnavailable(f"{self.store.describe()} is closed")
        future = self.loop.create_future()
        self.pending.append((job, future))
        if len(self.pending) == 1:
            self.loop.call_soon(self._hand_over)
        return future

    def _hand_over(self) -> None:
        pending, self.pending = self.pending, []
        self.jobs.put(pending)

    async def stop(self) -> None:
        if self.is_alive():
            self._hand_over()
            self.jobs.put([(_Stop, None)])
            await self.stopped.wait()

    # --- the thread -------------------------------------------------------------------------
    def run(self) -> None:
        batch: list = []
        try:
            while True:
                batch = self.jobs.get()
                with contextlib.suppress(queue.Empty):
                    while len(batch) < GROUP_MAX:
                        batch += self.jobs.get_nowait()
                stop = any(job is _Stop for job, _ in batch)
                batch = [item for item in batch if item[0] is not _Stop]
                if batch:
                    self._run_batch(batch)
                    batch = []
                if stop:
                    break
        except BaseException as e:  # noqa: BLE001 - a bug must not leave API writes waiting forever
            self.failed = StoreUnavailable(f"{self.store.describe()}: writer thread failed: {_reason(e)}")
            log.error("%s", self.failed, exc_info=True)
        finally:
            self._close()
            with contextlib.suppress(RuntimeError):  # the loop may be closed already
                self.loop.call_soon_threadsafe(self._stopped, batch)

    def _stopped(self, unanswered: list) -> None:
        """On the loop: the thread is gone; fail whatever it did not answer."""
        error = self.failed or StoreUnavailable(f"{self.store.describe()} is closed")
        unanswered = unanswered + self.pending
        self.pending = []
        with contextlib.suppress(queue.Empty):
            while True:
                unanswered += self.jobs.get_nowait()
        for _job, future in unanswered:
            if future is not None and not future.done():
                future.set_exception(error)
        self.stopped.set()

    def _run_batch(self, batch: list) -> None:
        conn = self.conn
        if conn is None or len(batch) == 1:
            results = [self._run_one(job) for job, _ in batch]
        else:
            try:
                conn.execute("BEGIN IMMEDIATE")
                results = _run_group(conn, [job for job, _ in batch])
                conn.commit()
            except Exception:  # noqa: BLE001 - retried one by one: one bad write fails alone
                self._rollback()
                results = [self._run_one(job) for job, _ in batch]
        self.loop.call_soon_threadsafe(_resolve, [f for _, f in batch], results)

    def _run_one(self, job: Callable) -> tuple[Any, BaseException | None]:
        conn = self.conn
        try:
            if conn is None or job == self.open:
                return job(conn), None
            if type(job) is tuple:  # one put: one statement, its own (autocommit) transaction
                conn.execute(_PUT, job)
                return None, None
            conn.execute("BEGIN IMMEDIATE")
            result = job(conn)
            conn.commit()
            return result, None
        except StoreUnavailable as e:
            self._rollback()
            return None, e
        except Exception as e:  # noqa: BLE001 - handed to the caller as a clear error
            self._rollback()
            return None, StoreUnavailable(f"{self.store.describe()}: {_reason(e)}")

    def _rollback(self) -> None:
        if self.conn is not None and self.conn.in_transaction:
            with contextlib.suppress(Exception):
                self.conn.rollback()

    # --- open and close (on the thread) -------------------------------------------------------
    def open(self, _conn: Any = None) -> None:
        store = self.store
        path = store.path
        where = store.describe()
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            raise StoreUnavailable(f"{where}: directory {directory} does not exist")
        self.lock_fd = _lock(path + ".lock", where)
        existed = os.path.exists(path)
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as e:
            raise StoreUnavailable(f"{where}: cannot open: {_reason(e)}") from None
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreUnavailable(f"{where}: cannot use WAL journal mode (got {mode})")
            conn.execute(f"PRAGMA synchronous={store.synchronous}")
            if store.max_page_count:
                conn.execute(f"PRAGMA max_page_count={store.max_page_count}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"{where}: schema version {version} was written by a newer cfproxy "
                    f"(this one knows {SCHEMA_VERSION})")
            if version < SCHEMA_VERSION:
                if existed and version == 0 and _has_tables(conn):
                    raise StoreUnavailable(f"{where}: not a cfproxy route database")
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(_SCHEMA)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.commit()
            conn.execute("SELECT count(*) FROM routes").fetchone()
        except StoreUnavailable:
            conn.close()
            raise
        except sqlite3.Error as e:
            conn.close()
            raise StoreUnavailable(f"{where}: cannot read: {_reason(e)}") from None
        self.conn = conn

    def _close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None
        if self.lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.lock_fd)  # releases the flock
            self.lock_fd = None


def _run_group(conn: sqlite3.Connection, jobs: list) -> list[tuple[Any, None]]:
    """Run a group's jobs inside the caller's transaction; consecutive puts (rows) go in one
    executemany (fewer GIL round trips for the writer thread while the event loop is busy)."""
    results: list[tuple[Any, None]] = []
    i, n = 0, len(jobs)
    while i < n:
        job = jobs[i]
        if type(job) is tuple:
            j = i + 1
            while j < n and type(jobs[j]) is tuple:
                j += 1
            conn.executemany(_PUT, jobs[i:j])
            results += [(None, None)] * (j - i)
            i = j
        else:
            results.append((job(conn), None))
            i += 1
    return results


def _lock(path: str, where: str) -> int:
    """Open and flock `path` (LOCK_EX, non-blocking); write our pid into it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise StoreUnavailable(f"{where}: cannot create the lock file {path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = ""
        with contextlib.suppress(OSError, ValueError):
            holder = os.pread(fd, 32, 0).decode().strip()
        os.close(fd)
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise StoreUnavailable(f"{where}: in use by another cfproxy{who}") from None
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _has_tables(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0


def _resolve(futures: list[asyncio.Future], results: list) -> None:
    for future, (result, error) in zip(futures, results, strict=True):
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _reason(e: BaseException) -> str:
    text = str(e)
    return text if text else type(e).__name__
