"""Results of a run: collected per round, reduced to medians, printed as markdown / JSON.

Owns the Results container and every way it is shown: the markdown table on
stdout (absolute figures per peer, ratios to CHP and cfproxy-to-nginx, the
cfproxy target and whether it is met), and the JSON file (`--json`).
"""

from __future__ import annotations

import json
import statistics

from benchmarks.scenarios import BY_ID, ISSUE10_TARGETS, SCENARIOS, Metric, Scenario


class Results:
    """values[scenario][metric][peer] = per-round values; errors[scenario][peer] = message."""

    def __init__(self, peers: list[str]) -> None:
        self.peers = peers
        self.values: dict[str, dict[str, dict[str, list[float]]]] = {}
        self.errors: dict[str, dict[str, str]] = {}
        self.notes: list[str] = []
        self.meta: dict = {}
        self.ran: list[str] = []

    def add(self, scenario: str, peer: str, metrics: dict) -> None:
        sc = BY_ID[scenario]
        per = self.values.setdefault(scenario, {})
        for m in sc.metrics:
            if m.key in metrics and metrics[m.key] is not None:
                per.setdefault(m.key, {}).setdefault(peer, []).append(float(metrics[m.key]))

    def error(self, scenario: str, peer: str, msg: str) -> None:
        self.errors.setdefault(scenario, {}).setdefault(peer, " ".join(str(msg).split())[:300])

    def median(self, scenario: str, metric: str, peer: str) -> float | None:
        vals = self.values.get(scenario, {}).get(metric, {}).get(peer)
        return statistics.median(vals) if vals else None

    # --- output -----------------------------------------------------------------------------
    def to_json(self) -> dict:
        out = {"meta": self.meta, "peers": self.peers, "notes": self.notes, "scenarios": []}
        for sc in SCENARIOS:
            if sc.id not in self.ran:
                continue
            ms = []
            for m in sc.metrics:
                vals = {p: {"median": self.median(sc.id, m.key, p),
                            "rounds": self.values.get(sc.id, {}).get(m.key, {}).get(p, [])}
                        for p in self.peers if p in sc.peers}
                ms.append({"key": m.key, "label": m.label, "unit": m.unit,
                           "higher_is_better": m.higher_is_better, "values": vals,
                           "targets": [t.text for t in m.targets],
                           "target_met": self.target_met(sc, m)})
            out["scenarios"].append({"id": sc.id, "title": sc.title, "params": sc.params,
                                     "metrics": ms, "errors": self.errors.get(sc.id, {})})
        out["targets"] = self.targets_rows()
        return out

    def targets_rows(self) -> list[dict]:
        """Issue 10's targets with what cfproxy measured in this run (ratios to the peers)."""
        rows = []
        for what, cells in ISSUE10_TARGETS:
            cells = [(sid, key) for sid, key in cells if sid in self.ran]
            if not cells:
                continue
            measured, verdicts, texts = [], [], []
            for sid, key in cells:
                sc = BY_ID[sid]
                m = next(m for m in sc.metrics if m.key == key)
                v = self.median(sid, key, "cfproxy")
                verdicts.append(self.target_met(sc, m))
                for t in m.targets:
                    if t.text not in texts:
                        texts.append(t.text)
                if v is None:
                    measured.append(f"{sid}: n/a")
                    continue
                parts = []
                for t in m.targets:
                    ref = self.median(sid, key, t.ref) if t.ref else None
                    if t.ref and ref:
                        parts.append(f"{v / ref:.2f}× {t.ref}")
                    elif not t.ref:
                        unit = m.unit if m.unit == "×" else " " + m.unit
                        parts.append(f"{_fmt(v, m.digits or 1)}{unit}")
                label = ("" if len(cells) == 1 else sid.removeprefix("shape-")
                         if len({c[0] for c in cells}) > 1 else key.removesuffix("_mib"))
                measured.append((f"{label} " if label else "") + ", ".join(parts))
            met = (False if any(x is False for x in verdicts)
                   else True if all(x is True for x in verdicts) else None)
            rows.append({"target": f"{what}: {' and '.join(texts)}", "measured": measured,
                         "met": met})
        return rows

    def targets_markdown(self) -> str:
        rows = self.targets_rows()
        if not rows:
            return ""
        lines = ["Targets (issue 10; cfproxy, this run):", "",
                 "| target | measured | met |", "|---|---|---|"]
        for r in rows:
            mark = "✅" if r["met"] else "❌" if r["met"] is False else "?"
            lines.append(f"| {r['target']} | {'; '.join(r['measured'])} | {mark} |")
        return "\n".join(lines)

    def write_json(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=2)
            f.write("\n")

    def target_met(self, sc: Scenario, m: Metric) -> bool | None:
        if not m.targets:
            return None
        v = self.median(sc.id, m.key, "cfproxy")
        if v is None:
            return None
        refs = {p: self.median(sc.id, m.key, p) for p in ("chp", "nginx")}
        checks = [t.check(v, refs) for t in m.targets]
        if any(c is False for c in checks):
            return False
        return True if all(c is True for c in checks) else None

    def ratio_columns(self) -> list[tuple[str, str, str]]:
        """(header, numerator peer, denominator peer) for every ratio shown."""
        cols = []
        if "chp" in self.peers:
            cols += [(f"{p}/CHP", p, "chp") for p in self.peers if p not in ("chp", "direct")]
        if "cfproxy" in self.peers and "nginx" in self.peers:
            cols.append(("cfproxy/nginx", "cfproxy", "nginx"))
        return cols

    def markdown(self) -> str:
        ratios = self.ratio_columns()
        head = ["scenario", "metric", *self.peers, *(r[0] for r in ratios), "cfproxy target"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for sc in SCENARIOS:
            if sc.id not in self.ran:
                continue
            errs = self.errors.get(sc.id, {})
            for m in sc.metrics:
                if not m.in_table:
                    continue
                arrow = "↑" if m.higher_is_better else "↓"
                row = [sc.id, f"{m.label} ({m.unit}) {arrow}"]
                for p in self.peers:
                    v = self.median(sc.id, m.key, p)
                    if p not in sc.peers:
                        row.append("–")
                    elif v is not None:
                        row.append(_fmt(v, m.digits))
                    elif p in errs:
                        row.append("error")
                    else:
                        row.append("n/a")
                for _, num, den in ratios:
                    a = self.median(sc.id, m.key, num)
                    b = self.median(sc.id, m.key, den)
                    row.append(f"{a / b:.2f}×" if a is not None and b else "")
                met = self.target_met(sc, m)
                tgt = " and ".join(t.text for t in m.targets)
                row.append(f"{tgt} {'✅' if met else '❌' if met is False else '?'}" if tgt else "")
                lines.append("| " + " | ".join(row) + " |")
        out = ["\n".join(lines)]
        targets = self.targets_markdown()
        if targets:
            out.append("\n" + targets)
        errs = [(s, p, e) for s, d in self.errors.items() for p, e in d.items()]
        if errs:
            out.append("\nErrors:\n" + "\n".join(f"- {s} / {p}: {e}" for s, p, e in errs))
        if self.notes:
            out.append("\nNotes:\n" + "\n".join(f"- {n}" for n in self.notes))
        return "\n".join(out) + "\n"


def _fmt(v: float, digits: int) -> str:
    if digits == 0 and abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"
