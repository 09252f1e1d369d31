"""Molecular dynamics on jax-md conventions: segments, vmapped replica ensembles, NPT.

Quick start::

    from jaxuft import md
    sim = md.Simulation(potential, md.Langevin(timestep=1.0, temperature=300, friction=0.01))
    state = sim.init(atoms, replicas=4, seed=0)          # validates input; compiles nothing
    state, traj = sim.run(state, potential.params, n_steps=2000, record_every=20)
    traj.write_extxyz("out"); traj.save_npz("out/traj.npz"); sim.save(state, "out/state.npz")
    sim, state = md.Simulation.restore("out/state.npz", potential)   # continues exactly

Units: fs, K, bar at the interface; eV, Å, amu inside (ASE units; momenta as ``Atoms.get_momenta()``).

Design (see the module docstrings for details):

* :mod:`~jaxuft.md.neighbors` -- on-device Verlet lists with a skin (rebuild when an atom
  moved more than skin/2, NPT cell changes included), any triclinic cell, cells smaller
  than twice the cutoff through explicit lattice images (integer ``shifts`` exactly as the
  :class:`~jaxuft.graph.Graph` expects).  Fixed capacities; overflow is a flag, never silent.
  Model edges are compacted to the pairs within the cutoff every step.
* :mod:`~jaxuft.md.integrators` -- ``(init_fn, apply_fn)`` pairs: velocity Verlet, BAOAB
  Langevin, Nosé–Hoover chains (jax-md's chain code), isotropic MTK NPT.
* :mod:`~jaxuft.md.segment` (the pure compiled program) and :mod:`~jaxuft.md.simulation`
  (the driver) -- :class:`Simulation`: replicas advance together under ``vmap``
  in ``lax.scan`` chunks; forces are refreshed with the segment's params at its start; on
  overflow the capacities grow and the chunk is rerun from its start state; safety stops
  per replica; an observables hook (``fn(params, graph, extra)``; with
  ``observables_descriptors`` also ``descriptors=``, the model's descriptors of the step's own
  force evaluation) and a stop predicate run inside the compiled scan; replicas are sharded over devices.  Params, temperatures,
  pressures, limits and ``extra`` are runtime arguments: changing them compiles nothing.
  Compiled segments are shared between Simulation objects with equal static settings
  (define hook functions once: their identity is part of the compiled program).
* Saved states describe their run: ``sim.save(state, path)`` and
  ``Simulation.restore(path, potential)`` continue bit-identically (:mod:`~jaxuft.md.restart`);
  ``sim.run(..., on_chunk=fn)`` checkpoints or writes frames after every chunk.
  :class:`MDConfig` (pydantic) holds the settings of a run; ``jaxuft md``'s flags come from it.
* :mod:`~jaxuft.md.trajectory` (extxyz per replica, npz), :mod:`~jaxuft.md.state`
  (the state file), :mod:`~jaxuft.md.compilation` (a reusable XLA compilation counter),
  :mod:`~jaxuft.md.cli` (``jaxuft md``).
* Batched ensemble studies: ``sim.init([atoms_a, atoms_b, ...])`` pads systems of different
  sizes, compositions and cells into one compiled program (per-system capacities, frames trimmed
  per system); temperature, pressure, friction and timestep may be per-replica arrays;
  ``replica_exchange=N`` swaps temperatures every N steps (Metropolis, momenta rescaled, per-pair
  statistics); :mod:`~jaxuft.analysis.ensemble` gives autocorrelation-aware error bars.
* Differentiable: :class:`DifferentiableMD` / :func:`differentiable_run` (:mod:`~jaxuft.md.differentiable`)
  make a short run a pure function of params, initial positions, cell and thermostat/barostat
  settings, rematerialised in ~sqrt(steps) blocks, with the gradient's memory reported;
  :class:`Reweighting` (:mod:`~jaxuft.md.reweighting`, DiffTRe) differentiates equilibrium
  averages of long runs without backpropagating through time.  See docs/differentiable.md.
"""

from .compilation import CompilationCounter
from . import engine  # noqa: F401  (old import path, re-exports segment + simulation)
from .segment import Diagnostics, Program, System, compiled_segment, executable, initial_state, segment_fn
from .simulation import Safety, Simulation, maxwell_boltzmann, stop_reasons
from .ensembles import NPT, NVE, Ensemble, Langevin, NoseHoover, make
from .errors import CapacityError, MDInputError
from .forces import ForceField, ForceOutput, jax_md_energy_fn, jax_md_space, replica_graph
from .integrators import (
    instantaneous_pressure, kinetic_energy, npt_nose_hoover, nve, nvt_langevin,
    nvt_nose_hoover, temperature,
)
from .neighbors import NeighborList, NeighborSpec
from .config import MDConfig
from .differentiable import DifferentiableMD, DifferentiableTrajectory, differentiable_run, gradient_memory
from .reweighting import Reweighting
from .state import STATUS_KEYS, MDState, load_state, read_state, save_state, structure_fingerprint
from .trajectory import Trajectory

__all__ = [
    "CapacityError", "CompilationCounter", "DifferentiableMD", "DifferentiableTrajectory", "Reweighting",
    "differentiable_run", "gradient_memory", "MDConfig", "read_state", "structure_fingerprint", "Diagnostics", "Ensemble", "ForceField", "ForceOutput",
    "Langevin", "MDInputError", "MDState", "NPT", "NVE", "NeighborList", "NeighborSpec", "NoseHoover",
    "Program", "STATUS_KEYS", "Safety", "compiled_segment", "executable", "initial_state", "segment_fn", "Simulation", "System", "Trajectory", "instantaneous_pressure",
    "jax_md_energy_fn", "jax_md_space", "kinetic_energy", "load_state", "make", "maxwell_boltzmann", "npt_nose_hoover",
    "nve", "nvt_langevin", "nvt_nose_hoover", "replica_graph", "save_state", "stop_reasons", "temperature",
]
