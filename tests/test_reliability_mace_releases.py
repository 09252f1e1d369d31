"""MACE release compatibility (issue 11.7): random-weight models pickled by older mace-torch releases
convert without torch and match that release's own energies, forces and stresses in float64.

Each release is swapped into the one mace reference venv (``tests/reference/mace_versions.py``:
``pip install --no-deps --target``, first on ``sys.path``); the newest (0.3.16, the venv's own) is
covered by ``test_mace_parity.py``.  Skips when the reference venv is missing.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import molecule_ethanol

pytestmark = [pytest.mark.reference, pytest.mark.slow]


def _frames():
    """H/C/O structures (the tiny presets' elements): a molecule, a periodic box of it, a triclinic diamond cell."""
    from ase.build import bulk

    box = molecule_ethanol()
    box.set_cell([7.0, 7.5, 8.0])
    box.pbc = True
    box.center()
    c = bulk("C", "diamond", a=3.57)
    c.set_cell(c.cell @ np.array([[1, 0.1, 0], [0, 1, 0.05], [0, 0, 1]]), scale_atoms=True)
    c.rattle(0.05, seed=5)
    return [molecule_ethanol(), box, c]


@pytest.mark.parametrize("version,preset", [(v, p) for v, p, _ in __import__("mace_versions").RELEASES])
def test_release_file_converts_and_matches(version, preset, tmp_path):
    import mace_reference as mr
    import mace_versions as mv

    import jaxuft

    mr.skip_without_mace()
    try:
        mv.ensure_release(version)
    except mr.MaceReferenceError as exc:  # no package index here: say so, do not fail
        pytest.skip(f"mace-torch=={version} cannot be installed: {str(exc).splitlines()[0]}")
    model = mv.build_model(version, preset)
    frames = _frames()
    ref = mv.predict(version, model, frames)
    pot = jaxuft.load(jaxuft.convert(model, tmp_path / "converted"), dtype="float64")
    out = pot.predict(frames)
    for k, (a, o, r) in enumerate(zip(frames, out, ref)):
        where = f"mace {version} {preset} frame {k}"
        assert abs(o["energy"] - float(r["energy"])) <= 1e-9 * abs(float(r["energy"])), where
        assert np.abs(o["forces"] - r["forces"]).max() <= 1e-7, where
        if a.pbc.all():
            s = r["stress_3x3"]
            voigt = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
            assert np.abs(o["stress"] - voigt).max() <= 1e-8, where
