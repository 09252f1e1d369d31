"""The MD state (a pytree) and its save/restore to ``.npz``.

One state type serves every ensemble; fields an ensemble does not use stay zero.
In the engine every field has a leading replica axis ``R``.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import numpy as np

from .neighbors import NeighborList

#: status codes of a replica (0 = running)
RUNNING, STOP_NAN, STOP_TEMPERATURE, STOP_DISTANCE, STOP_OBSERVABLE = 0, 1, 2, 3, 4
STATUS_NAMES = {
    RUNNING: "running",
    STOP_NAN: "non-finite energy, forces or positions",
    STOP_TEMPERATURE: "temperature above the limit",
    STOP_DISTANCE: "two atoms closer than the minimum distance",
    STOP_OBSERVABLE: "stop predicate on observables",
}
STATUS_KEYS = {
    RUNNING: "running",
    STOP_NAN: "nan",
    STOP_TEMPERATURE: "temperature",
    STOP_DISTANCE: "min_distance",
    STOP_OBSERVABLE: "observable",
}


class MDState(NamedTuple):
    """State of one replica (shapes without the replica axis).

    positions:        (N, 3) Å, cartesian, unwrapped
    momenta:          (N, 3) amu·Å/t_ASE (as ``Atoms.get_momenta()``)
    forces:           (N, 3) eV/Å at ``positions``
    energy:           () eV, potential energy at ``positions``
    stress:           (3, 3) eV/Å³, potential stress (ASE sign)
    cell:             (3, 3) Å, rows are lattice vectors
    reference_cell:   (3, 3) Å, NPT: ``cell = exp(box_position) * reference_cell``
    box_position:     () NPT log-scale ``ln(V/V0)/3``
    box_momentum:     () NPT barostat momentum
    thermostat_position, thermostat_momentum: (L,) Nosé–Hoover chain on the atoms
    barostat_position, barostat_momentum:     (L,) Nosé–Hoover chain on the barostat
    key:              (2,) uint32 PRNG key (Langevin noise)
    step:             () int32, steps done (frozen when the replica stops)
    status:           () int32, 0 running, else a ``STOP_*`` code
    stop_value:       () the offending value (temperature K, distance Å, ...) when stopped
    neighbors:        :class:`~jaxuft.md.neighbors.NeighborList`
    """

    positions: jax.Array
    momenta: jax.Array
    forces: jax.Array
    energy: jax.Array
    stress: jax.Array
    cell: jax.Array
    reference_cell: jax.Array
    box_position: jax.Array
    box_momentum: jax.Array
    thermostat_position: jax.Array
    thermostat_momentum: jax.Array
    barostat_position: jax.Array
    barostat_momentum: jax.Array
    key: jax.Array
    step: jax.Array
    status: jax.Array
    stop_value: jax.Array
    neighbors: NeighborList

    @property
    def n_replicas(self) -> int:
        return int(self.positions.shape[0]) if self.positions.ndim == 3 else 1


_NBR_PREFIX = "neighbors."


def save_state(state: MDState, path: str | os.PathLike, **metadata) -> None:
    """Write a (batched) state to ``path`` (.npz).  ``metadata`` values are stored as arrays."""
    arrays = {}
    for name, value in state._asdict().items():
        if name == "neighbors":
            for k, v in value._asdict().items():
                arrays[_NBR_PREFIX + k] = np.asarray(jax.device_get(v))
        else:
            arrays[name] = np.asarray(jax.device_get(value))
    for k, v in metadata.items():
        arrays["meta." + k] = np.asarray(v)
    np.savez(path, **arrays)


def load_state(path: str | os.PathLike) -> tuple[MDState, dict]:
    """Read a state written by :func:`save_state`; returns ``(state, metadata)``."""
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    put = jax.device_put  # (jnp.asarray would compile a tiny program per array)
    nbr = NeighborList(**{k: put(data[_NBR_PREFIX + k]) for k in NeighborList._fields})
    fields = {k: put(data[k]) for k in MDState._fields if k != "neighbors"}
    meta = {k[5:]: data[k] for k in data if k.startswith("meta.")}
    return MDState(neighbors=nbr, **fields), meta
