"""Energy, forces and stress of one MD replica from any :class:`~jaxuft.potential.Potential`.

``params`` is always an argument, never closed over, so new parameters flow
into compiled MD without recompiling.  The per-replica :class:`~jaxuft.graph.Graph`
has ``n_atoms + 1`` nodes (one padding atom, index ``n_atoms``) and two graph
slots (the structure and the padding graph), following the Graph conventions.

Also provides :func:`jax_md_energy_fn`, an energy function with jax-md's calling
convention ``energy_fn(R, neighbor=..., box=..., params=...)`` so the
integrators of :mod:`jax_md.simulate` can drive any jaxuft potential.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..graph import Graph
from ..potential import energy_fn as _energy_fn
from ..potential import energy_forces_stress_fn
from . import neighbors as nl


class ForceOutput(NamedTuple):
    """Model outputs for one replica at one configuration.

    energy:       () eV
    forces:       (n_atoms, 3) eV/Å
    stress:       (3, 3) eV/Å³, ASE sign (``(1/V) dE/dε``; potential part only, zero if not periodic)
    min_distance: () Å, shortest pair in the neighbour list
    model_count:  () int32, pairs within the cutoff (to check the model capacity)
    descriptors:  (n_atoms + 1, n_features) the model's invariant per-node descriptors of this
                  force evaluation (padding node last), or None unless the ForceField was built
                  with ``descriptors=True``
    """

    energy: jax.Array
    forces: jax.Array
    stress: jax.Array
    min_distance: jax.Array
    model_count: jax.Array
    descriptors: jax.Array | None = None


def replica_graph(species, positions, cell, edges: nl.ModelEdges, spec: nl.NeighborSpec, atom_mask=None) -> Graph:
    """The padded :class:`Graph` of one replica (``n_atoms + 1`` nodes, 2 graph slots); ``atom_mask (n_atoms,)``
    marks padding atoms of a mixed batch (False), which join the padding graph."""
    n = positions.shape[0]
    dtype = positions.dtype
    model_cell = cell if any(spec.pbc) else jnp.zeros_like(cell)
    if atom_mask is not None:
        real = jnp.concatenate([atom_mask, jnp.zeros((1,), bool)])
        return Graph(
            positions=jnp.concatenate([positions, jnp.zeros((1, 3), dtype)]),
            cell=jnp.stack([model_cell, jnp.zeros_like(cell)]),
            species=jnp.concatenate([jnp.where(atom_mask, species, 0).astype(jnp.int32), jnp.zeros((1,), jnp.int32)]),
            senders=edges.senders,
            receivers=edges.receivers,
            shifts=edges.shifts.astype(dtype),
            node_graph=jnp.where(real, 0, 1).astype(jnp.int32),
            node_mask=real,
            edge_mask=edges.mask,
            graph_mask=jnp.array([True, False]),
        )
    return Graph(
        positions=jnp.concatenate([positions, jnp.zeros((1, 3), dtype)]),
        cell=jnp.stack([model_cell, jnp.zeros_like(cell)]),
        species=jnp.concatenate([species.astype(jnp.int32), jnp.zeros((1,), jnp.int32)]),
        senders=edges.senders,
        receivers=edges.receivers,
        shifts=edges.shifts.astype(dtype),
        node_graph=jnp.concatenate([jnp.zeros((n,), jnp.int32), jnp.ones((1,), jnp.int32)]),
        node_mask=jnp.arange(n + 1) < n,
        edge_mask=edges.mask,
        graph_mask=jnp.array([True, False]),
    )


class ForceField:
    """Evaluates a Potential on one replica given its neighbour list.

    ``ForceField(potential, spec)(params, species, positions, cell, nbrs)`` ->
    :class:`ForceOutput`.  ``spec`` fixes the compiled shapes (capacities, images).
    ``potential`` may be a :class:`~jaxuft.potential.Potential` or its Flax ``module``;
    ``descriptors=True`` also returns the model's per-node descriptors of the same forward pass.
    """

    def __init__(self, potential, spec: nl.NeighborSpec, descriptors: bool = False):
        self.module = getattr(potential, "module", potential)
        self.spec = spec
        self.descriptors = bool(descriptors)

    def graph(self, species, positions, cell, nbrs: nl.NeighborList, atom_mask=None) -> Graph:
        edges = nl.model_edges(positions, cell, nbrs, self.spec)
        return replica_graph(species, positions, cell, edges, self.spec, atom_mask)

    def __call__(self, params, species, positions, cell, nbrs: nl.NeighborList, atom_mask=None) -> ForceOutput:
        edges = nl.model_edges(positions, cell, nbrs, self.spec)
        graph = replica_graph(species, positions, cell, edges, self.spec, atom_mask)
        out = energy_forces_stress_fn(self.module, params, graph, descriptors=self.descriptors)
        n = positions.shape[0]
        return ForceOutput(
            energy=out["energy"][0],
            forces=out["forces"][:n],
            stress=out["stress"][0],
            min_distance=edges.min_distance,
            model_count=edges.count,
            descriptors=out.get("descriptors"),
        )


def jax_md_energy_fn(potential, species, spec: nl.NeighborSpec):
    """An energy function in jax-md's convention for any jaxuft Potential.

    Returns ``energy_fn(R, neighbor, box, params) -> () eV`` where ``R (N, 3)`` are
    cartesian positions (Å, unwrapped: use ``space.periodic_general(box,
    fractional_coordinates=False, wrapped=False)`` or ``space.free()``),
    ``neighbor`` a :class:`~jaxuft.md.neighbors.NeighborList` kept up to date
    with :func:`~jaxuft.md.neighbors.update`, and ``box (3, 3)`` the cell with
    lattice vectors as rows (ASE convention).  Pass ``params`` as a keyword so
    jax-md's integrators forward it (``apply_fn(state, neighbor=nbrs, box=cell, params=p)``).
    """

    module = getattr(potential, "module", potential)

    def energy_fn(R, neighbor: nl.NeighborList, box, params, **unused):
        edges = nl.model_edges(R, box, neighbor, spec)
        graph = replica_graph(species, R, box, edges, spec)
        return _energy_fn(module, params, graph)[0]

    return energy_fn


def jax_md_space(cell):
    """jax-md ``(displacement_fn, shift_fn)`` for the engine's convention: cartesian, unwrapped
    positions in a cell whose rows are lattice vectors (``space.periodic_general`` takes columns)."""
    from jax_md import space

    return space.periodic_general(jnp.asarray(cell).T, fractional_coordinates=False, wrapped=False)
