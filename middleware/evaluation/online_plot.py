"""The chart of an online evaluation report (docs/METHOD.md §4): win rates with their CIs.

Left (a): per user, grouped bars of the own / other / baseline win rates with bootstrap 95% CIs.
Right (b): the same pooled over users. A dashed line marks chance (1/3); ties, skips and pending
trials are printed under each group so that nothing silently disappears from the picture.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from middleware.evaluation.online import CHANCE, CONDITIONS

COLORS = {"own": "#1f77b4", "other": "#ff7f0e", "baseline": "#7f7f7f"}
NAMES = {"own": "own persona", "other": "other user's persona", "baseline": "no persona (baseline)"}


def _bars(ax: Any, rows: list[dict[str, Any]], names: list[str]) -> None:
    xs = np.arange(len(rows))
    width = 0.26
    for i, condition in enumerate(CONDITIONS):
        rates, lows, highs = [], [], []
        for row in rows:
            cell = row["win_rate"][condition]
            rate = cell["rate"] or 0.0
            rates.append(rate)
            lows.append(rate - (cell["ci_low"] if cell["ci_low"] is not None else rate))
            highs.append((cell["ci_high"] if cell["ci_high"] is not None else rate) - rate)
        ax.bar(
            xs + (i - 1) * width,
            rates,
            width,
            yerr=[lows, highs],
            capsize=3,
            color=COLORS[condition],
            label=NAMES[condition],
            error_kw={"elinewidth": 0.9, "ecolor": "#222222"},
        )
    ax.axhline(CHANCE, color="#444444", lw=0.8, ls="--")
    ax.set_xticks(xs)
    ax.set_xticklabels(
        [
            f"{name}\nn={r['decided']} tie={r['ties']} skip={r['skips']}"
            + (f" pend={r['pending']}" if r["pending"] else "")
            for name, r in zip(names, rows, strict=True)
        ],
        fontsize=7,
    )
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("win rate among decided trials")


def render_png(report: dict[str, Any]) -> bytes:
    """The chart as PNG bytes."""
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in worker threads

    users = [r for r in report["per_user"] if r["trials"]]
    width = max(8.0, min(4.0 + 1.1 * len(users), 28.0))
    fig = Figure(figsize=(width, 4.6))
    ax_users, ax_pooled = fig.subplots(1, 2, gridspec_kw={"width_ratios": [max(len(users), 1), 1.8]})
    if users:
        _bars(ax_users, users, [r["user"] for r in users])
    else:
        ax_users.text(0.5, 0.5, "no trials yet", ha="center", va="center", transform=ax_users.transAxes)
        ax_users.set_xticks([])
    ax_users.set_title("(a) per user", fontsize=10)
    pooled = report["pooled"]
    _bars(ax_pooled, [pooled], [f"all users ({pooled['users']})"])
    tests = pooled["tests"]
    ax_pooled.set_title(
        "(b) aggregated\n"
        f"own vs baseline p={tests['own_vs_baseline']['p_value']:.3g}\n"
        f"own vs other p={tests['own_vs_other']['p_value']:.3g}",
        fontsize=9,
    )
    ax_pooled.set_ylabel("")
    handles, labels = ax_pooled.get_legend_handles_labels()
    name = (report.get("evaluation") or {}).get("name") or (report.get("evaluation") or {}).get("id", "")
    fig.suptitle(f"Blind own / other / baseline evaluation {name}".strip(), fontsize=11)
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def write_png(report: dict[str, Any], path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(render_png(report))
    return out
