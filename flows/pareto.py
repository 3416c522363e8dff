"""The sweep's trade-off picture: which trials are Pareto-optimal (accuracy up, latency and size
down) and a two-panel matplotlib figure of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def pareto_mask(df: pd.DataFrame, maximize: str, minimize: list[str]) -> pd.Series:
    """True for rows no other row dominates (at least as good on every axis, better on one).
    Rows with a missing value on any axis are never on the front."""
    cols = [maximize, *minimize]
    valid = df[cols].notna().all(axis=1)
    values = df.loc[valid, cols].to_numpy(dtype=float, copy=True)
    values[:, 0] = -values[:, 0]  # everything minimised
    keep = np.ones(len(values), dtype=bool)
    for i in range(len(values)):
        others = np.delete(values, i, axis=0)
        dominated = np.any(np.all(others <= values[i], axis=1) & np.any(others < values[i], axis=1))
        keep[i] = not dominated
    out = pd.Series(False, index=df.index)
    out[valid[valid].index] = keep
    return out


def pareto_plot(
    df: pd.DataFrame,
    path: Path,
    accuracy: str = "top1",
    latency: str = "latency_ms",
    size: str = "size_bytes",
    label: str = "trial",
    title: str = "kdflow sweep",
) -> Path:
    """Accuracy against latency (left) and against size (right); each panel's Pareto front is drawn
    as a line through its optimal trials."""
    from matplotlib.figure import Figure  # the object API: no global pyplot state, safe in threads

    fig = Figure(figsize=(11, 4.5), dpi=110)
    axes = fig.subplots(1, 2)
    done = df.dropna(subset=[accuracy])
    for ax, cost, unit, scale in (
        (axes[0], latency, "CPU latency at batch 1 (ms)", 1.0),
        (axes[1], size, "weights (KB)", 1 / 1024),
    ):
        sub = done.dropna(subset=[cost])
        if sub.empty:
            ax.text(0.5, 0.5, f"no {cost} measured", ha="center", va="center", transform=ax.transAxes)
            continue
        front = pareto_mask(sub, accuracy, [cost])
        x, y = sub[cost] * scale, sub[accuracy] * 100
        ax.scatter(x[~front], y[~front], color="tab:gray", alpha=0.7, label="dominated")
        ax.scatter(x[front], y[front], color="tab:red", zorder=3, label="Pareto-optimal")
        line = sub[front].sort_values(cost)
        ax.plot(line[cost] * scale, line[accuracy] * 100, color="tab:red", alpha=0.5)
        for _, row in sub.iterrows():
            ax.annotate(
                str(row[label]),
                (row[cost] * scale, row[accuracy] * 100),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
        ax.set_xlabel(unit)
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
