"""WebSocket echo round trips/s through cfproxy and CHP 5.3.0, in one run (issue 4's closing number).

    python -m tests.support.ws_echo_bench [--conns 50] [--duration 5] [--chp PATH]

Peers are wsproto (tests/support/ws_backend.py as the echo server in its own process, and a
wsproto client here): C connections, one 32-byte text message in flight each. The proxy runs
pinned to core 0 (`taskset -c 0`), backend and client to core 1. Prints one line per target
(direct, cfproxy, chp) with round trips/s, p50, p99 and the proxy's CPU time per round
trip (user+system from /proc, the number that stays meaningful on a busy machine). With wsproto peers on one shared core
the peers cap the rate; `python -m benchmarks.wsload` (raw pre-built frames) is the cheaper
client used by the benchmark suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

from tests.support.proxy_process import free_port, wait_for_port

CHP = "/tmp/chp/node_modules/.bin/configurable-http-proxy"


async def _client_load(port: int, conns: int, duration: float, warmup: float = 0.5) -> dict:
    from tests.support.ws_client import WSClient

    clients = []
    for i in range(0, conns, 50):
        batch = await asyncio.gather(*(WSClient.connect(port=port, path="/bench?silent=1")
                                       for _ in range(min(50, conns - i))))
        clients.extend(batch)
    lat: list[float] = []
    state = {"measuring": False, "ops": 0, "running": True}
    perf = time.perf_counter

    async def loop(ws: WSClient) -> None:
        msg = "x" * 32
        while state["running"]:
            t0 = perf()
            ws.send_nowait(msg)
            await ws.recv()
            if state["measuring"]:
                state["ops"] += 1
                lat.append(perf() - t0)

    tasks = [asyncio.ensure_future(loop(ws)) for ws in clients]
    await asyncio.sleep(warmup)
    state["measuring"] = True
    t0 = perf()
    await asyncio.sleep(duration)
    state["measuring"] = False
    elapsed = perf() - t0
    state["running"] = False
    await asyncio.sleep(0.05)
    for t in tasks:
        t.cancel()
    for ws in clients:
        ws.abort()
    lat.sort()

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else 0.0

    return {"ops_per_s": state["ops"] / elapsed, "p50_ms": pct(0.5), "p99_ms": pct(0.99)}


def _client_main(port: int, conns: int, duration: float) -> None:
    import uvloop
    print(json.dumps(uvloop.run(_client_load(port, conns, duration))), flush=True)


def _run_client(port: int, conns: int, duration: float) -> dict:
    out = subprocess.run(
        ["taskset", "-c", "1", sys.executable, "-m", "tests.support.ws_echo_bench",
         "--client-port", str(port), "--conns", str(conns), "--duration", str(duration)],
        capture_output=True, text=True, timeout=duration + 60)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cpu_seconds(pid: int) -> float:
    """user+system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start(cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})


def _stop(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--chp", default=CHP)
    ap.add_argument("--client-port", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client_port:
        _client_main(args.client_port, args.conns, args.duration)
        return
    bport = free_port()
    backend = _start(["taskset", "-c", "1", sys.executable, "-m", "tests.support.ws_backend",
                      "--port", str(bport)])
    procs = [backend]
    try:
        wait_for_port(bport)
        target = f"http://127.0.0.1:{bport}"
        results = {"direct": _run_client(bport, args.conns, args.duration)}
        env = {"CONFIGPROXY_AUTH_TOKEN": "secret"}
        for name, cmd in (("cfproxy", [sys.executable, "-m", "cfproxy"]), ("chp", [args.chp])):
            if name == "chp" and not os.path.exists(args.chp):
                continue
            port, api = free_port(), free_port()
            p = _start(["taskset", "-c", "0", *cmd, "--ip", "127.0.0.1", "--port", str(port),
                        "--api-ip", "127.0.0.1", "--api-port", str(api),
                        "--default-target", target, "--log-level", "error"], env)
            procs.append(p)
            wait_for_port(port)
            wait_for_port(api)
            time.sleep(0.3)
            cpu0 = _cpu_seconds(p.pid)
            r = results[name] = _run_client(port, args.conns, args.duration)
            # CPU the proxy spent per round trip (includes the client's connect and warm-up)
            ops = r["ops_per_s"] * args.duration
            r["proxy_cpu_us"] = (_cpu_seconds(p.pid) - cpu0) / ops * 1e6 if ops else 0.0
            _stop(p)
        for name, r in results.items():
            cpu = f"   proxy CPU {r['proxy_cpu_us']:.1f} us/round trip" if "proxy_cpu_us" in r else ""
            print(f"{name:8s} {r['ops_per_s']:9.0f} round trips/s   p50 {r['p50_ms']:.2f} ms"
                  f"   p99 {r['p99_ms']:.2f} ms{cpu}")
        if "chp" in results:
            print(f"cfproxy/chp = {results['cfproxy']['ops_per_s'] / results['chp']['ops_per_s']:.2f}x")
    finally:
        for p in procs:
            if p.poll() is None:
                _stop(p)


if __name__ == "__main__":
    main()
