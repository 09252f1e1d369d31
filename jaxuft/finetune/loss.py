"""Weighted energy/forces/stress losses (pure JAX) and error sums for metrics.

The default follows mace-torch (``mace/modules/loss.py``, ``mace/tools/arg_parser.py``):
energy weight 1, forces weight 100, stress weight 1, i.e. mace's "stress" loss
(``WeightedEnergyForcesStressLoss``), which is its default "weighted" loss plus a
stress term; frames without stress labels contribute no stress term.

- energy: mean over structures of ``w * ((E_pred - E_ref) / n_atoms)^2``  (eV/atom)²
- forces: mean over atoms and components of ``w * (F_pred - F_ref)^2``     (eV/Å)²
- stress: mean over structures and the 9 components of ``w * (S_pred - S_ref)^2`` (eV/Å³)²

``kind="huber"`` replaces the squares by Huber's function with ``huber_delta``
(as mace's ``WeightedHuberEnergyForcesStressLoss``; delta 0.01 by default).
Means run over the real (unpadded) structures/atoms of the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .config import LOSS_KINDS, LossConfig  # noqa: F401  (public here too)
from .data import Batch


def _rho(x, cfg: LossConfig):
    if cfg.kind == "mse":
        return x * x
    d = cfg.huber_delta
    a = jnp.abs(x)
    return jnp.where(a <= d, 0.5 * x * x, d * (a - 0.5 * d))


def loss_terms(pred: dict, batch: Batch, cfg: LossConfig) -> dict:
    """``{"loss", "energy", "forces", "stress"}`` scalars for one batch."""
    g = batch.graph
    real_graphs = g.graph_mask.astype(pred["energy"].dtype)
    real_nodes = g.node_mask.astype(pred["energy"].dtype)
    n_graphs = jnp.maximum(jnp.sum(real_graphs), 1.0)
    n_nodes = jnp.maximum(jnp.sum(real_nodes), 1.0)
    w = batch.weight * real_graphs

    e_err = (pred["energy"] - batch.energy) / batch.n_atoms
    le = jnp.sum(w * batch.energy_mask * _rho(e_err, cfg)) / n_graphs

    w_node = w[g.node_graph] * batch.forces_mask * real_nodes
    f_err = jnp.where(g.node_mask[:, None], pred["forces"] - batch.forces, 0.0)
    lf = jnp.sum(w_node[:, None] * _rho(f_err, cfg)) / (3.0 * n_nodes)

    s_err = pred["stress"] - batch.stress
    ls = jnp.sum((w * batch.stress_mask)[:, None, None] * _rho(s_err, cfg)) / (9.0 * n_graphs)

    total = cfg.energy_weight * le + cfg.forces_weight * lf + cfg.stress_weight * ls
    return {"loss": total, "energy": le, "forces": lf, "stress": ls}


#: names of the per-batch error sums (scalars) returned by :func:`error_sums`
SUM_KEYS = (
    "graphs", "loss_sum",
    "e_n", "e_sum", "e_sq", "e_abs",
    "f_n", "f_sq", "f_abs",
    "s_n", "s_sq", "s_abs",
)


def error_sums(pred: dict, batch: Batch, n_species: int, loss: jax.Array | None = None) -> dict:
    """Sums of (signed, squared, absolute) errors over the real entries of a batch.

    energy per atom (eV/atom), force components (eV/Å), stress components (eV/Å³);
    ``f_sq_species``/``f_abs_species``/``f_n_species`` (n_species,) split the force
    sums by the element of the atom.
    """
    g = batch.graph
    dt = pred["energy"].dtype
    gm = g.graph_mask.astype(dt) * batch.energy_mask
    e_err = (pred["energy"] - batch.energy) / batch.n_atoms
    nm = g.node_mask.astype(dt) * batch.forces_mask
    f_err = jnp.where(nm[:, None] > 0, pred["forces"] - batch.forces, 0.0)
    sm = g.graph_mask.astype(dt) * batch.stress_mask
    s_err = jnp.where(sm[:, None, None] > 0, pred["stress"] - batch.stress, 0.0)
    f_sq_node = jnp.sum(f_err * f_err, axis=1)
    f_abs_node = jnp.sum(jnp.abs(f_err), axis=1)
    seg = lambda v: jax.ops.segment_sum(v, g.species, num_segments=n_species)
    n_real = jnp.sum(g.graph_mask.astype(dt))
    return {
        "graphs": n_real,
        "loss_sum": (loss if loss is not None else jnp.zeros((), dt)) * n_real,
        "e_n": jnp.sum(gm),
        "e_sum": jnp.sum(gm * e_err),
        "e_sq": jnp.sum(gm * e_err * e_err),
        "e_abs": jnp.sum(gm * jnp.abs(e_err)),
        "f_n": 3.0 * jnp.sum(nm),
        "f_sq": jnp.sum(f_sq_node),
        "f_abs": jnp.sum(f_abs_node),
        "s_n": 9.0 * jnp.sum(sm),
        "s_sq": jnp.sum(s_err * s_err),
        "s_abs": jnp.sum(jnp.abs(s_err)),
        "f_n_species": 3.0 * seg(nm),
        "f_sq_species": seg(f_sq_node),
        "f_abs_species": seg(f_abs_node),
    }


class ErrorAccumulator:
    """Adds up :func:`error_sums` on the host (float64) and turns them into RMSE/MAE."""

    def __init__(self):
        self.sums: dict = {}

    def add(self, sums: dict) -> None:
        import numpy as np

        for k, v in jax.device_get(sums).items():
            v = np.asarray(v, dtype=np.float64)
            self.sums[k] = self.sums.get(k, 0.0) + v

    def metrics(self) -> dict:
        """Energy in meV/atom, forces meV/Å, stress meV/Å³; NaN where nothing was measured."""
        import numpy as np

        s = self.sums
        if not s:
            return {}

        def ratio(a, b, f=1.0):
            b = float(s.get(b, 0.0))
            return float(f * s[a] / b) if b > 0 else float("nan")

        out = {
            "loss": ratio("loss_sum", "graphs"),
            "energy_mean": 1e3 * ratio("e_sum", "e_n"),
            "energy_rmse": 1e3 * float(np.sqrt(ratio("e_sq", "e_n"))),
            "energy_mae": 1e3 * ratio("e_abs", "e_n"),
            "forces_rmse": 1e3 * float(np.sqrt(ratio("f_sq", "f_n"))),
            "forces_mae": 1e3 * ratio("f_abs", "f_n"),
            "stress_rmse": 1e3 * float(np.sqrt(ratio("s_sq", "s_n"))),
            "stress_mae": 1e3 * ratio("s_abs", "s_n"),
            "n_structures": int(round(float(s["graphs"]))),
        }
        return out

    def per_species(self) -> dict:
        """``{species index: {"forces_rmse", "forces_mae", "n_atoms"}}`` (meV/Å)."""
        import numpy as np

        s = self.sums
        if "f_n_species" not in s:
            return {}
        n = np.asarray(s["f_n_species"])
        out = {}
        for k in range(len(n)):
            if n[k] > 0:
                out[k] = {
                    "forces_rmse": 1e3 * float(np.sqrt(s["f_sq_species"][k] / n[k])),
                    "forces_mae": 1e3 * float(s["f_abs_species"][k] / n[k]),
                    "n_atoms": int(round(n[k] / 3)),
                }
        return out
