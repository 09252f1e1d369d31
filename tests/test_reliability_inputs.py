"""Inputs (issue 11.3): impossible atomic numbers and overlapping atoms are refused; results do not
depend on where a structure sits (float32 at 10⁶ Å equals float64 at the origin)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from test_sevennet import SMALL, _random_params

import jaxuft
from jaxuft.errors import StructureError
from jaxuft.models.pair import morse_config, morse_params
from jaxuft.potential import Potential


@pytest.fixture(scope="module")
def morse():
    zs = [1, 6, 8, 11, 17]
    return {d: Potential(morse_config(zs), morse_params(len(zs)), d) for d in ("float32", "float64")}


@pytest.mark.parametrize("z", [-1, 0, 119, 200])
def test_atomic_numbers_outside_1_118_are_refused(morse, z):
    a = molecule("CH4")
    a.numbers[2] = z
    with pytest.raises(StructureError, match=rf"atom 2 has atomic number {z}, outside 1-118"):
        morse["float64"].predict(a)
    with pytest.raises(StructureError, match="outside 1-118"):
        morse["float64"].species_map(a.numbers)  # the map itself never wraps -1 round to the last element


def test_close_atoms_refused_by_default_and_limit_settable(morse):
    pot = morse["float64"]
    h2 = Atoms("H2", positions=[[0, 0, 0], [0.1, 0, 0]])
    with pytest.raises(StructureError, match=r"atoms 0 and 1 are 0.1 Å apart, closer than the minimum distance 0.5 Å"):
        pot.predict(h2)
    h2.positions[1, 0] = 0.3
    with pytest.raises(StructureError, match="minimum distance 0.5 Å"):
        pot.predict(h2)
    assert np.isfinite(pot.predict(h2, min_distance=0.2)["energy"])
    with pytest.raises(StructureError, match="minimum distance 0.4 Å"):
        pot.predict(h2, min_distance=0.4)
    calc = jaxuft.Calculator(pot, min_distance=0.2)
    h2.calc = calc
    assert np.isfinite(h2.get_potential_energy())
    h2.calc = jaxuft.Calculator(pot)
    with pytest.raises(StructureError, match="0.3 Å apart"):
        h2.get_potential_energy()
    # periodic images count too: one atom in a 0.3 Å cell overlaps itself
    tiny = Atoms("H", positions=[[0, 0, 0]], cell=[0.3, 5, 5], pbc=True)
    with pytest.raises(StructureError, match="0.3 Å apart"):
        pot.predict(tiny)


def _far(atoms, offset):
    a = atoms.copy()
    a.translate(offset)
    return a


def _compare(p32, p64, atoms, offset, tol_e, tol_f):
    ref = p64.predict(atoms)
    got = p32.predict(_far(atoms, offset))
    n = len(atoms)
    assert abs(got["energy"] - ref["energy"]) <= tol_e * n, (got["energy"], ref["energy"])
    assert np.abs(got["forces"] - ref["forces"]).max() <= tol_f
    if "stress" in ref:
        assert np.abs(got["stress"] - ref["stress"]).max() <= tol_f


@pytest.mark.parametrize("offset", [[1e6, -2e6, 3e6], [5e6, 5e6, 5e6], [2e3, 0, 0]])
def test_float32_far_from_origin_equals_float64_at_origin_morse(morse, offset):
    m = molecule("CH4")
    m.rattle(0.05, seed=1)
    _compare(morse["float32"], morse["float64"], m, offset, 1e-6, 1e-5)
    b = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    b.rattle(0.05, seed=2)
    _compare(morse["float32"], morse["float64"], b, offset, 1e-6, 1e-5)


@pytest.fixture(scope="module")
def nequip():
    params = _random_params(SMALL)
    return {d: Potential(SMALL, params, d) for d in ("float32", "float64")}


def test_float32_far_from_origin_equals_float64_at_origin_equivariant(nequip):
    """The probe's case on an equivariant model (the SevenNet architecture, random weights): CH4 at ~10⁶ Å."""
    m = molecule("CH4")
    m.rattle(0.05, seed=3)
    ref = nequip["float64"].predict(m)
    scale = max(1.0, abs(ref["energy"]) / len(m))
    _compare(nequip["float32"], nequip["float64"], m, [1e6, 2e6, -3e6], 1e-5 * scale, 1e-4 * max(1.0, np.abs(ref["forces"]).max()))


def test_wrapping_keeps_every_edge(morse):
    """Atoms outside the cell (or far across it) give the same graph as the wrapped structure."""
    from jaxuft.structures import canonical_positions

    b = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    b.rattle(0.05, seed=5)
    out = b.copy()
    out.positions[::2] += np.array([3, -2, 7]) @ b.cell  # whole lattice vectors: the same crystal
    pos = canonical_positions(out)
    frac = np.linalg.solve(b.cell.T, pos.T).T
    assert (frac >= 0).all() and (frac < 1).all()
    p = morse["float64"]
    r1, r2 = p.predict(b), p.predict(out)
    assert abs(r1["energy"] - r2["energy"]) < 1e-10
    np.testing.assert_allclose(r1["forces"], r2["forces"], atol=1e-10)
    np.testing.assert_allclose(r1["stress"], r2["stress"], atol=1e-10)
    # mixed pbc: a slab periodic in x, y only, centred along z
    slab = b.copy()
    slab.pbc = [True, True, False]
    slab.translate([0, 0, 1e5])
    z = canonical_positions(slab)[:, 2]
    assert abs(z.max() + z.min()) < 1e-6
    r3 = p.predict(slab)
    ref = b.copy()
    ref.pbc = [True, True, False]
    np.testing.assert_allclose(r3["forces"], p.predict(ref)["forces"], atol=1e-8)
