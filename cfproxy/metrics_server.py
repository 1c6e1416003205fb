"""The metrics listener: `/metrics` in the Prometheus text format, with CHP's exact names.

    make_metrics_protocol_factory(app)   -> protocol factory for create_server / create_unix_server
    render_metrics(app) -> bytes         the exposition text (exactly what a scrape returns)

Behaviour (reference 6): raw request target exactly `/metrics` (no query, no trailing
slash), any method -> 200 `text/plain; version=0.0.4; charset=utf-8`; anything else ->
404 `Not Found` (no Content-Type, as CHP). Plain HTTP, no auth, keep-alive.

Why our own exporter: `prometheus_client` appends `_total` to counters and adds
`_created` series, and its Summary has no quantiles; CHP's dashboards key on prom-client's
names (`requests_proxy{status="200"}`, `find_target_for_req{quantile="0.99"}`). So the
text is written here, byte-compatible with prom-client's output for CHP's families:
`# HELP`/`# TYPE` per family, families separated by one blank line, label-less counters
print 0 from the start, labelled ones only HELP/TYPE until a label value exists, numbers
in JavaScript's shortest form (`0.00001`, not `1e-05`).

Order: prom-client's default `process_*` families (from /proc), its
`nodejs_eventloop_lag_*` gauges (cfproxy's event loop, see metrics.LoopLag; the other
`nodejs_*` families have no Python meaning and are absent), then CHP's families in CHP's
registration order, then cfproxy's own (`cfproxy_*`, Prometheus-style names with `_total`
on counters).

The connection handling (h11, keep-alive, timeouts, backpressure) is
cfproxy/http/small_server.py, shared with the redirect listener.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

import h11

from cfproxy.http.small_server import Reply, SmallHTTPProtocol
from cfproxy.metrics import LATENCY_BUCKETS, STATUS_CLASSES, SUMMARY_QUANTILES, Summary

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


# --- number and label formatting ----------------------------------------------------


def format_value(v: float) -> str:
    """A sample value as JavaScript's Number#toString writes it (as prom-client does)."""
    if isinstance(v, int):
        return str(v)
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    if v.is_integer() and abs(v) < 1e21:
        return str(int(v))
    r = repr(v)
    if "e" in r and 1e-7 <= abs(v) < 1e21:  # JS uses exponents only outside this range
        r = format(Decimal(r), "f")
    return r


def _label_value(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _family(name: str, help_text: str, kind: str, samples: Iterable[str]) -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n" + "".join(samples)


def _counter(name: str, help_text: str, value: float) -> str:
    return _family(name, help_text, "counter", [f"{name} {format_value(value)}\n"])


def _gauge(name: str, help_text: str, value: float | None) -> str:
    samples = [] if value is None else [f"{name} {format_value(value)}\n"]
    return _family(name, help_text, "gauge", samples)


def _labelled(name: str, help_text: str, kind: str, label: str, values: dict) -> str:
    samples = [f'{name}{{{label}="{_label_value(k)}"}} {format_value(v)}\n'
               for k, v in list(values.items())]
    return _family(name, help_text, kind, samples)


def _labelled_counter(name: str, help_text: str, label: str, values: dict) -> str:
    return _labelled(name, help_text, "counter", label, values)


def _summary(name: str, help_text: str, summary: Summary) -> str:
    samples = [f'{name}{{quantile="{format_value(q)}"}} {format_value(summary.quantile(q))}\n'
               for q in SUMMARY_QUANTILES]
    samples.append(f"{name}_sum {format_value(summary.sum)}\n")
    samples.append(f"{name}_count {summary.count}\n")
    return _family(name, help_text, "summary", samples)


def _histogram_by_class(name: str, help_text: str, counts: list[list[int]],
                        sums: list[float]) -> str:
    samples: list[str] = []
    for idx, cls in enumerate(STATUS_CLASSES):
        row = counts[idx]
        total = sum(row)
        if not total:
            continue
        cum = 0
        for bound, n in zip(LATENCY_BUCKETS, row, strict=False):
            cum += n
            samples.append(f'{name}_bucket{{class="{cls}",le="{format_value(bound)}"}} {cum}\n')
        samples.append(f'{name}_bucket{{class="{cls}",le="+Inf"}} {total}\n')
        samples.append(f'{name}_sum{{class="{cls}"}} {format_value(sums[idx])}\n')
        samples.append(f'{name}_count{{class="{cls}"}} {total}\n')
    return _family(name, help_text, "histogram", samples)


# --- process_* (prom-client's default metrics, Linux /proc) ---------------------------


def _proc_status() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmSize:", "VmData:")):
                    key, rest = line.split(":", 1)
                    out[key] = int(rest.split()[0]) * 1024  # kB
    except OSError:
        pass
    return out


def _start_time() -> float | None:
    try:
        with open("/proc/self/stat") as f:
            stat = f.read()
        starttime = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after comm
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return btime + starttime / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


_START_TIME = _start_time()
if _START_TIME is None:  # no /proc: close enough, taken at import
    _START_TIME = time.time()


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # minus the one listdir held (prom-client)
    except OSError:
        return None


def _process_families() -> list[str]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    user, system = round(ru.ru_utime, 6), round(ru.ru_stime, 6)
    status = _proc_status()
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fams = [
        _counter("process_cpu_user_seconds_total", "Total user CPU time spent in seconds.", user),
        _counter("process_cpu_system_seconds_total", "Total system CPU time spent in seconds.",
                 system),
        _counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                 round(user + system, 6)),
        _gauge("process_start_time_seconds",
               "Start time of the process since unix epoch in seconds.", round(_START_TIME)),
    ]
    if status:
        fams += [
            _gauge("process_resident_memory_bytes", "Resident memory size in bytes.",
                   status.get("VmRSS")),
            _gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                   status.get("VmSize")),
            _gauge("process_heap_bytes", "Process heap size in bytes.", status.get("VmData")),
        ]
    fds = _open_fds()
    if fds is not None:
        fams.append(_gauge("process_open_fds", "Number of open file descriptors.", fds))
    if soft != resource.RLIM_INFINITY:
        fams.append(_gauge("process_max_fds", "Maximum number of open file descriptors.", soft))
    return fams


# --- nodejs_eventloop_lag_* (prom-client's names, cfproxy's loop) ----------------------

_LAG_FAMILIES = (  # (suffix, key of LoopLag.take(), prom-client's HELP)
    ("min", "min", "The minimum recorded event loop delay."),
    ("max", "max", "The maximum recorded event loop delay."),
    ("mean", "mean", "The mean of the recorded event loop delays."),
    ("stddev", "stddev", "The standard deviation of the recorded event loop delays."),
    ("p50", "p50", "The 50th percentile of the recorded event loop delays."),
    ("p90", "p90", "The 90th percentile of the recorded event loop delays."),
    ("p99", "p99", "The 99th percentile of the recorded event loop delays."),
)


def _loop_lag_families(lag: Any) -> list[str]:
    """prom-client's eventLoopLag families, from the samples since the previous scrape."""
    stats = lag.take()
    fams = [_gauge("nodejs_eventloop_lag_seconds", "Lag of event loop in seconds.", lag.last)]
    fams += [_gauge(f"nodejs_eventloop_lag_{suffix}_seconds", help_text, stats[key])
             for suffix, key, help_text in _LAG_FAMILIES]
    return fams


# --- upstream pools by target ---------------------------------------------------------

POOL_TARGETS_SHOWN = 10  # busiest targets with a series of their own; the rest are "other"


def _pool_label(key: Any) -> str:
    """A pool key (Target.pool_key: scheme, host, port, unix path) as a target label."""
    try:
        scheme, host, port, unix_path = key
    except (TypeError, ValueError):
        return str(key)
    if unix_path is not None:
        return f"unix:{unix_path}"
    host = f"[{host}]" if ":" in str(host) else host
    return f"{scheme}://{host}:{port}"


def pooled_by_target(app: Any, shown: int = POOL_TARGETS_SHOWN) -> dict[str, int]:
    """Idle pooled connections of the `shown` busiest targets, busiest first, then "other"
    (every other target's, summed; always present). Read at scrape time only."""
    idle = getattr(getattr(app, "upstreams", None), "idle", None)
    counts: list[tuple[int, str]] = []
    if isinstance(idle, dict):
        counts = [(len(conns), _pool_label(key)) for key, conns in list(idle.items()) if conns]
    counts.sort(key=lambda item: (-item[0], item[1]))
    out = {label: n for n, label in counts[:shown]}
    out["other"] = sum(n for n, _ in counts[shown:])
    return out


# --- the exposition -----------------------------------------------------------------


def _len_or_none(obj: Any) -> int | None:
    try:
        return len(obj)
    except TypeError:
        return None


def _idle_upstreams(app: Any) -> int:
    pools = getattr(app, "upstreams", None)
    fn = getattr(pools, "idle_count", None)
    if fn is None:
        return 0
    try:
        return int(fn())
    except Exception:  # noqa: BLE001 - a scrape must never fail because of a pool
        return 0


def render_metrics(app: Any) -> bytes:
    """The full exposition text for `app` (reference 6), as bytes."""
    m = app.metrics
    # --workers N renders a merged view (cfproxy/workers/metrics.py) with its own
    # process figures (over every process) and per-worker families at the end
    fams = getattr(app, "process_families", _process_families)()
    fams += _loop_lag_families(m.loop_lag)
    fams += [
        # CHP's families, in CHP's registration order (lib/metrics.js)
        _counter("api_route_get", "Count of API route get requests", m.api_route_get),
        _counter("api_route_add", "Count of API route add requests", m.api_route_add),
        _counter("api_route_delete", "Count of API route delete requests", m.api_route_delete),
        _summary("find_target_for_req", "Summary of find target requests",
                 m.find_target_for_req),
        _summary("last_activity_updating", "Summary of last activity updating requests",
                 m.last_activity_updating),
        _counter("requests_ws", "Count of websocket requests", m.requests_ws),
        _counter("requests_web", "Count of web requests", m.requests_web),
        _labelled_counter("requests_proxy", "Count of proxy requests", "status",
                          m.requests_proxy),
        _labelled_counter("requests_api", "Count of API requests", "status", m.requests_api),
        # cfproxy's own
        _gauge("cfproxy_open_connections", "Open client connections on the public listeners.",
               len(app.connections)),
        _gauge("cfproxy_open_tunnels", "Open upgraded (WebSocket) connections.",
               len(app.tunnels)),
        _gauge("cfproxy_upstream_idle_connections",
               "Idle keep-alive connections held in the upstream pools.", _idle_upstreams(app)),
        _labelled("cfproxy_upstream_pooled_connections",
                  "Idle keep-alive connections held in the upstream pools, by target (the "
                  f"{POOL_TARGETS_SHOWN} busiest; the rest summed as target=\"other\").",
                  "gauge", "target", pooled_by_target(app)),
        _gauge("cfproxy_routes", "Routes in the routing table.",
               _len_or_none(getattr(app, "table", None))),
        _counter("cfproxy_client_received_bytes_total",
                 "Bytes received from clients on the public listeners.", m.bytes_in),
        _counter("cfproxy_client_sent_bytes_total",
                 "Bytes sent to clients on the public listeners.", m.bytes_out),
        _histogram_by_class(
            "cfproxy_request_duration_seconds",
            "Proxied web request duration, request head to end of response, by status class.",
            m.request_latency_counts, m.request_latency_sums),
        _labelled_counter("cfproxy_timeouts_total",
                          "Connections and requests cut by a timeout, by kind.", "kind",
                          m.timeouts),
    ]
    fams += getattr(app, "extra_families", list)()
    return "\n".join(fams).encode()


# --- the metrics listener ------------------------------------------------------------------


class MetricsProtocol(SmallHTTPProtocol):
    timeout_prefix = "metrics"

    def __init__(self, app: Any) -> None:
        super().__init__(app.metrics.timeouts)
        self.app = app

    def handle(self, request: h11.Request) -> Reply:
        if request.target == b"/metrics":
            # --workers N: the figures of every process (cfproxy/workers/metrics.py)
            view = getattr(self.app, "metrics_view", None) or self.app
            return 200, [(b"Content-Type", CONTENT_TYPE)], render_metrics(view)
        return 404, [], b"Not Found"


def make_metrics_protocol_factory(app: Any) -> Callable[[], asyncio.Protocol]:
    """Zero-arg protocol factory for the metrics listener (TCP or Unix socket); starts the
    event-loop lag sampling (called on the running loop)."""
    app.metrics.loop_lag.start(asyncio.get_running_loop())

    def factory() -> asyncio.Protocol:
        return MetricsProtocol(app)

    return factory
