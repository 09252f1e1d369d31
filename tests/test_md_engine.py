"""The segment engine: restarts, replicas, overflow regrowth, compilation counts, safety stops,
observables, files, gradients and sharding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.io import read
from test_md_common import CU, cu_crystal, morse_cu, npt_starts, simulation

from jaxuft import md
from jaxuft.models.pair import morse_params

REPO = Path(__file__).resolve().parents[1]


def _starts(n, rattle=0.05):
    return [cu_crystal(rattle=rattle, seed=10 + k) for k in range(n)]


def _assert_traj_close(a, b, atol=1e-8):
    for k in ("positions", "cell", "energy", "kinetic_energy", "forces", "stress", "step"):
        np.testing.assert_allclose(a.data[k], b.data[k], atol=atol, rtol=0, err_msg=k)


# ----------------------------------------------------------------------------- restarts


def test_restart_equivalence_npt(tmp_path):
    """N + N steps through a saved/restored state equal 2N steps (NPT: cell, barostat and chains)."""
    sim = simulation("npt")
    start = sim.init(npt_starts(), seed=7)
    _, whole = sim.run(start, n_steps=600, record_every=10)

    s1, first = sim.run(start, n_steps=300, record_every=10)
    md.save_state(s1, tmp_path / "state.npz", seed=7)
    restored, meta = md.load_state(tmp_path / "state.npz")
    assert int(meta["seed"]) == 7
    sim2 = simulation("npt")
    sim2.init(npt_starts(), seed=7)  # same system; the state comes from the file
    _, second = sim2.run(restored, n_steps=300, record_every=10)
    both = md.Trajectory.concatenate([first, second])
    _assert_traj_close(whole, both, atol=1e-9)
    assert not np.allclose(whole.cell[:, 0], whole.cell[:, -1])  # the cell did move


def test_replicas_equal_separate_runs():
    """vmap over R replicas (different starts, different seeds) == R runs of one replica."""
    sim = simulation("langevin")
    state = sim.init(_starts(2), seed=3)
    _, together = sim.run(state, n_steps=100, record_every=10)
    for r in range(2):
        single = jax.tree_util.tree_map(lambda a: a[r : r + 1], state)
        _, alone = sim.run(single, n_steps=100, record_every=10)
        for k in ("positions", "energy", "temperature"):
            np.testing.assert_allclose(alone.data[k][0], together.data[k][r], atol=1e-7, err_msg=k)
    # different seeds really give different trajectories
    assert not np.allclose(together.temperature[0], together.temperature[1])


def test_replica_groups_equal_one_vmapped_batch():
    """Replicas advanced in consecutive vmapped groups (replica_batch) give the same frames as one
    batch, one compiled program each, and the automatic choice bounds the group on one CPU device."""
    sims = {b: simulation("langevin", replica_batch=b) for b in (0, 2)}
    state = sims[0].init(_starts(4), seed=5)
    sims[2].init(_starts(4), seed=5)
    _, whole = sims[0].run(state, n_steps=60, record_every=10)
    with md.CompilationCounter() as counter:
        _, grouped = sims[2].run(state, n_steps=60, record_every=10)
    assert counter.count >= 1  # its own program (groups of 2 inside a lax.map)
    _assert_traj_close(whole, grouped, atol=1e-7)
    assert sims[2].program(6, 10).replica_batch == 2
    auto = simulation("langevin")
    auto.init(_starts(1))
    expect = 0 if (jax.default_backend() != "cpu" or len(jax.devices()) > 1) else \
        max(1, md.engine.REPLICA_EDGE_BUDGET // auto.spec.model_capacity)
    assert auto.program(1, 1).replica_batch == expect
    with pytest.raises(md.MDInputError, match="replica_batch"):
        md.Simulation(morse_cu(), md.Langevin(1.0, 300.0), replica_batch=-1)


def test_overflow_regrow_gives_same_frames_as_large_capacity():
    starts = npt_starts()
    small = simulation("npt", capacity=200, model_capacity=150, images=(0, 0, 0))
    big = simulation("npt")  # sized from the structures (with headroom): never overflows here
    s_small = small.init(starts, seed=1)
    s_big = big.init(starts, seed=1)
    _, t_small = small.run(s_small, n_steps=100, record_every=10)
    _, t_big = big.run(s_big, n_steps=100, record_every=10)
    assert t_small.report["capacity_regrows"] >= 1
    assert small.spec.capacity > 200 and small.spec.model_capacity > 150 and small.spec.images == (1, 1, 1)
    assert t_big.report["capacity_regrows"] == 0
    _assert_traj_close(t_small, t_big, atol=1e-9)


# ----------------------------------------------------------------------------- compilation


def test_new_params_and_settings_compile_nothing():
    pot = morse_cu()
    sim = simulation("langevin")
    state = sim.init(cu_crystal(), replicas=2, seed=0)
    state, t1 = sim.run(state, pot.params, n_steps=100, record_every=10)
    new_params = morse_params(1, D=1.1 * CU["D"], a=CU["a"], r0=CU["r0"])
    with md.CompilationCounter() as cc:
        sim.ensemble = sim.ensemble.with_(temperature=350.0, friction=0.01)
        state, t2 = sim.run(state, new_params, n_steps=200, record_every=10)
    assert cc.count == 0, cc.names
    assert t2.report["compilations"] == 0
    # the new params are really used: energies scale with D
    x = np.asarray(state.positions[0])
    assert np.isfinite(t2.energy).all()
    ref = pot.with_params(new_params).predict(Atoms(numbers=sim.numbers, positions=x,
                                                    cell=np.asarray(state.cell[0]), pbc=True))
    np.testing.assert_allclose(t2.energy[0, -1], ref["energy"], atol=1e-9)


# ----------------------------------------------------------------------------- safety


def test_safety_stops_per_replica():
    atoms = cu_crystal()
    sim = simulation("nve", safety=md.Safety(max_temperature=3000.0, min_distance=2.0))
    frames = [atoms.copy() for _ in range(3)]
    rng = np.random.default_rng(0)
    for a in frames:
        a.set_momenta(rng.standard_normal((len(a), 3)) * np.sqrt(a.get_masses()[:, None] * 300 * 8.617e-5))
    # replica 1: atoms 0 and its neighbour fly into each other
    d = frames[1].get_distances(0, range(1, len(atoms)), mic=True)
    j = 1 + int(np.argmin(d))
    v = frames[1].get_distance(0, j, mic=True, vector=True)
    p = frames[1].get_momenta()
    p[0] += 0.3 * v / np.linalg.norm(v) * 63.5
    p[j] -= 0.3 * v / np.linalg.norm(v) * 63.5
    frames[1].set_momenta(p)
    # replica 2: far too hot from the start
    frames[2].set_momenta(frames[2].get_momenta() * np.sqrt(4000.0 / 300.0))
    state = sim.init(frames)
    state, traj = sim.run(state, n_steps=100, record_every=10)
    stops = {s["replica"]: s for s in traj.report["stops"]}
    assert stops[0]["status"] == "running" and stops[0]["step"] == 100
    assert stops[1]["status"] == "min_distance" and 0 < stops[1]["step"] < 100 and stops[1]["value"] < 2.0
    assert stops[2]["status"] == "temperature" and stops[2]["step"] == 0 and stops[2]["value"] > 3000
    # the last good state is kept: replica 1 is frozen at its last good step, atoms still apart
    x = np.asarray(state.positions[1])
    assert np.linalg.norm(x[0] - x[j] - np.round((x[0] - x[j]) / 7.674) * 7.674) > 1.9
    assert int(state.step[1]) == stops[1]["step"]
    # frames: replica 1 keeps its frames up to the stop plus the last good frame
    valid = traj.valid
    assert valid[0].all() and 0 < valid[1].sum() < valid.shape[1] and valid[2].sum() == 1
    last = np.nonzero(valid[1])[0][-1]
    assert traj.step[1, last] == stops[1]["step"]
    # a further segment does not move stopped replicas
    state2, traj2 = sim.run(state, n_steps=100, record_every=10)
    np.testing.assert_array_equal(np.asarray(state2.positions[1]), x)
    assert traj2.valid[1].sum() == 0 and traj2.valid[0].all()

    # non-finite energies stop every replica (same program: the limits and params are arguments)
    nan_params = morse_params(1, D=np.nan, a=CU["a"], r0=CU["r0"])
    with md.CompilationCounter() as cc:
        _, t_nan = sim.run(sim.init(frames[:1] * 3), nan_params, n_steps=100, record_every=10)
    assert cc.count == 0
    assert all(s["status"] == "nan" for s in t_nan.report["stops"])


# ----------------------------------------------------------------------------- observables


def test_observables_hook_records_and_stops_without_recompiling():
    pot = morse_cu()

    def observables(params, graph, extra):
        desc = pot.node_outputs(params, graph)["descriptors"]  # (N + 1, F)
        efs = pot.energy_forces_stress(params, graph)
        fmax = jnp.max(jnp.linalg.norm(jnp.where(graph.node_mask[:, None], efs["forces"], 0.0), axis=-1))
        return {"fmax": fmax, "descriptor_norm": jnp.linalg.norm(desc, axis=-1) * extra["scale"]}

    def stop_if(obs, extra):
        return obs["fmax"] > extra["threshold"]

    sim = simulation("langevin", observables=observables, stop_if=stop_if)
    state = sim.init(cu_crystal(), replicas=2, seed=4)
    extra = {"threshold": jnp.asarray(1e3), "scale": jnp.asarray(1.0)}
    s1, t1 = sim.run(state, n_steps=100, record_every=10, extra=extra)
    assert t1.observables["descriptor_norm"].shape == (2, 10, 32)
    fmax = np.linalg.norm(t1.forces, axis=-1).max(-1)
    np.testing.assert_allclose(t1.fmax, fmax, atol=1e-10)
    assert all(s["status"] == "running" for s in t1.report["stops"])
    frames = t1.atoms(1)
    assert "fmax" in frames[0].info and frames[0].arrays["descriptor_norm"].shape == (32,)

    with md.CompilationCounter() as cc:
        extra2 = {"threshold": jnp.asarray(float(np.median(fmax))), "scale": jnp.asarray(2.0)}
        s2, t2 = sim.run(s1, n_steps=100, record_every=10, extra=extra2)
    assert cc.count == 0, cc.names
    assert any(s["status"] == "observable" for s in t2.report["stops"])


# ----------------------------------------------------------------------------- files


def test_trajectory_files_roundtrip(tmp_path):
    sim = simulation("langevin")
    state = sim.init(cu_crystal(), replicas=2, seed=0)
    state, traj = sim.run(state, n_steps=100, record_every=10)
    paths = traj.write_extxyz(tmp_path / "traj")
    assert [p.name for p in paths] == ["replica_000.extxyz", "replica_001.extxyz"]
    frames = read(paths[1], index=":")
    assert len(frames) == 10
    for f, k in zip(frames, range(10)):
        np.testing.assert_allclose(f.get_potential_energy(), traj.energy[1, k], rtol=1e-8)
        np.testing.assert_allclose(f.get_forces(), traj.forces[1, k], atol=1e-6)
        np.testing.assert_allclose(f.get_stress()[:3], np.diag(traj.stress[1, k]), atol=1e-8)
        np.testing.assert_allclose(f.positions, traj.positions[1, k], atol=1e-6)
        assert f.info["step"] == traj.step[1, k]
    traj.save_npz(tmp_path / "traj.npz")
    back = md.Trajectory.load_npz(tmp_path / "traj.npz")
    np.testing.assert_allclose(back.energy, traj.energy)
    assert back.positions.dtype == np.float32 and back.positions.shape == (2, 10, 32, 3)


# ----------------------------------------------------------------------------- gradients


def test_gradient_matches_finite_differences():
    """d/d(params, initial positions) of the mean potential energy of a short NVE segment."""
    pot = morse_cu()
    sim = md.Simulation(pot, md.NVE(2.0), remat=True)
    atoms = cu_crystal(rattle=0.05, seed=2)
    state0 = sim.init(atoms, temperature=300.0, seed=2)
    x0, p0 = state0.positions, state0.momenta

    def loss(params, x):
        state = sim.initial_state(x, p0)
        _, frames, _, _ = sim.segment(params, state, n_steps=12, record_every=4)
        return jnp.mean(frames["energy"]) + 0.1 * jnp.sum(frames["positions"][:, -1, 0, :] ** 2)

    params = pot.params
    val, (g_params, g_x) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x0)
    f = jax.jit(loss)
    eps = 1e-5
    for name in ("D", "a", "r0"):
        up = dict(params, **{name: params[name] + eps})
        dn = dict(params, **{name: params[name] - eps})
        fd = (f(up, x0) - f(dn, x0)) / (2 * eps)
        np.testing.assert_allclose(float(g_params[name].sum()), float(fd), rtol=1e-5, atol=1e-7, err_msg=name)
    for atom, axis in ((0, 0), (5, 2)):
        dx = jnp.zeros_like(x0).at[0, atom, axis].set(eps)
        fd = (f(params, x0 + dx) - f(params, x0 - dx)) / (2 * eps)
        np.testing.assert_allclose(float(g_x[0, atom, axis]), float(fd), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- sharding

SHARD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, "tests")
    from test_md_common import cu_crystal, morse_cu
    from jaxuft import md
    assert len(jax.devices()) == 4, jax.devices()
    out = {}
    for shard in (True, False):
        sim = md.Simulation(morse_cu(), md.Langevin(2.0, 300.0, friction=0.02), shard=shard, chunk_steps=100)
        state = sim.init(cu_crystal(), replicas=4, seed=2)
        state, traj = sim.run(state, n_steps=20, record_every=10)
        out[str(shard)] = dict(devices=len(state.positions.sharding.device_set),
                               energy=traj.energy.tolist(), stops=traj.report["stops"])
    print(json.dumps(out))
    """
)


def test_replicas_sharded_over_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-c", SHARD_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["True"]["devices"] == 4 and out["False"]["devices"] == 1
    np.testing.assert_allclose(out["True"]["energy"], out["False"]["energy"], atol=1e-9)
