"""Per-epoch metrics: CSV and JSON logs and a learning-curve plot.

One record per (epoch, split); splits are ``train`` (running errors of the
training steps, with the params before each step), ``valid`` and
``replay_holdout``.  Epoch 0 holds the errors of the initial model.
Units: energy meV/atom, forces meV/Å, stress meV/Å³.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Sequence

from .checkpoint import write_json_atomic, write_text_atomic

COLUMNS = (
    "epoch", "split", "lr", "loss",
    "energy_mean", "energy_rmse", "energy_mae",
    "forces_rmse", "forces_mae",
    "stress_rmse", "stress_mae",
    "n_structures", "time_s",
)


def write_logs(out_dir: str | Path, history: Sequence[dict]) -> None:
    out_dir = Path(out_dir)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for rec in history:
        w.writerow({k: _cell(rec.get(k)) for k in COLUMNS})
    write_text_atomic(out_dir / "metrics.csv", buf.getvalue())
    write_json_atomic(out_dir / "metrics.json", [dict(r) for r in history])


def _cell(v):
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return "" if v is None else v


def plot_learning_curve(history: Sequence[dict], path: str | Path) -> Path | None:
    """Loss, energy RMSE and force RMSE against epoch, one line per split (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    splits = sorted({r["split"] for r in history})
    if not history:
        return None
    panels = [("loss", "loss"), ("energy_rmse", "E RMSE (meV/atom)"), ("forces_rmse", "F RMSE (meV/Å)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, label) in zip(axes, panels):
        for sp in splits:
            pts = [(r["epoch"], r.get(key)) for r in history if r["split"] == sp]
            pts = [(e, v) for e, v in pts if v is not None and isinstance(v, (int, float)) and math.isfinite(v) and v > 0]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None, ms=3, label=sp)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
