"""The soak's output: a markdown table on stdout, a JSON file, and a PNG plot.

The table shows at most ~30 samples (evenly spaced, plus the last sample of
every pause, where the rules look) and closes with the start / after warm-up /
end figures and the verdict. The JSON file has every sample. The plot needs
matplotlib (`pip install 'cfproxy[bench]'`); without it the soak says so and
goes on.
"""

from __future__ import annotations

import json

from benchmarks.soak.sampler import Sample
from benchmarks.soak.verdict import pause_ends, rest_level

COLUMNS = ("t (s)", "phase", "fds", "fds − pooled", "RSS (MiB)", "client conns",
           "upstream conns", "pooled", "tunnels", "loop lag (ms)", "proxy 5xx", "timeouts",
           "requests", "5xx healthy")


def _cell(v: object) -> str:
    return "–" if v is None else str(v)


def _row(s: Sample) -> list[str]:
    c = s.counts
    return [f"{s.t:.0f}", s.phase, str(s.fds), str(rest_level(s)), f"{s.rss_mib:.1f}",
            str(s.client_conns), str(s.upstream_conns), _cell(s.pooled), _cell(s.tunnels),
            _cell(s.lag_ms), _cell(s.proxy_5xx),
            str(sum(s.timeouts.values())) if s.timeouts else "–", str(c.get("requests", 0)),
            str(c.get("5xx_healthy", 0))]


def shown_samples(samples: list[Sample], rows: int = 30) -> list[Sample]:
    keep = set(id(s) for s in pause_ends(samples))
    step = max(1, len(samples) // rows)
    return [s for k, s in enumerate(samples)
            if k % step == 0 or id(s) in keep or k == len(samples) - 1]


def markdown(meta: dict, samples: list[Sample], counts: dict, passed: bool | None,
             reasons: list[str], figures: dict, examples: list[str]) -> str:
    out = [f"soak: {meta['minutes']} min, variant {meta['variant']}, proxy "
           f"`{' '.join(meta['proxy_args'])}`", "",
           "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(_row(s)) + " |" for s in shown_samples(samples)]
    if samples:
        ends = pause_ends(samples)
        marks = [("start", samples[0])]
        if ends:
            marks += [("after warm-up", ends[0]), ("end", ends[-1])]
        out += ["", "| when | fds | fds − pooled | RSS (MiB) | loop lag (ms) |", "|---|---|---|---|---|"]
        out += [f"| {name} | {s.fds} | {rest_level(s)} | {s.rss_mib:.1f} | {_cell(s.lag_ms)} |"
                for name, s in marks]
        lags = [s.lag_ms for s in samples if s.lag_ms is not None]
        if lags:
            out.append(f"\nloop lag source: {samples[-1].lag_source}; max {max(lags):.1f} ms")
    out.append("\nworkload: " + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())))
    if examples:
        out.append("\nexamples of unexpected answers:\n" + "\n".join(f"- {e}" for e in examples))
    if passed is None:
        out.append("\nSKIPPED")
    else:
        out.append("\n" + ("PASS" if passed else "FAIL") + "".join(f"\n- {r}" for r in reasons))
    return "\n".join(out) + "\n"


def write_json(path: str, meta: dict, samples: list[Sample], counts: dict,
               passed: bool | None, reasons: list[str], figures: dict,
               examples: list[str]) -> None:
    data = {"meta": meta, "verdict": "skipped" if passed is None else "pass" if passed else "fail",
            "reasons": reasons, "figures": figures, "counts": counts, "examples": examples,
            "samples": [s.as_dict() for s in samples]}
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")


def plot(path: str, meta: dict, samples: list[Sample]) -> None:
    """fds, RSS, connections and event-loop lag over time; pauses shaded. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(10, 10), sharex=True)
    panels = [
        ("open fds", [("fds", [s.fds for s in samples]),
                      ("fds − idle pooled", [rest_level(s) for s in samples])]),
        ("RSS (MiB)", [("RSS", [s.rss_mib for s in samples])]),
        ("connections", [("client", [s.client_conns for s in samples]),
                         ("upstream", [s.upstream_conns for s in samples]),
                         ("pooled (idle)", [s.pooled for s in samples]),
                         ("tunnels", [s.tunnels for s in samples])]),
        (f"loop lag (ms; {samples[-1].lag_source if samples else ''})",
         [("lag", [s.lag_ms for s in samples])]),
    ]
    for ax, (title, series) in zip(axes, panels, strict=True):
        for label, ys in series:
            if any(y is not None for y in ys):
                ax.plot(t, [float("nan") if y is None else y for y in ys], label=label)
        ax.set_ylabel(title, fontsize=8)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7, loc="upper left")
        start = None
        for k, s in enumerate(samples):
            if s.phase == "pause" and start is None:
                start = s.t
            if start is not None and (k + 1 == len(samples) or samples[k + 1].phase != "pause"):
                ax.axvspan(start, s.t, color="grey", alpha=0.15)
                start = None
    axes[-1].set_xlabel("seconds (grey: traffic paused)")
    fig.suptitle(f"cfproxy soak, {meta['minutes']} min, variant {meta['variant']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
