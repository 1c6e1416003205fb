"""The 60-second soak (`python -m benchmarks soak --minutes 1`) in the normal suite.

One bounded soak of a real cfproxy subprocess with real target servers, run
once for the module: route churn, browser traffic, WebSockets, clients giving
up, faulty and stopped targets. The tests read its JSON: the workload ran in
full, the samples have what an operator watches, and the verdict's rules hold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOAK_TIMEOUT = 150  # 60 s of soak + start-up, stop and plot, on a busy 2-core machine


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("soak")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    r = subprocess.run([sys.executable, "-m", "benchmarks", "soak", "--minutes", "1",
                        "--pause-s", "6", "--json", str(out / "soak.json"),
                        "--plot", str(out / "soak.png")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=SOAK_TIMEOUT)
    data = json.loads((out / "soak.json").read_text())
    return {"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr, "data": data,
            "plot": out / "soak.png"}


pytestmark = pytest.mark.timeout(SOAK_TIMEOUT + 30)


def test_soak_runs_every_part_of_the_workload(soak: dict) -> None:
    c = soak["data"]["counts"]
    assert c["ok"] > 500, c
    assert c["api_add"] >= 1000 and c["api_delete"] > 0 and c["api_get"] > 0, c
    assert c["ws_opened"] > 0 and c["ws_echoes"] > 0, c
    assert c["ws_closed"] + c["ws_dropped"] > 0, c
    assert c["5xx_faulted"] > 0, c  # the faulty targets did fail their requests
    assert c["target_stops"] > 0, c
    for action in ("half_head", "half_body", "hang", "trickle", "connect_close"):
        assert c.get(f"gave_up_{action}", 0) > 0, (action, c)


def test_soak_samples_what_an_operator_watches(soak: dict) -> None:
    samples = soak["data"]["samples"]
    assert len(samples) >= 20
    phases = [s["phase"] for s in samples]
    assert phases[0] == "warmup" and phases[-1] == "pause" and "traffic" in phases
    during = [s for s in samples if s["phase"] != "pause"]
    assert max(s["client_conns"] for s in during) > 0
    assert max(s["tunnels"] for s in during) > 0
    assert all(s["fds"] > 0 and s["rss_mib"] > 5 for s in samples)
    assert all(s["pooled"] is not None and s["lag_ms"] is not None for s in samples)
    try:
        import matplotlib  # noqa: F401  (the bench extra; CI's test extra may lack it)
    except ImportError:
        assert "no plot: matplotlib is missing" in soak["stderr"]
    else:
        assert soak["plot"].stat().st_size > 10_000
    assert "| t (s) | phase | fds |" in soak["stdout"]


def test_soak_sees_no_5xx_for_healthy_targets(soak: dict) -> None:
    c = soak["data"]["counts"]
    assert c.get("5xx_healthy", 0) == 0, soak["data"]["examples"]
    assert c.get("api_5xx", 0) == 0, soak["data"]["examples"]


def test_soak_rss_stays_flat_after_warmup(soak: dict) -> None:
    f = soak["data"]["figures"]
    assert f["rss_growth_mib"] <= f["rss_growth_allowed_mib"], f


def test_soak_passes_and_exits_zero(soak: dict) -> None:
    assert soak["data"]["verdict"] == "pass", soak["data"]["reasons"]
    assert soak["rc"] == 0, soak["stdout"][-2000:]
