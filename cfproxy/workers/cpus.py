"""How many CPUs this process may use: `--workers auto`.

    usable_cpus() -> int     >= 1

The answer is the smaller of
- the CPU affinity mask (`os.sched_getaffinity(0)`: taskset, cpusets, Kubernetes
  static CPU manager), and
- the cgroup CPU quota, rounded up: cgroup v2 `cpu.max` ("200000 100000" = 2 CPUs,
  "max ..." = no limit) of this process's cgroup and every ancestor; cgroup v1
  `cpu.cfs_quota_us / cpu.cfs_period_us` (-1 = no limit). A Kubernetes pod with a
  1-CPU limit on a 64-core node thus gets 1.

`root` lets tests point at a fake /sys/fs/cgroup and /proc/self/cgroup.
"""

from __future__ import annotations

import math
import os


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _quota_cpus(quota: float, period: float) -> int | None:
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def _cgroup_paths(proc_cgroup: str | None) -> tuple[str | None, str | None]:
    """(v2 path, v1 cpu-controller path) from the text of /proc/self/cgroup."""
    v2 = v1 = None
    for line in (proc_cgroup or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(path: str) -> list[str]:
    """"/a/b" -> ["/a/b", "/a", "/"]."""
    out = []
    path = "/" + path.strip("/")
    while True:
        out.append(path)
        if path == "/":
            return out
        path = path.rsplit("/", 1)[0] or "/"


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> int | None:
    """The CPU quota of this process's cgroup (v2 or v1) in whole CPUs, or None for no limit."""
    v2, v1 = _cgroup_paths(_read(proc_cgroup))
    limits: list[int] = []
    if v2 is not None:
        for path in _ancestors(v2):
            text = _read(os.path.join(root, path.lstrip("/"), "cpu.max"))
            if not text:
                continue
            fields = text.split()
            if len(fields) == 2 and fields[0] != "max":
                try:
                    n = _quota_cpus(float(fields[0]), float(fields[1]))
                except ValueError:
                    n = None
                if n is not None:
                    limits.append(n)
    if v1 is not None:
        # the mount is "cpu,cpuacct" or "cpu"; inside a container the path may be "/"
        for mount in ("cpu,cpuacct", "cpu", "cpuacct,cpu"):
            for path in dict.fromkeys([*_ancestors(v1), "/"]):
                base = os.path.join(root, mount, path.lstrip("/"))
                quota, period = _read(os.path.join(base, "cpu.cfs_quota_us")), _read(
                    os.path.join(base, "cpu.cfs_period_us"))
                if quota is None or period is None:
                    continue
                try:
                    n = _quota_cpus(float(quota), float(period))
                except ValueError:
                    n = None
                if n is not None:
                    limits.append(n)
    return min(limits) if limits else None


def usable_cpus(root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> int:
    """CPUs this process may use: min(affinity, cgroup quota), at least 1."""
    n = _affinity()
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is not None:
        n = min(n, limit)
    return max(1, n)
