"""``finetune_potential``: the library call of the workflow loops (a Potential and labelled Atoms in, a Potential out).

    from jaxuft.finetune import finetune_potential, FinetuneConfig
    res = finetune_potential(pot, frames, FinetuneConfig(epochs=20, e0s="lstsq"))
    state, traj = sim.run(state, res.potential.params, n_steps=1000)   # compiles nothing new

``res.potential`` shares ``pot``'s module object and dtype, so code compiled for
``pot`` (MD, labelling, Q-residual descriptors) runs with the new params as is.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

from .config import FinetuneConfig
from .trainer import FinetuneError, FinetuneResult, Trainer


def finetune_potential(
    potential,
    frames: Sequence,
    config: FinetuneConfig | dict | None = None,
    *,
    valid=None,
    replay=None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Fine-tune ``potential`` on ``frames`` (ASE Atoms with energy/forces, e.g. a SinglePointCalculator).

    config: a :class:`FinetuneConfig` (or its dict); its defaults are the safe few-frame ones and
      the result is never worse on validation than ``potential`` unless ``allow_worse=True``.
      When ``config`` does not set ``dtype``, training runs in the potential's dtype.
      ``e0s="lstsq"`` refits the per-element reference energies in closed form first (for an
      oracle whose energy zero differs from the model's); ``result.manifest["e0s"]`` reports them.
    valid / replay: as :func:`jaxuft.finetune.finetune` (with fewer than ``small_data_frames``
      frames and no ``valid``, the training frames are the validation set and a warning says so).
    out_dir / resume: checkpoint, metrics, model/ and manifest.json; ``resume=True`` continues.

    Returns a :class:`FinetuneResult` whose ``potential`` is ``potential.with_params(...)``:
    the same module object, params cast to ``potential.dtype``.
    """
    from ..potential import Potential

    if not isinstance(potential, Potential):
        raise FinetuneError(
            f"finetune_potential needs a jaxuft Potential (got {type(potential).__name__}); "
            "load one with jaxuft.load(NAME_OR_PATH)"
        )
    if isinstance(config, dict):
        config = FinetuneConfig(**config)
    config = config or FinetuneConfig()
    if "dtype" not in config.model_fields_set:
        config = config.replace(dtype=np.dtype(potential.dtype).name)
    if not isinstance(frames, (list, tuple)) or not frames:
        raise FinetuneError("finetune_potential needs a non-empty list of labelled ASE Atoms (frames)")
    trainer = Trainer(potential, list(frames), valid=valid, replay=replay, config=config, out_dir=out_dir, log=log)
    res = trainer.run(resume=resume)
    # back onto the caller's module and dtype: MD compiled for `potential` reuses its programs
    res.potential = potential.with_params(res.params)
    res.params = res.potential.params
    return res
