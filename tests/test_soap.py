"""SOAP in JAX (jaxuft.uq.SOAP) against dscribe 2.1's SOAP: same vectors to <= 1e-6 relative."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule

from jaxuft.uq import SOAP
from jaxuft.uq import soap as soap_mod
from jaxuft.uq.soap import real_solid_harmonics

from conftest import PAPER_DATA as PAPER  # honours $JAXUFT_PAPER_DATA
PAPER_FRAME = PAPER / "chclca" / "test" / "independent.xyz"

dscribe = pytest.importorskip("dscribe.descriptors", reason="dscribe (a test dependency) is needed for parity tests")


def assert_soap_close(ours, ref, rtol=1e-6):
    """Elementwise relative error <= rtol, with an absolute floor far below the features' scale."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape
    scale = np.max(np.abs(ref))
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=1e-10 * scale)
    assert np.max(np.abs(ours - ref)) <= rtol * scale


def dscribe_soap(atoms, species, r_cut, n_max, l_max, sigma, periodic):
    d = dscribe.SOAP(species=species, r_cut=r_cut, n_max=n_max, l_max=l_max, sigma=sigma, periodic=periodic)
    return d, d.create(atoms)


def random_cluster(rng, symbols, box, min_dist=0.9):
    pos = []
    while len(pos) < len(symbols):
        p = rng.uniform(0, box, size=3)
        if all(np.linalg.norm(p - q) > min_dist for q in pos):
            pos.append(p)
    return np.array(pos)


def triclinic_structure():
    rng = np.random.default_rng(3)
    cell = np.array([[4.2, 0.0, 0.0], [1.3, 3.9, 0.0], [0.7, -0.9, 4.6]])
    symbols = ["O", "H", "H", "O", "H", "H", "C", "N"]
    frac = rng.uniform(size=(len(symbols), 3))
    atoms = Atoms(symbols, scaled_positions=frac, cell=cell, pbc=True)
    d = atoms.get_all_distances(mic=True) + 10 * np.eye(len(atoms))
    assert d.min() > 0.5
    return atoms


CASES = {
    "water-molecule": (lambda: molecule("H2O"), ["H", "O"], 5.0, 3, 3, 0.5, False),
    "ethanol-lmax6": (lambda: molecule("CH3CH2OH"), ["H", "C", "O"], 4.0, 4, 6, 0.4, False),
    "nacl-small-cell": (lambda: bulk("NaCl", "rocksalt", a=5.6), ["Na", "Cl"], 5.0, 4, 4, 0.5, True),
    "triclinic-4-species": (triclinic_structure, ["H", "C", "N", "O"], 3.5, 3, 4, 0.45, True),
    "slab-pbc-TTF": (
        lambda: bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 1)) + Atoms("O", positions=[[1.8, 1.8, 5.0]]),
        ["O", "Cu"], 4.0, 3, 3, 0.5, True,
    ),
    "periodic-atoms-nonperiodic-soap": (lambda: bulk("Si", "diamond", a=5.43), ["Si"], 4.0, 4, 3, 0.5, False),
    "extra-species-absent": (lambda: molecule("CH4"), ["H", "C", "O", "Fe"], 4.0, 3, 2, 0.5, False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_dscribe(name):
    make, species, r_cut, n_max, l_max, sigma, periodic = CASES[name]
    atoms = make()
    if name == "slab-pbc-TTF":
        atoms.pbc = [True, True, False]
    d, ref = dscribe_soap(atoms, species, r_cut, n_max, l_max, sigma, periodic)
    ours = SOAP(species, r_cut, n_max, l_max, sigma, periodic)
    x = ours.compute(atoms)
    assert ours.n_features == d.get_number_of_features() == x.shape[1]
    assert_soap_close(x, ref)


def test_unwrapped_positions_periodic():
    """Atoms outside the cell: the same vectors as for the wrapped structure (and as dscribe's on it)."""
    atoms = triclinic_structure()
    shifted = atoms.copy()
    shifted.positions += np.array([2, -1, 1]) @ atoms.cell.array
    s = SOAP(["H", "C", "N", "O"], 3.5, 3, 3, 0.45, periodic=True)
    _, ref = dscribe_soap(atoms, ["H", "C", "N", "O"], 3.5, 3, 3, 0.45, True)
    assert_soap_close(s.compute(shifted), ref)


def test_feature_layout_matches_dscribe_location():
    species = ["H", "C", "O"]
    d = dscribe.SOAP(species=species, r_cut=4.0, n_max=3, l_max=2, sigma=0.5)
    s = SOAP(species, 4.0, 3, 2, 0.5)
    for a in species:
        for b in species:
            assert s.location(a, b) == d.get_location((a, b))


@pytest.mark.parametrize("name", sorted(CASES))
def test_vesin_pairs_equal_ase_pairs(name):
    """The host pair search (vesin) finds the same (centre, neighbour, displacement) triples as
    ASE's neighbour list (the fallback), self pairs included, on every parity structure."""
    make, species, r_cut, n_max, l_max, sigma, periodic = CASES[name]
    atoms = make()
    s = SOAP(species, r_cut, n_max, l_max, sigma, periodic=periodic)
    pos = atoms.get_positions()
    pbc = np.asarray(atoms.pbc, bool) & periodic
    cell = np.asarray(atoms.cell)

    def canonical(i, j, d):
        key = np.lexsort((np.round(d[:, 2], 9), np.round(d[:, 1], 9), np.round(d[:, 0], 9), j, i))
        return i[key], j[key], d[key]

    a = canonical(*soap_mod._pairs_vesin(pos, cell, pbc, s.cutoff))
    b = canonical(*soap_mod._pairs_ase(atoms, pos, cell, pbc, s.cutoff))
    assert len(a[0]) == len(b[0]) > len(atoms)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[2], b[2], atol=1e-10)


def test_species_slot_layout_holds_every_edge_once_in_its_species_range():
    """Sorted or shuffled edges: every (centre, species, displacement) lands in exactly one
    masked cell of its species' slot range, and nothing else is masked."""
    from jaxuft.uq import species_slot_layout

    rng = np.random.default_rng(3)
    n_centers, n_species = 11, 3
    centers = np.repeat(np.arange(n_centers), rng.integers(0, 9, n_centers))
    species = rng.integers(0, n_species, centers.size)
    disp = rng.normal(size=(centers.size, 3))
    key = np.lexsort((species, centers))
    for order in (key, rng.permutation(centers.size)):  # the sorted branch and the argsort branch
        first, d, mask = species_slot_layout(centers[order], species[order], disp[order], n_centers, n_species)
        assert mask.sum() == centers.size and d.shape[2] >= n_centers and np.all(np.diff(first) % 2 == 0)
        slot, ctr = np.nonzero(mask)
        spec_of_slot = np.searchsorted(first, slot, side="right") - 1
        got = np.column_stack([ctr, spec_of_slot, d[slot, :, ctr]])
        want = np.column_stack([centers, species, disp])
        np.testing.assert_array_equal(got[np.lexsort(got.T[::-1])], want[np.lexsort(want.T[::-1])])
        assert not d[~mask.astype(bool)[:, None, :].repeat(3, 1)].any()


def test_reuse_or_grow_prefers_compiled_sizes():
    from jaxuft.graph import bucket_size, reuse_or_grow

    used = set()
    assert reuse_or_grow(used, 122, 2, headroom=1.125) == bucket_size(122) == 128  # the first: a bucket
    assert reuse_or_grow(used, 100, 2, headroom=1.125) == 128  # held within 1.5x: reused
    assert reuse_or_grow(used, 130, 2, headroom=1.125) == 152  # grown: 130 * 1.125 to a multiple of 8
    assert reuse_or_grow(used, 140, 2, headroom=1.125) == 152
    assert reuse_or_grow(used, 40, 2, headroom=1.125) == 48  # 128 would waste > 1.5x: a new, smaller one
    assert used == {128, 152, 48}
    assert reuse_or_grow(set(), 197, 8) == 208 and reuse_or_grow({256}, 197, 8, max_waste=1.2) == 208


def test_frames_of_one_system_share_compiled_shapes():
    """Frames whose largest per-species neighbour count moves across several capacity buckets
    compile the coefficient stage at most twice (the slot capacity grows with headroom and is
    reused), and each frame's features equal those of a fresh SOAP on that frame alone."""
    from jaxuft.graph import bucket_size
    from jaxuft.md.compilation import CompilationCounter

    rng = np.random.default_rng(11)
    base = rng.uniform(0, 1, (48, 3))
    frames = []
    for edge in np.linspace(9.0, 8.3, 8):  # denser and denser (x1.28): the counts grow
        pos = (base + rng.normal(0, 0.01, base.shape)) * edge
        frames.append(Atoms(["H", "C", "O"] * 16, positions=pos, cell=np.eye(3) * edge, pbc=True))
    settings = dict(species=["H", "C", "O"], r_cut=3.5, n_max=3, l_max=2, sigma=0.5, periodic=True)
    soap = SOAP(**settings, max_edges_per_call=1)  # one frame per device call
    counts = []
    for a in frames:
        i, s, d = soap.edges(a)
        per = np.bincount(i * 3 + s, minlength=len(a) * 3).reshape(len(a), 3).max(axis=0)
        counts.append(int((-(-per // 2) * 2).sum()))
    assert len({bucket_size(c) for c in counts}) >= 4, counts  # a bucket per frame would compile 4 programs
    with CompilationCounter() as cc:
        got = list(soap.compute_iter(frames))
    assert sum("species_slot_coefficients" in n for n in cc.names) <= 2, (counts, cc.names)
    with CompilationCounter() as again:  # a new instance with the same settings reuses those shapes
        list(SOAP(**settings, max_edges_per_call=1).compute_iter(frames[::-1]))
    assert again.count == 0, again.names
    for a, x in zip(frames, got):
        np.testing.assert_allclose(x, SOAP(**settings).compute(a), rtol=0, atol=1e-12)


def test_batch_equals_single_frames_and_ase_fallback(monkeypatch):
    rng = np.random.default_rng(0)
    frames = []
    for n in (5, 9, 7):
        sym = rng.choice(["H", "O"], size=n).tolist()
        frames.append(Atoms(sym, positions=random_cluster(rng, sym, 5.0), cell=[5.0, 5.0, 5.0], pbc=True))
    s = SOAP(["H", "O"], 3.0, 3, 3, 0.5, periodic=True, max_edges_per_call=10_000)
    batched = s.compute(frames)
    single = np.concatenate([s.compute(a) for a in frames])
    np.testing.assert_allclose(batched, single, rtol=1e-12, atol=1e-14)
    monkeypatch.setattr(soap_mod, "_HAVE_VESIN", False)  # ASE's neighbour list: the same vectors
    np.testing.assert_allclose(s.compute(frames), batched, rtol=1e-10, atol=1e-12)


def test_real_solid_harmonics_orthonormal_and_homogeneous():
    l_max = 8
    x, w = np.polynomial.legendre.leggauss(24)
    phi = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    ct, ph = np.meshgrid(x, phi, indexing="ij")
    st = np.sqrt(1 - ct**2)
    v = np.stack([st * np.cos(ph), st * np.sin(ph), ct], axis=-1).reshape(-1, 3)
    weights = (w[:, None] * np.full(len(phi), 2 * np.pi / len(phi))[None, :]).ravel()
    Y = np.asarray(real_solid_harmonics(v, l_max))
    gram = (Y * weights[:, None]).T @ Y
    np.testing.assert_allclose(gram, np.eye((l_max + 1) ** 2), atol=1e-12)
    Y2 = np.asarray(real_solid_harmonics(2.0 * v[:5], l_max))
    ls = np.repeat(np.arange(l_max + 1), 2 * np.arange(l_max + 1) + 1)
    np.testing.assert_allclose(Y2, Y[:5] * 2.0**ls, rtol=1e-12, atol=1e-12)


def test_errors_are_clear():
    s = SOAP(["H", "O"], 4.0, 2, 2, 0.5)
    with pytest.raises(ValueError, match="not in this SOAP's species"):
        s.compute(molecule("CH4"))
    with pytest.raises(ValueError, match="r_cut"):
        SOAP(["H"], 0.8, 2, 2)
    with pytest.raises(ValueError, match="cell"):
        SOAP(["H", "O"], 4.0, 2, 2, 0.5, periodic=True).compute(Atoms("H2O", positions=np.eye(3), pbc=True))
    # a negative atomic number used to index the lookup table from the end (the last species)
    bad = Atoms(numbers=[8, 1, -1], positions=np.eye(3))
    with pytest.raises(ValueError, match="positive integers, got -1"):
        s.compute(bad)
    with pytest.raises(ValueError, match="positive integers, got 0"):
        s.species_index(np.array([1, 0]))
    with pytest.raises(ValueError, match="Z=200"):
        s.species_index(np.array([200]))


def test_float32_close():
    atoms = molecule("CH3CH2OH")
    ref = SOAP(["H", "C", "O"], 4.0, 4, 4, 0.4).compute(atoms)
    x = SOAP(["H", "C", "O"], 4.0, 4, 4, 0.4, dtype="float32").compute(atoms)
    assert x.dtype == np.float32
    assert np.max(np.abs(x - ref)) <= 1e-3 * np.max(np.abs(ref))


@pytest.mark.skipif(not PAPER_FRAME.exists(), reason=f"paper data not found at {PAPER} (see shared/paper-data/README.md)")
def test_paper_frame_matches_dscribe():
    """The 197-atom deep-eutectic frame, 7 species, the paper's settings (11172 features)."""
    import ase.io

    atoms = ase.io.read(PAPER_FRAME, 0)
    species = sorted(set(atoms.get_chemical_symbols()))
    assert len(atoms) == 197 and len(species) == 7
    _, ref = dscribe_soap(atoms, species, 5.0, 8, 6, 0.375, True)
    x = SOAP(species, 5.0, 8, 6, 0.375, periodic=True).compute(atoms)
    assert x.shape == (197, 11172)
    assert_soap_close(x, ref)


@pytest.mark.skipif(not PAPER_FRAME.exists(), reason=f"paper data not found at {PAPER} (see shared/paper-data/README.md)")
def test_bench_soap_runs_with_tiny_settings():
    """benchmarks/bench_soap.py end to end (dscribe, float32, a baseline revision, the cold row),
    printing its table without appending to RESULTS.md."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / "bench_soap.py"), "--data", str(PAPER), "--repeats", "1",
         "--batch-frames", "2", "--cold-frames", "2", "--baseline-commit", "HEAD", "--no-append"],
        capture_output=True, text=True, timeout=600, cwd=repo,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ")]
    assert any(r.startswith("| SOAP, 1 frame") for r in rows), res.stdout[-2000:]
    assert any("cold: jaxuft at HEAD" in r for r in rows) and any("cold: jaxuft, a fresh SOAP over 2" in r for r in rows)
