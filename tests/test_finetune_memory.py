"""Micro-batches (issue 15 item 5): a batch split into micro-batches gives the same update as the whole batch.

Fine-tuning memory grows with the atoms of one gradient pass (the force loss differentiates
through the forces); ``micro_batch_atoms`` caps them by splitting a batch into whole-frame
micro-batches whose gradients are weighted to add up to the batch's.  Checked in float64
on the Morse toy: the split run equals the unsplit one to round-off, single- and multihead.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from jaxuft.finetune import FinetuneConfig, finetune
from jaxuft.models.pair import morse_config, morse_params
from jaxuft.potential import Potential

ZS = (29, 47)


def frames(n, seed):
    rng = np.random.default_rng(seed)
    teacher = Potential(morse_config(ZS), morse_params(2, D=0.2, a=1.3, r0=1.8), "float64")
    out = []
    while len(out) < n:
        k = int(rng.integers(5, 12))  # mixed sizes: the node weights of the micro-batches differ
        L = 5.5 * (k / 8) ** (1 / 3)
        a = Atoms(numbers=rng.choice(ZS, size=k), positions=rng.uniform(0, L, (k, 3)), cell=np.eye(3) * L, pbc=True)
        if a.get_all_distances(mic=True)[np.triu_indices(k, 1)].min() < 1.3:
            continue
        r = teacher.predict([a])[0]
        a.calc = SinglePointCalculator(a, energy=r["energy"], forces=r["forces"], stress=r["stress"])
        out.append(a)
    return out


@pytest.mark.parametrize("multihead", [False, True])
def test_micro_batches_give_the_same_update(multihead):
    train, valid = frames(9, 0), frames(3, 1)
    student = Potential(morse_config(ZS), morse_params(2, D=0.1, a=1.5, r0=1.5), "float64")
    cfg = FinetuneConfig(epochs=2, batch_size=4, dtype="float64", progress=False, allow_worse=True, keep="last",
                         replay_count=4, multihead=multihead, optim=dict(lr=0.02, ema_decay=None))
    replay = "generate" if multihead else None
    whole = finetune(student, train, valid=valid, replay=replay, config=cfg)
    split = finetune(student, train, valid=valid, replay=replay, config=cfg.replace(micro_batch_atoms=12))
    assert whole.manifest["data"]["micro_batch_frames"] == 4 and split.manifest["data"]["micro_batch_frames"] == 1
    for x, y in zip(jax.tree_util.tree_leaves(whole.params), jax.tree_util.tree_leaves(split.params)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-9, atol=1e-12)
    lw = [r["loss"] for r in whole.history if r["split"] == "train"]
    ls = [r["loss"] for r in split.history if r["split"] == "train"]
    np.testing.assert_allclose(ls, lw, rtol=1e-9)
    assert not np.allclose(lw[0], lw[-1])  # it trained
