"""The PNG of ``riskstream evaluate --plot``: per model, the precision-recall curve (with the
review and step-up budgets marked) and the calibration (probability given against fraud rate
seen, by bin)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_models(out: str | Path, result: dict, scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (pr, cal) = plt.subplots(1, 2, figsize=(13, 5.5), dpi=110)
    for name, (score, y) in scores.items():
        if name.startswith("  "):  # the split of the deciding model: its curve is already there
            continue
        order = np.argsort(-score, kind="stable")
        hits = np.cumsum(y[order])
        precision, recall = hits / np.arange(1, len(y) + 1), hits / max(1, y.sum())
        m = result["models"][name]
        line, = pr.plot(recall, precision, lw=1.2, label=f"{name.strip()} (AP {m['average_precision']:.3f})")
        for budget, marker in (("review_budget", "o"), ("step_up_budget", "s")):
            b = m[budget]
            pr.plot([b["recall"]], [b["precision"]], marker, color=line.get_color(), ms=7)
        rows = m["calibration"]
        cal.plot([r["mean_pd"] for r in rows], [r["default_rate"] for r in rows], "o-", color=line.get_color(),
                 label=name.strip())
    pr.set(xlabel="recall (share of labelled frauds caught)", ylabel="precision",
           title="precision-recall; o review budget, s step-up budget (per day)", xlim=(0, 1), ylim=(0, 1.02))
    pr.legend(fontsize=8, loc="upper right")
    cal.plot([1e-4, 1], [1e-4, 1], ":", color="0.5", label="perfect calibration")
    cal.set(xscale="log", yscale="symlog", xlabel="probability given (bin mean)", ylabel="fraud rate seen",
            title="calibration", xlim=(1e-4, 1))
    cal.set_yscale("symlog", linthresh=1e-3)
    cal.set_ylim(0, 1.05)
    cal.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"riskstream evaluate {result['from']} .. {result['to']}: {result['decisions']:,} decisions, "
                 f"{result['frauds']:,} labelled frauds")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
