"""Integrators: NVE against ASE step by step and against jax-md, energy drift, thermostats reach T."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.md.verlet import VelocityVerlet
from test_md_common import block_stats, cu_crystal, morse_cu, simulation

from jaxuft import Calculator, md


def _thermal_atoms(t_k=300.0, seed=0, rattle=0.0):
    atoms = cu_crystal(rattle=rattle, seed=seed)
    rng = np.random.default_rng(seed)
    m = atoms.get_masses()[:, None]
    p = rng.standard_normal((len(atoms), 3)) * np.sqrt(m * units.kB * t_k)
    p -= m * p.sum(0) / m.sum()
    atoms.set_momenta(p)
    return atoms


def test_nve_matches_ase_velocity_verlet_step_by_step():
    atoms = _thermal_atoms(600.0, seed=1, rattle=0.03)
    pot = morse_cu()
    sim = simulation("nve")
    state = sim.init(atoms)  # takes the atoms' momenta
    state, traj = sim.run(state, n_steps=20, record_every=1)

    ref = atoms.copy()
    ref.calc = Calculator(pot)
    dyn = VelocityVerlet(ref, timestep=2.0 * units.fs)
    for k in range(20):
        dyn.run(1)
        np.testing.assert_allclose(traj.positions[0, k], ref.positions, atol=1e-9, rtol=0)
        np.testing.assert_allclose(traj.forces[0, k], ref.get_forces(), atol=1e-8, rtol=0)
        np.testing.assert_allclose(traj.energy[0, k], ref.get_potential_energy(), atol=1e-9, rtol=0)
        np.testing.assert_allclose(traj.kinetic_energy[0, k], ref.get_kinetic_energy(), atol=1e-9, rtol=0)
        np.testing.assert_allclose(traj.stress[0, k][[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]],
                                   ref.get_stress(), atol=1e-9, rtol=0)
    np.testing.assert_allclose(np.asarray(state.momenta[0]), ref.get_momenta(), atol=1e-8)
    assert traj.step[0].tolist() == list(range(1, 21))


def test_nve_energy_drift_is_bounded():
    sim = simulation("nve")
    state = sim.init(cu_crystal(), replicas=3, temperature=600.0, seed=3)
    state, traj = sim.run(state, n_steps=1000, record_every=10)
    total = traj.energy + traj.kinetic_energy  # (R, F) eV
    n = len(sim.numbers)
    assert np.all(np.isfinite(total))
    fluctuation = np.max(np.abs(total - total[:, :1])) / n
    t = np.arange(total.shape[1])
    drift = max(abs(np.polyfit(t, total[r], 1)[0]) * len(t) for r in range(3)) / n
    assert fluctuation < 2e-4, fluctuation  # eV/atom over 2 ps at 2 fs
    assert drift < 5e-5, drift
    assert traj.temperature[:, 50:].mean() > 200  # the crystal really is hot


def test_jax_md_nve_with_our_energy_function_agrees():
    """jax-md's own velocity Verlet driven by jax_md_energy_fn follows our NVE trajectory."""
    import jax
    import jax.numpy as jnp
    from jax_md import simulate

    from jaxuft.md import neighbors as nl

    atoms = _thermal_atoms(300.0, seed=1, rattle=0.03)
    pot = morse_cu()
    sim = simulation("nve")
    state0 = sim.init(atoms)
    _, traj = sim.run(state0, n_steps=20, record_every=1)

    spec = sim.spec
    species = sim.system.species
    energy_fn = md.jax_md_energy_fn(pot, species, spec)
    cell = jnp.asarray(atoms.cell[:])
    _, shift_fn = md.jax_md_space(cell)
    init_fn, apply_fn = simulate.nve(energy_fn, shift_fn, dt=2.0 * units.fs)

    @jax.jit
    def run(params, positions, momenta):
        nbrs = nl.build(positions, cell, spec)
        st = init_fn(jax.random.PRNGKey(0), positions, 0.0, mass=sim.system.masses[:, None], momenta=momenta,
                     neighbor=nbrs, box=cell, params=params)

        def body(carry, _):
            st, nbrs = carry
            nbrs = nl.update(st.position, cell, nbrs, spec)
            st = apply_fn(st, neighbor=nbrs, box=cell, params=params)
            return (st, nbrs), st.position

        return jax.lax.scan(body, (st, nbrs), None, length=20)[1]

    xs = run(pot.params, jnp.asarray(atoms.positions), jnp.asarray(atoms.get_momenta()))
    np.testing.assert_allclose(np.asarray(xs), traj.positions[0], atol=1e-8)


@pytest.mark.parametrize("kind", ["langevin", "nh"])
def test_thermostats_reach_target_temperature(kind):
    target = 500.0
    sim = simulation(kind)
    sim.ensemble = sim.ensemble.with_(temperature=target)  # runtime setting: same compiled program
    state = sim.init(cu_crystal(), replicas=2, temperature=50.0, seed=5)  # start cold
    state, traj = sim.run(state, n_steps=3000, record_every=10)
    t_mean, t_se = block_stats(traj.temperature[:, 100:])
    assert abs(t_mean - target) < max(4 * t_se, 0.03 * target), (t_mean, t_se)
    # the kinetic-energy distribution is canonical: relative std of T ~ sqrt(2 / 3N)
    rel = traj.temperature[:, 100:].std() / target
    assert 0.7 * np.sqrt(2 / 96) < rel < 1.4 * np.sqrt(2 / 96), rel
