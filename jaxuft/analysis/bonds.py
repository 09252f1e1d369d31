"""Bond formation between two species: pairs closer than a cutoff (periodic images included), per frame."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

__all__ = ["pair_distances", "bond_formation", "cutoff_scan", "criterion_text", "nearest_partner"]


def _z(symbol) -> int:
    if isinstance(symbol, (int, np.integer)):
        return int(symbol)
    if symbol not in atomic_numbers:
        raise ValueError(f"unknown element {symbol!r}")
    return atomic_numbers[symbol]


def pair_distances(atoms: Atoms, a, b, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i, j, d)``: every atom ``i`` of species ``a`` and ``j`` of species ``b`` closer than ``cutoff`` Å.

    Distances over all periodic images (for ``cutoff`` below half the cell width this is the
    minimum-image distance); each unordered pair appears once when ``a == b``.
    """
    from ase.neighborlist import neighbor_list

    za, zb = _z(a), _z(b)
    i, j, d = neighbor_list("ijd", atoms, float(cutoff))
    z = atoms.numbers
    sel = (z[i] == za) & (z[j] == zb)
    if za == zb:
        sel &= i < j
    return i[sel], j[sel], d[sel]


def criterion_text(a, b, cutoff: float) -> str:
    return (f"a frame has an {a}–{b} bond when any {a} atom lies within {cutoff:g} Å of any {b} atom "
            "(all periodic images, i.e. minimum image)")


def bond_formation(frames: Sequence[Atoms], a: str = "H", b: str = "Cl", cutoff: float = 1.6, search: float = 3.0) -> dict:
    """Per frame: number of ``a``–``b`` pairs closer than ``cutoff``, number of distinct ``a`` atoms bonded,
    and the shortest ``a``–``b`` distance (NaN when none within ``max(search, cutoff)``); and the count and
    fraction of frames with at least one bond."""
    frames = list(frames)
    if not frames:
        raise ValueError("no frames")
    if cutoff <= 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    reach = max(float(search), float(cutoff))
    n_pairs, n_a, dmin = [], [], []
    for atoms in frames:
        i, j, d = pair_distances(atoms, a, b, reach)
        close = d < cutoff
        n_pairs.append(int(close.sum()))
        n_a.append(int(len(np.unique(i[close]))))
        dmin.append(float(d.min()) if d.size else np.nan)
    n_pairs = np.asarray(n_pairs)
    has = n_pairs > 0
    return {
        "pair": (a, b),
        "cutoff": float(cutoff),
        "criterion": criterion_text(a, b, cutoff),
        "n_pairs": n_pairs,
        "n_bonded": np.asarray(n_a),
        "min_distance": np.asarray(dmin),
        "has_bond": has,
        "n_frames": len(frames),
        "n_frames_with_bond": int(has.sum()),
        "fraction": float(has.mean()),
    }


def cutoff_scan(min_distance, cutoffs) -> dict:
    """Frames with a bond for each cutoff, from :func:`bond_formation`'s ``min_distance`` (NaN = none)."""
    d = np.asarray(min_distance, dtype=np.float64)
    d = np.where(np.isnan(d), np.inf, d)
    return {float(c): int(np.sum(d < c)) for c in cutoffs}


def nearest_partner(frames: Sequence[Atoms], a: str = "H", b: str = "Cl", exclude: Sequence[str] = ("H",),
                    search: float = 3.0) -> dict:
    """A second, cutoff-free criterion: per frame, the ``a`` atoms whose nearest neighbour (ignoring species in
    ``exclude``; for H: the nearest heavy atom) is a ``b`` atom, e.g. a proton sitting on Cl rather than on O/N/C.

    Returns ``n_atoms`` per frame, ``n_frames_with``, ``fraction`` and the criterion text.
    """
    from ase.neighborlist import neighbor_list

    frames = list(frames)
    za, zb = _z(a), _z(b)
    skip = {_z(s) for s in exclude}
    counts = []
    for atoms in frames:
        z = atoms.numbers
        i, j, d = neighbor_list("ijd", atoms, float(search))
        keep = (z[i] == za) & ~np.isin(z[j], list(skip))
        i, j, d = i[keep], j[keep], d[keep]
        order = np.lexsort((d, i))  # by atom, then distance
        i, j = i[order], j[order]
        first = np.r_[True, i[1:] != i[:-1]] if len(i) else np.zeros(0, bool)
        counts.append(int(np.sum(z[j[first]] == zb)))
    counts = np.asarray(counts)
    ex = "/".join(exclude)
    return {"criterion": f"an {a} atom whose nearest neighbour other than {ex} (within {search:g} Å) is {b}",
            "n_atoms": counts, "n_frames": len(frames), "n_frames_with": int(np.sum(counts > 0)),
            "fraction": float(np.mean(counts > 0)) if frames else float("nan")}
