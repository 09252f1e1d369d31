"""Physical properties of the converted MACE model and the Potential seam.

Symmetries, forces = -dE/dR and stress = (1/V) dE/dε by finite differences, the
ASE calculator reusing compiled code, and clear errors for bad input.  Uses a
small random mace-torch model (``tiny`` preset, built in the reference venv).
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from scipy.spatial.transform import Rotation

from conftest import molecule_ethanol

pytestmark = pytest.mark.reference


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import mace_reference as mr

    mr.skip_without_mace()
    return mr.build_model("tiny", seed=1, dtype="float64")


@pytest.fixture(scope="module")
def pot(tiny_model, tmp_path_factory):
    import jaxuft

    dest = jaxuft.convert(tiny_model, tmp_path_factory.mktemp("tiny") / "model")
    return jaxuft.load(dest, dtype="float64")


def _structure(pot, n=12, seed=0, cell=7.0):
    rng = np.random.default_rng(seed)
    zs = rng.choice(pot.atomic_numbers, size=n)
    # a jittered grid keeps atoms apart
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    pos = (grid + 0.5) * cell / 3 + rng.normal(0, 0.15, (n, 3))
    cell_m = np.diag([cell] * 3) + rng.normal(0, 0.3, (3, 3))
    return Atoms(numbers=zs, positions=pos, cell=cell_m, pbc=True)


def test_rotation_translation_permutation(pot):
    a = _structure(pot)
    ref = pot.predict(a)
    R = Rotation.random(random_state=3).as_matrix()
    b = a.copy()
    b.set_cell(a.cell @ R.T, scale_atoms=False)
    b.positions = a.positions @ R.T + np.array([0.3, -1.2, 2.0])
    rot = pot.predict(b)
    assert abs(rot["energy"] - ref["energy"]) < 1e-9 * max(1, abs(ref["energy"]))
    np.testing.assert_allclose(rot["forces"], ref["forces"] @ R.T, atol=1e-9)
    perm = np.random.default_rng(4).permutation(len(a))
    c = a[perm]
    pr = pot.predict(c)
    assert abs(pr["energy"] - ref["energy"]) < 1e-9 * max(1, abs(ref["energy"]))
    np.testing.assert_allclose(pr["forces"], ref["forces"][perm], atol=1e-9)
    np.testing.assert_allclose(pot.descriptors(c), pot.descriptors(a)[perm], atol=1e-9)


def test_forces_and_stress_are_derivatives(pot):
    a = _structure(pot, seed=1)
    res = pot.predict(a)
    h = 1e-5
    for i, k in [(0, 0), (3, 1), (7, 2)]:
        p, m = a.copy(), a.copy()
        p.positions[i, k] += h
        m.positions[i, k] -= h
        fd = -(pot.predict(p)["energy"] - pot.predict(m)["energy"]) / (2 * h)
        assert abs(fd - res["forces"][i, k]) < 1e-6
    # stress: symmetric strain derivative over the volume (ASE convention)
    vol = a.get_volume()
    for (i, j), voigt in [((0, 0), 0), ((1, 2), 3)]:
        eps = np.zeros((3, 3))
        eps[i, j] = eps[j, i] = h if i != j else h
        def strained(e):
            b = a.copy()
            b.set_cell(a.cell @ (np.eye(3) + e), scale_atoms=True)
            return pot.predict(b)["energy"]
        fd = (strained(eps) - strained(-eps)) / (2 * h) / vol
        if i != j:
            fd /= 2  # a symmetric shear moves two tensor components
        assert abs(fd - res["stress"][voigt]) < 1e-6


def test_small_cell_equals_supercell(pot):
    """A cell smaller than twice the cutoff is handled by periodic images: E(supercell) = 8 E(cell)."""
    if pot.cutoff <= 0:
        pytest.skip("no cutoff")
    a = _structure(pot, n=4, seed=5, cell=3.2)
    e1 = pot.predict(a)["energy"]
    e8 = pot.predict(a * (2, 2, 2))["energy"]
    assert abs(e8 - 8 * e1) < 1e-8 * abs(e8)


def test_calculator_reuses_compiled_code(pot):
    """A trajectory through one calculator compiles once: the padded capacity is sticky."""
    import jaxuft

    calc = jaxuft.Calculator(pot)
    fn = pot.compiled("efs")
    a = _structure(pot, seed=7)
    a.calc = calc
    a.get_potential_energy()
    before = fn._cache_size()
    rng = np.random.default_rng(0)
    for s in range(6):  # atoms move (neighbour counts change), same calculator
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        a.get_forces()
        a.get_stress()
    assert fn._cache_size() == before


def test_molecule_without_cell(pot):
    m = Atoms(numbers=[pot.atomic_numbers[0]] * 3, positions=[[0, 0, 0], [1.1, 0, 0], [0, 1.3, 0.2]])
    res = pot.predict(m)
    assert "stress" not in res and np.isfinite(res["energy"])
    np.testing.assert_allclose(res["forces"].sum(axis=0), 0, atol=1e-10)


def test_unknown_element_is_named(pot):
    import jaxuft

    a = _structure(pot, n=4)
    bad = sorted(set(range(1, 90)) - set(pot.atomic_numbers))[0]
    a.numbers[1] = bad
    from ase.data import chemical_symbols

    with pytest.raises(jaxuft.UnknownElementError, match=chemical_symbols[bad]):
        pot.predict(a)


def test_overlapping_atoms_and_nan_positions(pot):
    import jaxuft

    a = _structure(pot, n=4)
    a.positions[2] = a.positions[1] + 1e-3
    with pytest.raises(jaxuft.StructureError, match="apart"):
        pot.predict(a)
    b = _structure(pot, n=4)
    b.positions[0, 0] = np.nan
    with pytest.raises(jaxuft.StructureError, match="non-finite"):
        pot.predict(b)


def test_multihead_head_selection(tmp_path):
    """A 2-head mace-torch model: the default head is like mace-torch's, and --head picks the other."""
    import mace_reference as mr

    import jaxuft

    mr.skip_without_mace()
    model = mr.build_model("multihead", seed=0, dtype="float64")
    boxed = molecule_ethanol()
    boxed.set_cell([6.0, 6.5, 7.0])  # periodic and smaller than twice r_max
    boxed.pbc = True
    boxed.center()
    frames = [boxed, molecule_ethanol()]
    info = mr.model_info(model)
    heads = info.get("heads") or ["Default"]
    for head in heads:
        ref = mr.predict(model, frames, dtype="float64", head=head, repeats=0)
        dest = jaxuft.convert(model, tmp_path / f"mh-{head}", head=head)
        pot = jaxuft.load(dest, dtype="float64")
        out = pot.predict([f for f in frames])
        for o, r in zip(out, ref):
            assert abs(o["energy"] - r["energy"]) <= 1e-9 * abs(r["energy"])
            assert np.abs(o["forces"] - r["forces"]).max() <= 1e-7
