"""Where the torch reference environments live (built by ``make_venvs.sh NAME``).

Shared by :mod:`mace_reference` and :mod:`sevenn_reference`: ``$JAXUFT_<NAME>_PYTHON`` wins
when set (an empty value means "no reference"); otherwise ``<repo>/.venvs/<name>/bin/python``
if ``make_venvs.sh <name>`` completed (it writes ``.jaxuft-complete`` last).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def venv_dir(name: str) -> Path:
    return REPO_ROOT / ".venvs" / name


def venv_python(name: str) -> str | None:
    """Path of the ``name`` reference venv's python, or None when there is none."""
    env = os.environ.get(f"JAXUFT_{name.upper()}_PYTHON")
    if env is not None:
        if not env.strip():
            return None
        return env if os.path.isfile(env) and os.access(env, os.X_OK) else None
    py = venv_dir(name) / "bin" / "python"
    if py.is_file() and (venv_dir(name) / ".jaxuft-complete").is_file():
        return str(py)
    return None


def skip_without(name: str) -> str:
    """``pytest.skip`` unless the ``name`` reference venv exists; returns its python."""
    py = venv_python(name)
    if py is None:
        import pytest  # only needed inside tests

        pytest.skip(
            f"{name} reference venv missing: run tests/reference/make_venvs.sh {name} "
            f"(or set JAXUFT_{name.upper()}_PYTHON)"
        )
    return py
