"""The MD state (a pytree) and its self-describing, atomically written ``.npz`` file.

One state type serves every ensemble; fields an ensemble does not use stay zero.
In the engine every field has a leading replica axis ``R``.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from ..fileio import atomic_save_npz, json_clean
from .errors import MDInputError
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
#: the self-describing state file: ``format`` and ``version`` in its ``description.json`` entry
STATE_FORMAT = "jaxuft-md-state"
STATE_VERSION = 2
_DESCRIPTION_KEY = "description.json"


def _state_arrays(state: MDState) -> dict:
    arrays = {}
    for name, value in state._asdict().items():
        if name == "neighbors":
            for k, v in value._asdict().items():
                arrays[_NBR_PREFIX + k] = np.asarray(jax.device_get(v))
        else:
            arrays[name] = np.asarray(jax.device_get(value))
    return arrays


def save_state(state: MDState, path: str | os.PathLike, description: dict | None = None, **metadata) -> Path:
    """Write a (batched) state to ``path`` (.npz) atomically (a crash leaves the old file or the new one).

    ``description``: a JSON-able dict stored beside the arrays (what :meth:`Simulation.save`
    writes: ensemble, capacities, system, seed, ...; see :func:`read_state`).
    ``metadata`` values are stored as arrays (``meta.NAME``)."""
    arrays = _state_arrays(state)
    for k, v in metadata.items():
        arrays["meta." + k] = np.asarray(v)
    if description is not None:
        desc = {"format": STATE_FORMAT, "version": STATE_VERSION, **description}
        arrays[_DESCRIPTION_KEY] = np.asarray(json.dumps(json_clean(desc), allow_nan=False))
    return atomic_save_npz(path, **arrays)


def read_state(path: str | os.PathLike) -> tuple[MDState, dict, dict | None]:
    """``(state, metadata, description)`` from a file of :func:`save_state`; ``description`` is None
    for files written before states described themselves.  Clear errors for missing, truncated or
    foreign files."""
    path = Path(path)
    if not path.is_file():
        raise MDInputError(f"state file {path} does not exist; give the state.npz written by an earlier run")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise MDInputError(
            f"{path} is not a readable MD state ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'truncated'}); "
            "it may be truncated: use the state.npz of a finished chunk or start again"
        ) from None
    missing = [k for k in MDState._fields if k != "neighbors" and k not in data]
    missing += [_NBR_PREFIX + k for k in NeighborList._fields if _NBR_PREFIX + k not in data]
    if missing:
        raise MDInputError(f"{path} is not a jaxuft MD state: it lacks {', '.join(missing[:5])}"
                           f"{' ...' if len(missing) > 5 else ''}")
    description = None
    if _DESCRIPTION_KEY in data:
        try:
            description = json.loads(str(data[_DESCRIPTION_KEY]))
        except ValueError:
            raise MDInputError(f"{path}: its run description is not valid JSON; the file is damaged") from None
        if description.get("format") != STATE_FORMAT:
            raise MDInputError(f"{path} is not a jaxuft MD state (format {description.get('format')!r})")
        if int(description.get("version", 0)) > STATE_VERSION:
            raise MDInputError(f"{path} was written by a newer jaxuft (state version {description['version']}, "
                               f"this one reads up to {STATE_VERSION}); upgrade jaxuft")
    put = jax.device_put  # (jnp.asarray would compile a tiny program per array)
    nbr = NeighborList(**{k: put(data[_NBR_PREFIX + k]) for k in NeighborList._fields})
    fields = {k: put(data[k]) for k in MDState._fields if k != "neighbors"}
    meta = {k[5:]: data[k] for k in data if k.startswith("meta.")}
    return MDState(neighbors=nbr, **fields), meta, description


def load_state(path: str | os.PathLike) -> tuple[MDState, dict]:
    """Read a state written by :func:`save_state`; returns ``(state, metadata)``
    (:meth:`Simulation.restore` also rebuilds the simulation from the file's description)."""
    state, meta, _ = read_state(path)
    return state, meta


def structure_fingerprint(numbers, positions, cell, pbc) -> str:
    """sha256 of the starting structure(s): numbers, pbc, cell and positions rounded to 1e-6 Å.

    ``positions`` ``(N, 3)`` or ``(R, N, 3)``, ``cell`` ``(3, 3)`` or ``(R, 3, 3)``."""
    h = hashlib.sha256()
    h.update(np.asarray(numbers, np.int64).tobytes())
    h.update(np.asarray(pbc, bool).tobytes())
    for a in (cell, positions):
        # + 0.0 turns -0.0 into 0.0 so both hash alike
        h.update((np.round(np.asarray(a, np.float64), 6) + 0.0).tobytes())
    return h.hexdigest()
