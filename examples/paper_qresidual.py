"""The paper's Q-residual analysis (Wong & Yang, arXiv 2603.10159), computed on device with jaxuft.

For the deep eutectic solvent (chclca, 197 atoms, 7 elements):

1. per-atom SOAP (r_cut 5 Å, n_max 8, l_max 6, sigma 0.375 Å, periodic, all 7
   species; 11 172 features, equal to dscribe's) of the naive training set
   ``train/naive/N-50.xyz`` and the periodic one ``train/periodic/FT5.xyz``;
2. PCA with 5 components fitted on both sets together: explained-variance
   ratios and the PC1–PC2 scatter with each set's convex hull;
3. PCA fitted on each set alone: per-element mean Q of each set under its own
   and under the other's PCA (the naive set misses states the periodic one covers);
4. the 9 ns long runs (``long/N-50.xyz``, ``long/FT5.xyz``): per-element Q along
   the run under the model's own training PCA, with the paper's mean ± 2σ band;
5. the same with the model's own descriptors instead of SOAP (``--model``,
   default "sevennet-0" when jaxuft can load it).

Usage::

    python examples/paper_qresidual.py [--data ../shared/paper-data] [--out out/paper_qresidual]
                                       [--model NAME_OR_PATH | --no-model] [--max-frames N]

Plots and a ``summary.json`` go to ``--out/<descriptor>/``.  On a 2-core CPU the SOAP
part takes a few minutes (the 11 172 × 11 172 covariance dominates); on a GPU seconds.
Memory: one 11 172² float64 sum per training set (1 GB each) and nothing of that size
besides; descriptors are streamed, not kept (peak RSS in ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def read(path: Path, max_frames: int | None):
    import ase.io

    frames = ase.io.read(path, ":")
    if any("thermo_row" in a.info for a in frames):
        frames = sorted(frames, key=lambda a: int(a.info.get("thermo_row", 0)))
    return frames[:max_frames] if max_frames else frames


def mean_q_table(results: dict) -> tuple[list[str], dict]:
    """Per-element mean Q of each (set, PCA) result."""
    from jaxuft.uq import per_element

    tables = {k: per_element(r["q"], r["numbers"]) for k, r in results.items()}
    symbols = list(next(iter(tables.values())))
    return symbols, tables


def print_table(title: str, symbols, tables: dict) -> None:
    cols = list(tables)
    width = max(14, max(len(c) for c in cols) + 2)
    print(title)
    print(f"{'element':>8}" + "".join(f"{c:>{width}}" for c in cols))
    for s in symbols:
        print(f"{s:>8}" + "".join(f"{tables[c][s]['mean']:>{width}.4g}" for c in cols))


def analyse(label: str, descriptor, train: dict, long: dict, out: Path, n_components: int = 5, dtype: str = "float64") -> dict:
    """Steps 2-4 for one descriptor; returns the numbers written to summary.json.

    Memory: each set's descriptors stream into its covariance accumulator (one ``F x F``
    sum per set) and are not kept; each set's own PCA reads its sums in place, then the
    sums are added into one accumulator in place for the joint PCA (no merged copy, no
    covariance copy); scoring computes the descriptors again, each set once for all PCAs."""
    from jaxuft.uq import PCA, ElementLimits, per_structure_element, plots
    from jaxuft.uq.analysis import _progress, accumulate, fit_pca, score_frames, score_frames_multi

    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"descriptor": descriptor.settings()}
    t0 = time.perf_counter()
    accs = {}
    for k, frames in train.items():
        stream = (np.asarray(x, dtype=np.float64) for x in descriptor.compute_iter(frames))
        accs[k] = accumulate(_progress(stream, len(frames), f"{label} {k}", True), dtype, chunk_rows=1024)
    t_desc = time.perf_counter() - t0
    n_feat = accs[next(iter(accs))].n_features
    print(f"[{label}] descriptors + covariance sums of {sum(len(v) for v in train.values())} frames: "
          f"{n_feat} features, {t_desc:.1f} s")

    # 3a. each set's own PCA (the sums are read in place) ---------------------------
    names = list(accs)
    own_pca = {}
    for k in names:
        own_pca[k] = fit_pca(accs[k], n_components, dtype=dtype)
        print(f"[{label}] PCA on {k} alone: explained variance ratio "
              + " ".join(f"{r:.4f}" for r in own_pca[k].explained_variance_ratio_))

    # 2. joint PCA: the other sets' sums added into the first's, then fitted in place ----
    t0 = time.perf_counter()
    joint = accs.pop(names[0])
    for k in names[1:]:
        joint.absorb(accs.pop(k))
    pca = PCA(n_components, dtype=dtype).fit_accumulator(joint, consume=True)
    del joint
    t_pca = time.perf_counter() - t0
    ratios = pca.explained_variance_ratio_
    print(f"[{label}] PCA ({n_components} components) on {' + '.join(names)}: explained variance ratio "
          + " ".join(f"{r:.4f}" for r in ratios) + f" (sum {ratios.sum():.4f}; {t_pca:.1f} s)")
    summary["joint"] = {"sets": names, "explained_variance_ratio": ratios.tolist(), "fit_s": t_pca}

    # 3b. each set under the joint and each own PCA --------------------------------
    scored = {k: score_frames_multi({"joint": pca, **own_pca}, descriptor, train[k], progress=True,
                                    label=f"{label} scoring {k}") for k in names}
    scores = {k: scored[k]["joint"]["scores"] for k in names}
    plots.pc_scatter(scores, out / "pc_scatter.png", explained_ratio=ratios,
                     title=f"{label}: PCA of {' + '.join(names)}")
    own = {k: (own_pca[k], ElementLimits.from_values(scored[k][k]["q"], scored[k][k]["numbers"], 2.0))
           for k in names}
    cross = {f"{k} | PCA {m}": scored[k][m] for k in names for m in names}
    symbols, tables = mean_q_table(cross)
    print_table(f"[{label}] per-element mean Q (set | PCA):", symbols, tables)
    summary["mean_q"] = {c: {s: tables[c][s]["mean"] for s in symbols} for c in tables}
    summary["limits_mean_plus_2sigma"] = {k: own[k][1].to_dict() for k in names}
    for m in names:
        sets = {k: (cross[f"{k} | PCA {m}"]["q"], cross[f"{k} | PCA {m}"]["numbers"]) for k in names}
        plots.q_distributions(sets, out / f"q_distributions_pca_{m}.png", limits=own[m][1], title=f"{label}: Q under the PCA of {m}")
    del scored, cross

    # 4. long runs under the model's own training PCA ---------------------------------
    summary["long"] = {}
    for k, frames in long.items():
        if k not in own:
            continue
        p, lim = own[k]
        res = score_frames(p, descriptor, frames, progress=True)
        t_ns = np.array([0.5e-3 * float(a.info.get("thermo_row", i)) for i, a in enumerate(frames)])
        syms, table = per_structure_element(res["q"], res["numbers"], res["frame_sizes"], "mean")
        plots.q_timeseries(t_ns, table, syms, out / f"q_timeseries_long_{k}.png", limits=lim,
                           xlabel="time (ns)", title=f"{label}: long run of {k}, mean Q per element (band: training mean ± 2σ)")
        over = {s: float(np.mean(table[:, j] > lim.limit[s])) for j, s in enumerate(syms) if s in lim.limit}
        summary["long"][k] = {"n_frames": len(frames), "fraction_frames_mean_q_over_limit": over,
                              "mean_q": {s: float(np.nanmean(table[:, j])) for j, s in enumerate(syms)}}
        print(f"[{label}] long run {k} ({len(frames)} frames): fraction of frames whose mean Q is over the "
              "training mean + 2σ: " + ", ".join(f"{s} {v:.2f}" for s, v in over.items()))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"[{label}] wrote {out}/")
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT / ".." / "shared" / "paper-data"), help="paper data folder")
    ap.add_argument("--out", default="out/paper_qresidual", help="output folder for plots and summary.json")
    ap.add_argument("--model", default="sevennet-0", help="model (name or path) for the model-descriptor analysis")
    ap.add_argument("--no-model", action="store_true", help="skip the model-descriptor analysis")
    ap.add_argument("--no-soap", action="store_true", help="skip the SOAP analysis")
    ap.add_argument("--max-frames", type=int, default=None, help="use at most this many frames per file (quick runs)")
    ap.add_argument("--no-long", action="store_true", help="skip the long-run time series")
    ap.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    args = ap.parse_args(argv)

    data = Path(args.data) / "chclca"
    if not data.exists():
        print(f"paper data not found at {data}; pass --data (see shared/paper-data/README.md)", file=sys.stderr)
        return 2
    from jaxuft.uq import ModelDescriptor, soap_descriptor, species_of

    train = {"N-50": read(data / "train/naive/N-50.xyz", args.max_frames),
             "FT5": read(data / "train/periodic/FT5.xyz", args.max_frames)}
    long = {} if args.no_long else {"N-50": read(data / "long/N-50.xyz", args.max_frames),
                                    "FT5": read(data / "long/FT5.xyz", args.max_frames)}
    species = species_of([a for v in train.values() for a in v])
    out = Path(args.out)
    summaries = {}
    if not args.no_soap:
        desc = soap_descriptor(species, r_cut=5.0, n_max=8, l_max=6, sigma=0.375, periodic=True, dtype=args.dtype)
        summaries["soap"] = analyse("SOAP", desc, train, long, out / "soap", dtype=args.dtype)
    if not args.no_model:
        try:
            desc = ModelDescriptor(args.model, dtype=args.dtype)
        except Exception as exc:  # a model zoo name that is not available here, a missing file, ...
            print(f"[model] skipped: could not load {args.model!r}: {exc}")
        else:
            label = f"model {Path(str(args.model)).name}"
            summaries["model"] = analyse(label, desc, train, long, out / "model", dtype=args.dtype)
    (out / "summary.json").write_text(json.dumps(summaries, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
