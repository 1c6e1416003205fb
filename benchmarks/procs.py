"""Child processes of the benchmark: start pinned to a core, measure, stop by PID.

Owns every process the benchmark starts. Each one is registered here when it is
spawned and `stop_all()` (called from the runner's `finally`) terminates any
still running, by PID: SIGTERM, then SIGKILL after a grace period, then any
children it left behind (nginx workers). Nothing is ever killed by name.

CPU layout (on machines with >= 2 cores): the proxy under test runs on core 0
(`taskset -c 0`), the runner itself, the load generators (wrk, wsload) and the
backends on core 1 — they inherit the runner's affinity, set by `pin_self`. With
`--workers N` and at least N+1 cores, the proxy gets cores 0..N-1 and the rest core N.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

_RUNNING: list[subprocess.Popen] = []

PROXY_CPU = 0
LOAD_CPU = 1
PROXY_CPUS: tuple[int, ...] = (PROXY_CPU,)  # `--workers N` widens this (use_proxy_cores)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def pinning_enabled() -> bool:
    return (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity")


def use_proxy_cores(n: int) -> None:
    """`--workers N`: with at least N+1 cores, the proxies run on cores 0..N-1 and the load on
    core N; with fewer, everything stays as it is (one proxy core: compare per CPU-second)."""
    global PROXY_CPUS, LOAD_CPU
    if n > 1 and cpu_count() >= n + 1:
        PROXY_CPUS = tuple(range(n))
        LOAD_CPU = n


def pin_self() -> None:
    """Pin this process (and so every child not pinned otherwise) to the load core."""
    if pinning_enabled():
        os.sched_setaffinity(0, {LOAD_CPU})


def proxy_prefix() -> list[str]:
    """Command prefix that runs a proxy on the proxy core (empty when pinning is off)."""
    if pinning_enabled() and shutil.which("taskset"):
        return ["taskset", "-c", ",".join(str(c) for c in PROXY_CPUS)]
    return []


def spawn(cmd: Sequence[str], *, env: dict | None = None, log_path: str | None = None,
          cwd: str | None = None, stdout=None) -> subprocess.Popen:
    """Start a child process and register it for stop_all()."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(list(cmd), env=env, cwd=cwd,
                                stdout=stdout if stdout is not None else out,
                                stderr=out, stdin=subprocess.DEVNULL)
    finally:
        if log_path:
            out.close()
    _RUNNING.append(proc)
    return proc


def children(pid: int) -> list[int]:
    """Direct children of pid (Linux /proc)."""
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
    except OSError:
        pass
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    """Stop one child by PID (and the children it started), then reap it."""
    if proc is None:
        return
    kids = children(proc.pid)
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for pid in kids:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    if proc in _RUNNING:
        _RUNNING.remove(proc)


def stop_all() -> None:
    for proc in list(_RUNNING):
        stop(proc)


def rss_kib(pid: int, tree: bool = True) -> int:
    """Resident set size of pid (plus its children when tree=True), KiB."""
    total = 0
    pids = [pid] + (children(pid) if tree else [])
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """User+system CPU time used so far by pid (and its children), seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in [pid] + (children(pid) if tree else []):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.01)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f}s")
