"""Irreps bookkeeping and the e3nn (torch) conventions our converted weights assume.

Features are flat arrays in e3nn's layout: for irreps ``m1 x ir1 + m2 x ir2 + ...``
the feature vector is the concatenation of blocks of shape ``(m_k, 2 l_k + 1)``
(multiplicity-major).  Spherical harmonics of e3nn-jax equal those of e3nn 0.4.4
exactly; the Wigner-3j tensors differ only by a sign for some ``{l1, l2, l3}``
(listed in :data:`E3NN_044_FLIPPED_TRIPLES`, verified against e3nn 0.4.4 by the parity tests).
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

import numpy as np

_IR = re.compile(r"^\s*(?:(\d+)\s*x\s*)?(\d+)([eo])\s*$")


class MulIr(NamedTuple):
    mul: int
    l: int
    p: int  # +1 even, -1 odd

    @property
    def dim(self) -> int:
        return 2 * self.l + 1

    @property
    def ir(self) -> tuple[int, int]:
        return (self.l, self.p)


def parse_irreps(s: str) -> tuple[MulIr, ...]:
    """``"128x0e+128x1o"`` -> ``(MulIr(128, 0, 1), MulIr(128, 1, -1))``."""
    out = []
    if not s.strip():
        return ()
    for part in s.split("+"):
        m = _IR.match(part)
        if not m:
            raise ValueError(f"cannot parse irreps {s!r} (part {part!r})")
        out.append(MulIr(int(m.group(1) or 1), int(m.group(2)), 1 if m.group(3) == "e" else -1))
    return tuple(out)


def irreps_str(irreps) -> str:
    return "+".join(f"{m.mul}x{m.l}{'e' if m.p == 1 else 'o'}" for m in irreps)


def irreps_dim(irreps) -> int:
    return sum(m.mul * m.dim for m in irreps)


def offsets(irreps) -> list[int]:
    out, o = [], 0
    for m in irreps:
        out.append(o)
        o += m.mul * m.dim
    return out


def ir_product(ir1: tuple[int, int], ir2: tuple[int, int]):
    """Irreps in ``ir1 x ir2`` in e3nn's order (increasing l)."""
    (l1, p1), (l2, p2) = ir1, ir2
    return [(l, p1 * p2) for l in range(abs(l1 - l2), l1 + l2 + 1)]


def spherical_harmonics_irreps(lmax: int) -> tuple[MulIr, ...]:
    return tuple(MulIr(1, l, (-1) ** l) for l in range(lmax + 1))


def sort_irreps(irreps):
    """e3nn ``Irreps.sort()``: stable sort by (l, p); returns (sorted, permutation old->new)."""
    order = sorted(range(len(irreps)), key=lambda i: (irreps[i].l, irreps[i].p, i))
    perm = [0] * len(irreps)
    for new, old in enumerate(order):
        perm[old] = new
    return tuple(irreps[i] for i in order), perm


def simplify(irreps):
    out = []
    for m in irreps:
        if out and out[-1].ir == m.ir:
            out[-1] = MulIr(out[-1].mul + m.mul, m.l, m.p)
        elif m.mul > 0:
            out.append(m)
    return tuple(out)


def tp_out_irreps_with_instructions(irreps1, irreps2, target):
    """mace-torch's 'uvu' convolution layout: (irreps_mid, [(i1, i2, i_out)]) sorted by output."""
    target_irs = {m.ir for m in target}
    mid, ins = [], []
    for i, m1 in enumerate(irreps1):
        for j, m2 in enumerate(irreps2):
            for ir in ir_product(m1.ir, m2.ir):
                if ir in target_irs:
                    ins.append((i, j, len(mid)))
                    mid.append(MulIr(m1.mul, *ir))
    mid_sorted, perm = sort_irreps(tuple(mid))
    ins = sorted(((i, j, perm[k]) for i, j, k in ins), key=lambda t: t[2])
    return mid_sorted, ins


#: {l1, l2, l3} (sorted) whose e3nn 0.4.4 Wigner-3j has the opposite sign to e3nn-jax's.
E3NN_044_FLIPPED_TRIPLES = frozenset(
    {(1, l, l) for l in range(2, 12)}
    | {(3, 4, 6), (3, 5, 7), (3, 6, 8), (3, 7, 9), (3, 8, 10), (3, 9, 11)}
    | {(4, 4, 5), (4, 5, 6), (4, 6, 7), (4, 7, 8), (4, 8, 9), (4, 9, 10), (4, 10, 11)}
    | {(5, 5, 5), (5, 6, 6), (5, 6, 10), (5, 7, 7), (5, 7, 11), (5, 8, 8), (5, 9, 9)}
    | {(5, 10, 10), (5, 11, 11), (6, 6, 9), (6, 7, 10), (6, 8, 11), (7, 7, 9), (7, 8, 10)}
    | {(7, 9, 11), (8, 8, 9), (8, 9, 10), (8, 10, 11), (9, 9, 9), (9, 10, 10), (9, 11, 11)}
)


@functools.lru_cache(maxsize=None)
def wigner_3j(l1: int, l2: int, l3: int, convention: str = "e3nn-0.4") -> np.ndarray:
    """Real Wigner-3j tensor ``(2l1+1, 2l2+1, 2l3+1)`` with unit Frobenius norm.

    ``convention="e3nn-0.4"`` reproduces e3nn 0.4.4 (mace-torch); ``"e3nn-jax"`` is e3nn-jax's.
    """
    import e3nn_jax

    if max(l1, l2, l3) > 11:
        raise NotImplementedError("Wigner-3j sign convention verified only up to l = 11")
    c = np.asarray(e3nn_jax.clebsch_gordan(l1, l2, l3), dtype=np.float64)
    c = c / np.linalg.norm(c)
    if convention == "e3nn-0.4" and tuple(sorted((l1, l2, l3))) in E3NN_044_FLIPPED_TRIPLES:
        c = -c
    return c
