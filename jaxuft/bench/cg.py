"""MACE's symmetric-contraction U tensors computed without torch (a numpy port of ``mace.tools.cg.U_matrix_real``)."""

from __future__ import annotations

import functools

import numpy as np

from ..models import irreps as I


def _wigner_nj(irrepss: tuple, filter_ir_mid: frozenset | None = None) -> list:
    """e3nn/mace ``_wigner_nj``: every coupling path of ``irrepss[0] x ... x irrepss[-1]``.

    Returns ``[(ir_out, C)]`` sorted by ``ir_out = (l, p)`` (stable, as mace sorts), with ``C`` of
    shape ``(2 l_out + 1, dim_1, ..., dim_n)`` in "component" normalisation.
    """
    if len(irrepss) == 1:
        (irreps,) = irrepss
        dim = I.irreps_dim(irreps)
        eye = np.eye(dim)
        ret, i = [], 0
        for m in irreps:
            for _ in range(m.mul):
                ret.append((m.ir, eye[i : i + m.dim]))
                i += m.dim
        return ret
    *left, right = irrepss
    left_dims = [I.irreps_dim(x) for x in left]
    right_dim = I.irreps_dim(right)
    ret = []
    for ir_left, c_left in _wigner_nj(tuple(left), filter_ir_mid):
        i = 0
        for m in right:
            for ir_out in I.ir_product(ir_left, m.ir):
                if filter_ir_mid is not None and ir_out not in filter_ir_mid:
                    continue
                w = I.wigner_3j(ir_out[0], ir_left[0], m.l) * np.sqrt(2 * ir_out[0] + 1)
                c = np.einsum("jk,ijl->ikl", c_left.reshape(c_left.shape[0], -1), w)
                c = c.reshape(2 * ir_out[0] + 1, *left_dims, m.dim)
                for u in range(m.mul):
                    e = np.zeros((2 * ir_out[0] + 1, *left_dims, right_dim))
                    e[..., i + u * m.dim : i + (u + 1) * m.dim] = c
                    ret.append((ir_out, e))
            i += m.mul * m.dim
    return sorted(ret, key=lambda t: t[0])


@functools.lru_cache(maxsize=None)
def u_matrix(coupling_irreps: str, irrep_out: str, correlation: int) -> np.ndarray:
    """The U tensor of one mace ``Contraction`` term: ``([2l+1,] d, ..., d, n_paths)`` (lead axis dropped for l = 0).

    ``coupling_irreps``: the node features' irreps with multiplicity 1 (e.g. ``"0e+1o+2e+3o"``);
    ``irrep_out``: one output irrep (``"0e"``); ``correlation``: the order nu of this term.
    Equal to mace-torch's ``U_matrix_real(...)[-1]`` (``use_reduced_cg=False``, the release default).
    """
    irreps_in = I.parse_irreps(coupling_irreps)
    (out,) = I.parse_irreps(irrep_out)
    filt = None
    if correlation == 4:  # mace filters the intermediate couplings at correlation 4
        filt = frozenset((l, 1 if l % 2 == 0 else -1) for l in range(12))
    paths = [c for ir, c in _wigner_nj((irreps_in,) * correlation, filt) if ir == out.ir]
    if not paths:
        raise ValueError(f"no coupling path from ({coupling_irreps})^{correlation} to {irrep_out}")
    u = np.stack([np.squeeze(c) for c in paths], axis=-1)
    return u
