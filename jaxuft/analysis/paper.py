"""``jaxuft paper reproduce``: the paper's evidence (residuals, HCl formation, densities, RDFs, Q-residuals) from its data."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..progress import get_logger
from . import plots
from .bonds import bond_formation, cutoff_scan, nearest_partner
from .density import density_series
from .io import read_frames, read_thermo
from .rdf import rdf_pairs
from .report import Report, fmt
from .residuals import thermo_energy_residuals
from .thermo import series_stats, thermo_time_ns

log = get_logger(__name__)

#: MD timestep of the paper's LAMMPS runs (fs; paper-data README: 0.5 fs, one thermo row = 1000 steps)
TIMESTEP_FS = 0.5
#: the H–Cl distance below which a frame counts as holding HCl (between covalent H–Cl and Cl⁻···H hydrogen bonds)
HCL_CUTOFF = 1.6
HCL_SCAN = (1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0)


@dataclass(frozen=True)
class Model:
    """One fine-tuned (or untouched) model of the paper and its files under ``chclca/``."""

    name: str
    family: str
    eval: str
    thermo: str
    train: str | None


def chclca_models() -> list[Model]:
    """U, N-10..50, NP-10..50, FT1..5 with their evaluation frames, thermo logs and training sets."""
    sizes = (10, 21, 31, 40, 50)
    out = [Model("U", "foundation", "eval/U.xyz", "thermo/Periodic-U.tsv", None)]
    out += [Model(f"N-{n}", "naive", f"eval/N-{n}pts.xyz", f"thermo/Naive-N-{n}pts.tsv", f"train/naive/N-{n}.xyz") for n in sizes]
    out += [Model(f"NP-{n}", "nonperiodic", f"eval/NP-{n}pts.xyz", f"thermo/Nonperiodic-NP-{n}pts.tsv",
                  f"train/nonperiodic/NP-{n}.xyz") for n in sizes]
    out += [Model(f"FT{k}", "periodic", f"eval/FT{k}.xyz", f"thermo/Periodic-FT{k}.tsv", f"train/periodic/FT{k}.xyz")
            for k in range(1, 6)]
    return out


#: the 9 ns runs: (model, DFT frames, thermo log)
LONG_RUNS = (("N-50", "long/N-50.xyz", "thermo/long-Naive.tsv"), ("FT5", "long/FT5.xyz", "thermo/long-Periodic.tsv"))
TRAIN_SETS = {"N-50": "train/naive/N-50.xyz", "FT5": "train/periodic/FT5.xyz", "NP-50": "train/nonperiodic/NP-50.xyz"}


def check_layout(data: Path) -> Path:
    """``data/chclca`` with every file the report reads, or a one-line error naming the first missing one."""
    root = Path(data) / "chclca"
    if not root.is_dir():
        raise FileNotFoundError(f"{root} not found: pass the paper-data folder (the one holding chclca/ and "
                                "liclcocl2/, see shared/paper-data/README.md)")
    need = [p for m in chclca_models() for p in (m.eval, m.thermo, m.train) if p]
    need += [p for _, f, t in LONG_RUNS for p in (f, t)] + list(TRAIN_SETS.values())
    for p in need:
        if not (root / p).exists():
            raise FileNotFoundError(f"{root / p} is missing: the paper-data folder is incomplete (see its README.md)")
    return root


class _Cache:
    """Frames and thermo tables read once."""

    def __init__(self, root: Path, max_frames: int | None):
        self.root, self.max_frames = root, max_frames
        self._frames: dict = {}
        self._thermo: dict = {}

    def frames(self, rel: str):
        if rel not in self._frames:
            f = read_frames(self.root / rel)
            self._frames[rel] = f[: self.max_frames] if self.max_frames else f
        return self._frames[rel]

    def thermo(self, rel: str):
        if rel not in self._thermo:
            self._thermo[rel] = read_thermo(self.root / rel)
        return self._thermo[rel]


def _trend(first: float, last: float) -> str:
    return "grows" if last > first else "falls" if last < first else "stays"


def residual_section(rep: Report, c: _Cache, out: Path) -> dict:
    models = chclca_models()
    rows, summary, groups = [], {}, {}
    for m in models:
        frames = c.frames(m.eval)
        res = thermo_energy_residuals(frames, c.thermo(m.thermo))
        n_train = len(read_frames(c.root / m.train)) if m.train else 0
        hcl = bond_formation(frames, "H", "Cl", HCL_CUTOFF)
        summary[m.name] = {"family": m.family, "n_train": n_train, "n_eval": res["n"], "mean": res["mean"],
                           "rmse": res["rmse"], "max_abs": res["max_abs"], "rows": res["rows"],
                           "residual_meV_per_atom": res["residual_meV_per_atom"],
                           "eval_frames_with_hcl": hcl["n_frames_with_bond"]}
        rows.append([m.name, m.family, n_train, res["n"], res["mean"], res["rmse"], res["max_abs"],
                     f"{hcl['n_frames_with_bond']}/{hcl['n_frames']}"])
        if m.train:
            groups.setdefault(m.family, []).append((n_train, res["mean"], res["rmse"]))
    rep.heading("1. Energy residual of each model on its own evaluation run")
    rep.paragraph(
        "Each model's 1 ns NPT evaluation run (LAMMPS, 300 K) was labelled with DFT on snapshots; the residual is "
        "the model's energy `PotEng` in the run's thermo log (`chclca/thermo/*.tsv`) at the snapshot's "
        "`thermo_row` minus the DFT energy (`chclca/eval/*.xyz`), per atom. Columns: training frames, "
        "evaluated snapshots, mean and RMSE of the residual and the largest |residual| (meV/atom), and the "
        f"snapshots holding an H–Cl pair closer than {HCL_CUTOFF:g} Å (section 3).")
    rep.table(["model", "family", "train frames", "eval frames", "mean (meV/atom)", "RMSE (meV/atom)",
               "max abs (meV/atom)", f"frames with H–Cl < {HCL_CUTOFF:g} Å"], rows)
    fig = plots.residuals_vs_training(groups, out / "energy_residuals.png",
                                      reference={"U (foundation)": (summary["U"]["mean"], summary["U"]["rmse"])},
                                      title="Energy residual on each model's own evaluation run")
    rep.figure(fig, "Mean and RMSE of E_model − E_DFT (meV/atom) against the number of training frames.")
    trend = []
    for fam, pts in groups.items():
        pts = sorted(pts)
        trend.append(f"{fam}: RMSE {fmt(pts[0][2])} → {fmt(pts[-1][2])} meV/atom from {pts[0][0]} to {pts[-1][0]} "
                     f"training frames ({_trend(pts[0][2], pts[-1][2])})")
    rep.bullets(trend + [f"untuned foundation model U: RMSE {fmt(summary['U']['rmse'])} meV/atom"])
    return summary


def long_section(rep: Report, c: _Cache, out: Path) -> dict:
    rep.heading("2. The 9 ns runs of N-50 and FT5: energy residual along the run")
    rows, summary, series = [], {}, {}
    for name, frames_rel, thermo_rel in LONG_RUNS:
        frames, thermo = c.frames(frames_rel), c.thermo(thermo_rel)
        res = thermo_energy_residuals(frames, thermo)
        t_ns = thermo["Step"][res["rows"]] * TIMESTEP_FS * 1e-6
        half = t_ns >= 0.5 * thermo["Step"][-1] * TIMESTEP_FS * 1e-6
        r = res["residual_meV_per_atom"]
        first = float(np.sqrt(np.mean(r[~half] ** 2))) if np.any(~half) else float("nan")
        second = float(np.sqrt(np.mean(r[half] ** 2))) if np.any(half) else float("nan")
        summary[name] = {"n": res["n"], "mean": res["mean"], "rmse": res["rmse"], "rmse_first_half": first,
                         "rmse_second_half": second, "time_ns": t_ns, "residual_meV_per_atom": r}
        rows.append([name, res["n"], res["mean"], res["rmse"], first, second, res["max_abs"]])
        series[name] = (t_ns, r)
    rep.table(["model", "DFT frames", "mean (meV/atom)", "RMSE (meV/atom)", "RMSE first half", "RMSE second half",
               "max abs (meV/atom)"], rows)
    fig = plots.lines(series, out / "long_run_residuals.png", "time (ns)", "E_model − E_DFT (meV/atom)",
                      title="Energy residual along the 9 ns runs", markers=True, hlines={"0": 0.0})
    rep.figure(fig, "Energy residual (meV/atom) of the DFT snapshots along the 9 ns runs.")
    return summary


def hcl_section(rep: Report, c: _Cache, out: Path) -> dict:
    rep.heading("3. HCl formation")
    sets = {f"long {n}": rel for n, rel, _ in LONG_RUNS}
    sets.update({f"train {k}": v for k, v in TRAIN_SETS.items()})
    summary, rows, series = {}, [], {}
    for label, rel in sets.items():
        frames = c.frames(rel)
        b = bond_formation(frames, "H", "Cl", HCL_CUTOFF)
        nn = nearest_partner(frames, "H", "Cl")
        scan = cutoff_scan(b["min_distance"], HCL_SCAN)
        summary[label] = {"n_frames": b["n_frames"], "n_frames_with_bond": b["n_frames_with_bond"],
                          "fraction": b["fraction"], "min_distance": b["min_distance"], "scan": scan,
                          "nearest_heavy_atom_cl_frames": nn["n_frames_with"]}
        rows.append([label, b["n_frames"], b["n_frames_with_bond"], 100 * b["fraction"], nn["n_frames_with"]]
                    + [scan[x] for x in HCL_SCAN])
        if label.startswith("long"):
            rowsel = np.array([a.info.get("thermo_row", k) for k, a in enumerate(frames)], dtype=float)
            series[label] = (rowsel * 1000 * TIMESTEP_FS * 1e-6, b["min_distance"])
    rep.paragraph(
        f"Criterion: {b['criterion']}; {HCL_CUTOFF:g} Å lies between a covalent H–Cl bond (about 1.3 Å) and the "
        "Cl⁻···H–O hydrogen bonds of the liquid. A second, cutoff-free count: frames with an H whose nearest heavy "
        f"atom is Cl ({nn['criterion']}). The last columns count frames for other cutoffs (Å).")
    rep.table(["frames", "n", f"with H–Cl < {HCL_CUTOFF:g} Å", "%", "H nearest to Cl"] + [f"< {x:g}" for x in HCL_SCAN],
              rows, digits={3: 1})
    d = summary["long N-50"]["min_distance"]
    ds = np.sort(d[np.isfinite(d)])
    inside = ds[(ds > 1.0) & (ds < 2.5)]
    if len(inside) > 1:
        k = int(np.argmax(np.diff(inside)))
        lo, hi = float(inside[k]), float(inside[k + 1])
        n_lo = int(np.sum(ds <= lo))
        edge = [float(x) for x in ds[(ds > lo) & (ds <= HCL_CUTOFF + 0.1)]]
        scan = summary["long N-50"]["scan"]
        near = [x for x in HCL_SCAN if abs(x - HCL_CUTOFF) <= 0.1 + 1e-9]
        ft5 = summary["long FT5"]
        summary["gap_long_N-50"] = {"below": lo, "above": hi, "n_below": n_lo, "between_gap_and_cutoff": edge}
        rep.paragraph(
            f"How the count depends on the criterion: the shortest H–Cl distances of the N-50 run's frames have "
            f"their widest gap between {fmt(lo, 3)} and {fmt(hi, 3)} Å, with {n_lo} of {len(d)} frames below it "
            f"(a proton on Cl). Frames just above the gap ({', '.join(fmt(x, 3) for x in edge) or 'none'} Å) decide "
            f"the exact count: cutoffs {' / '.join(f'{x:g}' for x in near)} Å count "
            f"{' / '.join(str(scan[x]) for x in near)} frames, the cutoff-free criterion "
            f"{summary['long N-50']['nearest_heavy_atom_cl_frames']}. Along the FT5 run the shortest H–Cl distance "
            f"is {fmt(np.nanmin(ft5['min_distance']), 3)} Å, so it counts {ft5['n_frames_with_bond']} at "
            f"{HCL_CUTOFF:g} Å; larger cutoffs start counting Cl⁻···H hydrogen bonds (scan above).")
    fig = plots.lines(series, out / "hcl_min_distance.png", "time (ns)", "shortest H–Cl distance (Å)",
                      title="Shortest H–Cl distance per DFT frame along the 9 ns runs", markers=True,
                      hlines={f"cutoff {HCL_CUTOFF:g} Å": HCL_CUTOFF})
    rep.figure(fig, "Shortest H–Cl distance (Å, minimum image) in each DFT frame of the 9 ns runs.")
    return summary


def density_section(rep: Report, c: _Cache, out: Path) -> dict:
    rep.heading("4. Density")
    rep.paragraph("From the thermo logs (LAMMPS `Density`, g/cm³, every 0.5 ps): mean, spread and drift over each "
                  "run, and the mean and least-squares drift over its second half (every run starts from the same structure and relaxes first); below, the density range of the DFT training frames.")
    summary, rows, panels = {}, [], {}
    runs = [(m.name, m.family, m.thermo) for m in chclca_models()] + [(f"{n} (9 ns)", "long", t) for n, _, t in LONG_RUNS]
    for name, fam, rel in runs:
        th = c.thermo(rel)
        t = thermo_time_ns(th, TIMESTEP_FS)
        st = series_stats(th["Density"], t)
        summary[name] = st
        rows.append([name, st["mean"], st["std"], st["min"], st["max"], st["tail_mean"], 1000 * st["tail_drift_per_time"]])
        stride = max(1, len(t) // 1000)
        for panel in ([fam] if fam != "foundation" else ["naive", "nonperiodic", "periodic"]):
            panels.setdefault(panel, {})[name] = (t[::stride], th["Density"][::stride])
    rep.table(["run", "mean", "std", "min", "max", "second-half mean", "second-half drift (mg/cm³ per ns)"], rows, digits=3)
    long_panel = panels.pop("long")
    fig = plots.lines({}, out / "density_eval_runs.png", "time (ns)", "density (g/cm³)", panels=panels,
                      title="Density along the 1 ns evaluation runs (U in every panel)")
    rep.figure(fig, "Density (g/cm³) along each model's evaluation run.")
    fig = plots.lines(long_panel, out / "density_long_runs.png", "time (ns)", "density (g/cm³)",
                      title="Density along the 9 ns runs")
    rep.figure(fig, "Density (g/cm³) along the 9 ns runs of N-50 and FT5.")
    trows = []
    for label, rel in TRAIN_SETS.items():
        rho = density_series(c.frames(rel))["density"]
        summary[f"train {label}"] = {"min": float(rho.min()), "max": float(rho.max()), "mean": float(rho.mean())}
        trows.append([label, len(rho), rho.min(), rho.max(), rho.mean()])
    rep.table(["training set", "frames", "min", "max", "mean"], trows, digits=3)
    return summary


def rdf_section(rep: Report, c: _Cache, out: Path) -> dict:
    rep.heading("5. Radial distribution functions of the 9 ns runs")
    pairs = (("H", "Cl"), ("O", "H"), ("Cl", "O"))
    curves, summary, rows = {}, {}, []
    by_run = {name: rdf_pairs(c.frames(rel), pairs, r_max=6.0, n_bins=120) for name, rel, _ in LONG_RUNS}
    for a, b in pairs:
        for name, rel, _ in LONG_RUNS:
            g = by_run[name][f"{a}-{b}"]
            curves.setdefault(f"{a}–{b}", {})[f"{name} (9 ns)"] = g
            k = int(np.argmax(g["g"]))
            within = int(np.searchsorted(g["edges"][1:], HCL_CUTOFF, side="right")) - 1
            cn = float(g["coordination"][within]) if within >= 0 else 0.0
            summary[f"{name} {a}-{b}"] = {"peak_r": float(g["r"][k]), "peak_g": float(g["g"][k]), "cn_at_cutoff": cn,
                                          "r": g["r"], "g": g["g"]}
            rows.append([f"{a}–{b}", name, g["r"][k], g["g"][k], cn])
    rep.paragraph(f"g(r) over the DFT frames of each run (0.05 Å bins, periodic images). Coordination: mean number "
                  f"of the second species within {fmt(float(g['edges'][within + 1]), 2)} Å of the first.")
    rep.table(["pair", "run", "first maximum r (Å)", "g at maximum", "coordination"], rows, digits=3)
    fig = plots.rdfs(curves, out / "rdf_long_runs.png", title="RDFs of the 9 ns runs")
    rep.figure(fig, "Radial distribution functions g(r) (r in Å) of the DFT frames of the 9 ns runs.")
    return summary


def reproduce(data, out, *, qres: bool = True, cache_dir=None, cache_dtype: str = "float32", max_frames: int | None = None,
              soap_n_max: int = 8, soap_l_max: int = 6, show_progress: bool | None = None) -> dict:
    """Write ``out/README.md`` (markdown), its PNG figures and ``out/summary.json``; return the summary.

    ``max_frames``: at most this many frames per file (quick checks); ``qres=False`` skips the SOAP/PCA part;
    ``cache_dir``: where per-file descriptors are kept (default ``out/cache``).
    """
    from ..fileio import atomic_write_json

    t0 = time.perf_counter()
    out = Path(out)
    root = check_layout(Path(data))
    c = _Cache(root, max_frames)
    rep = Report(out, "Reproducing Wong & Yang (2026) from the paper's data")
    rep.paragraph(
        "Generated by `jaxuft paper reproduce` from the paper's DFT labels, thermo logs and snapshots "
        "(`shared/paper-data`); every number below is computed by the command."
        + (f" Quick run: at most {max_frames} frames per file." if max_frames else ""))
    summary = {"data": str(Path(data).resolve()), "max_frames": max_frames}
    for key, section in (("residuals", residual_section), ("long_runs", long_section), ("hcl", hcl_section),
                         ("density", density_section), ("rdf", rdf_section)):
        log.info("section: %s", key)
        summary[key] = section(rep, c, out)
    if qres:
        from .paper_qres import qres_sections

        summary["qres"] = qres_sections(rep, c, out, Path(cache_dir) if cache_dir else out / "cache", cache_dtype,
                                        soap_n_max, soap_l_max, show_progress)
    summary["elapsed_s"] = time.perf_counter() - t0
    rep.paragraph(f"*Report written in {summary['elapsed_s']:.0f} s.*")
    rep.write("README.md")
    atomic_write_json(out / "summary.json", summary)
    return summary
