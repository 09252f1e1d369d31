"""Shared fixtures/helpers of the MD tests, and the neighbour-list tests.

The MD tests use a Morse model of copper (float64) on small cells so the whole
suite stays within a few minutes on a 2-core CI machine.  Test modules import
the helpers from here (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator as AseCalculator
from ase.calculators.calculator import all_changes

from jaxuft.md import neighbors as nl
from jaxuft.md.forces import ForceField
from jaxuft.models.pair import morse_config, morse_params
from jaxuft.potential import Potential

#: Girifalco–Weizer Morse copper (eV, 1/Å, Å) with a 5 Å smooth cutoff; equilibrium a ≈ 3.84 Å at 300 K
CU = dict(D=0.3429, a=1.3588, r0=2.866)
A_CU = 3.837


@functools.lru_cache(maxsize=None)
def morse_cu(dtype: str = "float64") -> Potential:
    return Potential(morse_config([29], 5.0), morse_params(1, **CU), dtype=dtype)


def cu_crystal(a: float = A_CU, rep=2, rattle: float = 0.0, seed: int = 0) -> Atoms:
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(rep)
    if rattle:
        atoms.rattle(rattle, seed=seed)
    return atoms


#: every test run is chunked into the same compiled program of 10 records x 10 steps
CHUNK_STEPS = 100


def ensemble(kind: str):
    """The standard ensembles of the tests (temperatures etc. are runtime: use ``.with_``)."""
    from jaxuft import md

    return {
        "nve": md.NVE(2.0),
        "langevin": md.Langevin(2.0, 300.0, friction=0.02),
        "nh": md.NoseHoover(2.0, 300.0, tau=50.0),
        "npt": md.NPT(2.0, 300.0, 1.0, tau_t=50.0, tau_p=200.0),
    }[kind]


def simulation(kind: str, **kw):
    from jaxuft import md

    kw.setdefault("chunk_steps", CHUNK_STEPS)
    return md.Simulation(morse_cu(), ensemble(kind), **kw)


def npt_starts():
    """Two starting densities (one compressed, one expanded) of the same 32 atoms."""
    return [cu_crystal(a=3.74, rattle=0.03, seed=1), cu_crystal(a=3.94, rattle=0.03, seed=2)]


def block_stats(x, n_blocks: int = 8):
    """Mean and block-averaged standard error of a series (replicas are averaged first)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:  # (R, F): independent replicas -> treat each as its own blocks
        blocks = [b for r in x for b in np.array_split(r, n_blocks)]
    else:
        blocks = np.array_split(x, n_blocks)
    means = np.array([b.mean() for b in blocks])
    return float(means.mean()), float(means.std(ddof=1) / np.sqrt(len(means)))


class DeviceCalculator(AseCalculator):
    """An ASE calculator for the same Potential, with the on-device neighbour list.

    jaxuft.Calculator builds its neighbour list on the host with ASE (tens of ms for a
    small periodic cell); for long ASE reference runs this one is ~20x faster.  It is
    checked against jaxuft.Calculator in test_device_calculator_matches_jaxuft_calculator.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, potential: Potential, n_atoms: int, capacity: int = 4000, images=(1, 1, 1), **kw):
        super().__init__(**kw)
        self.potential = potential
        spec = nl.NeighborSpec(potential.cutoff, 0.0001, capacity, capacity, tuple(images), (True, True, True))
        field = ForceField(potential, spec)
        self.spec = spec

        def evaluate(params, species, positions, cell):
            nbrs = nl.build(positions, cell, spec)
            out = field(params, species, positions, cell, nbrs)
            return out, nbrs.count, nbrs.images_needed

        self._fn = jax.jit(evaluate)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        species = jnp.asarray(self.potential.species_map(self.atoms.numbers))
        dt = self.potential.dtype
        out, count, images = self._fn(
            self.potential.params, species, jnp.asarray(self.atoms.positions, dt), jnp.asarray(self.atoms.cell[:], dt)
        )
        assert int(count) <= self.spec.capacity and np.all(np.asarray(images) <= self.spec.images)
        s = np.asarray(out.stress, dtype=np.float64)
        self.results = {
            "energy": float(out.energy),
            "free_energy": float(out.energy),
            "forces": np.asarray(out.forces, dtype=np.float64),
            "stress": np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]),
        }


# --------------------------------------------------------------------------- neighbour-list tests


def _cells():
    prim = bulk("Cu", "fcc", a=A_CU)  # 1 atom, triclinic, far smaller than the cutoff
    prim2 = prim.repeat((2, 1, 1))
    prim2.rattle(0.05, seed=3)
    tric = cu_crystal(rep=(2, 1, 1))
    tric.set_cell(tric.cell[:] + np.array([[0, 0, 0], [1.2, 0, 0], [0.5, -0.7, 0]]), scale_atoms=True)
    tric.rattle(0.05, seed=4)
    return {"primitive": prim, "primitive-x2": prim2, "sheared": tric}


@pytest.mark.parametrize("name", ["primitive", "primitive-x2", "sheared"])
def test_device_neighbour_list_matches_host_graph(name):
    """Multi-image, triclinic, cells smaller than the cutoff: same energy/forces/stress as the
    Potential on ASE's neighbour list."""
    atoms = _cells()[name]
    pot = morse_cu()
    calc = DeviceCalculator(pot, len(atoms), capacity=4000, images=(3, 3, 3))
    atoms.calc = calc
    ref = pot.predict(atoms)
    np.testing.assert_allclose(atoms.get_potential_energy(), ref["energy"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), ref["forces"], atol=1e-9)
    np.testing.assert_allclose(atoms.get_stress(), ref["stress"], atol=1e-9)


def test_neighbour_list_pairs_and_images():
    """The device list holds exactly ASE's pairs within cutoff+skin (with images), and reports the images it needs."""
    from jaxuft.neighbors import neighbor_list

    atoms = _cells()["sheared"]
    spec = nl.NeighborSpec(5.0, 0.5, 3000, 3000, (3, 3, 3), (True, True, True))
    build = jax.jit(nl.build, static_argnums=2)
    nbrs = build(jnp.asarray(atoms.positions), jnp.asarray(atoms.cell[:]), spec)
    c = int(nbrs.count)
    got = {(int(i), int(j), *map(int, s)) for i, j, s in zip(nbrs.senders[:c], nbrs.receivers[:c], nbrs.shifts[:c])}
    i, j, S, _ = neighbor_list(atoms, 5.5)
    want = {(int(a), int(b), *map(int, s)) for a, b, s in zip(i, j, S)}
    assert got == want
    assert tuple(int(x) for x in nbrs.images_needed) == nl.images_for(atoms.cell[:], (True,) * 3, 5.5)
    # too few images or too small a capacity is reported, never silent
    small = spec._replace(capacity=10, images=(1, 1, 1))
    nb2 = build(jnp.asarray(atoms.positions), jnp.asarray(atoms.cell[:]), small)
    assert int(nb2.count) == c and bool(nl.overflowed(nb2, small))


def test_rebuild_criterion_tracks_cell_changes():
    atoms = cu_crystal()
    spec = nl.NeighborSpec(5.0, 0.5, 3000, 3000, (1, 1, 1), (True, True, True))
    x, c = jnp.asarray(atoms.positions), jnp.asarray(atoms.cell[:])
    nbrs = jax.jit(nl.build, static_argnums=2)(x, c, spec)
    needs = jax.jit(nl.needs_rebuild, static_argnums=3)
    assert not bool(needs(x, c, nbrs, spec))
    assert not bool(needs(x.at[0, 0].add(0.2), c, nbrs, spec))
    assert bool(needs(x.at[0, 0].add(0.3), c, nbrs, spec))
    # a uniform expansion moves atoms with the cell: only the strain term counts
    assert not bool(needs(x * 1.02, c * 1.02, nbrs, spec))
    assert bool(needs(x * 1.2, c * 1.2, nbrs, spec))


def test_device_calculator_matches_jaxuft_calculator():
    from jaxuft import Calculator

    atoms = cu_crystal(rattle=0.05, seed=1)
    pot = morse_cu()
    a1, a2 = atoms.copy(), atoms.copy()
    a1.calc, a2.calc = Calculator(pot), DeviceCalculator(pot, len(atoms))
    np.testing.assert_allclose(a1.get_potential_energy(), a2.get_potential_energy(), atol=1e-10)
    np.testing.assert_allclose(a1.get_forces(), a2.get_forces(), atol=1e-10)
    np.testing.assert_allclose(a1.get_stress(), a2.get_stress(), atol=1e-10)
