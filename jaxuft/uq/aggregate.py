"""Group per-atom scores (Q, T²) by element and by structure (host numpy).

``values (n_atoms,)`` are the stacked per-atom scores of a list of frames;
``numbers (n_atoms,)`` their atomic numbers; ``frame_sizes`` the atom count of
each frame (``[len(a) for a in frames]``).
"""

from __future__ import annotations

import numpy as np
from ase.data import chemical_symbols


def frame_index(frame_sizes) -> np.ndarray:
    """The frame of every stacked atom ``(n_atoms,)``."""
    return np.repeat(np.arange(len(frame_sizes)), np.asarray(frame_sizes, dtype=int))


def per_element(values, numbers) -> dict:
    """``{symbol: {"mean", "std", "max", "median", "count"}}`` over all atoms of each element."""
    values = np.asarray(values, dtype=np.float64)
    numbers = np.asarray(numbers)
    out = {}
    for z in np.unique(numbers):
        v = values[numbers == z]
        out[chemical_symbols[int(z)]] = {
            "mean": float(v.mean()),
            "std": float(v.std()),
            "max": float(v.max()),
            "median": float(np.median(v)),
            "count": int(v.size),
        }
    return out


def per_structure(values, frame_sizes, reduce: str = "mean") -> np.ndarray:
    """One number per frame ``(n_frames,)``: ``reduce`` in "mean", "max", "sum"."""
    values = np.asarray(values, dtype=np.float64)
    sizes = np.asarray(frame_sizes, dtype=int)
    if sizes.sum() != len(values):
        raise ValueError(f"frame sizes add up to {sizes.sum()} atoms but there are {len(values)} values")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    ops = {"mean": np.add.reduceat, "max": np.maximum.reduceat, "sum": np.add.reduceat}
    if reduce not in ops:
        raise ValueError(f"reduce must be one of {sorted(ops)}, got {reduce!r}")
    if len(sizes) == 0:
        return np.zeros(0)
    if np.any(sizes == 0):
        raise ValueError("every frame must have at least one atom")
    r = ops[reduce](values, starts)
    return r / sizes if reduce == "mean" else r


def per_structure_element(values, numbers, frame_sizes, reduce: str = "mean") -> tuple[list[str], np.ndarray]:
    """Per frame and element: ``(symbols, table (n_frames, n_elements))`` (NaN where absent)."""
    values = np.asarray(values, dtype=np.float64)
    numbers = np.asarray(numbers)
    frames = frame_index(frame_sizes)
    zs = np.unique(numbers)
    table = np.full((len(frame_sizes), len(zs)), np.nan)
    for k, z in enumerate(zs):
        sel = numbers == z
        f, v = frames[sel], values[sel]
        if reduce == "mean":
            s = np.bincount(f, weights=v, minlength=len(frame_sizes))
            c = np.bincount(f, minlength=len(frame_sizes))
            with np.errstate(invalid="ignore", divide="ignore"):
                table[:, k] = np.where(c > 0, s / np.maximum(c, 1), np.nan)
        elif reduce == "max":
            col = np.full(len(frame_sizes), -np.inf)
            np.maximum.at(col, f, v)
            table[:, k] = np.where(np.isfinite(col), col, np.nan)
        else:
            raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    return [chemical_symbols[int(z)] for z in zs], table
