"""Padded, static-shape atomic graphs: the data every model function consumes.

A :class:`Graph` holds one or more structures (``n_graphs``) with all arrays
padded to capacity buckets so that jitted functions compile once per bucket,
not once per structure.  Padding follows the jraph convention: padded atoms
belong to the last graph slot (a padding graph whose ``graph_mask`` is False)
and padded edges connect the last padded atom to itself.

Conventions (shared with mace-torch and ASE):
  edge e goes from ``senders[e]`` (i) to ``receivers[e]`` (j) with vector
  ``r_ij = positions[j] - positions[i] + shifts[e] @ cell[graph_of(i)]``  (Å)
  and messages are summed at the receiver.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Graph(NamedTuple):
    """A padded batch of atomic structures (a JAX pytree).

    positions:  (n_nodes, 3) Å, cartesian
    cell:       (n_graphs, 3, 3) Å, rows are lattice vectors (zeros if non-periodic)
    species:    (n_nodes,) int, index into the model's element list
    senders:    (n_edges,) int
    receivers:  (n_edges,) int
    shifts:     (n_edges, 3) integer lattice offsets (stored as float)
    node_graph: (n_nodes,) int, the graph each atom belongs to
    node_mask:  (n_nodes,) bool, False for padding atoms
    edge_mask:  (n_edges,) bool, False for padding edges
    graph_mask: (n_graphs,) bool, False for padding graphs
    """

    positions: jax.Array
    cell: jax.Array
    species: jax.Array
    senders: jax.Array
    receivers: jax.Array
    shifts: jax.Array
    node_graph: jax.Array
    node_mask: jax.Array
    edge_mask: jax.Array
    graph_mask: jax.Array

    @property
    def n_nodes(self) -> int:
        return self.positions.shape[0]

    @property
    def n_edges(self) -> int:
        return self.senders.shape[0]

    @property
    def n_graphs(self) -> int:
        return self.cell.shape[0]


def edge_vectors(graph: Graph, positions=None, cell=None) -> jax.Array:
    """Edge vectors ``r_j - r_i + S @ cell`` (n_edges, 3) Å.

    ``positions``/``cell`` override the graph's (used to differentiate with
    respect to positions and strain).  Padding edges get a harmless unit-free
    dummy vector far outside any cutoff so that no NaN reaches gradients.
    """
    pos = graph.positions if positions is None else positions
    cel = graph.cell if cell is None else cell
    edge_cell = cel[graph.node_graph[graph.senders]]  # (E, 3, 3)
    offset = jnp.einsum("ei,eij->ej", graph.shifts.astype(pos.dtype), edge_cell)
    vec = pos[graph.receivers] - pos[graph.senders] + offset
    dummy = jnp.zeros_like(vec).at[:, 0].set(1.0e3)
    return jnp.where(graph.edge_mask[:, None], vec, dummy)


def bucket_size(n: int, minimum: int = 8) -> int:
    """Round ``n`` up to a capacity bucket (at most ~12.5 % padding).

    Buckets are ``m * 2**k`` with ``m`` in 8..15, so a stream of structures of
    similar size maps onto a handful of compiled shapes.
    """
    n = max(int(n), minimum)
    k = max(n.bit_length() - 4, 0)
    step = 1 << k
    return -(-n // step) * step


def reuse_or_grow(used: set, count: int, multiple: int = 1, headroom: float = 1.0, max_waste: float = 1.5) -> int:
    """A padded size for ``count`` that prefers one already compiled (``used``, updated in place).

    The smallest size in ``used`` that holds ``count`` with at most ``max_waste`` (x) of it;
    otherwise a new one: ``count``'s bucket (:func:`bucket_size`) the first time, and
    ``count * headroom`` rounded up to a multiple of 8 after that (a stream whose counts drift
    upwards then settles on few shapes).  Always a multiple of ``multiple``.  One compilation
    of a large program costs seconds, so padding a few per cent more is usually cheaper.
    """
    count = max(int(count), 1)
    fits = [c for c in used if count <= c <= max_waste * count]
    if fits:
        return min(fits)
    want = bucket_size(count) if not used or headroom <= 1.0 else -(-int(np.ceil(count * headroom)) // 8) * 8
    size = -(-want // multiple) * multiple
    used.add(size)
    return size


def pad_graph_arrays(
    positions: np.ndarray,
    cells: np.ndarray,
    species: np.ndarray,
    senders: np.ndarray,
    receivers: np.ndarray,
    shifts: np.ndarray,
    node_graph: np.ndarray,
    n_node_capacity: int,
    n_edge_capacity: int,
    n_graph_capacity: int,
    dtype=np.float32,
) -> Graph:
    """Pad concatenated host arrays to fixed capacities and return a :class:`Graph`.

    The capacities must leave room for one padding atom and one padding graph.
    """
    n_nodes, n_edges, n_graphs = len(positions), len(senders), len(cells)
    if n_nodes >= n_node_capacity or n_graphs >= n_graph_capacity or n_edges > n_edge_capacity:
        raise ValueError(
            f"capacity too small: nodes {n_nodes}/{n_node_capacity} (need one spare), "
            f"edges {n_edges}/{n_edge_capacity}, graphs {n_graphs}/{n_graph_capacity} (need one spare)"
        )
    pn, pe, pg = n_node_capacity - n_nodes, n_edge_capacity - n_edges, n_graph_capacity - n_graphs
    pad_node = n_node_capacity - 1
    pos = np.concatenate([positions, np.zeros((pn, 3))]).astype(dtype)
    cel = np.concatenate([cells, np.zeros((pg, 3, 3))]).astype(dtype)
    spe = np.concatenate([species, np.zeros(pn, dtype=species.dtype)]).astype(np.int32)
    snd = np.concatenate([senders, np.full(pe, pad_node)]).astype(np.int32)
    rcv = np.concatenate([receivers, np.full(pe, pad_node)]).astype(np.int32)
    shf = np.concatenate([shifts, np.zeros((pe, 3))]).astype(dtype)
    ngr = np.concatenate([node_graph, np.full(pn, n_graph_capacity - 1)]).astype(np.int32)
    return Graph(
        positions=jnp.asarray(pos),
        cell=jnp.asarray(cel),
        species=jnp.asarray(spe),
        senders=jnp.asarray(snd),
        receivers=jnp.asarray(rcv),
        shifts=jnp.asarray(shf),
        node_graph=jnp.asarray(ngr),
        node_mask=jnp.asarray(np.arange(n_node_capacity) < n_nodes),
        edge_mask=jnp.asarray(np.arange(n_edge_capacity) < n_edges),
        graph_mask=jnp.asarray(np.arange(n_graph_capacity) < n_graphs),
    )


def graph_sum(values: jax.Array, graph: Graph) -> jax.Array:
    """Sum per-atom ``values`` (n_nodes, ...) into per-graph totals (n_graphs, ...)."""
    values = jnp.where(
        graph.node_mask.reshape((-1,) + (1,) * (values.ndim - 1)), values, 0
    )
    return jax.ops.segment_sum(values, graph.node_graph, num_segments=graph.n_graphs)
