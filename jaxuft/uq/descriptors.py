"""Per-atom descriptors for Q-residuals: SOAP (in JAX) or the model's own invariant features.

Both kinds share one small interface (used by the CLI and the examples):
``compute(frames) -> (n_atoms, n_features)`` (host numpy), ``compute_iter(frames)``
(one array per frame, host or device, for streamed PCA fits) and ``settings()`` (JSON, stored with a fitted
PCA so that scoring rebuilds the same descriptor with :func:`from_settings`).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from ase import Atoms

from .soap import SOAP


class ModelDescriptor:
    """The invariant per-atom descriptors of a :class:`~jaxuft.potential.Potential`.

    ``ModelDescriptor(potential_or_name, dtype="float64", frames_per_call=4)``; a name
    or path is loaded with :func:`jaxuft.load`.  The vectors are those of
    ``potential.node_outputs(params, graph)["descriptors"]``, i.e. what the live
    monitor sees inside MD.
    """

    def __init__(self, potential, dtype: str = "float64", frames_per_call: int = 4, name: str | None = None):
        from ..potential import Potential

        if isinstance(potential, Potential):
            self.potential = potential
            self.name = name or potential.config.get("name") or potential.config.get("family", "model")
        else:
            from ..api import load

            self.name = name or str(potential)
            self.potential = load(potential, dtype=dtype)
        self.frames_per_call = max(1, int(frames_per_call))

    @property
    def atomic_numbers(self) -> tuple[int, ...]:
        return self.potential.atomic_numbers

    def settings(self) -> dict:
        return {"kind": "model", "model": self.name, "dtype": self.potential.dtype.name}

    def compute_iter(self, frames: Sequence[Atoms]) -> Iterator[np.ndarray]:
        frames = list(frames)
        for i in range(0, len(frames), self.frames_per_call):
            chunk = frames[i : i + self.frames_per_call]
            desc = self.potential.descriptors(chunk)
            start = 0
            for a in chunk:
                yield desc[start : start + len(a)]
                start += len(a)

    def compute(self, atoms: Atoms | Sequence[Atoms]) -> np.ndarray:
        frames = [atoms] if isinstance(atoms, Atoms) else list(atoms)
        return np.concatenate(list(self.compute_iter(frames)), axis=0)

    def __repr__(self) -> str:
        return f"ModelDescriptor({self.name!r}, {self.potential!r})"


def soap_descriptor(species, r_cut=5.0, n_max=8, l_max=6, sigma=0.375, periodic=True, dtype="float64") -> SOAP:
    """A :class:`~jaxuft.uq.soap.SOAP` with the paper's defaults (r_cut 5 Å, n_max 8, l_max 6, sigma 0.375 Å)."""
    return SOAP(species, r_cut, n_max, l_max, sigma, periodic, dtype=dtype)


def from_settings(settings: dict, potential=None):
    """Rebuild a descriptor from :meth:`settings` (``potential`` overrides a model descriptor's name)."""
    kind = settings.get("kind")
    if kind == "soap":
        return soap_descriptor(
            settings["species"], settings["r_cut"], settings["n_max"], settings["l_max"],
            settings["sigma"], settings["periodic"], settings.get("dtype", "float64"),
        )
    if kind == "model":
        return ModelDescriptor(potential if potential is not None else settings["model"], settings.get("dtype", "float64"))
    raise ValueError(f"unknown descriptor kind {kind!r} (expected 'soap' or 'model')")


def species_of(frames: Sequence[Atoms]) -> list[str]:
    """The chemical symbols present in ``frames`` (sorted by atomic number)."""
    from ase.data import chemical_symbols

    zs = sorted({int(z) for a in frames for z in np.unique(a.get_atomic_numbers())})
    return [chemical_symbols[z] for z in zs]
