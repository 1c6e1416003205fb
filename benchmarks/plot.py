"""`--plot FILE.png`: the ratios to CHP as a horizontal bar chart (matplotlib, optional).

Owns the chart only. Every bar is "times better than CHP" (for lower-is-better
metrics the ratio is inverted), on a log scale, one bar per peer and metric, so
a reader sees at a glance where cfproxy stands between CHP (1×) and nginx.
"""

from __future__ import annotations

from benchmarks.report import Results
from benchmarks.scenarios import SCENARIOS


def plot(results: Results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = [p for p in results.peers if p != "chp"]
    rows: list[str] = []
    data: dict[str, list[float | None]] = {p: [] for p in peers}
    for sc in SCENARIOS:
        if sc.id not in results.ran:
            continue
        for m in sc.metrics:
            if not m.in_table or m.unit == "×":
                continue
            chp = results.median(sc.id, m.key, "chp")
            if not chp:
                continue
            rows.append(f"{sc.id}: {m.label}")
            for p in peers:
                v = results.median(sc.id, m.key, p)
                data[p].append(None if not v else (v / chp if m.higher_is_better else chp / v))
    if not rows:
        raise ValueError("nothing to plot: no scenario has a CHP figure")
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) * max(1, len(peers)) / 2 + 1.5))
    height = 0.8 / max(1, len(peers))
    colors = {"cfproxy": "#1f77b4", "nginx": "#2ca02c", "direct": "#aaaaaa"}
    for i, p in enumerate(peers):
        ys = [r + i * height for r in range(len(rows))]
        xs = [v if v else 0 for v in data[p]]
        ax.barh(ys, xs, height=height, label=p, color=colors.get(p))
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_yticks([r + height * (len(peers) - 1) / 2 for r in range(len(rows))])
    ax.set_yticklabels(rows, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("times better than CHP 5.3.0 (log scale; 1 = CHP)")
    ax.set_title("cfproxy benchmarks: ratio to CHP, same run, same machine")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
