"""Thermo-log time series: match structure frames to thermo rows, and summarise columns (density, volume) over time."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms

__all__ = ["match_rows", "series_stats", "thermo_time_ns"]


def match_rows(frames: Sequence[Atoms], thermo: dict, by: str = "auto") -> np.ndarray:
    """The thermo row of every frame ``(n_frames,)`` (int).

    ``by="thermo_row"``: ``atoms.info["thermo_row"]`` is the row index (0 = first row);
    ``by="step"``: ``atoms.info["step"]`` is looked up in the ``Step`` column;
    ``by="auto"``: ``thermo_row`` when every frame has it, else ``step``.
    """
    n_rows = len(next(iter(thermo.values())))
    if by == "auto":
        by = "thermo_row" if all("thermo_row" in a.info for a in frames) else "step"
    if by == "thermo_row":
        missing = [k for k, a in enumerate(frames) if "thermo_row" not in a.info]
        if missing:
            raise ValueError(f"frames {missing[:5]} have no info['thermo_row']; match by step instead (by='step')")
        rows = np.array([int(a.info["thermo_row"]) for a in frames], dtype=int)
        bad = rows[(rows < 0) | (rows >= n_rows)]
        if bad.size:
            raise ValueError(f"thermo_row {int(bad[0])} is outside the thermo table's {n_rows} rows; "
                             "is this the thermo log of the run these frames came from?")
        return rows
    if by != "step":
        raise ValueError(f"by must be 'auto', 'thermo_row' or 'step', got {by!r}")
    if "Step" not in thermo:
        raise ValueError("the thermo table has no 'Step' column to match frames by step")
    lookup = {int(s): k for k, s in enumerate(thermo["Step"])}
    rows = []
    for k, a in enumerate(frames):
        if "step" not in a.info:
            raise ValueError(f"frame {k} has neither info['thermo_row'] nor info['step']; cannot match it to a thermo row")
        step = int(a.info["step"])
        if step not in lookup:
            raise ValueError(f"frame {k}: step {step} is not in the thermo table's Step column")
        rows.append(lookup[step])
    return np.asarray(rows, dtype=int)


def thermo_time_ns(thermo: dict, timestep_fs: float) -> np.ndarray:
    """Time of every row in ns from the ``Step`` column and the MD timestep (fs)."""
    if "Step" not in thermo:
        raise ValueError("the thermo table has no 'Step' column")
    return thermo["Step"] * float(timestep_fs) * 1e-6


def series_stats(values, time=None, tail_fraction: float = 0.5) -> dict:
    """Mean, std, min, max, first and last value of a time series, the mean of its last ``tail_fraction``,
    and (with ``time``) the least-squares drift per unit time over the whole series and over the tail."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("empty series")
    tail = v[int(np.floor(len(v) * (1.0 - tail_fraction))):] if 0 < tail_fraction < 1 else v
    out = {
        "n": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
        "max": float(v.max()), "first": float(v[0]), "last": float(v[-1]),
        "tail_mean": float(tail.mean()), "tail_std": float(tail.std()), "tail_fraction": float(tail_fraction),
    }
    if time is not None and v.size > 1:
        t = np.asarray(time, dtype=np.float64)
        out["drift_per_time"] = float(np.polyfit(t, v, 1)[0])
        tt = t[len(t) - len(tail):]
        out["tail_drift_per_time"] = float(np.polyfit(tt, tail, 1)[0]) if len(tail) > 1 else float("nan")
    return out
