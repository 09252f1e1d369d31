"""Safe fine-tuning (issue 16) and the library call of the workflow loops, on a toy Morse model.

- at default settings a few EMT-labelled Cu cells lower the held-out energy and force errors;
- a destructive setting (lr 1.0) returns the starting model and says so;
- ``finetune_potential`` returns params in the caller's dtype on the caller's module, so MD
  compiled for the starting potential runs them with zero new compilations;
- ``e0s="lstsq"`` refits the per-element reference energies in closed form (reported);
- tiny data sets validate on the training frames, with a warning.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from jaxuft.config import ConfigError
from jaxuft.finetune import FinetuneConfig, evaluate, finetune_potential
from jaxuft.models.pair import builtin_morse
from jaxuft.potential import Potential


def cu_cells(n, seed, shift=0.0):
    """Rattled, strained 2x2x2 fcc Cu cells (32 atoms) labelled by EMT (+ ``shift`` eV per atom)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
        a.set_cell(a.cell * (1 + rng.uniform(-0.03, 0.03)), scale_atoms=True)
        a.rattle(0.08, seed=int(rng.integers(1 << 30)))
        a.calc = EMT()
        e, f, s = a.get_potential_energy() + shift * len(a), a.get_forces(), a.get_stress()
        a.calc = SinglePointCalculator(a, energy=e, forces=f, stress=s)
        out.append(a)
    return out


def morse(dtype="float64"):
    config, params = builtin_morse([29])
    return Potential(config, params, dtype)


@pytest.fixture(scope="module")
def cu():
    return cu_cells(6, 0), cu_cells(6, 1)


def _errors(pot, frames):
    m = evaluate(pot, frames, batch_size=6).overall
    return m["energy_rmse"], m["forces_rmse"]


def test_default_settings_improve_heldout_frames(cu):
    train, test = cu
    pot = morse()
    e0, f0 = _errors(pot, test)
    res = finetune_potential(pot, train, FinetuneConfig(epochs=8, batch_size=2, progress=False))
    e1, f1 = _errors(res.potential, test)
    assert e1 < e0 and f1 < f0, (e0, e1, f0, f1)
    assert not res.manifest["kept_starting_model"]


def test_destructive_lr_returns_the_starting_model(cu):
    train, _ = cu
    pot = morse()
    logs = []
    bad = FinetuneConfig(epochs=3, batch_size=2, progress=False, e0s="model", optim={"lr": 1.0})
    res = finetune_potential(pot, train, bad, log=logs.append)
    assert res.manifest["kept_starting_model"] and res.manifest["selected"] == "start"
    assert any("kept the starting model" in line for line in logs), logs
    assert "kept the starting model" in res.manifest["outcome"]
    for k in pot.params:
        np.testing.assert_array_equal(np.asarray(res.params[k]), np.asarray(pot.params[k]))
    # the same run with allow_worse takes a trained epoch, and it is worse on validation
    worse = finetune_potential(pot, train, bad.replace(allow_worse=True))
    assert not worse.manifest["kept_starting_model"]
    init = worse.manifest["metrics"]["initial"]["valid"]["loss"]
    assert worse.manifest["metrics"]["final_full_model"]["valid"]["loss"] > init


def test_finetune_potential_same_module_dtype_and_no_recompilation(cu):
    import jaxuft.md as md
    from jaxuft.md.compilation import CompilationCounter

    train, test = cu
    pot = morse("float64")
    sim = md.Simulation(pot, md.NVE(timestep=1.0), chunk_steps=4)
    state = sim.init(test[0], replicas=1, seed=0)
    state, _ = sim.run(state, pot.params, n_steps=4, record_every=2)
    # trained in float32 on purpose: the result still comes back in the caller's float64
    res = finetune_potential(pot, train, {"epochs": 2, "batch_size": 3, "progress": False, "dtype": "float32"})
    assert res.potential.module is pot.module
    assert res.potential.dtype == pot.dtype
    assert all(np.asarray(x).dtype == np.float64 for x in res.potential.params.values())
    assert any(not np.array_equal(np.asarray(res.params[k]), np.asarray(pot.params[k])) for k in pot.params)
    with CompilationCounter() as cc:
        sim.run(state, res.potential.params, n_steps=4, record_every=2)
    assert cc.count == 0, cc.names


def test_e0s_lstsq_refits_the_energy_zero(cu, tmp_path):
    """An oracle whose energy zero is 5 eV/atom away: the closed-form E0 refit absorbs it."""
    import json

    import jaxuft

    train = cu_cells(4, 2, shift=5.0)
    shifted_test = cu_cells(4, 3, shift=5.0)
    pot = morse()
    res = finetune_potential(pot, train, FinetuneConfig(epochs=1, batch_size=2, progress=False, e0s="lstsq"),
                             out_dir=tmp_path / "run")
    # the manifest on disk reports the refitted E0s; jaxuft.load(RUN_DIR) gives the selected model
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["e0s"]["used"] == res.manifest["e0s"]["used"]
    loaded = jaxuft.load(tmp_path / "run", dtype="float64")
    np.testing.assert_array_equal(np.asarray(loaded.params["e0"]), np.asarray(res.params["e0"]))
    assert res.manifest["model"]["dtype"] == "float64"  # the config left dtype unset: the potential's dtype
    e0 = res.manifest["e0s"]
    assert e0["mode"] == "lstsq" and set(e0["used"]) == {"Cu"}
    # one composition: the refit moves E0(Cu) by the mean per-atom residual of the training frames
    pred = [r["energy"] for r in pot.predict(train)]
    residual = np.mean([(a.get_potential_energy() - e) / len(a) for a, e in zip(train, pred)])
    assert e0["used"]["Cu"] - e0["model"]["Cu"] == pytest.approx(residual, rel=1e-6)
    assert residual > 4.0
    before, _ = _errors(pot, shifted_test)
    after, _ = _errors(res.potential, shifted_test)
    assert before > 4000 and after < 500, (before, after)  # meV/atom


def test_tiny_data_validates_on_training_frames_with_a_warning(cu):
    train, _ = cu
    logs = []
    res = finetune_potential(morse(), train[:3], FinetuneConfig(epochs=1, progress=False), log=logs.append)
    v = res.manifest["data"]["valid"]
    assert v["kind"] == "training frames" and v["n_frames"] == 3
    assert res.manifest["data"]["train"]["n_frames"] == 3
    assert "cannot detect over-fitting" in res.manifest["validation_note"]
    assert any(line.startswith("warning: validation") for line in logs)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        FinetuneConfig(optim={"lr": "fast"})
    with pytest.raises(ConfigError, match=r"epoch.*unknown field"):
        FinetuneConfig(epoch=3)
    with pytest.raises(ConfigError, match=r"optim\.group_lr.*unknown group"):
        FinetuneConfig(optim={"group_lr": {"heads": 2.0}})
    with pytest.raises(ConfigError, match="unknown fine-tuning preset"):
        FinetuneConfig.preset("fast")
    old = FinetuneConfig.preset("mace-torch")
    assert old.optim.lr == 0.01 and old.optim.ema_decay is None and old.optim.warmup_epochs == 0
    c = FinetuneConfig().replace(optim_lr=5e-4, loss_forces_weight=10.0, epochs=3)
    assert (c.optim.lr, c.loss.forces_weight, c.epochs) == (5e-4, 10.0, 3)
    assert FinetuneConfig(**c.to_dict()) == c


def test_cli_says_it_kept_the_starting_model(cu, tmp_path, capsys):
    from ase.io import write

    from jaxuft.finetune.cli import main
    from jaxuft.finetune.trainer import save_potential

    train, _ = cu
    model = save_potential(morse(), morse().params, tmp_path / "morse")
    write(tmp_path / "train.xyz", train)
    rc = main(["finetune", "--model", str(model), "--train", str(tmp_path / "train.xyz"), "-o", str(tmp_path / "out"),
               "--epochs", "2", "--batch-size", "2", "--dtype", "float64", "--e0s", "model", "--lr", "1.0", "-q"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "kept the starting model" in out and "cannot detect over-fitting" in out
    with pytest.raises(SystemExit):  # argparse: an unknown flag
        main(["finetune", "--model", str(model), "--train", str(tmp_path / "train.xyz"), "-o", str(tmp_path / "x"),
              "--optim-typo", "1"])
    rc = main(["finetune", "--model", str(model), "--train", str(tmp_path / "train.xyz"), "-o", str(tmp_path / "x"),
               "--ema-decay", "1.5", "-q"])
    assert rc == 2 and "--ema-decay" in capsys.readouterr().err
