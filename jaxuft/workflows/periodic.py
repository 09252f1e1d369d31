"""The periodic protocol: K rounds of (continue the trajectory, label n frames, fine-tune on all labels so far)."""

from __future__ import annotations

from .naive import select_frames
from .steps import Context

__all__ = ["run_periodic"]


def run_periodic(ctx: Context) -> dict:
    """Each round continues the previous round's state with the previous round's model (one compiled program:
    new params are arguments), selects ``labels_per_round`` frames, and fine-tunes warm-started from the
    previous params on every label so far."""
    s = ctx.cfg.periodic
    model, state, train = None, None, []
    mds, labs, fts = [], [], []
    for k in range(1, s.rounds + 1):
        tag = f"periodic/round_{k:02d}"
        md = ctx.md_stage(f"{tag}/md", model=model, steps=s.steps, replicas=1, seed=ctx.cfg.seed + 1,
                          start_state=state)
        labels = ctx.label_stage(f"{tag}/labels", lambda: select_frames(
            ctx, md["trajectory"], s.labels_per_round, s.selection, reference_paths=train))
        train = train + [labels["labels"]]
        ft = ctx.finetune_stage(f"{tag}/finetune", start_model=model, train=train)
        model, state = ft["model"], md["state"]
        mds.append(md), labs.append(labels), fts.append(ft)
    return {"model": model, "train": train, "md": mds, "labels": labs, "finetune": fts}
