"""Q-residual figures (matplotlib, Agg backend; every function writes a file and returns its path).

* :func:`pc_scatter`: PC1–PC2 scatter of several data sets with convex hulls or density contours;
* :func:`q_timeseries`: Q per element along a trajectory with the limit band;
* :func:`q_distributions`: per-element Q distributions of several data sets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    _plt().close(fig)
    return path


def pc_scatter(
    datasets: dict,
    path,
    hull: bool = True,
    density: bool = False,
    explained_ratio=None,
    title: str | None = None,
    max_points: int = 20000,
    seed: int = 0,
) -> Path:
    """PC1–PC2 scatter: ``datasets`` maps a label to scores ``(n, >=2)``.

    ``hull`` draws each set's convex hull (scipy.spatial.ConvexHull), ``density``
    kernel-density contours instead of points; ``explained_ratio`` labels the axes.
    """
    from scipy.spatial import ConvexHull, QhullError

    plt = _plt()
    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for k, (label, scores) in enumerate(datasets.items()):
        pts = np.asarray(scores, dtype=np.float64)[:, :2]
        color = _COLORS[k % len(_COLORS)]
        shown = pts if len(pts) <= max_points else pts[rng.choice(len(pts), max_points, replace=False)]
        if density and len(pts) > 3:
            from scipy.stats import gaussian_kde

            try:
                kde = gaussian_kde(shown.T)
                lo, hi = pts.min(0), pts.max(0)
                pad = 0.05 * (hi - lo + 1e-12)
                gx, gy = np.meshgrid(np.linspace(lo[0] - pad[0], hi[0] + pad[0], 80), np.linspace(lo[1] - pad[1], hi[1] + pad[1], 80))
                z = kde(np.vstack([gx.ravel(), gy.ravel()])).reshape(gx.shape)
                ax.contour(gx, gy, z, levels=5, colors=color, linewidths=0.8)
                ax.plot([], [], color=color, label=label)
            except np.linalg.LinAlgError:
                ax.scatter(shown[:, 0], shown[:, 1], s=2, alpha=0.3, color=color, label=label)
        else:
            ax.scatter(shown[:, 0], shown[:, 1], s=2, alpha=0.3, color=color, label=label, rasterized=True)
        if hull and len(pts) >= 3:
            try:
                h = ConvexHull(pts)
                loop = np.append(h.vertices, h.vertices[0])
                ax.plot(pts[loop, 0], pts[loop, 1], color=color, lw=1.2)
            except QhullError:
                pass
    xl, yl = "PC1", "PC2"
    if explained_ratio is not None and len(explained_ratio) >= 2:
        xl += f" ({100 * explained_ratio[0]:.1f}%)"
        yl += f" ({100 * explained_ratio[1]:.1f}%)"
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    if title:
        ax.set_title(title)
    ax.legend(markerscale=4, frameon=False)
    return _save(fig, path)


def q_timeseries(
    times,
    table: np.ndarray,
    symbols: list[str],
    path,
    limits=None,
    xlabel: str = "frame",
    title: str | None = None,
    logy: bool = True,
) -> Path:
    """Q per element along a trajectory: ``table (n_frames, n_elements)`` (e.g. per-frame mean or max).

    ``logy``: log scale for elements whose Q spans more than a factor 20.

    ``limits``: :class:`~jaxuft.uq.limits.ElementLimits` (draws the ``mean ± n_sigma std``
    band and the limit line) or ``{symbol: limit}``.
    """
    from .limits import ElementLimits

    plt = _plt()
    times = np.asarray(times)
    n = len(symbols)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False, sharex=True)
    for k, s in enumerate(symbols):
        ax = axes[k // cols][k % cols]
        col = np.asarray(table[:, k], dtype=np.float64)
        ax.plot(times, col, lw=1.0, color="k")
        fin = col[np.isfinite(col)]
        use_log = logy and fin.size > 0 and np.all(fin > 0) and fin.max() > 20 * fin.min()
        if isinstance(limits, ElementLimits) and s in limits.mean:
            m, sd = limits.mean[s], limits.std[s]
            lo, hi = m - limits.n_sigma * sd, m + limits.n_sigma * sd
            if lo <= 0:  # Q >= 0; on a log axis start the band below the data
                lo = 0.5 * min(np.nanmin(col), m) if use_log else 0.0
            ax.axhspan(lo, hi, color="tab:green", alpha=0.2, lw=0, label=f"mean ± {limits.n_sigma:g}σ (train)")
            ax.axhline(limits.limit[s], color="tab:red", lw=0.8, ls="--")
        elif isinstance(limits, dict) and s in limits:
            ax.axhline(limits[s], color="tab:red", lw=0.8, ls="--")
        if use_log:
            from matplotlib.ticker import NullFormatter

            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(s, fontsize=9)
        if k // cols == rows - 1:
            ax.set_xlabel(xlabel)
        if k % cols == 0:
            ax.set_ylabel("Q")
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def q_distributions(datasets: dict, path, limits=None, bins: int = 40, title: str | None = None) -> Path:
    """Per-element histograms of Q (log-spaced bins); ``datasets`` maps a label to ``(q (n,), numbers (n,))``."""
    from ase.data import chemical_symbols

    from .limits import ElementLimits

    plt = _plt()
    zs = sorted({int(z) for _, nums in datasets.values() for z in np.unique(nums)})
    n = len(zs)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for k, z in enumerate(zs):
        ax = axes[k // cols][k % cols]
        s = chemical_symbols[z]
        allq = np.concatenate([np.asarray(q)[np.asarray(nums) == z] for q, nums in datasets.values()])
        pos = allq[allq > 0]
        if len(pos) == 0:
            continue
        log = pos.max() > 20 * pos.min()
        if log:
            edges = np.geomspace(pos.min(), pos.max() * 1.0001, bins + 1)
        else:
            edges = np.linspace(allq.min(), allq.max() * 1.0001 + 1e-300, bins + 1)
        for j, (label, (q, nums)) in enumerate(datasets.items()):
            v = np.asarray(q)[np.asarray(nums) == z]
            v = v[v > 0]
            if len(v):
                ax.hist(v, bins=edges, histtype="step", density=True, color=_COLORS[j % len(_COLORS)], label=label)
        if log:
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        lim = None
        if isinstance(limits, ElementLimits):
            lim = limits.limit.get(s)
        elif isinstance(limits, dict):
            lim = limits.get(s)
        if lim is not None and np.isfinite(lim) and lim > 0:
            ax.axvline(lim, color="tab:red", lw=0.8, ls="--")
        ax.set_title(s, fontsize=9)
        ax.set_xlabel("Q")
        if k == 0:
            ax.legend(fontsize=7, frameon=False)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
