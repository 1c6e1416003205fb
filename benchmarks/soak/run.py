"""`python -m benchmarks soak`: flags, variants, phases, and stopping everything by PID.

Timeline (bounded: the soak ends by itself after --minutes):

    warm-up traffic | pause | traffic | pause | ... | traffic | pause
                      ^ reference level                         ^ compared with it

Warm-up is 20% of the run (15 s to 2 min); each pause lasts --pause-s (default 8 s,
longer than the idle timeout of a pooled connection) and ends with the sample
the rules look at. Samples are taken every --sample-s seconds (every second in
a pause). Exit status: 0 pass (or skipped: the proxy rejected the variant's
flag), 1 fail, 2 the soak could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks import procs
from benchmarks.backend import raise_nofile
from benchmarks.peers import REPO, TOKEN, _env
from benchmarks.soak import report
from benchmarks.soak.sampler import Sample, Sampler
from benchmarks.soak.targets import FAULTS, TargetServer
from benchmarks.soak.verdict import judge
from benchmarks.soak.workload import Workload

VARIANTS = ("memory", "sqlite", "redis", "workers2")
# how cfproxy (as CHP) says it does not know a flag or a storage backend; any other early
# exit with the variant's flags is a failure to run, not a skip
REJECTED = ("unknown option", "Cannot find module", "error: option")
HEALTHY_TARGETS = 8


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks soak",
        description="A bounded JupyterHub-shaped soak of one cfproxy: route churn, browsers, "
                    "WebSockets, faulty targets; fails on fd or RSS growth or unexpected 5xx.")
    p.add_argument("--minutes", type=float, default=10.0, help="length of the soak (default 10)")
    p.add_argument("--variant", choices=VARIANTS, default="memory",
                   help="route store / process layout: memory (default), sqlite, redis, workers2")
    p.add_argument("--json", metavar="FILE", help="samples and verdict as JSON "
                   "(default: soak-<variant>.json in the temp dir, path printed)")
    p.add_argument("--plot", metavar="FILE.png", help="PNG plot (default: beside the JSON)")
    p.add_argument("--sample-s", type=float, default=2.0, help="seconds between samples")
    p.add_argument("--pause-s", type=float, default=8.0, help="length of each traffic pause")
    p.add_argument("--clients", type=int, default=12, help="concurrent browser clients")
    p.add_argument("--websockets", type=int, default=20, help="concurrent WebSocket sessions")
    p.add_argument("--proxy-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for cfproxy (repeat for more)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (proxy log, db)")
    a = p.parse_args(argv)
    if not 0.5 <= a.minutes <= 24 * 60:
        p.error("--minutes must be between 0.5 and 1440")
    if a.sample_s <= 0 or a.pause_s < 2:
        p.error("--sample-s must be > 0 and --pause-s >= 2")
    return a


def schedule(total_s: float, pause_s: float) -> list[tuple[str, float]]:
    """[(phase, seconds)]: warm-up, pause, then traffic/pause pairs (about 3 min each)."""
    warmup = min(120.0, max(15.0, 0.2 * total_s))
    rest = max(0.0, total_s - warmup - pause_s)
    k = max(1, int(rest // 180))
    traffic = max(5.0, rest / k - pause_s)
    out = [("warmup", warmup), ("pause", pause_s)]
    for _ in range(k):
        out += [("traffic", traffic), ("pause", pause_s)]
    return out


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="cfproxy-soak-")
        self.proxy: subprocess.Popen | None = None
        self.redis: subprocess.Popen | None = None
        self.samples: list[Sample] = []
        self.skipped: str | None = None
        self.proxy_args: list[str] = []

    # --- processes ------------------------------------------------------------------------
    def variant_args(self) -> list[str]:
        v = self.args.variant
        if v == "sqlite":
            return ["--storage-backend", "sqlite:///" + os.path.join(self.tmp, "routes.db")]
        if v == "redis":
            binary = shutil.which("redis-server")
            if not binary:
                raise SkipSoak("redis-server is not installed")
            port = procs.free_port()
            self.redis = procs.spawn([binary, "--port", str(port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", self.tmp],
                                     log_path=os.path.join(self.tmp, "redis.log"))
            procs.wait_port(port, proc=self.redis)
            return ["--storage-backend", f"redis://127.0.0.1:{port}/0"]
        if v == "workers2":
            return ["--workers", "2"]
        return []

    def start_proxy(self, hub_url: str) -> tuple[int, int, int]:
        port, api, metrics = procs.free_port(), procs.free_port(), procs.free_port()
        flags = self.variant_args()
        self.proxy_args = ["--ip", "127.0.0.1", "--port", str(port), "--api-ip", "127.0.0.1",
                           "--api-port", str(api), "--metrics-ip", "127.0.0.1", "--metrics-port",
                           str(metrics), "--default-target", hub_url, *flags,
                           *self.args.proxy_arg]
        self.proxy = procs.spawn([sys.executable, "-m", "cfproxy", *self.proxy_args],
                                 env=_env(CONFIGPROXY_AUTH_TOKEN=TOKEN), cwd=str(REPO),
                                 log_path=os.path.join(self.tmp, "proxy.log"))
        try:
            for p in (port, api, metrics):
                procs.wait_port(p, timeout=20, proc=self.proxy)
        except (RuntimeError, TimeoutError) as e:
            log = self.log_tail()
            if flags and self.proxy.poll() is not None and any(m in log for m in REJECTED):
                raise SkipSoak(f"cfproxy rejects the {self.args.variant} variant's flag "
                               f"{' '.join(flags)}: {log.strip()[-300:]}") from None
            raise RuntimeError(f"cfproxy did not start: {e}; log: {log[-500:]}") from None
        return port, api, metrics

    def log_tail(self, n: int = 1000) -> str:
        try:
            with open(os.path.join(self.tmp, "proxy.log"), errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def stop_processes(self) -> None:
        procs.stop(self.proxy)
        procs.stop(self.redis)
        procs.stop_all()

    # --- the run ---------------------------------------------------------------------------
    async def run(self) -> Workload:
        healthy = [TargetServer("healthy") for _ in range(HEALTHY_TARGETS)]
        hub = TargetServer("healthy")
        faulty = {k: TargetServer(k) for k in FAULTS}
        servers = [*healthy, hub, *faulty.values()]
        for s in servers:
            await s.start()
        port, api, metrics = self.start_proxy(hub.url)
        wl = Workload(port, api, TOKEN, healthy, faulty, clients=self.args.clients,
                      websockets=self.args.websockets)
        kinds = {hub.port: "hub", **{s.port: "healthy" for s in healthy},
                 **{s.port: k for k, s in faulty.items()}}
        sampler = Sampler(self.proxy.pid, port, metrics, kinds)
        tasks = [asyncio.ensure_future(t) for t in wl.tasks()]
        try:
            await wl.add_all_routes()
            await self.phases(wl, sampler)
        finally:
            await wl.close()
            await asyncio.wait(tasks, timeout=15)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for s in servers:
                await s.stop()
        return wl

    async def phases(self, wl: Workload, sampler: Sampler) -> None:
        t0 = time.monotonic()
        plan = schedule(self.args.minutes * 60, self.args.pause_s)
        for n, (phase, secs) in enumerate(plan):
            end = time.monotonic() + secs
            if phase == "pause":
                await wl.pause()
            else:
                wl.resume()
            while True:
                left = end - time.monotonic()
                step = 1.0 if phase == "pause" else self.args.sample_s
                await asyncio.sleep(max(0.0, min(step, left)))
                if self.proxy.poll() is not None:
                    sys.stderr.write(f"\ncfproxy exited ({self.proxy.returncode}): "
                                     f"{self.log_tail(300)}\n")
                    return
                s = await sampler.sample(phase, wl.counts)
                self.samples.append(s)
                sys.stderr.write(f"\r\033[K[{int(time.monotonic() - t0)}s {n + 1}/{len(plan)} "
                                 f"{phase}] fds {s.fds} pooled {s.pooled} rss {s.rss_mib:.1f} MiB "
                                 f"clients {s.client_conns} tunnels {s.tunnels} lag {s.lag_ms} ms "
                                 f"requests {wl.counts['requests']:,}")
                sys.stderr.flush()
                if left <= step:
                    break
        sys.stderr.write("\n")


class SkipSoak(Exception):
    """The variant cannot run here (its flag is rejected, or a service is missing)."""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile()
    soak = Soak(args)
    meta = {"minutes": args.minutes, "variant": args.variant,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "python": sys.version.split()[0]}
    json_path = args.json or os.path.join(soak.tmp, f"soak-{args.variant}.json")
    plot_path = args.plot or os.path.splitext(json_path)[0] + ".png"
    wl: Workload | None = None
    try:
        try:
            import uvloop
            wl = uvloop.run(soak.run()) if hasattr(uvloop, "run") else asyncio.run(soak.run())
        except ImportError:  # pragma: no cover
            wl = asyncio.run(soak.run())
    except SkipSoak as e:
        meta["proxy_args"] = soak.proxy_args
        print(f"soak skipped: {e}")
        report.write_json(json_path, meta, [], {}, None, [str(e)], {}, [])
        return 0
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return 130
    except RuntimeError as e:
        print(f"soak could not run: {e}")
        return 2
    finally:
        alive = soak.proxy is not None and soak.proxy.poll() is None
        soak.stop_processes()
    meta["proxy_args"] = soak.proxy_args
    counts = dict(wl.counts) if wl else {}
    examples = wl.bad_examples if wl else []
    passed, reasons, figures = judge(soak.samples, counts, alive)
    sys.stdout.write(report.markdown(meta, soak.samples, counts, passed, reasons, figures,
                                     examples))
    report.write_json(json_path, meta, soak.samples, counts, passed, reasons, figures, examples)
    sys.stderr.write(f"JSON written to {json_path}\n")
    if soak.samples:
        try:
            report.plot(plot_path, meta, soak.samples)
            sys.stderr.write(f"plot written to {plot_path}\n")
        except ImportError:
            sys.stderr.write("no plot: matplotlib is missing (pip install 'cfproxy[bench]')\n")
    if args.keep_tmp or not (args.json and args.plot):
        sys.stderr.write(f"temp dir kept: {soak.tmp}\n")
    else:
        shutil.rmtree(soak.tmp, ignore_errors=True)
    return 0 if passed else 1
