"""The benchmark run: flags, order, rounds, progress, and cleaning up.

Owns the sequence of a run. The runner pins itself (and so the backends and
load generators it starts) to the load core, starts the backends, then works
through the scenario groups: http and ws scenarios against long-running peers,
candidates interleaved (round r starts with a different peer), median of the
rounds; rss, routes and startup with fresh peers. A failing peer becomes an
error cell, never a crashed run. Every process is stopped by PID in `finally`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

from benchmarks import procs, scenarios, state
from benchmarks.backend import raise_nofile
from benchmarks.peers import (
    ALL_PEERS,
    PEER_CLASSES,
    REPO,
    Backends,
    CFProxy,
    Peer,
    find_chp,
    find_nginx,
    make_tmp,
)
from benchmarks.report import Results
from benchmarks.shapes import USERS
from benchmarks.wrkload import wrk_path

PROFILES = {
    # rounds, seconds per measurement, start-up rounds, routes, idle conns, websockets,
    # seconds a pipelining client may write per port
    "quick": {"rounds": 2, "duration": 1.0, "startup_rounds": 3, "routes": 10_000,
              "idle_conns": 10_000, "websockets": 1_000, "pipeline_s": 2.0},
    "full": {"rounds": 3, "duration": 4.0, "startup_rounds": 5, "routes": 100_000,
             "idle_conns": 10_000, "websockets": 1_000, "pipeline_s": 10.0},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ids = ", ".join(s.id for s in scenarios.SCENARIOS)
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="cfproxy beside CHP 5.3.0, nginx and direct (no proxy), in one run, with ratios.",
        epilog=f"scenarios: {ids}; groups: {', '.join(scenarios.GROUPS)}")
    p.add_argument("--quick", action="store_true", help="short run (~3-4 min): fewer rounds, 1 s each")
    p.add_argument("--only", default="", metavar="SCENARIO[,..]",
                   help="run only these scenarios or groups (comma-separated)")
    p.add_argument("--peers", default=",".join(ALL_PEERS), metavar="P[,..]",
                   help=f"peers to run (default: {','.join(ALL_PEERS)})")
    p.add_argument("--rounds", type=int, help="rounds per scenario (median is reported)")
    p.add_argument("--duration", type=float, help="seconds per measurement")
    p.add_argument("--routes", type=int, help="routes in the routes scenario")
    p.add_argument("--idle-conns", type=int, help="idle keep-alive connections in the rss scenario")
    p.add_argument("--websockets", type=int, help="open WebSockets in the rss scenario")
    p.add_argument("--backend", choices=("nginx", "python"), default="nginx",
                   help="HTTP backend (default nginx, whose heads are a real server's; python: "
                        "the lean backend, see README)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run cfproxy with --workers N (CPU figures cover the primary and every "
                        "worker: compare req/CPU-s against a run without it)")
    p.add_argument("--json", metavar="FILE", help="write all results (every round) as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="draw the ratios to CHP (needs matplotlib)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, configs)")
    a = p.parse_args(argv)
    prof = dict(PROFILES["quick" if a.quick else "full"])
    for k in ("rounds", "duration", "routes", "idle_conns", "websockets"):
        if getattr(a, k) is not None:
            prof[k] = getattr(a, k)
    a.profile = prof
    if a.workers < 1:
        p.error("--workers: must be at least 1")
    a.peer_list = [x.strip() for x in a.peers.split(",") if x.strip()]
    bad = [x for x in a.peer_list if x not in PEER_CLASSES]
    if bad:
        p.error(f"--peers: unknown peer(s) {', '.join(bad)} (known: {', '.join(ALL_PEERS)})")
    sel = [x.strip() for x in a.only.split(",") if x.strip()]
    unknown = [x for x in sel if x not in scenarios.BY_ID and x not in scenarios.GROUPS]
    if unknown:
        p.error(f"--only: unknown scenario(s) {', '.join(unknown)} (known: "
                f"{', '.join(scenarios.BY_ID)}; groups: {', '.join(scenarios.GROUPS)})")
    a.selected = [s for s in scenarios.SCENARIOS
                  if not sel or s.id in sel or s.group in sel]
    return a


def other_cpu_load(secs: float = 1.0) -> float:
    """Percent of all CPUs busy over `secs` while this run is idle (other processes' load)."""
    def snap() -> tuple[int, int]:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
        return sum(vals), vals[3] + (vals[4] if len(vals) > 4 else 0)
    try:
        t0, i0 = snap()
        time.sleep(secs)
        t1, i1 = snap()
    except OSError:
        return 0.0
    return 100.0 * (1 - (i1 - i0) / max(1, t1 - t0))


class Progress:
    """One self-overwriting status line on stderr."""

    def __init__(self, total: int) -> None:
        self.total = max(1, total)
        self.done = 0
        self.t0 = time.monotonic()
        self.tty = sys.stderr.isatty()

    def step(self, text: str) -> None:
        self.done += 1
        el = time.monotonic() - self.t0
        line = f"[{self.done}/{self.total} {int(el) // 60}m{int(el) % 60:02d}s] {text}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def note(self, text: str) -> None:
        sys.stderr.write(("\r\033[K" if self.tty else "") + text + "\n")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")
        el = time.monotonic() - self.t0
        sys.stderr.write(f"done in {int(el) // 60}m{int(el) % 60:02d}s\n")
        sys.stderr.flush()


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.prof = args.profile
        self.tmp = make_tmp()
        self.backends = Backends(args.backend, self.tmp)
        self.results = Results([])
        self.peers: list[str] = []

    # --- helpers ----------------------------------------------------------------------------
    def make_peer(self, name: str) -> Peer:
        peer = PEER_CLASSES[name](self.backends, self.tmp)
        if isinstance(peer, CFProxy):
            peer.workers = self.args.workers
        return peer

    def attempt(self, sc: str, peer: str, fn: Callable[[], dict]) -> None:
        try:
            self.results.add(sc, peer, fn())
        except Exception as e:  # an error cell, never a crashed run
            self.results.error(sc, peer, f"{type(e).__name__}: {e}")

    def peers_for(self, sc: scenarios.Scenario) -> list[str]:
        return [p for p in self.peers if p in sc.peers]

    def estimate_steps(self) -> int:
        r, n = self.prof["rounds"], 0
        for sc in self.args.selected:
            k = len(self.peers_for(sc))
            n += {"http": r * k, "ws": r * k, "rss": 2 * k, "routes": k + 2 * r * k,
                  "startup": self.prof["startup_rounds"] * k, "pipeline": 3 * k,
                  "state": 4 + 2 * r}[sc.group]
        return n

    # --- the run ----------------------------------------------------------------------------
    def install_missing_tools(self) -> None:
        """On a fresh machine, fetch what the run needs (CHP with npm; wrk and nginx with
        apt-get where allowed) by the scripts in scripts/, best effort and bounded in time.
        CFPROXY_BENCH_NO_INSTALL=1 turns this off."""
        if os.environ.get("CFPROXY_BENCH_NO_INSTALL"):
            return
        wants_chp = "chp" in self.args.peer_list and not find_chp() and shutil.which("npm")
        wants_tools = not wrk_path() or ("nginx" in self.args.peer_list and not find_nginx())
        scripts = REPO / "scripts"
        for needed, script in ((wants_tools, "install-bench-tools.sh"), (wants_chp, "install-chp.sh")):
            if not needed:
                continue
            sys.stderr.write(f"installing missing benchmark tools: scripts/{script}\n")
            try:
                subprocess.run(["sh", str(scripts / script)], timeout=600, check=False,
                               stdout=subprocess.DEVNULL, stderr=sys.stderr)
            except (OSError, subprocess.TimeoutExpired) as e:
                self.results.notes.append(f"scripts/{script} failed: {e}")
            if script == "install-bench-tools.sh":
                wants_chp = "chp" in self.args.peer_list and not find_chp() and shutil.which("npm")

    def check_peers(self) -> None:
        self.install_missing_tools()
        for name in sorted(set(self.args.peer_list), key=ALL_PEERS.index):
            why = self.make_peer(name).unavailable()
            if why:
                self.results.notes.append(f"{name} skipped: {why}")
            else:
                self.peers.append(name)
        self.results.peers = self.peers
        if self.args.backend == "nginx" and not find_nginx():
            self.args.backend = self.backends.kind = "python"
            self.results.notes.append("nginx not found: the lean python backend serves HTTP "
                                      "(scripts/install-bench-tools.sh)")
        if not wrk_path():
            self.results.notes.append("wrk not found: HTTP and routes-throughput scenarios skipped "
                                      "(scripts/install-bench-tools.sh)")

    def run(self) -> Results:
        a = self.args
        self.check_peers()
        res = self.results
        res.meta = {"profile": "quick" if a.quick else "full", **self.prof, "backend": a.backend,
                    "cpus": os.cpu_count(), "pinning": procs.pinning_enabled(),
                    "cfproxy_workers": a.workers, "proxy_cpus": list(procs.PROXY_CPUS),
                    "python": sys.version.split()[0], "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        busy = other_cpu_load()
        res.meta["other_cpu_load_pct"] = busy
        if busy > 10:
            res.notes.append(f"the machine was busy before the run ({busy:.0f}% of all CPUs used by "
                             "other processes): absolute figures are low and noisy; the ratios, "
                             "measured interleaved, hold better")
        self.progress = Progress(self.estimate_steps())
        self.backends.start()
        groups = {g: [s for s in a.selected if s.group == g] for g in scenarios.GROUPS}
        if not wrk_path():
            groups["http"] = []
        if groups["http"] or groups["ws"]:
            self.run_shared(groups["http"] + groups["ws"])
        for sc in groups["rss"]:
            self.run_rss(sc)
        for sc in groups["routes"]:
            if wrk_path():
                self.run_routes(sc)
        for sc in groups["startup"]:
            self.run_startup(sc)
        for sc in groups["pipeline"]:
            self.run_pipeline(sc)
        for sc in groups["state"]:
            state.run(self, sc)
        self.progress.finish()
        return res

    def run_shared(self, scs: list[scenarios.Scenario]) -> None:
        live: dict[str, Peer] = {}
        failed: dict[str, str] = {}
        names = sorted({p for sc in scs for p in self.peers_for(sc)}, key=self.peers.index)
        try:
            for name in names:
                peer = self.make_peer(name)
                try:
                    peer.start(users=USERS)  # the browser-shaped scenario's users' routes
                    live[name] = peer
                except Exception as e:
                    failed[name] = str(e)
            for peer in live.values():  # warm-up (JIT, pools), not measured
                if shutil.which("wrk"):
                    try:
                        scenarios.run_wrk(peer.port, conns=10, duration=1, tmp=self.tmp)
                    except Exception:
                        pass
            for block in interleaved_blocks(scs):
                self.results.ran.extend(sc.id for sc in block)
                for r, sc, name in self.block_order(block):
                    self.progress.step(f"{sc.id} · {name} · round {r + 1}/{self.prof['rounds']}")
                    if name in failed:
                        self.results.error(sc.id, name, failed[name])
                        continue
                    peer = live[name]
                    if not peer.alive():
                        self.results.error(sc.id, name, f"{name} died: {peer.log_tail(300)}")
                        try:
                            peer.start(users=USERS)
                        except Exception as e:
                            failed[name] = f"died and did not restart: {e}"
                        continue
                    if sc.group == "http":
                        self.attempt(sc.id, name, lambda sc=sc, peer=peer:
                                     scenarios.measure_http(sc, peer, self.prof["duration"],
                                                            self.tmp))
                    else:
                        self.attempt(sc.id, name, lambda sc=sc, peer=peer:
                                     scenarios.measure_ws(sc, peer, self.prof["duration"]))
        finally:
            for peer in live.values():
                peer.stop()
        self.add_shape_ratios()

    def block_order(self, block: list[scenarios.Scenario]):
        """(round, scenario, peer) in run order: rounds outermost, so the scenarios of a block
        (the response shapes) are measured a few seconds apart and their ratios hold on a
        busy host; the first peer rotates from round to round."""
        for r in range(self.prof["rounds"]):
            for sc in block:
                order = self.peers_for(sc)
                k = r % len(order) if order else 0
                for name in order[k:] + order[:k]:
                    yield r, sc, name

    def add_shape_ratios(self) -> None:
        """Each peer's requests/s per response shape ÷ its best shape's (medians)."""
        ran = [sid for sid in scenarios.SHAPE_IDS if sid in self.results.ran]
        for name in self.peers:
            for key, out in (("req_per_s", "vs_best"), ("req_per_cpu_s", "vs_best_cpu")):
                rates = {sid: self.results.median(sid, key, name) for sid in ran}
                best = max((v for v in rates.values() if v), default=None)
                for sid, v in rates.items():
                    if v and best:
                        self.results.add(sid, name, {out: v / best})

    def run_pipeline(self, sc: scenarios.Scenario) -> None:
        """Fresh peer per port kind (freed memory is rarely given back): pipelining RSS growth."""
        self.results.ran.append(sc.id)
        for name in self.peers_for(sc):
            for kind in ("public", "api", "metrics"):
                self.progress.step(f"{sc.id} · {name} · {kind} port")
                peer = self.make_peer(name)
                try:
                    self.attempt(sc.id, name, lambda peer=peer, kind=kind: (
                        peer.start(metrics=True),
                        scenarios.measure_pipeline(peer, kind, sc.params["max_mb"],
                                                   self.prof["pipeline_s"]))[1])
                finally:
                    peer.stop()

    def run_rss(self, sc: scenarios.Scenario) -> None:
        self.results.ran.append(sc.id)
        n_idle, n_ws = self.prof["idle_conns"], self.prof["websockets"]
        for name in self.peers_for(sc):
            # each part on a fresh process: freed memory is rarely given back to the OS
            for what, fn in ((f"{n_idle:,} idle keep-alive conns",
                              lambda p: scenarios.measure_rss_idle_conns(p, n_idle)),
                             (f"{n_ws:,} open websockets",
                              lambda p: scenarios.measure_rss_websockets(p, n_ws))):
                self.progress.step(f"{sc.id} · {name} · {what}")
                peer = self.make_peer(name)
                # idle connections must outlive the measurement: raise the keep-alive timeout
                extra = ("--keep-alive-timeout", "600000") if name in ("cfproxy", "chp") else ()
                try:
                    self.attempt(sc.id, name, lambda peer=peer, extra=extra, fn=fn: (
                        peer.start(extra), fn(peer))[1])
                finally:
                    peer.stop()

    def run_routes(self, sc: scenarios.Scenario) -> None:
        self.results.ran.append(sc.id)
        n = self.prof["routes"]
        live: dict[str, Peer] = {}
        try:
            for name in self.peers_for(sc):
                self.progress.step(f"{sc.id} · {name} · adding {n:,} routes")
                peer = self.make_peer(name)

                def table(peer: Peer = peer) -> dict:
                    peer.start()
                    return scenarios.measure_routes_table(peer, n)

                before = len(self.results.errors.get(sc.id, {}))
                self.attempt(sc.id, name, table)
                if len(self.results.errors.get(sc.id, {})) == before:
                    live[name] = peer
                else:
                    peer.stop()
            names = list(live)
            for r in range(self.prof["rounds"]):
                k = r % len(names) if names else 0
                for name in names[k:] + names[:k]:
                    for which, nroutes in (("random", n), ("one", 1)):
                        self.progress.step(f"{sc.id} · {name} · {which} route(s) · round {r + 1}")
                        self.attempt(sc.id, name, lambda peer=live[name], nr=nroutes, w=which: {
                            f"{w}_req_per_s": scenarios.measure_route_throughput(
                                peer, nr, self.prof["duration"], self.tmp)})
            for name in names:
                rnd = self.results.median(sc.id, "random_req_per_s", name)
                one = self.results.median(sc.id, "one_req_per_s", name)
                if rnd and one:
                    self.results.add(sc.id, name, {"random_vs_one": rnd / one})
        finally:
            for peer in live.values():
                peer.stop()

    def run_startup(self, sc: scenarios.Scenario) -> None:
        self.results.ran.append(sc.id)
        order = self.peers_for(sc)
        for r in range(self.prof["startup_rounds"]):
            k = r % len(order) if order else 0
            for name in order[k:] + order[:k]:
                self.progress.step(f"{sc.id} · {name} · round {r + 1}/{self.prof['startup_rounds']}")
                peer = self.make_peer(name)
                self.attempt(sc.id, name, lambda peer=peer: {
                    "startup_ms": scenarios.measure_startup(peer)})

    def cleanup(self) -> None:
        procs.stop_all()
        self.backends.stop()
        if self.args.keep_tmp:
            sys.stderr.write(f"temp dir kept: {self.tmp}\n")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def interleaved_blocks(scs: list[scenarios.Scenario]) -> list[list[scenarios.Scenario]]:
    """Consecutive scenarios sharing params["interleave"] form one block; others stand alone."""
    blocks: list[list[scenarios.Scenario]] = []
    for sc in scs:
        key = sc.params.get("interleave")
        if key and blocks and blocks[-1][0].params.get("interleave") == key:
            blocks[-1].append(sc)
        else:
            blocks.append([sc])
    return blocks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    procs.use_proxy_cores(args.workers)
    procs.pin_self()
    raise_nofile()
    run = Run(args)
    try:
        results = run.run()
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return 130
    finally:
        run.cleanup()
    sys.stdout.write(results.markdown())
    sys.stdout.flush()
    if args.json:
        results.write_json(args.json)
        sys.stderr.write(f"JSON written to {args.json}\n")
    if args.plot:
        from benchmarks.plot import plot
        try:
            plot(results, args.plot)
            sys.stderr.write(f"plot written to {args.plot}\n")
        except ImportError:
            sys.stderr.write("--plot needs matplotlib: pip install 'cfproxy[bench]'\n")
            return 1
    return 0
