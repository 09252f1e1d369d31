"""MACE (Batatia et al. 2022) in Flax, numerically equal to mace-torch's ``ScaleShiftMACE``.

Covers the public MACE-MP family: ``RealAgnosticInteractionBlock`` /
``RealAgnosticResidualInteractionBlock``, symmetric contractions of any
correlation order (U tensors are taken from the checkpoint), Bessel radial basis
with polynomial cutoff, the Agnesi distance transform and ZBL pair repulsion
(MP-0b), scale/shift, E0s, and multi-head checkpoints.

Feature layout, normalisations and Wigner-3j signs follow e3nn 0.4.4 so that
converted weights are used as they are (see :mod:`jaxuft.models.irreps`).
The config is plain JSON (see :func:`build`); fixed tensors (U matrices, Bessel
frequencies, covalent radii) are module constants; trainable weights are params.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import e3nn_jax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from . import irreps as I
from .layers import agnesi_transform, bessel_basis, polynomial_envelope, zbl_edge_energy

ACTIVATIONS = {"silu": jax.nn.silu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid}


class Constants:
    """Hashable bundle of fixed numpy arrays (module constants, not parameters)."""

    def __init__(self, arrays: dict):
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        h = hashlib.sha1()
        for k in sorted(self.arrays):
            h.update(k.encode())
            h.update(np.ascontiguousarray(self.arrays[k]).tobytes())
        self._hash = int.from_bytes(h.digest()[:8], "little")

    def __getitem__(self, k):
        return self.arrays[k]

    def __contains__(self, k):
        return k in self.arrays

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return isinstance(other, Constants) and other._hash == self._hash


# ---------------------------------------------------------------------------- e3nn ops
def linear(x, irreps_in, irreps_out, weight):
    """e3nn ``o3.Linear`` (no biases, 'element' path normalisation); x: (N, dim_in)."""
    offs_in = I.offsets(irreps_in)
    outs, w_off = [], 0
    # e3nn instruction order: for i_in, for i_out with equal irreps
    blocks = {j: [] for j in range(len(irreps_out))}
    for i, mi in enumerate(irreps_in):
        for j, mo in enumerate(irreps_out):
            if mi.ir == mo.ir:
                n = mi.mul * mo.mul
                blocks[j].append((i, weight[w_off : w_off + n].reshape(mi.mul, mo.mul)))
                w_off += n
    for j, mo in enumerate(irreps_out):
        fan_in = sum(irreps_in[i].mul for i, _ in blocks[j])
        acc = jnp.zeros((x.shape[0], mo.mul, mo.dim), x.dtype)
        for i, w in blocks[j]:
            mi = irreps_in[i]
            xi = x[:, offs_in[i] : offs_in[i] + mi.mul * mi.dim].reshape(-1, mi.mul, mi.dim)
            acc = acc + jnp.einsum("num,uw->nwm", xi, w)
        if fan_in:
            acc = acc / math.sqrt(fan_in)
        outs.append(acc.reshape(x.shape[0], -1))
    return jnp.concatenate(outs, axis=-1)


def linear_numel(irreps_in, irreps_out) -> int:
    return sum(mi.mul * mo.mul for mi in irreps_in for mo in irreps_out if mi.ir == mo.ir)


def conv_messages(x1, sh, weights, receivers, n_nodes, irreps1, irreps_sh, irreps_mid, instructions, chunks=None,
                  custom_vjp=False):
    """e3nn 'uvu' ``TensorProduct`` with per-edge weights, summed onto the receivers.

    x1: (E, dim1) sender features, sh: (E, dim_sh), weights: (E, numel) (zero on padding
    edges); returns (n_nodes, dim_mid).  Per instruction,
    ``msg[e, u, k] = w[e, u] * sum_i x1[e, u, i] * (sum_j sh[e, j] cg[i, j, k])``: the
    spherical harmonics are coupled with the Clebsch-Gordan tensor first (a small matmul),
    and each instruction is summed on its own (no (E, dim_mid) concatenation).

    ``chunks`` (a :class:`ReceiverChunks`, edges in its slot layout): the edge sum runs inside
    each chunk (one fused multiply-reduce) and only the per-chunk sums are scattered, so the
    per-edge message tensor ``(E, mul, 2l+1)`` is never written to memory.  Without it every
    edge's message is scattered onto its receiver.

    ``custom_vjp`` (with ``chunks``, when every instruction reads the same scalar input irrep,
    as in the first layer of any MACE and every layer of MACE-MP small): all instructions become
    one batched matrix product per chunk with a hand-written backward
    (:func:`_chunk_contract`); reverse mode only (``jax.jvp`` through it raises).
    """
    if chunks is not None and custom_vjp and _scalar_inputs(irreps1, instructions):
        return _scalar_chunk_messages(x1, sh, weights, chunks, n_nodes, irreps1, irreps_sh, irreps_mid, instructions)
    offs1, offs2 = I.offsets(irreps1), I.offsets(irreps_sh)
    outs, w_off = [], 0
    for i1, i2, k in instructions:
        m1, m2, mo = irreps1[i1], irreps_sh[i2], irreps_mid[k]
        a = x1[:, offs1[i1] : offs1[i1] + m1.mul * m1.dim].reshape(-1, m1.mul, m1.dim)
        b = sh[:, offs2[i2] : offs2[i2] + m2.dim]
        w = weights[:, w_off : w_off + m1.mul]
        w_off += m1.mul
        cg = I.wigner_3j(m1.l, m2.l, mo.l) * math.sqrt(mo.dim)  # (i, j, k)
        bc = b @ jnp.asarray(np.transpose(cg, (1, 0, 2)).reshape(m2.dim, m1.dim * mo.dim), x1.dtype)
        bc = bc.reshape(-1, m1.dim, mo.dim)  # (E, i, k)
        aw = a * w[:, :, None]
        if chunks is not None:
            B = chunks.size
            aw = aw.reshape(-1, B, m1.mul, m1.dim)
            bc = bc.reshape(-1, B, m1.dim, mo.dim)
            acc = jnp.einsum("cbui,cbik->cuk", aw, bc)  # per-chunk sums (n_chunks, u, k)
            outs.append(jax.ops.segment_sum(acc.reshape(acc.shape[0], -1), chunks.receiver, num_segments=n_nodes,
                                            indices_are_sorted=True))
            continue
        if m1.dim == 1:
            acc = aw[:, :, 0, None] * bc[:, None, 0, :]
        else:  # one fused multiply-reduce over i (its backward has no per-slice pad-and-add)
            acc = jnp.sum(aw[:, :, :, None] * bc[:, None, :, :], axis=2)
        outs.append(jax.ops.segment_sum(acc.reshape(x1.shape[0], -1), receivers, num_segments=n_nodes))
    return jnp.concatenate(outs, axis=-1)


def _scalar_inputs(irreps1, instructions) -> bool:
    """Every instruction reads the same scalar input irrep (so the messages are one product per chunk)."""
    first = {i1 for i1, _, _ in instructions}
    return len(first) == 1 and irreps1[next(iter(first))].l == 0


@jax.custom_vjp
def _chunk_contract(z, yb):
    """``out[c, k, u] = sum_q yb[c, q, k] z[c, q, u]`` per chunk ``c``.

    Forward and backward are written so that each product is a plain batched
    ``(rows x inner) @ (inner x cols)`` with contiguous operands (the transposed operand is
    materialised first): autodiff of the forward contracts a leading axis, which XLA:CPU runs
    through a generic loop several times slower (RESULTS.md: MD throughput 2026-12-01 16:38,
    ``--mace-message-vjp off on``; profile 17:27).
    """
    return jnp.einsum("ckq,cqu->cku", jax.lax.optimization_barrier(jnp.swapaxes(yb, 1, 2)), z)


def _chunk_contract_fwd(z, yb):
    return _chunk_contract(z, yb), (z, yb)


def _chunk_contract_bwd(res, g):
    z, yb = res
    gt = jax.lax.optimization_barrier(jnp.swapaxes(g, 1, 2))  # (c, u, k) materialised: keeps the product plain
    return jnp.einsum("cqk,cku->cqu", yb, g), jnp.einsum("cqu,cuk->cqk", z, gt)


_chunk_contract.defvjp(_chunk_contract_fwd, _chunk_contract_bwd)


def _scalar_chunk_messages(x1, sh, weights, chunks, n_nodes, irreps1, irreps_sh, irreps_mid, instructions):
    """:func:`conv_messages` for instructions that all read one scalar irrep ``u x 0e``, in the chunk layout.

    Per chunk of ``B`` edge slots, with ``q = (slot, instruction)`` and ``k`` running over the output
    components of all instructions (``sum (2l+1)``): ``msg[c, k, u] = sum_q yb[c, q, k] z[c, q, u]``,
    ``z = w * x1`` (the radial weights times the sender features) and ``yb`` the Clebsch-Gordan-coupled
    spherical harmonics placed in the output block of their instruction (zero elsewhere).
    """
    i1 = instructions[0][0]
    mul = irreps1[i1].mul
    o1 = I.offsets(irreps1)[i1]
    offs2 = I.offsets(irreps_sh)
    n_ins, B, S = len(instructions), chunks.size, sh.shape[0]
    dims = [irreps_mid[k].dim for _, _, k in instructions]
    K = sum(dims)
    couple = np.zeros((sum(m.dim for m in irreps_sh), n_ins, K))
    k0 = 0
    for t, (_, i2, k) in enumerate(instructions):
        m2, mo = irreps_sh[i2], irreps_mid[k]
        cg = I.wigner_3j(0, m2.l, mo.l) * math.sqrt(mo.dim)  # (1, j, k)
        couple[offs2[i2] : offs2[i2] + m2.dim, t, k0 : k0 + mo.dim] = cg[0]
        k0 += mo.dim
    a = x1[:, o1 : o1 + mul]
    z = (weights[:, : n_ins * mul].reshape(S, n_ins, mul) * a[:, None, :]).reshape(S // B, B * n_ins, mul)
    yb = (sh @ jnp.asarray(couple.reshape(couple.shape[0], -1), sh.dtype)).reshape(S // B, B * n_ins, K)
    acc = _chunk_contract(z, yb)  # (chunks, k, u)
    msg = jax.ops.segment_sum(acc, chunks.receiver, num_segments=n_nodes, indices_are_sorted=True)  # (N, k, u)
    outs, k0 = [], 0
    for d in dims:
        outs.append(jnp.swapaxes(msg[:, k0 : k0 + d, :], 1, 2).reshape(n_nodes, mul * d))
        k0 += d
    return jnp.concatenate(outs, axis=-1)


class ReceiverChunks(NamedTuple):
    """Edges regrouped by receiver into chunks of ``size`` slots (a layout, computed in the model).

    Slot ``s`` holds edge ``slot_edge[s]`` (``n_edges`` for an empty slot); all edges of a chunk
    share its receiver ``receiver[c]`` (non-decreasing).  Each receiver's edges fill
    ``ceil(deg / size)`` chunks, so ``n_edges / size + n_nodes`` chunks always suffice: the
    layout never overflows, whatever the neighbour counts.
    """

    slot_edge: jax.Array  # (n_chunks * size,) int32
    used: jax.Array  # (n_chunks * size,) bool
    receiver: jax.Array  # (n_chunks,) int32
    size: int


def receiver_chunks(receivers, n_nodes: int, size: int) -> ReceiverChunks:
    """The :class:`ReceiverChunks` of an edge list (``receivers (E,)`` in ``[0, n_nodes)``)."""
    E = receivers.shape[0]
    n_chunks = -(-E // size) + n_nodes
    receivers = receivers.astype(jnp.int32)
    order = jnp.argsort(receivers, stable=True).astype(jnp.int32)
    deg = jnp.zeros((n_nodes,), jnp.int32).at[receivers].add(1)
    first = jnp.cumsum(deg) - deg  # first position of each receiver in the sorted order
    per = (deg + size - 1) // size  # chunks per receiver
    chunk_end = jnp.cumsum(per)
    r_sorted = receivers[order]
    slot = (chunk_end - per)[r_sorted] * size + (jnp.arange(E, dtype=jnp.int32) - first[r_sorted])
    slot_edge = jnp.full((n_chunks * size,), E, jnp.int32).at[slot].set(order, unique_indices=True)
    receiver = jnp.searchsorted(chunk_end, jnp.arange(n_chunks, dtype=jnp.int32), side="right")
    receiver = jnp.minimum(receiver, n_nodes - 1).astype(jnp.int32)  # unused chunks are empty
    return ReceiverChunks(slot_edge=slot_edge, used=slot_edge < E, receiver=receiver, size=size)


def take_slots(x, chunks: ReceiverChunks, fill):
    """Per-edge array ``x (E, ...)`` in the slot layout of ``chunks``; empty slots get ``fill``."""
    safe = jnp.minimum(chunks.slot_edge, x.shape[0] - 1)
    used = chunks.used.reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.where(used, x[safe], jnp.asarray(fill, x.dtype))


class PresentSpecies(NamedTuple):
    """The static set of species a compiled program evaluates (see ``MACE.present_species``)."""

    indices: tuple  # sorted model species indices (static)
    one_hot: jax.Array  # (N, P) one-hot of each node over ``indices``; zero row for a species outside the set
    known: jax.Array  # (N,) bool: the node's species is in the set


def present_species(species, indices: tuple, n_species: int, dtype) -> PresentSpecies:
    remap = np.full(n_species, len(indices), np.int32)
    remap[np.asarray(indices, np.int64)] = np.arange(len(indices), dtype=np.int32)
    local = jnp.asarray(remap)[species]
    return PresentSpecies(tuple(indices), jax.nn.one_hot(local, len(indices), dtype=dtype), local < len(indices))


def skip_tensor_product(x, species, weight, irreps_in, n_species, irreps_out, present=None):
    """e3nn ``FullyConnectedTensorProduct(irreps_in, n_species x 0e, irreps_out)`` with one-hot input 2.

    ``present``: optional :class:`PresentSpecies` (the static set of species the caller will pass);
    then the weights of those species are taken statically and each path is one GEMM over
    ``(u x P)`` with the node's one-hot over the present species, instead of a per-node
    ``(u, w)`` weight gathered from all ``n_species`` (a memory-bound gather + batched matvec).
    """
    offs = I.offsets(irreps_in)
    outs, w_off = [], 0
    per_out = {j: [] for j in range(len(irreps_out))}
    for i, mi in enumerate(irreps_in):
        for j, mo in enumerate(irreps_out):
            if mi.ir == mo.ir:  # ir x 0e -> ir
                n = mi.mul * n_species * mo.mul
                per_out[j].append((i, weight[w_off : w_off + n].reshape(mi.mul, n_species, mo.mul)))
                w_off += n
    N = x.shape[0]
    for j, mo in enumerate(irreps_out):
        fan = sum(irreps_in[i].mul * n_species for i, _ in per_out[j])
        acc = jnp.zeros((N, mo.mul, mo.dim), x.dtype)
        for i, w in per_out[j]:
            mi = irreps_in[i]
            xi = x[:, offs[i] : offs[i] + mi.mul * mi.dim].reshape(-1, mi.mul, mi.dim)
            sign = float(np.sign(I.wigner_3j(mi.l, 0, mo.l)[0, 0, 0]))
            if present is None:
                ws = jnp.take(w, species, axis=1)  # (u, N, w)
                acc = acc + sign * jnp.einsum("num,unw->nwm", xi, ws)
            else:
                P = len(present.indices)
                wp = jnp.moveaxis(w[:, np.asarray(present.indices), :], 1, 0).reshape(P * mi.mul, mo.mul)  # (P*u, w)
                xo = present.one_hot[:, :, None, None] * jnp.moveaxis(xi, -1, 1)[:, None]  # (N, P, m, u)
                xo = jnp.moveaxis(xo, 2, 1).reshape(N * mi.dim, P * mi.mul)  # (N*m, P*u)
                acc = acc + sign * jnp.swapaxes((xo @ wp).reshape(N, mi.dim, mo.mul), 1, 2)
        if fan:  # an output no input reaches stays zero, as in e3nn
            acc = acc / math.sqrt(fan)
        outs.append(acc.reshape(N, -1))
    return jnp.concatenate(outs, axis=-1)


def skip_numel(irreps_in, n_species, irreps_out) -> int:
    return sum(mi.mul * n_species * mo.mul for mi in irreps_in for mo in irreps_out if mi.ir == mo.ir)


# ------------------------------------------------------------- symmetric contraction
def contraction_plan(Us, lead: int):
    """Host-side plan of mace-torch's ``Contraction`` as a sparse polynomial (numpy, exact).

    The correlation-``nu`` term is ``sum_k W[k] sum_{i1..inu} U[m, i1..inu, k] x_i1 ... x_inu``;
    the product of the ``x`` is symmetric in its indices, so the U entries (0.4 % of them are
    non-zero) are summed onto the sorted index tuples.  Returns ``[(keys (T, nu), Q (T, M, K))]``
    for nu = 1..correlation, ``M = 2l+1`` of the output (1 for scalars).
    """
    plan = []
    for U in Us:
        U = np.asarray(U, np.float64)
        if not lead:
            U = U[None]
        nz = np.argwhere(U != 0)
        keys, inv = np.unique(np.sort(nz[:, 1:-1], axis=1), axis=0, return_inverse=True)
        Q = np.zeros((len(keys), U.shape[0], U.shape[-1]))
        np.add.at(Q, (inv.reshape(-1), nz[:, 0], nz[:, -1]), U[tuple(nz.T)])
        plan.append((keys, Q))
    return plan


def symmetric_contraction(x, species, weights, Us, lead: int):
    """mace-torch ``Contraction`` for one output irrep.

    x: (N, C, L) node features over the coupling irreps; weights[nu-1]: (S, P_nu, C);
    Us[nu-1]: U tensor ``([2l+1,] L * nu, P_nu)``; lead = 1 if the output has l > 0.
    Returns (N, C, 2l+1) (or (N, C) for scalars).

    Evaluated as ``out[n, c, m] = sum_k P[m, k, n, c] W[s_n, k, c]`` with
    ``P = Q^T @ monomials(x)`` (see :func:`contraction_plan`): the monomials are rows
    gathered from ``x`` laid out as ``(L, N*C)``, so forward and backward are a few
    dense, well-vectorised ops instead of a dense ``L**nu`` contraction.
    """
    N, C, L = x.shape
    dtype = x.dtype
    plan = contraction_plan(Us, lead)
    xt = jnp.moveaxis(x, -1, 0).reshape(L, N * C)
    monos = []
    for keys, _ in plan:
        m = xt[jnp.asarray(keys[:, 0])]
        for j in range(1, keys.shape[1]):
            m = m * xt[jnp.asarray(keys[:, j])]
        monos.append(m)
    mono = jnp.concatenate(monos, axis=0)  # (T, N*C)
    T, M = mono.shape[0], plan[0][1].shape[1]
    K = sum(Q.shape[-1] for _, Q in plan)
    Qcat = np.zeros((T, M, K))  # block-diagonal over the correlation orders
    t0 = k0 = 0
    for _, Q in plan:
        Qcat[t0 : t0 + Q.shape[0], :, k0 : k0 + Q.shape[2]] = Q
        t0, k0 = t0 + Q.shape[0], k0 + Q.shape[2]
    P = (jnp.asarray(Qcat.reshape(T, M * K).T, dtype) @ mono).reshape(M, K, N, C)
    W = jnp.concatenate([jnp.take(w, species, axis=0) for w in weights], axis=1)  # (N, K, C)
    out = jnp.moveaxis(jnp.sum(P * jnp.swapaxes(W, 0, 1)[None], axis=1), 0, -1)  # (N, C, M)
    return out if lead else out[..., 0]


# --------------------------------------------------------------------------- model
@dataclass(frozen=True)
class LayerSpec:
    interaction: str
    node_feats_irreps: tuple
    edge_irreps: tuple
    target_irreps: tuple
    hidden_irreps_out: tuple
    irreps_mid: tuple
    conv_instructions: tuple
    skip_irreps_out: tuple
    correlation: int
    avg_num_neighbors: float
    radial_mlp: tuple
    radial_act_cst: float
    readout: tuple  # ("linear",) or ("nonlinear", mlp_dim, act, act_cst)


class MACE(nn.Module):
    """Flax MACE. ``__call__(species, vectors, senders, receivers, node_mask, edge_mask)``."""

    atomic_numbers: tuple
    r_max: float
    num_bessel: int
    p_cutoff: int
    max_ell: int
    layers: tuple
    n_heads: int
    head_index: int
    agnesi: tuple | None  # (q, p, a)
    zbl: tuple | None  # (p, a_exp, a_prefactor, c0, c1, c2, c3)
    radial_act: str
    constants: Constants = field(compare=True)
    #: edges per receiver chunk of the message sum (see :class:`ReceiverChunks`); 0: scatter every edge
    edge_chunk: int = 16
    #: sorted model species indices the caller will evaluate (e.g. the species of an MD run), or None (any).
    #: Static: part of the compiled program's identity. With a set, the species-indexed weights (skip tensor
    #: product) are taken for these species only; a real node of another species gets a NaN energy.
    present_species: tuple | None = None
    #: the chunked message sum of scalar-input layers with a hand-written backward (see :func:`conv_messages`);
    #: reverse mode only: :func:`jaxuft.models.forward_mode` turns it off for ``jax.jvp``
    message_vjp: bool = True

    def _radii(self, dtype):
        return jnp.asarray(self.constants["covalent_radii"], dtype) if "covalent_radii" in self.constants else None

    @nn.compact
    def __call__(self, species, vectors, senders, receivers, node_mask, edge_mask):
        dtype = vectors.dtype
        S = len(self.atomic_numbers)
        N = species.shape[0]
        z_table = jnp.asarray(np.asarray(self.atomic_numbers), jnp.int32)
        z = z_table[species]
        one_hot = jax.nn.one_hot(species, S, dtype=dtype)
        h = self.head_index
        present = None
        if self.present_species is not None:
            present = present_species(species, self.present_species, S, dtype)

        e0 = self.param("atomic_energies", nn.initializers.zeros, (self.n_heads, S), dtype)
        scale = self.param("scale", nn.initializers.ones, (self.n_heads,), dtype)
        shift = self.param("shift", nn.initializers.zeros, (self.n_heads,), dtype)

        chunks = None
        if self.edge_chunk:
            with jax.named_scope("mace/edge_layout"):
                chunks = receiver_chunks(receivers, N, self.edge_chunk)
                far = jnp.zeros((3,), vectors.dtype).at[0].set(1.0e3)  # empty slots: far outside the cutoff
                vectors = take_slots(vectors, chunks, 0.0)
                vectors = jnp.where(chunks.used[:, None], vectors, far)
                senders = take_slots(senders, chunks, N - 1)
                receivers = chunks.receiver.repeat(self.edge_chunk)
                edge_mask = take_slots(edge_mask, chunks, False)
        with jax.named_scope("mace/edge_geometry"):
            lengths = jnp.linalg.norm(vectors, axis=-1)
            sh_irreps = I.spherical_harmonics_irreps(self.max_ell)
            sh = e3nn_jax.spherical_harmonics(
                I.irreps_str(sh_irreps), vectors, normalize=True, normalization="component"
            ).array
            cutoff = polynomial_envelope(lengths / self.r_max, self.p_cutoff)
            r_in = lengths
            if self.agnesi is not None:
                q, p, a = self.agnesi
                r_in = agnesi_transform(lengths, z[senders], z[receivers], q, p, a, self._radii(dtype))
            freqs = jnp.asarray(self.constants["bessel_weights"], dtype)
            pref = jnp.asarray(self.constants["bessel_prefactor"], dtype)
            edge_feats = bessel_basis(r_in, freqs, pref) * cutoff[:, None]
            edge_feats = jnp.where(edge_mask[:, None], edge_feats, 0.0)

            pair = jnp.zeros((N,), dtype)
            if self.zbl is not None:
                p_z, a_exp, a_pref, *c = self.zbl
                ez = zbl_edge_energy(lengths, z[senders], z[receivers], int(p_z), a_exp, a_pref, tuple(c), self._radii(dtype))
                ez = jnp.where(edge_mask, ez, 0.0)
                pair = jax.ops.segment_sum(ez, receivers, num_segments=N)

        first = self.layers[0]
        F0 = first.node_feats_irreps[0].mul
        w_emb = self.param("node_embedding", nn.initializers.normal(1.0), (S * F0,), dtype)
        feats = (one_hot @ w_emb.reshape(S, F0)) / math.sqrt(S)

        node_es = [pair]
        layer_scalars = []
        act = ACTIVATIONS[self.radial_act]
        for li, spec in enumerate(self.layers):
            pre = f"interactions_{li}"
            residual = "Residual" in spec.interaction
            with jax.named_scope("mace/skip_tp"):
                if residual:
                    w_skip = self.param(f"{pre}.skip_tp", nn.initializers.normal(1.0), (skip_numel(spec.node_feats_irreps, S, spec.skip_irreps_out),), dtype)
                    sc = skip_tensor_product(feats, species, w_skip, spec.node_feats_irreps, S, spec.skip_irreps_out, present)
            with jax.named_scope("mace/linear"):
                w_up = self.param(f"{pre}.linear_up", nn.initializers.normal(1.0), (linear_numel(spec.node_feats_irreps, spec.edge_irreps),), dtype)
                up = linear(feats, spec.node_feats_irreps, spec.edge_irreps, w_up)
            with jax.named_scope("mace/radial_mlp"):
                # radial MLP -> per-edge tensor-product weights
                hdn = edge_feats
                sizes = spec.radial_mlp
                for k in range(len(sizes) - 1):
                    wk = self.param(f"{pre}.radial_mlp.{k}", nn.initializers.normal(1.0), (sizes[k], sizes[k + 1]), dtype)
                    hdn = hdn @ wk / math.sqrt(sizes[k])
                    if k < len(sizes) - 2:
                        hdn = act(hdn) * spec.radial_act_cst
                hdn = jnp.where(edge_mask[:, None], hdn, 0.0)  # padding edges carry no message
            with jax.named_scope("mace/messages"):
                msg = conv_messages(
                    up[senders], sh, hdn, receivers, N, spec.edge_irreps, sh_irreps, spec.irreps_mid, spec.conv_instructions,
                    chunks, self.message_vjp,
                )
            with jax.named_scope("mace/linear"):
                w_lin = self.param(f"{pre}.linear", nn.initializers.normal(1.0), (linear_numel(spec.irreps_mid, spec.target_irreps),), dtype)
                msg = linear(msg, spec.irreps_mid, spec.target_irreps, w_lin)
            if "Density" in spec.interaction:  # MPA-0: normalise by a learned smooth neighbour density
                w_den = self.param(f"{pre}.density_fn", nn.initializers.normal(1.0), (self.num_bessel, 1), dtype)
                dens_e = jnp.tanh((edge_feats @ w_den / math.sqrt(self.num_bessel))[:, 0] ** 2)
                dens_e = jnp.where(edge_mask, dens_e, 0.0)
                density = jax.ops.segment_sum(dens_e, receivers, num_segments=N)
                msg = msg / (density[:, None] + 1.0)
            else:
                msg = msg / spec.avg_num_neighbors
            with jax.named_scope("mace/skip_tp"):
                if not residual:
                    w_skip = self.param(f"{pre}.skip_tp", nn.initializers.normal(1.0), (skip_numel(spec.target_irreps, S, spec.skip_irreps_out),), dtype)
                    msg = skip_tensor_product(msg, species, w_skip, spec.target_irreps, S, spec.skip_irreps_out, present)
                    sc = None
            # product basis: reshape to (N, C, L) over the coupling irreps
            with jax.named_scope("mace/symmetric_contraction"):
                target = spec.skip_irreps_out if not residual else spec.target_irreps
                C = target[0].mul
                parts, o = [], 0
                for m in target:
                    parts.append(msg[:, o : o + m.mul * m.dim].reshape(N, m.mul, m.dim))
                    o += m.mul * m.dim
                xr = jnp.concatenate(parts, axis=-1)
                pre_p = f"products_{li}"
                outs = []
                for j, mo in enumerate(spec.hidden_irreps_out):
                    Us = [self.constants[f"{pre_p}.contractions.{j}.U_matrix_{nu}"] for nu in range(1, spec.correlation + 1)]
                    ws = []
                    for nu in range(1, spec.correlation + 1):
                        name = "weights_max" if nu == spec.correlation else f"weights_{spec.correlation - 1 - nu}"
                        ws.append(self.param(f"{pre_p}.contractions.{j}.{name}", nn.initializers.normal(0.1), (S, Us[nu - 1].shape[-1], C), dtype))
                    lead = 1 if mo.l > 0 else 0
                    out_j = symmetric_contraction(xr, species, ws, Us, lead)
                    outs.append(out_j.reshape(N, -1))
                prod = jnp.concatenate(outs, axis=-1)
            with jax.named_scope("mace/linear"):
                w_pl = self.param(f"{pre_p}.linear", nn.initializers.normal(1.0), (linear_numel(spec.hidden_irreps_out, spec.hidden_irreps_out),), dtype)
                feats = linear(prod, spec.hidden_irreps_out, spec.hidden_irreps_out, w_pl)
            if sc is not None:
                feats = feats + sc
            n_scalar = spec.hidden_irreps_out[0].mul if spec.hidden_irreps_out[0].l == 0 else 0
            layer_scalars.append(feats[:, :n_scalar])
            # readout
            with jax.named_scope("mace/readout"):
                pre_r = f"readouts_{li}"
                out_heads = (I.MulIr(self.n_heads, 0, 1),)
                if spec.readout[0] == "linear":
                    w_r = self.param(f"{pre_r}.linear", nn.initializers.normal(1.0), (linear_numel(spec.hidden_irreps_out, out_heads),), dtype)
                    e = linear(feats, spec.hidden_irreps_out, out_heads, w_r)
                else:
                    _, mlp_dim, act_name, act_cst = spec.readout
                    mlp_irreps = (I.MulIr(mlp_dim, 0, 1),)
                    w1 = self.param(f"{pre_r}.linear_1", nn.initializers.normal(1.0), (linear_numel(spec.hidden_irreps_out, mlp_irreps),), dtype)
                    hid = ACTIVATIONS[act_name](linear(feats, spec.hidden_irreps_out, mlp_irreps, w1)) * act_cst
                    if self.n_heads > 1:  # mace's mask_head: keep the hidden units of the chosen head
                        per = mlp_dim // self.n_heads
                        keep = (jnp.arange(mlp_dim) // per) == h
                        hid = jnp.where(keep[None, :], hid, 0.0)
                    w2 = self.param(f"{pre_r}.linear_2", nn.initializers.normal(1.0), (linear_numel(mlp_irreps, out_heads),), dtype)
                    e = linear(hid, mlp_irreps, out_heads, w2)
                node_es.append(e[:, h])

        inter = sum(node_es)
        inter = scale[h] * inter + shift[h]
        node_energy = e0[h][species] + inter
        if present is not None:  # a species outside the declared set: loud, never silently wrong
            node_energy = jnp.where(present.known, node_energy, jnp.nan)
        node_energy = jnp.where(node_mask, node_energy, 0.0)
        return {"node_energy": node_energy, "descriptors": jnp.concatenate(layer_scalars, axis=-1)}


# ---------------------------------------------------------------------- construction
def _irr(s) -> tuple:
    return I.parse_irreps(s) if isinstance(s, str) else tuple(I.MulIr(*m) for m in s)


def layer_specs(config: dict) -> tuple:
    """Derive every per-layer shape from the JSON config exactly as mace-torch's constructor does."""
    sh_irreps = I.spherical_harmonics_irreps(config["max_ell"])
    specs = []
    for lc in config["layers"]:
        node_irreps = _irr(lc["node_feats_irreps"])
        edge_irreps = _irr(lc.get("edge_irreps") or lc["node_feats_irreps"])
        target = _irr(lc["target_irreps"])
        hidden_out = _irr(lc["hidden_irreps_out"])
        mid, ins = I.tp_out_irreps_with_instructions(edge_irreps, sh_irreps, target)
        residual = "Residual" in lc["interaction"]
        skip_out = hidden_out if residual else target
        numel = sum(edge_irreps[i1].mul for i1, _, _ in ins)
        ro = lc["readout"]
        readout = ("linear",) if ro["type"] == "linear" else ("nonlinear", int(ro["mlp_dim"]), ro["act"], float(ro["act_cst"]))
        specs.append(
            LayerSpec(
                interaction=lc["interaction"],
                node_feats_irreps=node_irreps,
                edge_irreps=edge_irreps,
                target_irreps=target,
                hidden_irreps_out=hidden_out,
                irreps_mid=mid,
                conv_instructions=tuple(ins),
                skip_irreps_out=skip_out,
                correlation=int(lc["correlation"]),
                avg_num_neighbors=float(lc["avg_num_neighbors"]),
                radial_mlp=tuple([config["num_bessel"]] + list(lc["radial_mlp"]) + [numel]),
                radial_act_cst=float(lc["radial_act_cst"]),
                readout=readout,
            )
        )
    return tuple(specs)


def default_head(heads) -> str:
    """mace-torch's choice when no head is named: "Default" if present, else the last head."""
    return "Default" if "Default" in heads else heads[-1]


def build(config: dict, constants: dict | None = None) -> MACE:
    """Flax module from a converted MACE config (``family: "mace"``) and its constants."""
    if constants is None:
        raise ValueError("a MACE model needs its constants (U matrices, Bessel frequencies); load it with jaxuft.load")
    heads = list(config.get("heads", ["Default"]))
    head = config.get("head") or default_head(heads)
    if head not in heads:
        raise ValueError(f"head {head!r} not in the model's heads {heads}")
    agn = config.get("distance_transform")
    zbl = config.get("pair_repulsion")
    return MACE(
        atomic_numbers=tuple(int(z) for z in config["atomic_numbers"]),
        r_max=float(config["r_max"]),
        num_bessel=int(config["num_bessel"]),
        p_cutoff=int(config["num_polynomial_cutoff"]),
        max_ell=int(config["max_ell"]),
        layers=layer_specs(config),
        n_heads=len(heads),
        head_index=heads.index(head),
        agnesi=None if not agn else (float(agn["q"]), float(agn["p"]), float(agn["a"])),
        zbl=None if not zbl else (int(zbl["p"]), float(zbl["a_exp"]), float(zbl["a_prefactor"]), *map(float, zbl["c"])),
        radial_act=config.get("radial_activation", "silu"),
        constants=Constants(constants),
    )


def param_groups(config: dict, params: dict) -> dict:
    """MACE's parameter groups (freezing, per-group learning rates; see :mod:`jaxuft.finetune.params`).

    Leaves are flat names: ``node_embedding``, ``interactions_{i}.*`` / ``products_{i}.*`` (layer i),
    ``readouts_{i}.*``, and the buffers ``atomic_energies`` (E0s), ``scale``, ``shift``.
    """
    names = list(params)
    n_layers = len(config["layers"])
    return {
        "embedding": [k for k in names if k == "node_embedding"],
        "layers": [sorted(k for k in names if k.startswith((f"interactions_{i}.", f"products_{i}."))) for i in range(n_layers)],
        "readouts": sorted(k for k in names if k.startswith("readouts_")),
        "e0": "atomic_energies",
        "buffers": [k for k in ("atomic_energies", "scale", "shift") if k in names],
    }


def restrict_species(module: MACE, species) -> MACE:
    """``module`` specialised to the model species indices ``species`` (any iterable; the set is used)."""
    idx = tuple(sorted({int(s) for s in np.asarray(species).reshape(-1)}))
    S = len(module.atomic_numbers)
    if not idx or idx[0] < 0 or idx[-1] >= S:
        raise ValueError(f"species indices {idx} outside the model's {S} species")
    return module.clone(present_species=idx)
