"""Parity with mace-torch: random-weight MP-0b-small and MP-0-medium models, converted without torch.

The reference models and predictions come from the real mace-torch in a separate
virtual environment (``tests/reference/make_venvs.sh mace``); tests skip with the
reason when it is absent.  All four structures go through jaxuft as one padded
batch, so each model and dtype compiles once.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import molecule_ethanol, rattled_bulk, small_triclinic

pytestmark = [pytest.mark.reference, pytest.mark.slow]

TOL = {
    "float64": dict(energy_rel=1e-9, forces=1e-7, stress=1e-8, descriptors=1e-7),
    "float32": dict(energy_rel=1e-5, forces=1e-4, stress=1e-5, descriptors=1e-4),
}


@pytest.fixture(scope="module", params=["mp0b-small", "mp0-medium"])
def reference(request, paper_frame):
    import mace_reference as mr

    mr.skip_without_mace()
    model = mr.build_model(request.param, seed=0, dtype="float64")
    frames = [paper_frame, rattled_bulk(), small_triclinic(), molecule_ethanol()]
    ref = mr.predict(model, frames, dtype="float64", repeats=0)
    return request.param, model, frames, ref


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_mace_parity(reference, dtype, tmp_path):
    import jaxuft

    preset, model, frames, ref = reference
    dest = jaxuft.convert(model, tmp_path / "converted")
    pot = jaxuft.load(dest, dtype=dtype)
    if preset == "mp0b-small":
        assert pot.config["distance_transform"]["type"] == "Agnesi" and pot.config["pair_repulsion"]
    out = pot.predict(frames)
    desc = pot.descriptors(frames)
    tol = TOL[dtype]
    start = 0
    for k, (a, o, r) in enumerate(zip(frames, out, ref)):
        n = len(a)
        rel = abs(o["energy"] - r["energy"]) / abs(r["energy"])
        assert rel <= tol["energy_rel"], f"{preset} {dtype} frame {k}: energy rel. error {rel:.2e}"
        df = np.abs(o["forces"] - r["forces"]).max()
        assert df <= tol["forces"], f"{preset} {dtype} frame {k}: forces error {df:.2e} eV/Å"
        np.testing.assert_allclose(o["energies"], r["node_energy"], atol=max(tol["forces"], 1e-9) * 10)
        if a.pbc.all():
            ds = np.abs(o["stress"] - np.asarray(r["stress"])).max()
            assert ds <= tol["stress"], f"{preset} {dtype} frame {k}: stress error {ds:.2e} eV/Å³"
        dd = np.abs(desc[start : start + n] - r["descriptors"]).max()
        assert dd <= tol["descriptors"], f"{preset} {dtype} frame {k}: descriptor error {dd:.2e}"
        start += n



@pytest.mark.parametrize("preset", ["mp0-small", "mp0-large", "mpa0-medium"])
def test_mace_family_parity_float64(preset, tmp_path):
    """The rest of the public MACE-MP family (L=0, L=2, MPA-0 density blocks), two small frames."""
    import mace_reference as mr

    import jaxuft

    mr.skip_without_mace()
    model = mr.build_model(preset, seed=1, dtype="float64")
    frames = [small_triclinic(), molecule_ethanol()]
    ref = mr.predict(model, frames, dtype="float64", repeats=0)
    pot = jaxuft.load(jaxuft.convert(model, tmp_path / "m"), dtype="float64")
    for o, r in zip(pot.predict(frames), ref):
        assert abs(o["energy"] - r["energy"]) <= 1e-9 * abs(r["energy"])
        assert np.abs(o["forces"] - r["forces"]).max() <= 1e-7


def test_mace_parity_present_species(reference, tmp_path):
    """The module specialised to the frames' species (what MD compiles) matches mace-torch in float64;
    a node of a species outside the declared set gets a NaN energy, never a silently wrong one."""
    import jax

    import jaxuft
    from jaxuft.md import Langevin, Simulation
    from jaxuft.models import restrict_species

    preset, model, frames, ref = reference
    if preset != "mp0b-small":  # the specialisation does not depend on the model size: checked once (CI time)
        pytest.skip("present-species parity is checked on mp0b-small, the paper's model")
    pot = jaxuft.load(jaxuft.convert(model, tmp_path / "converted"), dtype="float64")
    graph = pot.graph(frames)
    numbers = np.concatenate([a.get_atomic_numbers() for a in frames])
    species = pot.species_map(numbers)
    module = restrict_species(pot.module, species)
    assert module.present_species == tuple(sorted(set(species.tolist()))) and module != pot.module
    out = jax.device_get(jax.jit(lambda p, g: jaxuft.energy_forces_stress(module, p, g))(pot.params, graph))
    tol, start = TOL["float64"], 0
    for k, (a, r) in enumerate(zip(frames, ref)):
        n = len(a)
        assert abs(out["energy"][k] - r["energy"]) <= tol["energy_rel"] * abs(r["energy"]), f"{preset} frame {k}"
        assert np.abs(out["forces"][start : start + n] - r["forces"]).max() <= tol["forces"], f"{preset} frame {k}"
        if a.pbc.all():
            s33 = out["stress"][k]
            voigt = np.array([s33[0, 0], s33[1, 1], s33[2, 2], s33[1, 2], s33[0, 2], s33[0, 1]])
            assert np.abs(voigt - np.asarray(r["stress"])).max() <= tol["stress"], f"{preset} frame {k}"
        start += n
    # one species left out of the set: the frames holding it get NaN energies, the others are unchanged
    dropped = int(species[0])
    partial = restrict_species(pot.module, [s for s in set(species.tolist()) if s != dropped])
    e = np.asarray(jaxuft.energy(partial, pot.params, graph))[: len(frames)]
    holds = [bool(np.any(pot.species_map(a.get_atomic_numbers()) == dropped)) for a in frames]
    assert holds[0] and all(np.isnan(e[k]) == h for k, h in enumerate(holds))
    rest = ~np.asarray(holds)
    np.testing.assert_allclose(e[rest], np.asarray(out["energy"])[: len(frames)][rest], rtol=1e-12)
    # MD compiles the module specialised to its run's species (a mixed batch: the union)
    sim = Simulation(pot, Langevin(0.5, 300.0))
    assert sim.model_module() == pot.module  # before init
    sim.init(frames[1:3])
    z = np.concatenate([a.get_atomic_numbers() for a in frames[1:3]])
    assert sim.model_module().present_species == tuple(sorted(set(pot.species_map(z).tolist())))
    assert sim.program(1, 1).module == sim.model_module()
    general = Simulation(pot, Langevin(0.5, 300.0), specialise_species=False)  # opt-out: the model for all elements
    general.init(frames[1:3])
    assert general.program(1, 1).module == pot.module
