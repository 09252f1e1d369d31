"""Frozen-trunk fine-tuning with features computed once.

When only a few leaves train (readout weights) and the model's energy is
*affine* in them, energies, forces and stresses are exactly

    E(θ) = E(θ0) + dE/dθ · (θ - θ0),   F(θ) = F(θ0) + dF/dθ · (θ - θ0),   S likewise,

where θ is the flat vector of trainable scalars.  So the frozen trunk is run
once per frame to get ``E, F, S`` at θ0 and their Jacobians with respect to θ
(forward-mode, in chunks of directions); after that every training step is a
few small matrix products: a frozen-trunk fine-tune costs about ``P / chunk``
forward+backward passes per frame once (P = trainable scalars), and almost
nothing per epoch.  This needs no help from the model family: any architecture
whose readout ends in a linear layer qualifies (the last linear layer of each
readout, the E0s, a per-element scale...).

The cache is checked: on the first batch the linear prediction is compared
with a real evaluation at a random θ; if the model is not affine in the chosen
leaves (e.g. a hidden layer of an MLP readout trains), :class:`TrunkCacheError`
says so (train ``linear-readouts``, or use the full forward path).

Per frame the cache holds (P trainable scalars, n atoms):
``e ()``, ``f (n, 3)``, ``s (3, 3)``, ``de (P,)``, ``df (n, 3, P)``, ``ds (3, 3, P)``.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ..errors import JaxuftError
from ..models import forward_mode
from ..potential import energy_fn, energy_forces_stress_fn
from .data import PER_NODE_CACHE, Sample, ShapePlan, batch_indices, collate
from .params import ParamSplit, flatten

#: refuse caches with more trainable scalars than this (memory grows as atoms x 3 x P)
MAX_CACHE_PARAMS = 20_000


class TrunkCacheError(JaxuftError, ValueError):
    """The frozen-trunk cache cannot represent the model exactly."""


def cached_predict(trainable, theta0, batch):
    """Predictions from cached values and Jacobians; ``theta0`` (P,) takes the place of frozen params."""
    theta, _ = ravel_pytree(trainable)
    d = theta - theta0
    c = batch.cache
    return {
        "energy": c["e"] + c["de"] @ d,
        "forces": c["f"] + c["df"] @ d,
        "stress": c["s"] + c["ds"] @ d,
    }


@functools.lru_cache(maxsize=64)
def full_predict_fn(module, split: ParamSplit):
    """``predict(trainable, frozen, batch)`` by the full model (only trainable leaves get gradients).

    Cached per (architecture, split) so repeated fine-tunes share compiled steps.
    """

    def predict(trainable, frozen, batch):
        params = split.merge(trainable, jax.lax.stop_gradient(frozen))
        out = energy_forces_stress_fn(module, params, batch.graph)
        return {"energy": out["energy"], "forces": out["forces"], "stress": out["stress"]}

    return predict


def full_predict(potential, split: ParamSplit):
    return full_predict_fn(potential.module, split)


def predict_for(mode: tuple):
    """The predict function of a hashable mode key: ``("cache",)`` or ``("full", module, split)``."""
    if mode[0] == "cache":
        return cached_predict
    if mode[0] == "multihead":
        return multihead_predict_fn(mode[1], mode[2])
    return full_predict_fn(mode[1], mode[2])


@functools.lru_cache(maxsize=16)
def multihead_predict_fn(module, split):
    """``predict(trainable, frozen, batch, head)``: the full model with head ``head`` (an int, may be traced)."""

    def predict(trainable, frozen, batch, head):
        params = split.merge(trainable, jax.lax.stop_gradient(frozen), head)
        out = energy_forces_stress_fn(module, params, batch.graph)
        return {"energy": out["energy"], "forces": out["forces"], "stress": out["stress"]}

    return predict


@functools.lru_cache(maxsize=16)
def _jac_fns(module, split: ParamSplit, template: tuple):
    """Jitted column classification and Jacobian-column functions (cached per architecture/split).

    ``kinds(theta, frozen, graph, key) -> (energy_nonzero (P,), force_nonzero (P,))``: gradients
    of random projections of the energies and of the forces/stresses; an entry that is exactly
    zero means the column vanishes (with probability one).
    ``energy_cols(theta, tangents, frozen, graph) -> (C, G)``: forward-mode energy columns.
    ``full_cols(theta, tangents, frozen, graph) -> (C, G), (C, N, 3), (C, G, 3, 3)``.
    """
    module = forward_mode(module)  # the columns are forward-over-reverse
    _, unravel = ravel_pytree({p: jnp.zeros(shape, dtype) for p, shape, dtype in template})

    def params_of(theta, frozen):
        return split.merge(unravel(theta), frozen)

    def energy(theta, frozen, graph):
        return energy_fn(module, params_of(theta, frozen), graph)

    def efs(theta, frozen, graph):
        out = energy_forces_stress_fn(module, params_of(theta, frozen), graph)
        return out["energy"], out["forces"], out["stress"]

    def kinds(theta, frozen, graph, key):
        ka, kb, kc = jax.random.split(key, 3)
        dt = theta.dtype
        a = jax.random.normal(ka, (graph.n_graphs,), dt) * graph.graph_mask
        b = jax.random.normal(kb, (graph.n_nodes, 3), dt) * graph.node_mask[:, None]
        c = jax.random.normal(kc, (graph.n_graphs, 3, 3), dt) * graph.graph_mask[:, None, None]
        ge = jax.grad(lambda th: jnp.sum(a * energy(th, frozen, graph)))(theta)

        def proj(th):
            _, f, s = efs(th, frozen, graph)
            return jnp.sum(b * f) + jnp.sum(c * s)

        gf = jax.grad(proj)(theta)
        return ge != 0, gf != 0

    def energy_cols(theta, tangents, frozen, graph):
        f = lambda t: jax.jvp(lambda th: energy(th, frozen, graph), (theta,), (t,))[1]
        return jax.vmap(f)(tangents)

    def full_cols(theta, tangents, frozen, graph):
        f = lambda t: jax.jvp(lambda th: efs(th, frozen, graph), (theta,), (t,))[1]
        return jax.vmap(f)(tangents)

    return jax.jit(kinds), jax.jit(energy_cols), jax.jit(full_cols)


class TrunkCache:
    """Computes the per-frame cache for one potential, frozen params and trainable leaves.

    Jacobian columns are computed only where they can be nonzero: a random-projection test
    per batch sorts the trainable scalars into *zero* (e.g. parameters of elements absent
    from the batch), *energy-only* (e.g. per-element energy shifts: no force or stress
    contribution; one cheap forward-mode pass) and *full* columns (forward-over-reverse,
    ``chunk`` at a time; the expensive part, about one backward pass each).
    """

    def __init__(self, potential, split: ParamSplit, trainable: dict, frozen: dict, chunk: int = 16):
        self.potential = potential
        self.split = split
        self.frozen = frozen
        theta0, unravel = ravel_pytree(trainable)
        self.theta0 = theta0
        self.unravel = unravel
        self.n_params = int(theta0.size)
        if self.n_params > MAX_CACHE_PARAMS:
            raise TrunkCacheError(
                f"the frozen-trunk cache stores {self.n_params} Jacobian columns per force component; "
                f"the limit is {MAX_CACHE_PARAMS}. Train fewer leaves (freeze linear-readouts) "
                "or fine-tune without the cache."
            )
        self.chunk = max(1, min(int(chunk), self.n_params))
        self.stats = {"batches": 0, "full_columns": 0, "energy_columns": 0, "zero_columns": 0}
        template = tuple((p, tuple(np.shape(x)), np.dtype(jnp.asarray(x).dtype).name) for p, x in sorted(trainable.items()))
        kinds, energy_cols, full_cols = _jac_fns(potential.module, split, template)
        efs = potential.compiled("efs")  # values at theta: the shared compiled function

        def values(theta, graph):
            out = efs(split.merge(unravel(theta), frozen), graph)
            return out["energy"], out["forces"], out["stress"]

        self._efs = values
        self._kinds = lambda graph, key: kinds(self.theta0, frozen, graph, key)
        self._energy_cols = lambda tangents, graph: energy_cols(self.theta0, tangents, frozen, graph)
        self._full_cols = lambda tangents, graph: full_cols(self.theta0, tangents, frozen, graph)

    def _tangents(self, cols: np.ndarray):
        """Chunks of unit tangents (fixed chunk size, zero-padded) for the given columns."""
        p, c = self.n_params, self.chunk
        for start in range(0, len(cols), c):
            part = cols[start : start + c]
            t = np.zeros((c, p), dtype=np.dtype(self.theta0.dtype))
            t[np.arange(len(part)), part] = 1.0
            yield part, jnp.asarray(t)

    def batch_cache(self, graph, key=None) -> dict:
        """Values and Jacobians for every graph of a padded batch (host arrays)."""
        p = self.n_params
        e, f, s = jax.device_get(self._efs(self.theta0, graph))
        key = jax.random.PRNGKey(0) if key is None else key
        e_nz, f_nz = (np.asarray(x) for x in jax.device_get(self._kinds(graph, key)))
        full = np.where(f_nz)[0]
        energy_only = np.where(e_nz & ~f_nz)[0]
        dt = np.asarray(e).dtype
        de = np.zeros(e.shape + (p,), dt)
        df = np.zeros(f.shape + (p,), dt)
        ds = np.zeros(s.shape + (p,), dt)
        for cols, t in self._tangents(energy_only):
            je = np.asarray(self._energy_cols(t, graph))
            de[:, cols] = je[: len(cols)].T
        for cols, t in self._tangents(full):
            je, jf, js = (np.asarray(x) for x in jax.device_get(self._full_cols(t, graph)))
            n = len(cols)
            de[:, cols] = je[:n].T
            df[..., cols] = np.moveaxis(jf[:n], 0, -1)
            ds[..., cols] = np.moveaxis(js[:n], 0, -1)
        self.stats["batches"] += 1
        self.stats["full_columns"] += len(full)
        self.stats["energy_columns"] += len(energy_only)
        self.stats["zero_columns"] += p - len(full) - len(energy_only)
        return {"e": e, "f": f, "s": s, "de": de, "df": df, "ds": ds}

    def check_affine(self, graph, cache: dict, key, rtol: float) -> dict:
        """Compare the linear prediction with a real evaluation at a random θ; raise if not affine."""
        theta0 = self.theta0
        scale = 0.1 * jnp.abs(theta0) + 0.05 * (jnp.max(jnp.abs(theta0)) + 1e-3)
        d = jax.random.normal(key, theta0.shape, theta0.dtype) * scale
        e, f, s = jax.device_get(self._efs(theta0 + d, graph))
        d = np.asarray(d)
        lin = {
            "energy": np.asarray(cache["e"]) + np.asarray(cache["de"]) @ d,
            "forces": np.asarray(cache["f"]) + np.asarray(cache["df"]) @ d,
        }
        true = {"energy": np.asarray(e), "forces": np.asarray(f)}
        base = {"energy": np.asarray(cache["e"]), "forces": np.asarray(cache["f"])}
        report = {}
        for k in lin:
            change = float(np.max(np.abs(true[k] - base[k])))
            err = float(np.max(np.abs(lin[k] - true[k])))
            scale_k = float(np.max(np.abs(true[k]))) if true[k].size else 0.0
            report[k] = {"change": change, "error": err}
            # float noise of the two evaluations ~ eps * |value|; nonlinearity ~ change^2
            noise = 50 * np.finfo(np.asarray(e).dtype).eps * max(scale_k, 1.0)
            if err > rtol * change + noise:
                raise TrunkCacheError(
                    f"the model is not affine in the trainable leaves: a random step changed {k} by "
                    f"{change:.3g} but the linear (cached) prediction is off by {err:.3g}. The frozen-trunk "
                    "cache is exact only when the energy is linear in what trains, e.g. the last linear "
                    "layer of each readout (freeze='linear-readouts'). Train those, or switch the cache off."
                )
        return report

    def fill(self, samples: Sequence[Sample], plan: ShapePlan, dtype, progress: Callable | None = None) -> None:
        """Attach ``sample.cache`` to every sample (host numpy arrays)."""
        todo = [i for i, s in enumerate(samples) if s.cache is None]
        if not todo:
            return
        chunks = batch_indices(samples, plan, todo)
        for grp, idx in chunks:
            batch = collate([samples[i] for i in idx], plan.capacity(grp), dtype)
            cache = self.batch_cache(batch.graph)
            split_cache(cache, [samples[i] for i in idx])
            if progress is not None:
                progress(len(idx))


def split_cache(cache: dict, samples: Sequence[Sample]) -> None:
    start = 0
    for k, s in enumerate(samples):
        n = s.n_nodes
        s.cache = {}
        for key, arr in cache.items():
            arr = np.asarray(arr)
            s.cache[key] = arr[start : start + n].copy() if key in PER_NODE_CACHE else arr[k].copy()
        start += n


def affine_leaves(potential, params, graph, candidates: Sequence[str], key, rtol: float = 1e-3) -> list[str]:
    """Those ``candidates`` leaves in which the per-atom energies are affine, jointly.

    Tested by second differences of ``node_energy`` under random perturbations of
    each leaf alone, then of all the survivors together.
    """
    paths, leaves, treedef = flatten(params)
    index = {p: i for i, p in enumerate(paths)}
    efs = potential.compiled("efs")  # shared with labelling, evaluation and MD
    node_energy = lambda prm, g: efs(prm, g)["node_energy"]

    def perturbed(which: Sequence[str], sign: float, k):
        new = list(leaves)
        for j, p in enumerate(which):
            x = jnp.asarray(leaves[index[p]])
            kk = jax.random.fold_in(k, j)
            scale = 0.2 * jnp.abs(x) + 0.1 * (jnp.max(jnp.abs(x)) + 1e-2)
            new[index[p]] = x + sign * jax.random.normal(kk, x.shape, x.dtype) * scale
        return jax.tree_util.tree_unflatten(treedef, new)

    mask = np.asarray(graph.node_mask)
    e0 = np.asarray(node_energy(params, graph))[mask]

    def is_affine(which, k) -> bool:
        ep = np.asarray(node_energy(perturbed(which, 1.0, k), graph))[mask]
        em = np.asarray(node_energy(perturbed(which, -1.0, k), graph))[mask]
        first = np.max(np.abs(ep - em)) / 2
        second = np.max(np.abs(ep + em - 2 * e0)) / 2
        noise = 100 * np.finfo(e0.dtype).eps * max(float(np.max(np.abs(e0))), 1.0)
        return bool(second <= rtol * first + noise)

    keep = [p for j, p in enumerate(candidates) if is_affine([p], jax.random.fold_in(key, j))]
    if len(keep) > 1 and not is_affine(keep, jax.random.fold_in(key, 10_000)):
        # jointly non-affine (e.g. two stacked linear layers): keep the last ones greedily
        chosen: list[str] = []
        for p in reversed(keep):
            if is_affine(chosen + [p], jax.random.fold_in(key, 20_000 + len(chosen))):
                chosen.append(p)
        keep = [p for p in keep if p in chosen]
    return keep
