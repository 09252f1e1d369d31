"""SOAP power spectrum in JAX, numerically equal to dscribe 2.1's ``SOAP`` (GTO radial basis).

The same vectors as ``dscribe.descriptors.SOAP(r_cut, n_max, l_max, sigma, species,
periodic, rbf="gto")`` with its defaults (no weighting, ``average="off"``, no
compression), computed on device and jit-compiled once per capacity bucket.

The math (written out here, implemented independently of dscribe's C++):

* atomic density of species ``s`` around centre ``i``: Gaussians of width ``sigma``
  (``eta = 1 / (2 sigma^2)``) on every atom ``j`` of species ``s`` (periodic
  images included, the centre itself included) with ``|r_ij| <= r_cut + pad``,
  ``pad = sigma * sqrt(-2 ln 1e-3)`` (the Gaussians have decayed to 1e-3 there);
* primitive radial functions ``r^l exp(-alpha_{lk} r^2)``, ``k = 1..n_max``, with
  ``alpha_{lk} = -ln(1e-3 / a_k^l) / a_k^2`` and ``a_k`` evenly spaced in ``[1, r_cut]``
  Å, Löwdin-orthonormalised on ``[0, inf)``: ``beta_l = S_l^{-1/2}``,
  ``S_l[k, k'] = Gamma(l + 3/2) / (2 (alpha_k + alpha_k')^{l + 3/2})``;
* projecting a Gaussian on ``r^l exp(-alpha r^2) Y_lm`` analytically gives, per
  neighbour at ``r``, ``pi^{3/2} eta^{-3/2} (1 + alpha/eta)^{-(l + 3/2)}
  exp(-alpha r^2 / (1 + alpha/eta)) R_lm(r)`` with ``R_lm = r^l Y_lm`` the real
  regular solid harmonics (orthonormal ``Y_lm``);
  ``c^{s}_{nlm} = sum_k beta_l[n, k] * (that, summed over neighbours of species s)``;
* power spectrum ``p^{s s'}_{n n' l} = pi sqrt(8 / (2l + 1)) sum_m c^s_{nlm} c^{s'}_{n'lm}``.

Feature order (dscribe's): species pairs ``s <= s'`` (species sorted by atomic
number), within a pair ``l = 0..l_max``, within ``l`` the radial pairs: ``n <= n'``
(row-major upper triangle) when ``s == s'``, all ``(n, n')`` otherwise.
``n_features = (S n_max)(S n_max + 1)/2 (l_max + 1)``.

Shapes: ``SOAP.compute(atoms)`` -> ``(n_atoms, n_features)``; a list of structures
gives all their atoms stacked in order.  Pure kernels: :func:`soap_from_species_slots`
(per-species neighbour slots from :func:`species_slot_layout`, used by ``compute``),
:func:`soap_from_edges` (a flat edge list) and :func:`graph_descriptor_fn` (from a padded
Graph, for the live monitor).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms
from ase.data import atomic_numbers as _symbol_to_z
from ase.data import chemical_symbols

from ..graph import reuse_or_grow
from ..neighbors import neighbor_list

try:  # vesin: the host neighbour search (a declared dependency; ASE's neighbour list if it is missing)
    import vesin as _vesin
except ImportError:  # pragma: no cover - only on platforms without a vesin wheel
    _vesin = None
#: whether :meth:`SOAP.edges` uses vesin (False: ASE's neighbour list, the same pairs, slower)
_HAVE_VESIN = _vesin is not None

#: the Gaussians' decay threshold that fixes both the cutoff padding and the basis exponents
_THRESHOLD = 1.0e-3


def _as_atomic_numbers(species) -> tuple[int, ...]:
    if isinstance(species, (str, int, np.integer)):
        raise ValueError("species must be an iterable of chemical symbols or atomic numbers, e.g. ['H', 'O']")
    out = set()
    for s in species:
        if isinstance(s, (int, np.integer)):
            z = int(s)
        elif isinstance(s, str) and s in _symbol_to_z:
            z = _symbol_to_z[s]
        else:
            raise ValueError(f"unknown chemical species {s!r}")
        if z <= 0:
            raise ValueError(f"atomic numbers must be positive, got {z}")
        out.add(z)
    if not out:
        raise ValueError("species must not be empty")
    return tuple(sorted(out))


def gto_basis(r_cut: float, n_max: int, l_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Exponents ``alphas (l_max+1, n_max)`` (1/Å²) and Löwdin coefficients ``betas (l_max+1, n_max, n_max)``.

    Host float64.  ``betas[l] = S_l^{-1/2}`` is computed as ``sqrtm(inv(S_l))`` (the
    same LAPACK route as dscribe, so that the ill-conditioned overlap for large
    ``n_max`` yields the same coefficients to rounding).
    """
    from scipy.linalg import inv, sqrtm
    from scipy.special import gamma

    a = np.linspace(1.0, r_cut, n_max)
    alphas = np.zeros((l_max + 1, n_max))
    betas = np.zeros((l_max + 1, n_max, n_max))
    for l in range(l_max + 1):
        al = -np.log(_THRESHOLD / np.power(a, l)) / a**2
        s = al[:, None] + al[None, :]
        overlap = 0.5 * gamma(l + 1.5) * s ** (-l - 1.5)
        b = sqrtm(inv(overlap))
        if np.iscomplexobj(b):
            if np.max(np.abs(b.imag)) > 1e-8 * np.max(np.abs(b.real)):
                raise ValueError(
                    f"the GTO overlap matrix for l={l} is not positive definite in floating point; "
                    "lower n_max or raise r_cut"
                )
            b = b.real
        alphas[l] = al
        betas[l] = b
    return alphas, betas


def real_solid_harmonics(vectors: jax.Array, l_max: int, axis: int = -1) -> jax.Array:
    """Real regular solid harmonics ``r^l Y_lm`` (orthonormal ``Y_lm``), ``(..., (l_max+1)^2)``.

    Order within ``l``: ``m = -l..l`` (sine-like for ``m < 0``).  Polynomials, so
    well defined at ``r = 0``.  ``axis``: where the ``(l, m)`` axis goes in the result
    (stacking it in place is much cheaper on CPU than moving it afterwards).  Built by the standard recursions for Racah-normalised
    solid harmonics (``S_lm = sqrt(4 pi / (2l+1)) r^l Y_lm``), then rescaled.
    """
    x, y, z = vectors[..., 0], vectors[..., 1], vectors[..., 2]
    r2 = x * x + y * y + z * z
    S: dict[tuple[int, int], jax.Array] = {(0, 0): jnp.ones_like(x)}
    for l in range(l_max):
        f = float(np.sqrt((2.0 if l == 0 else 1.0) * (2 * l + 1) / (2 * l + 2)))
        if l == 0:
            S[(1, 1)] = f * x
            S[(1, -1)] = f * y
        else:
            S[(l + 1, l + 1)] = f * (x * S[(l, l)] - y * S[(l, -l)])
            S[(l + 1, -l - 1)] = f * (y * S[(l, l)] + x * S[(l, -l)])
        for m in range(-l, l + 1):
            val = (2 * l + 1) * z * S[(l, m)]
            if abs(m) < l:
                val = val - float(np.sqrt((l + m) * (l - m))) * r2 * S[(l - 1, m)]
            S[(l + 1, m)] = val / float(np.sqrt((l + m + 1) * (l - m + 1)))
    out = [S[(l, m)] * float(np.sqrt((2 * l + 1) / (4 * np.pi))) for l in range(l_max + 1) for m in range(-l, l + 1)]
    return jnp.stack(out, axis=axis)


def _feature_index(n_species: int, n_max: int, l_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(l, a, b) of every output feature in dscribe's order; ``a = s n_max + n``."""
    ls, aa, bb = [], [], []
    for s in range(n_species):
        for t in range(s, n_species):
            for l in range(l_max + 1):
                for n in range(n_max):
                    for m in range(n if s == t else 0, n_max):
                        ls.append(l)
                        aa.append(s * n_max + n)
                        bb.append(t * n_max + m)
    return np.asarray(ls), np.asarray(aa), np.asarray(bb)


def _contributions(consts: dict, displacements: jax.Array, mask: jax.Array, l_max: int) -> jax.Array:
    """Per neighbour ``exp(-alpha' r^2) R_lm(r)`` for every ``(lm, k)``: ``(..., LM, K)`` (0 where masked).

    The exponentials are taken on a flat ``(..., L K)`` last axis and expanded by one static
    column gather: XLA's CPU loops vectorise the last axis only, and ``(L, K) = (7, 8)`` last
    axes made the exponentials ~4x slower."""
    lm_n = (l_max + 1) ** 2
    k = consts["aoa"].shape[-1]
    l_of_lm = np.repeat(np.arange(l_max + 1), 2 * np.arange(l_max + 1) + 1)
    r2 = jnp.sum(displacements * displacements, axis=-1)
    sh = real_solid_harmonics(displacements, l_max)  # (..., LM)
    radial = jnp.exp(r2[..., None] * consts["aoa"].astype(displacements.dtype).reshape(-1))  # (..., L K)
    radial = jnp.where(mask[..., None], radial, 0.0)
    cols = (l_of_lm[:, None] * k + np.arange(k)[None, :]).reshape(-1)
    lms = np.repeat(np.arange(lm_n), k)
    return (radial[..., cols] * sh[..., lms]).reshape(r2.shape + (lm_n, k))


def _power_spectrum(consts: dict, density: jax.Array, n_species: int, n_max: int, l_max: int) -> jax.Array:
    """Features ``(C, n_features)`` from neighbour densities ``(C, n_species, LM, K)`` (GTO primitives)."""
    n_centers = density.shape[0]
    l_of_lm = np.repeat(np.arange(l_max + 1), 2 * np.arange(l_max + 1) + 1)
    boa = consts["boa"].astype(density.dtype)[l_of_lm]  # (LM, n, k)
    coeff = jnp.einsum("csmk,mnk->csnm", density, boa).reshape(n_centers, n_species * n_max, (l_max + 1) ** 2)
    blocks = []
    for l in range(l_max + 1):
        c = coeff[:, :, l * l : (l + 1) * (l + 1)]
        blocks.append(jnp.einsum("iam,ibm->iab", c, c))
    power = jnp.stack(blocks, axis=1) * consts["prel"].astype(density.dtype)[None, :, None, None]  # (C, L, SK, SK)
    return power.reshape(n_centers, -1)[:, consts["feat_flat"]]


def soap_from_edges(
    consts: dict,
    centers: jax.Array,
    neighbor_species: jax.Array,
    displacements: jax.Array,
    edge_mask: jax.Array,
    n_centers: int,
    n_species: int,
    n_max: int,
    l_max: int,
) -> jax.Array:
    """The SOAP power spectrum of ``n_centers`` centres from a flat list of neighbour edges (pure JAX).

    consts:            arrays from :meth:`SOAP.constants` (``aoa``, ``boa``, ``prel``, ``feat_flat``)
    centers:           (E,) int, the centre each edge belongs to
    neighbor_species:  (E,) int, SOAP species index of the neighbour (0..n_species-1)
    displacements:     (E, 3) Å, neighbour minus centre (the centre itself: a zero vector)
    edge_mask:         (E,) bool; masked edges contribute nothing
    Returns ``(n_centers, n_features)``.  (:func:`soap_from_species_slots` is faster on CPU.)
    """
    contrib = _contributions(consts, displacements, edge_mask, l_max)  # (E, LM, K)
    seg = centers * n_species + neighbor_species
    dens = jax.ops.segment_sum(contrib, seg, num_segments=n_centers * n_species)
    dens = dens.reshape((n_centers, n_species) + dens.shape[1:])
    return _power_spectrum(consts, dens, n_species, n_max, l_max)


# ---------------------------------------------------------------- species-slot kernel (what ``compute`` runs)
#
# Layout: centres are the LAST (vectorised) axis of every array, from the neighbour slots to the
# features; the neighbour slots of each species occupy a contiguous range of the first axis
# (``first[s] .. first[s+1]``, runtime values, so frames whose neighbour counts differ share one
# compiled program).  XLA's CPU loops vectorise the last axis, so each step below is a plain
# multiply-add over all centres at once: no one-hot product over species, no gathers in the hot
# loop.  The power spectrum is outer products over the centre axis too, and one constant ROW gather
# (each row a contiguous run of centres) puts the features in dscribe's order: ``(n_features, B)``.
# :meth:`SOAP.compute` hands that out as its transposed host view ``(n_atoms, n_features)``, because
# XLA:CPU transposes are slow (a centre-major output, or a transpose at the end, cost 3-4x the whole
# power-spectrum stage: benchmarks/RESULTS.md, SOAP 2026-12-01 19:50).

#: neighbour slots per step of the density loop (each species' range is padded to a multiple of it)
_SLOT_STEP = 2


class SlotCapacity:
    """The compiled shapes (neighbour slots ``J``, centres ``B``) used so far, so that frames of one
    system share one compiled program.

    The largest count of one species around any centre moves from frame to frame (104-130
    slots over the 50 frames of the paper's FT5.xyz: five capacity buckets, five ~2 s
    compilations for 0.7 s of work).  A count reuses the smallest shape already used that
    holds it, if that wastes at most ``max_waste`` (x); otherwise the first shape is the
    count's bucket and each new one after it leaves ``headroom`` (x) above the count
    (:func:`jaxuft.graph.reuse_or_grow`), so a stream of similar frames settles on one or two
    shapes (FT5.xyz: 120 and 144 slots).  One compilation (~2 s) costs as much as ~170 paper
    frames of work, and the padding of a shared shape a few per cent of a frame.
    """

    def __init__(self, headroom: float = 1.125, max_waste: float = 1.5):
        self.headroom, self.max_waste = float(headroom), float(max_waste)
        self.slots: set[int] = set()
        self.centers: set[int] = set()

    def slots_for(self, count: int) -> int:
        return reuse_or_grow(self.slots, count, _SLOT_STEP, self.headroom, self.max_waste)

    def centers_for(self, count: int, multiple: int) -> int:
        return reuse_or_grow(self.centers, count, multiple, self.headroom, self.max_waste)


@functools.lru_cache(maxsize=None)
def _shared_capacity(n_max: int, l_max: int, n_species: int, dtype: str) -> SlotCapacity:
    """One :class:`SlotCapacity` per kind of compiled program (the programs are cached per process
    too), so that a new :class:`SOAP` with the same settings reuses the shapes of earlier ones."""
    return SlotCapacity()


def species_slot_layout(centers, species, displacements, n_centers: int, n_species: int, dtype=np.float64,
                        center_multiple: int = 8, capacity: "SlotCapacity | None" = None):
    """Host arrays for :func:`soap_from_species_slots` from neighbour edges (any order).

    centers, species: (E,) int; displacements: (E, 3).  Returns ``first`` ``(n_species+1,)``
    int32 (species ``s`` owns slots ``first[s]:first[s+1]``, each range a multiple of
    ``_SLOT_STEP``), ``disp`` ``(J, 3, B)`` and ``mask`` ``(J, B)``; ``J`` and ``B`` (centres,
    a multiple of ``center_multiple``) are capacity buckets, the compiled shape (chosen by
    ``capacity``, which remembers the shapes already used; a fresh one if None).  Within one
    (centre, species) group the edges keep their input order.
    """
    centers = np.asarray(centers).astype(np.int32, copy=False)
    key = centers * np.int32(n_species) + np.asarray(species).astype(np.int32, copy=False)
    e = key.size
    counts = np.bincount(key, minlength=n_centers * n_species)
    per = counts.reshape(n_centers, n_species).max(axis=0) if n_centers else np.zeros(n_species, np.int64)
    caps = -(-per // _SLOT_STEP) * _SLOT_STEP
    first = np.concatenate([[0], np.cumsum(caps)]).astype(np.int32)
    start = (np.cumsum(counts) - counts).astype(np.int32)
    rank = np.arange(e, dtype=np.int32)
    if e and np.any(key[1:] < key[:-1]):
        # the rank of each edge within its (centre, species) group, without moving the edges:
        # a stable argsort (numpy's is a radix sort, O(E), for 16-bit keys), then one int scatter
        order = np.argsort(key.astype(np.uint16) if n_centers * n_species <= 1 << 16 else key, kind="stable")
        rank[order] = rank - start[key[order]]
    else:
        rank -= start[key]
    slot = first[key % np.int32(n_species)] + rank
    capacity = capacity if capacity is not None else SlotCapacity()
    n_slots = capacity.slots_for(int(first[-1]))
    n_pad = capacity.centers_for(n_centers, center_multiple)
    slot = slot.astype(np.int64)  # flat indices in 64 bits: J * 3 * B passes 2**31 near 5 M atoms per call
    mask = np.zeros((n_slots, n_pad), bool)
    mask.reshape(-1)[slot * n_pad + centers] = True
    disp = np.zeros((n_slots, 3, n_pad), dtype)
    flat, cell = disp.reshape(-1), slot * (3 * n_pad) + centers  # 1-D scatters (a 2-D fancy index is 3x slower)
    d = np.asarray(displacements)
    for c in range(3):
        flat[cell + c * n_pad] = d[:, c]
    return first, disp, mask


def species_slot_coefficients(consts: dict, disp: jax.Array, mask: jax.Array, first: jax.Array, n_max: int,
                              l_max: int):
    """Expansion coefficients from species slots: one ``(2l+1, S n_max, B)`` array per ``l`` (pure JAX).

    ``disp (J, 3, B)``, ``mask (J, B)`` and ``first (S+1,)`` as from :func:`species_slot_layout`;
    row ``s n_max + n`` of the middle axis is species ``s``, radial function ``n``."""
    barrier = jax.lax.optimization_barrier
    n_l, k = l_max + 1, consts["aoa"].shape[-1]
    n_species = first.shape[0] - 1
    b = disp.shape[-1]
    sh = real_solid_harmonics(jnp.moveaxis(disp, 1, -1), l_max, axis=1)  # (J, LM, B), stacked in place
    # |r|^2 on its own first: fused into the exponentials, XLA:CPU redid the 3-term reduction for
    # each of the L K exponents, unvectorised (the stage took 7.7 ms instead of 4.9 on the paper frame)
    r2 = barrier(jnp.sum(disp * disp, axis=1))
    radial = jnp.exp(consts["aoa"].astype(disp.dtype).reshape(-1)[None, :, None] * r2[:, None, :])  # (J, L K, B)
    sh, radial = barrier((sh, jnp.where(mask[:, None, :], radial, 0.0)))
    l_of_lm = np.repeat(np.arange(n_l), 2 * np.arange(n_l) + 1)

    def species_density(s):  # sum over species s's slots of R_lm(r) exp(-alpha' r^2): (LM, K, B)
        lo, hi = first[s], first[s + 1]

        def add(i, acc):
            for q in range(_SLOT_STEP):
                j = lo + i * _SLOT_STEP + q
                shj = jax.lax.dynamic_index_in_dim(sh, j, 0, keepdims=False)
                rj = jax.lax.dynamic_index_in_dim(radial, j, 0, keepdims=False).reshape(n_l, k, b)[l_of_lm]
                acc = acc + shj[:, None, :] * rj
            return acc

        return jax.lax.fori_loop(0, (hi - lo) // _SLOT_STEP, add, jnp.zeros((n_l * n_l, k, b), disp.dtype))

    # one independent loop per species (not one lax.map): XLA:CPU's runtime runs independent loops
    # side by side on its threads; 2.35-2.7 ms against 2.9-3.7 ms for the density sums of the paper frame
    dens = barrier(jnp.stack([species_density(s) for s in range(n_species)]))
    boa = consts["boa"].astype(disp.dtype)
    out = []
    for l in range(n_l):
        d = dens[:, l * l : (l + 1) * (l + 1)]  # (S, M, K, B)
        c = sum(d[:, :, None, q, :] * boa[l][None, None, :, q, None] for q in range(k))  # (S, M, n, B)
        out.append(jnp.transpose(c, (1, 0, 2, 3)).reshape(2 * l + 1, n_species * n_max, b))
    return out


def power_spectrum_from_coefficients(consts: dict, coefficients) -> jax.Array:
    """Features ``(n_features, B)`` in dscribe's order (centres last) from :func:`species_slot_coefficients`.

    ``p_l[a, b] = prel_l sum_m c_{a,lm} c_{b,lm}`` for all ``l`` and species-radial pairs ``a, b``
    (outer products over the centre axis), then the rows dscribe keeps, in its order."""
    blocks = []
    for l, c in enumerate(coefficients):  # (2l+1, S n, B)
        p = sum(c[m, :, None, :] * c[m, None, :, :] for m in range(c.shape[0]))
        blocks.append(p * consts["prel"].astype(c.dtype)[l])
    power = jnp.stack(blocks)  # (L, S n, S n, B)
    return power.reshape(-1, power.shape[-1])[consts["feat_flat"]]


def soap_from_species_slots(consts: dict, disp: jax.Array, mask: jax.Array, first: jax.Array, n_max: int,
                            l_max: int) -> jax.Array:
    """The SOAP power spectrum ``(B, n_features)`` from species slots (pure JAX; see :func:`species_slot_layout`).

    :meth:`SOAP.compute` runs the two stages (coefficients, power spectrum) as separate
    compiled programs (in one program XLA:CPU fuses the outer products into the final gather
    and loses their vectorisation) and transposes on the host for free (a view); this
    function's transpose at the end is a real one."""
    return power_spectrum_from_coefficients(consts, species_slot_coefficients(consts, disp, mask, first, n_max, l_max)).T


@functools.lru_cache(maxsize=None)
def _compiled_slot_stages(n_max: int, l_max: int):
    """The two jitted stages of :meth:`SOAP.compute`: coefficients, then features ``(n_features, B)``."""
    return (jax.jit(functools.partial(species_slot_coefficients, n_max=n_max, l_max=l_max)),
            jax.jit(power_spectrum_from_coefficients))


def _pairs_vesin(pos, cell, pbc, cutoff):
    """All ``(i, j, r_j + S cell - r_i)`` with distance <= cutoff, the self pair included, from vesin.

    vesin (C++ cell lists; any cell, also smaller than the cutoff sphere) is 3-4x faster than a
    scipy k-d tree over the periodic images here.  It searches the half list (each unordered
    pair once, 0.7 ms against 1.2 for the full list on the paper frame) and the reverse pairs
    are its mirror image.  Order: the self pairs, the half list, its mirror (the slot layout
    takes any order)."""
    n = len(pos)
    box = cell if pbc.any() else np.zeros((3, 3))
    # a hair beyond the cutoff, then the exact test (distance <= cutoff, like dscribe)
    found = _vesin.NeighborList(cutoff=float(np.nextafter(cutoff, np.inf)), full_list=False)
    i, j, d = found.compute(points=pos, box=box, periodic=[bool(p) for p in pbc], quantities="ijD")
    keep = np.einsum("ek,ek->e", d, d) <= cutoff * cutoff
    if not keep.all():
        i, j, d = i[keep], j[keep], d[keep]
    i, j, self_idx = i.astype(np.int64), j.astype(np.int64), np.arange(n)
    return (np.concatenate([self_idx, i, j]), np.concatenate([self_idx, j, i]),
            np.concatenate([np.zeros((n, 3)), d, -d]))


def _pairs_ase(atoms, pos, cell, pbc, cutoff):
    """The same pairs from ASE's neighbour list (numpy; the fallback where vesin cannot be imported)."""
    view = Atoms(numbers=atoms.get_atomic_numbers(), positions=pos, cell=cell if pbc.any() else None, pbc=pbc)
    i, j, S, d = neighbor_list(view, np.nextafter(cutoff, np.inf))
    keep = d <= cutoff
    i, j, S = i[keep], j[keep], S[keep]
    disp = pos[j] - pos[i] + S @ cell
    n = len(pos)
    return (
        np.concatenate([np.arange(n), i]),
        np.concatenate([np.arange(n), j]),
        np.concatenate([np.zeros((n, 3)), disp]),
    )


class SOAP:
    """Smooth Overlap of Atomic Positions, equal to dscribe's ``SOAP`` (GTO basis) with the same settings.

    ``SOAP(species, r_cut, n_max, l_max, sigma=1.0, periodic=False, dtype="float64")``;
    ``r_cut`` (Å), ``sigma`` (Å).  ``species``: chemical symbols or atomic numbers
    (sorted and de-duplicated, as dscribe does).  ``periodic=True`` uses the
    periodic images along the axes where ``atoms.pbc`` is True (every image within
    the cutoff, also for cells smaller than the cutoff sphere).

    ``dtype`` "float64" (default; dscribe parity, enables JAX x64) or "float32"
    (faster on accelerators; the orthonormalised basis is ill-conditioned for large
    ``n_max``, so expect ~1e-4 relative differences).

    ``compute`` finds neighbours on the host (vesin's cell lists), groups frames into calls of
    at most ``max_edges_per_call`` neighbour pairs (default 16384: about one 200-atom frame;
    larger calls were not faster and hold more memory), and runs jitted programs on padded
    shapes (centres and neighbour slots; see :func:`species_slot_layout`).  An instance
    remembers the shapes compiled for its settings (shared with other instances of the same
    ``n_max``, ``l_max``, species count and dtype) and reuses one that holds a new frame (see
    :class:`SlotCapacity`): the frames of one system need one or two compilations (~2 s each
    on a CPU).
    """

    def __init__(
        self,
        species,
        r_cut: float,
        n_max: int,
        l_max: int,
        sigma: float = 1.0,
        periodic: bool = False,
        dtype: str = "float64",
        max_edges_per_call: int = 1 << 14,
    ):
        from ..potential import resolve_dtype

        if r_cut is None or r_cut <= 1.0:
            raise ValueError("r_cut must be larger than 1 Å for the GTO radial basis")
        if int(n_max) < 1:
            raise ValueError(f"n_max must be at least 1, got {n_max}")
        if not 0 <= int(l_max) <= 20:
            raise ValueError(f"l_max must be in 0..20, got {l_max}")
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.atomic_numbers = _as_atomic_numbers(species)
        self.species = tuple(chemical_symbols[z] for z in self.atomic_numbers)
        self.r_cut = float(r_cut)
        self.n_max = int(n_max)
        self.l_max = int(l_max)
        self.sigma = float(sigma)
        self.periodic = bool(periodic)
        self.dtype = resolve_dtype(dtype)
        self.max_edges_per_call = int(max_edges_per_call)
        # the compiled shapes used so far, shared by instances that share compiled programs
        self._capacity = _shared_capacity(self.n_max, self.l_max, self.n_species, np.dtype(self.dtype).name)
        self.eta = 1.0 / (2.0 * self.sigma**2)
        self.cutoff_padding = self.sigma * np.sqrt(-2.0 * np.log(_THRESHOLD))
        self.cutoff = self.r_cut + self.cutoff_padding
        self.alphas, self.betas = gto_basis(self.r_cut, self.n_max, self.l_max)
        self._consts_np = self._make_constants()
        self._lookup = np.full(max(self.atomic_numbers) + 1, -1, dtype=np.int64)
        self._lookup[list(self.atomic_numbers)] = np.arange(len(self.atomic_numbers))

    # ---- settings -------------------------------------------------------------------
    @property
    def n_species(self) -> int:
        return len(self.atomic_numbers)

    @property
    def n_features(self) -> int:
        k = self.n_species * self.n_max
        return k * (k + 1) // 2 * (self.l_max + 1)

    def get_number_of_features(self) -> int:  # dscribe's name
        return self.n_features

    def settings(self) -> dict:
        """JSON-serialisable settings (enough to rebuild an identical descriptor)."""
        return {
            "kind": "soap",
            "species": list(self.species),
            "r_cut": self.r_cut,
            "n_max": self.n_max,
            "l_max": self.l_max,
            "sigma": self.sigma,
            "periodic": self.periodic,
            "dtype": self.dtype.name,
        }

    def _make_constants(self) -> dict:
        l = np.arange(self.l_max + 1)[:, None]
        shrink = 1.0 / (1.0 + self.alphas / self.eta)  # (L, K)
        aoa = -self.alphas * shrink
        # pi^{3/2} eta^{-3/2} (1+alpha/eta)^{-(l+3/2)} beta_l[n, k]
        fk = np.pi**1.5 * self.eta**-1.5 * shrink ** (l + 1.5)  # (L, K)
        boa = self.betas * fk[:, None, :]
        prel = np.pi * np.sqrt(8.0 / (2.0 * np.arange(self.l_max + 1) + 1.0))
        ls, aa, bb = _feature_index(self.n_species, self.n_max, self.l_max)
        sk = self.n_species * self.n_max
        feat_flat = (ls * sk + aa) * sk + bb
        return {"aoa": aoa, "boa": boa, "prel": prel, "feat_flat": feat_flat.astype(np.int32)}

    def constants(self) -> dict:
        """Device arrays of the basis constants (for :func:`soap_from_species_slots` / :func:`soap_from_edges`).

        Made once per instance (and default device); ``compute`` reuses them."""
        key = (str(jax.config.jax_default_device), jax.default_backend())
        cached = getattr(self, "_consts_dev", None)
        if cached is None or cached[0] != key:
            arrays = {k: jnp.asarray(v if k.startswith("feat_") else v.astype(self.dtype)) for k, v in self._consts_np.items()}
            self._consts_dev = cached = (key, arrays)
        return dict(cached[1])

    def location(self, a, b) -> slice:
        """The slice of the feature vector that holds the species pair ``(a, b)`` (like dscribe's ``get_location``)."""
        za = _as_atomic_numbers([a])[0]
        zb = _as_atomic_numbers([b])[0]
        for z in (za, zb):
            if z not in self.atomic_numbers:
                raise ValueError(f"species {chemical_symbols[z]} is not in this SOAP's species {self.species}")
        i, j = sorted((self.atomic_numbers.index(za), self.atomic_numbers.index(zb)))
        nsym = self.n_max * (self.n_max + 1) // 2 * (self.l_max + 1)
        nfull = self.n_max * self.n_max * (self.l_max + 1)
        start = 0
        for s in range(self.n_species):
            for t in range(s, self.n_species):
                size = nsym if s == t else nfull
                if (s, t) == (i, j):
                    return slice(start, start + size)
                start += size
        raise AssertionError("unreachable")

    # ---- host side: neighbour edges -------------------------------------------------
    def species_index(self, numbers: np.ndarray) -> np.ndarray:
        """SOAP species index (0..n_species-1) of each atomic number; a clear error for unknown or invalid ones."""
        numbers = np.asarray(numbers)
        if numbers.size and (not np.issubdtype(numbers.dtype, np.integer) or numbers.min() < 1):
            bad = sorted({str(z) for z in np.unique(numbers) if not (float(z).is_integer() and z >= 1)})
            raise ValueError(
                f"atomic numbers must be positive integers, got {', '.join(bad) or numbers.dtype}; "
                "check the structure's `numbers` (e.g. atoms.numbers)"
            )
        idx = np.full(numbers.shape, -1, dtype=np.int64)
        ok = numbers < len(self._lookup)
        idx[ok] = self._lookup[numbers[ok]]
        if np.any(idx < 0):
            bad = sorted({chemical_symbols[z] if z < len(chemical_symbols) else f"Z={z}" for z in numbers[idx < 0]})
            raise ValueError(
                f"structure contains element(s) {', '.join(bad)} that are not in this SOAP's species "
                f"{list(self.species)}; add them to `species`"
            )
        return idx

    def edges(self, atoms: Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Host neighbour edges of one structure: ``centers (E,)``, ``neighbor_species (E,)``, ``displacements (E, 3)``.

        Includes the centre itself (zero displacement) and every periodic image within
        ``r_cut + padding`` (distance <= cutoff, like dscribe), along the axes where
        ``atoms.pbc`` is True when ``periodic``.
        """
        numbers = atoms.get_atomic_numbers()
        spec = self.species_index(numbers)
        pos = np.asarray(atoms.get_positions(), dtype=np.float64)
        pbc = np.asarray(atoms.get_pbc(), dtype=bool) & self.periodic
        cell = np.asarray(atoms.get_cell(), dtype=np.float64)
        if pbc.any():
            lengths = np.linalg.norm(cell, axis=1)
            if np.any(lengths[pbc] < 1e-9):
                raise ValueError(
                    f"periodic SOAP needs cell vectors along the periodic axes {pbc.tolist()}; "
                    "set atoms.cell or use periodic=False"
                )
        if _HAVE_VESIN:
            i, j, disp = _pairs_vesin(pos, cell, pbc, self.cutoff)
        else:
            i, j, disp = _pairs_ase(atoms, pos, cell, pbc, self.cutoff)
        return i.astype(np.int32), spec[j].astype(np.int32), disp

    # ---- compute --------------------------------------------------------------------
    def compute(self, atoms: Atoms | Sequence[Atoms]) -> np.ndarray:
        """Per-atom SOAP vectors ``(n_atoms, n_features)`` (frames stacked), host float64/32 numpy.

        The array has column-major strides (each feature's values over the atoms are
        contiguous in memory), the layout the device writes fastest; numpy, BLAS and PCA take
        it as it is, and ``np.ascontiguousarray(x)`` gives a row-major copy.  When one device call
        covers all frames the result is a read-only view of its output (no copy);
        ``np.array(x)`` gives a writable copy.  Device calls are dispatched without waiting,
        so the host neighbour search of the next frames runs while the device computes the
        previous ones."""
        frames = [atoms] if isinstance(atoms, Atoms) else list(atoms)
        consts = self.constants()
        pending = [self._dispatch(consts, batch) for batch in self._batches(frames)]
        out = [self._host(p)[0] for p in pending]
        if not out:
            return np.zeros((0, self.n_features), dtype=self.dtype)
        # stacked column-major too: a row-major concatenation would transpose every block
        return out[0] if len(out) == 1 else np.concatenate([x.T for x in out], axis=1).T

    def create(self, atoms, n_jobs: int = 1):  # dscribe's name
        return self.compute(atoms)

    def compute_iter(self, frames: Sequence[Atoms]):
        """Yield one read-only host array ``(n_atoms_k, n_features)`` per frame, batching small frames per call.

        One call ahead is in flight while the previous one's frames are yielded."""
        consts = self.constants()
        previous = None
        for batch in self._batches(frames):
            current = self._dispatch(consts, batch)
            if previous is not None:
                yield from self._frames(previous)
            previous = current
        if previous is not None:
            yield from self._frames(previous)

    def _frames(self, pending):
        out, offsets = self._host(pending)
        for k in range(len(offsets) - 1):
            yield out[offsets[k] : offsets[k + 1]]

    def _batches(self, frames: Sequence[Atoms]):
        """Frames with their host edges, grouped into calls of at most ``max_edges_per_call`` edges."""
        batch: list[tuple[int, tuple]] = []
        n_edges = 0
        for atoms in frames:
            e = self.edges(atoms)
            if batch and n_edges + len(e[0]) > self.max_edges_per_call:
                yield batch
                batch, n_edges = [], 0
            batch.append((len(atoms), e))
            n_edges += len(e[0])
        if batch:
            yield batch

    def _dispatch(self, consts, batch):
        """Start one device call (not waiting for it): ``(device result, per-frame row offsets)``."""
        sizes = [n for n, _ in batch]
        offsets = np.cumsum([0] + sizes)
        centers = np.concatenate([e[0] + o for (_, e), o in zip(batch, offsets)])
        species = np.concatenate([e[1] for _, e in batch])
        disp = np.concatenate([e[2] for _, e in batch])
        first, dsp, mask = species_slot_layout(centers, species, disp, int(offsets[-1]), self.n_species, self.dtype,
                                               capacity=self._capacity)
        coefficients, power = _compiled_slot_stages(self.n_max, self.l_max)
        # host arrays straight into the jitted call: 0.1-0.2 ms against ~1 ms through jnp.asarray
        coeff = coefficients(consts, dsp, mask, first)
        return power(consts, coeff), offsets

    @staticmethod
    def _host(pending) -> tuple[np.ndarray, np.ndarray]:
        """Wait for a dispatched call: one host view of the result (no copy on CPU), padding rows dropped.

        The device result is ``(n_features, B)``; its transpose is a view (column-major)."""
        result, offsets = pending
        return np.asarray(result).T[: int(offsets[-1])], offsets

    def _run(self, consts, batch) -> tuple[np.ndarray, np.ndarray]:
        """One device call, waited for: ``(features of all the batch's atoms, per-frame row offsets)``."""
        return self._host(self._dispatch(consts, batch))

    def __repr__(self) -> str:
        return (
            f"SOAP(species={list(self.species)}, r_cut={self.r_cut}, n_max={self.n_max}, l_max={self.l_max}, "
            f"sigma={self.sigma}, periodic={self.periodic}, n_features={self.n_features})"
        )


def graph_descriptor_fn(soap: SOAP, atomic_numbers, graph_cutoff: float):
    """SOAP of every node of a padded :class:`~jaxuft.graph.Graph`: ``fn(params, graph) -> (n_nodes, n_features)``.

    For the live monitor: computes the same vectors as :meth:`SOAP.compute` from the
    graph's edges, so the graph must hold every pair within ``soap.cutoff``
    (``r_cut`` + padding): ``graph_cutoff`` (the cutoff its edges were built with,
    e.g. the potential's) must be at least that.  ``atomic_numbers``: the element of
    each graph species index (a Potential's ``atomic_numbers``); elements this SOAP
    does not know are left out (as neighbours; as centres they get zero vectors).
    ``params`` is ignored.  Use it as ``build_monitor(..., descriptor_fn=...)``.
    """
    from ..graph import edge_vectors

    if graph_cutoff < soap.cutoff:
        raise ValueError(
            f"SOAP needs neighbours up to r_cut + padding = {soap.cutoff:.3f} Å but the graph's edges only reach "
            f"{graph_cutoff:.3f} Å; lower r_cut or sigma, or build the graph with a larger cutoff"
        )
    lookup = np.full(len(atomic_numbers), -1, dtype=np.int32)
    for k, z in enumerate(atomic_numbers):
        if int(z) in soap.atomic_numbers:
            lookup[k] = soap.atomic_numbers.index(int(z))
    consts_np = soap._consts_np
    n_species, n_max, l_max, cutoff = soap.n_species, soap.n_max, soap.l_max, soap.cutoff

    def fn(params, graph):
        dtype = graph.positions.dtype
        consts = {k: (jnp.asarray(v) if k.startswith("feat_") else jnp.asarray(v, dtype)) for k, v in consts_np.items()}
        table = jnp.asarray(lookup)
        vec = edge_vectors(graph)
        dist2 = jnp.sum(vec * vec, axis=-1)
        nbr = table[graph.species[graph.receivers]]
        emask = graph.edge_mask & (dist2 <= cutoff * cutoff) & (nbr >= 0)
        n = graph.n_nodes
        own = table[graph.species]
        centers = jnp.concatenate([graph.senders, jnp.arange(n, dtype=graph.senders.dtype)])
        species = jnp.maximum(jnp.concatenate([nbr, own]), 0)
        disp = jnp.concatenate([jnp.where(emask[:, None], vec, 0.0), jnp.zeros((n, 3), dtype)])
        mask = jnp.concatenate([emask, graph.node_mask & (own >= 0)])
        return soap_from_edges(consts, centers, species, disp, mask, n, n_species, n_max, l_max)

    return fn
