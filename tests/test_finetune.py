"""Fine-tuning: synthetic task, exact resume, frozen-trunk cache, replay, MD reuse, bad data, CLI.

The synthetic task: labels (energy, forces, stress) from one Morse parameter set
(the "teacher"), fine-tuning starts from another (the "student").  Everything
runs in float64 so that resume can be compared bit for bit.  Most tests share
one dataset and one config, so the compiled steps are shared too (the jitted
step factories are cached per architecture and settings).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from jaxuft.errors import StructureError, UnknownElementError
from jaxuft.finetune import (
    DataError,
    E0Error,
    FinetuneConfig,
    FinetuneError,
    TrunkCacheError,
    evaluate,
    finetune,
    read_frames,
)
from jaxuft.models.pair import morse_config, morse_params
from jaxuft.potential import Potential

ZS = (29, 47)
from conftest import PAPER_DATA as PAPER  # honours $JAXUFT_PAPER_DATA


# ---- synthetic data ----------------------------------------------------------------------
def random_structures(n, seed, n_atoms=(6, 10), box=5.5, zs=ZS):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        k = int(rng.integers(*n_atoms))
        L = box * (k / 8) ** (1 / 3)
        a = Atoms(numbers=rng.choice(zs, size=k), positions=rng.uniform(0, L, (k, 3)), cell=np.eye(3) * L, pbc=True)
        if a.get_all_distances(mic=True)[np.triu_indices(k, 1)].min() < 1.3:
            continue
        out.append(a)
    return out


def teacher():
    p = morse_params(2, a=1.3, r0=1.8)
    p["D"] = np.array([[0.2, 0.3], [0.3, 0.25]])
    p["e0"] = np.array([-1.0, -2.0])
    return Potential(morse_config(ZS), p, "float64")


def student():
    return Potential(morse_config(ZS), morse_params(2, D=0.1, a=1.5, r0=1.5), "float64")


def label(structures, pot):
    for a, r in zip(structures, pot.predict(structures)):
        a.calc = SinglePointCalculator(a, energy=r["energy"], forces=r["forces"], stress=r["stress"])
    return structures


@pytest.fixture(scope="module")
def data():
    frames = label(random_structures(30, 0), teacher())
    return frames[:24], frames[24:]


#: the shared config: float64, EMA, warm-up, a plateau schedule that fires, replay
CFG = FinetuneConfig(
    epochs=5,
    batch_size=4,
    dtype="float64",
    e0s="lstsq",
    progress=False,
    replay_count=8,
    optim=dict(lr=0.02, ema_decay=0.9, warmup_epochs=1.0, scheduler_patience=0, lr_factor=0.5),
)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """One uninterrupted run of CFG with generated replay (shared by several tests)."""
    train, valid = data
    out = tmp_path_factory.mktemp("ft") / "ref"
    res = finetune(student(), train, valid=valid, replay="generate", config=CFG, out_dir=out)
    return res


def _split(history, split, key="loss"):
    return [r[key] for r in history if r["split"] == split]


# ---- acceptance: the loss falls, validation error falls --------------------------------------
def test_loss_and_validation_error_fall(reference):
    res = reference
    assert res.status == "finished"
    train_loss = _split(res.history, "train")
    valid_loss = _split(res.history, "valid")  # epoch 0 = initial model
    assert len(train_loss) == CFG.epochs and len(valid_loss) == CFG.epochs + 1
    assert train_loss[-1] < 0.5 * train_loss[0]
    assert min(valid_loss[1:]) < 0.5 * valid_loss[0]
    valid_f = _split(res.history, "valid", "forces_rmse")
    assert min(valid_f[1:]) < 0.7 * valid_f[0]
    # the fine-tuned potential is better than the start on the validation frames (full model)
    final = res.manifest["metrics"]["final_full_model"]["valid"]
    assert final["loss"] < 0.5 * valid_loss[0]


def test_outputs_manifest_logs_plot(reference):
    out = reference.out_dir
    for name in ("checkpoint.safetensors", "metrics.csv", "metrics.json", "learning_curve.png", "manifest.json"):
        assert (out / name).is_file(), name
    assert (out / "model" / "config.json").is_file()
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "finished" and man["epochs_run"] == CFG.epochs
    assert man["hyperparameters"]["optim"]["lr"] == 0.02
    assert man["data"]["train"]["n_frames"] == 24 and man["data"]["valid"]["n_frames"] == 6
    assert man["data"]["compiled_shapes"] and len(man["data"]["compiled_shapes"]) == 1
    assert man["e0s"]["mode"] == "lstsq" and man["e0s"]["leaf"] == "e0"
    assert set(man["model"]["trainable_leaves"]) == {"D", "a", "r0"}  # e0 is a buffer
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,split,lr,loss,energy_mean,energy_rmse")
    assert len(lines) == 1 + 2 + 3 * CFG.epochs  # header, epoch 0 (valid, replay), 3 splits per epoch
    assert (out / "learning_curve.png").stat().st_size > 1000


def test_replay_reports_forgetting(reference):
    man = reference.manifest
    rep = man["data"]["replay"]
    assert rep["kind"] == "generated" and rep["n_frames"] == 8 and rep["n_holdout"] == 2
    f = man["forgetting"]
    # pseudo-labels come from the initial model: it has no error on them
    assert f["forces_rmse"]["initial"] < 1e-9
    assert f["forces_rmse"]["final"] > 0 and f["forces_rmse"]["change"] == pytest.approx(f["forces_rmse"]["final"])
    assert _split(reference.history, "replay_holdout")[0] < 1e-12


# ---- acceptance: resume == uninterrupted, bit for bit (float64) ------------------------------
def test_resume_is_exact(reference, data, tmp_path):
    train, valid = data
    out = tmp_path / "run"
    part = finetune(student(), train, valid=valid, replay="generate", config=CFG, out_dir=out, stop_after=2)
    assert part.status == "interrupted" and not (out / "model").exists()
    # a second call without resume refuses to overwrite the run
    with pytest.raises(FinetuneError, match="resume=True"):
        finetune(student(), train, valid=valid, replay="generate", config=CFG, out_dir=out)
    done = finetune(student(), train, valid=valid, replay="generate", config=CFG, out_dir=out, resume=True)
    assert done.status == "finished" and done.manifest["resumed"]
    for k, v in reference.params.items():
        assert np.array_equal(np.asarray(v), np.asarray(done.params[k])), k
    strip = lambda h: [{k: v for k, v in r.items() if k != "time_s"} for r in h]
    assert strip(done.history) == strip(reference.history)
    # the saved models are identical too
    a = (reference.out_dir / "model" / "params.safetensors").read_bytes()
    b = (out / "model" / "params.safetensors").read_bytes()
    assert a[-2000:] == b[-2000:] and len(a) == len(b)


def test_resume_refuses_another_run(reference, data, tmp_path):
    train, valid = data
    out = tmp_path / "run"
    finetune(student(), train, valid=valid, replay="generate", config=CFG, out_dir=out, stop_after=1)
    with pytest.raises(Exception, match="different run"):
        finetune(student(), train[:-1], valid=valid, replay="generate", config=CFG, out_dir=out, resume=True)


# ---- acceptance: the result loads into MD without new compilations ------------------------------
def test_finetuned_potential_reuses_compiled_md(reference, data):
    import jax

    import jaxuft
    from jaxuft.md.compilation import CompilationCounter

    loaded = jaxuft.load(reference.out_dir / "model", dtype="float64")
    foundation = student()
    assert loaded.module == foundation.module
    assert loaded.compiled("efs") is foundation.compiled("efs")
    graph = foundation.graph(data[1][:2])
    jax.block_until_ready(foundation.compiled("efs")(foundation.params, graph))
    with CompilationCounter() as cc:
        out = jax.block_until_ready(loaded.compiled("efs")(loaded.params, graph))
    assert cc.count == 0, cc.names
    ref = reference.potential.compiled("efs")(reference.potential.params, graph)
    np.testing.assert_allclose(np.asarray(out["forces"]), np.asarray(ref["forces"]), rtol=0, atol=1e-12)

    md = pytest.importorskip("jaxuft.md")
    if not hasattr(md, "Simulation"):
        pytest.skip("jaxuft.md has no Simulation yet")
    atoms = data[1][0].copy()
    sim = md.Simulation(foundation, md.NVE(timestep=0.5), chunk_steps=4)
    state = sim.init(atoms, replicas=1, seed=0)
    state, _ = sim.run(state, foundation.params, n_steps=4, record_every=2)
    with CompilationCounter() as cc:
        sim.run(state, loaded.params, n_steps=4, record_every=2)
    assert cc.count == 0, cc.names


# ---- frozen trunk: cached Jacobians are exact -----------------------------------------------------
def test_trunk_cache_is_exact_and_checked(data):
    train, valid = data
    cfg = CFG.replace(freeze="linear", trunk_cache=True, keep="last", optim_ema_decay=None, epochs=3)
    res = finetune(student(), train, valid=valid, config=cfg)
    assert res.manifest["model"]["trainable_leaves"] == ["D"]  # the energy is linear in D only
    assert _split(res.history, "train")[-1] < _split(res.history, "train")[0]
    last = [r for r in res.history if r["split"] == "valid"][-1]
    full = res.manifest["metrics"]["final_full_model"]["valid"]
    for key in ("loss", "energy_rmse", "forces_rmse", "stress_rmse"):
        assert full[key] == pytest.approx(last[key], rel=1e-9, abs=1e-12), key
    assert res.manifest["model"]["cache_columns"]["full_columns"] > 0
    # early stopping on the validation loss (a learning rate far too large makes it oscillate)
    es = finetune(student(), train, valid=valid, config=cfg.replace(epochs=30, patience=2, keep="best", optim_lr=3.0,
                                                                     allow_worse=True))
    assert es.status == "early_stopped" and es.manifest["epochs_run"] < 30
    best = es.manifest["best_epoch"]
    assert es.manifest["epochs_run"] == best + 2 and es.manifest["selected"] == "best"
    # a nonlinear leaf in the trainable set is detected
    with pytest.raises(TrunkCacheError, match="not affine"):
        finetune(student(), train, valid=valid, config=cfg.replace(freeze="train:^(D|r0)$"))


def test_replay_from_user_structures_is_pseudo_labelled(data):
    from jaxuft.finetune.trainer import Trainer

    train, valid = data
    structures = [a.copy() for a in random_structures(6, 9)]  # no labels needed
    t = Trainer(student(), train, valid=valid, replay=structures, config=CFG.replace(replay_holdout=0.5))
    assert t.replay_info["kind"] == "file" and t.replay_info["labels"] == "pseudo"
    assert len(t.replay_train_samples) == 3 and len(t.replay_hold_samples) == 3
    pred = t.init_potential.predict(structures[:1])[0]
    s = [x for x in t.replay_train_samples + t.replay_hold_samples if x.n_nodes == len(structures[0])]
    assert any(abs(x.energy - pred["energy"]) < 1e-9 for x in s)
    assert all(x.weight == CFG.replay_weight for x in t.replay_train_samples)


# ---- bad data ----------------------------------------------------------------------------------
def _write(path, frames):
    from ase.io import write

    write(path, frames, format="extxyz")
    return path


def test_missing_labels(data, tmp_path):
    bare = [a.copy() for a in data[0][:3]]  # .copy() drops the calculator
    p = _write(tmp_path / "bare.xyz", bare)
    with pytest.raises(DataError, match=r"bare.xyz frame 0 has no energy label"):
        read_frames(p)
    no_forces = [a.copy() for a in data[0][:2]]
    for a in no_forces:
        a.calc = SinglePointCalculator(a, energy=1.0)
    with pytest.raises(DataError, match=r"frame 0 has no forces label"):
        read_frames(_write(tmp_path / "nof.xyz", no_forces))
    # energy-only data is fine when forces have no weight
    assert len(read_frames(tmp_path / "nof.xyz", require=("energy",))) == 2


def test_nan_forces(data, tmp_path):
    frames = [a.copy() for a in data[0][:3]]
    for k, a in enumerate(frames):
        f = data[0][k].get_forces().copy()
        if k == 2:
            f[4, 1] = np.nan
        a.calc = SinglePointCalculator(a, energy=1.0, forces=f)
    with pytest.raises(DataError, match=r"frame 2: forces contain NaN/inf for atom\(s\) \[4\]"):
        finetune(student(), frames, config=CFG)


def test_unknown_elements(data):
    frames = [a.copy() for a in data[0][:3]]
    frames[1].numbers[0] = 8
    for a, b in zip(frames, data[0]):
        a.calc = SinglePointCalculator(a, energy=1.0, forces=b.get_forces())
    with pytest.raises(UnknownElementError, match=r"training data frame 1.*element\(s\) O"):
        finetune(student(), frames, valid=frames[:1], config=CFG)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        read_frames(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_frames(tmp_path / "nope.xyz")
    with pytest.raises(DataError, match="empty: no frames"):
        read_frames([], name="training data")
    garbage = tmp_path / "garbage.xyz"
    garbage.write_text("this is not\nan xyz file\n")
    with pytest.raises(DataError, match="cannot be read"):
        read_frames(garbage)


def test_overlapping_atoms_and_bad_shapes(data, tmp_path):
    a = data[0][0].copy()
    a.positions[1] = a.positions[0]
    a.calc = SinglePointCalculator(a, energy=1.0, forces=np.zeros((len(a), 3)))
    with pytest.raises(StructureError, match="apart"):
        finetune(student(), [a, a], valid=[a], config=CFG)
    b = data[0][0].copy()
    b.info["energy"] = "abc"
    b.calc = None
    with pytest.raises(DataError, match="not a number"):
        read_frames([b], require=("energy",))


# ---- E0s ----------------------------------------------------------------------------------------
def test_e0s_from_file_and_modes(data, tmp_path):
    from jaxuft.finetune.trainer import Trainer

    train, valid = data
    e0 = tmp_path / "e0s.json"
    e0.write_text(json.dumps({"Cu": -1.0, "Ag": -2.0, "H": 5.0}))
    t = Trainer(student(), train, valid=valid, config=CFG.replace(e0s=str(e0)))
    np.testing.assert_allclose(np.asarray(t.params_init["e0"]), [-1.0, -2.0])
    assert t.e0_info["used"] == {"Cu": -1.0, "Ag": -2.0}
    t2 = Trainer(student(), train, valid=valid, config=CFG.replace(e0s={29: -1.5, "Ag": -2.5}))
    np.testing.assert_allclose(np.asarray(t2.params_init["e0"]), [-1.5, -2.5])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Cu": -1.0}))
    with pytest.raises(E0Error, match="lack element"):
        Trainer(student(), train, valid=valid, config=CFG.replace(e0s=str(bad)))
    bad.write_text("{not json")
    with pytest.raises(E0Error, match="not valid JSON"):
        Trainer(student(), train, valid=valid, config=CFG.replace(e0s=str(bad)))
    # least squares relative to the model removes the mean energy residual
    t3 = Trainer(student(), train, valid=valid, config=CFG)
    rep = evaluate(student(), train, params=t3.params_init)
    assert abs(rep.overall["energy_mean"]) < 0.3 * rep.overall["energy_rmse"] + 1e-6


@pytest.mark.skipif(not (PAPER / "chclca" / "e0s.json").exists(), reason="paper data (../shared/paper-data) not present")
def test_paper_e0s_and_training_frames_read():
    from jaxuft.finetune.e0s import read_e0s

    e0 = read_e0s(PAPER / "chclca" / "e0s.json")
    assert set(e0) == {1, 3, 6, 7, 8, 17, 27}
    frames = read_frames(PAPER / "chclca" / "train" / "periodic" / "FT1.xyz")
    assert len(frames) == 10 and all(f.stress is not None and f.forces.shape == (197, 3) for f in frames)


# ---- CLI ------------------------------------------------------------------------------------------
def test_cli_finetune_and_evaluate(reference, data, tmp_path, capsys):
    from jaxuft.finetune.cli import main
    from jaxuft.finetune.trainer import save_potential

    train, valid = data
    model = save_potential(student(), student().params, tmp_path / "student")
    tr = _write(tmp_path / "train.xyz", train)
    va = _write(tmp_path / "valid.xyz", valid)
    out = tmp_path / "out"
    rc = main(["finetune", "--model", str(model), "--train", str(tr), "--valid", str(va), "-o", str(out),
               "--epochs", "2", "--batch-size", "4", "--dtype", "float64", "--e0s", "lstsq", "--lr", "0.02",
               "--ema-decay", "0.9", "--warmup-epochs", "1", "--scheduler-patience", "0", "--lr-factor", "0.5",
               "--replay", "generate", "--replay-count", "8", "-q"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "status: finished after 2 epoch(s)" in text and "forgetting" in text
    assert (out / "model" / "params.safetensors").is_file()
    rc = main(["evaluate", "--model", str(out / "model"), "--dtype", "float64", str(va), "--json", str(tmp_path / "e.json")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "overall" in text and "meV/atom" in text and "Cu" in text and "Ag" in text
    rep = json.loads((tmp_path / "e.json").read_text())[0]
    assert rep["overall"]["n_structures"] == 6 and set(rep["per_element"]) == {"Cu", "Ag"}
    # bad data through the CLI: a clear message and exit code 2
    bare = _write(tmp_path / "bare.xyz", [a.copy() for a in train[:2]])
    rc = main(["finetune", "--model", str(model), "--train", str(bare), "-o", str(tmp_path / "x"), "-q"])
    assert rc == 2 and "has no energy label" in capsys.readouterr().err
