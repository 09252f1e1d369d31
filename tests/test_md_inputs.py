"""Bad input gives clear errors before anything is compiled."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from test_md_common import cu_crystal, morse_cu

from jaxuft import StructureError, UnknownElementError, md


@pytest.fixture
def no_compilation():
    morse_cu()  # building the (cached) potential itself may compile small casts
    with md.CompilationCounter() as cc:
        yield cc
    assert cc.count == 0, f"compiled before rejecting the input: {cc.names}"


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: md.NVE(timestep=0.0), "timestep"),
        (lambda: md.NVE(timestep=25.0), "timestep"),
        (lambda: md.NVE(timestep=float("nan")), "timestep"),
        (lambda: md.Langevin(1.0, temperature=-5.0), "temperature"),
        (lambda: md.Langevin(1.0, temperature=1e7), "temperature"),
        (lambda: md.Langevin(1.0, temperature=300.0, friction=-0.1), "friction"),
        (lambda: md.NoseHoover(1.0, temperature=0.0), "temperature"),
        (lambda: md.NoseHoover(1.0, temperature=300.0, tau=0.5), "tau_t"),
        (lambda: md.NPT(1.0, temperature=300.0, pressure=float("inf")), "pressure"),
        (lambda: md.make("nvt-langevin", 1.0), "temperature"),
        (lambda: md.make("npt-anisotropic", 1.0, 300.0), "unknown ensemble"),
    ],
)
def test_bad_settings(make, match, no_compilation):
    with pytest.raises(md.MDInputError, match=match):
        make()


def test_overlapping_atoms(no_compilation):
    atoms = cu_crystal()
    atoms.positions[5] = atoms.positions[9] + [0.05, 0.0, 0.0]
    sim = md.Simulation(morse_cu(), md.NVE(1.0))
    with pytest.raises(StructureError, match="atoms .* apart"):
        sim.init(atoms)
    # closer than the safety distance but not on top of each other: also rejected, with the reason
    atoms = cu_crystal()
    atoms.positions[5] = atoms.positions[9] + [0.3, 0.0, 0.0]
    with pytest.raises(StructureError, match="minimum distance"):
        sim.init(atoms)


def test_npt_needs_a_periodic_cell(no_compilation):
    atoms = cu_crystal()
    atoms.pbc = False
    sim = md.Simulation(morse_cu(), md.NPT(1.0, 300.0, 1.0))
    with pytest.raises(md.MDInputError, match="fully periodic"):
        sim.init(atoms)
    slab = cu_crystal()
    slab.pbc = (True, True, False)
    with pytest.raises(md.MDInputError, match="fully periodic"):
        sim.init(slab)


def test_degenerate_cell_and_bad_structures(no_compilation):
    sim = md.Simulation(morse_cu(), md.Langevin(1.0, 300.0))
    flat = Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]], cell=[[5, 0, 0], [0, 5, 0], [0, 0, 0]], pbc=(True, True, False))
    with pytest.raises(md.MDInputError, match="no volume"):
        sim.init(flat)
    nan = cu_crystal()
    nan.positions[0, 0] = np.nan
    with pytest.raises(StructureError, match="non-finite"):
        sim.init(nan)
    with pytest.raises(UnknownElementError, match="Fe"):
        sim.init(Atoms("CuFe", positions=[[0, 0, 0], [2.5, 0, 0]], cell=[8, 8, 8], pbc=True))
    other = cu_crystal()[:-1]  # another size is a mixed batch (tests/test_md_mixed.py); its pbc must match
    other.pbc = (True, True, False)
    with pytest.raises(md.MDInputError, match="share one pbc"):
        sim.init([cu_crystal(), other])
    with pytest.raises(md.MDInputError, match="replicas"):
        sim.init([cu_crystal(), cu_crystal()], replicas=3)
    with pytest.raises(md.MDInputError, match="initial temperature"):
        sim.init(cu_crystal(), temperature=-1.0)


def test_run_arguments_checked(no_compilation):
    sim = md.Simulation(morse_cu(), md.Langevin(1.0, 300.0))
    with pytest.raises(md.MDInputError, match="init"):
        sim.run(None, n_steps=10)
    state = sim.init(cu_crystal(), replicas=2)
    with pytest.raises(md.MDInputError, match="multiple of record_every"):
        sim.run(state, n_steps=25, record_every=10)
    with pytest.raises(md.MDInputError, match="skin"):
        md.Simulation(morse_cu(), md.NVE(1.0), skin=0.0)
    with pytest.raises(md.MDInputError, match="max_temperature"):
        md.Simulation(morse_cu(), md.NVE(1.0), safety=md.Safety(max_temperature=-1.0)).init(cu_crystal())


def test_molecule_without_cell_runs_nvt(tmp_path):
    """Non-periodic structures work in NVE/NVT (no images, no pressure)."""
    atoms = cu_crystal(rep=1)
    atoms.pbc = False
    atoms.cell = [0, 0, 0]
    sim = md.Simulation(morse_cu(), md.Langevin(1.0, 300.0), chunk_steps=100)
    state = sim.init(atoms, replicas=1)
    state, traj = sim.run(state, n_steps=20, record_every=10)
    assert sim.spec.images == (0, 0, 0)
    assert np.isfinite(traj.energy).all() and np.all(traj.pressure == 0)
    frames = traj.atoms(0)
    assert not frames[0].pbc.any() and "stress" not in frames[0].calc.results
