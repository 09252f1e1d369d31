"""The MD driver: :class:`Simulation` validates structures, builds states, runs segments in chunks with overflow regrowth, and saves/restores self-describing states.

>>> sim = Simulation(potential, Langevin(timestep=1.0, temperature=300))
>>> state = sim.init(atoms, replicas=8, seed=0)               # validates, builds lists
>>> state, traj = sim.run(state, params, n_steps=1000, record_every=10)
>>> sim.save(state, "out/state.npz")                          # self-describing
>>> sim2, state = Simulation.restore("out/state.npz", potential)  # continues exactly

Mixed batches and replica exchange::

>>> state = sim.init([paper_frame, water_box, cu_slab], seed=0)   # one padded program, one system per replica
>>> state, traj = sim.run(state, params, n_steps=1000, record_every=10)
>>> traj.system(1).atoms(0)                                      # frames of the water box, trimmed
>>> sim = Simulation(pot, Langevin(1.0, temperature=[300, 340, 390, 450]), replica_exchange=100)

How a run works:

* A segment is run in *chunks* of at most ``chunk_steps`` steps (a divisor of the
  number of records, so one compiled program serves every chunk).  At the end of a
  chunk the neighbour-list maxima are read; on overflow the capacities grow (for
  all replicas), and the chunk is rerun from its start state, giving the same
  trajectory as a run that never overflowed.  After each chunk ``on_chunk`` (if
  given) receives the state and that chunk's frames: write them, checkpoint, or stop.
* Safety stops per replica (non-finite values, temperature above a limit, atoms
  closer than a minimum distance, or a user stop predicate on observables): the
  replica keeps its last good state, is frozen, and the reason is reported.
* The replica axis is sharded over the available devices.
* **Per-replica conditions**: the ensemble's timestep, temperature, pressure, friction and
  periods may be one value per replica (:mod:`~jaxuft.md.ensembles`); they are runtime
  ``(R,)`` arrays, so changing them compiles nothing.
* **Mixed batches**: ``init([atoms_a, atoms_b, ...])`` with different compositions or sizes
  pads every system to a common atom count (a size bucket) and runs them as one program; each
  system keeps its own neighbour-capacity accounting (``report["systems"]``); the compiled
  capacities are the largest of the systems' (rounded to buckets), so batches whose sizes
  fall in the same buckets reuse the compiled program.  Frames are trimmed per system
  (:meth:`Trajectory.system <jaxuft.md.trajectory.Trajectory.system>`).
* **Replica exchange** (``replica_exchange=every``): after every ``every`` steps neighbouring
  temperatures (alternately even and odd pairs of the sorted ladder) attempt a swap of their
  configurations with the Metropolis probability ``min(1, exp((b_i - b_j)(U_i - U_j) +
  (b_i P_i - b_j P_j)(V_i - V_j)))``; an accepted swap rescales the momenta (and thermostat
  momenta) by ``sqrt(T_new / T_old)``.  Replica ``r`` always runs at temperature ``T_r``;
  ``report["replica_exchange"]`` has attempts, acceptances and mean acceptance probability per
  neighbour pair, and which starting configuration each replica now holds (``walkers``).

:meth:`Simulation.initial_state` and :meth:`Simulation.segment` are the pure,
differentiable building blocks (no host checks); ``remat=True`` rematerialises
each step in the backward pass.  The compiled program itself is in :mod:`jaxuft.md.segment`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms

from ..models import restrict_species
from ..progress import progress_enabled
from ..structures import MIN_DISTANCE, check_overlaps, validate_atoms
from . import neighbors as nl
from .compilation import CompilationCounter
from .ensembles import Ensemble
from .errors import CapacityError, MDInputError
from .segment import (
    AXIS, REPLICA_EDGE_BUDGET, Diagnostics, Program, System, _largest_divisor_at_most, cached_executable, executable,
    initial_state, segment_fn,
)
from .state import RUNNING, STATUS_KEYS, STATUS_NAMES, MDState, structure_fingerprint
from .ticker import ChunkProgress
from .trajectory import Trajectory
from .units import BAR, KB


@dataclass(frozen=True)
class Safety:
    """Per-replica stop rules.

    max_temperature: K; default 10x the ensemble temperature (10 000 K for NVE)
    min_distance:    Å; two atoms closer than this stop the replica
    """

    max_temperature: float | None = None
    min_distance: float = 0.5

    def limits(self, ensemble: Ensemble) -> tuple[float, float]:
        t = self.max_temperature
        if t is None:
            t = 10.0 * ensemble.max_temperature if ensemble.max_temperature else 10_000.0
        if not (t > 0 and math.isfinite(t)):
            raise MDInputError(f"max_temperature must be a positive number of K, got {t!r}")
        if not (self.min_distance >= 0 and math.isfinite(self.min_distance)):
            raise MDInputError(f"min_distance must be >= 0 Å, got {self.min_distance!r}")
        return float(t), float(self.min_distance)



class Simulation:
    """MD of an ensemble of replicas driven by a Potential: replicas of one system, or a mixed batch of systems.

    potential:   :class:`~jaxuft.potential.Potential` (its dtype is the MD dtype)
    ensemble:    from :mod:`jaxuft.md.ensembles`; may be replaced between segments
                 (``sim.ensemble = sim.ensemble.with_(temperature=400)``: no recompilation
                 unless the kind or chain length changes)
    skin:        Verlet buffer, Å (rebuild when an atom moved more than skin/2)
    headroom:    capacity factor of the Verlet list over the largest pair count seen
    model_headroom: capacity factor of the pairs handed to the model (within the cutoff);
                 tight, since every padded edge costs a model evaluation each step
    safety:      :class:`Safety`
    observables: ``fn(params, graph, extra) -> dict of arrays``, evaluated for each
                 replica at every recorded frame inside the compiled scan
                 (``graph``: the replica's :class:`~jaxuft.graph.Graph` with ``n_atoms + 1``
                 nodes, the last one padding (arrays of length ``n_atoms + 1`` are trimmed
                 to ``n_atoms`` when recorded); ``extra``: any pytree of arrays passed to
                 :meth:`run`, shared by all replicas; changing its values compiles nothing)
    stop_if:     ``fn(observations, extra) -> bool``: stops a replica at a recorded frame
    observables_descriptors: also hand the hook the model's per-node descriptors of the force
                 evaluation at the recorded positions, ``fn(params, graph, extra, descriptors=
                 (n_atoms + 1, n_features))``, so that a hook built on the model's own descriptors
                 (the Q-residual monitor of :func:`jaxuft.uq.build_monitor`) needs no second forward
                 pass.  ``None`` (default): when the hook says it uses this potential's descriptors
                 (its attribute ``model_descriptors`` is ``potential.module``); costs nothing otherwise
    specialise_species: compile the model for this run's elements only (MACE: its per-element weights
                 taken for those; default True). ``False``: the model for all its elements, so that runs
                 with other element sets reuse the compiled program (slower per step)
    chunk_steps: most steps per compiled chunk (progress and overflow checks between chunks)
    remat:       rematerialise each step under differentiation (``jax.checkpoint``)
    shard:       shard the replica axis over ``jax.devices()`` when there are several
    replica_batch: most replicas advanced together in one vmapped group; larger ensembles run
                 as consecutive groups inside the same compiled program (same results).  ``None``
                 (default): all replicas on accelerators or with several devices; on a single
                 CPU device, groups of about ``REPLICA_EDGE_BUDGET`` model edges (a 197-atom
                 liquid: 4 replicas), since larger batches only add memory traffic there.
                 ``0``: all replicas in one group.
    capacity, model_capacity, images: initial neighbour-list sizes (default: from the
                 starting structures with ``headroom``); they grow automatically on overflow
    replica_exchange: steps between replica-exchange (parallel tempering) attempts over the
                 ensemble's per-replica temperatures (None: off); runs are chunked at these steps
    """

    def __init__(
        self,
        potential,
        ensemble: Ensemble,
        *,
        skin: float = 0.5,
        headroom: float = 1.25,
        model_headroom: float = 1.05,
        safety: Safety | None = None,
        observables: Callable | None = None,
        stop_if: Callable | None = None,
        observables_descriptors: bool | None = None,
        specialise_species: bool = True,
        chunk_steps: int = 1000,
        remat: bool = False,
        shard: bool = True,
        replica_batch: int | None = None,
        capacity: int | None = None,
        model_capacity: int | None = None,
        images: tuple | None = None,
        replica_exchange: int | None = None,
    ):
        if not (skin > 0 and math.isfinite(skin)):
            raise MDInputError(f"skin must be a positive distance in Å, got {skin!r}")
        if not (headroom >= 1.0 and model_headroom >= 1.0):
            raise MDInputError(f"headroom and model_headroom must be >= 1, got {headroom!r}, {model_headroom!r}")
        if stop_if is not None and observables is None:
            raise MDInputError("stop_if needs an observables function")
        self.potential = potential
        self.ensemble = ensemble.validate()
        self.skin = float(skin)
        self.headroom = float(headroom)
        self.model_headroom = float(model_headroom)
        self.safety = safety or Safety()
        self.observables = observables
        self.stop_if = stop_if
        self.observables_descriptors = observables_descriptors
        self.specialise_species = bool(specialise_species)
        self.chunk_steps = int(chunk_steps)
        self.remat = bool(remat)
        self.shard = bool(shard)
        if replica_batch is not None and (int(replica_batch) != replica_batch or replica_batch < 0):
            raise MDInputError(f"replica_batch must be a non-negative integer or None, got {replica_batch!r}")
        self.replica_batch = replica_batch
        if replica_exchange is not None:
            if int(replica_exchange) != replica_exchange or replica_exchange < 1:
                raise MDInputError(f"replica_exchange must be a number of steps >= 1 or None, got {replica_exchange!r}")
            if not self.ensemble.has_temperature:
                raise MDInputError("replica exchange swaps temperatures: use a thermostatted ensemble "
                                   "(nvt-langevin, nvt-nh, npt) with one temperature per replica")
            replica_exchange = int(replica_exchange)
        self.replica_exchange = replica_exchange
        self.exchange_stats: dict | None = None  # cumulative, saved with the state
        self._initial_sizes = (capacity, model_capacity, None if images is None else tuple(int(i) for i in images))
        self.dtype = potential.dtype
        self.spec: nl.NeighborSpec | None = None
        self.system: System | None = None
        self.numbers: np.ndarray | None = None
        self.pbc: tuple | None = None
        self.masses: np.ndarray | None = None
        self.seed: int | None = None  # of init(); recorded in saved states
        self.fingerprint: str | None = None  # of the starting structures (structure_fingerprint)
        self.restarted_from: dict | None = None  # set by restore()
        self.saved_description: dict | None = None  # the file's description, set by restore()
        self.regrows = 0
        self.sizes: list[int] | None = None  # atoms per replica of a mixed batch (None: one system)
        self.system_capacity: list[dict] | None = None  # per-system neighbour accounting of a mixed batch

    # ------------------------------------------------------------------ pure functions
    def program(self, n_records: int, record_every: int, spec=None, ticks: bool = False) -> Program:
        return Program(
            module=self.model_module(),
            ensemble=self.ensemble.static_key,
            spec=spec or self.spec,
            n_records=int(n_records),
            record_every=int(record_every),
            observables=self.observables,
            stop_if=self.stop_if,
            remat=self.remat,
            replica_batch=self._replica_batch(spec or self.spec),
            ticks=bool(ticks),
            observables_descriptors=self._hook_takes_descriptors(),
        )

    def model_module(self):
        """The potential's module specialised to this run's species (a mixed batch: the union over its systems).

        A run's species are fixed, so the set is static: MACE then takes its species-indexed weights for
        these species only (see :func:`jaxuft.models.restrict_species`); other families are unchanged.
        Before :meth:`init`/:meth:`restore`, or with ``specialise_species=False``: ``potential.module``."""
        if self.numbers is None or not self.specialise_species:
            return self.potential.module
        z = np.asarray(self.numbers).reshape(-1)
        z = z[z > 0]  # a mixed batch pads with 0
        return restrict_species(self.potential.module, self.potential.species_map(z))

    def _hook_takes_descriptors(self) -> bool:
        if self.observables is None:
            return False
        if self.observables_descriptors is not None:
            return bool(self.observables_descriptors)
        own = getattr(self.observables, "model_descriptors", None)
        return own is not None and own == self.potential.module

    def _replica_batch(self, spec) -> int:
        if self.replica_batch is not None:
            return int(self.replica_batch)
        if jax.default_backend() != "cpu" or (self.shard and len(jax.devices()) > 1):
            return 0
        return max(1, REPLICA_EDGE_BUDGET // max(1, spec.model_capacity))

    @property
    def mixed(self) -> bool:
        """True for a mixed batch (one system per replica, padded to a common size)."""
        return self.sizes is not None

    @property
    def n_pad(self) -> int:
        """Atoms per replica in the compiled program (the system's; a mixed batch: the padded size)."""
        return int(self.system.masses.shape[-1])

    def conditions(self, replicas: int | None = None) -> dict:
        """Runtime numbers of the current ensemble (ASE units): scalars, or ``(replicas,)`` arrays."""
        return self.ensemble.conditions(self.dtype, replicas)

    def limits(self) -> dict:
        """Runtime safety limits (K, Å)."""
        max_t, min_d = self.safety.limits(self.ensemble)
        return {"max_temperature": np.asarray(max_t, self.dtype), "min_distance": np.asarray(min_d, self.dtype)}

    def initial_state(self, positions, momenta, cell=None, keys=None) -> MDState:
        """Pure, differentiable: the state of ``R`` replicas from ``positions, momenta (R, N, 3)``
        (Å, amu·Å/t_ASE), ``cell (R, 3, 3)`` (default: the cell given to :meth:`init`) and
        ``keys (R, 2)``.  Needs :meth:`init` first (it fixes the system and capacities)."""
        self._need_init()
        r = positions.shape[0]
        if cell is None:
            cell = jnp.broadcast_to(self._cell0, (r, 3, 3))
        if keys is None:
            keys = np.stack([np.random.SeedSequence([0, i]).generate_state(2, np.uint32) for i in range(r)])
        return initial_state(positions, momenta, cell, keys, self.spec, self.ensemble.chain_length, dtype=self.dtype)

    def segment(self, params, state: MDState, n_steps: int, record_every: int = 1, extra=None):
        """Pure, differentiable: ``n_steps`` steps of every replica, recording every ``record_every``.

        Returns ``(state, frames, observables, diagnostics)`` with frames ``(R, F, ...)``.
        No overflow handling: check :meth:`overflowed` on the diagnostics.
        """
        self._need_init()
        if n_steps % record_every:
            raise MDInputError(f"n_steps ({n_steps}) must be a multiple of record_every ({record_every})")
        fn = segment_fn(self.program(n_steps // record_every, record_every))
        cond = self.conditions(state.positions.shape[0] if self.ensemble.per_replica else None)
        return fn(params, self.system, state, cond, self.limits(), {} if extra is None else extra)

    def overflowed(self, diag: Diagnostics, spec=None) -> bool:
        """Host check: did any replica exceed a capacity or need more images?"""
        spec = spec or self.spec
        d = jax.device_get(diag)
        return bool(
            np.any(d.max_count > spec.capacity) or np.any(d.max_model_count > spec.model_capacity)
            or np.any(d.max_images > np.asarray(spec.images))
        )

    # ------------------------------------------------------------------ saved states
    def save(self, state: MDState, path, extra: dict | None = None):
        """Write ``state`` atomically with a description of this run (ensemble, capacities, system,
        seed, dtype, fingerprint of the starting structures, what it was restarted from);
        ``extra``: a JSON-able dict of the caller's own bookkeeping, returned by
        ``Simulation.restore(...)[0].saved_description["extra"]``."""
        from .restart import save

        return save(self, state, path, extra)

    @classmethod
    def restore(cls, path, potential, **overrides) -> tuple["Simulation", MDState]:
        """``(Simulation, MDState)`` from a file of :meth:`save`: ``sim.run(state, ...)`` continues
        exactly where the saved run stopped (bit-identical to a run that never stopped).

        ``overrides``: constructor arguments to change (``ensemble=``, ``observables=``,
        ``stop_if=``, ``chunk_steps=``, ...); hooks are not saved, pass them again."""
        from .restart import restore

        return restore(cls, path, potential, **overrides)

    # ------------------------------------------------------------------ host side
    def _need_init(self):
        if self.spec is None or self.system is None:
            raise MDInputError("call init(...) first: it fixes the system and the neighbour capacities")

    def _check_structures(self, frames: Sequence[Atoms]):
        ref = frames[0]
        numbers = ref.get_atomic_numbers()
        pbc = tuple(bool(p) for p in ref.get_pbc())
        for k, a in enumerate(frames):
            label = f"structure {k}" if len(frames) > 1 else "structure"
            validate_atoms(a, self.potential.cutoff, label)
            if not np.array_equal(a.get_atomic_numbers(), numbers):
                raise MDInputError(
                    f"{label} has a different composition or atom order than structure 0; replicas of one "
                    "simulation must share the same atoms in the same order"
                )
            if tuple(bool(p) for p in a.get_pbc()) != pbc:
                raise MDInputError(f"{label} has pbc {a.get_pbc().tolist()} but structure 0 has {list(pbc)}")
            if any(pbc):
                cell = np.asarray(a.get_cell())
                if abs(np.linalg.det(cell)) < 1e-6:
                    raise MDInputError(
                        f"{label} is periodic along {list(pbc)} but its cell has no volume; MD needs three "
                        "lattice vectors (add vacuum along non-periodic directions) or pbc=False"
                    )
        if self.ensemble.needs_full_pbc and not all(pbc):
            raise MDInputError(
                f"the {self.ensemble.kind} ensemble changes the cell and needs a fully periodic structure, "
                f"but pbc is {list(pbc)}; set atoms.pbc = True with a cell, or use nve/nvt-langevin/nvt-nh"
            )
        self.potential.species_map(numbers)  # raises UnknownElementError with a clear message
        return numbers, pbc

    def _host_counts(self, frames, pbc):
        """Pair counts and image needs of the starting structures (the largest); raises on overlapping atoms."""
        counts, model_counts, images = self._host_counts_each(frames, pbc)
        return max(counts), max(model_counts), tuple(int(i) for i in np.max(images, axis=0))

    def _host_counts_each(self, frames, pbc):
        """Per structure: pairs within cutoff + skin, pairs within cutoff, images needed ``(S, 3)``."""
        from ..neighbors import neighbor_list

        cutoff, list_cutoff = self.potential.cutoff, self.potential.cutoff + self.skin
        _, min_d = self.safety.limits(self.ensemble)
        limit = max(min_d, MIN_DISTANCE)
        counts, model_counts, images = [], [], []
        for k, a in enumerate(frames):
            label = f"structure {k}" if len(frames) > 1 else "structure"
            snd, rcv, _, d = neighbor_list(a, list_cutoff)
            check_overlaps(snd, rcv, d, label, min_distance=limit)  # Safety.min_distance
            counts.append(len(d))
            model_counts.append(int(np.sum(d < cutoff)))
            images.append(nl.images_for(np.asarray(a.get_cell()), pbc, list_cutoff) if any(pbc) else (0, 0, 0))
        return counts, model_counts, np.asarray(images, int).reshape(-1, 3)

    def _setup(self, numbers, pbc, masses, cell0, spec: nl.NeighborSpec) -> None:
        """Fix the system (numbers, masses, first cell) and the neighbour capacities."""
        self.sizes = self.system_capacity = None
        self.numbers = np.asarray(numbers)
        self.pbc = tuple(bool(p) for p in pbc)
        self.masses = np.asarray(masses, np.float64)
        self.system = System(
            species=jax.device_put(np.asarray(self.potential.species_map(self.numbers), np.int32)),
            masses=jax.device_put(np.asarray(self.masses, self.dtype)),
        )
        self.spec = spec
        self._cell0 = jax.device_put(np.asarray(cell0, self.dtype))

    def _setup_mixed(self, numbers: list, pbc, masses: list, cells, spec: nl.NeighborSpec, system_capacity) -> None:
        """Fix a mixed batch: per-replica numbers/masses padded to a common size bucket, cells, capacities."""
        from ..graph import bucket_size

        sizes = [len(z) for z in numbers]
        n_pad = bucket_size(max(sizes))
        r = len(sizes)
        z = np.zeros((r, n_pad), np.int64)
        m = np.ones((r, n_pad), np.float64)  # padding atoms: mass 1 (never moves: no force, no momentum)
        mask = np.zeros((r, n_pad), bool)
        species = np.zeros((r, n_pad), np.int32)
        for k, (zk, mk) in enumerate(zip(numbers, masses)):
            n = len(zk)
            z[k, :n], m[k, :n], mask[k, :n] = zk, mk, True
            species[k, :n] = self.potential.species_map(np.asarray(zk))
        self.numbers, self.masses, self.sizes = z, m, sizes
        self.pbc = tuple(bool(p) for p in pbc)
        self.system = System(species=jax.device_put(species), masses=jax.device_put(np.asarray(m, self.dtype)),
                             atom_mask=jax.device_put(mask))
        self.spec = spec
        self.system_capacity = [dict(c) for c in system_capacity]
        self._cell0 = jax.device_put(np.asarray(cells, self.dtype))

    def _check_mixed(self, frames: Sequence[Atoms]):
        """Validate the systems of a mixed batch (any compositions and sizes; one pbc for all)."""
        pbc = tuple(bool(p) for p in frames[0].get_pbc())
        for k, a in enumerate(frames):
            if tuple(bool(p) for p in a.get_pbc()) != pbc:
                raise MDInputError(
                    f"structure {k} has pbc {a.get_pbc().tolist()} but structure 0 has {list(pbc)}; the systems of a "
                    "mixed batch share one pbc: give a slab or molecule a cell with vacuum and pbc=True")
            try:
                self._check_structures([a])
            except MDInputError as exc:
                raise MDInputError(f"structure {k}: {exc}") from None
        return pbc

    def init(
        self,
        structures: Atoms | Sequence[Atoms],
        replicas: int | None = None,
        seed: int = 0,
        temperature=None,
    ) -> MDState:
        """Validate the starting structure(s) and build the initial state of all replicas.

        ``seed``: an integer, or one per replica (a replica seeded ``s`` draws what a one-replica run
        with ``seed=s`` draws: its system's trajectory in a mixed batch equals the system's run alone).
        ``structures``: one ``Atoms`` (copied to every replica) or one per replica.  Replicas of
        the same composition and atom order form an ordinary ensemble; structures that differ in
        composition or size form a *mixed batch* (one system per replica, padded to a common size
        bucket, one compiled program).  Momenta: ``temperature`` (K, or one per replica) given ->
        Maxwell–Boltzmann with a per-replica seed and zero total momentum; else the structure's
        momenta if any are non-zero; else Maxwell–Boltzmann at the ensemble temperature(s) (zero for
        NVE).  Nothing is compiled here; errors in the input are raised before any compilation.
        """
        frames = [structures] if isinstance(structures, Atoms) else list(structures)
        if not frames:
            raise MDInputError("no starting structure given")
        if len(frames) > 1 and any(not np.array_equal(a.get_atomic_numbers(), frames[0].get_atomic_numbers())
                                   for a in frames[1:]):
            if replicas not in (None, len(frames)):
                raise MDInputError(f"{len(frames)} different systems given for {replicas} replicas: a mixed batch "
                                   "runs one replica per structure (repeat a structure for more replicas)")
            return self._init_mixed(frames, seed, temperature)
        if replicas is None:
            replicas = len(frames)
        if replicas < 1:
            raise MDInputError(f"replicas must be >= 1, got {replicas}")
        if len(frames) == 1:
            frames = frames * replicas
        elif len(frames) != replicas:
            raise MDInputError(f"{len(frames)} structures given for {replicas} replicas; give one or one per replica")
        self.ensemble.check_replicas(replicas)
        temps = self._initial_temperatures(temperature, replicas)
        numbers, pbc = self._check_structures(frames)
        count, model_count, images = self._host_counts(frames, pbc)

        masses = frames[0].get_masses()
        cap0, mcap0, img0 = self._initial_sizes
        spec = nl.NeighborSpec(
            cutoff=float(self.potential.cutoff),
            skin=self.skin,
            capacity=int(cap0) if cap0 else nl.capacity_for(count, self.headroom),
            model_capacity=int(mcap0) if mcap0 else nl.model_capacity_for(model_count, self.model_headroom),
            images=tuple(i if p else 0 for i, p in zip(img0, pbc)) if img0 is not None else images,
            pbc=pbc,
        )
        positions = np.stack([a.get_positions() for a in frames])
        cells = np.stack([np.asarray(a.get_cell()) if any(pbc) else np.zeros((3, 3)) for a in frames])
        self._setup(numbers, pbc, masses, cells[0], spec)
        self.seed = _seed_value(seed)
        self.fingerprint = structure_fingerprint(numbers, positions, cells, pbc)
        self.restarted_from = None

        self.exchange_stats = None
        keys = _replica_keys(seed, replicas)
        momenta = self._initial_momenta(frames, [masses] * replicas, temps, keys)
        state = initial_state(positions, momenta, cells, keys[:, 1], self.spec, self.ensemble.chain_length,
                              dtype=self.dtype, xp=np)
        return self._place(jax.device_put(state))  # device_put compiles nothing (jnp.asarray would)

    def _initial_temperatures(self, temperature, replicas: int):
        """Per-replica initial temperatures (K) given explicitly, or None (the structures' momenta / ensemble)."""
        if temperature is None:
            return None
        t = np.broadcast_to(np.asarray(temperature, np.float64), (replicas,)) if np.ndim(temperature) == 0 or \
            len(np.ravel(temperature)) == replicas else None
        if t is None:
            raise MDInputError(f"give one initial temperature or one per replica ({replicas}), got {temperature!r}")
        if not np.all(np.isfinite(t) & (t >= 0) & (t <= 1e5)):
            raise MDInputError(f"initial temperature must be in [0, 1e5] K, got {temperature!r}")
        return t

    def _initial_momenta(self, frames, masses, temps, keys) -> np.ndarray:
        """Momenta (R, N, 3): Maxwell–Boltzmann at ``temps`` (or the ensemble's temperatures when no
        structure has momenta), else the structures' own."""
        replicas = len(frames)
        if temps is None:
            given = [a.get_momenta() for a in frames]
            if any(np.any(g != 0) for g in given):
                return given
            temps = np.nan_to_num(self.ensemble.values("temperature", replicas), nan=0.0)
        return [maxwell_boltzmann(None, masses[r], float(temps[r]), seed=keys[r, 0]) for r in range(replicas)]

    def _init_mixed(self, frames, seed, temperature) -> MDState:
        """:meth:`init` of a mixed batch: one replica per structure, padded to a common atom count."""
        r = len(frames)
        self.ensemble.check_replicas(r)
        temps = self._initial_temperatures(temperature, r)
        pbc = self._check_mixed(frames)
        counts, model_counts, images = self._host_counts_each(frames, pbc)
        cap0, mcap0, img0 = self._initial_sizes
        own = [{"capacity": nl.capacity_for(c, self.headroom),
                "model_capacity": nl.model_capacity_for(mc, self.model_headroom),
                "images": [int(i) for i in im], "regrows": 0}
               for c, mc, im in zip(counts, model_counts, images)]
        spec = nl.NeighborSpec(
            cutoff=float(self.potential.cutoff), skin=self.skin,
            capacity=int(cap0) if cap0 else max(c["capacity"] for c in own),
            model_capacity=int(mcap0) if mcap0 else max(c["model_capacity"] for c in own),
            images=tuple(i if p else 0 for i, p in zip(img0, pbc)) if img0 is not None
            else tuple(int(i) for i in np.max(images, axis=0)),
            pbc=pbc,
        )
        cells = np.stack([np.asarray(a.get_cell()) if any(pbc) else np.zeros((3, 3)) for a in frames])
        self._setup_mixed([a.get_atomic_numbers() for a in frames], pbc, [a.get_masses() for a in frames], cells,
                          spec, own)
        self.seed = _seed_value(seed)
        self.fingerprint = _mixed_fingerprint(frames, pbc)
        self.restarted_from = None
        self.exchange_stats = None
        n_pad = self.n_pad
        keys = _replica_keys(seed, r)
        momenta = self._initial_momenta(frames, [a.get_masses() for a in frames], temps, keys)
        positions = np.zeros((r, n_pad, 3))
        mom = np.zeros((r, n_pad, 3))
        for k, a in enumerate(frames):
            positions[k, :len(a)] = a.get_positions()
            mom[k, :len(a)] = momenta[k]
        state = initial_state(positions, mom, cells, keys[:, 1], self.spec, self.ensemble.chain_length,
                              dtype=self.dtype, xp=np)
        return self._place(jax.device_put(state))

    def _params(self, params):
        """Params in the MD dtype, on device, without compiling anything for already-right leaves."""
        dtype = self.dtype

        def cast(x):
            if isinstance(x, jax.Array):
                return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype else x
            x = np.asarray(x)
            return jax.device_put(x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x)

        return jax.tree_util.tree_map(cast, self.potential.params if params is None else params)

    def _place(self, state: MDState) -> MDState:
        """Shard the replica axis over the devices (when there are several)."""
        devices = jax.devices()
        r = state.positions.shape[0]
        if not self.shard or len(devices) < 2:
            return state
        d = _largest_divisor_at_most(r, len(devices))
        if d < 2:
            return state
        mesh = jax.sharding.Mesh(np.asarray(devices[:d]), (AXIS,))
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))
        return jax.device_put(state, sharding)

    def _conform(self, state: MDState) -> MDState:
        """Adapt a state (e.g. restored, or from another ensemble) to the current capacities/chain."""
        n = self.n_pad
        cap = state.neighbors.senders.shape[-1]
        if cap > self.spec.capacity:
            self.spec = self.spec._replace(capacity=int(cap))
        elif cap < self.spec.capacity:
            state = state._replace(neighbors=nl.pad_to(state.neighbors, self.spec.capacity, n))
        length = self.ensemble.chain_length
        if state.thermostat_position.shape[-1] != length:
            fix = lambda a: jnp.zeros(a.shape[:-1] + (length,), a.dtype).at[..., : min(length, a.shape[-1])].set(
                a[..., :length])
            state = state._replace(
                thermostat_position=fix(state.thermostat_position), thermostat_momentum=fix(state.thermostat_momentum),
                barostat_position=fix(state.barostat_position), barostat_momentum=fix(state.barostat_momentum),
            )
        return state

    def _regrow(self, state: MDState, diag: Diagnostics) -> MDState:
        d = jax.device_get(diag)
        spec = self.spec
        n = self.n_pad
        self._account(d)
        count = int(np.max(d.max_count))
        model_count = int(np.max(d.max_model_count))
        images = tuple(int(max(a, b)) for a, b in zip(spec.images, np.max(d.max_images, axis=0)))
        capacity = nl.capacity_for(count, self.headroom) if count > spec.capacity else spec.capacity
        model_capacity = (nl.model_capacity_for(model_count, self.model_headroom)
                          if model_count > spec.model_capacity else spec.model_capacity)
        limit = max(self.sizes or [n]) ** 2 * int(np.prod([2 * i + 1 for i in images]))
        if min(capacity, model_capacity) > 2 * limit + 64:
            raise CapacityError(f"neighbour capacity {capacity} exceeds every possible pair ({limit}); "
                                "the structure is collapsing")
        self.spec = spec._replace(capacity=capacity, model_capacity=model_capacity, images=images)
        self.regrows += 1
        return self._place(state._replace(neighbors=nl.pad_to(state.neighbors, capacity, n)))

    def _account(self, d: Diagnostics) -> None:
        """Per-system neighbour accounting of a mixed batch: each system's own capacities grow when its own
        counts pass them (the compiled capacities are the largest of these)."""
        if not self.mixed:
            return
        for r, own in enumerate(self.system_capacity):
            grew = False
            if int(d.max_count[r]) > own["capacity"]:
                own["capacity"] = nl.capacity_for(int(d.max_count[r]), self.headroom)
                grew = True
            if int(d.max_model_count[r]) > own["model_capacity"]:
                own["model_capacity"] = nl.model_capacity_for(int(d.max_model_count[r]), self.model_headroom)
                grew = True
            need = [int(max(a, b)) for a, b in zip(own["images"], d.max_images[r])]
            if need != own["images"]:
                own["images"], grew = need, True
            own["regrows"] += int(grew)
            own["max_pairs"] = max(int(own.get("max_pairs", 0)), int(d.max_count[r]))
            own["max_model_pairs"] = max(int(own.get("max_model_pairs", 0)), int(d.max_model_count[r]))

    def run(
        self,
        state: MDState,
        params=None,
        n_steps: int = 1000,
        record_every: int = 1,
        extra=None,
        progress: bool | None = None,
        on_chunk: Callable[[MDState, Trajectory], None] | None = None,
        checkpoint=None,
    ) -> tuple[MDState, Trajectory]:
        """Advance every replica ``n_steps`` steps, recording a frame every ``record_every``.

        ``params`` defaults to the potential's.  Returns the new state and a
        :class:`~jaxuft.md.trajectory.Trajectory` whose ``report`` holds timings,
        compilations, capacity regrowths and stop reasons.

        ``on_chunk(state, frames)``: called after every chunk (at most ``chunk_steps`` steps)
        with the state at its end and that chunk's frames (a :class:`Trajectory`): write
        frames and ``self.save(state, path)`` there and a killed run resumes from the last
        chunk exactly.  An exception it raises stops the run (the state it saw is complete).
        ``checkpoint``: a path; ``self.save(state, checkpoint)`` after every chunk (before ``on_chunk``).
        """
        self._need_init()
        n_steps, record_every = int(n_steps), int(record_every)
        if n_steps < 1 or record_every < 1:
            raise MDInputError("n_steps and record_every must be >= 1")
        if n_steps % record_every:
            raise MDInputError(f"n_steps ({n_steps}) must be a multiple of record_every ({record_every})")
        state = self._place(self._conform(state))
        params = self._params(params)
        extra = {} if extra is None else extra
        r, n_atoms = state.positions.shape[0], state.positions.shape[1]
        limits, cond = self.limits(), self.conditions(r)
        n_records = n_steps // record_every
        chunk = _largest_divisor_at_most(n_records, max(1, self.chunk_steps // record_every))
        if self.replica_exchange:
            chunk = self._exchange_chunk(n_steps, record_every, r)
        n_chunks = n_records // chunk
        if progress is None:
            progress = n_chunks > 1
        batch = self._replica_batch(self.spec)
        n_groups = r // _largest_divisor_at_most(r, batch) if batch else 1
        bar = ChunkProgress(n_steps, chunk * record_every, n_groups, f"MD {self.ensemble.kind} x{r}", progress)
        # In-scan progress ticks where someone can watch a bar move (a terminal, or JAXUFT_PROGRESS=1): the same
        # for every run of the process, whether this run shows its bar or not, so that runs of any length
        # share one program.  Elsewhere (logs, CI, batch jobs) the tick-free program: JAX cannot keep a
        # program with a host callback in its persistent compilation cache (jaxuft/compile_cache.py).
        ticks = progress_enabled()
        extra = jax.device_put(extra)  # arrays with fixed types (python scalars would retrace)
        counter = CompilationCounter().start()
        compile_wall = 0.0
        t_start = time.perf_counter()
        frames_parts, obs_parts = [], []
        rebuilds = np.zeros(state.positions.shape[0], np.int64)
        start_status = np.asarray(jax.device_get(state.status))
        regrows0 = self.regrows
        exchange0 = _copy_stats(self.exchange_stats)
        try:
            for _ in range(n_chunks):
                t_chunk, compiling = time.perf_counter(), 0.0
                while True:
                    spec = self.spec
                    args = (params, self.system, state, cond, {**limits, **bar.limits()}, extra)
                    program = self.program(chunk, record_every, spec, ticks=ticks)
                    fn = cached_executable(program, args)
                    if fn is None:
                        bar.compiling(True)
                        fn, seconds = executable(program, args)
                        bar.compiling(False)
                        compiling += seconds
                    new_state, frames, obs, diag = fn(*args)
                    if self.overflowed(diag, spec):
                        state = self._regrow(state, diag)
                        continue
                    break
                compile_wall += compiling
                chunk_start_status = np.asarray(jax.device_get(state.status))
                state = new_state
                self._account(jax.device_get(diag))
                if self.replica_exchange:
                    state = self._exchange(state)
                rebuilds += np.asarray(jax.device_get(diag.rebuilds))
                frames_parts.append(jax.device_get(frames))
                obs_parts.append(jax.device_get(obs))
                bar.chunk_done(time.perf_counter() - t_chunk - compiling)
                if checkpoint is not None:
                    self.save(state, checkpoint)
                if on_chunk is not None:
                    on_chunk(state, self._trajectory(frames_parts[-1], obs_parts[-1], chunk_start_status))
        finally:
            counter.stop()
            bar.close()
        wall = time.perf_counter() - t_start
        data = {k: np.concatenate([f[k] for f in frames_parts], axis=1) for k in frames_parts[0]}
        observables = {k: np.concatenate([o[k] for o in obs_parts], axis=1) for k in obs_parts[0]}
        report = self._report(state, n_steps, r, n_atoms, wall, compile_wall, counter, self.regrows - regrows0)
        report["neighbour_rebuilds"] = rebuilds.tolist()
        if self.replica_exchange:
            report["replica_exchange"] = {"this_run": exchange_summary(_diff_stats(self.exchange_stats, exchange0)),
                                          "total": exchange_summary(self.exchange_stats)}
        return state, self._trajectory(data, observables, start_status, report)

    def _trajectory(self, data: dict, observables: dict, start_status, report=None) -> Trajectory:
        data = dict(data)
        r = data["step"].shape[0]
        dt = self.ensemble.values("timestep", r)
        data["time"] = data["step"] * dt[:, None]
        return Trajectory(
            data=data, observables=dict(observables), valid=_valid_frames(data["status"], start_status),
            numbers=self.numbers, masses=np.asarray(self.system.masses), pbc=np.asarray(self.pbc),
            timestep_fs=dt if self.ensemble.per_replica else float(dt[0]), report=report or {},
            n_atoms=None if self.sizes is None else np.asarray(self.sizes),
        )

    # ------------------------------------------------------------------ replica exchange
    def _exchange_chunk(self, n_steps: int, record_every: int, r: int) -> int:
        """Records per chunk of a replica-exchange run (a chunk ends at every exchange attempt)."""
        every = self.replica_exchange
        if self.mixed:
            raise MDInputError("replica exchange swaps configurations of one system; a mixed batch holds different "
                               "systems (run each system's temperature ladder as its own Simulation)")
        if r < 2:
            raise MDInputError("replica exchange needs at least 2 replicas (one per temperature)")
        if every % record_every or n_steps % every:
            raise MDInputError(f"replica_exchange ({every} steps) must be a multiple of record_every ({record_every}) "
                               f"and divide n_steps ({n_steps})")
        return every // record_every

    def _exchange(self, state: MDState) -> MDState:
        """One round of swap attempts between neighbouring temperatures (host side; compiles nothing)."""
        host = jax.tree_util.tree_map(np.array, jax.device_get(state))
        r = host.positions.shape[0]
        temps = self.ensemble.values("temperature", r)
        if self.exchange_stats is None or len(self.exchange_stats["walkers"]) != r:
            self.exchange_stats = new_exchange_stats(temps)
        stats = self.exchange_stats
        order = np.argsort(temps, kind="stable")
        stats["temperatures"] = [float(t) for t in temps[order]]
        pressure = np.nan_to_num(self.ensemble.values("pressure", r)) * BAR if self.ensemble.kind == "npt" \
            else np.zeros(r)
        volume = np.abs(np.linalg.det(host.cell.astype(np.float64))) if self.ensemble.kind == "npt" else np.zeros(r)
        beta = 1.0 / (KB * temps)
        energy = host.energy.astype(np.float64)
        rng = np.random.default_rng([*np.ravel(self.seed or 0).astype(int).tolist(), int(stats["rounds"]), 0x5EED])
        swap_fields = [f for f in MDState._fields if f not in ("key", "step", "status", "stop_value")]
        scaled = ("momenta", "thermostat_momentum", "barostat_momentum", "box_momentum")
        for i in range(stats["rounds"] % 2, r - 1, 2):
            a, b = int(order[i]), int(order[i + 1])
            u = rng.random()  # drawn for every pair, so the stream does not depend on the outcomes
            if host.status[a] != RUNNING or host.status[b] != RUNNING:
                continue
            delta = (beta[a] - beta[b]) * (energy[a] - energy[b]) + \
                (beta[a] * pressure[a] - beta[b] * pressure[b]) * (volume[a] - volume[b])
            prob = 1.0 if delta >= 0 else math.exp(delta)
            stats["attempts"][i] += 1
            stats["probability_sum"][i] += prob
            if u < prob:
                stats["accepted"][i] += 1
                for name in swap_fields:
                    arr = getattr(host, name)
                    if name == "neighbors":
                        for sub in arr:
                            sub[[a, b]] = sub[[b, a]]
                        continue
                    arr[[a, b]] = arr[[b, a]]
                    if name in scaled:
                        arr[a] = (arr[a] * math.sqrt(temps[a] / temps[b])).astype(arr.dtype)
                        arr[b] = (arr[b] * math.sqrt(temps[b] / temps[a])).astype(arr.dtype)
                w = stats["walkers"]
                w[a], w[b] = w[b], w[a]
        stats["rounds"] += 1
        return self._place(jax.device_put(host))

    def _report(self, state, n_steps, r, n_atoms, wall, compile_wall, counter, regrows) -> dict:
        status = np.asarray(jax.device_get(state.status))
        steps = np.asarray(jax.device_get(state.step))
        values = np.asarray(jax.device_get(state.stop_value))
        compute = max(wall - compile_wall, 1e-12)
        total_atoms = sum(self.sizes) if self.mixed else r * n_atoms  # real atoms (padding excluded)
        out = {}
        if self.mixed:
            out["systems"] = [{"atoms": n, **c} for n, c in zip(self.sizes, self.system_capacity)]
            out["padded_atoms"] = n_atoms
        return out | {
            "ensemble": self.ensemble.describe(),
            "n_steps": n_steps,
            "replicas": r,
            "atoms": list(self.sizes) if self.mixed else n_atoms,
            "wall_s": wall,
            "compile_s": compile_wall,  # tracing + lowering + XLA compilation of new segment programs
            "xla_compile_s": counter.seconds,
            "compilations": counter.count,
            "atom_steps_per_s": n_steps * total_atoms / compute,
            "atom_steps_per_s_incl_compile": n_steps * total_atoms / max(wall, 1e-12),
            "capacity_regrows": regrows,
            "capacity": self.spec.capacity,
            "model_capacity": self.spec.model_capacity,
            "images": list(self.spec.images),
            "stops": stop_reasons(status, steps, values),
        }


def _replica_keys(seed, replicas: int) -> np.ndarray:
    """``(R, 2, 2)`` uint32: per replica a momentum seed and the PRNG key of its Langevin noise.

    ``seed``: one integer (replica ``r`` draws from ``(seed, r)``) or one per replica (replica ``r``
    draws from ``(seed[r], 0)``: the numbers a one-replica run with that seed draws)."""
    if np.ndim(seed) == 0:
        entropy = [[int(seed), r] for r in range(replicas)]
    else:
        seeds = [int(x) for x in np.ravel(seed)]
        if len(seeds) != replicas:
            raise MDInputError(f"give one seed or one per replica ({replicas}), got {len(seeds)} seeds")
        entropy = [[x, 0] for x in seeds]
    return np.stack([np.random.SeedSequence(e).generate_state(4, np.uint32).reshape(2, 2) for e in entropy])


def _seed_value(seed):
    """The seed as stored in saved states: an int, or a list of per-replica ints."""
    if np.ndim(seed) == 0:
        if int(seed) < 0:
            raise MDInputError(f"seed must be >= 0, got {seed!r}")
        return int(seed)
    seeds = [int(x) for x in np.ravel(seed)]
    if min(seeds) < 0:
        raise MDInputError(f"seeds must be >= 0, got {seeds!r}")
    return seeds


def _mixed_fingerprint(frames, pbc) -> str:
    """sha256 over the systems of a mixed batch (each system's :func:`structure_fingerprint`)."""
    import hashlib

    h = hashlib.sha256()
    for a in frames:
        cell = np.asarray(a.get_cell()) if any(pbc) else np.zeros((3, 3))
        h.update(structure_fingerprint(a.get_atomic_numbers(), a.get_positions(), cell, pbc).encode())
    return h.hexdigest()


def new_exchange_stats(temperatures) -> dict:
    """Empty replica-exchange statistics for a temperature ladder (per neighbour pair of the sorted ladder)."""
    t = sorted(float(x) for x in np.ravel(temperatures))
    n = max(len(t) - 1, 0)
    return {"temperatures": t, "attempts": [0] * n, "accepted": [0] * n, "probability_sum": [0.0] * n,
            "rounds": 0, "walkers": list(range(len(t)))}


def _copy_stats(stats):
    return None if stats is None else {k: (list(v) if isinstance(v, list) else v) for k, v in stats.items()}


def _diff_stats(now, before):
    """The statistics gathered between two snapshots."""
    if now is None:
        return None
    if before is None or len(before["attempts"]) != len(now["attempts"]):
        return now
    out = _copy_stats(now)
    for k in ("attempts", "accepted", "probability_sum"):
        out[k] = [x - y for x, y in zip(now[k], before[k])]
    out["rounds"] = now["rounds"] - before["rounds"]
    return out


def exchange_summary(stats) -> dict | None:
    """Per neighbour pair ``T_i-T_j``: attempts, accepted, acceptance ratio and mean Metropolis probability;
    plus rounds and ``walkers`` (which starting configuration each replica holds)."""
    if stats is None:
        return None
    t = stats["temperatures"]
    pairs = []
    for i, (n, k, p) in enumerate(zip(stats["attempts"], stats["accepted"], stats["probability_sum"])):
        pairs.append({"pair": [t[i], t[i + 1]], "attempts": int(n), "accepted": int(k),
                      "acceptance": k / n if n else None, "mean_probability": p / n if n else None})
    return {"rounds": int(stats["rounds"]), "pairs": pairs, "walkers": list(stats["walkers"])}


def _valid_frames(status: np.ndarray, start_status: np.ndarray) -> np.ndarray:
    """Frames of running replicas, plus the first frame after a stop in this segment (its last good state)."""
    running = status == RUNNING
    first_stop = np.zeros_like(running)
    for r in range(status.shape[0]):
        if start_status[r] != RUNNING:
            continue
        idx = np.nonzero(~running[r])[0]
        if idx.size:
            first_stop[r, idx[0]] = True
    return running | first_stop


def stop_reasons(status, steps, values) -> list[dict]:
    """One entry per replica: status key, message, last good step and the offending value."""
    out = []
    for r, (s, st, v) in enumerate(zip(np.ravel(status), np.ravel(steps), np.ravel(values))):
        s = int(s)
        entry = {"replica": r, "status": STATUS_KEYS.get(s, str(s)), "step": int(st)}
        if s != RUNNING:
            entry["message"] = STATUS_NAMES.get(s, "stopped")
            if np.isfinite(v):
                entry["value"] = float(v)
        out.append(entry)
    return out


def maxwell_boltzmann(key, masses, temperature_k: float, seed=None) -> np.ndarray:
    """Momenta (N, 3) drawn at ``temperature_k`` with zero total momentum (amu·Å/t_ASE).

    Drawn on the host (numpy, seeded from ``seed`` or the key's bits) so nothing compiles."""
    masses = np.asarray(masses, dtype=np.float64)
    if temperature_k <= 0:
        return np.zeros((len(masses), 3))
    entropy = [int(v) for v in np.ravel(np.asarray(key))] if seed is None else [int(v) for v in np.ravel(seed)]
    xi = np.random.default_rng(entropy).standard_normal((len(masses), 3))
    p = xi * np.sqrt(masses * KB * temperature_k)[:, None]
    p -= masses[:, None] * (p.sum(axis=0) / masses.sum())
    return p
