"""jaxuft: fine-tune universal ML interatomic potentials in JAX, run MD ensembles, measure extrapolation.

Public API::

    pot = jaxuft.load("model_dir_or_name", dtype="float32")
    atoms.calc = jaxuft.Calculator(pot)
    jaxuft.convert("mace.model", "mace_jax")          # torch-free, safe
    pot.descriptors(atoms)                            # (n_atoms, n_features)
"""

from . import host_memory as _host_memory

_host_memory.tune()  # before jax allocates: see jaxuft/host_memory.py (JAXUFT_TUNE_MALLOC=0 disables)

from .api import convert, load  # noqa: E402
from .calculator import Calculator  # noqa: E402
from .errors import (  # noqa: E402
    CheckpointError,
    JaxuftError,
    StructureError,
    UnknownElementError,
    UnsafeCheckpointError,
)
from .graph import Graph  # noqa: E402
from .potential import Potential  # noqa: E402

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
    "load",
    "__version__",
]
