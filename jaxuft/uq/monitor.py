"""Live Q-residual monitoring inside compiled MD: pure functions for the engine's observables hook.

The MD engine calls ``fn(params, graph, extra_args) -> dict`` at recording steps
inside its compiled scan and can stop a replica with a predicate on the result.
Everything that changes between runs (the fitted PCA, the limits) travels in
``extra_args`` as arrays, so a new PCA of the same shape compiles nothing new.

    mon = build_monitor(potential, pca, limits)        # limits: ElementLimits, dict or array
    obs = mon.fn(params, graph, mon.extra_args)         # inside jit / scan
    obs["q"]              (n_nodes,)            per-atom Q (0 on padding atoms)
    obs["q_max_element"]  (n_graphs, n_species) largest Q of each element (model species order; 0 if absent)
    obs["q_ratio"]        (n_graphs,)           max over atoms of Q / limit(element)
    obs["q_flag"]         (n_graphs,)           some atom beyond its element's limit (False on padding graphs)
    mon.stop(obs, extra)  ()                    any flag: the per-replica stop predicate

``mon.atomic_numbers`` gives the element order of ``q_max_element`` (the model's).
With :class:`jaxuft.md.Simulation`::

    sim = md.Simulation(potential, ensemble, **mon.simulation_kwargs(stop=True))
    state, traj = sim.run(state, params, n_steps, record_every, extra=mon.extra_args)
    traj.observables["q"]          # (replicas, frames, n_atoms): the engine drops the padding atom

A monitor on the model's own descriptors takes them as ``fn(..., descriptors=)`` (its
``fn.model_descriptors`` names the model): inside MD with the same potential, the engine
hands it the descriptors of the force evaluation at the recorded positions, so the monitor
runs no forward pass of its own (the same Q; SOAP monitors still compute from the graph).

Monitors built for the same model architecture share one ``fn`` object, and
:meth:`QResidualMonitor.with_pca` swaps only the arrays, so a refitted PCA or new
limits run in the already compiled MD program.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..graph import Graph
from .limits import ElementLimits
from .pca import PCA, PCAState, q_residual_fn


def monitor_observables(descriptor_fn: Callable, params, graph: Graph, extra_args: dict, descriptors=None) -> dict:
    """The monitor's observables for one padded graph (pure; see the module docstring).

    ``descriptor_fn(params, graph) -> (n_nodes, n_features)``;
    ``extra_args = {"pca": PCAState, "limits": (n_species,)}`` (``inf``: never flag);
    ``descriptors (n_nodes, n_features)``: already computed ones (``descriptor_fn`` is then not called).
    """
    desc = descriptor_fn(params, graph) if descriptors is None else descriptors
    state: PCAState = extra_args["pca"]
    limits = extra_args["limits"]
    state = jax.tree_util.tree_map(lambda a: a.astype(desc.dtype), state)
    q = q_residual_fn(state, desc)
    q = jnp.where(graph.node_mask, q, 0.0)
    n_species = limits.shape[0]
    seg = graph.node_graph * n_species + graph.species
    qm = jax.ops.segment_max(jnp.where(graph.node_mask, q, -jnp.inf), seg, num_segments=graph.n_graphs * n_species)
    qm = jnp.where(jnp.isfinite(qm), qm, 0.0).reshape(graph.n_graphs, n_species)
    lim = limits.astype(q.dtype)[graph.species]
    ratio = jnp.where(graph.node_mask, q / lim, 0.0)
    ratio = jax.ops.segment_max(ratio, graph.node_graph, num_segments=graph.n_graphs)
    ratio = jnp.where(graph.graph_mask, ratio, 0.0)
    return {"q": q, "q_max_element": qm, "q_ratio": ratio, "q_flag": ratio > 1.0}


def stop_on_flag(observables: dict, extra_args=None) -> jax.Array:
    """Per-replica stop predicate ``(observables, extra) -> bool``: True once any atom passed its element's limit."""
    return jnp.any(observables["q_flag"])


@functools.lru_cache(maxsize=None)
def _module_descriptor_fn(module) -> Callable:
    from ..potential import node_descriptors

    def fn(params, graph):
        return node_descriptors(module, params, graph)

    fn.model_module = module
    return fn


def model_descriptor_fn(potential) -> Callable:
    """``(params, graph) -> (n_nodes, n_features)``: the Potential's invariant descriptors.

    One function object per model architecture, so monitors of the same architecture
    share compiled code.
    """
    return _module_descriptor_fn(potential.module)


@functools.lru_cache(maxsize=None)
def _observables_fn(descriptor_fn: Callable) -> Callable:
    def fn(params, graph, extra_args, descriptors=None):
        return monitor_observables(descriptor_fn, params, graph, extra_args, descriptors)

    # the MD engine passes the force pass's descriptors when its potential has this module
    fn.model_descriptors = getattr(descriptor_fn, "model_module", None)
    return fn


@dataclass
class QResidualMonitor:
    """A built monitor: ``fn(params, graph, extra_args)``, its ``extra_args`` and the ``stop`` predicate."""

    fn: Callable
    extra_args: dict
    atomic_numbers: tuple
    stop: Callable = stop_on_flag

    def with_pca(self, pca: PCA, limits: Any = None) -> "QResidualMonitor":
        """Same compiled function, new arrays (a refitted PCA and/or new limits)."""
        lim = self.extra_args["limits"] if limits is None else _limits_array(limits, self.atomic_numbers)
        dtype = self.extra_args["pca"].mean.dtype
        return QResidualMonitor(self.fn, {"pca": pca.state(dtype), "limits": jnp.asarray(lim, dtype)}, self.atomic_numbers, self.stop)

    def __call__(self, params, graph: Graph) -> dict:
        return self.fn(params, graph, self.extra_args)

    def simulation_kwargs(self, stop: bool = False) -> dict:
        """``observables=`` (and with ``stop``, ``stop_if=``) for :class:`jaxuft.md.Simulation`."""
        kw = {"observables": self.fn}
        if stop:
            kw["stop_if"] = self.stop
        return kw


def _limits_array(limits, atomic_numbers) -> np.ndarray:
    if limits is None:
        return np.full(len(atomic_numbers), np.inf)
    if isinstance(limits, ElementLimits):
        return limits.array(atomic_numbers)
    if isinstance(limits, dict):
        return ElementLimits(limit=dict(limits)).array(atomic_numbers)
    arr = np.asarray(limits, dtype=np.float64)
    if arr.ndim == 0:
        return np.full(len(atomic_numbers), float(arr))
    if arr.shape != (len(atomic_numbers),):
        raise ValueError(f"limits must have one value per model element ({len(atomic_numbers)}), got {arr.shape}")
    return arr


def build_monitor(potential, pca: PCA, limits=None, descriptor_fn: Callable | None = None, dtype=None) -> QResidualMonitor:
    """A live Q monitor for ``potential``'s MD from a PCA fitted on its descriptors.

    limits: :class:`ElementLimits`, ``{symbol: limit}``, one value per model element,
        a scalar, or None (record only, never flag).  Elements without a limit never flag.
    descriptor_fn: ``(params, graph) -> (n_nodes, n_features)``; default: the
        Potential's own descriptors (what :class:`~jaxuft.uq.descriptors.ModelDescriptor` computes).
    dtype: of the PCA arrays (default: the potential's).
    """
    fn_desc = descriptor_fn or model_descriptor_fn(potential)
    atomic_numbers = tuple(potential.atomic_numbers)
    dt = np.dtype(dtype) if dtype is not None else potential.dtype
    lim = _limits_array(limits, atomic_numbers)
    extra = {"pca": pca.state(dt), "limits": jnp.asarray(lim, dt)}
    return QResidualMonitor(fn=_observables_fn(fn_desc), extra_args=extra, atomic_numbers=atomic_numbers)
