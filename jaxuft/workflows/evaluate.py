"""Evaluation: every resulting model (and the foundation) runs from the same start; snapshots are labelled and compared."""

from __future__ import annotations

import numpy as np

from .select import strip_results, uniform_in_window, window_indices
from .steps import Context

__all__ = ["run_evaluation", "residuals"]


def run_evaluation(ctx: Context, models: dict[str, str | None]) -> dict:
    """``models``: name -> model directory (None = foundation).  Same seed and start for every model."""
    ev = ctx.cfg.evaluation
    out = {}
    for name, model in models.items():
        tag = f"evaluate/{name}"
        md = ctx.md_stage(f"{tag}/md", model=model, steps=ev.steps, replicas=1, seed=ctx.cfg.seed + 7)

        def snapshots(md=md):
            frames = ctx.trajectory_frames(md["trajectory"])[0]
            idx = uniform_in_window(window_indices(len(frames), ev.window), ev.snapshots)
            return [strip_results(frames[i]) for i in idx], {"method": "uniform", "window": ev.window}

        labels = ctx.label_stage(f"{tag}/labels", snapshots)
        out[name] = {"model": model or "foundation", "md": md, "labels": labels}
    return out


def residuals(model_frames, labelled) -> dict:
    """Model minus oracle for labelled snapshots matched to the model's own frames by MD step.

    Energies per atom (meV/atom): mean (the offset, which includes the difference of energy zeros),
    RMSE, and the centred RMSE (spread after removing the mean); forces: RMSE (meV/Å) over components.
    """
    by_step = {int(a.info["step"]): a for a in model_frames}
    rows = []
    f_err = []
    for lab in labelled:
        m = by_step.get(int(lab.info["step"]))
        if m is None:
            continue
        n = len(lab)
        de = (m.get_potential_energy() - lab.get_potential_energy()) / n * 1000.0
        df = (m.get_forces() - lab.get_forces()) * 1000.0
        f_err.append(df.ravel())
        rows.append({"step": int(lab.info["step"]), "time_fs": float(lab.info.get("time_fs", np.nan)),
                     "energy_residual_meV_atom": float(de),
                     "force_rmse_meV_A": float(np.sqrt(np.mean(df ** 2)))})
    if not rows:
        return {"n": 0, "rows": []}
    e = np.array([r["energy_residual_meV_atom"] for r in rows])
    f = np.concatenate(f_err)
    return {"n": len(rows), "energy_mean_meV_atom": float(e.mean()), "energy_rmse_meV_atom": float(np.sqrt(np.mean(e ** 2))),
            "energy_centred_rmse_meV_atom": float(e.std()), "force_rmse_meV_A": float(np.sqrt(np.mean(f ** 2))),
            "rows": rows}
