"""Multihead fine-tuning (issue 13 part 3) on a tiny MACE and a tiny SevenNet-shaped model, float64.

The foundation model is a random-weight model; the new data are labelled by the same model
with its E0s raised and its readout scaled (what a new head can learn).  Replay structures are
pseudo-labelled by the foundation model.  Checked: the "ft" head fits the new data better, the
foundation head's replay predictions stay close, the trunk exists once, either head can be
evaluated (library and CLI), resume is exact, and MD with the result compiles nothing new.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from jaxuft.finetune import FinetuneConfig, HeadError, evaluate, finetune, load_heads
from jaxuft.finetune.multihead import HEADS_FILE, head_leaves
from jaxuft.finetune.params import flatten, param_groups
from jaxuft.potential import Potential

jax.config.update("jax_enable_x64", True)

ZS = (1, 6, 8)

SEVENNET_SMALL = {
    "family": "nequip",
    "atomic_numbers": list(ZS),
    "r_max": 4.0,
    "node_irreps": ["4x0e", "4x0e+2x1o", "4x0e"],
    "num_basis": 4,
    "cutoff_function": {"name": "XPLOR", "r_on": 3.2},
    "lmax_sh": 1,
    "sh_parity": -1,
    "normalize_sh": True,
    "radial_hidden": [8],
    "radial_activation": "silu",
    "scalar_activation": {"e": "silu", "o": "tanh"},
    "gate_activation": {"e": "silu", "o": "tanh"},
    "denominators": [6.0, 7.0],
}


def tiny_sevennet():
    import jax.numpy as jnp

    from jaxuft.models.nequip import build

    cfg = SEVENNET_SMALL
    shapes = jax.eval_shape(build(cfg).init, jax.random.PRNGKey(0), jnp.zeros(4, jnp.int32), jnp.ones((3, 3)),
                            jnp.zeros(3, jnp.int32), jnp.zeros(3, jnp.int32), jnp.ones(4, bool),
                            jnp.ones(3, bool))["params"]
    rng = np.random.default_rng(1)
    params = jax.tree_util.tree_map(lambda s: 0.5 * rng.normal(size=s.shape), shapes)
    params["radial_frequencies"] = np.arange(1, cfg["num_basis"] + 1) * np.pi / cfg["r_max"]
    params["shift"] = np.array([-3.0, -7.0, -5.0])
    params["scale"] = np.full(3, 50.0)  # random weights give ~1e-4 eV/Å forces; scale them to ~5e-3 eV/Å
    return Potential(cfg, params, dtype="float64")


def tiny_mace():
    from jaxuft.bench.models import tiny_mace as _tiny

    return _tiny("float64", atomic_numbers=ZS)


def structures(n, seed, k=(5, 8), box=4.5):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        m = int(rng.integers(*k))
        a = Atoms(numbers=rng.choice(ZS, size=m), positions=rng.uniform(0, box, (m, 3)), cell=np.eye(3) * box,
                  pbc=True)
        if a.get_all_distances(mic=True)[np.triu_indices(m, 1)].min() > 1.1:
            out.append(a)
    return out


def teacher_of(pot):
    """The new data's "truth": the foundation with E0s +0.5 eV and its readout scaled by 1.3."""
    groups = param_groups(pot.config, pot.params)
    paths, leaves, treedef = flatten(pot.params)
    new = []
    for p, x in zip(paths, leaves):
        x = np.asarray(x)
        if p == groups.e0:
            x = x + 0.5
        elif p in head_leaves(groups, pot.params) and p not in groups.buffers:
            x = 1.3 * x
        new.append(x)
    return pot.with_params(jax.tree_util.tree_unflatten(treedef, new))


def label(frames, pot):
    for a, r in zip(frames, pot.predict(frames)):
        a.calc = SinglePointCalculator(a, energy=r["energy"], forces=r["forces"], stress=r["stress"])
    return frames


CFG = FinetuneConfig(epochs=3, batch_size=2, dtype="float64", progress=False, multihead=True, e0s="lstsq",
                     replay_holdout=0.34, optim=dict(lr=5e-3, warmup_epochs=0.0), allow_worse=True,
                     replay_max_force=1e6, replay_max_energy=None)


@pytest.fixture(scope="module", params=["mace", "sevennet"])
def run(request, tmp_path_factory):
    pot = tiny_mace() if request.param == "mace" else tiny_sevennet()
    train, valid = label(structures(4, 0), teacher_of(pot)), label(structures(2, 1), teacher_of(pot))
    replay = structures(6, 2)
    out = tmp_path_factory.mktemp(f"mh-{request.param}") / "ft"
    res = finetune(pot, train, valid=valid, replay=replay, config=CFG, out_dir=out)
    return {"pot": pot, "train": train, "valid": valid, "replay": replay, "res": res, "out": out, "cfg": CFG}


def _replay_frames(r):
    return label([a.copy() for a in r["replay"]], r["pot"])


def test_ft_head_learns_new_data_and_foundation_head_keeps_replay(run):
    res, pot = run["res"], run["pot"]
    hist = res.history
    v = [h["loss"] for h in hist if h["split"] == "valid"]
    assert min(v[1:]) < v[0], v  # training the ft head (after its E0 refit) lowers the validation loss
    ft_new = evaluate(res.potential, run["valid"]).overall
    assert ft_new["energy_rmse"] < 0.5 * evaluate(pot, run["valid"]).overall["energy_rmse"]
    # the foundation head stays close to the foundation model on replay; the ft head moved away from it
    rep = _replay_frames(run)
    fnd = evaluate(res.head_potential("foundation"), rep).overall
    ft = evaluate(res.head_potential("ft"), rep).overall
    assert fnd["energy_rmse"] < 0.2 * ft["energy_rmse"] and fnd["forces_rmse"] < ft["forces_rmse"], (fnd, ft)
    forget = res.manifest["forgetting"]
    assert forget["energy_rmse"]["initial"] == pytest.approx(0.0, abs=1e-9)  # labels = the foundation head at start
    assert forget["energy_rmse"]["final"] < 0.2 * ft["energy_rmse"]


def test_trunk_is_shared_and_heads_hold_only_head_leaves(run):
    res, pot = run["res"], run["pot"]
    groups = param_groups(pot.config, pot.params)
    hl = set(head_leaves(groups, pot.params))
    assert set(res.heads) == {"ft", "foundation"}
    assert set(res.heads["ft"]) == hl == set(res.heads["foundation"])
    assert any(not np.array_equal(res.heads["ft"][p], res.heads["foundation"][p]) for p in hl)
    paths, a, _ = flatten(res.head_potential("ft").params)
    _, b, _ = flatten(res.head_potential("foundation").params)
    _, c, _ = flatten(pot.params)
    trunk = [(p, x, y, z) for p, x, y, z in zip(paths, a, b, c) if p not in hl]
    assert trunk and all(np.array_equal(x, y) for _, x, y, _ in trunk)  # one trunk for both heads
    assert any(not np.allclose(x, z) for _, x, _, z in trunk)  # and it trained
    trainable = res.manifest["model"]["trainable_leaves"]
    assert len(trainable) == len(set(trainable))
    assert all(t in paths for t in trainable if "::" not in t)  # trunk leaves once, under their own name
    assert {t.split("::")[0] for t in trainable if "::" in t} == {"ft", "foundation"}


def _mace_only(run):
    if run["pot"].config["family"] != "mace":
        pytest.skip("model-independent code path; checked once (MACE) to keep CI time down")


def test_either_head_can_be_evaluated_library_and_cli(run, capsys):
    from jaxuft.cli import main

    _mace_only(run)
    res, out = run["res"], run["out"]
    rep = _replay_frames(run)
    heads = load_heads(out)
    assert set(heads) == {"ft", "foundation"} and (out / "model" / HEADS_FILE).is_file()
    direct = evaluate(res.head_potential("foundation"), rep).overall
    from_dir = evaluate(out / "model", rep, head="foundation", dtype="float64").overall
    assert from_dir["energy_rmse"] == pytest.approx(direct["energy_rmse"], rel=1e-9, abs=1e-9)
    ft_dir = evaluate(out / "model", rep, dtype="float64").overall  # the saved model is the ft head
    assert ft_dir["energy_rmse"] == pytest.approx(evaluate(res.potential, rep).overall["energy_rmse"], rel=1e-9)
    with pytest.raises(HeadError, match="unknown head"):
        evaluate(out / "model", rep, head="nope")
    with pytest.raises(HeadError, match="heads="):
        evaluate(res.potential, rep, head="foundation")
    path = out.parent / "replay.xyz"
    from ase.io import write

    write(path, rep)
    assert main(["evaluate", "--model", str(out / "model"), "--head", "foundation", "--dtype", "float64",
                 str(path)]) == 0
    assert "head foundation" in capsys.readouterr().out


def test_resume_is_exact(run, tmp_path):
    _mace_only(run)
    out = tmp_path / "ft"
    args = dict(valid=run["valid"], replay=run["replay"], config=run["cfg"], out_dir=out)
    part = finetune(run["pot"], run["train"], stop_after=1, **args)
    assert part.status == "interrupted"
    done = finetune(run["pot"], run["train"], resume=True, **args)
    for h in ("ft", "foundation"):
        for p, x in run["res"].heads[h].items():
            np.testing.assert_array_equal(done.heads[h][p], x)
    for x, y in zip(jax.tree_util.tree_leaves(done.params), jax.tree_util.tree_leaves(run["res"].params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_md_with_the_result_compiles_nothing(run):
    from jaxuft import md
    from jaxuft.md.compilation import CompilationCounter

    _mace_only(run)
    pot, res = run["pot"], run["res"]
    assert res.potential.module == pot.module and res.potential.dtype == pot.dtype
    sim = md.Simulation(pot, md.NVE(timestep=0.5), chunk_steps=2)
    state = sim.init(run["valid"][0].copy(), replicas=1, seed=0)
    state, _ = sim.run(state, pot.params, n_steps=2, record_every=2)
    with CompilationCounter() as cc:
        sim.run(state, res.potential.params, n_steps=2, record_every=2)
        sim.run(state, res.head_potential("foundation").params, n_steps=2, record_every=2)
    assert cc.count == 0, cc.names


def test_multihead_needs_replay_and_no_trunk_cache(run):
    from jaxuft.finetune import FinetuneError

    _mace_only(run)
    with pytest.raises(FinetuneError, match="needs replay"):
        finetune(run["pot"], run["train"], valid=run["valid"], config=run["cfg"])
    with pytest.raises(FinetuneError, match="trunk cache"):
        finetune(run["pot"], run["train"], valid=run["valid"], replay=run["replay"],
                 config=run["cfg"].replace(trunk_cache=True, freeze="linear-readouts"))
