"""Shared fixtures: paper-data location, reference-venv helpers, small structures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "reference"))

#: the paper's DFT data: ``$JAXUFT_PAPER_DATA`` if set, else ``../shared/paper-data`` beside the repo.
#: The one place tests find it (``from conftest import PAPER_DATA``); tests skip with a reason when absent.
PAPER_DATA = Path(os.environ.get("JAXUFT_PAPER_DATA", REPO.parent / "shared" / "paper-data"))

#: the ``jaxuft`` command turns JAX's persistent compilation cache on (jaxuft/compile_cache.py); tests that
#: run it, in process or as a subprocess, run without it: no writes to ~/.cache, and each test compiles
#: what it tests (tests/test_compile_cache.py opts in, with its own directories).  A CI run that shared one
#: cache across the test processes was not faster (30.7 min against 28-29), so the suite does not.
os.environ.setdefault("JAXUFT_COMPILE_CACHE", "0")


@pytest.fixture(scope="session")
def paper_data() -> Path:
    if not PAPER_DATA.is_dir():
        pytest.skip(f"paper data not found at {PAPER_DATA} (set JAXUFT_PAPER_DATA or place ../shared/paper-data beside the repo)")
    return PAPER_DATA


@pytest.fixture(scope="session")
def paper_frame(paper_data):
    from ase.io import read

    return read(paper_data / "chclca" / "test" / "independent.xyz", 0)


def rattled_bulk(seed: int = 0):
    from ase.build import bulk

    a = bulk("NaCl", "rocksalt", a=5.64, cubic=True) * (2, 2, 2)
    a.rattle(0.05, seed=seed)
    return a


def small_triclinic(seed: int = 2):
    """A 2-atom triclinic Si cell, far smaller than twice any model cutoff."""
    from ase.build import bulk

    t = bulk("Si", "diamond", a=5.43)
    t.set_cell(t.cell @ np.array([[1, 0.1, 0], [0, 1, 0.05], [0, 0, 1]]), scale_atoms=True)
    t.rattle(0.05, seed=seed)
    return t


def molecule_ethanol():
    from ase.build import molecule

    m = molecule("CH3CH2OH")
    m.rattle(0.02, seed=3)
    return m
