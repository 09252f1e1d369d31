"""Differentiable MD (jaxuft.md.differentiable) and DiffTRe reweighting (jaxuft.md.reweighting).

Gradients of short runs equal central finite differences (float64, 32 Cu atoms, Morse) for NVE,
Langevin (fixed noise keys) and NPT with respect to params, initial positions, the cell and
thermostat/barostat settings; the compiled gradient's memory grows sub-linearly with the number
of steps under the default rematerialisation; an overflowing run raises instead of returning a
wrong gradient; the reweighting gradient equals the exact answer on a Gaussian toy and the
fluctuation formula on an MD sample.  Each gradient program is compiled once (finite differences
reuse its value output), with LLVM's optimisation off (``FAST_COMPILE``: about 30 % less compile
time for these tiny runs; XLA's own passes, buffer assignment and the arithmetic are unchanged).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxuft import md
from jaxuft.md.compilation import CompilationCounter
from jaxuft.md.differentiable import DifferentiableMD, differentiable_run, program_memory, remat_block_records
from jaxuft.md.reweighting import Reweighting, effective_sample_size, reweighted_mean, weights
from jaxuft.potential import energy as model_energy

from test_md_common import cu_crystal, morse_cu

EPS = 1e-5
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _check(vg, grads, args, index, perturb, label, eps=EPS, rtol=1e-5, atol=1e-8):
    """Compare ``grads = vg(*args)[1]`` (``vg = value_and_grad(loss, argnums=(0, 1, ...))``) with respect
    to ``args[index]`` (the element ``perturb`` picks) with a central difference of the value."""
    analytic, up, down = perturb(grads[index], args[index], eps)
    a_up = list(args)
    a_up[index] = up
    a_dn = list(args)
    a_dn[index] = down
    fd = (float(vg(*a_up)[0]) - float(vg(*a_dn)[0])) / (2 * eps)
    np.testing.assert_allclose(float(analytic), fd, rtol=rtol, atol=atol, err_msg=label)


def _param(name, k=(0, 0)):
    def perturb(g, p, eps):
        up = dict(p, **{name: p[name].at[k].add(eps)})
        dn = dict(p, **{name: p[name].at[k].add(-eps)})
        return g[name][k], up, dn
    return perturb


def _element(index):
    def perturb(g, x, eps):
        return g[index], x.at[index].add(eps), x.at[index].add(-eps)
    return perturb


def _scalar(g, x, eps):
    return g, x + eps, x - eps


def _params():
    return jax.tree_util.tree_map(jnp.asarray, morse_cu().params)


def _nve_loss(dmd):
    def loss(params, x, cell):
        traj = dmd(params, positions=x, cell=cell, initial_temperature=300.0)
        return (jnp.mean(traj.frames["energy"]) + 0.1 * jnp.sum(traj.frames["positions"][:, -1, 0] ** 2)
                + 0.01 * jnp.mean(traj.frames["pressure"]))
    return loss


def test_nve_gradients_params_positions_cell_and_memory():
    """Finite differences at 16 steps; XLA's temporaries of the same compiled gradient at 16 and 256
    steps: 16x the steps costs far less than 16x the memory under the default rematerialisation."""
    pot = morse_cu()
    atoms = cu_crystal(rattle=0.05, seed=2)
    dmd = DifferentiableMD(pot, atoms, md.NVE(2.0), steps=16, record_every=4)
    assert dmd.n_blocks == 4 and dmd.remat == "blocks"
    vg = jax.jit(jax.value_and_grad(_nve_loss(dmd), argnums=(0, 1, 2)), compiler_options=FAST_COMPILE)
    args = (_params(), jnp.asarray(dmd.positions), jnp.asarray(dmd.cell))
    _, grads = vg(*args)
    for name in ("D", "a", "r0"):
        _check(vg, grads, args, 0, _param(name), f"d/d{name}")
    _check(vg, grads, args, 1, _element((0, 5, 2)), "d/dx")
    _check(vg, grads, args, 2, _element((0, 1, 1)), "d/dcell")

    with CompilationCounter() as cc:
        temp16 = program_memory(vg.lower(*args).compile()).temp
    assert cc.count == 0  # the program above, from the cache
    long = DifferentiableMD(pot, atoms, md.NVE(2.0), steps=256, record_every=4)
    assert long.n_blocks == 16
    temp256 = long.gradient_memory(_nve_loss(long), *args, argnums=(0, 1, 2), compiler_options=FAST_COMPILE).temp
    assert temp16 < temp256 < temp16 * 16 / 2.5, (temp16, temp256)  # linear ~16x, sqrt ~4x
    assert remat_block_records(16, 4) == 2 and remat_block_records(64, 4) == 4 and remat_block_records(100, 1) == 10


def test_langevin_gradients_params_positions_temperature_friction():
    pot = morse_cu()
    dmd = DifferentiableMD(pot, cu_crystal(rattle=0.05, seed=3), md.Langevin(2.0, 300.0, friction=0.02),
                           steps=16, record_every=4, replicas=2, seed=5)

    def loss(params, x, temperature, friction):
        traj = dmd(params, positions=x, temperature=temperature, friction=friction)
        return jnp.mean(traj.frames["energy"]) + jnp.mean(traj.frames["kinetic_energy"])

    vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)), compiler_options=FAST_COMPILE)
    args = (_params(), jnp.asarray(dmd.positions), jnp.asarray(300.0), jnp.asarray(0.02))
    _, grads = vg(*args)
    _check(vg, grads, args, 0, _param("D"), "d/dD")
    _check(vg, grads, args, 1, _element((1, 7, 0)), "d/dx")
    _check(vg, grads, args, 2, _scalar, "d/dT", eps=1e-3)
    _check(vg, grads, args, 3, _scalar, "d/dfriction", eps=1e-6)


def test_npt_gradients_params_positions_barostat():
    """Through the one-call form: ``differentiable_run`` inside ``jit`` sets up once, while tracing."""
    pot = morse_cu()
    atoms = cu_crystal(a=3.80, rattle=0.03, seed=1)
    ensemble = md.NPT(2.0, 300.0, 1.0, tau_t=50.0, tau_p=200.0)

    def loss(params, x, pressure, tau_p, temperature):
        traj = differentiable_run(pot, atoms, ensemble, 16, params, record_every=4, positions=x, pressure=pressure,
                                  tau_p=tau_p, temperature=temperature)
        return 10.0 * jnp.mean(traj.frames["density"]) + jnp.mean(traj.frames["energy"])

    vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)), compiler_options=FAST_COMPILE)
    x0 = jnp.asarray(atoms.get_positions())[None]
    args = (_params(), x0, jnp.asarray(1000.0), jnp.asarray(200.0), jnp.asarray(300.0))
    value, grads = vg(*args)
    assert abs(float(grads[2])) > 1e-6  # the box responds to the pressure
    _check(vg, grads, args, 0, _param("r0"), "d/dr0")
    _check(vg, grads, args, 1, _element((0, 2, 1)), "d/dx")
    _check(vg, grads, args, 2, _scalar, "d/dpressure", eps=1e-1, atol=1e-10)
    _check(vg, grads, args, 3, _scalar, "d/dtau_p", eps=1e-3, atol=1e-10)
    _check(vg, grads, args, 4, _scalar, "d/dT", eps=1e-3)


def test_overflow_raises_with_the_capacities_to_use():
    pot = morse_cu()
    dmd = DifferentiableMD(pot, cu_crystal(rattle=0.05, seed=2), md.NVE(2.0), steps=4, record_every=2,
                           model_capacity=256)
    with pytest.raises(Exception, match=r"outgrew its fixed neighbour list.*model_capacity="):
        jax.block_until_ready(jax.jit(lambda p: dmd(p, initial_temperature=300.0).frames["energy"],
                                      compiler_options=FAST_COMPILE)(_params()))
    with pytest.raises(md.MDInputError, match="multiple of record_every"):
        differentiable_run(pot, cu_crystal(), md.NVE(2.0), steps=5, record_every=2)


# ----------------------------------------------------------------------------- reweighting


def test_reweighting_gradient_exact_on_gaussian_toy():
    """x ~ N(0, kT/k0) exactly; U_k = k x²/2: d<x²>/dk = -kT/k², ESS/N = sqrt(k0 (2k - k0)) / k."""
    kT, k0 = 0.7, 2.0
    x = np.random.default_rng(0).standard_normal(400_000) * np.sqrt(kT / k0)
    x2 = jnp.asarray(x * x)

    @jax.jit
    def mean_x2(k):
        return reweighted_mean(x2, 0.5 * (k - k0) * x2, kT)

    g = float(jax.jit(jax.grad(mean_x2))(k0))
    np.testing.assert_allclose(g, -kT / k0**2, rtol=0.03)
    np.testing.assert_allclose(float(mean_x2(k0)), kT / k0, rtol=0.01)
    np.testing.assert_allclose(float(mean_x2(1.2 * k0)), kT / (1.2 * k0), rtol=0.01)
    k = 1.5 * k0
    ess = float(jax.jit(lambda d: effective_sample_size(weights(d, kT)))(0.5 * (k - k0) * x2)) / x.size
    np.testing.assert_allclose(ess, np.sqrt(k0 * (2 * k - k0)) / k, rtol=0.01)


def test_reweighting_on_md_sample_matches_fluctuation_formula():
    """At the sampling params: ESS = N, reweighted means = plain means and the autodiff gradient
    equals <dO/dθ> - β(<O dU/dθ> - <O><dU/dθ>) computed frame by frame."""
    pot = morse_cu()
    sim = md.Simulation(pot, md.Langevin(2.0, 600.0, friction=0.05), chunk_steps=100)
    state = sim.init(cu_crystal(rattle=0.05, seed=4), replicas=2, seed=4)
    obs = lambda params, frame: {"energy": frame["energy"], "x0": frame["positions"][0, 0]}
    rw = Reweighting(sim, state, steps=100, record_every=5, observables=obs, min_ess=0.5)
    params = _params()
    loss = lambda means: means["energy"] + 3.0 * means["x0"]
    value, grads, info = rw.value_and_grad(loss, params)
    assert info["resampled"] and info["frames"] == 40
    np.testing.assert_allclose(info["ess"], 40.0, rtol=1e-10)

    s, spec = rw.sample, rw._spec
    u_fn = lambda p, x, c, n: model_energy(pot.module, p, md.replica_graph(
        sim.system.species, x, c, md.neighbors.model_edges(x, c, n, spec), spec))[0]
    per_frame = jax.jit(jax.vmap(jax.value_and_grad(u_fn), in_axes=(None, 0, 0, 0)))
    u, du = per_frame(params, s.positions, s.cell, s.neighbors)
    o = u + 3.0 * s.positions[:, 0, 0]  # the loss per frame; dO/dθ = dU/dθ
    np.testing.assert_allclose(float(value), float(jnp.mean(o)), rtol=1e-10)
    beta = 1.0 / float(s.kT)
    for name in ("D", "a", "r0"):
        d = du[name].reshape(40, -1)[:, 0]
        expected = float(jnp.mean(d) - beta * (jnp.mean(o * d) - jnp.mean(o) * jnp.mean(d)))
        np.testing.assert_allclose(float(grads[name].reshape(-1)[0]), expected, rtol=1e-6, err_msg=name)

    # moving the params lowers the ESS; far enough, the driver samples again
    moved = dict(params, r0=params["r0"] * 1.02)
    assert rw.effective_sample_size(moved) < 40.0
    rw.min_ess = 0.999
    _, _, info2 = rw.value_and_grad(loss, moved)
    assert info2["resampled"] and info2["samples_taken"] == 2 and info2["md_steps"] == 200
    with pytest.raises(md.MDInputError, match="canonical"):
        Reweighting(md.Simulation(pot, md.NVE(2.0)), state, 10, 5, obs)
