"""Unit tests of the fine-tuning pieces: losses, optimiser, schedules, parameter selection,
batching, checkpoints, E0s, affine-leaf detection, replay structures, evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from jaxuft.finetune import checkpoint as ckpt
from jaxuft.finetune.data import Frame, ShapePlan, batch_indices, collate, epoch_batches, prepare, split_train_valid
from jaxuft.finetune.e0s import find_e0_leaf, lstsq_e0s, normalise_e0s
from jaxuft.finetune.evaluation import evaluate, format_report
from jaxuft.finetune.loss import ErrorAccumulator, LossConfig, error_sums, loss_terms
from jaxuft.finetune.optim import EarlyStopping, LRSchedule, OptimConfig, ema_update, scale_by_torch_adam
from jaxuft.finetune.params import FreezeError, ParamSplit, heuristic_groups, param_groups, select_trainable
from jaxuft.finetune.replay import generate_structures, split_holdout
from jaxuft.finetune.trunk import affine_leaves
from jaxuft.models.pair import morse_config, morse_params
from jaxuft.potential import Potential
from jaxuft.structures import SpeciesMap

ZS = (29, 47)


def _frames(n=5, seed=0, pbc=True):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        m = 3 + k % 3
        a = Atoms(numbers=rng.choice(ZS, size=m), positions=np.arange(m)[:, None] * 2.0 + rng.normal(0, 0.1, (m, 3)),
                  cell=np.eye(3) * 10.0, pbc=pbc)  # 8 Å put atom 4 on atom 0's image (0.2 Å)
        out.append(Frame(atoms=a, energy=float(rng.normal()), forces=rng.normal(size=(m, 3)),
                         stress=rng.normal(size=(3, 3)) if pbc and k != 1 else None, weight=1.0 + k, source=f"f{k}"))
    return out


def _samples(frames):
    return prepare(frames, SpeciesMap(ZS), 5.0)


# ---- losses ---------------------------------------------------------------------------------
def test_loss_terms_match_mace_formulas():
    frames = _frames(5)
    samples = _samples(frames)
    plan = ShapePlan(8).add(samples)
    batch = collate(samples, plan.capacity(), np.float64)
    rng = np.random.default_rng(1)
    G, N = batch.weight.shape[0], batch.forces.shape[0]
    pred = {"energy": jnp.asarray(rng.normal(size=G)), "forces": jnp.asarray(rng.normal(size=(N, 3))),
            "stress": jnp.asarray(rng.normal(size=(G, 3, 3)))}
    cfg = LossConfig()
    t = jax.device_get(loss_terms(pred, batch, cfg))
    n = np.array([len(f.atoms) for f in frames])
    w = np.array([f.weight for f in frames])
    e_ref = np.array([f.energy for f in frames])
    pe = np.asarray(pred["energy"])[:5]
    assert t["energy"] == pytest.approx(np.mean(w * ((pe - e_ref) / n) ** 2))
    f_ref = np.concatenate([f.forces for f in frames])
    pf = np.asarray(pred["forces"])[: n.sum()]
    wn = np.repeat(w, n)
    assert t["forces"] == pytest.approx(np.mean(wn[:, None] * (pf - f_ref) ** 2))
    ps = np.asarray(pred["stress"])[:5]
    s_terms = [w[k] * (ps[k] - frames[k].stress) ** 2 for k in range(5) if frames[k].stress is not None]
    assert t["stress"] == pytest.approx(np.sum(s_terms) / (9 * 5))  # no-stress frames count in the mean (mace)
    assert t["loss"] == pytest.approx(t["energy"] + 100 * t["forces"] + t["stress"])
    th = jax.device_get(loss_terms(pred, batch, LossConfig(kind="huber", huber_delta=0.5)))
    hub = np.asarray(optax.losses.huber_loss(pf, f_ref, delta=0.5))
    assert th["forces"] == pytest.approx(np.mean(wn[:, None] * hub))
    with pytest.raises(ValueError):
        LossConfig(kind="l3")


def test_error_sums_and_metrics():
    frames = _frames(4)
    samples = _samples(frames)
    batch = collate(samples, ShapePlan(4).add(samples).capacity(), np.float64)
    pred = {"energy": batch.energy + batch.n_atoms * 0.002, "forces": batch.forces + 0.01, "stress": batch.stress}
    acc = ErrorAccumulator()
    acc.add(error_sums(pred, batch, 2))
    m = acc.metrics()
    assert m["energy_mean"] == pytest.approx(2.0, rel=1e-4) and m["energy_rmse"] == pytest.approx(2.0, rel=1e-4)
    assert m["forces_rmse"] == pytest.approx(10.0, rel=1e-4) and m["forces_mae"] == pytest.approx(10.0, rel=1e-4)
    assert m["stress_rmse"] == pytest.approx(0.0, abs=1e-9) and m["n_structures"] == 4
    per = acc.per_species()
    assert set(per) <= {0, 1} and sum(v["n_atoms"] for v in per.values()) == sum(len(f.atoms) for f in frames)


# ---- optimiser, schedules, EMA -------------------------------------------------------------------
def _run(tx, grads, params):
    state = tx.init(params)
    outs = []
    for g in grads:
        u, state = tx.update(g, state, params)
        outs.append(np.asarray(u))
    return outs


def test_torch_adam_matches_optax_and_torch_amsgrad():
    rng = np.random.default_rng(0)
    params = jnp.zeros(5, jnp.float64) if jax.config.jax_enable_x64 else jnp.zeros(5)
    grads = [jnp.asarray(rng.normal(size=5) * (1 + 3 * (k == 2)), params.dtype) for k in range(6)]
    ours = _run(scale_by_torch_adam(0.9, 0.999, 1e-8, amsgrad=False), grads, params)
    ref = _run(optax.scale_by_adam(0.9, 0.999, 1e-8), grads, params)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    # torch's AMSGrad: running max of the uncorrected second moment
    ams = _run(scale_by_torch_adam(0.9, 0.999, 1e-8, amsgrad=True), grads, params)
    m = v = vmax = np.zeros(5)
    for t, g in enumerate(grads, 1):
        g = np.asarray(g, np.float64)
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        vmax = np.maximum(vmax, v)
        want = (m / (1 - 0.9**t)) / (np.sqrt(vmax) / np.sqrt(1 - 0.999**t) + 1e-8)
        np.testing.assert_allclose(ams[t - 1], want, rtol=1e-4)


def test_plateau_schedule_follows_torch():
    s = LRSchedule(OptimConfig(lr=1.0, lr_factor=0.5, scheduler_patience=2, warmup_epochs=0), steps_per_epoch=3, total_epochs=10)
    lrs = []
    for metric in [1.0, 0.9, 0.9, 0.9, 0.9, 0.95, 0.95, 0.95, 0.5]:
        lrs.append(s.lr(0, 0))
        s.end_epoch(metric)
    # reduce after patience+1 = 3 bad epochs (torch: num_bad_epochs > patience)
    assert lrs == [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    state = s.state_dict()
    s2 = LRSchedule(OptimConfig(lr=1.0, lr_factor=0.5, scheduler_patience=2), 3, 10)
    s2.load_state_dict(state)
    assert s2.state_dict() == state


def test_cosine_warmup_exponential():
    c = LRSchedule(OptimConfig(lr=1.0, scheduler="cosine", min_lr=0.1, warmup_epochs=1), steps_per_epoch=4, total_epochs=3)
    assert c.lr(0, 0) == pytest.approx(0.25) and c.lr(3, 0) == pytest.approx(1.0)
    assert c.lr(4, 1) == pytest.approx(1.0) and c.lr(12, 3) == pytest.approx(0.1)
    assert c.lr(8, 2) == pytest.approx(0.55)
    e = LRSchedule(OptimConfig(lr=1.0, scheduler="exponential", lr_gamma=0.5, warmup_epochs=0), 2, 5)
    assert e.lr(0, 2) == pytest.approx(0.25)


def test_early_stopping_and_ema():
    st = EarlyStopping(2)
    assert st.update(1.0, 1) and not st.update(1.0, 2) and not st.should_stop
    assert not st.update(2.0, 3) and st.should_stop and st.best_epoch == 1
    assert not EarlyStopping(None).should_stop
    ema, count = jnp.zeros(3), jnp.zeros((), jnp.int32)
    p = jnp.ones(3)
    ema, count = ema_update(ema, p, count, 0.99)  # first decay: min(0.99, 1/10)
    np.testing.assert_allclose(np.asarray(ema), 0.9, rtol=1e-6)
    ema, count = ema_update(ema, p, count, 0.99)  # second: 2/11
    np.testing.assert_allclose(np.asarray(ema), 0.9 + (1 - 2 / 11) * 0.1, rtol=1e-6)


# ---- parameter groups and freeze specs -----------------------------------------------------------
MACE_LIKE = {
    "atomic_energies": np.zeros((1, 3)), "scale": np.ones(1), "shift": np.zeros(1), "node_embedding": np.ones(48),
    "interactions_0.linear_up": np.ones(4), "interactions_0.radial_mlp.0": np.ones((2, 2)),
    "products_0.linear": np.ones(4), "readouts_0.linear": np.ones(16),
    "interactions_1.linear_up": np.ones(4), "products_1.contractions.0.weights_max": np.ones((3, 2, 2)),
    "readouts_1.linear_1": np.ones(8), "readouts_1.linear_2": np.ones(4),
}
NEQUIP_LIKE = {
    "embedding": np.ones((3, 4)), "shift": np.zeros(3), "scale": np.ones(3),
    "layer_0_self_connection": {"0e": np.ones((4, 4))}, "layer_0_radial_mlp": {"w0": np.ones((2, 2))},
    "layer_1_self_interaction_1": {"0e": np.ones((4, 4))},
    "readout_hidden": {"0e": np.ones((4, 2))}, "readout_out": {"0e": np.ones((2, 1))},
}


def test_select_trainable_mace_like():
    cfg = {"family": "test", "atomic_numbers": [1, 6, 8]}
    g = heuristic_groups(MACE_LIKE, 3)
    assert g.e0 == "atomic_energies" and set(g.buffers) == {"atomic_energies", "scale", "shift"}
    assert len(g.layers) == 2
    sel = lambda spec: set(select_trainable(spec, cfg, MACE_LIKE, g))
    assert sel("readouts") == {"readouts_0.linear", "readouts_1.linear_1", "readouts_1.linear_2"}
    assert sel("trunk") == sel("readouts")
    assert sel("layers:1") == sel("readouts") | {"interactions_1.linear_up", "products_1.contractions.0.weights_max"}
    assert "node_embedding" not in sel("layers:2") and "products_0.linear" in sel("layers:2")
    assert sel("none") == set(MACE_LIKE) - {"atomic_energies", "scale", "shift"}
    assert sel("train:^readouts_1") == {"readouts_1.linear_1", "readouts_1.linear_2"}
    assert sel("freeze:interactions|products|embedding") == sel("readouts")
    for bad, msg in [("layers:3", "2 interaction layer"), ("layers:x", "integer"), ("train:(", "bad regular"),
                     ("wat", "unknown freeze"), ("train:^zzz", "selects no")]:
        with pytest.raises(FreezeError, match=msg):
            select_trainable(bad, cfg, MACE_LIKE, g)


def test_select_trainable_nested_and_split_roundtrip():
    cfg = {"family": "test", "atomic_numbers": [1, 6, 8]}
    g = heuristic_groups(NEQUIP_LIKE, 3)
    assert len(g.layers) == 2 and g.e0 is None and "shift" in g.buffers
    assert set(select_trainable("readouts", cfg, NEQUIP_LIKE, g)) == {"readout_hidden/0e", "readout_out/0e"}
    assert set(select_trainable("layers:1", cfg, NEQUIP_LIKE, g)) == {
        "readout_hidden/0e", "readout_out/0e", "layer_1_self_interaction_1/0e"}
    split = ParamSplit.create(NEQUIP_LIKE, ["readout_out/0e"])
    tr, fr = split.split(NEQUIP_LIKE)
    assert list(tr) == ["readout_out/0e"] and "embedding" in fr
    merged = split.merge(tr, fr)
    assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(NEQUIP_LIKE)
    # a family hook overrides the heuristics
    assert param_groups(morse_config(ZS), morse_params(2)).e0 == "e0"


# ---- data batching ---------------------------------------------------------------------------------
def test_shape_plan_one_shape_and_masks():
    frames = _frames(7) + _frames(2, seed=3, pbc=False)
    samples = _samples(frames)
    plan = ShapePlan(3).add(samples)
    assert len(plan.shapes) == 1
    nodes, edges, graphs = plan.capacity()
    assert graphs == 4 and nodes > sum(sorted((s.n_nodes for s in samples), reverse=True)[:3])
    chunks = batch_indices(samples, plan)
    assert sorted(i for _, idx in chunks for i in idx) == list(range(len(samples)))
    for grp, idx in chunks:
        b = collate([samples[i] for i in idx], plan.capacity(grp), np.float64)
        assert b.graph.positions.shape == (nodes, 3) and b.graph.senders.shape == (edges,)
        assert np.asarray(b.weight)[len(idx):].sum() == 0
        sm = np.asarray(b.stress_mask)[: len(idx)]
        assert list(sm) == [float(samples[i].stress is not None and samples[i].has_stress) for i in idx]
    grouped = ShapePlan(3, grouped=True).add(samples)
    assert len(grouped.shapes) >= 1


def test_epoch_batches_deterministic_and_split():
    samples = _samples(_frames(11))
    plan = ShapePlan(4).add(samples)
    k = jax.random.PRNGKey(3)
    a, b = epoch_batches(samples, plan, k), epoch_batches(samples, plan, k)
    assert a == b and sorted(i for _, idx in a for i in idx) == list(range(11))
    assert epoch_batches(samples, plan, jax.random.PRNGKey(4)) != a
    frames = _frames(10)
    tr, va = split_train_valid(frames, 0.2, seed=5)
    tr2, va2 = split_train_valid(frames, 0.2, seed=5)
    assert [f.source for f in va] == [f.source for f in va2] and len(va) == 2 and len(tr) == 8
    fit, hold = split_holdout(frames, 0.25, seed=1)
    assert len(hold) == 2 and len(fit) == 8


# ---- checkpoints ------------------------------------------------------------------------------------
def test_checkpoint_roundtrip_atomic(tmp_path):
    tree = {"a": jnp.arange(3.0), "b": {"c": jnp.zeros((), jnp.int32)}}
    opt = optax.chain(optax.clip_by_global_norm(1.0), scale_by_torch_adam(amsgrad=True))
    state = opt.init(tree)
    arrays = {**ckpt.tree_to_arrays("p", tree), **ckpt.tree_to_arrays("o", state)}
    path = ckpt.save(tmp_path / "c.safetensors", arrays, {"epoch": 3, "x": [1.5, None]})
    got, meta = ckpt.load(path)
    assert meta == {"epoch": 3, "x": [1.5, None]}
    back = ckpt.arrays_to_tree("o", state, got)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(state)
    assert got["p/b/c"].shape == ()
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary files left
    with pytest.raises(ckpt.CheckpointMismatch, match="expects"):
        ckpt.arrays_to_tree("p", {"a": jnp.arange(4.0), "b": {"c": jnp.zeros((), jnp.int32)}}, got)
    (tmp_path / "other.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(Exception):
        ckpt.load(tmp_path / "other.safetensors")


def test_json_outputs_are_strict(tmp_path):
    from jaxuft.finetune.history import write_logs

    hist = [{"epoch": 1, "split": "train", "lr": 0.01, "loss": 1.0, "stress_rmse": float("nan"), "time_s": 0.1}]
    write_logs(tmp_path, hist)
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text and '"stress_rmse": null' in text
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1].split(",")[9] == ""


# ---- E0s, affine leaves ------------------------------------------------------------------------------
def test_e0_leaf_affine_leaves_and_lstsq():
    pot = Potential(morse_config(ZS), morse_params(2, D=0.1, a=1.5, r0=1.5, e0=-0.5), "float64")
    samples = _samples(_frames(3))
    b = collate(samples, ShapePlan(3).add(samples).capacity(), np.float64)
    assert find_e0_leaf(pot, pot.params, b.graph, param_groups(pot.config, pot.params)) == "e0"
    keep = affine_leaves(pot, pot.params, b.graph, ["D", "a", "r0", "e0"], jax.random.PRNGKey(0))
    assert keep == ["D", "e0"]
    numbers = [np.array([29, 29, 47]), np.array([29, 47, 47]), np.array([47])]
    true = {29: -1.0, 47: -3.0}
    energies = [sum(true[z] for z in n) for n in numbers]
    got = lstsq_e0s(numbers, energies, [29, 47])
    assert got[29] == pytest.approx(-1.0) and got[47] == pytest.approx(-3.0)
    rel = lstsq_e0s(numbers, energies, [29, 47], base={29: 0.5, 47: 0.5}, predicted=[0.0, 0.0, 0.0])
    assert rel[29] == pytest.approx(-0.5)
    assert normalise_e0s({"Cu": 1, "47": 2.0}) == {29: 1.0, 47: 2.0}


# ---- replay structures -------------------------------------------------------------------------------
def test_generate_replay_structures():
    zs = [1, 3, 6, 7, 8, 17, 27]
    a = generate_structures(zs, n=12, seed=4)
    b = generate_structures(zs, n=12, seed=4)
    assert len(a) == 12
    for x, y in zip(a, b):
        assert np.array_equal(x.numbers, y.numbers) and np.allclose(x.positions, y.positions)
        assert set(x.numbers) <= set(zs) and x.pbc.all() and 8 <= len(x) <= 48
        d = x.get_all_distances(mic=True)[np.triu_indices(len(x), 1)]
        assert d.min() >= 0.6
    kinds = {x.info["replay"] for x in a}
    assert len(kinds) >= 2
    assert all(set(x.numbers) == {8} for x in generate_structures([8], n=3, seed=0))


# ---- evaluation ---------------------------------------------------------------------------------------
def test_evaluate_report():
    pot = Potential(morse_config(ZS), morse_params(2, D=0.1, a=1.5, r0=1.5), "float64")
    frames = [f.atoms for f in _frames(4)]
    for at, r in zip(frames, pot.predict(frames)):
        at.calc = SinglePointCalculator(at, energy=r["energy"] + 0.01 * len(at), forces=r["forces"], stress=r["stress"])
    rep = evaluate(pot, frames, name="self")
    assert rep.overall["energy_mean"] == pytest.approx(-10.0, abs=1e-6)
    assert rep.overall["forces_rmse"] == pytest.approx(0.0, abs=1e-9)
    text = format_report(rep)
    assert "self: 4 structures" in text and "Cu" in text and "-10.00" in text
    assert len(rep.frames) == 4 and rep.frames[0]["energy_ref"] is not None
