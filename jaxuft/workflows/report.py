"""``jaxuft report RUN [RUN2 ...] -o OUT``: a markdown report with PNG figures comparing protocols.

Everything above the "Timings" heading is computed from each run's ``results.json`` and is
identical from run to run for a given config and seed; wall times and compilation counts
(which differ between machines and between a resumed and an uninterrupted run) come after it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..fileio import atomic_write_text
from ..progress import get_logger

log = get_logger("jaxuft.workflows")

__all__ = ["write_report"]


def _f(x, nd=2) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    return f"{x:.{nd}f}"


def _load(run: Path) -> tuple[dict, dict]:
    p = run / "results.json"
    if not p.exists():
        raise FileNotFoundError(f"{run} has no results.json: the run has not finished (continue it with "
                                f"`jaxuft run --resume {run}`)")
    timings = {}
    if (run / "timings.json").exists():
        timings = json.loads((run / "timings.json").read_text())
    return json.loads(p.read_text()), timings


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, out: Path) -> str:
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out.name


def _plot_residuals(runs, out: Path) -> str | None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    any_rows = False
    for label, res in runs:
        for model, ev in res["evaluation"].items():
            rows = ev["residuals"].get("rows", [])
            if not rows:
                continue
            any_rows = True
            t = np.array([r["time_fs"] for r in rows]) / 1000.0
            e = np.array([r["energy_residual_meV_atom"] for r in rows])
            f = np.array([r["force_rmse_meV_A"] for r in rows])
            name = model if len(runs) == 1 else f"{label}: {model}"
            axes[0].plot(t, e - e.mean() if model == "foundation" else e, "o-", label=name)
            axes[1].plot(t, f, "o-", label=name)
    if not any_rows:
        plt.close(fig)
        return None
    axes[0].set_xlabel("time (ps)")
    axes[0].set_ylabel("energy residual (meV/atom)\n(foundation: mean removed)")
    axes[1].set_xlabel("time (ps)")
    axes[1].set_ylabel("force RMSE (meV/Å)")
    axes[0].axhline(0, color="k", lw=0.5)
    axes[1].legend(fontsize=8)
    fig.suptitle("Model − oracle along each model's own evaluation run")
    return _save(plt, fig, out)


def _plot_qres(runs, out: Path) -> str | None:
    plt = _pyplot()
    items = [(label, m, ev["qres"]) for label, res in runs for m, ev in res["evaluation"].items() if ev.get("qres")]
    if not items:
        return None
    fig, axes = plt.subplots(1, len(items), figsize=(4 * len(items), 3.4), squeeze=False)
    for ax, (label, model, q) in zip(axes[0], items):
        qt, qe = np.asarray(q["q_train"]), np.asarray(q["q_eval"])
        hi = max(qt.max(initial=0), qe.max(initial=0)) or 1.0
        bins = np.linspace(0, hi, 30)
        ax.hist(qt, bins=bins, alpha=0.6, density=True, label="training labels")
        ax.hist(qe, bins=bins, alpha=0.6, density=True, label="evaluation snapshots")
        for v in q["limits"]["limit"].values():
            ax.axvline(v, color="r", lw=0.8, ls="--")
        ax.set_xlabel("Q-residual (descriptor units²)")
        ax.set_ylabel("density")
        ax.set_title(model if len(runs) == 1 else f"{label}: {model}", fontsize=9)
        ax.legend(fontsize=7)
    return _save(plt, fig, out)


def _plot_density(runs, out: Path) -> str | None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    drawn = False
    for label, res in runs:
        for model, ev in res["evaluation"].items():
            d = ev.get("density_g_cm3")
            if not d or np.ptp(d["series"]) == 0:
                continue
            drawn = True
            ax.plot(np.asarray(d["time_fs"]) / 1000.0, d["series"], label=model if len(runs) == 1 else f"{label}: {model}")
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("density (g/cm³)")
    ax.legend(fontsize=8)
    return _save(plt, fig, out)


def _results_section(runs) -> list[str]:
    L = []
    L += ["## Protocols", "", "| run | protocol | rounds | MD steps (all replicas) | labels | failed labels | train frames (last fine-tune) | kept start model |",
          "|---|---|---|---|---|---|---|---|"]
    for label, res in runs:
        for name, p in res["protocols"].items():
            last = p["finetune"][-1] if p["finetune"] else {}
            kept = sum(1 for f in p["finetune"] if f.get("kept_start"))
            L.append(f"| {label} | {name} | {p['rounds']} | {p['md_steps']} | {p['n_labels']} | {p['n_failed']} | "
                     f"{last.get('n_train_frames', '–')} | {kept} of {len(p['finetune'])} |")
    L += ["", "Oracle: `" + json.dumps(runs[0][1]["oracle"]) + "`; foundation: `" + str(runs[0][1]["foundation"]) + "`.",
          "The oracle's energy zero is not the foundation model's, so every fine-tune refits the per-element",
          "reference energies (E0s) to the oracle's labels; the foundation's mean energy residual therefore includes",
          "the difference of energy zeros, and its **centred RMSE** (spread after removing the mean) is the fair comparison.", ""]
    failed = [(label, name, f) for label, res in runs for name, p in res["protocols"].items() for f in p["failed"]]
    if failed:
        L += ["Failed labels (retried, then recorded):", ""]
        L += [f"- {label} {name}: frame {f.get('index')} after {f.get('attempts')} attempts: {f.get('error')}" for label, name, f in failed]
        L.append("")
    L += ["## Evaluation: each model from the same start, snapshots labelled by the oracle", "",
          "| run | model | snapshots | E mean (meV/atom) | E RMSE (meV/atom) | E centred RMSE (meV/atom) | F RMSE (meV/Å) | density (g/cm³) | Q beyond limit |",
          "|---|---|---|---|---|---|---|---|---|"]
    for label, res in runs:
        for model, ev in res["evaluation"].items():
            r = ev["residuals"]
            d = ev.get("density_g_cm3")
            q = ev.get("qres") or {}
            frac = q.get("fraction_beyond_limit")
            L.append(f"| {label} | {model} | {r.get('n', 0)} | {_f(r.get('energy_mean_meV_atom'))} | "
                     f"{_f(r.get('energy_rmse_meV_atom'))} | {_f(r.get('energy_centred_rmse_meV_atom'))} | "
                     f"{_f(r.get('force_rmse_meV_A'), 1)} | {_f(d['mean'], 4) if d else '–'} | "
                     f"{'–' if frac is None else f'{100 * frac:.1f} %'} |")
    L.append("")
    bonds = [(label, m, b) for label, res in runs for m, ev in res["evaluation"].items() for b in ev.get("bonds", [])]
    if bonds:
        L += ["## Bond formation along the evaluation runs", "", "| run | model | pair | cutoff (Å) | frames with bond |", "|---|---|---|---|---|"]
        L += [f"| {label} | {m} | {b['pair']} | {b['cutoff_A']:.2f} | {b['frames_with_bond']} of {b['n_frames']} |" for label, m, b in bonds]
        L.append("")
    qrows = [(label, m, ev["qres"]) for label, res in runs for m, ev in res["evaluation"].items() if ev.get("qres")]
    if qrows:
        L += ["## Q-residuals of each model's evaluation snapshots against its own training labels", "",
              "| run | model | descriptor | PCA components | explained variance (%) | element | Q mean | limit | beyond limit |",
              "|---|---|---|---|---|---|---|---|---|"]
        for label, m, q in qrows:
            ev_pct = " / ".join(f"{v:.2f}" for v in q["explained_variance_pct"])
            for el, row in q["per_element"].items():
                L.append(f"| {label} | {m} | {q['descriptor']} | {q['n_components']} | {ev_pct} | {el} | "
                         f"{row.get('mean', float('nan')):.3g} | {row.get('limit', float('nan')):.3g} | "
                         f"{100 * row.get('fraction_over', 0.0):.1f} % |")
        L.append("")
    return L


def _timings_section(runs) -> list[str]:
    L = ["## Timings (not part of the result tables: they vary between machines and resumed runs)", "",
         "| run | stage | wall (s) | MD compilations | atom-steps/s |", "|---|---|---|---|---|"]
    for label, (res, t) in runs.items():
        for stage, v in t.items():
            L.append(f"| {label} | {stage} | {_f(v.get('wall_s'), 1)} | {v.get('compilations', '–')} | "
                     f"{_f(v.get('atom_steps_per_s'), 0)} |")
    return L + [""]


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Write ``OUT/report.md`` and its PNG figures for one or more finished runs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded = {}
    for r in run_dirs:
        r = Path(r)
        label = r.name
        while label in loaded:
            label += "'"
        loaded[label] = _load(r)
    runs = [(label, res) for label, (res, _) in loaded.items()]
    L = [f"# jaxuft protocol report: {', '.join(res['name'] for _, res in runs)}", "",
         f"System: {runs[0][1]['formula']} ({runs[0][1]['n_atoms']} atoms); seed {runs[0][1]['seed']}.", ""]
    L += _results_section(runs)
    figs = [("Residuals over time", _plot_residuals(runs, out / "residuals.png")),
            ("Q-residuals", _plot_qres(runs, out / "qres.png")),
            ("Density", _plot_density(runs, out / "density.png"))]
    figs = [(t, f) for t, f in figs if f]
    if figs:
        L += ["## Figures", ""] + [f"![{t}]({f})\n" for t, f in figs]
    L += _timings_section(loaded)
    path = atomic_write_text(out / "report.md", "\n".join(L))
    log.info(f"report: {path}")
    return path
