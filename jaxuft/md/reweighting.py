"""Gradients of equilibrium averages by reweighting (DiffTRe, Thaler & Zavadlav 2021): sample once, differentiate the Boltzmann-reweighted average, resample when the effective sample size drops.

For long runs, backpropagating through time (:mod:`jaxuft.md.differentiable`) costs memory
and its gradient grows noisy once the trajectory decorrelates.  An equilibrium average
``<O>_θ`` needs neither: frames ``x_i`` sampled with reference params ``θ0`` (canonical or
isothermal-isobaric) give

    <O>_θ ≈ Σ_i w_i O_i(θ),   w_i = exp(-β ΔU_i) / Σ_j exp(-β ΔU_j),   ΔU_i = U_θ(x_i) - U_θ0(x_i),

a differentiable function of ``θ`` (only energies of stored frames are recomputed, no
trajectory is differentiated).  At ``θ = θ0`` its gradient is the fluctuation formula
``<∂O/∂θ> - β (<O ∂U/∂θ> - <O><∂U/∂θ>)``.  The estimate is good while the weights are even:
the effective sample size ``ESS = 1 / Σ w_i²`` (``N`` at ``θ0``) is reported, and
:class:`Reweighting` samples again with the current params when ``ESS / N`` drops below
``min_ess``.  NPT: the ``PV`` term of the weight does not depend on ``θ`` and cancels.

>>> rw = Reweighting(sim, state, steps=2000, record_every=20, observables=lambda p, f: {"density": f["density"]})
>>> for it in range(50):
...     loss, grads, info = rw.value_and_grad(lambda means: (means["density"] - 8.9) ** 2, params)
...     params = optax.apply_updates(params, ...)          # info: ess, resampled, means
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..potential import energy as model_energy
from . import neighbors as nl
from .differentiable import AMU_PER_A3_TO_G_PER_CM3
from .errors import MDInputError
from .forces import replica_graph
from .state import MDState
from .units import KB


# ----------------------------------------------------------------------------- the estimator


def weights(delta_u, kT):
    """Normalised Boltzmann weights ``exp(-ΔU/kT) / Σ exp(-ΔU/kT)`` of ``delta_u (F,)`` eV."""
    return jax.nn.softmax(-delta_u / kT)


def effective_sample_size(w):
    """``1 / Σ w²`` of normalised weights (``F`` for equal weights, 1 when one frame dominates)."""
    return 1.0 / jnp.sum(w * w)


def reweighted_mean(values, delta_u, kT):
    """``Σ_i w_i values_i`` (``values (F, ...)``) with :func:`weights`; differentiable in both."""
    w = weights(delta_u, kT).astype(values.dtype)
    return jnp.tensordot(w, values, axes=1)


class Sample(NamedTuple):
    """Frames sampled with reference params (a pytree, ``F`` frames of ``N`` atoms).

    positions (F, N, 3) Å, cell (F, 3, 3) Å, neighbors: a NeighborList per frame (built once),
    reference_energy (F,) eV: the energies at the sampling params (recomputed here, so ΔU is
    exactly 0 there), kT () eV: the sampling temperature."""

    positions: jax.Array
    cell: jax.Array
    neighbors: nl.NeighborList
    reference_energy: jax.Array
    kT: jax.Array

    @property
    def n_frames(self) -> int:
        return int(self.positions.shape[0])


class Reweighting:
    """DiffTRe driver on top of a :class:`~jaxuft.md.Simulation` (Langevin, Nosé–Hoover or NPT).

    simulation:  an initialised Simulation (its ensemble sets the temperature of the weights)
    state:       its state to sample from (the chain continues from resample to resample)
    steps, record_every: MD steps per (re)sampling and the frame interval (frames of all
                 replicas are pooled)
    observables: ``fn(params, frame) -> dict of arrays`` for one frame: ``frame`` holds
                 ``positions (N, 3)``, ``cell``, ``energy`` (eV, at ``params``), ``volume`` (Å³) and
                 ``density`` (g/cm³); they are averaged with the weights
    equilibration: steps run (not recorded) after each change of params before sampling
    min_ess:     resample when ``ESS / frames`` falls below this (DiffTRe uses 0.9; lower values
                 resample less often with noisier gradients)
    batch_size:  frames evaluated together when recomputing energies (bounds memory)
    """

    def __init__(self, simulation, state: MDState, steps: int, record_every: int, observables: Callable,
                 equilibration: int = 0, min_ess: float = 0.6, batch_size: int = 32):
        e = simulation.ensemble
        if getattr(simulation, "mixed", False):
            raise MDInputError("reweighting pools the frames of one system; a mixed batch has several: "
                               "reweight each system with its own Simulation")
        if e.kind not in ("nvt-langevin", "nvt-nh", "npt"):
            raise MDInputError(f"reweighting needs a canonical or isothermal-isobaric ensemble (Langevin, Nosé–Hoover "
                               f"or NPT), got {e.kind!r}: NVE frames carry no Boltzmann weights")
        temps = np.unique(np.ravel(np.asarray(e.temperature, np.float64)))
        if temps.size != 1:
            raise MDInputError("reweighting pools the frames of all replicas: they need one temperature, got "
                               f"{temps.tolist()} K")
        if not (0 < min_ess <= 1):
            raise MDInputError(f"min_ess is a fraction of the frames in (0, 1], got {min_ess!r}")
        if int(steps) < 1 or int(record_every) < 1 or int(steps) % int(record_every):
            raise MDInputError(f"steps ({steps}) must be a positive multiple of record_every ({record_every})")
        self.sim = simulation
        self.state = state
        self.steps, self.record_every = int(steps), int(record_every)
        self.equilibration = int(equilibration)
        self.observables = observables
        self.min_ess = float(min_ess)
        self.batch_size = int(batch_size)
        self.kT = float(temps[0]) * KB
        self.sample: Sample | None = None
        self.samples_taken = 0
        self.md_steps = 0
        self._spec: nl.NeighborSpec | None = None
        self._jitted: dict = {}
        self.total_mass = float(np.sum(simulation.masses))

    # ------------------------------------------------------------------ pure functions
    def energies(self, params, sample: Sample, spec: nl.NeighborSpec):
        """``(F,)`` potential energies (eV) of the stored frames with ``params`` (pure)."""
        module = self.sim.potential.module
        species = self.sim.system.species

        def one(frame):
            x, c, nbrs = frame
            edges = nl.model_edges(x, c, nbrs, spec)
            return model_energy(module, params, replica_graph(species, x, c, edges, spec))[0]

        return jax.lax.map(one, (sample.positions, sample.cell, sample.neighbors), batch_size=self.batch_size)

    def estimate(self, params, sample: Sample, spec: nl.NeighborSpec):
        """``(means, ess)``: reweighted averages of the observables at ``params`` and the effective
        sample size (pure, differentiable in ``params``)."""
        u = self.energies(params, sample, spec)
        du = u - sample.reference_energy
        w = weights(du, sample.kT)
        volume = jnp.abs(jnp.linalg.det(sample.cell))
        frame = {"positions": sample.positions, "cell": sample.cell, "energy": u, "volume": volume,
                 "density": self.total_mass * AMU_PER_A3_TO_G_PER_CM3 / volume}
        obs = jax.vmap(lambda f: self.observables(params, f))(frame)
        means = jax.tree_util.tree_map(lambda o: jnp.tensordot(w.astype(o.dtype), o, axes=1), obs)
        return means, effective_sample_size(w)

    # ------------------------------------------------------------------ sampling
    def resample(self, params) -> Sample:
        """Run the simulation with ``params`` and store its frames as the new reference sample."""
        sim = self.sim
        if self.equilibration:
            self.state, _ = sim.run(self.state, params, self.equilibration, self.equilibration, progress=False)
            self.md_steps += self.equilibration
        self.state, traj = sim.run(self.state, params, self.steps, self.record_every, progress=False)
        self.md_steps += self.steps
        if not np.all(traj.valid):
            raise MDInputError(f"a replica stopped while sampling ({traj.report.get('stops', 'see the report')}); "
                               "its frames cannot be reweighted: fix the params or the settings")
        dtype = sim.dtype
        x = np.asarray(traj.positions, dtype).reshape((-1,) + traj.positions.shape[2:])
        c = np.asarray(traj.cell, dtype).reshape(-1, 3, 3)
        spec = sim.spec if self._spec is None else self._spec
        while True:  # a list per frame, grown until every frame fits
            nbrs = self._build(spec)(jnp.asarray(x), jnp.asarray(c))
            count = int(np.max(np.asarray(nbrs.count)))
            model = int(np.max(np.asarray(self._model_counts(spec)(jnp.asarray(x), jnp.asarray(c), nbrs))))
            images = np.max(np.asarray(nbrs.images_needed), axis=0)
            if count <= spec.capacity and model <= spec.model_capacity and np.all(images <= np.asarray(spec.images)):
                break
            spec = spec._replace(
                capacity=max(spec.capacity, nl.capacity_for(count, 1.25)),
                model_capacity=max(spec.model_capacity, nl.model_capacity_for(model, 1.1)),
                images=tuple(int(max(a, b)) for a, b in zip(spec.images, images)))
        self._spec = spec
        partial = Sample(jnp.asarray(x), jnp.asarray(c), nbrs, jnp.zeros(x.shape[0], dtype), jnp.asarray(self.kT, dtype))
        reference = self._jit("energies", lambda p, s: self.energies(p, s, spec), spec)(sim._params(params), partial)
        self.sample = partial._replace(reference_energy=reference)
        self.samples_taken += 1
        return self.sample

    def _build(self, spec):
        return self._jit("build", lambda x, c: jax.vmap(lambda a, b: nl.build(a, b, spec))(x, c), spec)

    def _model_counts(self, spec):
        return self._jit("counts", lambda x, c, n: jax.vmap(lambda a, b, m: nl.model_edges(a, b, m, spec).count)(x, c, n),
                         spec)

    def _jit(self, name, fn, spec, key=None):
        k = (name, spec, key)
        if k not in self._jitted:
            self._jitted[k] = jax.jit(fn)
        return self._jitted[k]

    # ------------------------------------------------------------------ the optimiser's view
    def effective_sample_size(self, params) -> float:
        """ESS of the current sample at ``params`` (forward only)."""
        if self.sample is None:
            raise MDInputError("no sample yet: call resample(params) or value_and_grad(...) first")
        spec = self._spec
        fn = self._jit("ess", lambda p, s: self.estimate(p, s, spec)[1], spec)
        return float(fn(self.sim._params(params), self.sample))

    def value_and_grad(self, loss: Callable, params):
        """``(loss value, d loss / d params, info)`` for ``loss(means) -> scalar`` of the reweighted
        averages.  Samples first (and again whenever ESS/frames < ``min_ess``).  ``info``: ``ess``,
        ``ess_fraction``, ``resampled``, ``means`` (floats), ``samples_taken``, ``md_steps``.
        Define ``loss`` once: its identity keys the compiled gradient (a new lambda per call compiles anew)."""
        params = self.sim._params(params)
        resampled = False
        if self.sample is None or self.effective_sample_size(params) < self.min_ess * self.sample.n_frames:
            self.resample(params)
            resampled = True
        spec = self._spec

        def objective(p, s):
            means, ess = self.estimate(p, s, spec)
            return loss(means), (means, ess)

        fn = self._jit("value_and_grad", jax.value_and_grad(objective, has_aux=True), spec, key=loss)
        (value, (means, ess)), grads = fn(params, self.sample)
        n = self.sample.n_frames
        info = {
            "ess": float(ess), "ess_fraction": float(ess) / n, "resampled": resampled, "frames": n,
            "means": {k: np.asarray(v).tolist() for k, v in means.items()},
            "samples_taken": self.samples_taken, "md_steps": self.md_steps,
        }
        return value, grads, info
