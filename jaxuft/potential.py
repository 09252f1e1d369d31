"""The Potential: an immutable model config plus a params pytree, and the pure model seam.

Every consumer (MD, fine-tuning, Q-residuals, the ASE calculator) receives
``params`` as a function argument, so new params flow into already-compiled
code without recompilation.  The public seam is ``(module, params, graph)``:
``module`` is ``potential.module`` (a Flax module, hashable, one per architecture),
``params`` a pytree, ``graph`` a padded :class:`~jaxuft.graph.Graph`:

- :func:`node_outputs` ``(module, params, graph) -> {"node_energy", "descriptors"}``
- :func:`node_descriptors` ``(module, params, graph) -> (n_nodes, n_features)`` invariant features
- :func:`energy` ``(module, params, graph) -> (n_graphs,)`` eV
- :func:`energy_forces_stress` ``(module, params, graph) -> dict`` with
  ``energy (n_graphs,)`` eV, ``forces (n_nodes, 3)`` eV/Å, ``stress (n_graphs, 3, 3)``
  eV/Å³ (ASE sign: ``(1/V) dE/dε``; zero for non-periodic graphs) and ``node_energy``.

All are pure and differentiable (``jax.jit``/``jax.grad`` w.r.t. ``params`` or
``graph.positions``); padding nodes give zero forces and zero energy.  The
:class:`Potential` methods of the same names bind ``module``.  The older names
``energy_fn``, ``energy_forces_stress_fn`` and ``_node_outputs`` remain as aliases.

Host conveniences (:meth:`Potential.predict`, :meth:`Potential.descriptors`) take ASE ``Atoms``.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms

from .graph import Graph, edge_vectors, graph_sum
from .graph import bucket_size
from .structures import DEFAULT_MIN_DISTANCE, SpeciesMap, atoms_to_graph, atoms_to_host_graph, batch_host_graphs

DTYPES = {"float32": np.float32, "float64": np.float64}


def resolve_dtype(dtype) -> np.dtype:
    """Accept "float32"/"float64" or numpy dtypes; enable x64 in JAX when needed."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if name == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    return np.dtype(name)


def cast_params(params, dtype):
    """Cast floating leaves of a params pytree to ``dtype`` (ints untouched)."""
    def cast(x):
        # numpy-side cast + device_put: jnp.asarray would compile a tiny program per new shape
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.floating):
            x = x.astype(dtype, copy=False)
        return jax.device_put(x)

    return jax.tree_util.tree_map(cast, params)


def node_outputs(module, params, graph: Graph, positions=None, cell=None) -> dict:
    """Per-node outputs ``{"node_energy": (n_nodes,), "descriptors": (n_nodes, n_features)}`` (pure).

    ``positions``/``cell`` replace ``graph.positions``/``graph.cell`` (e.g. strained
    copies); padding nodes carry unmasked values (mask with ``graph.node_mask``)."""
    vectors = edge_vectors(graph, positions, cell)
    return module.apply(
        {"params": params},
        graph.species,
        vectors,
        graph.senders,
        graph.receivers,
        graph.node_mask,
        graph.edge_mask,
    )


def _energy_and_aux(module, params, graph: Graph, positions, strain, descriptors=False):
    sym = 0.5 * (strain + jnp.swapaxes(strain, -1, -2))  # (G, 3, 3)
    pos = positions + jnp.einsum("ni,nij->nj", positions, sym[graph.node_graph])
    cell = graph.cell + jnp.einsum("gij,gjk->gik", graph.cell, sym)
    out = node_outputs(module, params, graph, pos, cell)
    node_energy = jnp.where(graph.node_mask, out["node_energy"], 0.0)
    energy = graph_sum(node_energy, graph)
    return jnp.sum(energy), (energy, node_energy) + ((out["descriptors"],) if descriptors else ())


def energy_forces_stress(module, params, graph: Graph, descriptors: bool = False) -> dict:
    """Energy, forces and stress of every graph in ``graph`` (pure, differentiable).

    Returns ``energy (n_graphs,)`` eV, ``forces (n_nodes, 3)`` eV/Å (zero on padding),
    ``stress (n_graphs, 3, 3)`` eV/Å³ (ASE sign; zero for non-periodic graphs) and
    ``node_energy (n_nodes,)`` eV; with ``descriptors=True`` also the invariant
    ``descriptors (n_nodes, n_features)`` of the same forward pass (:func:`node_descriptors`
    at the same positions, no second model evaluation)."""
    strain = jnp.zeros_like(graph.cell)
    grad_fn = jax.grad(functools.partial(_energy_and_aux, module, descriptors=descriptors), argnums=(2, 3),
                       has_aux=True)
    (d_pos, d_strain), (energy, node_energy, *desc) = grad_fn(params, graph, graph.positions, strain)
    volume = jnp.abs(jnp.linalg.det(graph.cell))
    safe_volume = jnp.where(volume > 0, volume, 1.0)
    stress = jnp.where((volume > 0)[:, None, None], d_strain / safe_volume[:, None, None], 0.0)
    return {
        "energy": energy,
        "forces": jnp.where(graph.node_mask[:, None], -d_pos, 0.0),
        "stress": stress,
        "node_energy": node_energy,
        **({"descriptors": desc[0]} if descriptors else {}),
    }


def energy(module, params, graph: Graph) -> jax.Array:
    """Total energy of every graph ``(n_graphs,)`` eV (pure; ``jax.grad`` w.r.t. positions or params)."""
    out = node_outputs(module, params, graph)
    return graph_sum(jnp.where(graph.node_mask, out["node_energy"], 0.0), graph)


def node_descriptors(module, params, graph: Graph) -> jax.Array:
    """Invariant per-node descriptors ``(n_nodes, n_features)`` (pure; what Q-residual monitors use)."""
    return node_outputs(module, params, graph)["descriptors"]


# older names, kept for existing callers
_node_outputs = node_outputs
energy_fn = energy
energy_forces_stress_fn = energy_forces_stress


@functools.lru_cache(maxsize=None)
def _compiled(module, what: str):
    """One jitted function per (model architecture, kind): params are arguments."""
    fns = {
        "efs": energy_forces_stress_fn,
        "energy": energy_fn,
        "outputs": lambda m, p, g: _node_outputs(m, p, g),
    }
    return jax.jit(functools.partial(fns[what], module))


def voigt6(stress33: np.ndarray) -> np.ndarray:
    """3x3 stress -> ASE Voigt order (xx, yy, zz, yz, xz, xy)."""
    s = stress33
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


class Potential:
    """A machine-learned interatomic potential: config + params + pure functions.

    Build one with :func:`jaxuft.load` (converted file or model-zoo name) or
    ``Potential(config, params, dtype, constants)``.  ``config`` is the JSON config
    of the converted model; ``params`` a nested dict of trainable arrays;
    ``constants`` fixed arrays of the architecture (e.g. MACE's U tensors).
    """

    def __init__(self, config: dict, params: Any, dtype="float32", constants: dict | None = None):
        from .checkpoints.schema import validate_model_config
        from .models import build_module

        self.dtype = resolve_dtype(dtype)
        self.config = validate_model_config(dict(config), source="model config")
        self.constants = dict(constants or {})
        self.module = build_module(self.config, self.constants)
        self.params = cast_params(params, self.dtype)
        self.cutoff = float(self.config["r_max"])
        self.atomic_numbers = tuple(int(z) for z in self.config["atomic_numbers"])
        self.species_map = SpeciesMap(self.atomic_numbers)

    # ---- pure functions (params first) --------------------------------------------
    def node_outputs(self, params, graph: Graph) -> dict:
        return _node_outputs(self.module, params, graph)

    def node_descriptors(self, params, graph: Graph) -> jax.Array:
        """Invariant per-node descriptors ``(n_nodes, n_features)`` (see :func:`node_descriptors`)."""
        return node_descriptors(self.module, params, graph)

    def energy(self, params, graph: Graph) -> jax.Array:
        return energy_fn(self.module, params, graph)

    def energy_forces_stress(self, params, graph: Graph) -> dict:
        return energy_forces_stress_fn(self.module, params, graph)

    def compiled(self, what: str = "efs"):
        """The jitted ``(params, graph) -> ...`` function shared by all potentials of this architecture."""
        return _compiled(self.module, what)

    def with_params(self, params) -> "Potential":
        """A new Potential with the same architecture (compiled code is shared)."""
        new = object.__new__(Potential)
        new.__dict__.update(self.__dict__)
        new.params = cast_params(params, self.dtype)
        return new

    # ---- host conveniences --------------------------------------------------------
    def graph(self, atoms: Atoms | Sequence[Atoms], min_distance: float | None = None) -> Graph:
        """A padded graph of one structure or a list of structures.

        Structures are validated first (atomic numbers 1-118 known to the model, no two
        atoms closer than ``min_distance`` Å, default 0.5) and their positions wrapped or
        centred on the host before the cast to the model's dtype."""
        limit = DEFAULT_MIN_DISTANCE if min_distance is None else min_distance
        return atoms_to_graph(atoms, self.species_map, self.cutoff, dtype=self.dtype, min_distance=limit)

    def host_graphs(self, frames: Sequence[Atoms], min_distance: float | None = None):
        """Validated host graphs (see :meth:`graph`; ``min_distance`` defaults to 0.5 Å)."""
        limit = DEFAULT_MIN_DISTANCE if min_distance is None else min_distance
        return [atoms_to_host_graph(a, self.species_map, self.cutoff, label=f"structure {k}",
                                    min_distance=limit) for k, a in enumerate(frames)]

    def predict(self, atoms: Atoms | Sequence[Atoms], capacity: tuple[int, int] | None = None, hosts=None,
                min_distance: float | None = None):
        """Energy (eV), forces (eV/Å), stress (Voigt, eV/Å³) and per-atom energies.

        One dict for an ``Atoms``, a list of dicts for a sequence.  ``capacity``
        ``(n_nodes, n_edges)`` pads to at least these sizes (so a caller can keep
        one compiled shape across similar structures); see :meth:`capacity_for`.
        ``min_distance``: see :meth:`graph`.
        """
        frames = [atoms] if isinstance(atoms, Atoms) else list(atoms)
        hosts = self.host_graphs(frames, min_distance) if hosts is None else hosts
        n_cap, e_cap = self.capacity_for(hosts, capacity)
        graph = batch_host_graphs(hosts, dtype=self.dtype, n_node_capacity=n_cap, n_edge_capacity=e_cap)
        out = jax.device_get(self.compiled("efs")(self.params, graph))
        results, start = [], 0
        for k, a in enumerate(frames):
            n = len(a)
            res = {
                "energy": float(out["energy"][k]),
                "forces": np.asarray(out["forces"][start : start + n], dtype=np.float64),
                "energies": np.asarray(out["node_energy"][start : start + n], dtype=np.float64),
            }
            if np.all(a.get_pbc()):
                res["stress"] = voigt6(np.asarray(out["stress"][k], dtype=np.float64))
            results.append(res)
            start += n
        return results[0] if isinstance(atoms, Atoms) else results

    @staticmethod
    def capacity_for(hosts, capacity=None, headroom: float = 1.0) -> tuple[int, int]:
        """Padded sizes for ``hosts``: the given ``capacity`` if it fits, else a grown one.

        Growing never shrinks either dimension, so a stream of structures settles
        on one compiled shape; ``headroom`` leaves room for neighbour-count changes.
        """
        need_n = sum(h.n_nodes for h in hosts) + 1
        need_e = sum(h.n_edges for h in hosts)
        if capacity is not None and capacity[0] >= need_n and capacity[1] >= need_e:
            return capacity
        new = (bucket_size(need_n), bucket_size(int(need_e * headroom) + 1))
        if capacity is not None:
            new = (max(new[0], capacity[0]), max(new[1], capacity[1]))
        return new

    def descriptors(self, atoms: Atoms | Sequence[Atoms], min_distance: float | None = None) -> np.ndarray:
        """Per-atom invariant descriptors ``(n_atoms, n_features)`` (all frames stacked)."""
        frames = [atoms] if isinstance(atoms, Atoms) else list(atoms)
        graph = self.graph(frames, min_distance)
        out = self.compiled("outputs")(self.params, graph)
        n = sum(len(a) for a in frames)
        return np.asarray(out["descriptors"][:n], dtype=np.float64)

    def __repr__(self) -> str:
        return (
            f"Potential(family={self.config.get('family')!r}, elements={len(self.atomic_numbers)}, "
            f"cutoff={self.cutoff} Å, dtype={self.dtype.name})"
        )
