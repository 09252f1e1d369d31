"""Built-in benchmark models: SevenNet-0 (model zoo), a MACE-MP-0b-small-shaped MACE with random weights, and a tiny MACE for smoke tests.

The random MACE has exactly the architecture of MACE-MP-0b small (``mace_agnesi_small.model``:
89 elements, r_max 6 Å, 8 Bessel functions, max_ell 3, 128x0e hidden features, correlation 3,
two interactions, Agnesi transform and ZBL pair repulsion), so it costs what the real model
costs; its weights are random (seeded), so its energies mean nothing.  It is built without
torch: the U tensors come from :func:`jaxuft.bench.cg.u_matrix` (equal to mace-torch's).
"""

from __future__ import annotations

import math

import numpy as np

from .cg import u_matrix

#: names ``jaxuft bench --models`` accepts besides zoo names and model paths
BUILTIN = ("mace-mp0b-small", "mace-tiny")

_SILU_CST = 1.6791767923989418  # e3nn normalize2mom(silu), as stored in converted MACE-MP models
_AGNESI = {"type": "Agnesi", "q": 0.9183, "p": 4.5791, "a": 1.0805}  # MACE-MP-0b's fitted values
_ZBL = {"p": 5, "a_exp": 0.3, "a_prefactor": 0.4543, "c": [0.1818, 0.5099, 0.2802, 0.02817]}


def mace_config(*, atomic_numbers=tuple(range(1, 90)), channels: int = 128, max_ell: int = 3, correlation: int = 3,
                num_interactions: int = 2, r_max: float = 6.0, num_bessel: int = 8, radial_mlp=(64, 64, 64),
                mlp_dim: int = 16, avg_num_neighbors: float = 40.0, agnesi_zbl: bool = True) -> dict:
    """A converted-format MACE config (see :func:`jaxuft.models.mace.build`) of the MACE-MP-0b family.

    Defaults are MACE-MP-0b small; scalar hidden features only (``channels x 0e``), as in the small model.
    """
    if num_interactions < 1 or channels < 1 or max_ell < 0 or correlation < 1:
        raise ValueError("mace_config needs num_interactions >= 1, channels >= 1, max_ell >= 0, correlation >= 1")
    scal = f"{channels}x0e"
    target = "+".join(f"{channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(max_ell + 1))
    layers = []
    for i in range(num_interactions):
        last = i == num_interactions - 1
        layers.append({
            "interaction": "RealAgnosticInteractionBlock" if i == 0 else "RealAgnosticResidualInteractionBlock",
            "node_feats_irreps": scal,
            "edge_irreps": scal,
            "target_irreps": target,
            "hidden_irreps_out": scal,
            "correlation": correlation,
            "avg_num_neighbors": float(avg_num_neighbors),
            "radial_mlp": [int(h) for h in radial_mlp],
            "radial_act_cst": _SILU_CST,
            "readout": ({"type": "nonlinear", "mlp_dim": mlp_dim, "act": "silu", "act_cst": _SILU_CST}
                        if last else {"type": "linear"}),
        })
    return {
        "family": "mace",
        "atomic_numbers": [int(z) for z in atomic_numbers],
        "r_max": float(r_max),
        "num_bessel": int(num_bessel),
        "num_polynomial_cutoff": 5,
        "max_ell": int(max_ell),
        "heads": ["Default"],
        "head": "Default",
        "distance_transform": dict(_AGNESI) if agnesi_zbl else None,
        "pair_repulsion": dict(_ZBL) if agnesi_zbl else None,
        "radial_activation": "silu",
        "layers": layers,
    }


def mace_constants(config: dict) -> dict:
    """Fixed tensors of a MACE config: Bessel frequencies, covalent radii and the U tensors (torch-free)."""
    from ase.data import covalent_radii

    from ..models import irreps as I

    r_max, nb = float(config["r_max"]), int(config["num_bessel"])
    const = {
        "bessel_weights": np.pi / r_max * np.arange(1, nb + 1, dtype=np.float64),
        "bessel_prefactor": np.asarray(math.sqrt(2.0 / r_max)),
    }
    if config.get("distance_transform") or config.get("pair_repulsion"):
        const["covalent_radii"] = np.asarray(covalent_radii, np.float64)
    for i, lc in enumerate(config["layers"]):
        target = I.parse_irreps(lc["target_irreps"])
        coupling = I.irreps_str(tuple(I.MulIr(1, m.l, m.p) for m in target))
        for j, mo in enumerate(I.parse_irreps(lc["hidden_irreps_out"])):
            out = I.irreps_str((I.MulIr(1, mo.l, mo.p),))
            for nu in range(1, int(lc["correlation"]) + 1):
                const[f"products_{i}.contractions.{j}.U_matrix_{nu}"] = u_matrix(coupling, out, nu)
    return const


def random_params(config: dict, constants: dict, seed: int = 0) -> dict:
    """Seeded random weights for every parameter of the MACE config (shapes from the Flax module).

    Weights are N(0, 1) (e3nn's normalised layers), contraction weights N(0, 0.1), E0s U(-10, -1) eV,
    scale 1, shift 0: the scale of a freshly initialised mace-torch model, so MD on it stays finite.
    """
    import jax
    import jax.numpy as jnp

    from ..models import build_module

    module = build_module(config, constants)
    n, e = 2, 2
    dummy = (jnp.zeros(n, jnp.int32), jnp.ones((e, 3), jnp.float32), jnp.array([0, 1]), jnp.array([1, 0]),
             jnp.ones(n, bool), jnp.ones(e, bool))
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *dummy)["params"]
    rng = np.random.default_rng(seed)
    params = {}
    for name in sorted(shapes):
        shape = shapes[name].shape
        if name == "atomic_energies":
            params[name] = rng.uniform(-10.0, -1.0, shape)
        elif name == "scale":
            params[name] = np.ones(shape)
        elif name == "shift":
            params[name] = np.zeros(shape)
        elif ".contractions." in name:
            params[name] = rng.normal(0.0, 0.1, shape)
        else:
            params[name] = rng.normal(0.0, 1.0, shape)
    return params


def random_mace(dtype: str = "float32", seed: int = 0, **shape):
    """A :class:`~jaxuft.potential.Potential` of random-weight MACE (``shape``: :func:`mace_config` keywords)."""
    from ..potential import Potential

    config = mace_config(**shape)
    constants = mace_constants(config)
    return Potential(config, random_params(config, constants, seed), dtype=dtype, constants=constants)


def tiny_mace(dtype: str = "float32", seed: int = 0, atomic_numbers=(1, 6, 7, 8, 17, 27)):
    """A small MACE of the same family (8 channels, max_ell 1, correlation 2) for smoke tests and ``--tiny``."""
    return random_mace(dtype, seed, atomic_numbers=atomic_numbers, channels=8, max_ell=1, correlation=2,
                       r_max=4.0, num_bessel=4, radial_mlp=(8,), mlp_dim=4, avg_num_neighbors=10.0)


def load_model(name: str, dtype: str = "float32", numbers=None):
    """A benchmark model by name: ``mace-mp0b-small`` / ``mace-tiny`` (random weights), else :func:`jaxuft.load`.

    ``numbers``: the elements the tiny model must know (the MP-shaped one knows Z = 1..89).
    """
    if name == "mace-mp0b-small":
        return random_mace(dtype)
    if name == "mace-tiny":
        return tiny_mace(dtype, atomic_numbers=tuple(numbers) if numbers is not None else (1, 6, 7, 8, 11, 17))
    from ..api import load

    return load(name, dtype=dtype)
