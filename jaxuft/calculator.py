"""ASE calculator backed by a :class:`~jaxuft.potential.Potential`.

Graphs are padded to capacity buckets, so a stream of structures of similar
size (an MD trajectory, an optimisation) reuses one compiled function.
"""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator as _AseCalculator
from ase.calculators.calculator import all_changes

from .potential import Potential


class Calculator(_AseCalculator):
    """``atoms.calc = jaxuft.Calculator(potential)``: energy, forces, stress, per-atom energies.

    Stress (eV/Å³, ASE Voigt order and sign) is given for fully periodic structures.
    ``potential`` may also be a path or a model-zoo name, passed to :func:`jaxuft.load`
    with ``dtype``.  Structures with atoms closer than ``min_distance`` Å (default 0.5)
    or atomic numbers outside the model's elements raise a clear error.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(self, potential: Potential | str, dtype: str = "float32", min_distance: float | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.min_distance = min_distance
        if not isinstance(potential, Potential):
            from .api import load

            potential = load(potential, dtype=dtype)
        self.potential = potential
        #: padded (n_nodes, n_edges) kept across calls so that a trajectory or an
        #: optimisation reuses one compiled function; grows with 15 % headroom when exceeded
        self.capacity: tuple[int, int] | None = None

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        hosts = self.potential.host_graphs([self.atoms], self.min_distance)
        self.capacity = self.potential.capacity_for(hosts, self.capacity, headroom=1.15)
        res = self.potential.predict(self.atoms, capacity=self.capacity, hosts=hosts)
        self.results = {
            "energy": res["energy"],
            "free_energy": res["energy"],
            "forces": res["forces"],
            "energies": res["energies"],
        }
        if "stress" in res:
            self.results["stress"] = res["stress"]
        elif "stress" in properties:
            from ase.calculators.calculator import PropertyNotImplementedError

            raise PropertyNotImplementedError(
                "stress needs a fully periodic structure (atoms.pbc all True with a cell)"
            )
