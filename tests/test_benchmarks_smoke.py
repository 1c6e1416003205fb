"""CI smoke run of `python -m benchmarks`: a few seconds, cfproxy only.

Keeps the benchmark suite from rotting: the CLI runs end to end against a real
cfproxy, the markdown table prints, and the figures are positive. It asserts no
speed (no timed performance asserts); bad flags are rejected with the flag named.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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
