"""Energy and force residuals (model - reference) of labelled frames: mean, RMSE in meV/atom, force RMSE per element."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from .thermo import match_rows

__all__ = ["energy_residuals", "force_residuals", "frame_residuals", "thermo_energy_residuals", "reference_energy"]


def reference_energy(atoms: Atoms) -> float:
    """The labelled total energy of a frame (calculator result, else ``info["energy"]``)."""
    if atoms.calc is not None:
        try:
            return float(atoms.get_potential_energy())
        except Exception:  # a calculator without an energy result
            pass
    if "energy" in atoms.info:
        return float(atoms.info["energy"])
    raise ValueError("a frame has no energy label (neither a calculator result nor info['energy'])")


def energy_residuals(model_energy, reference_energy, n_atoms) -> dict:
    """Per-frame ``(model - reference) / n_atoms`` in meV/atom and its mean, RMSE, MAE, max |.|, std.

    ``model_energy``, ``reference_energy``: total energies in eV ``(n_frames,)``;
    ``n_atoms``: atoms per frame (scalar or ``(n_frames,)``).
    """
    m = np.asarray(model_energy, dtype=np.float64)
    r = np.asarray(reference_energy, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n_atoms, dtype=np.float64), m.shape)
    if m.shape != r.shape:
        raise ValueError(f"{m.size} model energies for {r.size} reference energies")
    if m.size == 0:
        raise ValueError("no frames to compare")
    res = (m - r) / n * 1000.0
    return {
        "residual_meV_per_atom": res,
        "n": int(res.size),
        "mean": float(res.mean()),
        "rmse": float(np.sqrt(np.mean(res**2))),
        "mae": float(np.mean(np.abs(res))),
        "std": float(res.std()),
        "max_abs": float(np.max(np.abs(res))),
        "unit": "meV/atom",
    }


def force_residuals(model_forces: Sequence, reference_forces: Sequence, numbers: Sequence) -> dict:
    """Force component residuals (eV/Å): RMSE and MAE over all components, and per element.

    Each argument is a list (one entry per frame) of ``(n_atoms, 3)`` forces / ``(n_atoms,)``
    atomic numbers, or already stacked arrays.
    """
    mf = np.concatenate([np.asarray(f, np.float64).reshape(-1, 3) for f in model_forces])
    rf = np.concatenate([np.asarray(f, np.float64).reshape(-1, 3) for f in reference_forces])
    z = np.concatenate([np.asarray(n).reshape(-1) for n in numbers])
    if mf.shape != rf.shape or len(z) != len(mf):
        raise ValueError(f"forces {mf.shape} vs {rf.shape} and {len(z)} atomic numbers do not line up")
    d = mf - rf
    out = {
        "n_atoms": int(len(d)),
        "rmse": float(np.sqrt(np.mean(d**2))),
        "mae": float(np.mean(np.abs(d))),
        "unit": "eV/Å",
        "per_element": {},
    }
    for zz in np.unique(z):
        dd = d[z == zz]
        out["per_element"][chemical_symbols[int(zz)]] = {
            "count": int(len(dd)), "rmse": float(np.sqrt(np.mean(dd**2))), "mae": float(np.mean(np.abs(dd)))}
    return out


def frame_residuals(model_frames: Sequence[Atoms], reference_frames: Sequence[Atoms]) -> dict:
    """Energy residuals (meV/atom) and, where both carry forces, force residuals of matching frames."""
    if len(model_frames) != len(reference_frames):
        raise ValueError(f"{len(model_frames)} model frames for {len(reference_frames)} reference frames")
    for k, (m, r) in enumerate(zip(model_frames, reference_frames)):
        if len(m) != len(r) or np.any(m.numbers != r.numbers):
            raise ValueError(f"frame {k}: model and reference frames hold different atoms")
    out = {"energy": energy_residuals([reference_energy(a) for a in model_frames],
                                      [reference_energy(a) for a in reference_frames],
                                      [len(a) for a in reference_frames])}
    try:
        mf = [a.get_forces() for a in model_frames]
        rf = [a.get_forces() for a in reference_frames]
    except Exception:  # frames without force labels
        return out
    out["forces"] = force_residuals(mf, rf, [a.numbers for a in reference_frames])
    return out


def thermo_energy_residuals(frames: Sequence[Atoms], thermo: dict, column: str = "PotEng", by: str = "auto") -> dict:
    """Residuals of a model's MD energy column (``PotEng``, eV) against the frames' reference labels.

    Frames are matched to rows with :func:`~jaxuft.analysis.thermo.match_rows`
    (``info["thermo_row"]`` or ``info["step"]``).  Adds ``rows`` and, when present, ``steps``.
    """
    if column not in thermo:
        raise ValueError(f"the thermo table has no {column!r} column (columns: {', '.join(thermo)})")
    frames = list(frames)
    rows = match_rows(frames, thermo, by)
    out = energy_residuals(thermo[column][rows], [reference_energy(a) for a in frames], [len(a) for a in frames])
    out["rows"] = rows
    if "Step" in thermo:
        out["steps"] = thermo["Step"][rows].astype(np.int64)
    return out
