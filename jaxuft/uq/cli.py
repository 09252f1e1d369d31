"""``jaxuft qres``: fit a Q-residual model on training structures and score new frames.

    jaxuft qres fit --descriptor soap [--r-cut 5 --n-max 8 --l-max 6 --sigma 0.375] TRAIN.xyz... -o pca.npz
    jaxuft qres fit --descriptor model --model sevennet-0 TRAIN.xyz... -o pca.npz
    jaxuft qres fit --config qres.yaml TRAIN.xyz... -o pca.npz
    jaxuft qres score pca.npz FRAMES.xyz... -o OUT/

The ``fit`` settings are the fields of :class:`~jaxuft.uq.config.QResConfig` (one flag
each, derived from the model; ``jaxuft config schema qres`` prints them).

``register(subparsers)`` adds the ``qres`` command to the main parser; every leaf
sets ``func`` (call ``args.func(args)``).  ``python -m jaxuft.uq.cli ...`` also works.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from .config import add_config_arguments


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``qres fit`` and ``qres score`` to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "qres",
        help="Q-residual uncertainty: fit a PCA on training descriptors, score frames",
        description="Q-residual uncertainty from per-atom descriptors (SOAP or the model's own) and PCA.",
    )
    sub = p.add_subparsers(dest="qres_command", metavar="{fit,score}")
    sub.required = True

    f = sub.add_parser("fit", help="fit a PCA (and per-element limits) on training structures")
    f.add_argument("train", nargs="+", metavar="TRAIN.xyz", help="training structures (any ASE-readable file)")
    f.add_argument("-o", "--output", required=True, metavar="PCA_FILE", help="where to write the fitted model (.npz)")
    f.add_argument("--config", default=None, metavar="FILE",
                   help="YAML/TOML/JSON file of the settings below (QResConfig fields); flags override it")
    add_config_arguments(f)
    f.add_argument("--index", default=":", help="ASE index of frames to read from each file (default ':')")
    f.add_argument("--quiet", action="store_true")
    f.set_defaults(func=cmd_fit)

    s = sub.add_parser("score", help="Q and T² of frames under a fitted model: tables per element and per frame, plots")
    s.add_argument("pca_file", metavar="PCA_FILE")
    s.add_argument("frames", nargs="+", metavar="FRAMES.xyz")
    s.add_argument("-o", "--output", required=True, metavar="OUT", help="output directory")
    s.add_argument("--model", default=None, help="override the model of a model-descriptor fit (name or path)")
    s.add_argument("--index", default=":", help="ASE index of frames to read from each file (default ':')")
    s.add_argument("--no-plots", action="store_true")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_score)
    return p


def _read(paths, index):
    import ase.io

    frames, sources, counts = [], [], []
    for p in paths:
        if not Path(p).exists():
            raise SystemExit(f"error: {p} does not exist")
        try:
            got = ase.io.read(p, index)
        except Exception as exc:  # ASE raises many types for unreadable files
            raise SystemExit(f"error: cannot read {p}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        got = [got] if not isinstance(got, list) else got
        frames.extend(got)
        sources.append(str(p))
        counts.append(len(got))
    if not frames:
        raise SystemExit("error: no structures read")
    return frames, sources, counts


def _progress(args):
    """The ``progress`` argument for the workflow: None (a bar on a terminal) unless --quiet."""
    return False if getattr(args, "quiet", False) else None


def _check_elements(desc, frames, pca_file) -> None:
    """Atomic numbers within 1-118, and (SOAP) only elements the PCA was fitted with: one-line errors."""
    from ase.data import chemical_symbols

    from ..errors import StructureError
    from ..structures import check_atomic_numbers

    known = getattr(desc, "atomic_numbers", None)  # SOAP species; a model descriptor checks its own
    for k, a in enumerate(frames):
        try:
            check_atomic_numbers(a.get_atomic_numbers(), label=f"frame {k}")
        except StructureError as exc:
            raise SystemExit(f"error: {exc}") from None
        if known is not None:
            bad = sorted(set(int(z) for z in a.get_atomic_numbers()) - set(int(z) for z in known))
            if bad:
                raise SystemExit(
                    f"error: frame {k} contains element(s) {', '.join(chemical_symbols[z] for z in bad)} that the "
                    f"PCA in {pca_file} was not fitted with (its SOAP species: "
                    f"{' '.join(chemical_symbols[int(z)] for z in known)}); refit with `jaxuft qres fit` on data "
                    "that includes them (or list them with --species), or leave those frames out")


def _say(args, *msg):
    if not getattr(args, "quiet", False):
        print(*msg)


def _settings(args):
    from ..config import ConfigError
    from .config import config_from_args

    try:
        return config_from_args(args)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None


def cmd_fit(args) -> int:
    from .analysis import element_table, format_element_table

    cfg = _settings(args)
    frames, sources, _ = _read(args.train, args.index)
    _check_elements(None, frames, None)
    desc = cfg.descriptor_for(frames)
    _say(args, f"{len(frames)} training frames ({sum(len(a) for a in frames)} atoms) from {len(sources)} file(s); {desc!r}")
    fit = cfg.fit(frames, progress=_progress(args), sources=sources, descriptor=desc)
    path = fit.pca.save(args.output)
    ratios = " ".join(f"{r:.4f}" for r in fit.pca.explained_variance_ratio_)
    _say(args, f"PCA: {fit.pca.n_components_} components of {fit.pca.n_features_in_} features; explained variance ratio {ratios}")
    _say(args, f"limits (95%): Q (Jackson–Mudholkar) {fit.pca.q_limit(0.95):.5g}, T² {fit.pca.t2_limit(0.95):.5g}")
    table = element_table({"q": fit.q_train, "numbers": fit.numbers}, fit.limits)
    _say(args, format_element_table(table, f"training Q per element (limit = mean + {cfg.n_sigma:g} std):"))
    _say(args, f"wrote {path}")
    return 0


def cmd_score(args) -> int:
    import numpy as np

    from . import plots
    from .aggregate import per_structure_element
    from ..fileio import atomic_write_json
    from .analysis import element_table, file_table, format_element_table, format_file_table, frame_table, score_frames
    from .descriptors import from_settings
    from .limits import ElementLimits
    from .pca import PCA

    pca = PCA.load(args.pca_file)
    meta = pca.metadata
    if "descriptor" not in meta:
        raise SystemExit(f"error: {args.pca_file} has no descriptor settings; fit it with `jaxuft qres fit`")
    desc = from_settings(meta["descriptor"], potential=args.model)
    limits = ElementLimits.from_dict(meta["element_limits"]) if "element_limits" in meta else None
    frames, sources, counts = _read(args.frames, args.index)
    _check_elements(desc, frames, args.pca_file)
    res = score_frames(pca, desc, frames, progress=_progress(args))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    etab = element_table(res, limits)
    ftab = frame_table(res, limits)
    files = file_table(res, counts, sources, limits, pca.q_limit(0.95))
    file_of_frame = np.repeat(np.arange(len(sources)), counts)
    with open(out / "per_element.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        cols = ["count", "mean", "std", "median", "max"] + (["limit", "fraction_over"] if limits else [])
        w.writerow(["element"] + cols)
        for s, r in etab.items():
            w.writerow([s] + [r[c] for c in cols])
    with open(out / "per_frame.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        keys = list(ftab)
        w.writerow(["frame"] + keys + ["file", "frame_in_file"])
        first = np.cumsum([0] + list(counts))
        for k in range(len(res["frame_sizes"])):
            f = int(file_of_frame[k])
            w.writerow([k] + [ftab[c][k] if c != "flag" else int(ftab[c][k]) for c in keys]
                       + [sources[f], k - int(first[f])])
    file_cols = [c for c in files[0] if c != "per_element"]
    with open(out / "per_file.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(file_cols)
        for r in files:
            w.writerow([r[c] for c in file_cols])
    np.savez(out / "scores.npz", q=res["q"], t2=res["t2"], scores=res["scores"], numbers=res["numbers"],
             frame_sizes=res["frame_sizes"], frames_per_file=np.asarray(counts))
    summary = {
        "pca_file": str(args.pca_file),
        "frames": sources,
        "n_frames": int(len(res["frame_sizes"])),
        "descriptor": meta["descriptor"],
        "q_limit_jackson_mudholkar_95": pca.q_limit(0.95),
        "t2_limit_95": pca.t2_limit(0.95),
        "fraction_atoms_over_q_limit_jm95": float(np.mean(res["q"] > pca.q_limit(0.95))),
        "fraction_atoms_over_t2_limit_95": float(np.mean(res["t2"] > pca.t2_limit(0.95))),
        "per_element": etab,
        "frames_flagged": int(np.sum(ftab["flag"])) if "flag" in ftab else None,
        "per_file": files,
    }
    atomic_write_json(out / "summary.json", summary)  # strict JSON (NaN -> null), never half-written
    _say(args, format_element_table(etab, f"Q per element of {summary['n_frames']} frames:"))
    if "flag" in ftab:
        _say(args, f"frames with an atom above its element's limit: {summary['frames_flagged']} of {summary['n_frames']}")
    if len(files) > 1:
        _say(args, format_file_table(files, f"per file ({len(files)} files; summary.json has each file's element table):"))

    if not args.no_plots:
        extra = getattr(pca, "extra_arrays", {})
        sets = {}
        if "train_scores" in extra:
            sets["training"] = extra["train_scores"]
        sets["scored"] = res["scores"]
        if pca.n_components_ >= 2:
            plots.pc_scatter(sets, out / "pc_scatter.png", explained_ratio=pca.explained_variance_ratio_)
        symbols, table = per_structure_element(res["q"], res["numbers"], res["frame_sizes"], "mean")
        plots.q_timeseries(np.arange(len(res["frame_sizes"])), table, symbols, out / "q_timeseries.png", limits=limits,
                           title="mean Q per element")
        dists = {}
        if "train_q" in extra and "train_numbers" in extra:
            dists["training"] = (extra["train_q"], extra["train_numbers"])
        dists["scored"] = (res["q"], res["numbers"])
        plots.q_distributions(dists, out / "q_distributions.png", limits=limits)
    _say(args, f"wrote {out}/ (per_element.csv, per_frame.csv, per_file.csv, scores.npz, summary.json{', plots' if not args.no_plots else ''})")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="jaxuft")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
