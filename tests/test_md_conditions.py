"""Per-replica conditions (temperature, friction, timestep, pressure as arrays) and replica exchange, checked on a
Morse dimer whose exchange acceptance and mean energy are computed here by quadrature."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.data import covalent_radii
from ase.units import kB

from jaxuft import md
from jaxuft.analysis.ensemble import observable_stats
from jaxuft.md.cli import builtin_morse
from jaxuft.md.compilation import CompilationCounter
from jaxuft.md.errors import MDInputError

POT = builtin_morse([6], "float64")  # D 0.3 eV, a 1.5 /Å, r0 = 2 x covalent radius of C, smooth cutoff at 5 Å
LADDER = [20.0, 80.0, 320.0]  # K; k T << D, so the dimer never dissociates
EVERY = 50  # steps between exchange attempts (also the recording interval and the chunk)


def dimer() -> Atoms:
    return Atoms("C2", positions=[[0, 0, 0], [0, 0, 2 * covalent_radii[6]]])


def morse_energy(r):
    """The built-in Morse pair energy of a C2 dimer (eV), written out independently of the model code."""
    r0, d, a, p, y = 2 * covalent_radii[6], 0.3, 1.5, 5.0, r / 5.0
    x = np.exp(-a * (r - r0))
    env = np.where(y < 1, 1 - (p + 1) * (p + 2) / 2 * y**p + p * (p + 2) * y ** (p + 1) - p * (p + 1) / 2 * y ** (p + 2), 0)
    return d * (x * x - 2 * x) * env


R_GRID = np.linspace(0.8, 5.0, 4000)
U_GRID = morse_energy(R_GRID)


def radial_weights(t):
    """Canonical distribution of the bond length of a free dimer: r^2 exp(-U(r)/kT) (bound, r < cutoff)."""
    w = R_GRID**2 * np.exp(-(U_GRID - U_GRID.min()) / (kB * t))
    return w / w.sum()


def exact_acceptance(t1, t2):
    """E[min(1, exp((b1 - b2)(U1 - U2)))] with U1, U2 drawn independently at t1, t2."""
    d = (1 / (kB * t1) - 1 / (kB * t2)) * (U_GRID[:, None] - U_GRID[None, :])
    return float(radial_weights(t1) @ np.minimum(1.0, np.exp(np.minimum(d, 50.0))) @ radial_weights(t2))


def langevin(temperature=LADDER, timestep=2.0, friction=0.05):
    return md.Langevin(timestep, temperature, friction)


def test_per_replica_temperatures_timesteps_and_frictions():
    sim = md.Simulation(POT, langevin(timestep=[2.0, 2.0, 1.0], friction=[0.05, 0.05, 0.1]), chunk_steps=EVERY)
    state = sim.init(dimer(), replicas=3, seed=3)
    state, traj = sim.run(state, n_steps=16_000, record_every=EVERY, progress=False)
    t_mean = traj.temperature[:, 40:].mean(axis=1)
    np.testing.assert_allclose(t_mean, LADDER, rtol=0.15)
    np.testing.assert_allclose(traj.time[2], traj.step[2] * 1.0)
    np.testing.assert_allclose(traj.time[0], traj.step[0] * 2.0)
    assert traj.report["ensemble"]["temperature_K"] == LADDER
    # new per-replica values, or scalars for all: nothing compiles
    with CompilationCounter() as cc:
        sim.ensemble = sim.ensemble.with_(temperature=[30.0, 60.0, 90.0])
        state, _ = sim.run(state, n_steps=EVERY, record_every=EVERY, progress=False)
        sim.ensemble = langevin(temperature=50.0, timestep=2.0, friction=0.05)
        sim.run(state, n_steps=EVERY, record_every=EVERY, progress=False)
    assert cc.count == 0, cc.names


def test_per_replica_settings_are_checked():
    with pytest.raises(MDInputError, match="one value per replica"):
        md.Langevin(1.0, [300, 400], [0.01, 0.02, 0.03])
    with pytest.raises(MDInputError, match="temperature in"):
        md.Langevin(1.0, [300, -1])
    sim = md.Simulation(POT, langevin())
    with pytest.raises(MDInputError, match="per-replica settings for 3 replicas"):
        sim.init(dimer(), replicas=2)
    with pytest.raises(MDInputError, match="thermostatted"):
        md.Simulation(POT, md.NVE(1.0), replica_exchange=10)
    sim = md.Simulation(POT, langevin(), replica_exchange=EVERY)
    state = sim.init(dimer(), replicas=3)
    with pytest.raises(MDInputError, match="must be a multiple of record_every"):
        sim.run(state, n_steps=2 * EVERY, record_every=3)
    npt = md.NPT(1.0, [300, 400], pressure=[1.0, 1000.0])
    assert npt.conditions(np.float64, 2)["pressure"][1] == pytest.approx(1000.0 * 6.241509074460763e-07)


def test_a_swap_exchanges_configurations_and_rescales_momenta():
    sim = md.Simulation(POT, langevin(), replica_exchange=EVERY)
    state = sim.init([dimer()] * 3, seed=1)
    # energies that make the first pair's swap certain: the hotter replica holds the lower energy
    state = state._replace(energy=np.array([0.0, -1.0, 0.0]))
    before = jax_get(state)
    after = jax_get(sim._exchange(state))
    stats = sim.exchange_stats
    assert stats["attempts"] == [1, 0] and stats["accepted"] == [1, 0] and stats["walkers"] == [1, 0, 2]
    np.testing.assert_array_equal(after.positions[0], before.positions[1])
    np.testing.assert_allclose(after.momenta[0], before.momenta[1] * np.sqrt(20.0 / 80.0))
    np.testing.assert_allclose(after.momenta[1], before.momenta[0] * np.sqrt(80.0 / 20.0))
    np.testing.assert_array_equal(after.key, before.key)  # the noise stream stays with the temperature
    np.testing.assert_array_equal(after.momenta[2], before.momenta[2])


def jax_get(state):
    import jax

    return jax.tree_util.tree_map(np.asarray, jax.device_get(state))


def test_replica_exchange_acceptance_and_energies_match_the_exact_answer(tmp_path):
    """A C2 dimer at 20/80/320 K exchanging every 100 fs: the mean Metropolis probability (and the acceptance
    ratio) of each neighbour pair equal the quadrature over r^2 exp(-U/kT), and every temperature keeps its own
    canonical mean energy."""
    sim = md.Simulation(POT, langevin(), replica_exchange=EVERY, chunk_steps=EVERY)
    state = sim.init(dimer(), replicas=3, seed=5)
    state, traj = sim.run(state, n_steps=EVERY * 1000, record_every=EVERY, progress=False)
    assert all(s["status"] == "running" for s in traj.report["stops"])
    rex = traj.report["replica_exchange"]["total"]
    assert rex["rounds"] == 1000
    for i, pair in enumerate(rex["pairs"]):
        exact = exact_acceptance(LADDER[i], LADDER[i + 1])
        assert pair["pair"] == LADDER[i:i + 2] and pair["attempts"] == 500
        assert abs(pair["mean_probability"] - exact) < 0.05, (pair, exact)
        assert abs(pair["acceptance"] - exact) < 0.08, (pair, exact)
        assert 0.3 < exact < 0.8  # a test that can fail: neither always nor never accepted
    # canonical mean energies at each temperature (exchange must not bias them)
    for r, t in enumerate(LADDER):
        u_exact = float(radial_weights(t) @ U_GRID)
        s = observable_stats(traj.energy[r:r + 1, 50:])
        assert abs(s["mean"] - u_exact) < 4 * s["sem"] + 1e-4, (t, s["mean"], s["sem"], u_exact)
    # the statistics continue across a save/restore
    sim.save(state, tmp_path / "s.npz")
    sim2, state2 = md.Simulation.restore(tmp_path / "s.npz", POT)
    assert sim2.replica_exchange == EVERY and sim2.exchange_stats["rounds"] == 1000
    _, more = sim2.run(state2, n_steps=2 * EVERY, record_every=EVERY, progress=False)
    assert more.report["replica_exchange"]["this_run"]["rounds"] == 2
    assert more.report["replica_exchange"]["total"]["rounds"] == 1002


def test_cli_ladder_prints_and_writes_exchange_and_statistics(tmp_path, capsys):
    """``jaxuft md --temperatures ... --replica-exchange ...`` on the dimer (the compiled program of the tests above)."""
    import argparse
    import json

    from ase.io import write

    from jaxuft.md.cli import register

    write(tmp_path / "c2.xyz", dimer())
    parser = argparse.ArgumentParser(prog="jaxuft")
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "run"
    args = parser.parse_args([
        "md", "--model", "morse", "--structure", str(tmp_path / "c2.xyz"), "--temperatures", *map(str, LADDER),
        "--replica-exchange", str(EVERY), "--timestep", "2", "--friction", "0.05", "--steps", str(40 * EVERY),
        "--record-every", str(EVERY), "--dtype", "float64", "--statistics", "full", "-o", str(out)])
    assert args.func(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["replicas"] == 3 and summary["temperature_K"] == LADDER
    rex = summary["replica_exchange"]
    assert rex["rounds"] == 40 and sum(p["attempts"] for p in rex["pairs"]) == 40
    stats = summary["statistics"]
    assert list(stats) == ["replica_000_C2", "replica_001_C2", "replica_002_C2"]  # one per temperature
    assert "observables" in stats["replica_000_C2"], stats["replica_000_C2"]
    assert set(stats["replica_000_C2"]["observables"]) == {"energy", "temperature"}  # not periodic: no P, V, g(r)
    assert abs(stats["replica_002_C2"]["observables"]["temperature"]["mean"] - 320) < 150
    assert (out / "statistics_replica_001_C2.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "exchange 20 K <-> 80 K" in printed and "temperature" in printed
