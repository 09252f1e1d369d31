"""Mixed batches: systems of different sizes, compositions and cells in one compiled program."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, fcc111, molecule

from jaxuft import md
from jaxuft.md.cli import builtin_morse
from jaxuft.md.compilation import CompilationCounter
from jaxuft.md.errors import MDInputError


def systems():
    """A Cu crystal (32 atoms), a water molecule in a box (3) and a Cu(111) slab (12), all periodic."""
    cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    cu.rattle(0.05, seed=1)
    water = molecule("H2O")
    water.center(vacuum=4.0)
    water.pbc = True
    slab = fcc111("Cu", (2, 2, 3), vacuum=4.0)
    slab.pbc = True
    return [cu, water, slab]


POT = builtin_morse([1, 8, 29], "float64")
SEEDS = [11, 12, 13]


def run(ensemble, frames, seed, steps=60, record_every=10, **kw):
    sim = md.Simulation(POT, ensemble, chunk_steps=30, **kw)
    state = sim.init(frames, seed=seed)
    state, traj = sim.run(state, n_steps=steps, record_every=record_every, progress=False)
    return sim, state, traj


LANGEVIN = md.Langevin(1.0, 300.0, 0.02)


@pytest.mark.parametrize("compare", [(1, 2)])
def test_each_system_moves_as_it_does_alone(compare):
    """float64, same seeds, Langevin: the padded systems' frames in the mixed batch equal their own runs (noise,
    neighbour lists, model graph and temperature included).  The crystal sets the padded size (32 atoms); each run
    alone compiles a program of its own, so the two padded systems are compared (the thermostat and barostat
    degrees of freedom under padding are checked on the integrators below)."""
    frames = systems()
    sim, _, mixed = run(LANGEVIN, frames, SEEDS)
    assert sim.mixed and mixed.n_atoms.tolist() == [32, 3, 12]
    assert [s["atoms"] for s in mixed.report["systems"]] == [32, 3, 12]
    for k in compare:
        atoms = frames[k]
        _, _, alone = run(LANGEVIN, atoms, SEEDS[k])
        one = mixed.system(k)
        assert one.positions.shape == alone.positions.shape
        for key in ("positions", "forces", "cell", "energy", "temperature", "pressure"):
            np.testing.assert_allclose(one.data[key], alone.data[key], rtol=1e-9, atol=1e-9, err_msg=f"{k} {key}")
        np.testing.assert_array_equal(one.step, alone.step)
        # the frames written per system are trimmed to its own atoms
        frame = mixed.atoms(k)[-1]
        assert frame.get_chemical_formula() == atoms.get_chemical_formula()
        np.testing.assert_allclose(frame.positions, alone.positions[0, -1], atol=1e-9)


@pytest.mark.parametrize("kind", ["nh", "npt"])
def test_padding_atoms_change_no_integrator(kind):
    """A 5-atom system padded with 3 masked atoms (mass 1, no force) moves exactly as it does alone: the Nosé–Hoover
    chains and the MTK barostat count real degrees of freedom only (Langevin is checked end to end above)."""
    import jax
    import jax.numpy as jnp

    from jaxuft.md import integrators as it
    from jaxuft.md.forces import ForceOutput

    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(0)
    x0 = np.array([[0, 0, 0], [1.1, 0, 0], [0, 1.2, 0.1], [1.0, 1.0, 0.9], [0.2, 0.1, 1.3]]) * 2.0
    p0 = rng.standard_normal((5, 3)) * 0.3
    masses = np.array([12.0, 1.0, 16.0, 12.0, 1.0])
    cell = np.eye(3) * 8.0

    def force_fn_for(mask):
        def energy(x, strain):
            x = x @ (jnp.eye(3) + strain)
            w = mask[:, None] & mask[None, :] & ~jnp.eye(len(x), dtype=bool)
            d2 = jnp.sum((x[:, None] - x[None]) ** 2, axis=-1)
            d = jnp.sqrt(jnp.where(w, d2, 1.0))  # safe for padding atoms that sit together at the origin
            return 0.5 * jnp.sum(jnp.where(w, (d - 2.4) ** 2, 0.0))

        def force_fn(x, c, nbrs):
            e, (gx, gs) = jax.value_and_grad(energy, argnums=(0, 1))(x, jnp.zeros((3, 3)))
            stress = gs / jnp.abs(jnp.linalg.det(c))
            return ForceOutput(e, -gx, stress, jnp.asarray(1.0), jnp.asarray(0, jnp.int32)), nbrs

        return force_fn

    def trajectory(n_pad):
        mask = np.arange(n_pad) < 5
        m = np.ones(n_pad)
        m[:5] = masses
        x = np.zeros((n_pad, 3))
        x[:5] = x0
        p = np.zeros((n_pad, 3))
        p[:5] = p0
        kw = {} if n_pad == 5 else {"atom_mask": jnp.asarray(mask)}
        f = force_fn_for(jnp.asarray(mask))
        dt, kt = 0.05, 0.03
        if kind == "nh":
            init, step = it.nvt_nose_hoover(f, jnp.asarray(m), dt, kt, 1.0, **kw)
        else:
            init, step = it.npt_nose_hoover(f, jnp.asarray(m), dt, kt, 1e-3, 1.0, 5.0, **kw)
        state = init(jnp.asarray(x), jnp.asarray(cell), jnp.asarray(p), jnp.zeros(()), jax.random.PRNGKey(3))
        out, _ = jax.lax.scan(lambda s, _: (step(s)[0], None), state, None, length=200)
        return jax.device_get(out)

    alone, padded = trajectory(5), trajectory(8)
    np.testing.assert_allclose(padded.positions[:5], alone.positions, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(padded.momenta[:5], alone.momenta, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(padded.momenta[5:], 0.0)
    for name in ("thermostat_momentum", "barostat_momentum", "box_position", "cell"):
        np.testing.assert_allclose(getattr(padded, name), getattr(alone, name), rtol=1e-10, atol=1e-12, err_msg=name)
    assert np.ptp(alone.positions) > 0 and (kind != "npt" or abs(float(alone.box_position)) > 1e-6)


def test_same_size_buckets_compile_nothing_new_and_capacities_are_per_system(tmp_path):
    ens = LANGEVIN
    frames = systems()
    run(ens, frames, 0)  # compiles the bucket (already compiled by the test above when run together)
    other = [f.copy() for f in frames]
    other[0].rattle(0.02, seed=5)
    other[1] = molecule("H2O")  # another geometry of the same sizes, in another box
    other[1].center(vacuum=4.5)
    other[1].pbc = True
    with CompilationCounter() as cc:
        sim, state, traj = run(ens, other, 1)
    assert cc.count == 0, cc.names
    assert traj.report["compilations"] == 0
    caps = traj.report["systems"]
    assert caps[1]["capacity"] < caps[0]["capacity"] and caps[0]["capacity"] <= sim.spec.capacity

    # save/restore of a mixed run continues exactly
    sim.save(state, tmp_path / "state.npz")
    state, more = sim.run(state, n_steps=30, record_every=10, progress=False)
    sim2, state2 = md.Simulation.restore(tmp_path / "state.npz", POT)
    assert sim2.mixed and sim2.sizes == [32, 3, 12]
    with CompilationCounter() as cc:
        state2, more2 = sim2.run(state2, n_steps=30, record_every=10, progress=False)
    assert cc.count == 0, cc.names
    np.testing.assert_array_equal(more.positions, more2.positions)
    np.testing.assert_array_equal(more.n_atoms, more2.n_atoms)
    more.save_npz(tmp_path / "traj.npz")
    loaded = md.Trajectory.load_npz(tmp_path / "traj.npz")
    assert loaded.atoms(1)[0].get_chemical_formula() == "H2O"


def test_overflow_regrows_and_reruns_with_the_same_result():
    """Start with capacities too small for the crystal and the slab: the chunk is rerun with grown capacities, the
    systems that overflowed their own accounting record a regrowth, and the frames equal an unconstrained run."""
    frames = systems()
    sim = md.Simulation(POT, LANGEVIN, chunk_steps=30, capacity=1024)
    state = sim.init(frames, seed=SEEDS)
    assert sim.spec.capacity == 1024
    _, traj = sim.run(state, n_steps=60, record_every=10, progress=False)
    caps = traj.report["systems"]
    assert traj.report["capacity_regrows"] >= 1 and sim.spec.capacity > 1024
    assert caps[0]["regrows"] == 0 and caps[1]["regrows"] == 0  # each system's own accounting came from its start
    assert sim.spec.capacity >= caps[0]["max_pairs"] > 1024
    _, _, ref = run(LANGEVIN, frames, SEEDS)
    np.testing.assert_allclose(traj.positions, ref.positions, atol=1e-9)


def test_mixed_input_errors():
    frames = systems()
    frames[1].pbc = False
    sim = md.Simulation(POT, md.Langevin(1.0, 300.0, 0.02))
    with pytest.raises(MDInputError, match="share one pbc"):
        sim.init(frames)
    with pytest.raises(MDInputError, match="one replica per structure"):
        sim.init(systems(), replicas=6)
    with pytest.raises(MDInputError, match="one seed or one per replica"):
        sim.init(systems(), seed=[1, 2])
