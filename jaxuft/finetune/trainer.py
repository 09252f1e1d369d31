"""The fine-tuning driver: ``Trainer`` (set-up + loop + outputs) and ``finetune()``; data -> E0s -> trainable subset -> (cache) -> optax epochs -> Potential.

    from jaxuft.finetune import finetune, FinetuneConfig
    result = finetune("sevennet-0", "train.xyz", config=FinetuneConfig(epochs=50), out_dir="ft")
    result.potential          # a Potential with the fine-tuned params (same compiled code)

Every epoch: shuffled padded batches (one compiled shape per size group), one
jitted optax step per batch with the learning rate as a runtime argument, EMA,
validation (with the EMA params when EMA is on), replay hold-out, schedule and
early-stopping updates, metrics to CSV/JSON, and an atomic checkpoint with
everything needed to continue bit for bit (``resume=True``).

The pieces: ``config.py`` (pydantic settings, presets), ``setup.py`` (data, validation
split, E0s, trainable leaves, replay, cache), ``step.py`` (the jitted optax step),
``loop.py`` (typed ``TrainState``, epochs, checkpoints, exact resume) and ``outputs.py``
(which params are returned, with the starting model as epoch 0 and a candidate; manifest).

Output directory::

    checkpoint.safetensors   training state (atomic, every epoch)
    metrics.csv / .json      per-epoch RMSE/MAE on train / valid / replay_holdout
    learning_curve.png
    model/                   the fine-tuned Potential (jaxuft model format)
    manifest.json            data, hyperparameters, E0s, metrics, forgetting, timings

Exactness of ``resume``: the checkpoint holds every array of the state (trainable
params, optimiser state, EMA, best params, RNG key) and the host-side state
(epoch, step, schedule, early stopping, history); batches are drawn from the key
alone.  On CPU a resumed run reproduces an uninterrupted one bit for bit (tested in
float64).  On GPUs XLA's scatter-adds are not deterministic unless
``XLA_FLAGS=--xla_gpu_deterministic_ops=true`` is set.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

from .config import FinetuneConfig
from .loop import TrainerLoop, TrainState
from .outputs import CHECKPOINT, FinetuneResult, TrainerOutputs, save_potential
from .setup import FinetuneError, TrainerSetup
from .step import train_step_fn

__all__ = ["CHECKPOINT", "FinetuneConfig", "FinetuneError", "FinetuneResult", "Trainer", "TrainState", "finetune",
           "save_potential", "train_step_fn"]


class Trainer(TrainerSetup, TrainerLoop, TrainerOutputs):
    """Sets a fine-tune up (data, E0s, trainable leaves, replay, cache, optimiser) and runs it (``run``)."""


# ---- entry point -----------------------------------------------------------------------
def finetune(
    model,
    train,
    *,
    valid=None,
    replay=None,
    config: FinetuneConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    callbacks: Sequence[Callable] = (),
    log: Callable[[str], None] | None = None,
    **overrides,
) -> FinetuneResult:
    """Fine-tune ``model`` on ``train`` and return the result (see module docstring).

    model: a Potential or anything :func:`jaxuft.load` accepts.
    train/valid: extxyz path(s), ``Atoms`` list or :class:`Frame` list (valid: split off by seed if None).
    replay: None, ``"generate"`` (rattled bulk crystals of the training elements), or structures
      (path/Atoms) to pseudo-label with the initial model.
    overrides: FinetuneConfig fields (``loss_forces_weight=10`` / ``optim_lr=1e-3`` reach the nested ones).
    stop_after: train at most this many epochs in this call (the checkpoint lets ``resume`` continue).
    """
    cfg = (config or FinetuneConfig()).replace(**overrides) if overrides else (config or FinetuneConfig())
    trainer = Trainer(model, train, valid=valid, replay=replay, config=cfg, out_dir=out_dir, log=log)
    return trainer.run(resume=resume, stop_after=stop_after, callbacks=callbacks)


