"""The naive protocol (R parallel foundation runs, N labels, fine-tune once) and the nonperiodic control (first N frames of one run)."""

from __future__ import annotations

from .select import select_first, select_qres, select_uniform
from .steps import Context

__all__ = ["run_naive", "run_nonperiodic"]


def _descriptor(ctx: Context, kind: str):
    from ..uq.descriptors import ModelDescriptor, soap_descriptor

    if kind == "soap":
        from ase.data import chemical_symbols

        return soap_descriptor(sorted({chemical_symbols[z] for z in ctx.start.numbers}), periodic=bool(ctx.start.pbc.all()))
    return ModelDescriptor(ctx.foundation, dtype="float64")


def select_frames(ctx: Context, traj_path: str, n: int, selection, reference_paths=()):
    """Frames of a saved trajectory chosen by the protocol's selection settings: ``(frames, info)``."""
    replicas = ctx.trajectory_frames(traj_path)
    if selection.method == "qres":
        reference = [a for p in reference_paths for a in ctx.labelled(p)]
        return select_qres(replicas, n, reference, _descriptor(ctx, selection.descriptor),
                           n_components=selection.n_components, window=selection.window)
    return select_uniform(replicas, n, selection.window), {"method": "uniform", "window": selection.window}


def run_naive(ctx: Context) -> dict:
    """R replicas x T steps with the foundation model, N frames labelled, one fine-tune from the foundation."""
    s = ctx.cfg.naive
    md = ctx.md_stage("naive/md", model=None, steps=s.steps, replicas=s.replicas, seed=ctx.cfg.seed)
    labels = ctx.label_stage("naive/labels", lambda: select_frames(ctx, md["trajectory"], s.n_labels, s.selection))
    ft = ctx.finetune_stage("naive/finetune", start_model=None, train=[labels["labels"]])
    return {"model": ft["model"], "train": [labels["labels"]], "md": [md], "labels": [labels], "finetune": [ft]}


def run_nonperiodic(ctx: Context) -> dict:
    """One foundation run long enough for N frames every ``label_every`` steps; the first N are labelled."""
    s = ctx.cfg.nonperiodic
    every = s.label_every // ctx.cfg.md.record_every
    md = ctx.md_stage("nonperiodic/md", model=None, steps=s.n_labels * s.label_every, replicas=1,
                      seed=ctx.cfg.seed + 2)

    def frames():
        return select_first(ctx.trajectory_frames(md["trajectory"])[0], s.n_labels, every), {
            "method": "first", "every_steps": s.label_every}

    labels = ctx.label_stage("nonperiodic/labels", frames)
    ft = ctx.finetune_stage("nonperiodic/finetune", start_model=None, train=[labels["labels"]])
    return {"model": ft["model"], "train": [labels["labels"]], "md": [md], "labels": [labels], "finetune": [ft]}
