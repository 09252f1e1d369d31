"""Figures for the analysis report (matplotlib, Agg backend; every function writes a PNG and returns its path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
          "tab:olive", "tab:cyan"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    _plt().close(fig)
    return path


def lines(series: dict, path, xlabel: str, ylabel: str, title: str | None = None, hlines: dict | None = None,
          markers: bool = False, panels: dict | None = None, figsize=(6.5, 4.0)) -> Path:
    """Line plot of ``{label: (x, y)}``; ``hlines`` ``{label: y}`` adds dashed horizontal lines;
    ``panels`` ``{panel title: {label: (x, y)}}`` draws one subplot per entry instead (shared axes)."""
    plt = _plt()
    groups = panels if panels is not None else {title or "": series}
    fig, axes = plt.subplots(1, len(groups), figsize=(figsize[0] * (1 if len(groups) == 1 else 0.62 * len(groups)), figsize[1]),
                             sharey=True, squeeze=False)
    for ax, (ptitle, ser) in zip(axes[0], groups.items()):
        for k, (label, (x, y)) in enumerate(ser.items()):
            ax.plot(x, y, marker="o" if markers else None, ms=3, lw=1.0 if not markers else 1.2, label=label,
                    color=COLORS[k % len(COLORS)])
        for k, (label, y) in enumerate((hlines or {}).items()):
            ax.axhline(y, ls="--", lw=1.0, color="k" if k == 0 else COLORS[-(k + 1)], label=label)
        ax.set_xlabel(xlabel)
        if ptitle:
            ax.set_title(ptitle, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(ylabel)
    if panels is not None and title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def residuals_vs_training(groups: dict, path, reference: dict | None = None, title: str | None = None) -> Path:
    """The paper's central figure: mean and RMSE of the energy residual (meV/atom) against training frames.

    ``groups``: ``{family: [(n_train, mean, rmse), ...]}``; ``reference``: ``{label: (mean, rmse)}`` drawn as
    horizontal lines (e.g. the untuned foundation model).
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for k, (fam, pts) in enumerate(groups.items()):
        pts = sorted(pts)
        n = [p[0] for p in pts]
        for ax, col in zip(axes, (1, 2)):
            ax.plot(n, [p[col] for p in pts], marker="o", label=fam, color=COLORS[k % len(COLORS)])
    for k, (label, (mean, rmse)) in enumerate((reference or {}).items()):
        axes[0].axhline(mean, ls="--", color="k", lw=1, label=label)
        axes[1].axhline(rmse, ls="--", color="k", lw=1, label=label)
    axes[0].axhline(0.0, color="0.6", lw=0.8)
    axes[0].set_ylabel("mean residual E_model − E_DFT (meV/atom)")
    axes[1].set_ylabel("RMSE of E_model − E_DFT (meV/atom)")
    for ax in axes:
        ax.set_xlabel("training frames")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def bars(values: dict, path, ylabel: str, xlabels=None, title: str | None = None) -> Path:
    """Grouped bars: ``{series: (n_bars,)}`` with ``xlabels`` under each group."""
    plt = _plt()
    names = list(values)
    n = len(next(iter(values.values())))
    x = np.arange(n)
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for k, name in enumerate(names):
        v = np.asarray(values[name], dtype=float)
        ax.bar(x + (k - (len(names) - 1) / 2) * width, v, width, label=name, color=COLORS[k % len(COLORS)])
    ax.set_xticks(x)
    ax.set_xticklabels(xlabels if xlabels is not None else [str(i + 1) for i in range(n)])
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def rdfs(curves: dict, path, title: str | None = None) -> Path:
    """g(r) curves: ``{pair: {label: rdf result}}`` (one panel per pair)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.6), squeeze=False)
    for ax, (pair, by_label) in zip(axes[0], curves.items()):
        for k, (label, res) in enumerate(by_label.items()):
            ax.plot(res["r"], res["g"], label=label, color=COLORS[k % len(COLORS)], lw=1.2)
        ax.set_xlabel("r (Å)")
        ax.set_ylabel(f"g(r), {pair}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)
