"""Mass density (g/cm³) and volume (Å³) of frames, and their time series."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms
from ase.units import _amu

__all__ = ["mass_density", "density_series", "G_PER_CM3"]

#: amu/Å³ -> g/cm³
G_PER_CM3 = _amu * 1e3 / 1e-24


def mass_density(atoms: Atoms) -> float:
    """Density in g/cm³ of a periodic frame (masses from ``atoms.get_masses()``)."""
    v = atoms.get_volume()
    if not v > 0:
        raise ValueError("the frame has no cell volume; density needs a periodic cell")
    return float(atoms.get_masses().sum() / v * G_PER_CM3)


def density_series(frames: Sequence[Atoms], time=None) -> dict:
    """``volume`` (Å³), ``density`` (g/cm³) per frame and ``time`` (given, or ``info["time_fs"]``/1e3 ps,
    or ``info["thermo_row"]``, or the frame index)."""
    frames = list(frames)
    vol = np.array([a.get_volume() for a in frames])
    rho = np.array([mass_density(a) for a in frames])
    if time is None:
        if all("time_fs" in a.info for a in frames):
            time, unit = np.array([a.info["time_fs"] for a in frames]) * 1e-3, "ps"
        elif all("thermo_row" in a.info for a in frames):
            time, unit = np.array([a.info["thermo_row"] for a in frames], dtype=float), "thermo row"
        else:
            time, unit = np.arange(len(frames), dtype=float), "frame"
    else:
        time, unit = np.asarray(time, dtype=float), "given"
    return {"time": time, "time_unit": unit, "volume": vol, "density": rho}
