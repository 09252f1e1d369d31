"""Radial distribution functions g_ab(r) per species pair, averaged over frames (periodic images included)."""

from __future__ import annotations

from itertools import combinations_with_replacement
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from .bonds import _z  # element symbol or number -> Z (one helper for the analysis modules)

__all__ = ["rdf", "rdf_pairs"]


def rdf(frames: Sequence[Atoms], a, b, r_max: float = 6.0, n_bins: int = 120) -> dict:
    """g_ab(r) on ``n_bins`` shells up to ``r_max`` Å, and the running coordination number n_ab(r).

    Per frame: ``g(r) = V / (N_a N_b') * n(r) / (4/3 pi (r_hi^3 - r_lo^3))`` with ``n(r)`` the
    number of ordered (a, b) pairs in the shell, ``N_b' = N_b - 1`` when ``a == b``; then
    the frames' g are averaged (each frame with its own volume, so NPT runs are fine).
    Returns ``pair``, ``r`` (bin centres), ``edges``, ``g``, ``coordination`` (mean number of b
    around an a within r) and ``n_frames`` (frames holding the pair).
    """
    return next(iter(rdf_pairs(frames, [(a, b)], r_max, n_bins).values()))


def rdf_pairs(frames: Sequence[Atoms], pairs=None, r_max: float = 6.0, n_bins: int = 120) -> dict:
    """:func:`rdf` for each pair (default: every unordered pair of the species present), keyed ``"A-B"``;
    one neighbour list per frame serves all pairs."""
    from ase.neighborlist import neighbor_list

    frames = list(frames)
    if not frames:
        raise ValueError("no frames")
    if r_max <= 0 or n_bins < 1:
        raise ValueError("r_max must be positive and n_bins at least 1")
    if pairs is None:
        zs = sorted({int(z) for f in frames for z in np.unique(f.numbers)})
        pairs = [(chemical_symbols[x], chemical_symbols[y]) for x, y in combinations_with_replacement(zs, 2)]
    zpairs = [(_z(a), _z(b)) for a, b in pairs]
    edges = np.linspace(0.0, float(r_max), int(n_bins) + 1)
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    g_sum = np.zeros((len(zpairs), n_bins))
    coord_sum = np.zeros((len(zpairs), n_bins))
    used = np.zeros(len(zpairs), dtype=int)
    for atoms in frames:
        z = atoms.numbers
        i, j, d = neighbor_list("ijd", atoms, float(r_max))
        for k, (za, zb) in enumerate(zpairs):
            na, nb = int(np.sum(z == za)), int(np.sum(z == zb))
            nb_eff = nb - 1 if za == zb else nb
            if na == 0 or nb_eff <= 0:
                continue
            counts, _ = np.histogram(d[(z[i] == za) & (z[j] == zb)], bins=edges)
            g_sum[k] += atoms.get_volume() / (na * nb_eff) * counts / shell
            coord_sum[k] += np.cumsum(counts) / na
            used[k] += 1
    out = {}
    for k, (za, zb) in enumerate(zpairs):
        if used[k] == 0:
            raise ValueError(f"no frame holds the pair {chemical_symbols[za]}–{chemical_symbols[zb]}")
        out[f"{chemical_symbols[za]}-{chemical_symbols[zb]}"] = {
            "pair": (chemical_symbols[za], chemical_symbols[zb]), "r": 0.5 * (edges[1:] + edges[:-1]), "edges": edges,
            "g": g_sum[k] / used[k], "coordination": coord_sum[k] / used[k], "n_frames": int(used[k])}
    return out
