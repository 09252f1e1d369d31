"""jaxuft: fine-tune universal ML interatomic potentials in JAX, run MD ensembles, measure extrapolation.

Public API::

    pot = jaxuft.load("model_dir_or_name", dtype="float32")
    atoms.calc = jaxuft.Calculator(pot)
    jaxuft.convert("mace.model", "mace_jax")          # torch-free, safe
    pot.descriptors(atoms)                            # (n_atoms, n_features)

The model seam (pure functions of ``(module, params, graph)``; see ``docs/seam.md``)::

    e = jaxuft.energy(pot.module, pot.params, pot.graph(atoms))          # (n_graphs,) eV
    out = jaxuft.energy_forces_stress(pot.module, pot.params, graph)     # energy, forces, stress, node_energy
    X = jaxuft.node_descriptors(pot.module, pot.params, graph)           # (n_nodes, n_features)
"""

# The host allocator is tuned by the ``jaxuft`` command and the benchmarks, not on import: a library
# must not change its host process's allocator unasked.  Opt in with ``jaxuft.host_memory.tune()``.
from .api import convert, load
from .calculator import Calculator
from .errors import (
    CheckpointError,
    JaxuftError,
    StructureError,
    UnknownElementError,
    UnsafeCheckpointError,
)
from .graph import Graph
from .potential import Potential, energy, energy_forces_stress, node_descriptors, node_outputs

__version__ = "0.1.0"

__all__ = [
    "Calculator",
    "CheckpointError",
    "Graph",
    "JaxuftError",
    "Potential",
    "StructureError",
    "UnknownElementError",
    "UnsafeCheckpointError",
    "convert",
    "energy",
    "energy_forces_stress",
    "load",
    "node_descriptors",
    "node_outputs",
    "__version__",
]
