"""NequIP-family equivariant potential (the architecture of SevenNet-0) in Flax.

One interaction layer ``t`` (SevenNet's ``NequIP_interaction_block`` with a
``linear`` self-connection) maps node features ``x`` (irreps ``node_irreps[t]``)
to ``node_irreps[t + 1]``::

    sc  = Linear(x)                          -> gate input irreps
    h   = Linear(x)                          (same irreps as x)
    m   = sum_{j in N(i)} TP_uvu(h_j, Y(r_ij), R(|r_ij|)) / denominator[t]
    h   = Linear(m) + sc                     -> gate input irreps
    x   = Gate(h)                            (scalars: act, l > 0: act(gate) * feature)

with ``Y`` real spherical harmonics (component normalisation) of the edge
direction, ``R`` a bias-free MLP of the radial embedding ``bessel(r) * f_cut(r)``
and ``TP_uvu`` one weight per channel and path ``(l_in, l_filter) -> l_out``.
Atomic energies: ``Linear -> Linear`` on the final scalars, then
``scale[species] * e + shift[species]``.

Conventions follow e3nn (torch) exactly so that converted SevenNet weights
reproduce sevenn to float rounding:

* **Linear** (``e3nn.o3.Linear``, no bias): per irrep ``ir``,
  ``out[ir] = x[ir] @ W[ir] / sqrt(fan_in[ir])`` where ``x[ir]`` concatenates all
  input channels of that irrep in irreps order.
* **Radial MLP** (``e3nn.nn.FullyConnectedNet``): ``x @ W / sqrt(fan_in)``, then a
  normalised activation, no biases, none on the last layer.
* **Activations** are "normalised to the second moment" like e3nn's
  ``normalize2mom``: ``c * act(x)`` with the constant e3nn computes (by Monte
  Carlo on 10^6 float64 samples with torch's generator seeded 0).  Those values
  are tabulated in :data:`ACTIVATIONS`; e3nn-jax's ``normalize_function``
  gives constants ~1.5e-3 (relative) different, far too much for parity.
* **Tensor product paths** use ``sqrt(2 l_out + 1) * C(l1, l2, l_out)`` with
  e3nn-jax's Clebsch-Gordan coefficients (numerically identical to e3nn-torch
  0.5+'s ``wigner_3j`` and real spherical harmonics; checked at 1e-15).  Paths
  whose sign convention differed in the torch checkpoint have the sign folded
  into the radial weights at conversion.
* **Edges.**  jaxuft's graph sends messages ``sender -> receiver`` with
  ``vectors = r_receiver - r_sender``; sevenn gathers messages at the atom the
  vector starts from, i.e. it feeds ``r_sender - r_receiver`` to ``Y``.  We
  therefore evaluate ``Y(-vectors)``.

Node features are a dict ``{irrep: (n_nodes, multiplicity, 2l + 1)}`` (e.g.
``"1e"``), channels of the same irrep concatenated in irreps order.

**Descriptors** (``(n_nodes, sum_t n_scalars[t])``): the invariant (``0e``)
features after the gate of every interaction layer, concatenated layer by layer
(SevenNet-0: 5 x 128 = 640 features).  Layer-wise concatenation mirrors MACE's
``invariants_only`` descriptors and keeps both local (early) and long-range
(late) information.
"""

from __future__ import annotations

import functools
import math
import re
from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .layers import polynomial_envelope

#: name -> (function, e3nn normalize2mom constant).  Constants are
#: ``moment(f, 2) ** -0.5`` as computed by e3nn (torch) 0.5/0.6:
#: ``torch.randn(1_000_000, generator=Generator().manual_seed(0), dtype=float64)``.
ACTIVATIONS = {
    "silu": (jax.nn.silu, 1.6791767923989418),
    "tanh": (jnp.tanh, 1.5937334472592695),
    "relu": (jax.nn.relu, 1.4163393446331365),
    "abs": (jnp.abs, 1.001110600838467),
    "sigmoid": (jax.nn.sigmoid, 1.8467055342154763),
    "elu": (jax.nn.elu, 1.2467863885570512),
    "ssp": (lambda x: jax.nn.softplus(x) - math.log(2.0), 1.878204668541552),
}


def normalized_activation(name: str):
    """``c * act`` with e3nn's second-moment constant (identity scaling if |c - 1| < 1e-4)."""
    try:
        fn, c = ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None
    if abs(c - 1.0) < 1e-4:
        return fn
    return lambda x: fn(x) * jnp.asarray(c, x.dtype)


# ---------------------------------------------------------------------------------------------
# irreps bookkeeping (pure Python, static)
# ---------------------------------------------------------------------------------------------
class Irrep(NamedTuple):
    l: int
    p: int  # +1 even, -1 odd

    def __str__(self) -> str:
        return f"{self.l}{'e' if self.p == 1 else 'o'}"

    @property
    def dim(self) -> int:
        return 2 * self.l + 1

    def sort_key(self):
        # e3nn (torch) orders irreps as tuples (l, p): 0o < 0e < 1o < 1e ...
        return (self.l, self.p)


Entry = tuple  # (mul, Irrep)

_IRREP_RE = re.compile(r"^\s*(?:(\d+)\s*x\s*)?(\d+)([eo])\s*$")


@functools.lru_cache(maxsize=None)
def parse_irreps(text: str) -> tuple:
    """``"128x0e+64x1e"`` -> ``((128, Irrep(0, 1)), (64, Irrep(1, 1)))`` (order kept, no merging)."""
    out = []
    for part in text.split("+"):
        if not part.strip():
            continue
        m = _IRREP_RE.match(part)
        if not m:
            raise ValueError(f"cannot parse irreps {text!r} (bad term {part!r})")
        mul = int(m.group(1)) if m.group(1) else 1
        out.append((mul, Irrep(int(m.group(2)), 1 if m.group(3) == "e" else -1)))
    return tuple(out)


def irreps_str(entries: Sequence[Entry]) -> str:
    return "+".join(f"{mul}x{ir}" for mul, ir in entries)


def irrep_product(a: Irrep, b: Irrep):
    """Irreps in ``a x b`` in e3nn's order (``l`` ascending)."""
    return [Irrep(l, a.p * b.p) for l in range(abs(a.l - b.l), a.l + b.l + 1)]


@functools.lru_cache(maxsize=None)
def layout(entries: tuple) -> dict:
    """``{irrep: [(entry_index, offset, mul), ...]}``: where each entry lives in the per-irrep blocks."""
    out: dict = {}
    for k, (mul, ir) in enumerate(entries):
        blocks = out.setdefault(ir, [])
        offset = sum(b[2] for b in blocks)
        blocks.append((k, offset, mul))
    return out


def irrep_muls(entries: tuple) -> dict:
    return {ir: sum(b[2] for b in blocks) for ir, blocks in layout(entries).items()}


def sh_irreps(lmax: int, parity: int) -> tuple:
    """Spherical-harmonics irreps like e3nn's ``Irreps.spherical_harmonics(lmax, p)``."""
    return tuple((1, Irrep(l, parity**l)) for l in range(lmax + 1))


def gate_irreps(out_entries: tuple):
    """(scalars, gates, gated) entries of an e3nn ``Gate`` producing ``out_entries``."""
    scalars = tuple((m, ir) for m, ir in out_entries if ir.l == 0)
    gated = tuple((m, ir) for m, ir in out_entries if ir.l > 0)
    gate_p = 1 if any(ir == Irrep(0, 1) for _, ir in scalars) else -1
    gates = tuple((m, Irrep(0, gate_p)) for m, _ in gated)
    return scalars, gates, gated


class TPPath(NamedTuple):
    i_in: int  # entry index in the node irreps
    i_filter: int  # entry index in the spherical-harmonics irreps
    ir_out: Irrep
    mul: int
    weight_offset: int  # first column of this path in the radial MLP output


@functools.lru_cache(maxsize=None)
def conv_paths(x_entries: tuple, filter_entries: tuple, out_irreps: frozenset):
    """Paths of SevenNet's ``IrrepsConvolution`` in sorted order (sevenn >= 0.11).

    Instructions are generated for every (node entry, filter entry, product irrep
    in ``out_irreps``) and then stably sorted by output irrep; the radial MLP's
    output columns follow this order.  Returns (paths, mid entries, n_weights).
    """
    raw = _generated_paths(x_entries, filter_entries, out_irreps)
    order = conv_paths_unsorted_order(x_entries, filter_entries, out_irreps)
    paths, offset = [], 0
    for k in order:
        i, j, ir_out, mul = raw[k]
        paths.append(TPPath(i, j, ir_out, mul, offset))
        offset += mul
    mid = tuple((p.mul, p.ir_out) for p in paths)
    return tuple(paths), mid, offset


@functools.lru_cache(maxsize=None)
def conv_paths_unsorted_order(x_entries: tuple, filter_entries: tuple, out_irreps: frozenset):
    """For each sorted path, its index in generation order (sevenn < 0.11 weight layout)."""
    raw = _generated_paths(x_entries, filter_entries, out_irreps)
    return tuple(sorted(range(len(raw)), key=lambda k: (raw[k][2].sort_key(), k)))


def _generated_paths(x_entries: tuple, filter_entries: tuple, out_irreps: frozenset) -> list:
    """``(i_in, i_filter, ir_out, mul)`` for every (node entry, filter entry, product irrep in
    ``out_irreps``), in e3nn's generation order."""
    return [
        (i, j, ir_out, mul)
        for i, (mul, ir_x) in enumerate(x_entries)
        for j, (_, ir_f) in enumerate(filter_entries)
        for ir_out in irrep_product(ir_x, ir_f)
        if ir_out in out_irreps
    ]


def tp_out_irreps(x_entries: tuple, filter_entries: tuple, lmax_out: int, even_only: bool) -> frozenset:
    """Irreps the convolution keeps (sevenn's ``infer_irreps_out`` without multiplicities)."""
    keep = set()
    for _, ir_x in x_entries:
        for _, ir_f in filter_entries:
            for ir in irrep_product(ir_x, ir_f):
                if ir.l <= lmax_out and (not even_only or ir.p == 1):
                    keep.add(ir)
    return frozenset(keep)


@functools.lru_cache(maxsize=None)
def _cg(l1: int, l2: int, l3: int) -> np.ndarray:
    import e3nn_jax

    return np.asarray(e3nn_jax.clebsch_gordan(l1, l2, l3), dtype=np.float64)


def path_coefficients(l1: int, l2: int, l3: int) -> np.ndarray:
    """``sqrt(2 l3 + 1) * C(l1, l2, l3)``: e3nn's 'component'-normalised ``uvu`` path."""
    return math.sqrt(2 * l3 + 1) * _cg(l1, l2, l3)


# ---------------------------------------------------------------------------------------------
# radial pieces
# ---------------------------------------------------------------------------------------------
def xplor_cutoff(r, r_on: float, r_cut: float):
    """XPLOR switching function: 1 below ``r_on``, smooth C1 decay to 0 at ``r_cut`` (Å)."""
    r2, on2, cut2 = r * r, r_on * r_on, r_cut * r_cut
    f = (cut2 - r2) ** 2 * (cut2 + 2.0 * r2 - 3.0 * on2) / (cut2 - on2) ** 3
    return jnp.where(r < r_on, 1.0, jnp.where(r < r_cut, f, 0.0))


def nequip_polynomial_cutoff(r, r_cut: float, p: int):
    """NequIP/DimeNet polynomial envelope (sevenn's ``PolynomialCutoff``), 0 beyond ``r_cut``:
    the same envelope as MACE's, so the shared one."""
    return polynomial_envelope(r / r_cut, p)


@functools.lru_cache(maxsize=None)
def _entry_plan(x_entries: tuple, filt: tuple, paths: tuple):
    """Group the paths by input entry: per entry ``i`` the stacked coefficients
    ``(dim(filter), 2l1+1, K_i)`` and the column slice of each path inside ``K_i``."""
    f_off = np.cumsum([0] + [ir.dim for _, ir in filt])
    plan = []
    for i, (mul, ir_in) in enumerate(x_entries):
        mine = [(k, p) for k, p in enumerate(paths) if p.i_in == i]
        if not mine:
            continue
        k_tot = sum(p.ir_out.dim for _, p in mine)
        coeff = np.zeros((int(f_off[-1]), ir_in.dim, k_tot))
        cols, c0 = [], 0
        for k, p in mine:
            l2 = filt[p.i_filter][1].l
            c = path_coefficients(ir_in.l, l2, p.ir_out.l)  # (d1, d2, d3)
            b0 = int(f_off[p.i_filter])
            coeff[b0 : b0 + c.shape[1], :, c0 : c0 + c.shape[2]] = np.transpose(c, (1, 0, 2))
            cols.append((k, c0, c.shape[2]))
            c0 += c.shape[2]
        plan.append((i, coeff, tuple(cols)))
    return tuple(plan)


@functools.lru_cache(maxsize=None)
def _entry_weight_plan(x_entries: tuple, filt: tuple, paths: tuple):
    """Per entry of :func:`_entry_plan`: the radial-MLP output columns of its paths, channel-major
    (``cols[u * P + p] = offset_p + u``)."""
    out = []
    for i, coeff, cols in _entry_plan(x_entries, filt, paths):
        mul = x_entries[i][0]
        offs = [paths[k].weight_offset for k, _, _ in cols]
        idx = np.asarray([o + u for u in range(mul) for o in offs], dtype=np.int32)
        out.append(idx)
    return tuple(out)


def _convolve(h: dict, x_entries: tuple, filt: tuple, paths, sh, hidden, w_last, senders, receivers, n_nodes,
              dtype) -> dict:
    """Aggregated ``uvu`` tensor-product messages ``sum_e w_eu sum_ab x_{s(e),u,a} Y_{e,b} c_abc``.

    ``hidden (E, H)`` is the radial MLP before its last layer and ``w_last (H, n_w)`` that layer
    (scaled), so each input entry computes only its own paths' weights with one matmul (its
    columns gathered from the parameter, not from an (E, n_w) array) and broadcasts them over the
    output columns: the backward pass has no per-path pad-and-add over (E, n_w).
    All paths leaving one input entry are computed together: one coefficient
    matmul, one fused multiply-add over ``2l1+1`` and one segment sum per entry.
    Returns ``{irrep: [(n_nodes, mul, 2l+1) per path]}`` in path order.
    """
    lay_x = layout(x_entries)
    per_path: dict = {}
    n_edges = sh.shape[0]
    plans = zip(_entry_plan(x_entries, filt, tuple(paths)), _entry_weight_plan(x_entries, filt, tuple(paths)))
    for (i, coeff, cols), w_idx in plans:
        mul, ir_in = x_entries[i]
        off = [b[1] for b in lay_x[ir_in] if b[0] == i][0]
        xi = h[ir_in][:, off : off + mul][senders]  # (E, mul, d1)
        t = jnp.einsum("eb,baK->eaK", sh, jnp.asarray(coeff, dtype))  # (E, d1, K)
        if ir_in.dim == 1:
            m = xi[:, :, 0, None] * t[:, None, 0, :]
        else:  # one fused multiply-reduce (its backward is reductions too, no per-slice pad-and-add)
            m = jnp.sum(xi[:, :, :, None] * t[:, None, :, :], axis=2)
        w = (hidden @ jnp.take(w_last, jnp.asarray(w_idx), axis=1)).reshape(n_edges, mul, -1)  # (E, mul, P)
        if w.shape[2] > 1:  # spread path p's weight over its 2l+1 columns
            w = jnp.concatenate([jnp.broadcast_to(w[:, :, p, None], (n_edges, mul, d3))
                                 for p, (_, _, d3) in enumerate(cols)], axis=2)
        m = m * w  # (E, mul, K)
        agg = jax.ops.segment_sum(m, receivers, num_segments=n_nodes)
        for k, c0, d3 in cols:
            per_path[k] = agg[:, :, c0 : c0 + d3]
    msgs: dict = {}
    for k, p in enumerate(paths):
        msgs.setdefault(p.ir_out, []).append(per_path[k])
    return msgs


# ---------------------------------------------------------------------------------------------
# the module
# ---------------------------------------------------------------------------------------------
def _normal_init(key, shape, dtype=jnp.float32):
    return jax.random.normal(key, shape, dtype)


class NequIP(nn.Module):
    """NequIP-family potential; build it from a converted config with :func:`build`.

    Fields are hashable (tuples/strings) so that compiled functions are shared
    between potentials of the same architecture.
    """

    n_species: int
    r_max: float
    node_irreps: tuple  # irreps strings, n_layers + 1
    num_basis: int = 8
    cutoff_function: str = "XPLOR"  # or "poly_cut"
    cutoff_on: float = 4.5  # XPLOR
    poly_p: int = 6  # poly_cut
    lmax_sh: int = 2
    sh_parity: int = 1  # 1: all 'e' (no parity, SevenNet-0); -1: O(3)
    normalize_sh: bool = True
    radial_hidden: tuple = (64, 64)
    radial_activation: str = "silu"
    scalar_activation: tuple = (("e", "silu"), ("o", "tanh"))
    gate_activation: tuple = (("e", "silu"), ("o", "tanh"))
    denominators: tuple = ()  # one per layer (sevenn: sqrt(avg_num_neigh)); () -> 1
    readout_hidden: int = 0  # 0 -> dim(final irreps) // 2 (sevenn)

    # ---- static structure -------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.node_irreps) - 1

    def _layer_structure(self, t: int) -> "LayerStructure":
        x_entries = parse_irreps(self.node_irreps[t])
        out_entries = parse_irreps(self.node_irreps[t + 1])
        filt = sh_irreps(self.lmax_sh, self.sh_parity)
        last = t == self.n_layers - 1
        lmax_out = max(ir.l for _, ir in out_entries)
        keep = tp_out_irreps(x_entries, filt, lmax_out, even_only=last)
        paths, mid, n_w = conv_paths(x_entries, filt, keep)
        scalars, gates, gated = gate_irreps(out_entries)
        return LayerStructure(x_entries, out_entries, filt, paths, mid, n_w, (scalars, gates, gated),
                              scalars + gates + gated)  # fmt: skip

    # ---- parameters -------------------------------------------------------------------------
    def _matrices(self, name: str, shapes: dict) -> dict:
        """A param ``name``: ``{irrep_str: (fan_in, fan_out)}`` matrices (N(0, 1) at init)."""
        items = sorted(shapes.items(), key=lambda kv: kv[0])
        return self.param(
            name, lambda key: {k: _normal_init(jax.random.fold_in(key, i), s) for i, (k, s) in enumerate(items)}
        )

    def _layer_params(self, t: int, st: "LayerStructure") -> dict:
        sizes = (self.num_basis,) + tuple(self.radial_hidden) + (st.n_w,)
        mlp = self.param(
            f"layer_{t}_radial_mlp",
            lambda key: {
                f"w{i}": _normal_init(jax.random.fold_in(key, i), (a, b))
                for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))
            },
        )
        return {
            "self_connection": self._matrices(f"layer_{t}_self_connection", linear_shapes(st.x, st.gate_in)),
            "self_interaction_1": self._matrices(f"layer_{t}_self_interaction_1", linear_shapes(st.x, st.x)),
            "radial_mlp": mlp,
            "self_interaction_2": self._matrices(f"layer_{t}_self_interaction_2", linear_shapes(st.mid, st.gate_in)),
        }

    # ---- forward ----------------------------------------------------------------------------
    @nn.compact
    def __call__(self, species, vectors, senders, receivers, node_mask, edge_mask):
        dtype = vectors.dtype
        n_nodes = species.shape[0]

        # edge embedding
        r = jnp.linalg.norm(vectors, axis=-1)
        freqs = self.param(
            "radial_frequencies",
            lambda key: jnp.arange(1, self.num_basis + 1, dtype=jnp.float32) * (math.pi / self.r_max),
        ).astype(dtype)
        basis = (2.0 / self.r_max) * jnp.sin(freqs * r[:, None]) / r[:, None]
        if self.cutoff_function == "XPLOR":
            fcut = xplor_cutoff(r, self.cutoff_on, self.r_max)
        elif self.cutoff_function == "poly_cut":
            fcut = nequip_polynomial_cutoff(r, self.r_max, self.poly_p)
        else:
            raise ValueError(f"unknown cutoff function {self.cutoff_function!r}")
        fcut = jnp.where(edge_mask & (r < self.r_max), fcut, 0.0)
        edges = EdgeData(
            embedding=basis * fcut[:, None],
            sh=_spherical_harmonics(-vectors, self.lmax_sh, self.sh_parity, self.normalize_sh),
            senders=senders,
            receivers=receivers,
        )

        # node embedding: e3nn Linear on the one-hot species
        muls0 = irrep_muls(parse_irreps(self.node_irreps[0]))
        if set(muls0) != {Irrep(0, 1)}:
            raise ValueError(f"the first node irreps must be even scalars, got {self.node_irreps[0]!r}")
        c0 = muls0[Irrep(0, 1)]
        emb = self.param("embedding", lambda key: _normal_init(key, (self.n_species, c0)))
        x = {Irrep(0, 1): (emb.astype(dtype)[species] * (1.0 / math.sqrt(self.n_species)))[:, :, None]}

        # interaction layers (a Python loop: on CPU it compiles faster and runs faster than
        # a lax.scan over the identical middle layers)
        acts = (self.radial_activation, dict(self.scalar_activation), dict(self.gate_activation))
        dens = [float(d) for d in (self.denominators or (1.0,) * self.n_layers)]
        descriptors = []
        for t in range(self.n_layers):
            st = self._layer_structure(t)
            p = jax.tree_util.tree_map(lambda a: a.astype(dtype), self._layer_params(t, st))
            x, scal = _layer_apply(p, dens[t], x, st, edges, n_nodes, acts)
            if scal is not None:
                descriptors.append(scal)

        # readout: Linear (final irreps -> hidden x 0e) -> Linear (-> 1 x 0e)
        final_entries = parse_irreps(self.node_irreps[-1])
        hidden = self.readout_hidden or sum(m * ir.dim for m, ir in final_entries) // 2
        hid_entries = ((hidden, Irrep(0, 1)),)
        w1 = self._matrices("readout_hidden", linear_shapes(final_entries, hid_entries))
        w2 = self._matrices("readout_out", linear_shapes(hid_entries, ((1, Irrep(0, 1)),)))
        e = linear_apply(w1, x, final_entries, hid_entries)
        e = linear_apply(w2, e, hid_entries, ((1, Irrep(0, 1)),))
        e = e[Irrep(0, 1)][:, 0, 0]
        shift = self.param("shift", lambda key: jnp.zeros((self.n_species,), jnp.float32)).astype(dtype)
        scale = self.param("scale", lambda key: jnp.ones((self.n_species,), jnp.float32)).astype(dtype)
        node_energy = e * scale[species] + shift[species]
        node_energy = jnp.where(node_mask, node_energy, 0.0)
        desc = jnp.concatenate(descriptors, axis=1) if descriptors else jnp.zeros((n_nodes, 0), dtype)
        return {"node_energy": node_energy, "descriptors": desc}


class LayerStructure(NamedTuple):
    """Static description of one interaction layer (hashable; equal for identical layers)."""

    x: tuple  # input irreps entries
    out: tuple  # output irreps entries
    filt: tuple  # spherical-harmonics entries
    paths: tuple  # TPPath, sorted
    mid: tuple  # convolution output entries (one per path)
    n_w: int  # radial MLP outputs
    gate_parts: tuple  # (scalars, gates, gated) entries
    gate_in: tuple  # scalars + gates + gated


class EdgeData(NamedTuple):
    embedding: jax.Array  # (E, num_basis) radial basis x cutoff
    sh: jax.Array  # (E, (lmax+1)^2) spherical harmonics of r_sender - r_receiver
    senders: jax.Array
    receivers: jax.Array


def _spherical_harmonics(vectors, lmax: int, parity: int, normalize: bool):
    import e3nn_jax

    ls = [ir.l for _, ir in sh_irreps(lmax, parity)]
    return e3nn_jax.sh(ls, vectors, normalize=normalize, normalization="component")


def linear_shapes(in_entries: tuple, out_entries: tuple) -> dict:
    """``{irrep_str: (fan_in, fan_out)}`` of an e3nn ``Linear`` (irreps present on both sides)."""
    muls_in, muls_out = irrep_muls(in_entries), irrep_muls(out_entries)
    return {str(ir): (muls_in[ir], m) for ir, m in muls_out.items() if muls_in.get(ir, 0) > 0}


def linear_apply(w: dict, x: dict, in_entries: tuple, out_entries: tuple) -> dict:
    """e3nn ``o3.Linear`` (no bias): ``out[ir] = x[ir] @ W[ir] / sqrt(fan_in[ir])``; zeros where no input."""
    muls_in, muls_out = irrep_muls(in_entries), irrep_muls(out_entries)
    some = next(iter(x.values()))
    out = {}
    for ir, m_out in muls_out.items():
        m_in = muls_in.get(ir, 0)
        if m_in == 0:
            out[ir] = jnp.zeros((some.shape[0], m_out, ir.dim), some.dtype)
        else:
            out[ir] = jnp.einsum("nui,uv->nvi", x[ir], w[str(ir)]) * (1.0 / math.sqrt(m_in))
    return out


def _gate_apply(h: dict, parts, act_s: dict, act_g: dict) -> dict:
    """e3nn ``Gate``: act(scalars) and act(gates) * gated, from the per-irrep blocks of ``h``."""
    scalars, gates, gated = parts
    lay = layout(scalars + gates + gated)
    n_sc = len(scalars)
    pieces: dict = {}
    for k, (mul, ir) in enumerate(scalars):
        off = [b[1] for b in lay[ir] if b[0] == k][0]
        fn = normalized_activation(act_s["e" if ir.p == 1 else "o"])
        pieces.setdefault(ir, []).append(fn(h[ir][:, off : off + mul]))
    for g, (mul, ir) in enumerate(gated):
        g_ir = gates[g][1]
        goff = [b[1] for b in lay[g_ir] if b[0] == n_sc + g][0]
        foff = [b[1] for b in lay[ir] if b[0] == n_sc + len(gates) + g][0]
        gate = normalized_activation(act_g["e" if g_ir.p == 1 else "o"])(h[g_ir][:, goff : goff + mul])
        pieces.setdefault(ir, []).append(h[ir][:, foff : foff + mul] * gate)
    return {ir: (v[0] if len(v) == 1 else jnp.concatenate(v, axis=1)) for ir, v in pieces.items()}


def _mlp_split(ws: dict, x, activation: str):
    """e3nn ``FullyConnectedNet`` without biases (``x @ W / sqrt(fan_in)``, act between layers),
    stopped before its last layer: returns ``(hidden, last layer's scaled weight)``."""
    act = normalized_activation(activation)
    n = len(ws)
    for i in range(n - 1):
        w = ws[f"w{i}"]
        x = act(x @ (w * (1.0 / math.sqrt(w.shape[0]))))
    w = ws[f"w{n - 1}"]
    return x, w * (1.0 / math.sqrt(w.shape[0]))


def _layer_apply(p: dict, den, x: dict, st: LayerStructure, edges: EdgeData, n_nodes: int, acts):
    """One interaction layer (pure); returns the new features and their 0e part (or None)."""
    act_radial, act_s, act_g = acts
    sc = linear_apply(p["self_connection"], x, st.x, st.gate_in)
    h = linear_apply(p["self_interaction_1"], x, st.x, st.x)
    hidden, w_last = _mlp_split(p["radial_mlp"], edges.embedding, act_radial)  # (E, H), (H, n_w)
    dtype = edges.embedding.dtype
    msgs = _convolve(h, st.x, st.filt, st.paths, edges.sh, hidden, w_last, edges.senders, edges.receivers, n_nodes,
                     dtype)
    inv = 1.0 / den
    agg = {ir: (v[0] if len(v) == 1 else jnp.concatenate(v, axis=1)) * inv for ir, v in msgs.items()}
    h = linear_apply(p["self_interaction_2"], agg, st.mid, st.gate_in)
    h = {ir: h[ir] + sc[ir] for ir in h}
    x = _gate_apply(h, st.gate_parts, act_s, act_g)
    scal = x[Irrep(0, 1)][:, :, 0] if Irrep(0, 1) in x else None
    return x, scal


def build(config: dict) -> NequIP:
    """A :class:`NequIP` module from a converted config (family ``"nequip"``)."""
    cut = config.get("cutoff_function", {"name": "XPLOR", "r_on": 4.5})
    return NequIP(
        n_species=len(config["atomic_numbers"]),
        r_max=float(config["r_max"]),
        node_irreps=tuple(config["node_irreps"]),
        num_basis=int(config.get("num_basis", 8)),
        cutoff_function=str(cut["name"]),
        cutoff_on=float(cut.get("r_on", 0.0)),
        poly_p=int(cut.get("p", 6)),
        lmax_sh=int(config["lmax_sh"]),
        sh_parity=int(config.get("sh_parity", 1)),
        normalize_sh=bool(config.get("normalize_sh", True)),
        radial_hidden=tuple(int(h) for h in config.get("radial_hidden", (64, 64))),
        radial_activation=str(config.get("radial_activation", "silu")),
        scalar_activation=tuple(sorted(dict(config.get("scalar_activation", {"e": "silu", "o": "tanh"})).items())),
        gate_activation=tuple(sorted(dict(config.get("gate_activation", {"e": "silu", "o": "tanh"})).items())),
        denominators=tuple(float(d) for d in config.get("denominators", ())),
        readout_hidden=int(config.get("readout_hidden", 0)),
    )


def param_groups(config: dict, params: dict) -> dict:
    """SevenNet/NequIP parameter groups (freezing, per-group learning rates; see :mod:`jaxuft.finetune.params`).

    Top-level leaves: ``embedding`` and ``radial_frequencies`` (trunk), ``layer_{i}_*`` (layer i),
    ``readout_hidden`` / ``readout_out``, and the per-element buffers ``scale`` and ``shift`` (the E0s).
    """
    names = list(params)
    idx = sorted({int(k.split("_")[1]) for k in names if k.startswith("layer_") and k.split("_")[1].isdigit()})
    return {
        "embedding": [k for k in names if k in ("embedding", "radial_frequencies")],
        "layers": [sorted(k for k in names if k.startswith(f"layer_{i}_")) for i in idx],
        "readouts": sorted(k for k in names if k.startswith("readout_")),
        "e0": "shift",
        "buffers": [k for k in ("scale", "shift") if k in names],
    }
