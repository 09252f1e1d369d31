"""The Q-residual part of ``jaxuft paper reproduce``: SOAP + PCA(5) per training set, Q per element of every model's
evaluation frames and of the 9 ns runs, fractions beyond the limits, and the second system (liclcocl2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..progress import get_logger
from .paper import LONG_RUNS, TIMESTEP_FS, TRAIN_SETS, chclca_models
from .qres import DescriptorStore, element_q_table, fit_streamed_pca, fraction_over
from .report import Report

log = get_logger(__name__)

#: which training-set PCA a model's frames are scored under: its own family's largest set
#: (U, the foundation model, generated the pool the naive sets were drawn from)
OWN_PCA = {"foundation": "N-50", "naive": "N-50", "nonperiodic": "NP-50", "periodic": "FT5"}


def _soap(species, n_max, l_max):
    from ..uq import soap_descriptor

    return soap_descriptor(species, r_cut=5.0, n_max=n_max, l_max=l_max, sigma=0.375, periodic=True)


def _fit(sources, label, show_progress):
    log.info("PCA on %s", label)
    return fit_streamed_pca(sources, n_components=5, show_progress=show_progress)


def _ev_rows(fits: dict) -> list:
    return [[k, p.n_samples_] + list(100 * p.explained_variance_ratio_) + [100 * float(np.sum(p.explained_variance_ratio_))]
            for k, p in fits.items()]


def _limits(pca, cached):
    from ..uq import element_limits

    return element_limits(pca.q_residual_of(cached), cached.numbers)


def _element_rows(label, table, symbols):
    return [label] + [100 * table[s]["fraction_over"] if s in table else float("nan") for s in symbols]


def qres_sections(rep: Report, c, out: Path, cache_dir: Path, cache_dtype: str, n_max: int, l_max: int,
                  show_progress) -> dict:
    from ..uq import plots as uq_plots
    from ..uq import per_structure_element
    from ..uq.descriptors import species_of
    from . import plots

    root = c.root
    summary: dict = {}
    species = species_of([a for rel in TRAIN_SETS.values() for a in c.frames(rel)])
    desc = _soap(species, n_max, l_max)
    store = DescriptorStore(desc, cache_dir, dtype=cache_dtype, show_progress=show_progress)
    get = lambda rel: store.get(root / rel, max_frames=c.max_frames, frames=c.frames(rel), label=Path(rel).stem)  # noqa: E731

    rep.heading("6. Q-residuals (SOAP + PCA)")
    rep.paragraph(
        f"Per-atom SOAP (r_cut 5 Å, n_max {n_max}, l_max {l_max}, sigma 0.375 Å, periodic, species "
        f"{' '.join(species)}; {desc.n_features} features, equal to dscribe's), PCA with 5 components (centred, "
        "unscaled) fitted on a training set; Q = squared distance of an atom's descriptor from the PCA subspace. "
        "Limit per element: mean + 2σ of the training atoms' Q (the paper's). Descriptors are cached per file "
        f"(`--cache-dir`); the PCA is streamed (subspace iteration over the cache, no {desc.n_features}² covariance).")
    train = {k: get(rel) for k, rel in TRAIN_SETS.items()}
    fits = {k: _fit([v], k, show_progress) for k, v in train.items()}
    fits["N-50 + FT5"] = _fit([train["N-50"], train["FT5"]], "N-50 + FT5", show_progress)
    summary["explained_variance_ratio"] = {k: p.explained_variance_ratio_ for k, p in fits.items()}
    rep.heading("6.1 Explained variance", 3)
    rep.table(["PCA fitted on", "atoms", "PC1 %", "PC2 %", "PC3 %", "PC4 %", "PC5 %", "sum %"], _ev_rows(fits))
    fig = plots.bars({k: 100 * p.explained_variance_ratio_ for k, p in fits.items()}, out / "explained_variance.png",
                     "explained variance (%)", [f"PC{i}" for i in range(1, 6)], title="Explained variance of PCA(5) on SOAP")
    rep.figure(fig, "Explained variance (%) of each principal component, per training set.")
    joint = fits["N-50 + FT5"]
    scores = {k: joint.scores_of(train[k]) for k in ("N-50", "FT5", "NP-50")}
    fig = uq_plots.pc_scatter(scores, out / "pc_scatter_n50_ft5.png", explained_ratio=joint.explained_variance_ratio_,
                              title="PC1–PC2 of the N-50 + FT5 PCA (NP-50 projected)", max_points=4000)
    rep.figure(fig, "Per-atom scores on PC1 and PC2 of the PCA fitted on N-50 + FT5, with each set's convex hull.")

    limits = {k: _limits(fits[k], train[k]) for k in TRAIN_SETS}
    summary["limits"] = {k: v.to_dict() for k, v in limits.items()}

    # -- evaluation frames ----------------------------------------------------------------
    rep.heading("6.2 Each model's evaluation frames", 3)
    pcas = list(TRAIN_SETS)
    rows, erows, ev_summary = [], [], {}
    for m in chclca_models():
        cached = get(m.eval)
        fr = {}
        for k in pcas:
            q = fits[k].q_residual_of(cached)
            fr[k] = fraction_over(q, cached.numbers, limits[k])
            if k == OWN_PCA[m.family]:
                table = element_q_table(q, cached.numbers, limits[k])
                erows.append(_element_rows(f"{m.name} (PCA {k})", table, species))
                ev_summary[m.name] = {"own_pca": k, "per_element": table}
        ev_summary.setdefault(m.name, {})["fraction_over"] = fr
        rows.append([m.name, cached.n_frames] + [100 * fr[k] for k in pcas])
    summary["eval"] = ev_summary
    rep.paragraph("Percentage of atoms whose Q exceeds their element's limit, under the PCA of each training set:")
    rep.table(["model", "frames"] + [f"PCA {k} %" for k in pcas], rows, digits=1)
    fams = {"naive": "N-", "nonperiodic": "NP-", "periodic": "FT"}
    means = {}
    for fam, prefix in fams.items():
        sel = [r for r in rows if r[0].startswith(prefix) and not (prefix == "N-" and r[0].startswith("NP-"))]
        means[fam] = {k: float(np.mean([r[2 + j] for r in sel])) for j, k in enumerate(pcas)}
    summary["eval_mean_percent_over"] = means
    rep.bullets([f"{fam} models' runs, mean over the family: " + ", ".join(f"PCA {k} {v:.1f} %" for k, v in m.items())
                 for fam, m in means.items()])
    rep.paragraph("Per element (%), under the model's own family's PCA (U: N-50, whose frames come from U's MD):")
    rep.table(["model"] + species, erows, digits=1)

    # -- the 9 ns runs ---------------------------------------------------------------------
    rep.heading("6.3 The 9 ns runs", 3)
    lrows, long_summary = [], {}
    dist = {}
    for name, rel, _ in LONG_RUNS:
        cached = get(rel)
        for k in ("N-50", "FT5"):
            q = fits[k].q_residual_of(cached)
            table = element_q_table(q, cached.numbers, limits[k])
            syms, per_frame = per_structure_element(q, cached.numbers, cached.frame_sizes, "mean")
            over_frames = {s: float(np.mean(per_frame[:, j] > limits[k].limit[s])) for j, s in enumerate(syms)}
            long_summary[f"{name} | PCA {k}"] = {"fraction_over": fraction_over(q, cached.numbers, limits[k]),
                                                 "per_element": table, "fraction_frames_mean_over": over_frames}
            lrows.append([f"{name} run", f"PCA {k}", 100 * fraction_over(q, cached.numbers, limits[k])]
                         + [100 * table[s]["fraction_over"] for s in species])
            if k == name:
                t_ns = cached.thermo_rows * 1000 * TIMESTEP_FS * 1e-6
                fig = uq_plots.q_timeseries(t_ns, per_frame, syms, out / f"q_long_{name}.png", limits=limits[k],
                                            xlabel="time (ns)", title=f"9 ns run of {name}: mean Q per element and frame (PCA {k})")
                rep.figure(fig, f"Mean Q per element in each DFT frame of the {name} run under the PCA of its own "
                                "training set; band: training mean ± 2σ, dashed: limit.")
                dist[f"{name} run"] = (q, cached.numbers)
                dist[f"train {k}"] = (fits[k].q_residual_of(train[k]), train[k].numbers)
    summary["long"] = long_summary
    rep.paragraph("Percentage of atoms above the limit in the 9 ns runs, all atoms and per element:")
    rep.table(["frames", "PCA", "all %"] + [f"{s} %" for s in species], lrows, digits=1)

    # -- the second system -----------------------------------------------------------------
    summary["liclcocl2"] = liclcocl2_section(rep, root.parent / "liclcocl2", cache_dir, cache_dtype, n_max, l_max,
                                             c.max_frames, show_progress, out)
    return summary


def liclcocl2_section(rep: Report, root: Path, cache_dir: Path, cache_dtype: str, n_max: int, l_max: int,
                      max_frames, show_progress, out: Path) -> dict:
    """Training sets only in the data: each set's PCA, the joint PCA, each set scored under the other's PCA."""
    from ..uq.descriptors import species_of
    from .io import read_frames

    rep.heading("7. Second system: dilute aqueous LiCl + CoCl₂ (liclcocl2)")
    naive = sorted((root / "train" / "naive").glob("N-*.xyz"), key=lambda p: int(p.stem.split("-")[1]))
    periodic = sorted((root / "train" / "periodic").glob("FT*.xyz"), key=lambda p: int(p.stem[2:]))
    if not naive or not periodic:
        rep.paragraph(f"Skipped: no training sets under {root}.")
        return {}
    sets = {naive[-1].stem: naive[-1], periodic[-1].stem: periodic[-1]}
    frames = {k: read_frames(p)[:max_frames] if max_frames else read_frames(p) for k, p in sets.items()}
    species = species_of([a for f in frames.values() for a in f])
    desc = _soap(species, n_max, l_max)
    store = DescriptorStore(desc, cache_dir, dtype=cache_dtype, show_progress=show_progress)
    cached = {k: store.get(p, max_frames=max_frames, frames=frames[k], label=f"liclcocl2-{k}") for k, p in sets.items()}
    fits = {k: _fit([v], f"liclcocl2 {k}", show_progress) for k, v in cached.items()}
    a, b = list(sets)
    fits[f"{a} + {b}"] = _fit([cached[a], cached[b]], f"liclcocl2 {a} + {b}", show_progress)
    limits = {k: _limits(fits[k], cached[k]) for k in sets}
    rep.paragraph(
        f"The data hold only the training sets (naive {', '.join(p.stem for p in naive)}; periodic "
        f"{', '.join(p.stem for p in periodic)}), no evaluation runs, so this part is the Q-residual comparison of "
        f"the largest sets, {a} and {b}: SOAP as above over species {' '.join(species)} ({desc.n_features} features).")
    rep.table(["PCA fitted on", "atoms", "PC1 %", "PC2 %", "PC3 %", "PC4 %", "PC5 %", "sum %"], _ev_rows(fits))
    rows, summary = [], {"explained_variance_ratio": {k: p.explained_variance_ratio_ for k, p in fits.items()}}
    for data_k in sets:
        for pca_k in sets:
            q = fits[pca_k].q_residual_of(cached[data_k])
            table = element_q_table(q, cached[data_k].numbers, limits[pca_k])
            frac = fraction_over(q, cached[data_k].numbers, limits[pca_k])
            summary[f"{data_k} | PCA {pca_k}"] = {"fraction_over": frac, "per_element": table}
            rows.append([data_k, pca_k, 100 * frac] + [100 * table[s]["fraction_over"] for s in species])
    rep.paragraph("Percentage of atoms above the limit (mean + 2σ of the PCA's own training atoms), each set under "
                  "each PCA:")
    rep.table(["frames", "PCA", "all %"] + [f"{s} %" for s in species], rows, digits=1)
    return summary
