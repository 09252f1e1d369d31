"""Ensemble statistics of MD observables: means with autocorrelation-aware error bars across replicas and time.

For a series ``x`` of shape ``(R, F)`` (replicas, frames) or ``(F,)``:

* :func:`autocorrelation` -- the normalised autocorrelation function, averaged over replicas
  (FFT, biased estimator as in Sokal's notes and emcee).
* :func:`integrated_time` -- the integrated autocorrelation time
  ``tau = 1 + 2 sum_k rho(k)`` in frames, summed up to Sokal's automatic window
  (the smallest ``M`` with ``M >= c tau(M)``, ``c = 5``).  For an AR(1) series with
  coefficient ``phi``, ``tau = (1 + phi) / (1 - phi)``.
* :func:`blocking_error` -- the standard error of the mean by Flyvbjerg–Petersen block
  averaging (the plateau of the blocked estimate; no autocorrelation model needed).
* :func:`observable_stats` -- mean, standard error ``sqrt(var tau / (R F))`` (the error bar),
  the naive error (``tau = 1``), the blocking error, the between-replica error
  (``std(replica means) / sqrt(R)``), ``tau``, the effective sample count and per-replica means.
* :func:`trajectory_statistics` -- these for the energy (eV/atom), temperature (K), and, for
  periodic cells, pressure (bar), volume (Å³/atom) and density (g/cm³), plus g(r) with an error
  band per bin, from a :class:`jaxuft.md.Trajectory` (one system; a mixed run: per system).
* :func:`plot_statistics` -- time series with mean ± error and g(r) with its band (PNG).
* :func:`run_statistics` -- the above per system (mixed batch), per replica (per-replica
  conditions) or over all replicas; what ``jaxuft md`` puts in ``summary.json``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = [
    "autocorrelation", "blocking_error", "format_statistics", "integrated_time", "json_statistics",
    "observable_stats", "plot_statistics", "run_statistics", "trajectory_statistics", "UNITS",
]

#: units of the observables of :func:`trajectory_statistics`
UNITS = {"energy": "eV/atom", "temperature": "K", "pressure": "bar", "volume": "Å³/atom", "density": "g/cm³",
         "kinetic_energy": "eV/atom"}


def _as_2d(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"a series must have shape (frames,) or (replicas, frames), got {x.shape}")
    if x.shape[1] < 2:
        raise ValueError(f"a series needs at least 2 frames, got {x.shape[1]}")
    if not np.all(np.isfinite(x)):
        raise ValueError("the series holds non-finite values; drop stopped replicas' frames first")
    return x


def autocorrelation(x) -> np.ndarray:
    """Normalised autocorrelation ``rho(k)``, ``k = 0 .. F-1``, averaged over replicas."""
    x = _as_2d(x)
    f = x.shape[1]
    n = 1 << int(np.ceil(np.log2(2 * f)))
    d = x - x.mean(axis=1, keepdims=True)
    spec = np.fft.rfft(d, n=n, axis=1)
    acf = np.fft.irfft(spec * np.conj(spec), n=n, axis=1)[:, :f].mean(axis=0)
    if acf[0] <= 0:  # a constant series: no correlation to speak of
        out = np.zeros(f)
        out[0] = 1.0
        return out
    return acf / acf[0]


def integrated_time(x, c: float = 5.0) -> float:
    """Integrated autocorrelation time in frames (>= 1 by convention, Sokal's window ``c``)."""
    rho = autocorrelation(x)
    taus = 2.0 * np.cumsum(rho) - 1.0
    window = np.arange(len(taus)) >= c * taus
    m = int(np.argmax(window)) if np.any(window) else len(taus) - 1
    return float(max(taus[m], 1.0))


def blocking_error(x) -> float:
    """Standard error of the mean by Flyvbjerg–Petersen blocking (replicas blocked separately, pooled).

    The series is halved repeatedly; the error estimate of each level is
    ``sqrt(var(blocks) / (n_blocks - 1))``; the result is the largest estimate among
    levels with at least 16 blocks per replica (the plateau, or its best lower bound)."""
    x = _as_2d(x)
    r, f = x.shape
    best = np.std(x) / np.sqrt(x.size - 1)
    blocks = x
    while blocks.shape[1] >= 32:
        m = blocks.shape[1] // 2
        blocks = 0.5 * (blocks[:, 0:2 * m:2] + blocks[:, 1:2 * m:2])
        b = blocks - blocks.mean()
        n = blocks.size
        best = max(best, float(np.sqrt(np.mean(b * b) / (n - 1))))
    return float(best)


def observable_stats(x, dt: float | None = None) -> dict:
    """Statistics of one observable ``(R, F)`` (see the module docstring).

    ``dt``: time between frames (e.g. fs); adds ``tau_time``.  Errors are standard errors of the mean."""
    x = _as_2d(x)
    r, f = x.shape
    var = float(np.var(x))  # pooled around the grand mean
    constant = np.ptp(x) <= 1e-12 * max(1.0, float(np.max(np.abs(x))))  # up to round-off (e.g. an NVT volume)
    if constant:
        var = 0.0
    tau = 1.0 if constant else integrated_time(x)
    n = x.size
    means = x.mean(axis=1)
    out = {
        "mean": float(x.mean()),
        "sem": float(np.sqrt(var * tau / n)),
        "sem_naive": float(np.sqrt(var / max(n - 1, 1))),
        "sem_blocking": 0.0 if constant else blocking_error(x),
        "sem_between_replicas": float(np.std(means, ddof=1) / np.sqrt(r)) if r > 1 else None,
        "std": float(np.sqrt(var)),
        "tau_frames": tau,
        "n_effective": float(n / tau),
        "replicas": int(r),
        "frames": int(f),
        "replica_means": means.tolist(),
    }
    if dt is not None:
        out["tau_time"] = float(tau * dt)
    return out


def _series(traj, discard: float):
    """``{name: (R, F) array}`` of the kept frames of a one-system trajectory, and the kept validity mask."""
    from .density import G_PER_CM3

    valid = np.asarray(traj.valid, bool)
    first = int(np.floor(discard * valid.shape[1]))
    keep = valid[:, first:]
    rows = np.all(keep, axis=1)  # replicas that ran through (stopped ones are left out)
    if not rows.any():
        raise ValueError("no replica ran through the kept frames (all stopped); nothing to average")
    n = len(traj.numbers)
    d = traj.data
    sel = lambda a: np.asarray(a, np.float64)[rows, first:]
    out = {"energy": sel(d["energy"]) / n, "temperature": sel(d["temperature"])}
    if bool(np.all(traj.pbc)):
        vol = np.abs(np.linalg.det(sel(d["cell"])))
        out["pressure"] = sel(d["pressure"])
        out["volume"] = vol / n
        out["density"] = float(np.sum(traj.masses)) / vol * G_PER_CM3
    return out, rows, first


def _rdf_stats(traj, rows, first, pairs, r_max, n_bins, max_frames) -> dict:
    """g(r) per pair: mean over replicas and frames, and an error band per bin (between-replica or
    per-frame series with the integrated time of the bin series)."""
    from .rdf import rdf_pairs

    idx = np.nonzero(rows)[0]
    frames_per = [traj.atoms(int(r), only_valid=False)[first:] for r in idx]
    if pairs is None:  # every species pair that has pairs (a single atom of an element has no like pair)
        from itertools import combinations_with_replacement

        z, counts = np.unique(frames_per[0][0].numbers, return_counts=True)
        have = dict(zip(z.tolist(), counts.tolist()))
        pairs = [(a, b) for a, b in combinations_with_replacement(sorted(have), 2) if a != b or have[a] > 1]
    stride = max(1, int(np.ceil(len(frames_per[0]) / max_frames)))
    per = []  # (R, F', bins) per pair
    keys = None
    for frames in frames_per:
        g_r = []
        for atoms in frames[::stride]:
            res = rdf_pairs([atoms], pairs, r_max=r_max, n_bins=n_bins)
            keys = list(res)
            g_r.append(np.stack([res[k]["g"] for k in keys]))
        per.append(np.stack(g_r))
    g = np.stack(per)  # (R, F', P, bins)
    out = {}
    for p, key in enumerate(keys):
        series = g[:, :, p, :]  # (R, F', bins)
        mean = series.mean(axis=(0, 1))
        if series.shape[1] >= 4:
            tau = max(integrated_time(series[:, :, b]) if np.ptp(series[:, :, b]) > 0 else 1.0
                      for b in range(series.shape[2]))
            sem = np.sqrt(series.reshape(-1, series.shape[2]).var(axis=0) * tau / (series.shape[0] * series.shape[1]))
        else:
            tau, sem = float("nan"), np.full_like(mean, np.nan)
        edges = np.linspace(0.0, r_max, n_bins + 1)
        out[key] = {"r": 0.5 * (edges[1:] + edges[:-1]), "g": mean, "sem": sem, "tau_frames": float(tau),
                    "frames": int(series.shape[1]), "frame_stride": stride}
    return out


def trajectory_statistics(traj, discard: float = 0.2, rdf: bool = True, rdf_pairs=None, r_max: float | None = None,
                          n_bins: int = 60, rdf_frames: int = 50) -> dict:
    """Ensemble statistics of a one-system :class:`~jaxuft.md.Trajectory` after dropping the first
    ``discard`` fraction of frames (equilibration).

    Returns ``{"observables": {name: observable_stats + unit}, "rdf": {pair: {r, g, sem}}, ...}``;
    replicas that stopped are left out (listed in ``excluded_replicas``).  g(r) uses at most
    ``rdf_frames`` frames per replica (evenly strided) up to ``r_max`` (default 6 Å; periodic images
    included, so small cells are fine); g(r) needs a periodic cell (its volume normalises it)."""
    if not 0.0 <= discard < 1.0:
        raise ValueError(f"discard must be a fraction in [0, 1), got {discard!r}")
    if getattr(traj, "mixed", False) and traj.n_replicas > 1:
        raise ValueError("a mixed batch holds different systems: use trajectory_statistics(traj.system(r)) per system "
                         "or run_statistics(traj)")
    series, rows, first = _series(traj, discard)
    dt = float(np.ravel(np.asarray(traj.timestep_fs, np.float64))[0]) * _record_every(traj)
    obs = {}
    for name, x in series.items():
        if x.shape[1] < 2:
            raise ValueError(f"only {x.shape[1]} frame(s) left after discarding {discard:.0%}; record more frames")
        obs[name] = {**observable_stats(x, dt=dt), "unit": UNITS[name]}
        obs[name]["tau_fs"] = obs[name].pop("tau_time")
    out = {"discard": discard, "first_frame": first, "excluded_replicas": np.nonzero(~rows)[0].tolist(),
           "observables": obs}
    if rdf and bool(np.all(traj.pbc)):  # g(r) is normalised by the cell volume: periodic cells only
        if r_max is None:
            r_max = 6.0  # ASE's neighbour list counts every periodic image, so r_max may exceed half the cell
        out["rdf"] = _rdf_stats(traj, rows, first, rdf_pairs, float(r_max), int(n_bins), int(rdf_frames))
    return out


def _record_every(traj) -> int:
    step = np.asarray(traj.data["step"])
    if step.shape[1] >= 2:
        d = np.diff(step[0])
        d = d[d > 0]
        if d.size:
            return int(np.min(d))
    return 1


def format_statistics(stats: dict) -> str:
    """One line per observable: ``name = mean ± sem unit (tau ..., blocking ..., between replicas ...)``."""
    lines = []
    for name, s in stats["observables"].items():
        between = s["sem_between_replicas"]
        lines.append(
            f"{name:12s} = {s['mean']:.6g} ± {s['sem']:.2g} {s['unit']} "
            f"(tau {s['tau_frames']:.1f} frames = {s['tau_fs']:.0f} fs; blocking ± {s['sem_blocking']:.2g}"
            + (f"; between replicas ± {between:.2g}" if between is not None else "") + ")")
    return "\n".join(lines)


def plot_statistics(traj, stats: dict, path, title: str | None = None) -> Path:
    """One PNG: each observable's per-replica time series (ps) with the mean ± error band over the kept
    frames, and each g(r) with its ± error band; axis labels carry units."""
    from .plots import COLORS, _plt, _save

    plt = _plt()
    names = list(stats["observables"])
    pairs = list(stats.get("rdf", {}))
    n = len(names) + len(pairs)
    cols = min(3, n)
    rows_ = -(-n // cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(4.3 * cols, 3.2 * rows_), squeeze=False)
    series, rows, first = _series(traj, stats["discard"])
    t_all = np.asarray(traj.data["time"], np.float64) * 1e-3  # ps
    idx = np.nonzero(rows)[0]
    for k, name in enumerate(names):
        ax = axes[k // cols][k % cols]
        s = stats["observables"][name]
        x = series[name]
        for j, r in enumerate(idx):
            ax.plot(t_all[r, first:], x[j], lw=0.7, alpha=0.7, color=COLORS[j % len(COLORS)])
        t0, t1 = t_all[idx[0], first], t_all[idx[0], -1]
        ax.axhline(s["mean"], color="k", lw=1.2, label=f"mean {s['mean']:.4g} ± {s['sem']:.2g}")
        ax.fill_between([t0, t1], s["mean"] - s["sem"], s["mean"] + s["sem"], color="k", alpha=0.2)
        ax.set_xlabel("time (ps)")
        ax.set_ylabel(f"{name} ({s['unit']})")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for k, pair in enumerate(pairs, start=len(names)):
        ax = axes[k // cols][k % cols]
        g = stats["rdf"][pair]
        ax.plot(g["r"], g["g"], color="tab:blue", lw=1.2, label=f"{pair} ({len(idx)} replicas)")
        ax.fill_between(g["r"], g["g"] - g["sem"], g["g"] + g["sem"], color="tab:blue", alpha=0.3)
        ax.set_xlabel("r (Å)")
        ax.set_ylabel(f"g(r), {pair} (1)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for k in range(n, rows_ * cols):
        axes[k // cols][k % cols].axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def run_statistics(traj, per_replica: bool = False, discard: float = 0.2, rdf: bool = True, rdf_frames: int = 20,
                   plot_dir=None) -> dict:
    """Statistics of an MD run, grouped so that only replicas of one system and one condition are pooled:
    a mixed batch per system, per-replica conditions (e.g. a temperature ladder) per replica, else all
    replicas together.  ``{group: trajectory_statistics | {"skipped": reason}}``; with ``plot_dir`` each
    group's figure is written there as ``statistics_<group>.png`` (its path in ``"plot"``)."""
    from ase import Atoms

    groups = {}
    if getattr(traj, "mixed", False) or per_replica:
        for r in range(traj.n_replicas):
            one = traj.system(r)
            groups[f"replica_{r:03d}_{Atoms(numbers=one.numbers).get_chemical_formula()}"] = one
    else:
        groups["all_replicas"] = traj
    out = {}
    for name, t in groups.items():
        try:
            stats = trajectory_statistics(t, discard=discard, rdf=rdf, rdf_frames=rdf_frames)
        except ValueError as exc:  # too few frames, all replicas stopped, ...
            out[name] = {"skipped": str(exc)}
            continue
        if plot_dir is not None:
            stats["plot"] = str(plot_statistics(t, stats, Path(plot_dir) / f"statistics_{name}.png", title=name))
        out[name] = stats
    return out


def json_statistics(stats: dict) -> dict:
    """:func:`run_statistics` without the g(r) arrays' bulk: numbers and lists only (for summary.json)."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, np.ndarray):
            return [float(x) for x in v]
        return v

    return clean(stats)
