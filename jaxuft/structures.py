"""ASE ``Atoms`` -> validated host arrays -> padded :class:`~jaxuft.graph.Graph`.

Everything here runs on the host (numpy, float64); the result is moved to the device once.
Inputs are checked (atomic numbers 1-118, finite positions, a usable cell, no two atoms
closer than ``min_distance``), and positions are wrapped into the cell (periodic axes) or
centred (non-periodic axes) *before* the cast to the model's dtype, so float32 results do
not depend on where a structure sits in space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from ase.geometry import complete_cell

from .errors import StructureError, UnknownElementError
from .graph import Graph, bucket_size, pad_graph_arrays
from .neighbors import neighbor_list

#: floor (Å) of the low-level graph builders here when no ``min_distance`` is given (MD uses it too)
MIN_DISTANCE = 0.1
#: default minimum interatomic distance (Å) of structures given to a Potential, the ASE calculator and
#: ``jaxuft predict``; settable per call (``min_distance=``, ``--min-distance``)
DEFAULT_MIN_DISTANCE = 0.5


@dataclass(frozen=True)
class SpeciesMap:
    """Maps atomic numbers to the model's species indices."""

    atomic_numbers: tuple[int, ...]

    def __call__(self, numbers: np.ndarray) -> np.ndarray:
        check_atomic_numbers(numbers)
        lookup = np.full(max(max(self.atomic_numbers), int(np.max(numbers, initial=0))) + 1, -1)
        lookup[list(self.atomic_numbers)] = np.arange(len(self.atomic_numbers))
        idx = lookup[numbers]
        if np.any(idx < 0):
            unknown = sorted({chemical_symbols[z] for z in np.asarray(numbers)[idx < 0]})
            known = " ".join(chemical_symbols[z] for z in self.atomic_numbers)
            raise UnknownElementError(
                f"the model does not know element(s) {', '.join(unknown)}; "
                f"it was trained on: {known}. Remove those atoms or use a model that covers them."
            )
        return idx.astype(np.int32)


def check_atomic_numbers(numbers, label: str = "structure") -> None:
    """Raise :class:`StructureError` for atomic numbers outside 1-118 (e.g. -1 or 200)."""
    numbers = np.asarray(numbers)
    if numbers.size and numbers.dtype.kind not in "iu":
        raise StructureError(f"{label}: atomic numbers must be integers, got dtype {numbers.dtype}")
    bad = np.where((numbers < 1) | (numbers > 118))[0]
    if bad.size:
        k = int(bad[0])
        raise StructureError(
            f"{label}: atom {k} has atomic number {int(numbers[k])}, outside 1-118 "
            f"({bad.size} such atom(s)); fix the structure file's element symbols or numbers"
        )


def validate_atoms(atoms: Atoms, cutoff: float | None = None, label: str = "structure") -> None:
    """Raise :class:`StructureError` for input no model can evaluate sensibly."""
    pos = atoms.get_positions()
    if len(atoms) == 0:
        raise StructureError(f"{label} has no atoms")
    check_atomic_numbers(atoms.get_atomic_numbers(), label)
    if not np.all(np.isfinite(pos)):
        bad = np.where(~np.isfinite(pos).all(axis=1))[0]
        raise StructureError(f"{label}: non-finite positions for atom(s) {bad[:10].tolist()}")
    pbc = np.asarray(atoms.get_pbc())
    if pbc.any():
        cell = np.asarray(atoms.get_cell())
        if not np.all(np.isfinite(cell)):
            raise StructureError(f"{label}: the cell has non-finite entries")
        vol = abs(np.linalg.det(cell)) if pbc.all() else None
        lengths = np.linalg.norm(cell, axis=1)
        if np.any(lengths[pbc] < 1e-6) or (vol is not None and vol < 1e-6):
            raise StructureError(
                f"{label} is periodic along {pbc.tolist()} but its cell is degenerate "
                f"(lengths {np.round(lengths, 4).tolist()} Å); set a proper cell or atoms.pbc = False"
            )


def check_overlaps(senders, receivers, lengths, label="structure", min_distance: float | None = None) -> None:
    """Raise :class:`StructureError` if any pair is closer than ``min_distance`` Å (default :data:`MIN_DISTANCE`)."""
    limit = MIN_DISTANCE if min_distance is None else float(min_distance)
    close = lengths < limit
    if np.any(close):
        k = int(np.argmin(np.where(close, lengths, np.inf)))
        raise StructureError(
            f"{label}: atoms {int(senders[k])} and {int(receivers[k])} are {lengths[k]:.3g} Å apart, closer than "
            f"the minimum distance {limit:g} Å; no model is trained on such overlaps. Check for duplicated "
            "atoms or a wrong cell/unit (or lower the limit: --min-distance / min_distance=)."
        )


def canonical_positions(atoms: Atoms) -> np.ndarray:
    """Positions (float64) wrapped into the cell along periodic axes and centred along the others.

    A translation (plus lattice shifts of single atoms) leaves every interatomic vector
    unchanged, so the neighbour list built from these positions gives the same graph;
    done on the host before any float32 cast, it keeps results independent of where the
    structure sits (10⁶ Å from the origin included)."""
    pos = np.asarray(atoms.get_positions(), dtype=np.float64)
    pbc = np.asarray(atoms.get_pbc(), dtype=bool)
    cell = complete_cell(np.asarray(atoms.get_cell(), dtype=np.float64))
    frac = np.linalg.solve(cell.T, pos.T).T
    if pbc.any():
        frac[:, pbc] -= np.floor(frac[:, pbc])
        frac[:, pbc] = np.where(frac[:, pbc] >= 1.0, 0.0, frac[:, pbc])  # -1e-17 % 1 rounds up to 1
    if (~pbc).any():
        lo, hi = frac[:, ~pbc].min(axis=0), frac[:, ~pbc].max(axis=0)
        frac[:, ~pbc] -= 0.5 * (lo + hi)
    return frac @ cell


@dataclass
class HostGraph:
    """Unpadded arrays of one structure (host side)."""

    positions: np.ndarray
    cell: np.ndarray
    species: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    shifts: np.ndarray

    @property
    def n_nodes(self) -> int:
        return len(self.positions)

    @property
    def n_edges(self) -> int:
        return len(self.senders)


def atoms_to_host_graph(atoms: Atoms, species_map: SpeciesMap, cutoff: float, label="structure",
                        min_distance: float | None = None) -> HostGraph:
    """Validate ``atoms`` and build its neighbour graph within ``cutoff`` Å.

    Positions are canonicalised first (:func:`canonical_positions`); atoms closer than
    ``min_distance`` (default :data:`MIN_DISTANCE`; a :class:`~jaxuft.potential.Potential`
    passes :data:`DEFAULT_MIN_DISTANCE`) are refused."""
    validate_atoms(atoms, cutoff, label)
    species = species_map(atoms.get_atomic_numbers())
    placed = atoms.copy()
    placed.calc = None
    placed.set_positions(canonical_positions(atoms))
    snd, rcv, shifts, lengths = neighbor_list(placed, cutoff)
    check_overlaps(snd, rcv, lengths, label, min_distance)
    cell = np.asarray(atoms.get_cell()) if np.any(atoms.get_pbc()) else np.zeros((3, 3))
    return HostGraph(placed.get_positions(), cell, species, snd, rcv, shifts)


def batch_host_graphs(
    graphs: Sequence[HostGraph],
    dtype=np.float32,
    n_node_capacity: int | None = None,
    n_edge_capacity: int | None = None,
    n_graph_capacity: int | None = None,
) -> Graph:
    """Concatenate host graphs and pad to bucketed capacities (or the ones given)."""
    offsets = np.cumsum([0] + [g.n_nodes for g in graphs])
    n_nodes, n_edges = int(offsets[-1]), sum(g.n_edges for g in graphs)
    return pad_graph_arrays(
        positions=np.concatenate([g.positions for g in graphs]),
        cells=np.stack([g.cell for g in graphs]),
        species=np.concatenate([g.species for g in graphs]),
        senders=np.concatenate([g.senders + o for g, o in zip(graphs, offsets)]),
        receivers=np.concatenate([g.receivers + o for g, o in zip(graphs, offsets)]),
        shifts=np.concatenate([g.shifts for g in graphs]),
        node_graph=np.concatenate([np.full(g.n_nodes, k) for k, g in enumerate(graphs)]),
        n_node_capacity=n_node_capacity or bucket_size(n_nodes + 1),
        n_edge_capacity=n_edge_capacity or bucket_size(n_edges),
        n_graph_capacity=n_graph_capacity or len(graphs) + 1,
        dtype=dtype,
    )


def atoms_to_graph(
    atoms: Atoms | Sequence[Atoms], species_map: SpeciesMap, cutoff: float, dtype=np.float32,
    min_distance: float | None = None,
) -> Graph:
    """One padded :class:`Graph` holding one or several structures."""
    frames = [atoms] if isinstance(atoms, Atoms) else list(atoms)
    hosts = [
        atoms_to_host_graph(a, species_map, cutoff, label=f"structure {k}", min_distance=min_distance)
        for k, a in enumerate(frames)
    ]
    return batch_host_graphs(hosts, dtype=dtype)
