"""jaxuft.analysis on small slices of the paper data and synthetic frames, against independent numpy/ASE values."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from jaxuft.analysis import (bond_formation, cutoff_scan, density_series, energy_residuals, force_residuals,
                             frame_residuals, mass_density, match_rows, rdf, read_frames, read_thermo, series_stats,
                             thermo_energy_residuals)


def _thermo_columns(path):
    """Independent reader: numpy's loadtxt with the header line."""
    with open(path) as f:
        names = f.readline().split()
    data = np.loadtxt(path, skiprows=1)
    return {n: data[:, k] for k, n in enumerate(names)}


def test_read_thermo_table_and_lammps_log(tmp_path, paper_data):
    path = paper_data / "chclca" / "thermo" / "Periodic-FT1.tsv"
    t = read_thermo(path)
    ref = _thermo_columns(path)
    assert list(t) == list(ref)
    for k in ref:
        np.testing.assert_array_equal(t[k], ref[k])
    log = tmp_path / "log.lammps"
    log.write_text("LAMMPS (2 Aug 2023)\nunits metal\n  Step Temp PotEng\n 0 300 -1.5\n 10 290 -1.4\nLoop time of 1.0\n"
                   "run 20\n  Step Temp PotEng\n 10 290 -1.4\n 20 280 -1.3\nLoop time of 1.0\n")
    t = read_thermo(log)
    np.testing.assert_array_equal(t["Step"], [0, 10, 20])
    np.testing.assert_array_equal(t["PotEng"], [-1.5, -1.4, -1.3])
    (tmp_path / "empty.txt").write_text("nothing here\n")
    with pytest.raises(ValueError, match="no thermo table"):
        read_thermo(tmp_path / "empty.txt")


def test_thermo_residuals_on_an_eval_run(paper_data):
    d = paper_data / "chclca"
    frames = read_frames(d / "eval" / "FT5.xyz")[:4]
    thermo = read_thermo(d / "thermo" / "Periodic-FT5.tsv")
    res = thermo_energy_residuals(frames, thermo)
    # independent: PotEng at step = 1000 * thermo_row, minus the DFT energy, per atom
    ref = _thermo_columns(d / "thermo" / "Periodic-FT5.tsv")
    step_to_e = dict(zip(ref["Step"].astype(int), ref["PotEng"]))
    r = np.array([(step_to_e[1000 * a.info["thermo_row"]] - a.get_potential_energy()) / len(a) * 1e3 for a in frames])
    np.testing.assert_allclose(res["residual_meV_per_atom"], r, rtol=1e-12)
    assert res["mean"] == pytest.approx(r.mean()) and res["rmse"] == pytest.approx(np.sqrt(np.mean(r * r)))
    # matching by step gives the same rows
    for a in frames:
        a.info["step"] = 1000 * a.info.pop("thermo_row")
    np.testing.assert_array_equal(match_rows(frames, thermo, "step"), res["rows"])
    frames[0].info["step"] = 12345
    with pytest.raises(ValueError, match="step 12345 is not in"):
        match_rows(frames, thermo)


def test_energy_and_force_residuals():
    res = energy_residuals([-10.0, -9.0], [-10.2, -9.0], [2, 2])
    np.testing.assert_allclose(res["residual_meV_per_atom"], [100.0, 0.0])
    assert res["rmse"] == pytest.approx(np.sqrt(0.5) * 100.0) and res["mean"] == pytest.approx(50.0)
    rng = np.random.default_rng(0)
    fm, fr = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    z = np.array([1, 1, 8, 8, 8])
    out = force_residuals([fm], [fr], [z])
    assert out["rmse"] == pytest.approx(np.sqrt(np.mean((fm - fr) ** 2)))
    assert out["per_element"]["O"]["rmse"] == pytest.approx(np.sqrt(np.mean((fm[2:] - fr[2:]) ** 2)))
    # whole frames: energies and forces from calculator results
    a = Atoms("H2O3", positions=rng.normal(size=(5, 3)) * 3)
    b = a.copy()
    a.calc = SinglePointCalculator(a, energy=-1.0, forces=fm)
    b.calc = SinglePointCalculator(b, energy=-1.5, forces=fr)
    fres = frame_residuals([a], [b])
    assert fres["energy"]["mean"] == pytest.approx(100.0) and fres["forces"]["rmse"] == pytest.approx(out["rmse"])
    with pytest.raises(ValueError, match="model energies"):
        energy_residuals([1.0], [1.0, 2.0], 3)


def _min_image_pairs(atoms, za, zb):
    """Independent minimum-image H–Cl distances for an orthorhombic cell (numpy)."""
    L = np.diag(atoms.cell.array)
    pos = atoms.positions
    ia, ib = np.where(atoms.numbers == za)[0], np.where(atoms.numbers == zb)[0]
    d = pos[ia][:, None, :] - pos[ib][None, :, :]
    d -= L * np.round(d / L)
    return np.linalg.norm(d, axis=-1)


def test_hcl_bonds_match_minimum_image(paper_data):
    frames = read_frames(paper_data / "chclca" / "long" / "N-50.xyz", "::6")
    assert np.allclose(frames[0].cell.array, np.diag(np.diag(frames[0].cell.array)))  # orthorhombic
    res = bond_formation(frames, "H", "Cl", cutoff=1.6)
    dists = [_min_image_pairs(a, 1, 17) for a in frames]
    np.testing.assert_allclose(res["min_distance"], [d.min() for d in dists], rtol=1e-12)
    np.testing.assert_array_equal(res["n_pairs"], [int((d < 1.6).sum()) for d in dists])
    assert res["n_frames_with_bond"] == sum(int((d < 1.6).any()) for d in dists)
    assert res["fraction"] == pytest.approx(res["n_frames_with_bond"] / len(frames))
    scan = cutoff_scan(res["min_distance"], [1.0, 1.6, 2.5])
    assert scan[1.0] == 0 and scan[1.6] == res["n_frames_with_bond"] and scan[2.5] == len(frames)


def test_density_against_thermo_log(paper_data):
    d = paper_data / "chclca"
    frames = read_frames(d / "long" / "FT5.xyz")[:5]
    thermo = read_thermo(d / "thermo" / "long-Periodic.tsv")
    rows = match_rows(frames, thermo)
    series = density_series(frames)
    # the snapshot's cell is the thermo row's volume; LAMMPS's density uses the same masses
    np.testing.assert_allclose(series["volume"], thermo["Volume"][rows], rtol=1e-5)
    np.testing.assert_allclose(series["density"], thermo["Density"][rows], rtol=1e-4)
    masses_g = frames[0].get_masses().sum() * 1.66053906660e-24
    assert mass_density(frames[0]) == pytest.approx(masses_g / (frames[0].get_volume() * 1e-24), rel=1e-7)  # CODATA amu versions differ at 1e-8
    st = series_stats(thermo["Density"][:11], time=np.arange(11) * 0.5, tail_fraction=0.5)
    assert st["mean"] == pytest.approx(thermo["Density"][:11].mean()) and st["tail_mean"] == pytest.approx(thermo["Density"][5:11].mean())


def _rdf_numpy(frames, za, zb, r_max, n_bins):
    edges = np.linspace(0, r_max, n_bins + 1)
    shell = 4 / 3 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    g = np.zeros(n_bins)
    for a in frames:
        d = _min_image_pairs(a, za, zb)
        if za == zb:
            d = d[~np.eye(len(d), dtype=bool)]
        na, nb = int((a.numbers == za).sum()), int((a.numbers == zb).sum()) - (za == zb)
        g += a.get_volume() / (na * nb) * np.histogram(d.ravel(), edges)[0] / shell
    return g / len(frames)


def test_rdf_against_numpy(paper_data):
    frames = read_frames(paper_data / "chclca" / "long" / "FT5.xyz", "::20")
    for (a, b, za, zb) in (("H", "Cl", 1, 17), ("O", "O", 8, 8)):
        res = rdf(frames, a, b, r_max=6.0, n_bins=60)  # 6 Å < half the ~13.6 Å box: minimum image is exact
        np.testing.assert_allclose(res["g"], _rdf_numpy(frames, za, zb, 6.0, 60), rtol=1e-10, atol=1e-12)
    # an ideal gas has g ~ 1
    rng = np.random.default_rng(1)
    gas = [Atoms("Ar400", positions=rng.uniform(0, 20, size=(400, 3)), cell=[20] * 3, pbc=True) for _ in range(3)]
    g = rdf(gas, "Ar", "Ar", r_max=8.0, n_bins=8)["g"]
    assert np.all(np.abs(g[2:] - 1.0) < 0.1)


def test_read_frames_from_a_jaxuft_trajectory_npz(tmp_path):
    from jaxuft.md.trajectory import Trajectory

    R, F, N = 2, 3, 4
    rng = np.random.default_rng(0)
    data = {"positions": rng.uniform(0, 5, (R, F, N, 3)), "cell": np.broadcast_to(np.eye(3) * 5.0, (R, F, 3, 3)).copy(),
            "forces": rng.normal(size=(R, F, N, 3)), "energy": rng.normal(size=(R, F)),
            "kinetic_energy": np.ones((R, F)), "temperature": np.full((R, F), 300.0), "stress": np.zeros((R, F, 3, 3)),
            "pressure": np.zeros((R, F)), "step": np.tile(np.arange(F) * 100, (R, 1)), "status": np.zeros((R, F), int),
            "time": np.tile(np.arange(F) * 50.0, (R, 1))}
    traj = Trajectory(data=data, observables={}, valid=np.ones((R, F), bool), numbers=np.array([1, 1, 8, 17]),
                      masses=np.array([1.008, 1.008, 16.0, 35.45]), pbc=np.array([True] * 3), timestep_fs=0.5)
    path = traj.save_npz(tmp_path / "trajectory.npz")
    frames = read_frames(path)
    assert len(frames) == R * F and [a.info["step"] for a in frames[:F]] == [0, 100, 200]
    np.testing.assert_allclose(frames[F + 1].positions, data["positions"][1, 1], atol=1e-5)  # stored as float32
    assert len(read_frames(path, replica=1)) == F
    # steps match thermo rows by the Step column
    thermo = {"Step": np.arange(0, 1000, 100.0), "PotEng": np.zeros(10)}
    np.testing.assert_array_equal(match_rows(frames[:F], thermo), [0, 1, 2])
    d = density_series(frames[:F])
    assert d["time_unit"] == "ps" and np.allclose(d["time"], [0.0, 0.05, 0.1])


def test_nearest_partner_counts_a_proton_on_cl():
    from jaxuft.analysis.bonds import nearest_partner

    # H between O (at 0) and Cl (at 3.0 Å): nearer to Cl in the first frame, to O in the second
    frames = [Atoms("OHCl", positions=[[0, 0, 0], [x, 0, 0], [3.0, 0, 0]], cell=[12] * 3, pbc=True) for x in (1.8, 1.0)]
    res = nearest_partner(frames, "H", "Cl")
    np.testing.assert_array_equal(res["n_atoms"], [1, 0])
    assert res["n_frames_with"] == 1 and res["fraction"] == 0.5
    b = bond_formation(frames, "H", "Cl", cutoff=1.6)
    np.testing.assert_allclose(b["min_distance"], [1.2, 2.0])
    np.testing.assert_array_equal(b["has_bond"], [True, False])
