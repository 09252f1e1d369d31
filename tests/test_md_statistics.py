"""Sampling statistics against ASE on the same potential: Langevin temperature and energy,
NPT density (and that NPT reaches the same stable density from two sides)."""

from __future__ import annotations

import numpy as np
from ase import units
from ase.md.langevin import Langevin as AseLangevin
from ase.md.nose_hoover_chain import IsotropicMTKNPT
from test_md_common import A_CU, DeviceCalculator, block_stats, cu_crystal, morse_cu, npt_starts, simulation


def _ase_run(atoms, dyn, n_samples, every):
    t, e, v = [], [], []
    for _ in range(n_samples):
        dyn.run(every)
        t.append(atoms.get_temperature())
        e.append(atoms.get_potential_energy() / len(atoms))
        v.append(atoms.get_volume() / len(atoms))
    return np.array(t), np.array(e), np.array(v)


def _thermalised(t_k, seed, a=A_CU):
    atoms = cu_crystal(a=a)
    rng = np.random.default_rng(seed)
    m = atoms.get_masses()[:, None]
    p = rng.standard_normal((len(atoms), 3)) * np.sqrt(m * units.kB * t_k)
    atoms.set_momenta(p - m * p.sum(0) / m.sum())
    return atoms


def _agree(ours, theirs, rel_tol):
    (m1, s1), (m2, s2) = ours, theirs
    diff = abs(m1 - m2)
    assert diff < max(4.0 * np.hypot(s1, s2), 1e-12), (ours, theirs)
    assert diff < rel_tol * abs(m2), (ours, theirs)


def test_langevin_samples_like_ase_langevin():
    pot = morse_cu()
    sim = simulation("langevin")  # 300 K, 0.02 /fs, 2 fs
    state = sim.init(cu_crystal(), replicas=2, temperature=300.0, seed=11)
    state, traj = sim.run(state, n_steps=3000, record_every=10)
    ours_t = block_stats(traj.temperature[:, 30:])
    ours_e = block_stats(traj.energy[:, 30:] / 32)

    atoms = _thermalised(300.0, seed=12)
    atoms.calc = DeviceCalculator(pot, len(atoms))
    dyn = AseLangevin(atoms, 2.0 * units.fs, temperature_K=300.0, friction=0.02 / units.fs, fixcm=False,
                      rng=np.random.default_rng(13))
    t, e, _ = _ase_run(atoms, dyn, 200, 10)
    ase_t, ase_e = block_stats(t[20:]), block_stats(e[20:])

    assert abs(ours_t[0] - 300.0) < 0.05 * 300 and abs(ase_t[0] - 300.0) < 0.05 * 300
    _agree(ours_t, ase_t, rel_tol=0.05)
    _agree(ours_e, ase_e, rel_tol=0.01)


def test_npt_reaches_stable_density_matching_ase_mtk():
    pot = morse_cu()
    sim = simulation("npt")  # 300 K, 1 bar, tau_t 50 fs, tau_p 200 fs, 2 fs
    starts = npt_starts()
    assert starts[0].get_volume() / 32 < 13.2 and starts[1].get_volume() / 32 > 15.0  # compressed / expanded
    state = sim.init(starts, seed=5, temperature=300.0)
    state, traj = sim.run(state, n_steps=3000, record_every=10)
    vol = np.abs(np.linalg.det(traj.cell)) / 32  # (R, F) Å^3/atom
    prod = vol[:, 100:]
    # both replicas settle on the same density, and it is stable (second half ~ first half of production)
    _agree(block_stats(prod[0]), block_stats(prod[1]), rel_tol=0.01)
    half = prod.shape[1] // 2
    _agree(block_stats(prod[:, :half]), block_stats(prod[:, half:]), rel_tol=0.01)
    assert abs(block_stats(traj.temperature[:, 100:])[0] - 300.0) < 15.0
    # mean pressure is the target within its (large) fluctuations
    p_mean, p_se = block_stats(traj.pressure[:, 100:])
    assert abs(p_mean - 1.0) < 4 * p_se + 200.0, (p_mean, p_se)

    v_eq = block_stats(prod)[0]
    atoms = _thermalised(300.0, seed=6, a=(4 * v_eq) ** (1 / 3))
    atoms.calc = DeviceCalculator(pot, len(atoms))
    dyn = IsotropicMTKNPT(atoms, 2.0 * units.fs, temperature_K=300.0, pressure_au=1.0 * units.bar,
                          tdamp=50.0 * units.fs, pdamp=200.0 * units.fs)
    _, _, v = _ase_run(atoms, dyn, 250, 10)
    _agree(block_stats(prod), block_stats(v[30:]), rel_tol=0.006)
