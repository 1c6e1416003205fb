"""Metrics over all processes: merging the workers' registries, and what /metrics shows.

    merge_into(total, part)          add one Metrics registry into another, attribute by attribute
    MergedView(app, supervisor)      what the primary's metrics listener renders

Merging is generic over `cfproxy.metrics.Metrics`: every attribute merges by its type,
so a metric added there merges here without a change:
- int / float (counters) add up;
- dicts of numbers (labelled counters: `requests_proxy{status}`) add up per key;
- `Summary` (t-digest quantile summaries) merge their digests (`Summary.merge`);
- lists (histogram bucket rows, nested) add up element by element.

Counters never go down when a worker is replaced: the supervisor folds the last
report of every worker that ended into `retired`, and the view adds it in.

`process_*` figures are sums over the primary and its live workers (memory, open
fds) and, for the CPU counters, over every worker that ever ran (an ended worker's
CPU time comes from `wait4`). `process_start_time_seconds` and `process_max_fds`
are the primary's. Gauges of open connections, tunnels and idle upstream
connections (in total and by target) are sums over the live workers' last reports
(at most ~1 s old). `nodejs_eventloop_lag_*` shows the worst process: the maximum
over the primary and the workers (a worker's figures cover its last report's second).
Per worker: `cfproxy_worker_up{worker="i"}` (1 while it serves),
`cfproxy_worker_requests_total{worker="i"}` (how the kernel spread the load), and
`cfproxy_worker_restarts_total`.
"""

from __future__ import annotations

import os
import resource
from typing import Any

from cfproxy.metrics import Metrics, Summary


def merge_into(total: Any, part: Any) -> None:
    """Add every attribute of registry `part` into `total` (same class), by type."""
    for name, value in vars(part).items():
        if not hasattr(total, name):
            setattr(total, name, _copy(value))
            continue
        merged = _merged(getattr(total, name), value)
        if merged is not None:
            setattr(total, name, merged)


def _copy(value: Any) -> Any:
    if isinstance(value, Summary):
        s = Summary()
        s.merge(value)
        return s
    if isinstance(value, dict):
        return value.copy()
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _merged(current: Any, value: Any) -> Any:
    """The merged value (or None when `current` was updated in place / cannot merge)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and isinstance(current, (int, float)):
        return current + value
    if isinstance(value, Summary) and isinstance(current, Summary):
        current.merge(value)
        return None
    if isinstance(value, dict) and isinstance(current, dict):
        for k, v in value.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                current[k] = current.get(k, 0) + v
        return None
    if isinstance(value, list) and isinstance(current, list) and len(value) == len(current):
        for i, v in enumerate(value):
            m = _merged(current[i], v)
            if m is not None:
                current[i] = m
        return None
    return None


def merged_metrics(parts: list[Any]) -> Metrics:
    """A fresh registry holding the sum of `parts`."""
    total = Metrics()
    for part in parts:
        if part is not None:
            merge_into(total, part)
    return total


# --- process figures --------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a live process from /proc/<pid>/stat; zeros if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) / _TICK, int(fields[12]) / _TICK  # utime, stime (fields 14, 15)
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0


def proc_memory(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmSize:", "VmData:")):
                    key, rest = line.split(":", 1)
                    out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


def proc_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class _Count:
    """Something with a len(), for the render code that counts sets."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class _Upstreams:
    """The workers' upstream pools as the render code reads them: a total and, per pool
    key, something with a len() (the idle connections of that target)."""

    __slots__ = ("n", "idle")

    def __init__(self, n: int, idle: dict) -> None:
        self.n = n
        self.idle = idle

    def idle_count(self) -> int:
        return self.n


_LAG_KEYS = ("min", "max", "mean", "stddev", "p50", "p90", "p99")


class _WorstLag:
    """nodejs_eventloop_lag_*: the worst process. `last` and every statistic are the maximum
    over the primary (since the previous scrape) and the workers (their last report's second)."""

    __slots__ = ("own", "reported")

    def __init__(self, own: Any, reported: list[dict]) -> None:
        self.own = own
        self.reported = reported

    @property
    def last(self) -> float:
        return max([self.own.last, *(r.get("last", 0.0) for r in self.reported)])

    def take(self) -> dict[str, float]:
        stats = self.own.take()
        for r in self.reported:
            for key in _LAG_KEYS:
                stats[key] = max(stats[key], r.get(key, 0.0))
        return stats


class MergedView:
    """The primary's app as the metrics listener sees it with --workers N: merged figures.

    Attributes not defined here (config, table, ...) are the primary app's.
    """

    def __init__(self, app: Any, supervisor: Any) -> None:
        self._app = app
        self._supervisor = supervisor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._app, name)

    def _reports(self) -> list[Any]:
        return [w.report for w in self._supervisor.workers if w.report is not None]

    @property
    def metrics(self) -> Metrics:
        """One registry over every process (built per scrape: render reads it once)."""
        own = self._app.metrics
        reports = self._reports()
        merged = merged_metrics([own, self._supervisor.retired_metrics, *(r.metrics for r in reports)])
        merged.loop_lag = _WorstLag(own.loop_lag, [r.gauges["loop_lag"] for r in reports
                                                   if "loop_lag" in r.gauges])
        return merged

    def _gauge_sum(self, name: str) -> int:
        return sum(r.gauges.get(name, 0) for r in self._reports())

    @property
    def connections(self) -> _Count:
        return _Count(len(self._app.connections) + self._gauge_sum("connections"))

    @property
    def tunnels(self) -> _Count:
        return _Count(len(self._app.tunnels) + self._gauge_sum("tunnels"))

    @property
    def upstreams(self) -> _Upstreams:
        pooled: dict = {}
        for r in self._reports():
            for key, n in r.gauges.get("pooled", {}).items():
                pooled[key] = pooled.get(key, 0) + n
        return _Upstreams(self._gauge_sum("idle_upstreams"),
                          {key: _Count(n) for key, n in pooled.items()})

    def process_families(self) -> list[str]:
        from cfproxy.metrics_server import _counter, _gauge, _process_families

        ru = resource.getrusage(resource.RUSAGE_SELF)
        user, system = ru.ru_utime, ru.ru_stime
        retired_user, retired_system = self._supervisor.retired_cpu
        user += retired_user
        system += retired_system
        memory = proc_memory(os.getpid())
        fds = max(proc_fds(os.getpid()) - 1, 0)  # minus the one listdir held
        for w in self._supervisor.workers:
            if w.pid is None or w.ended:
                continue
            u, s = proc_cpu(w.pid)
            user += u
            system += s
            for key, v in proc_memory(w.pid).items():
                memory[key] = memory.get(key, 0) + v
            fds += proc_fds(w.pid)
        user, system = round(user, 6), round(system, 6)
        summed = {
            "process_cpu_user_seconds_total": _counter(
                "process_cpu_user_seconds_total", "Total user CPU time spent in seconds.", user),
            "process_cpu_system_seconds_total": _counter(
                "process_cpu_system_seconds_total", "Total system CPU time spent in seconds.", system),
            "process_cpu_seconds_total": _counter(
                "process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                round(user + system, 6)),
            "process_resident_memory_bytes": _gauge(
                "process_resident_memory_bytes", "Resident memory size in bytes.", memory.get("VmRSS")),
            "process_virtual_memory_bytes": _gauge(
                "process_virtual_memory_bytes", "Virtual memory size in bytes.", memory.get("VmSize")),
            "process_heap_bytes": _gauge(
                "process_heap_bytes", "Process heap size in bytes.", memory.get("VmData")),
            "process_open_fds": _gauge("process_open_fds", "Number of open file descriptors.", fds),
        }
        out = []
        for family in _process_families():  # the primary's, in prom-client's order
            name = family.split(" ", 3)[2]  # "# HELP <name> ..."
            out.append(summed.get(name, family))
        return out

    def extra_families(self) -> list[str]:
        from cfproxy.metrics_server import _counter, _family

        up = [f'cfproxy_worker_up{{worker="{w.index}"}} {1 if w.serving and not w.ended else 0}\n'
              for w in sorted(self._supervisor.current_workers(), key=lambda w: w.index)]
        served = []
        for w in sorted(self._supervisor.current_workers(), key=lambda w: w.index):
            if w.report is not None:
                m = w.report.metrics
                n = getattr(m, "requests_web", 0) + getattr(m, "requests_ws", 0)
                served.append(f'cfproxy_worker_requests_total{{worker="{w.index}"}} {n}\n')
        return [
            _family("cfproxy_worker_up", "1 while the worker process accepts connections, by worker.",
                    "gauge", up),
            _counter("cfproxy_worker_restarts_total",
                     "Worker processes started to replace one that ended.",
                     self._supervisor.restarts),
            _family("cfproxy_worker_requests_total",
                    "Web and WebSocket requests the current process of each worker answered "
                    "(starts from 0 when the worker is replaced; as of its last report).",
                    "counter", served),
        ]
