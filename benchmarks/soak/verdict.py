"""The soak's pass/fail rules, applied to the samples taken after warm-up.

Every pause in traffic ends with a sample of a proxy at rest: no client
connection of the soak's is open, every user's route exists, and what the proxy
still holds open should be its listeners, its logs and idle pooled upstream
connections. The first pause (right after warm-up) is the reference level; the
last one is compared with it:

- fds: open fds minus idle pooled connections must come back to the warm-up
  level (a few fds of slack); a leaked socket per abandoned request shows here.
  Without a pooled-connections metric, upstream sockets at rest count as pooled.
- RSS: may grow by at most 10% or 20 MiB, whichever is larger.
- 5xx: none may answer a request to a user served by a healthy target, nor an
  API request; 5xx from the faulted targets' users are expected and counted.
- the proxy must be alive at the end.
"""

from __future__ import annotations

from benchmarks.soak.sampler import Sample

FD_SLACK = 4
RSS_GROWTH_FRACTION = 0.10
RSS_GROWTH_MIB = 20.0


def rest_level(s: Sample) -> int:
    """fds a proxy at rest holds beyond its idle pooled connections."""
    pooled = s.pooled if s.pooled is not None else s.upstream_conns
    return s.fds - pooled


def pause_ends(samples: list[Sample]) -> list[Sample]:
    """The last sample of every pause."""
    out = []
    for k, s in enumerate(samples):
        if s.phase == "pause" and (k + 1 == len(samples) or samples[k + 1].phase != "pause"):
            out.append(s)
    return out


def judge(samples: list[Sample], counts: dict, proxy_alive: bool) -> tuple[bool, list[str], dict]:
    """(passed, reasons it failed, the figures the rules looked at)."""
    reasons: list[str] = []
    ends = pause_ends(samples)
    figures: dict = {"pauses": len(ends)}
    if not proxy_alive:
        reasons.append("the proxy died during the soak")
    if len(ends) < 2:
        reasons.append(f"too few pauses to compare ({len(ends)}; the soak ended early)")
    else:
        base, last = ends[0], ends[-1]
        figures.update({
            "warmup_fds": base.fds, "end_fds": last.fds,
            "warmup_pooled": base.pooled, "end_pooled": last.pooled,
            "warmup_rest_fds": rest_level(base), "end_rest_fds": rest_level(last),
            "warmup_rss_mib": base.rss_mib, "end_rss_mib": last.rss_mib,
            "pooled_source": "metric" if last.pooled is not None else "/proc upstream sockets",
        })
        if rest_level(last) > rest_level(base) + FD_SLACK:
            reasons.append(
                f"fds did not return to the warm-up level: {rest_level(last)} at the end vs "
                f"{rest_level(base)} after warm-up (fds minus idle pooled connections; "
                f"{last.fds} fds, {last.pooled} pooled, {last.upstream_conns} upstream and "
                f"{last.client_conns} client sockets at rest; upstream by target: "
                f"{last.upstream_by_target})")
        allowed = max(RSS_GROWTH_FRACTION * base.rss_mib, RSS_GROWTH_MIB)
        figures["rss_growth_mib"] = round(last.rss_mib - base.rss_mib, 1)
        figures["rss_growth_allowed_mib"] = round(allowed, 1)
        if last.rss_mib - base.rss_mib > allowed:
            reasons.append(f"RSS grew by {last.rss_mib - base.rss_mib:.1f} MiB after warm-up "
                           f"({base.rss_mib:.1f} -> {last.rss_mib:.1f}; allowed {allowed:.1f})")
    if counts.get("5xx_healthy"):
        reasons.append(f"{counts['5xx_healthy']} 5xx answers to requests for healthy targets")
    if counts.get("api_5xx"):
        reasons.append(f"{counts['api_5xx']} API requests failed (5xx or no answer)")
    if not counts.get("ok"):
        reasons.append("no request was answered successfully: the workload did not run")
    return not reasons, reasons, figures
