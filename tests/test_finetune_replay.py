"""Generated replay: pseudo-labels the model extrapolates wildly on are screened out (issue 13 regression).

SevenNet-0 labelled some generated crystals (e.g. rock-salt H-N at covalent distances,
1.4 Å³/atom) with 1e10 eV and 1e12 eV/Å; those frames made the training loss ~1e19 and
the replay hold-out error +1865 meV/atom.  Here a steeply repulsive Morse model for H, C
and O plays the foundation model: the same generator gives it crowded crystals with
huge forces, which must be dropped (and counted), while the kept set stays full-sized.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from jaxuft.finetune import FinetuneConfig
from jaxuft.finetune.data import Frame
from jaxuft.finetune.replay import generate_replay, screen
from jaxuft.models.pair import builtin_morse
from jaxuft.potential import Potential

ZS = (1, 6, 8)


def steep_morse():
    config, params = builtin_morse(ZS)
    params["a"][:] = 4.0
    params["D"][:] = 1.0
    params["r0"] = params["r0"] * 1.3
    params["e0"] = np.array([-1.0, -5.0, -4.0])
    return Potential(config, params, "float64")


def labelled_molecules(pot, n=4, seed=0):
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        a = Atoms(numbers=rng.choice(ZS, size=8), positions=rng.uniform(0, 6.0, (8, 3)), cell=np.eye(3) * 6.0, pbc=True)
        if a.get_all_distances(mic=True)[np.triu_indices(8, 1)].min() < 1.4:
            continue
        r = pot.predict([a])[0]
        a.calc = SinglePointCalculator(a, energy=r["energy"] + 0.1, forces=r["forces"], stress=r["stress"])
        out.append(a)
    return out


def test_screen_reasons():
    at = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.8]], cell=np.eye(3) * 5, pbc=True)
    f = np.zeros((2, 3))
    frames = [Frame(at, -2.0, f, None, source="ok"), Frame(at, -2.0, f + 50.0, None, source="hot"),
              Frame(at, 1e10, f, None, source="high"), Frame(at, float("nan"), f, None, source="nan")]
    kept, dropped = screen(frames, max_force=20.0, max_energy=5.0, e0s={1: -1.0})
    assert [k.source for k in kept] == ["ok"]
    assert [d["source"] for d in dropped] == ["hot", "high", "nan"]
    assert "force" in dropped[0]["reason"] and "E0s" in dropped[1]["reason"] and "non-finite" in dropped[2]["reason"]
    kept, dropped = screen(frames[:3], max_force=None, max_energy=None)
    assert len(kept) == 3 and not dropped


def test_generated_replay_has_bounded_labels_and_training_stays_finite():
    from jaxuft.finetune.trainer import Trainer

    pot = steep_morse()
    cfg = FinetuneConfig(epochs=1, batch_size=4, dtype="float64", progress=False, replay_count=12,
                         valid_fraction=0.0, small_data_frames=0, optim=dict(lr=1e-3))
    t = Trainer(pot, labelled_molecules(pot), replay="generate", config=cfg)
    info = t.replay_info
    assert info["n_frames"] == 12 and info["dropped"] > 0, info  # the generator does produce wild crystals here
    e0 = {1: -1.0, 6: -5.0, 8: -4.0}
    for s in t.replay_train_samples + t.replay_hold_samples:
        assert np.abs(s.forces).max() <= cfg.replay_max_force
        assert (s.energy - sum(e0[int(z)] for z in s.numbers)) / len(s.numbers) <= cfg.replay_max_energy
    res = t.run()
    losses = [r["loss"] for r in res.history if r["split"] == "train"]
    assert all(np.isfinite(losses)) and max(losses) < 1e3, losses
    # without the limits the same generator hands the model frames with forces far beyond them
    raw, dropped = generate_replay(pot, pot.params, ZS, 12, cfg.seed, max_force=None, max_energy=None)
    assert not dropped and max(np.abs(f.forces).max() for f in raw) > 20.0
    # limits no generated structure can meet: a clear error, not an endless loop
    with pytest.raises(RuntimeError, match="replay generation"):
        generate_replay(pot, pot.params, ZS, 4, 0, max_force=1e-6, max_rounds=2)
