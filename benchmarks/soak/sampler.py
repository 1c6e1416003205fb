"""What the soak watches every few seconds, from cfproxy's /metrics and from /proc.

Owns one `Sample` per tick: open fds and RSS of the proxy's process tree
(/proc/<pid>/fd, /proc/<pid>/status), client and upstream TCP connections
(the tree's socket inodes matched against /proc/<pid>/net/tcp{,6}: a socket on
the public port is a client's, one to a target's port is upstream), and from
/metrics: pooled (idle) upstream connections, open tunnels, event-loop lag and
the proxy's 5xx count. A metric the proxy does not export falls back to /proc
(connections) or to the round trip of `GET /_chp_healthz` (event-loop lag: a
busy loop answers late), and the sample says which source it used.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import asdict, dataclass, field

from benchmarks import procs

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')
# names the event-loop lag may carry, best first: prom-client's (CHP's) names, which cfproxy
# exports too; the max since the previous scrape shows a stall between two samples
LAG_NAMES = ("nodejs_eventloop_lag_max_seconds", "nodejs_eventloop_lag_seconds",
             "cfproxy_event_loop_lag_seconds")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class Sample:
    t: float  # seconds since the soak started
    phase: str  # "warmup", "traffic", "pause"
    fds: int
    rss_mib: float
    client_conns: int
    upstream_conns: int
    pooled: int | None  # idle pooled upstream connections (None: no such metric)
    tunnels: int | None
    lag_ms: float | None
    lag_source: str
    proxy_5xx: int | None
    routes: int | None
    counts: dict = field(default_factory=dict)  # the workload's counters at this time
    upstream_by_target: dict = field(default_factory=dict)  # target kind -> sockets (/proc)
    pooled_by_target: dict = field(default_factory=dict)  # metric's target label -> idle conns
    timeouts: dict = field(default_factory=dict)  # cfproxy_timeouts_total by kind

    def as_dict(self) -> dict:
        return asdict(self)


def parse_metrics(text: str) -> dict[str, list[tuple[str, float]]]:
    """Prometheus text -> {name: [(labels, value), ...]}."""
    out: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _LINE.match(line)
        if m:
            try:
                out.setdefault(m.group(1), []).append((m.group(2) or "", float(m.group(3))))
            except ValueError:
                pass
    return out


def _labels(text: str) -> dict[str, str]:
    return dict(_LABEL.findall(text))


def tree_pids(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(procs.children(p))
    return out


def count_fds(pids: list[int]) -> tuple[int, set[int]]:
    """Open fds of the processes, and the inodes of their sockets."""
    n, inodes = 0, set()
    for p in pids:
        try:
            names = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        n += len(names)
        for fd in names:
            try:
                link = os.readlink(f"/proc/{p}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    return n, inodes


def tcp_table(pid: int) -> dict[int, tuple[int, int, str]]:
    """inode -> (local port, remote port, state hex) for the TCP sockets in pid's namespace."""
    out = {}
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                next(f)
                for line in f:
                    parts = line.split()
                    out[int(parts[9])] = (int(parts[1].rsplit(":", 1)[1], 16),
                                          int(parts[2].rsplit(":", 1)[1], 16), parts[3])
        except (OSError, StopIteration, IndexError, ValueError):
            pass
    return out


class Sampler:
    """Takes samples of one proxy process tree."""

    def __init__(self, pid: int, public_port: int, metrics_port: int | None,
                 target_ports: dict[int, str]) -> None:
        self.pid = pid
        self.public_port = public_port
        self.metrics_port = metrics_port
        self.target_ports = target_ports  # port -> kind of target
        self.t0 = time.monotonic()

    async def _get(self, port: int, path: str) -> tuple[bytes, float]:
        """GET on a fresh connection, reset after the answer; (body, seconds)."""
        t = time.perf_counter()
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        try:
            w.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                    .encode())
            data = await asyncio.wait_for(r.read(-1), 10)
        finally:
            w.transport.abort()
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise OSError(f"{path} -> {head[:40]!r}")
        return body, time.perf_counter() - t

    async def scrape(self) -> dict[str, list[tuple[str, float]]]:
        if not self.metrics_port:
            return {}
        try:
            body, _ = await self._get(self.metrics_port, "/metrics")
        except (OSError, asyncio.TimeoutError):
            return {}
        return parse_metrics(body.decode("utf-8", "replace"))

    async def sample(self, phase: str, counts: dict) -> Sample:
        # /proc first: the scrape's own connection must not be counted
        pids = tree_pids(self.pid)
        fds, inodes = count_fds(pids)
        table = tcp_table(self.pid)
        client = upstream = 0
        by_target: dict[str, int] = {}
        for ino in inodes:
            row = table.get(ino)
            if row is None or row[2] == "0A":  # not TCP, or listening
                continue
            if row[0] == self.public_port:
                client += 1
            elif row[1] in self.target_ports:
                upstream += 1
                kind = self.target_ports[row[1]]
                by_target[kind] = by_target.get(kind, 0) + 1
        rss = sum(procs.rss_kib(p, tree=False) for p in pids) / 1024
        m = await self.scrape()

        def one(name: str) -> float | None:
            vals = m.get(name)
            return sum(v for _, v in vals) if vals else None

        lag, source = None, "none"
        for name in LAG_NAMES:
            v = one(name)
            if v is not None:
                lag, source = v * 1000, name
                break
        if lag is None:
            try:
                _, secs = await self._get(self.public_port, "/_chp_healthz")
                lag, source = secs * 1000, "healthz round trip"
            except (OSError, asyncio.TimeoutError):
                pass
        five = None
        if "requests_proxy" in m:
            five = int(sum(v for labels, v in m["requests_proxy"] if re.search(r'"5\d\d"', labels)))
        pooled = one("cfproxy_upstream_idle_connections")
        by_label = {name: {_labels(labels).get(key, labels): int(v)
                           for labels, v in m.get(metric, [])}
                    for name, metric, key in (("pooled", "cfproxy_upstream_pooled_connections",
                                               "target"),
                                              ("timeouts", "cfproxy_timeouts_total", "kind"))}
        tunnels = one("cfproxy_open_tunnels")
        routes = one("cfproxy_routes")
        return Sample(round(time.monotonic() - self.t0, 1), phase, fds, round(rss, 1),
                      client, upstream, None if pooled is None else int(pooled),
                      None if tunnels is None else int(tunnels),
                      None if lag is None else round(lag, 2), source, five,
                      None if routes is None else int(routes), dict(counts), by_target,
                      by_label["pooled"], by_label["timeouts"])
