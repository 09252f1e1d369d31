"""Differentiable MD: a short run as a pure function whose observables ``jax.grad`` differentiates with respect to model params, initial positions/momenta, the cell and the thermostat/barostat settings.

>>> dmd = DifferentiableMD(potential, atoms, NPT(2.0, 300, 1.0, tau_t=50, tau_p=200), steps=200, record_every=10)
>>> def loss(params, temperature):
...     traj = dmd(params, temperature=temperature)          # pure: traced, jitted, differentiated
...     return (traj.frames["density"].mean() - 8.9) ** 2
>>> value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(potential.params, 300.0)
>>> dmd.gradient_memory(loss, potential.params, 300.0)   # what the compiled gradient costs

``differentiable_run(potential, atoms, ensemble, steps, params=...)`` is the one-call form
(build the :class:`DifferentiableMD` and call it; inside ``jax.jit`` the host set-up runs
once, at tracing).

How it is built (and what it costs):

* The run is the engine's own compiled segment (:func:`~jaxuft.md.segment.segment_fn`, the
  same integrators and neighbour lists as :class:`~jaxuft.md.Simulation`), so forward
  trajectories equal ``Simulation.run``'s for the same seed and settings.
* **Rematerialisation, on by default** (``remat="blocks"``): the steps are cut into about
  ``sqrt(steps)`` blocks of whole records; the backward pass keeps only each block's
  starting state and recomputes a block (each step rematerialised once more) when it gets
  there.  Gradient memory grows like ``sqrt(steps)`` instead of ``steps`` at the price of
  about one extra forward pass.  ``remat="steps"`` keeps every step's state (rematerialising
  only the model inside a step), ``remat=None`` keeps everything (fastest, largest).
  :meth:`DifferentiableMD.gradient_memory` reports the compiled gradient's XLA memory
  (temporaries, arguments, outputs) before anything runs.
* **Fixed capacities.**  The neighbour list cannot grow inside a differentiated program,
  so it is sized from the starting structure with generous headroom (1.5x pairs, 1.3x model
  edges).  If a run overflows (or a replica hits a safety stop), it raises (``check=True``: a
  host callback, so also inside ``jit``/``grad``; the ``JaxRuntimeError`` carries the
  :class:`~jaxuft.md.errors.CapacityError` message with the capacities to pass instead); the
  gradient of an overflowed run is never returned silently.
* Gradients through neighbour-list *builds* are zero by construction (pair selection is
  piecewise constant); gradients flow through every pair vector, as they should.
* Langevin noise comes from fixed per-replica keys (``seed``): the run is a deterministic
  function of its inputs, so its gradient is the pathwise (reparameterised) derivative and
  matches finite differences.
* Long runs: backpropagation through a chaotic trajectory grows noisy after a few
  picoseconds.  For equilibrium averages use :mod:`jaxuft.md.reweighting` (DiffTRe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .ensembles import Ensemble
from .errors import CapacityError, MDInputError
from .segment import Diagnostics, initial_state, segment_fn
from .simulation import Safety, Simulation, maxwell_boltzmann
from .state import RUNNING, STATUS_NAMES, MDState
from .units import BAR, FS, KB

#: g/cm³ per amu/Å³
AMU_PER_A3_TO_G_PER_CM3 = 1.66053906660
REMAT_MODES = ("blocks", "steps", None)


class DifferentiableTrajectory(NamedTuple):
    """What a differentiable run returns (a pytree: return it from jitted functions).

    frames:       dict of ``(R, F, ...)`` arrays recorded every ``record_every`` steps: the
                  engine's frame fields (``positions``, ``cell``, ``forces``, ``energy``,
                  ``kinetic_energy``, ``temperature``, ``stress``, ``pressure``, ``step``,
                  ``status``) plus ``volume`` (Å³) and ``density`` (g/cm³; 0 when not periodic)
    observables:  dict of ``(R, F, ...)`` arrays of the ``observables`` hook (empty without one)
    state:        the final :class:`~jaxuft.md.state.MDState` (``(R, ...)``)
    diagnostics:  neighbour-list maxima over the run (:class:`~jaxuft.md.segment.Diagnostics`)
    """

    frames: dict
    observables: dict
    state: MDState
    diagnostics: Diagnostics


@dataclass(frozen=True)
class GradientMemory:
    """XLA's memory analysis of a compiled program (bytes): ``temp`` (live temporaries, where the
    saved trajectory lives), ``argument``, ``output``, ``alias`` and ``generated_code``."""

    temp: int
    argument: int
    output: int
    alias: int
    generated_code: int

    @property
    def total(self) -> int:
        """Peak-ish footprint: temporaries + arguments + outputs - aliased buffers."""
        return self.temp + self.argument + self.output - self.alias

    def describe(self) -> str:
        mib = lambda b: f"{b / 2**20:.2f} MiB"
        return (f"temp {mib(self.temp)}, arguments {mib(self.argument)}, outputs {mib(self.output)}, "
                f"total {mib(self.total)}")


def gradient_memory(fn: Callable, *args, argnums=0, compiler_options: dict | None = None) -> GradientMemory:
    """Memory of ``jax.jit(jax.grad(fn, argnums))(*args)`` as XLA compiled it (nothing is run).

    ``fn`` must return a scalar; ``compiler_options`` go to ``jax.jit``.  Raises
    :class:`RuntimeError` when the backend gives no analysis."""
    compiled = jax.jit(jax.grad(fn, argnums=argnums), compiler_options=compiler_options).lower(*args).compile()
    return program_memory(compiled)


def program_memory(compiled) -> GradientMemory:
    """:class:`GradientMemory` of an already compiled program (``jax.jit(f).lower(...).compile()``)."""
    stats = compiled.memory_analysis()
    if stats is None:
        raise RuntimeError(f"the {jax.default_backend()} backend reports no memory analysis for compiled programs")
    return GradientMemory(
        temp=int(stats.temp_size_in_bytes), argument=int(stats.argument_size_in_bytes),
        output=int(stats.output_size_in_bytes), alias=int(stats.alias_size_in_bytes),
        generated_code=int(stats.generated_code_size_in_bytes),
    )


def remat_block_records(n_records: int, record_every: int) -> int:
    """Records per rematerialised block: a divisor ``d`` of ``n_records`` minimising the states
    kept, ``n_records / d`` block starts plus ``d * record_every`` steps inside one block
    (about ``sqrt(steps)`` each)."""
    best, cost = 1, math.inf
    for d in range(1, n_records + 1):
        if n_records % d == 0:
            c = n_records // d + d * record_every
            if c < cost:
                best, cost = d, c
    return best


class DifferentiableMD:
    """A fixed-length MD run of one composition as a pure, differentiable function.

    potential:   :class:`~jaxuft.potential.Potential` (its dtype is the run's dtype; use float64 to
                 compare gradients with finite differences)
    atoms:       the starting ``Atoms`` (one, copied to every replica, or one per replica: same
                 composition and atom order); fixes the system and the neighbour capacities
    ensemble:    :func:`~jaxuft.md.NVE`, :func:`~jaxuft.md.Langevin`, :func:`~jaxuft.md.NoseHoover`
                 or :func:`~jaxuft.md.NPT`; its numbers are defaults, each can be a traced input
    steps, record_every: run length and frame interval (``steps`` a multiple of ``record_every``)
    replicas, seed: independent replicas (vmapped) and the seed of their noise keys and momenta
    observables: ``fn(params, graph, extra) -> dict``, evaluated at every frame (as in ``Simulation``)
    remat:       ``"blocks"`` (default, ~sqrt(steps) memory), ``"steps"`` or ``None`` (see module doc)
    block_records: records per rematerialised block (default: :func:`remat_block_records`)
    skin, headroom, model_headroom, capacity, model_capacity, images: neighbour-list sizing
                 (fixed for the whole run; larger headroom than ``Simulation`` since nothing regrows)
    safety:      :class:`~jaxuft.md.Safety` (a stopped replica makes the call raise under ``check``)
    check:       raise (:func:`check_run`, as a host callback, so also under jit/grad: the error surfaces as
                 a ``JaxRuntimeError`` carrying its message) when a run overflowed its neighbour
                 capacities or a replica stopped
    """

    def __init__(
        self,
        potential,
        atoms,
        ensemble: Ensemble,
        steps: int,
        *,
        record_every: int = 1,
        replicas: int | None = None,
        seed: int = 0,
        observables: Callable | None = None,
        remat: str | None = "blocks",
        block_records: int | None = None,
        skin: float = 0.5,
        headroom: float = 1.5,
        model_headroom: float = 1.3,
        capacity: int | None = None,
        model_capacity: int | None = None,
        images: tuple | None = None,
        safety: Safety | None = None,
        check: bool = True,
    ):
        steps, record_every = int(steps), int(record_every)
        if steps < 1 or record_every < 1:
            raise MDInputError(f"steps and record_every must be >= 1, got {steps} and {record_every}")
        if steps % record_every:
            raise MDInputError(f"steps ({steps}) must be a multiple of record_every ({record_every})")
        if remat not in REMAT_MODES:
            raise MDInputError(f"remat must be one of {REMAT_MODES}, got {remat!r}")
        n_records = steps // record_every
        if block_records is None:
            block_records = remat_block_records(n_records, record_every) if remat == "blocks" else n_records
        if int(block_records) < 1 or n_records % int(block_records):
            raise MDInputError(f"block_records ({block_records}) must divide the number of records ({n_records} = "
                               f"steps / record_every)")
        self.sim = Simulation(
            potential, ensemble, skin=skin, headroom=headroom, model_headroom=model_headroom, safety=safety,
            observables=observables, remat=remat is not None, shard=False, replica_batch=0,
            capacity=capacity, model_capacity=model_capacity, images=images,
        )
        # host-side validation and sizing: nothing compiles, nothing is traced (also when this object
        # is built inside a jitted function, as differentiable_run is)
        with jax.ensure_compile_time_eval():
            start = self.sim.init(atoms, replicas=replicas, seed=seed, temperature=None)
        if getattr(self.sim, "mixed", False):
            raise MDInputError("a differentiable run takes one composition (replicas of one system); run the systems "
                               "of a mixed batch as separate DifferentiableMD objects")
        self.potential = potential
        self.ensemble = self.sim.ensemble
        self.steps, self.record_every = steps, record_every
        self.remat = remat
        self.block_records = int(block_records)
        self.n_blocks = n_records // self.block_records
        self.check = bool(check)
        self.dtype = potential.dtype
        self.positions = np.asarray(jax.device_get(start.positions))  # (R, N, 3) Å
        self.cell = np.asarray(jax.device_get(start.cell))  # (R, 3, 3) Å
        self.keys = np.asarray(jax.device_get(start.key))  # (R, 2) noise keys
        masses = self.sim.masses
        given = np.asarray(jax.device_get(start.momenta))
        frames = [atoms] if not isinstance(atoms, (list, tuple)) else list(atoms)
        self._given_momenta = any(np.any(a.get_momenta() != 0) for a in frames)
        # momenta at 1 K with zero total momentum; Maxwell–Boltzmann at T is sqrt(T) times these
        r = self.positions.shape[0]
        self.unit_momenta = np.stack([maxwell_boltzmann(None, masses, 1.0, seed=[int(seed), 1, k]) for k in range(r)])
        self.momenta = given if self._given_momenta else None
        self.total_mass = float(np.sum(masses))

    # ------------------------------------------------------------------ properties
    @property
    def spec(self):
        """The (fixed) :class:`~jaxuft.md.neighbors.NeighborSpec` of the run."""
        return self.sim.spec

    @property
    def program(self):
        """The compiled segment's static settings of one block."""
        return self.sim.program(self.block_records, self.record_every)

    def conditions(self, temperature=None, friction=None, pressure=None, tau_t=None, tau_p=None,
                   timestep=None) -> dict:
        """The integrator's runtime scalars in ASE units from user units (K, 1/fs, bar, fs);
        ``None`` takes the ensemble's value.  Traced values stay differentiable."""
        e = self.ensemble
        # the ensemble's numbers may be per-replica tuples: numpy arrays of shape () or (R,)
        own = lambda v, default: np.asarray(default if v is None else v, np.float64)
        dt = jnp.asarray(own(e.timestep, 1.0) if timestep is None else timestep, self.dtype)
        pick = lambda v, own_value: jnp.asarray(own_value if v is None else v, self.dtype)
        return {
            "dt": dt * FS,
            "kT": pick(temperature, own(e.temperature, 0.0)) * KB,
            "pressure": pick(pressure, own(e.pressure, 0.0)) * BAR,
            "friction": pick(friction, own(e.friction, 0.0)) / FS,
            "tau_t": pick(tau_t, own(e.tau_t, 100.0 * own(e.timestep, 1.0))) * FS,
            "tau_p": pick(tau_p, own(e.tau_p, 1000.0 * own(e.timestep, 1.0))) * FS,
        }

    # ------------------------------------------------------------------ the run
    def __call__(
        self,
        params=None,
        *,
        positions=None,
        momenta=None,
        cell=None,
        temperature=None,
        initial_temperature=None,
        friction=None,
        pressure=None,
        tau_t=None,
        tau_p=None,
        timestep=None,
        extra=None,
    ) -> DifferentiableTrajectory:
        """Run (pure; call it inside ``jax.grad``/``jax.jit``).  Every argument may be traced.

        params:      the model params (default: the potential's)
        positions:   ``(R, N, 3)`` or ``(N, 3)`` Å, cartesian (default: the starting structures);
                     to differentiate with respect to a homogeneous strain, pass ``frac @ cell``
        momenta:     ``(R, N, 3)`` or ``(N, 3)`` amu·Å/t_ASE (default: the structure's momenta if any,
                     else ``sqrt(initial_temperature)`` times fixed 1 K Maxwell–Boltzmann draws,
                     so the initial kinetic energy follows the temperature, derivative included)
        cell:        ``(R, 3, 3)`` or ``(3, 3)`` Å (rows are lattice vectors; positions are not scaled)
        temperature, friction, pressure, tau_t, tau_p, timestep: K, 1/fs, bar, fs, fs, fs; override
                     the ensemble's numbers (shared by all replicas)
        initial_temperature: K, of the default momenta (default ``temperature``)
        extra:       pytree handed to the observables hook
        """
        r, n = self.positions.shape[:2]
        dtype = self.dtype
        params = self.potential.params if params is None else params
        batch = lambda x, tail: jnp.broadcast_to(jnp.asarray(x, dtype), (r,) + tail)
        x0 = batch(self.positions if positions is None else positions, (n, 3))
        c0 = batch(self.cell if cell is None else cell, (3, 3))
        cond = self.conditions(temperature, friction, pressure, tau_t, tau_p, timestep)
        if momenta is None and self.momenta is not None:
            momenta = self.momenta
        if momenta is None:
            t0 = temperature if initial_temperature is None else initial_temperature
            t0 = jnp.asarray(self.ensemble.temperature or 0.0 if t0 is None else t0, dtype)
            p0 = jnp.sqrt(t0) * jnp.asarray(self.unit_momenta, dtype)
        else:
            p0 = batch(momenta, (n, 3))
        state = initial_state(x0, p0, c0, self.keys, self.spec, self.ensemble.chain_length, dtype=dtype)
        state, frames, obs, diag = self._segments(params, state, cond, {} if extra is None else extra)
        volume = jnp.abs(jnp.linalg.det(frames["cell"]))
        frames = dict(frames, volume=volume)
        if all(self.spec.pbc):
            frames["density"] = self.total_mass * AMU_PER_A3_TO_G_PER_CM3 / volume
        else:
            frames["density"] = jnp.zeros_like(volume)
        if self.check:
            spec = self.spec
            jax.debug.callback(lambda d, s: check_run(d, s, spec), diag, state.status)
        return DifferentiableTrajectory(frames, obs, state, diag)

    def _segments(self, params, state, cond, extra):
        sim = self.sim
        fn = segment_fn(self.program)
        limits = {k: jnp.asarray(v) for k, v in sim.limits().items()}
        if self.n_blocks == 1:
            return fn(params, sim.system, state, cond, limits, extra)
        if self.remat == "blocks":
            fn = jax.checkpoint(fn)  # the backward pass keeps each block's start state only

        def block(state, _):
            state, frames, obs, diag = fn(params, sim.system, state, cond, limits, extra)
            return state, (frames, obs, diag)

        state, (frames, obs, diags) = jax.lax.scan(block, state, None, length=self.n_blocks)
        join = lambda a: jnp.moveaxis(a, 0, 1).reshape((a.shape[1], -1) + a.shape[3:])  # (B, R, Fb) -> (R, F)
        frames = jax.tree_util.tree_map(join, frames)
        obs = jax.tree_util.tree_map(join, obs)
        diag = Diagnostics(
            max_count=jnp.max(diags.max_count, axis=0), max_model_count=jnp.max(diags.max_model_count, axis=0),
            max_images=jnp.max(diags.max_images, axis=0), rebuilds=jnp.sum(diags.rebuilds, axis=0),
        )
        return state, frames, obs, diag

    # ------------------------------------------------------------------ costs
    def gradient_memory(self, loss: Callable, *args, argnums=0, compiler_options: dict | None = None) -> GradientMemory:
        """XLA memory of the compiled ``jax.grad(loss, argnums)(*args)`` (``loss`` calls this run)."""
        return gradient_memory(loss, *args, argnums=argnums, compiler_options=compiler_options)

    def describe(self) -> dict:
        s = self.spec
        return {
            "ensemble": self.ensemble.describe(), "steps": self.steps, "record_every": self.record_every,
            "replicas": int(self.positions.shape[0]), "atoms": int(self.positions.shape[1]),
            "remat": self.remat, "blocks": self.n_blocks, "steps_per_block": self.block_records * self.record_every,
            "capacity": s.capacity, "model_capacity": s.model_capacity, "images": list(s.images),
            "dtype": np.dtype(self.dtype).name,
        }


def check_run(diag: Diagnostics, status, spec) -> None:
    """Host check of a finished differentiable run: raise when a capacity overflowed (the run
    missed pairs: its values and gradients are wrong) or a replica stopped (frozen: zero gradient)."""
    d = jax.tree_util.tree_map(np.asarray, diag)
    count, model, images = int(np.max(d.max_count)), int(np.max(d.max_model_count)), np.max(d.max_images, axis=0)
    if count > spec.capacity or model > spec.model_capacity or np.any(images > np.asarray(spec.images)):
        from . import neighbors as nl

        need = dict(
            capacity=max(spec.capacity, nl.capacity_for(count, 1.25)),
            model_capacity=max(spec.model_capacity, nl.model_capacity_for(model, 1.1)),
            images=tuple(int(max(a, b)) for a, b in zip(spec.images, images)),
        )
        raise CapacityError(
            f"the differentiable run outgrew its fixed neighbour list (pairs {count} > {spec.capacity} or "
            f"model edges {model} > {spec.model_capacity} or images {tuple(int(i) for i in images)} > {spec.images}); "
            f"its values and gradients are wrong.  Build it again with "
            f"DifferentiableMD(..., capacity={need['capacity']}, model_capacity={need['model_capacity']}, "
            f"images={need['images']}) (or a larger headroom=/model_headroom=)"
        )
    status = np.asarray(status).reshape(-1)
    stopped = [(k, STATUS_NAMES.get(int(s), str(int(s)))) for k, s in enumerate(status) if int(s) != RUNNING]
    if stopped:
        raise MDInputError(
            f"replica(s) stopped during the differentiable run ({', '.join(f'{k}: {s}' for k, s in stopped)}); "
            "a stopped replica is frozen and has no gradient: use a smaller timestep, a sane structure or "
            "different Safety limits"
        )


def differentiable_run(potential, atoms, ensemble: Ensemble, steps: int, params=None, *, record_every: int = 1,
                       replicas: int | None = None, seed: int = 0, observables: Callable | None = None,
                       remat: str | None = "blocks", check: bool = True, **inputs: Any) -> DifferentiableTrajectory:
    """One-call differentiable MD: ``DifferentiableMD(potential, atoms, ensemble, steps, ...)(params, **inputs)``.

    ``inputs``: ``positions``, ``momenta``, ``cell``, ``temperature``, ``initial_temperature``,
    ``friction``, ``pressure``, ``tau_t``, ``tau_p``, ``timestep``, ``extra`` (all differentiable;
    see :meth:`DifferentiableMD.__call__`).  Build a :class:`DifferentiableMD` once instead to
    keep its sizing across calls or to ask it for :meth:`~DifferentiableMD.gradient_memory`.
    """
    dmd = DifferentiableMD(potential, atoms, ensemble, steps, record_every=record_every, replicas=replicas,
                           seed=seed, observables=observables, remat=remat, check=check)
    return dmd(params, **inputs)
