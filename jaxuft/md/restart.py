"""Self-describing MD states: the run description :meth:`Simulation.save` stores beside the arrays, :meth:`Simulation.restore`, and the checks of a restart structure against a saved run.

A saved state holds everything needed to continue with no other input but the potential:
the neighbour capacities (:class:`~jaxuft.md.neighbors.NeighborSpec`), the ensemble and
its settings, the safety limits and driver settings, atomic numbers, masses, first cell,
pbc, dtype, seed, per-replica step counts and RNG keys (in the arrays), a fingerprint of
the starting structures and, when the run was itself a restart, what it continued from.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from . import neighbors as nl
from .ensembles import Ensemble
from .errors import MDInputError
from .state import MDState, read_state, save_state, structure_fingerprint

#: Simulation constructor settings recorded in (and restored from) a saved state
SETTINGS = ("skin", "headroom", "model_headroom", "chunk_steps", "remat", "shard", "replica_batch", "replica_exchange")


def describe(sim, state: MDState, extra: dict | None = None) -> dict:
    """The JSON-able description of ``sim`` and ``state`` (see the module docstring)."""
    sim._need_init()
    steps = np.asarray(jax.device_get(state.step))
    mixed = {}
    if sim.mixed:  # one system per replica: numbers/masses per system, unpadded
        mixed = {"mixed": {"sizes": list(sim.sizes), "system_capacity": sim.system_capacity,
                           "numbers": [[int(z) for z in sim.numbers[r, :n]] for r, n in enumerate(sim.sizes)],
                           "masses": [[float(m) for m in sim.masses[r, :n]] for r, n in enumerate(sim.sizes)]}}
    return mixed | {
        "dtype": str(np.dtype(sim.dtype)),
        "replicas": int(state.positions.shape[0]),
        "atoms": sim.n_pad,
        "numbers": [int(z) for z in np.ravel(sim.numbers)] if not sim.mixed else [],
        "masses": [float(m) for m in np.ravel(sim.masses)] if not sim.mixed else [],
        "pbc": [bool(p) for p in sim.pbc],
        "cell": np.asarray(jax.device_get(sim._cell0), np.float64).tolist(),
        "ensemble": dataclasses.asdict(sim.ensemble),
        "safety": dataclasses.asdict(sim.safety),
        "settings": {k: getattr(sim, k) for k in SETTINGS},
        "spec": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sim.spec._asdict().items()},
        "potential": {"cutoff": float(sim.potential.cutoff),
                      "family": (getattr(sim.potential, "config", None) or {}).get("family")},
        "seed": sim.seed,
        "step": [int(s) for s in np.ravel(steps)],
        "fingerprint": sim.fingerprint,
        "restarted_from": sim.restarted_from,
        "exchange": sim.exchange_stats,
        "extra": extra or {},
    }


def save(sim, state: MDState, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``state`` with its description atomically (see :meth:`Simulation.save`)."""
    return save_state(state, path, description=describe(sim, state, extra))


def restore(cls, path: str | os.PathLike, potential, **overrides):
    """``(Simulation, MDState)`` from a saved state; see :meth:`Simulation.restore`."""
    from .simulation import Safety

    path = Path(path)
    state, _, desc = read_state(path)
    if desc is None:
        raise MDInputError(
            f"{path} was written by an older jaxuft and does not describe its run (ensemble, capacities, "
            "system); continue it with Simulation.init(structure) + load_state, or on the command line "
            "with --restart together with --structure and the original settings"
        )
    dtype = str(np.dtype(potential.dtype))
    if dtype != desc["dtype"]:
        raise MDInputError(f"{path} holds a {desc['dtype']} run but the potential is {dtype}; "
                           f"load the potential with dtype={desc['dtype']!r} (--dtype {desc['dtype']})")
    if abs(float(potential.cutoff) - float(desc["spec"]["cutoff"])) > 1e-9:
        raise MDInputError(f"{path} was run with a model of cutoff {desc['spec']['cutoff']} Å but this potential's "
                           f"cutoff is {potential.cutoff} Å; restore with the model the run used")
    r, n = int(desc["replicas"]), int(desc["atoms"])
    mixed = desc.get("mixed")
    if tuple(state.positions.shape) != (r, n, 3) or (len(desc["numbers"]) != n and not mixed):
        raise MDInputError(f"{path} is damaged: its description says {r} replicas of {n} atoms but the "
                           f"positions have shape {tuple(state.positions.shape)}")
    ensemble = overrides.pop("ensemble", None) or Ensemble(**desc["ensemble"])
    safety = overrides.pop("safety", None) or Safety(**desc["safety"])
    spec = nl.NeighborSpec(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in desc["spec"].items()})
    settings = {**desc["settings"], **{k: overrides.pop(k) for k in list(overrides) if k in SETTINGS}}
    sim = cls(potential, ensemble, safety=safety, capacity=spec.capacity, model_capacity=spec.model_capacity,
              images=spec.images, **settings, **overrides)
    if mixed:
        sim._setup_mixed([np.asarray(z) for z in mixed["numbers"]], desc["pbc"], mixed["masses"],
                         np.asarray(desc["cell"]), spec, mixed["system_capacity"])
    else:
        sim._setup(np.asarray(desc["numbers"]), desc["pbc"], np.asarray(desc["masses"]), np.asarray(desc["cell"]), spec)
    sim.exchange_stats = desc.get("exchange")
    sim.seed = desc.get("seed")
    sim.fingerprint = desc.get("fingerprint")
    sim.restarted_from = {"path": str(path.resolve()), "step": max(desc["step"]), "fingerprint": desc.get("fingerprint")}
    sim.saved_description = desc
    return sim, sim._place(sim._conform(state))


def check_structures(desc: dict, frames: Sequence, source: str = "the saved state") -> None:
    """Raise :class:`MDInputError` unless ``frames`` (one structure, or one per replica) are the
    structures the saved run started from: same numbers, pbc, cell and fingerprint."""
    frames = list(frames)
    r = int(desc["replicas"])
    if desc.get("mixed"):
        from .simulation import _mixed_fingerprint

        numbers = desc["mixed"]["numbers"]
        if len(frames) != r or any(list(a.get_atomic_numbers()) != list(z) for a, z in zip(frames, numbers)):
            raise MDInputError(f"the structures do not match the {r} systems of the mixed batch in {source} "
                               "(compositions or atom order differ); give the structures the run started from, "
                               "in the same order, or leave --structure out")
        if desc.get("fingerprint") and _mixed_fingerprint(frames, desc["pbc"]) != desc["fingerprint"]:
            raise MDInputError(f"the structures' positions or cells differ from those {source} started from; give the "
                               "structures the run started from, or leave --structure out")
        return
    if len(frames) == 1:
        frames = frames * r
    if len(frames) != r:
        raise MDInputError(f"{len(frames)} structures given but {source} holds {r} replicas")
    numbers = np.asarray(desc["numbers"])
    z = frames[0].get_atomic_numbers()
    if len(z) != len(numbers) or not np.array_equal(z, numbers):
        raise MDInputError(
            f"the structure ({len(z)} atoms) does not match {source} ({len(numbers)} atoms): the atomic numbers "
            "or their order differ; give the structure the run started from, or leave --structure out"
        )
    pbc = [bool(p) for p in frames[0].get_pbc()]
    if pbc != list(desc["pbc"]):
        raise MDInputError(f"the structure has pbc {pbc} but {source} has {desc['pbc']}; give the structure "
                           "the run started from, or leave --structure out")
    cells = np.stack([np.asarray(a.get_cell()) if any(pbc) else np.zeros((3, 3)) for a in frames])
    if not np.allclose(cells[0], np.asarray(desc["cell"]), atol=1e-6, rtol=0):
        raise MDInputError(f"the structure's cell {np.round(cells[0], 4).tolist()} differs from the cell "
                           f"{np.round(desc['cell'], 4).tolist()} of {source}; give the structure the run "
                           "started from, or leave --structure out")
    positions = np.stack([a.get_positions() for a in frames])
    fp = structure_fingerprint(z, positions, cells, pbc)
    if desc.get("fingerprint") and fp != desc["fingerprint"]:
        raise MDInputError(
            f"the structure's positions differ from those {source} started from (fingerprint {fp[:12]} vs "
            f"{desc['fingerprint'][:12]}); give the structure the run started from, or leave --structure out"
        )
