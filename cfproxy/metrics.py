"""Metrics: CHP's counters and summaries, bumped in place on the hot path.

The hot path does `app.metrics.requests_web += 1`,
`app.metrics.requests_proxy[status] += 1`, `app.metrics.find_target_for_req.observe(s)`
and `app.metrics.observe_request(seconds, status)` — plain attribute, dict and list
writes, nothing else. This module owns the numbers; exposition in the Prometheus text
format with CHP's exact names (no `_total`, quantile summaries) lives in
`metrics_server.py`, which reads them only when scraped.

What the data path feeds (cfproxy/proxy/client.py; tunnel.py for upgraded connections):
`bytes_in` = every byte read from a public client connection (heads, bodies, tunnel
traffic); `bytes_out` = every byte written to one (heads as rewritten, body payload as
relayed, the proxy's own answers; chunk framing added or removed for HTTP/1.0 clients is
not counted). `observe_request` = head parsed -> response written to the end, for every
answered request (proxied, 404/503/500 pages, raw upgrade errors, and the 101 of an
upgrade: the time to the switch); not for the health check, for malformed heads, or for
exchanges aborted midway. `last_activity_updating`: CHP times a store round trip per
update (route add, body chunks, finish, ws chunks); ours is a float write into the Route,
so the summary observes the duration of that write for the "finish" update (a response
with status < 300 ended), sampled: the first and then one in `LA_SAMPLE` (16, client.py)
such updates are timed; body and tunnel chunks are not. `_count` is thus the number of
timed samples, not of updates. (Observing every update cost ~0.6 us per small request,
more than the write it measures; the quantiles of a constant-cost write lose nothing.)

`timeouts[kind] += 1` is bumped once where each timeout fires (TIMEOUT_KINDS: the public
port's header, request, activity, proxy and keep-alive timeouts, the upstream pools' idle
timeout, the API's and the small listeners'). `loop_lag` (LoopLag) samples how late the
event loop runs a timer; the metrics listener starts it.

Summaries keep quantiles over the whole process lifetime (as prom-client does) with a
merging t-digest: `observe()` appends to a buffer (O(1)); every `_BUFFER` observations
the buffer is folded into at most ~`_COMPRESSION` centroids (a sort of a few
thousand floats), so memory is bounded and the amortised cost per observation stays well under
a microsecond. Accuracy is best at the tails, which is what p99/p99.9 need.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
import time
from collections import defaultdict
from itertools import accumulate
from operator import mul

_COMPRESSION = 200  # t-digest delta: at most ~this many centroids
_BUFFER = 2048  # observations buffered before a merge

# Quantiles CHP (prom-client) reports for every summary.
SUMMARY_QUANTILES = (0.01, 0.05, 0.5, 0.9, 0.95, 0.99, 0.999)

# cfproxy_request_duration_seconds buckets (upper bounds; +Inf implicit)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# status class index: 0 = unknown/other, 1..5 = 1xx..5xx
STATUS_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")


def _compress(ms: list[float], ws: list[float]) -> tuple[list[float], list[float]]:
    """Centroids (sorted by mean, with weights) folded so one spans at most one unit of k1."""
    cum_w = list(accumulate(ws))
    cum_mw = list(accumulate(map(mul, ms, ws)))
    total = cum_w[-1]
    k_norm = _COMPRESSION / (2.0 * math.pi)
    half_pi = math.pi / 2.0
    means: list[float] = []
    weights: list[float] = []
    n = len(cum_w)
    start = 0
    before_w = before_mw = 0.0
    while start < n:
        k_hi = math.asin(2.0 * before_w / total - 1.0) + 1.0 / k_norm
        limit = total if k_hi >= half_pi else (math.sin(k_hi) + 1.0) / 2.0 * total
        end = bisect.bisect_right(cum_w, limit * (1.0 + 1e-12), start)
        if end <= start:
            end = start + 1
        w = cum_w[end - 1] - before_w
        means.append((cum_mw[end - 1] - before_mw) / w)
        weights.append(w)
        before_w, before_mw = cum_w[end - 1], cum_mw[end - 1]
        start = end
    return means, weights


class Summary:
    """A lifetime quantile summary: `sum`, `count`, and `quantile(q)` from a t-digest."""

    __slots__ = ("sum", "count", "_buf", "_means", "_weights", "_min", "_max")

    def __init__(self) -> None:
        self.sum = 0.0
        self.count = 0
        self._buf: list[float] = []
        self._means: list[float] = []  # centroids, sorted by mean
        self._weights: list[float] = []
        self._min = float("inf")
        self._max = float("-inf")

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        buf = self._buf
        buf.append(value)
        if len(buf) >= _BUFFER:
            self._merge()

    def _merge(self) -> None:
        """Fold the buffer into the centroids (merging t-digest, k1 scale function).

        k1(q) = delta/(2 pi) * asin(2q - 1); one centroid spans at most one unit of k,
        which bounds the count by ~delta and keeps singletons at the tails. Boundaries
        are found by bisecting cumulative weights, so the per-point work is C-level
        sort/accumulate and the Python loop runs once per centroid, not per point.
        """
        buf = self._buf
        if not buf:
            return
        self._buf = []
        buf.sort()
        if buf[0] < self._min:
            self._min = buf[0]
        if buf[-1] > self._max:
            self._max = buf[-1]
        # merge the (few) centroids into the sorted buffer by bisection: C-level slices
        ms: list[float] = []
        ws: list[float] = []
        prev = 0
        for m, w in zip(self._means, self._weights, strict=True):
            i = bisect.bisect_right(buf, m, prev)
            ms += buf[prev:i]
            ws += [1.0] * (i - prev)
            ms.append(m)
            ws.append(w)
            prev = i
        ms += buf[prev:]
        ws += [1.0] * (len(buf) - prev)
        self._means, self._weights = _compress(ms, ws)

    def quantile(self, q: float) -> float:
        """The q-quantile of everything observed so far; 0 when nothing was (as prom-client)."""
        self._merge()
        means, weights = self._means, self._weights
        if not means:
            return 0.0
        if len(means) == 1:
            return means[0]
        total = sum(weights)
        target = q * total
        # centroid i covers [cum, cum + w); its mean sits at its centre
        cum = 0.0
        prev_centre, prev_mean = 0.0, self._min
        for m, w in zip(means, weights, strict=True):
            centre = cum + w / 2.0
            if target < centre:
                if centre == prev_centre:
                    return m
                frac = (target - prev_centre) / (centre - prev_centre)
                return prev_mean + frac * (m - prev_mean)
            prev_centre, prev_mean = centre, m
            cum += w
        # beyond the last centre: interpolate towards the maximum
        if total == prev_centre:
            return self._max
        frac = (target - prev_centre) / (total - prev_centre)
        return prev_mean + frac * (self._max - prev_mean)

    def centroid_count(self) -> int:
        """Centroids held (bounded memory check for tests)."""
        self._merge()
        return len(self._means)

    def merge(self, other: Summary) -> None:
        """Add everything `other` observed (t-digests merge: centroids combined, re-folded).

        Used by --workers to show one summary over all processes. `other` is not changed
        beyond folding its own buffer.
        """
        other._merge()
        self._merge()
        if not other.count:
            return
        self.sum += other.sum
        self.count += other.count
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)
        pairs = sorted(zip(self._means + other._means, self._weights + other._weights, strict=True))
        if pairs:
            self._means, self._weights = _compress([m for m, _ in pairs], [w for _, w in pairs])


# What `Metrics.timeouts` counts, by kind: each is bumped once where that timeout fires.
TIMEOUT_KINDS = (
    "header",  # public port: a request head not complete within --header-timeout (408)
    "request",  # public port: a request not complete within the request timeout (408)
    "activity",  # public port: --timeout, no bytes either way during a web request
    "proxy",  # public port: --proxy-timeout, the target did not answer (503 or cut)
    "keep_alive",  # public port: an idle keep-alive connection closed
    "upstream_idle",  # a pooled upstream connection closed after its idle timeout
    "api_header",  # API: a request not complete within --header-timeout
    "api_keep_alive",  # API: an idle keep-alive connection closed (5 s)
    "metrics_request",  # metrics port: a request not complete within 60 s
    "redirect_request",  # redirect port: a request not complete within 60 s
)


class LoopLag:
    """How late the event loop runs its callbacks: CHP's `nodejs_eventloop_lag_*` counterpart.

    Once started (by the metrics listener), a timer asks to run every `INTERVAL` seconds
    and records how much later than asked it ran: the time the loop was busy with
    something else (a long callback, a burst of connections, GC). prom-client reports
    Node's delay histogram, which includes its own 10 ms sampling interval; here only the
    lateness beyond the interval is recorded, so an idle proxy reads ~0.

    `last` is the latest sample (`nodejs_eventloop_lag_seconds`); `take()` returns the
    min/max/mean/stddev/p50/p90/p99 of the samples since the previous `take()` and starts
    over, as prom-client resets its histogram on every scrape. At most `KEEP` samples are
    kept for the percentiles between scrapes (reservoir sampling); the moments use all.
    Cost: 20 timer callbacks a second (~0.2% of a core on an idle proxy; at 10 ms, as
    Node samples, it was ~0.6%).
    """

    INTERVAL = 0.05  # 20 samples a second: a stall of 50 ms or more always delays one
    KEEP = 4096

    def __init__(self) -> None:
        self.last = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._expected = 0.0
        self._reset()

    def _reset(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.sumsq = 0.0
        self.min = math.inf
        self.max = 0.0
        self.samples: list[float] = []

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start sampling on `loop` (again a no-op)."""
        if self.loop is not None:
            return
        self.loop = loop
        self._expected = time.perf_counter() + self.INTERVAL
        loop.call_later(self.INTERVAL, self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        lag = now - self._expected
        if lag < 0.0:
            lag = 0.0
        self.record(lag)
        self._expected = now + self.INTERVAL
        if not self.loop.is_closed():
            self.loop.call_later(self.INTERVAL, self._tick)

    def record(self, lag: float) -> None:
        """One sample, in seconds."""
        self.last = lag
        self.count += 1
        self.sum += lag
        self.sumsq += lag * lag
        if lag < self.min:
            self.min = lag
        if lag > self.max:
            self.max = lag
        samples = self.samples
        if len(samples) < self.KEEP:
            samples.append(lag)
        else:
            i = random.randrange(self.count)
            if i < self.KEEP:
                samples[i] = lag

    def take(self) -> dict[str, float]:
        """min, max, mean, stddev, p50, p90, p99 (seconds) since the last take; all 0 if none."""
        n = self.count
        if not n:
            return dict.fromkeys(("min", "max", "mean", "stddev", "p50", "p90", "p99"), 0.0)
        mean = self.sum / n
        var = max(0.0, self.sumsq / n - mean * mean)
        ordered = sorted(self.samples)

        def pct(p: float) -> float:  # nearest rank
            return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]

        out = {"min": self.min, "max": self.max, "mean": mean, "stddev": math.sqrt(var),
               "p50": pct(50), "p90": pct(90), "p99": pct(99)}
        self._reset()
        return out


class Metrics:
    def __init__(self) -> None:
        # CHP's families (reference section 6)
        self.api_route_get = 0
        self.api_route_add = 0
        self.api_route_delete = 0
        self.requests_api: defaultdict[int, int] = defaultdict(int)
        self.requests_web = 0
        self.requests_ws = 0
        self.requests_proxy: defaultdict[int, int] = defaultdict(int)
        self.find_target_for_req = Summary()
        self.last_activity_updating = Summary()
        # cfproxy additions
        self.bytes_in = 0  # from clients
        self.bytes_out = 0  # to clients
        # connections and requests cut by a timeout, by kind (TIMEOUT_KINDS; a kind not
        # listed there still counts, printed after them)
        self.timeouts: defaultdict[str, int] = defaultdict(int, dict.fromkeys(TIMEOUT_KINDS, 0))
        self.loop_lag = LoopLag()  # sampling starts with the metrics listener
        # request latency histogram: per status class, non-cumulative bucket counts
        # (last slot = +Inf) and the sum of observed seconds
        n = len(LATENCY_BUCKETS) + 1
        self.request_latency_counts: list[list[int]] = [[0] * n for _ in STATUS_CLASSES]
        self.request_latency_sums: list[float] = [0.0] * len(STATUS_CLASSES)

    def observe_request(self, seconds: float, status: int) -> None:
        """Record one proxied request's duration (head in -> response end) by status class."""
        cls = status // 100
        if cls < 1 or cls > 5:
            cls = 0
        self.request_latency_counts[cls][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.request_latency_sums[cls] += seconds
