"""CI smoke run of `python -m benchmarks`: a few seconds, cfproxy only.

Keeps the benchmark suite from rotting: the CLI runs end to end against a real
cfproxy, the markdown table prints, and the figures are positive; the real-shaped
traffic (browser heads from the generated wrk script, response shapes, the
pipelining client) is what it claims to be. It asserts no speed (no timed
performance asserts); bad flags are rejected with the flag named.
"""

from __future__ import annotations

import json
import os
import shutil
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _bench(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_quick_cfproxy_run_prints_table_with_positive_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = _bench("--quick", "--only", "small-get-10,ws-echo-1", "--peers", "cfproxy",
               "--rounds", "1", "--duration", "1", "--json", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[0].startswith("| scenario | metric | cfproxy |")
    assert any(ln.startswith("| small-get-10 | requests/s") for ln in lines)
    assert any(ln.startswith("| ws-echo-1 | round trips/s") for ln in lines)
    assert "error" not in r.stdout.split("\nErrors:")[0], r.stdout
    data = json.loads(out.read_text())
    figures = {(sc["id"], m["key"]): m["values"]["cfproxy"]["median"]
               for sc in data["scenarios"] for m in sc["metrics"]}
    assert figures[("small-get-10", "req_per_s")] > 0
    assert figures[("small-get-10", "p99_ms")] > 0
    assert figures[("ws-echo-1", "ops_per_s")] > 0
    assert all(not sc["errors"] for sc in data["scenarios"]), data


def test_unknown_scenario_is_rejected_naming_the_flag() -> None:
    r = _bench("--only", "no-such-scenario", timeout=30)
    assert r.returncode == 2
    assert "--only" in r.stderr and "no-such-scenario" in r.stderr
    assert r.stdout == ""


def test_unknown_peer_is_rejected_naming_the_flag() -> None:
    r = _bench("--peers", "cfproxy,haproxy", timeout=30)
    assert r.returncode == 2
    assert "--peers" in r.stderr and "haproxy" in r.stderr


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_browser_and_shape_rows_report_ratio_to_best_shape_and_issue10_targets(
        tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = _bench("--quick", "--only", "browser-100,shape-plain,shape-tornado-cookie,"
               "shape-nginx-chunked", "--peers", "cfproxy", "--rounds", "1", "--duration", "1",
               "--json", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    assert all(not sc["errors"] for sc in data["scenarios"]), data
    fig = {(sc["id"], m["key"]): m["values"]["cfproxy"]["median"]
           for sc in data["scenarios"] for m in sc["metrics"]}
    assert fig[("browser-100", "req_per_s")] > 0
    ratios = [fig[(f"shape-{s}", "vs_best")] for s in ("plain", "tornado-cookie", "nginx-chunked")]
    assert max(ratios) == 1.0 and all(0 < x <= 1.0 for x in ratios), ratios
    assert "| shape-nginx-chunked | ÷ best shape (requests/s) (×) ↑ |" in r.stdout
    assert "Targets (issue 10; cfproxy, this run):" in r.stdout
    assert [t["target"].split(":")[0] for t in data["targets"]] == [
        "small GET keep-alive, 100 conns, browser-shaped heads",
        "each response shape (Content-Length / chunked, ± Connection"]


def test_pipeline_scenario_measures_rss_growth_on_all_three_ports(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = _bench("--quick", "--only", "pipeline", "--peers", "cfproxy", "--json", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    (sc,) = data["scenarios"]
    assert not sc["errors"], sc["errors"]
    fig = {m["key"]: m["values"]["cfproxy"]["median"] for m in sc["metrics"]}
    for kind in ("public", "api", "metrics"):
        assert fig[f"{kind}_sent_mb"] > 0.01, fig  # the client did write pipelined requests
        assert fig[f"{kind}_mib"] is not None, fig


class _HeadRecorder(socketserver.BaseRequestHandler):
    """Answers every request head with a small keep-alive 200 and keeps the heads."""

    heads: list[bytes] = []

    def handle(self) -> None:
        buf = b""
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                head, buf = buf.split(b"\r\n\r\n", 1)
                if len(self.heads) < 20000:
                    self.heads.append(head)
                self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_wrk_browser_script_sends_browser_heads_spread_over_many_users(tmp_path: Path) -> None:
    from benchmarks.wrkload import run_wrk

    _HeadRecorder.heads = []
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _HeadRecorder) as srv:
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            r = run_wrk(srv.server_address[1], mode="browser", conns=2, duration=1,
                        tmp=str(tmp_path))
        finally:
            srv.shutdown()
    heads = _HeadRecorder.heads
    assert r["requests"] > 100 and r["errors"] == 0, r
    assert len(heads) > 100
    users = {h.split(b" ")[1].split(b"/")[2] for h in heads}
    assert len(users) > min(len(heads), 1000) // 4, len(users)  # spread over many users
    h = heads[0]
    assert h.startswith(b"GET /user/u") and h.split(b"/")[3] in (b"api", b"lab", b"static")
    fields = dict(line.split(b": ", 1) for line in h.split(b"\r\n")[1:])
    assert 250 <= len(fields[b"Cookie"]) <= 350, fields[b"Cookie"]
    for name in (b"User-Agent", b"Accept", b"Accept-Language", b"Accept-Encoding", b"Host"):
        assert fields[name], name
    assert 600 <= len(h) <= 900, len(h)


def test_soak_rejects_unbounded_minutes_naming_the_flag() -> None:
    r = _bench("soak", "--minutes", "0", timeout=30)
    assert r.returncode == 2
    assert "--minutes" in r.stderr
