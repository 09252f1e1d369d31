"""Host-side neighbour lists for any cell shape, including cells smaller than the cutoff.

Uses ASE's ``primitive_neighbor_list``, which enumerates all periodic images
within the cutoff (so a cell smaller than twice the cutoff yields the several
images of the same neighbour, exactly as mace-torch and sevenn build graphs).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.neighborlist import primitive_neighbor_list


def neighbor_list(atoms: Atoms, cutoff: float):
    """Edges ``i -> j`` with ``|r_j - r_i + S @ cell| < cutoff``.

    Returns ``senders (E,)``, ``receivers (E,)``, ``shifts (E, 3)`` integer lattice
    offsets and ``lengths (E,)`` in Å.  Self-edges with zero shift are excluded.
    """
    pbc = np.asarray(atoms.get_pbc(), dtype=bool)
    positions = atoms.get_positions()
    cell = np.asarray(atoms.get_cell())
    if not pbc.all():
        # ASE needs a usable cell along non-periodic axes: give it a box that
        # encloses the atoms with a margin (shifts along those axes stay zero).
        span = positions.max(axis=0) - positions.min(axis=0) + 2 * cutoff + 1.0
        cell = cell.copy()
        for ax in range(3):
            if not pbc[ax]:
                cell[ax] = 0.0
                cell[ax, ax] = span[ax]
    i, j, S, d = primitive_neighbor_list(
        "ijSd", pbc, cell, positions, float(cutoff), self_interaction=False
    )
    return i.astype(np.int32), j.astype(np.int32), S.astype(np.int32), d
