"""The pure, compiled MD segment: a :class:`Program` (static settings), one replica's step and scan, and the vmapped segment of all replicas.

* All replicas live in one state with a leading replica axis and advance in one
  compiled program (``vmap`` with ``axis_name="replicas"``; ``lax.scan`` over
  steps).  On a single CPU device large ensembles advance in consecutive vmapped
  groups (``replica_batch``) inside the same program, which bounds the temporaries per step.
* ``params``, temperatures, timesteps, pressures, safety limits and the observables'
  ``extra`` arrays are runtime arguments: changing them compiles nothing.  The conditions
  (``cond``) may be scalars (shared) or ``(R,)`` arrays (one value per replica).
* Mixed batches: a :class:`System` with a leading replica axis (``species, masses,
  atom_mask (R, N)``) gives every replica its own composition; systems with fewer atoms
  are padded with masked atoms that have no neighbours, no forces, no momenta and no
  degrees of freedom, so each system's trajectory is the one it has alone.
* With ``Program.ticks`` the scan calls the host every ``limits["tick_every"]`` steps (a
  runtime number: progress bars move during a chunk; choosing it compiles nothing).
  ``Simulation.run`` builds them in where a bar can be watched (a terminal, or
  ``JAXUFT_PROGRESS=1``) and leaves them out elsewhere: JAX does not keep programs with host
  callbacks in its persistent compilation cache, so only tick-free programs load from it.
* Compiled segments are shared by every :class:`~jaxuft.md.simulation.Simulation` with
  the same :class:`Program` (model architecture, ensemble kind, capacities, chunk
  length, hooks) and argument shapes.

The host-side driver (validation, chunking, overflow regrowth, files) is
:mod:`jaxuft.md.simulation`.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import neighbors as nl
from .ensembles import integrator_for
from .forces import ForceField
from .integrators import instantaneous_pressure, kinetic_energy
from .state import (
    RUNNING, STOP_DISTANCE, STOP_NAN, STOP_OBSERVABLE, STOP_TEMPERATURE, MDState,
)
from .units import BAR, KB

AXIS = "replicas"
#: model edges per vmapped replica group on a single CPU device (see ``Simulation(replica_batch=)``)
REPLICA_EDGE_BUDGET = 65536

class System(NamedTuple):
    """The atoms: ``species (N,)`` model indices and ``masses (N,)`` amu, shared by all replicas; or,
    for a mixed batch, ``(R, N)`` arrays (one system per replica) with ``atom_mask (R, N)`` (False: a
    padding atom; padding atoms need mass 1)."""

    species: jax.Array
    masses: jax.Array
    atom_mask: jax.Array | None = None

    @property
    def per_replica(self) -> bool:
        return self.species.ndim == 2


class Diagnostics(NamedTuple):
    """Running maxima per replica over a segment (to size capacities)."""

    max_count: jax.Array  # () pairs within cutoff + skin
    max_model_count: jax.Array  # () pairs within cutoff
    max_images: jax.Array  # (3,)
    rebuilds: jax.Array  # () neighbour-list builds


def _zero_diag(dtype_int=jnp.int32) -> Diagnostics:  # noqa: D103
    return Diagnostics(jnp.zeros((), dtype_int), jnp.zeros((), dtype_int), jnp.zeros((3,), dtype_int),
                       jnp.zeros((), dtype_int))


def _largest_divisor_at_most(n: int, cap: int) -> int:
    cap = max(1, min(n, cap))
    for d in range(cap, 0, -1):
        if n % d == 0:
            return d
    return 1


class Program(NamedTuple):
    """Everything static about one compiled segment (hashable: equal programs share compiled code,
    also across :class:`Simulation` objects)."""

    module: Any  # the Potential's Flax module
    ensemble: tuple  # Ensemble.static_key
    spec: nl.NeighborSpec
    n_records: int
    record_every: int
    observables: Callable | None = None
    stop_if: Callable | None = None
    remat: bool = False
    replica_batch: int = 0  # most replicas vmapped together (0: all); groups run one after another
    ticks: bool = False  # report progress to the host inside the scan (limits["tick_every"], ["tick_token"])
    # hand the observables hook the model's descriptors of the last force evaluation (``descriptors=``)
    observables_descriptors: bool = False


def _force_fn(program: Program, params, system: System, axis_name=AXIS):
    field = ForceField(program.module, program.spec, descriptors=program.observables_descriptors)
    spec = program.spec
    mask = system.atom_mask

    def force_fn(positions, cell, nbrs):
        nbrs = nl.update(positions, cell, nbrs, spec, axis_name=axis_name, atom_mask=mask)
        if mask is None:
            return field(params, system.species, positions, cell, nbrs), nbrs
        return field(params, system.species, positions, cell, nbrs, atom_mask=mask), nbrs

    return force_fn


def _atom_count(system: System):
    """Real atoms of one replica (a traced number for a padded mixed-batch system)."""
    if system.atom_mask is None:
        return system.masses.shape[0]
    return jnp.sum(system.atom_mask).astype(system.masses.dtype)


def _frame(state: MDState, masses, full_pbc: bool, n=None) -> dict:
    ke = kinetic_energy(state.momenta, masses)
    n = masses.shape[0] if n is None else n
    if full_pbc:
        pressure = instantaneous_pressure(state.momenta, masses, state.stress, state.cell) / BAR
    else:
        pressure = jnp.zeros((), state.energy.dtype)
    return {
        "positions": state.positions,
        "cell": state.cell,
        "forces": state.forces,
        "energy": state.energy,
        "kinetic_energy": ke,
        "temperature": 2.0 * ke / (3.0 * n * KB),
        "stress": state.stress,
        "pressure": pressure,
        "step": state.step,
        "status": state.status,
    }


def _diag_from(diag: Diagnostics, running, nbrs: nl.NeighborList, out, rebuilt) -> Diagnostics:
    zero = jnp.zeros((), jnp.int32)
    return Diagnostics(
        max_count=jnp.maximum(diag.max_count, jnp.where(running, nbrs.count, zero)),
        max_model_count=jnp.maximum(diag.max_model_count, jnp.where(running, out.model_count, zero)),
        max_images=jnp.maximum(diag.max_images, jnp.where(running, nbrs.images_needed, 0)),
        rebuilds=diag.rebuilds + (running & rebuilt).astype(jnp.int32),
    )


def _replica_segment(program: Program, params, system: System, state: MDState, cond, limits, extra, group=0):
    """One replica (inside ``vmap(axis_name=AXIS)``): refresh forces, then scan the steps.

    The step is traced once: the first iteration of the inner scan of the first record
    is a *refresh* (the step with ``dt = 0``: positions and momenta unchanged exactly,
    forces/energy/stress re-evaluated with the current params and the neighbour list
    brought up to date); the first iteration of later records is skipped.  So forces are
    always consistent with the params of the segment, restarts and reruns are exact,
    and the model appears once in the compiled program.

    With ``program.observables_descriptors`` the scan also carries the model's per-node
    descriptors of the force evaluation that produced the current state (the refresh's or the
    last accepted step's) and hands them to the observables hook (``descriptors=``), which
    then needs no forward pass of its own.
    """
    spec = program.spec
    force_fn = _force_fn(program, params, system)
    max_t, min_d = limits["max_temperature"], limits["min_distance"]
    n = system.masses.shape[0]
    n_real = _atom_count(system)
    full_pbc = all(spec.pbc)
    mask_kw = {} if system.atom_mask is None else {"atom_mask": system.atom_mask}

    def advance(state, diag, desc, refresh):
        c = dict(cond, dt=jnp.where(refresh, jnp.zeros_like(cond["dt"]), cond["dt"]))
        _, apply_fn = integrator_for(program.ensemble, force_fn, system.masses, c, **mask_kw)
        running = state.status == RUNNING
        new, out = apply_fn(state)
        new = new._replace(step=jnp.where(refresh, state.step, new.step),
                           key=jnp.where(refresh, state.key, new.key))
        t = 2.0 * kinetic_energy(new.momenta, system.masses) / (3.0 * n_real * KB)
        finite = (
            jnp.isfinite(new.energy) & jnp.all(jnp.isfinite(new.positions))
            & jnp.all(jnp.isfinite(new.forces)) & jnp.all(jnp.isfinite(new.momenta))
            & jnp.all(jnp.isfinite(new.cell))
        )
        reason = jnp.where(
            ~finite, STOP_NAN,
            jnp.where(t > max_t, STOP_TEMPERATURE, jnp.where(out.min_distance < min_d, STOP_DISTANCE, RUNNING)),
        ).astype(jnp.int32)
        value = jnp.where(reason == STOP_TEMPERATURE, t, jnp.where(reason == STOP_DISTANCE, out.min_distance, jnp.nan))
        # a refresh leaves positions and momenta untouched: keep its (honest) energies even when stopping
        accept = running & ((reason == RUNNING) | refresh)
        kept = jax.tree_util.tree_map(lambda a, b: jnp.where(accept, a, b), new, state)
        stop_now = running & (reason != RUNNING)
        kept = kept._replace(
            status=jnp.where(stop_now, reason, state.status).astype(jnp.int32),
            stop_value=jnp.where(stop_now, value.astype(state.stop_value.dtype), state.stop_value),
        )
        rebuilt = jnp.any(new.neighbors.reference_positions != state.neighbors.reference_positions)
        if desc is not None:  # the descriptors of the kept positions (a refresh does not move the atoms)
            desc = jnp.where(accept | refresh, out.descriptors, desc)
        return kept, _diag_from(diag, running, new.neighbors, out, rebuilt), desc

    if program.remat:
        advance = jax.checkpoint(advance)

    def record(carry, k):
        def step(carry, j):
            state, diag, desc = carry
            refresh = (k == 0) & (j == 0)
            skip = (k > 0) & (j == 0)
            any_running = jax.lax.psum((state.status == RUNNING).astype(jnp.int32), AXIS) > 0
            # with descriptors the refresh also runs when no replica runs: stopped replicas get theirs too
            go = (any_running | refresh) if program.observables_descriptors else any_running
            carry = jax.lax.cond(go & ~skip, lambda: advance(state, diag, desc, refresh), lambda: (state, diag, desc))
            if program.ticks:  # unbatched predicate: a real branch, taken every tick_every steps
                done = k * program.record_every + j
                jax.lax.cond((j > 0) & (done % limits["tick_every"] == 0),
                             lambda: jax.debug.callback(_tick, limits["tick_token"], group, done), lambda: None)
            return carry, None

        carry, _ = jax.lax.scan(step, carry, jnp.arange(program.record_every + 1))
        state, diag, desc = carry
        obs = {}
        if program.observables is not None:
            graph = ForceField(program.module, spec).graph(system.species, state.positions, state.cell, state.neighbors,
                                                           **mask_kw)
            desc_kw = {} if desc is None else {"descriptors": desc}
            obs = dict(program.observables(params, graph, extra, **desc_kw))
            # per-atom observables lose the padding atom
            obs = {k: (v[:n] if getattr(v, "ndim", 0) >= 1 and v.shape[0] == n + 1 else v) for k, v in obs.items()}
            if program.stop_if is not None:
                stop = jnp.asarray(program.stop_if(obs, extra)).astype(bool).reshape(())
                stop_now = stop & (state.status == RUNNING)
                state = state._replace(
                    status=jnp.where(stop_now, STOP_OBSERVABLE, state.status).astype(jnp.int32),
                    stop_value=jnp.where(stop_now, jnp.nan, state.stop_value).astype(state.stop_value.dtype),
                )
        return (state, diag, desc), (_frame(state, system.masses, full_pbc, n_real), obs)

    desc0 = None
    if program.observables_descriptors:  # zeros until the refresh fills them in (shape only: nothing runs)
        shape = jax.eval_shape(lambda: force_fn(state.positions, state.cell, state.neighbors)[0].descriptors)
        desc0 = jnp.zeros(shape.shape, shape.dtype)
    (state, diag, _), (frames, obs) = jax.lax.scan(record, (state, _zero_diag(), desc0),
                                                   jnp.arange(program.n_records))
    return state, frames, obs, diag


def segment_fn(program: Program):
    """The pure segment of all replicas: ``fn(params, system, state, cond, limits, extra)
    -> (state, frames, observables, diagnostics)``; frames are ``(R, F, ...)``.

    ``cond`` entries: scalars (all replicas) or ``(R,)`` (per replica); ``system``: shared, or per
    replica (:attr:`System.per_replica`, a mixed batch)."""

    def fn(params, system, state, cond, limits, extra):
        r = state.positions.shape[0]
        cond = {k: jnp.broadcast_to(v, (r,)) for k, v in cond.items()}
        shared = not system.per_replica
        batched = (state, cond, None if shared else system)

        def one(b, group=0):
            s, c, sy = b

            def rep(s, c, sy):
                return _replica_segment(program, params, system if sy is None else sy, s, c, limits, extra, group)

            return jax.vmap(rep, axis_name=AXIS)(s, c, sy)

        b = _largest_divisor_at_most(r, program.replica_batch) if program.replica_batch else r
        if b >= r:
            return one(batched)
        # groups of b replicas, one after another: bounded temporaries (cache- and allocator-friendly on CPU)
        grouped = jax.tree_util.tree_map(lambda x: x.reshape((r // b, b) + x.shape[1:]), batched)
        out = jax.lax.map(lambda gs: one(gs[1], gs[0]), (jnp.arange(r // b), grouped))
        return jax.tree_util.tree_map(lambda x: x.reshape((r,) + x.shape[2:]), out)

    return fn


#: progress listeners of running segments, by token: ``fn(group, steps_done_in_chunk)``
_LISTENERS: dict[int, Callable[[int, int], None]] = {}


def _tick(token, group, done) -> None:
    """Host side of the in-scan progress callback."""
    fn = _LISTENERS.get(int(token))
    if fn is not None:
        fn(int(group), int(done))


@functools.lru_cache(maxsize=128)
def compiled_segment(program: Program):
    """The jitted :func:`segment_fn` of a program (shared by every Simulation using it)."""
    return jax.jit(segment_fn(program))


_EXECUTABLES: dict = {}
_MAX_EXECUTABLES = 64


def _signature(args) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(args)
    sig = tuple(
        (np.shape(x), str(x.dtype if hasattr(x, "dtype") else type(x).__name__), bool(getattr(x, "weak_type", False)),
         getattr(x, "sharding", None))
        for x in leaves
    )
    return treedef, sig


def cached_executable(program: Program, args) -> Callable | None:
    """The already compiled segment for ``program`` and these arguments, or None."""
    return _EXECUTABLES.get((program, _signature(args)))


def executable(program: Program, args) -> tuple[Callable, float]:
    """The compiled segment for ``program`` and these argument shapes/shardings, compiled ahead of
    time on first use (shared across Simulations).  Returns ``(executable, seconds spent compiling)``
    where the seconds include tracing and lowering (0 when it was cached)."""
    key = (program, _signature(args))
    exe = _EXECUTABLES.get(key)
    if exe is not None:
        return exe, 0.0
    t0 = time.perf_counter()
    exe = compiled_segment(program).lower(*args).compile()
    seconds = time.perf_counter() - t0
    if len(_EXECUTABLES) >= _MAX_EXECUTABLES:
        _EXECUTABLES.pop(next(iter(_EXECUTABLES)))
    _EXECUTABLES[key] = exe
    return exe, seconds


def initial_state(positions, momenta, cell, keys, spec: nl.NeighborSpec, chain_length: int,
                  dtype=None, xp=jnp) -> MDState:
    """Pure: a batched state ``(R, ...)`` whose forces and neighbour list are filled in by the
    refresh at the start of the first segment.  ``positions, momenta (R, N, 3)``,
    ``cell (R, 3, 3)``, ``keys (R, 2)`` uint32.  ``xp=numpy`` builds it on the host (no compilation)."""
    dtype = dtype or positions.dtype
    positions = xp.asarray(positions, dtype)
    cell = xp.asarray(cell, dtype)
    r, n = positions.shape[0], positions.shape[1]
    zeros = lambda *shape: xp.zeros((r,) + shape, dtype)
    cap = spec.capacity
    nbrs = nl.NeighborList(
        senders=xp.full((r, cap), n, np.int32),
        receivers=xp.full((r, cap), n, np.int32),
        shifts=xp.zeros((r, cap, 3), np.int32),
        count=xp.full((r,), -1, np.int32),
        images_needed=xp.zeros((r, 3), np.int32),
        reference_positions=positions,
        reference_cell=cell,
    )
    return MDState(
        positions=positions,
        momenta=xp.asarray(momenta, dtype),
        forces=xp.zeros_like(positions),
        energy=zeros(),
        stress=zeros(3, 3),
        cell=cell,
        reference_cell=cell,
        box_position=zeros(),
        box_momentum=zeros(),
        thermostat_position=zeros(chain_length),
        thermostat_momentum=zeros(chain_length),
        barostat_position=zeros(chain_length),
        barostat_momentum=zeros(chain_length),
        key=xp.asarray(keys, np.uint32),
        step=xp.zeros((r,), np.int32),
        status=xp.full((r,), RUNNING, np.int32),
        stop_value=zeros(),
        neighbors=nbrs,
    )

