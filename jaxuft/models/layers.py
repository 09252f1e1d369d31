"""Radial building blocks shared by the model families (pure jax.numpy).

Lengths in Å.  Functions take per-edge arrays and return per-edge arrays.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from ase.data import covalent_radii as _ASE_COVALENT_RADII

COVALENT_RADII = np.asarray(_ASE_COVALENT_RADII, dtype=np.float64)

#: ZBL universal screening function coefficients and exponents (Ziegler, Biersack, Littmark 1985)
ZBL_C = (0.1818, 0.5099, 0.2802, 0.02817)
ZBL_D = (3.2, 0.9423, 0.4028, 0.2016)
#: e^2 / (4 pi eps0) in eV Å, the value mace-torch's ZBL uses
ZBL_COULOMB = 14.3996
BOHR_ZBL = 0.529


def polynomial_envelope(x, p: int):
    """Smooth cutoff ``f(x)`` for ``x = r / r_max``: 1 at 0, 0 with p-th order smoothness at 1.

    ``1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)`` for ``x < 1``, else 0.
    """
    p = float(p)
    env = (
        1.0
        - (p + 1.0) * (p + 2.0) / 2.0 * x**p
        + p * (p + 2.0) * x ** (p + 1)
        - p * (p + 1.0) / 2.0 * x ** (p + 2)
    )
    return jnp.where(x < 1.0, env, 0.0)


def bessel_basis(r, frequencies, prefactor):
    """``prefactor * sin(w_n r) / r`` for each frequency ``w_n`` -> (n_edges, n_basis)."""
    return prefactor * jnp.sin(frequencies * r[:, None]) / r[:, None]


def agnesi_transform(r, z_sender, z_receiver, q, p, a, radii=None):
    """Agnesi distance transform (ACEpotentials.jl): ``1 / (1 + a (r/r0)^q / (1 + (r/r0)^(q-p)))``.

    ``r0`` is the mean covalent radius of the two atoms (from their atomic numbers).
    """
    radii = jnp.asarray(COVALENT_RADII, dtype=r.dtype) if radii is None else radii
    r0 = 0.5 * (radii[z_sender] + radii[z_receiver])
    x = r / r0
    return 1.0 / (1.0 + a * x**q / (1.0 + x ** (q - p)))


def zbl_edge_energy(r, z_sender, z_receiver, p: int, a_exp=0.300, a_prefactor=0.4543, c=ZBL_C, radii=None):
    """ZBL repulsion of one directed edge, halved (each pair appears twice), enveloped.

    The envelope cuts off at the sum of the covalent radii.
    """
    dtype = r.dtype
    zu = z_sender.astype(dtype)
    zv = z_receiver.astype(dtype)
    a = a_prefactor * BOHR_ZBL / (zu**a_exp + zv**a_exp)
    x = r / a
    phi = sum(ci * jnp.exp(-di * x) for ci, di in zip(c, ZBL_D))
    v = ZBL_COULOMB * zu * zv / r * phi
    radii = jnp.asarray(COVALENT_RADII, dtype=dtype) if radii is None else radii
    r_max = radii[z_sender] + radii[z_receiver]
    return 0.5 * v * polynomial_envelope(r / r_max, p)
