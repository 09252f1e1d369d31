"""A smooth Morse pair potential in the same interface as the equivariant models.

Small, fast and exactly differentiable: used for integrator tests, fine-tuning
tests and as a cheap stand-in wherever physics matters less than plumbing.

``E = sum_i e0[s_i] + 1/2 sum_{i != j} D (exp(-2a(r-r0)) - 2 exp(-a(r-r0))) f_cut(r)``
with per-species-pair ``D`` (eV), ``a`` (1/Å), ``r0`` (Å) and a smooth
polynomial envelope ``f_cut`` that vanishes with two derivatives at ``r_max``.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from .layers import polynomial_envelope


class MorsePair(nn.Module):
    n_species: int
    r_max: float
    descriptor_bins: int = 8

    @nn.compact
    def __call__(self, species, vectors, senders, receivers, node_mask, edge_mask):
        s = self.n_species
        dtype = vectors.dtype
        D = self.param("D", lambda k: jnp.full((s, s), 0.1, dtype))
        a = self.param("a", lambda k: jnp.full((s, s), 1.5, dtype))
        r0 = self.param("r0", lambda k: jnp.full((s, s), 1.5, dtype))
        e0 = self.param("e0", lambda k: jnp.zeros((s,), dtype))
        r = jnp.linalg.norm(vectors, axis=-1)
        si, sj = species[senders], species[receivers]
        Dp = 0.5 * (D[si, sj] + D[sj, si])
        ap = 0.5 * (a[si, sj] + a[sj, si])
        r0p = 0.5 * (r0[si, sj] + r0[sj, si])
        x = jnp.exp(-ap * (r - r0p))
        env = polynomial_envelope(r / self.r_max, 5)
        phi = jnp.where(edge_mask, Dp * (x * x - 2.0 * x) * env, 0.0)
        node_energy = e0[species] + 0.5 * jnp.zeros_like(e0[species]).at[receivers].add(phi)
        # descriptors: smooth radial histogram of neighbours (invariant, per atom)
        centers = jnp.linspace(0.5, self.r_max, self.descriptor_bins, dtype=dtype)
        g = jnp.exp(-((r[:, None] - centers) ** 2) / 0.25) * (env * edge_mask)[:, None]
        desc = jnp.zeros((species.shape[0], self.descriptor_bins), dtype).at[receivers].add(g)
        return {"node_energy": jnp.where(node_mask, node_energy, 0.0), "descriptors": desc}


def build(config: dict) -> MorsePair:
    return MorsePair(n_species=len(config["atomic_numbers"]), r_max=float(config["r_max"]))


def morse_config(atomic_numbers, r_max: float = 5.0) -> dict:
    return {"family": "pair", "atomic_numbers": [int(z) for z in atomic_numbers], "r_max": float(r_max)}


def morse_params(n_species: int, D=0.1, a=1.5, r0=1.5, e0=0.0) -> dict:
    full = lambda v: np.full((n_species, n_species), v, dtype=np.float64)
    return {"D": full(D), "a": full(a), "r0": full(r0), "e0": np.full((n_species,), e0, dtype=np.float64)}


def builtin_morse(numbers) -> tuple[dict, dict]:
    """``(config, params)`` of a toy Morse potential for the elements in ``numbers``:
    r0 from covalent radii, D 0.3 eV, a 1.5/Å, 5 Å cutoff (``jaxuft md --model morse``)."""
    from ase.data import covalent_radii

    z = sorted({int(n) for n in numbers})
    params = morse_params(len(z), D=0.3, a=1.5, r0=0.0)
    r = np.array([covalent_radii[k] for k in z])
    params["r0"] = r[:, None] + r[None, :]
    return morse_config(z, 5.0), params


def param_groups(config: dict, params: dict) -> dict:
    """Morse pair model: ``D``, ``a``, ``r0`` (the pair terms; no layers or readouts) and ``e0`` (the E0s)."""
    return {"readouts": [], "layers": [], "e0": "e0", "buffers": ["e0"]}
