"""The result tables of a run, computed from the files in its directory (deterministic for a config and seed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fileio import atomic_write_json
from .evaluate import residuals
from .steps import Context

__all__ = ["collect_results"]


def _bonds(frames, pairs) -> list[dict]:
    out = []
    if not pairs:
        return out
    from ..analysis import bond_formation

    for a, b, cutoff in pairs:
        res = bond_formation(frames, a, b, cutoff)
        out.append({"pair": f"{a}-{b}", "cutoff_A": float(cutoff), "criterion": res["criterion"],
                    "frames_with_bond": int(res["n_frames_with_bond"]), "n_frames": int(res["n_frames"])})
    return out


def _qres(ctx: Context, train_paths, frames) -> dict:
    from ..uq.analysis import element_table, fit_qres, score_frames
    from .naive import _descriptor

    train = [a for p in train_paths for a in ctx.labelled(p)]
    if not train or not frames:
        return {}
    desc = _descriptor(ctx, ctx.cfg.report.qres_descriptor)
    n_feat = desc.compute(train[:1]).shape[1]
    n_comp = int(min(ctx.cfg.report.n_components, n_feat - 1, max(1, sum(len(a) for a in train) - 1)))
    fit = fit_qres(desc, train, n_components=n_comp)
    scored = score_frames(fit.pca, desc, frames)
    table = element_table(scored, fit.limits)
    lim = fit.limits.array(scored["numbers"], missing=np.inf)
    return {"n_components": n_comp, "descriptor": ctx.cfg.report.qres_descriptor,
            "explained_variance_pct": [float(100 * v) for v in fit.pca.explained_variance_ratio_],
            "fraction_beyond_limit": float(np.mean(scored["q"] > lim)), "per_element": table,
            "q_eval": scored["q"].tolist(), "q_train": fit.q_train.tolist(),
            "numbers_eval": scored["numbers"].tolist(), "numbers_train": fit.numbers.tolist(),
            "limits": fit.limits.to_dict()}


def collect_results(ctx: Context, protocols: dict, evaluation: dict | None) -> dict:
    """Per protocol: labels, fine-tuning, compilations; per evaluated model: residuals, density, bonds, Q."""
    cfg = ctx.cfg
    res = {"name": cfg.name, "seed": cfg.seed, "n_atoms": len(ctx.start),
           "formula": ctx.start.get_chemical_formula(), "oracle": cfg.labelling.oracle.model_dump(mode="json", exclude_none=True),
           "foundation": cfg.foundation.model, "protocols": {}, "evaluation": {}}
    for name, p in protocols.items():
        res["protocols"][name] = {
            "n_labels": sum(lab["n_labelled"] for lab in p["labels"]),
            "n_failed": sum(len(lab["failed"]) for lab in p["labels"]),
            "failed": [f for lab in p["labels"] for f in lab["failed"]],
            "md_steps": sum(m["steps"] * m["replicas"] for m in p["md"]),
            "rounds": len(p["finetune"]),
            "finetune": [{k: ft.get(k) for k in ("n_train_frames", "best_epoch", "selected", "kept_start", "final_metrics")}
                         for ft in p["finetune"]],
            "e0s": p["finetune"][-1].get("e0s"),
            "selection": [lab.get("selection") for lab in p["labels"]],
        }
    if evaluation:
        for name, ev in evaluation.items():
            model_frames = ctx.trajectory_frames(ev["md"]["trajectory"])[0]
            labelled = ctx.labelled(ev["labels"]["labels"])
            r = residuals(model_frames, labelled)
            entry = {"model": ev["model"], "residuals": r, "stopped": ev["md"]["stopped_replicas"]}
            if all(model_frames[0].pbc):
                from ..analysis import density_series

                d = density_series(model_frames)["density"]
                entry["density_g_cm3"] = {"mean": float(d.mean()), "std": float(d.std()), "first": float(d[0]),
                                          "last": float(d[-1]), "series": d.tolist(),
                                          "time_fs": [float(a.info["time_fs"]) for a in model_frames]}
            entry["bonds"] = _bonds(model_frames, cfg.report.bonds)
            if name in protocols:
                entry["qres"] = _qres(ctx, protocols[name]["train"], labelled)
            res["evaluation"][name] = entry
    atomic_write_json(Path(ctx.run.path) / "results.json", res)
    return res
