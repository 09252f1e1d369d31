"""On-device neighbour lists for MD: any cell (triclinic, smaller than the cutoff), fixed capacity, no silent overflow.

Design (documented choice):

* **Verlet list with a skin.**  A list holds every directed pair ``i -> j`` with
  lattice offset ``S`` (an integer 3-vector) such that
  ``|x_j - x_i + S @ cell| < cutoff + skin`` at the time it was built.  It stays
  valid while ``2 * max_i |u_i - u_i^build| + cutoff * ||h^-1 h_build - 1||_F < skin``
  where ``u = x h^-1 h_build`` maps positions back into the reference cell (so a
  changing NPT cell is accounted for exactly; for a fixed cell ``u = x``).  The
  rebuild test is done every step, the rebuild itself only when needed.
* **Multi-image.**  Candidates are ``S = -round(f_j - f_i) + K`` for a static set
  of image offsets ``K in [-m_a, m_a]^3`` with ``m_a = ceil((cutoff+skin)/w_a + 1/2) - 1``
  (``w_a``: perpendicular width of the cell along axis a).  Large cells need only
  ``K = 0``; a cell smaller than twice the cutoff gets the images it needs, so
  the same neighbour appears once per image, exactly as ASE/mace-torch build graphs.
  The build is dense, ``O(N^2 * n_images)``, which is cheap next to an
  equivariant model up to a few thousand atoms.
* **Capacities are static; overflow is a flag.**  Each build counts the true
  number of pairs and the images the current cell needs.  The engine reads the
  running maxima at the end of a segment, grows the capacity (a new compiled
  shape) and reruns the segment from its start state.
* **Model edges are compacted every step** to the pairs within ``cutoff`` (a
  second, smaller capacity), so the model never pays for the skin.

Row-vector convention throughout: ``cell`` rows are lattice vectors, fractional
``f = x @ inv(cell)``, edge vector ``x_j - x_i + S @ cell`` (as in :mod:`jaxuft.graph`).
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class NeighborSpec(NamedTuple):
    """Static (hashable) description of a neighbour list; part of the compiled shape.

    cutoff:         model cutoff, Å
    skin:           Verlet buffer, Å
    capacity:       maximum number of directed pairs within ``cutoff + skin`` (per replica)
    model_capacity: maximum number of directed pairs within ``cutoff`` handed to the model
    images:         ``(m_a, m_b, m_c)`` image range searched along each lattice vector
    pbc:            periodicity along each lattice vector
    """

    cutoff: float
    skin: float
    capacity: int
    model_capacity: int
    images: tuple
    pbc: tuple

    @property
    def list_cutoff(self) -> float:
        return self.cutoff + self.skin


class NeighborList(NamedTuple):
    """A neighbour list of one replica (a pytree; add a leading axis for replicas).

    senders, receivers: (capacity,) int32, padding entries point to atom ``n_atoms``
    shifts:             (capacity, 3) int32 lattice offsets
    count:              () int32, number of pairs found at the last build (may exceed capacity);
                        -1 for a list never built (the next update builds it)
    images_needed:      (3,) int32, image range the cell needed at the last build
    reference_positions:(n_atoms, 3) Å, positions at the last build
    reference_cell:     (3, 3) Å, cell at the last build
    """

    senders: jax.Array
    receivers: jax.Array
    shifts: jax.Array
    count: jax.Array
    images_needed: jax.Array
    reference_positions: jax.Array
    reference_cell: jax.Array


class ModelEdges(NamedTuple):
    """Pairs within the model cutoff, compacted to ``model_capacity`` (one replica)."""

    senders: jax.Array  # (model_capacity,) int32
    receivers: jax.Array
    shifts: jax.Array  # (model_capacity, 3) float, integer values
    mask: jax.Array  # (model_capacity,) bool
    count: jax.Array  # () int32, pairs within cutoff (may exceed model_capacity)
    min_distance: jax.Array  # () Å, shortest pair in the list (inf if none)


# ---------------------------------------------------------------------------------------
# host helpers


def image_offsets(images) -> np.ndarray:
    """All integer offsets in ``[-m_a, m_a] x [-m_b, m_b] x [-m_c, m_c]``, shape (M, 3)."""
    rng = [range(-int(m), int(m) + 1) for m in images]
    return np.array(list(itertools.product(*rng)), dtype=np.int32).reshape(-1, 3)


def perpendicular_widths(cell: np.ndarray) -> np.ndarray:
    """Distance between opposite faces of the cell along each lattice vector (Å)."""
    inv = np.linalg.inv(np.asarray(cell, dtype=np.float64))
    return 1.0 / np.linalg.norm(inv, axis=0)


def images_for(cell: np.ndarray, pbc, radius: float) -> tuple:
    """Image range needed to find every pair within ``radius`` (host, numpy)."""
    if not any(pbc):
        return (0, 0, 0)
    w = perpendicular_widths(cell)
    need = np.ceil(radius / w + 0.5).astype(int) - 1
    return tuple(int(n) if p else 0 for n, p in zip(need, pbc))


def frame_cell(cell, pbc) -> np.ndarray:
    """The cell used for fractional coordinates: the identity when nothing is periodic."""
    if not any(pbc):
        return np.eye(3)
    return np.asarray(cell, dtype=np.float64)


# ---------------------------------------------------------------------------------------
# device functions (one replica; vmap for several)


def _fractional_cell(cell, spec: NeighborSpec):
    if not any(spec.pbc):
        return jnp.eye(3, dtype=cell.dtype)
    return cell


def _images_needed(inv_cell, spec: NeighborSpec):
    if not any(spec.pbc):
        return jnp.zeros(3, jnp.int32)
    widths = 1.0 / jnp.linalg.norm(inv_cell, axis=0)
    need = jnp.ceil(spec.list_cutoff / widths + 0.5).astype(jnp.int32) - 1
    return jnp.where(jnp.asarray(spec.pbc), need, 0).astype(jnp.int32)


def _compact(mask_flat, capacity: int):
    """Indices of True entries in order, padded with -1 to ``capacity``; plus the count."""
    count = jnp.sum(mask_flat, dtype=jnp.int32)
    slot = jnp.cumsum(mask_flat, dtype=jnp.int32) - 1
    target = jnp.where(mask_flat, slot, capacity)  # capacity = out of range -> dropped
    idx = jnp.full((capacity,), -1, jnp.int32).at[target].set(
        jnp.arange(mask_flat.shape[0], dtype=jnp.int32), mode="drop"
    )
    return idx, count


def build(positions, cell, spec: NeighborSpec, atom_mask=None) -> NeighborList:
    """Build the list from scratch (``positions (N, 3)`` Å, ``cell (3, 3)`` Å); ``atom_mask (N,)``:
    False for padding atoms of a mixed batch, which get no pairs."""
    positions = jax.lax.stop_gradient(positions)
    cell = jax.lax.stop_gradient(cell)
    n = positions.shape[0]
    fcell = _fractional_cell(cell, spec)
    inv = jnp.linalg.inv(fcell)
    f = positions @ inv
    df = f[None, :, :] - f[:, None, :]  # [i, j] = f_j - f_i
    pbc = jnp.asarray(spec.pbc)
    s0 = jnp.where(pbc, -jnp.round(df), 0.0)
    offsets = jnp.asarray(image_offsets(spec.images), dtype=positions.dtype)  # (M, 3)
    m = offsets.shape[0]
    frac = (df + s0)[:, :, None, :] + offsets[None, None, :, :]  # (N, N, M, 3)
    vec = frac @ fcell
    d2 = jnp.sum(vec * vec, axis=-1)
    ii = jnp.arange(n)
    self_pair = (ii[:, None] == ii[None, :])[:, :, None] & jnp.all(offsets == 0, axis=-1)[None, None, :]
    mask = (d2 < spec.list_cutoff**2) & ~self_pair
    if atom_mask is not None:
        mask = mask & (atom_mask[:, None] & atom_mask[None, :])[:, :, None]
    idx, count = _compact(mask.reshape(-1), spec.capacity)
    valid = idx >= 0
    safe = jnp.where(valid, idx, 0)
    i = safe // (n * m)
    j = (safe // m) % n
    k = safe % m
    shifts = (s0[i, j] + offsets[k]).astype(jnp.int32)
    pad = jnp.int32(n)
    return NeighborList(
        senders=jnp.where(valid, i, pad).astype(jnp.int32),
        receivers=jnp.where(valid, j, pad).astype(jnp.int32),
        shifts=jnp.where(valid[:, None], shifts, 0),
        count=count,
        images_needed=_images_needed(inv, spec),
        reference_positions=positions,
        reference_cell=cell,
    )


def needs_rebuild(positions, cell, nbrs: NeighborList, spec: NeighborSpec):
    """True when some pair within ``cutoff`` might be missing from the list."""
    positions = jax.lax.stop_gradient(positions)
    cell = jax.lax.stop_gradient(cell)
    if any(spec.pbc):
        to_ref = jnp.linalg.solve(cell, nbrs.reference_cell)  # h^-1 h_ref
        u = positions @ to_ref
        strain = jnp.sqrt(jnp.sum((to_ref - jnp.eye(3, dtype=cell.dtype)) ** 2))
    else:
        u = positions
        strain = jnp.zeros((), positions.dtype)
    disp = jnp.sqrt(jnp.max(jnp.sum((u - nbrs.reference_positions) ** 2, axis=-1)))
    moved = 2.0 * disp + spec.cutoff * strain >= spec.skin  # False for NaN: a broken replica alone never rebuilds
    return (nbrs.count < 0) | moved


def empty(positions, cell, spec: NeighborSpec) -> NeighborList:
    """A placeholder list (``count = -1``) that the first :func:`update` replaces by a real build.
    Works batched: ``positions (..., N, 3)``, ``cell (..., 3, 3)``."""
    lead = positions.shape[:-2]
    n = positions.shape[-2]
    return NeighborList(
        senders=jnp.full(lead + (spec.capacity,), n, jnp.int32),
        receivers=jnp.full(lead + (spec.capacity,), n, jnp.int32),
        shifts=jnp.zeros(lead + (spec.capacity, 3), jnp.int32),
        count=jnp.full(lead, -1, jnp.int32),
        images_needed=jnp.zeros(lead + (3,), jnp.int32),
        reference_positions=positions,
        reference_cell=cell,
    )


def update(positions, cell, nbrs: NeighborList, spec: NeighborSpec, axis_name=None, atom_mask=None) -> NeighborList:
    """Rebuild when needed.  Under ``vmap(..., axis_name=...)`` all replicas rebuild together
    when any of them needs it, so the rebuild stays a real branch (not a select) on every backend."""
    need = needs_rebuild(positions, cell, nbrs, spec)
    if axis_name is not None:
        need = jax.lax.psum(need.astype(jnp.int32), axis_name) > 0
    return jax.lax.cond(need, lambda: build(positions, cell, spec, atom_mask), lambda: nbrs)


def overflowed(nbrs: NeighborList, spec: NeighborSpec):
    """True when the last build found more pairs or needed more images than the spec allows."""
    return (nbrs.count > spec.capacity) | jnp.any(nbrs.images_needed > jnp.asarray(spec.images))


def model_edges(positions, cell, nbrs: NeighborList, spec: NeighborSpec) -> ModelEdges:
    """Pairs of the list within ``cutoff`` now, compacted to ``spec.model_capacity``."""
    pad = positions.shape[0]
    pos = jax.lax.stop_gradient(positions)
    pos_pad = jnp.concatenate([pos, jnp.zeros((1, 3), pos.dtype)])
    shifts = nbrs.shifts.astype(pos.dtype)
    vec = pos_pad[nbrs.receivers] - pos_pad[nbrs.senders] + shifts @ jax.lax.stop_gradient(cell)
    d2 = jnp.sum(vec * vec, axis=-1)
    valid = nbrs.senders < pad
    inside = valid & (d2 < spec.cutoff**2)
    idx, count = _compact(inside, spec.model_capacity)
    ok = idx >= 0
    safe = jnp.where(ok, idx, 0)
    min_d2 = jnp.min(jnp.where(valid, d2, jnp.inf))
    return ModelEdges(
        senders=jnp.where(ok, nbrs.senders[safe], pad).astype(jnp.int32),
        receivers=jnp.where(ok, nbrs.receivers[safe], pad).astype(jnp.int32),
        shifts=jnp.where(ok[:, None], shifts[safe], 0.0),
        mask=ok,
        count=count,
        min_distance=jnp.sqrt(min_d2),
    )


def pad_to(nbrs: NeighborList, capacity: int, n_atoms: int) -> NeighborList:
    """Re-pad a (batched or single) list to a larger capacity; the pairs are unchanged."""
    cur = nbrs.senders.shape[-1]
    if capacity < cur:
        raise ValueError("capacity can only grow")
    extra = capacity - cur
    lead = nbrs.senders.shape[:-1]

    def grow(a, fill):
        pad_shape = lead + (extra,) + a.shape[len(lead) + 1 :]
        return jnp.concatenate([a, jnp.full(pad_shape, fill, a.dtype)], axis=len(lead))

    return nbrs._replace(
        senders=grow(nbrs.senders, n_atoms),
        receivers=grow(nbrs.receivers, n_atoms),
        shifts=grow(nbrs.shifts, 0),
    )


def capacity_for(count: int, headroom: float) -> int:
    """A capacity with ``headroom`` (e.g. 1.25) above ``count``, rounded up to a bucket
    (``m * 2**k``, ``m`` in 8..15) so similar structures share compiled shapes."""
    from ..graph import bucket_size

    return bucket_size(int(math.ceil(max(count, 1) * headroom)) + 8)


def model_capacity_for(count: int, headroom: float, granularity: int = 128) -> int:
    """The model-edge capacity: ``headroom`` above ``count``, rounded up to ``granularity``.

    Every padded model edge costs a full edge evaluation of the model in every step, so
    this is sized tightly (the Verlet list's own skin and headroom already bound how far
    the count within the cutoff can move; an overflow only regrows and reruns a chunk).
    """
    need = int(math.ceil(max(count, 1) * headroom)) + 8
    return -(-need // granularity) * granularity
