"""Ensemble statistics: integrated autocorrelation time and error bars against AR(1) series with known answers,
and the statistics/plot of an MD trajectory."""

from __future__ import annotations

import numpy as np
import pytest

from jaxuft.analysis.ensemble import (
    autocorrelation, blocking_error, integrated_time, observable_stats, plot_statistics, trajectory_statistics,
)


def ar1(phi: float, replicas: int, frames: int, seed: int) -> np.ndarray:
    """x_t = phi x_{t-1} + e_t, started in equilibrium (var 1/(1-phi^2))."""
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((replicas, frames))
    x = np.empty((replicas, frames))
    x[:, 0] = e[:, 0] / np.sqrt(1 - phi * phi)
    for t in range(1, frames):
        x[:, t] = phi * x[:, t - 1] + e[:, t]
    return x


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9])
def test_integrated_time_of_ar1(phi):
    x = ar1(phi, 4, 40_000, seed=int(phi * 10))
    tau_exact = (1 + phi) / (1 - phi)  # 1 + 2 sum phi^k
    tau = integrated_time(x)
    assert abs(tau - tau_exact) < 0.08 * tau_exact + 0.05, (tau, tau_exact)
    rho = autocorrelation(x)
    assert rho[0] == pytest.approx(1.0)
    assert abs(rho[1] - phi) < 0.02


def test_error_bars_of_ar1_match_the_exact_standard_error():
    phi, r, f = 0.9, 4, 40_000
    x = ar1(phi, r, f, seed=3)
    exact = np.sqrt(1 / (1 - phi**2) * (1 + phi) / (1 - phi) / (r * f))  # sqrt(var tau / n)
    s = observable_stats(x, dt=2.0)
    assert abs(s["sem"] - exact) < 0.1 * exact
    assert abs(s["sem_blocking"] - exact) < 0.15 * exact
    assert s["sem_naive"] < 0.3 * exact  # ignoring correlation underestimates by sqrt(tau) ~ 4.4
    assert s["tau_time"] == pytest.approx(2.0 * s["tau_frames"])
    assert s["n_effective"] == pytest.approx(r * f / s["tau_frames"])


def test_error_bars_cover_the_true_mean_at_the_stated_rate():
    """Across 200 independent short ensembles, |mean - 0| < 2 sem in about 95 % of them."""
    phi = 0.8
    x = ar1(phi, 200 * 2, 2000, seed=7).reshape(200, 2, 2000)
    z = np.array([observable_stats(e)["mean"] / observable_stats(e)["sem"] for e in x])
    covered = np.mean(np.abs(z) < 2.0)
    assert 0.88 < covered < 0.99, covered
    assert blocking_error(x[0]) > 0


def test_bad_series_are_refused():
    with pytest.raises(ValueError, match="at least 2 frames"):
        observable_stats(np.ones((3, 1)))
    with pytest.raises(ValueError, match="non-finite"):
        observable_stats(np.array([1.0, np.nan, 2.0]))


def _crystal_trajectory(replicas=2, frames=40, seed=0):
    """A Trajectory of 32 Cu atoms vibrating around fcc sites (no MD needed: the statistics only read arrays)."""
    from ase.build import bulk

    from jaxuft.md.trajectory import Trajectory

    atoms = bulk("Cu", "fcc", a=3.837, cubic=True).repeat(2)
    rng = np.random.default_rng(seed)
    n = len(atoms)
    pos = atoms.positions[None, None] + 0.1 * rng.standard_normal((replicas, frames, n, 3))
    cell = np.broadcast_to(np.asarray(atoms.cell), (replicas, frames, 3, 3)).copy()
    step = np.broadcast_to(np.arange(1, frames + 1) * 10, (replicas, frames)).copy()
    data = {"positions": pos, "cell": cell, "forces": np.zeros_like(pos),
            "energy": ar1(0.7, replicas, frames, seed) * 0.01 - 0.3 * n,
            "kinetic_energy": np.ones((replicas, frames)), "temperature": 300 + 10 * ar1(0.5, replicas, frames, seed + 1),
            "stress": np.zeros((replicas, frames, 3, 3)), "pressure": ar1(0.2, replicas, frames, seed + 2),
            "step": step, "status": np.zeros((replicas, frames), np.int32), "time": step * 2.0}
    return Trajectory(data=data, observables={}, valid=np.ones((replicas, frames), bool), numbers=atoms.numbers,
                      masses=atoms.get_masses(), pbc=np.ones(3, bool), timestep_fs=2.0)


def test_trajectory_statistics_and_plot(tmp_path):
    traj = _crystal_trajectory()
    traj.valid[1, 35] = False  # replica 1 stopped: it is left out
    traj.data["status"][1, 35:] = 2
    stats = trajectory_statistics(traj, discard=0.25, rdf_frames=10, n_bins=30)
    obs = stats["observables"]
    assert stats["excluded_replicas"] == [1]
    assert set(obs) == {"energy", "temperature", "pressure", "volume", "density"}
    for name, s in obs.items():
        assert np.isfinite(s["mean"]) and s["unit"], name
        assert s["frames"] == 30 and s["replicas"] == 1
    assert obs["energy"]["mean"] == pytest.approx(np.mean(traj.energy[0, 10:]) / 32)
    assert obs["temperature"]["tau_fs"] == pytest.approx(20.0 * obs["temperature"]["tau_frames"])
    # a fixed cell: the density is exact and its error bar vanishes
    assert obs["volume"]["sem"] < 1e-12
    assert obs["density"]["mean"] == pytest.approx(32 * 63.546 / (2 * 3.837) ** 3 * 1.66053906660, rel=1e-4)
    g = stats["rdf"]["Cu-Cu"]
    assert g["g"].shape == g["sem"].shape == (30,)
    peak = int(np.argmax(g["g"]))
    assert abs(g["r"][peak] - 3.837 / np.sqrt(2)) < 0.2 and g["g"][peak] > 3 and g["sem"][peak] > 0
    path = plot_statistics(traj, stats, tmp_path / "stats.png", title="Cu")
    assert path.stat().st_size > 10_000
