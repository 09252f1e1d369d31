"""Integrators in jax-md's ``(init_fn, apply_fn)`` style, for one replica (vmap for ensembles).

All take a ``force_fn(positions, cell, neighbors) -> (ForceOutput, neighbors)``
that also keeps the neighbour list up to date, per-atom ``masses (N,)`` amu,
and scalars in ASE units (``dt`` in ASE time, ``kT`` in eV, ``pressure`` in
eV/Å³, ``friction`` in 1/ASE time, ``tau_*`` in ASE time).  Scalars may be
traced values, so changing a temperature or timestep between segments does not
recompile.

``atom_mask (N,)`` (optional, keyword): False marks padding atoms of a mixed batch; they
have no degrees of freedom (temperature, chain and barostat masses count real atoms only)
and receive no Langevin noise.  Langevin noise is drawn per atom (``fold_in`` of the atom
index), so the noise of an atom does not depend on how many atoms follow it: a system
padded in a mixed batch moves exactly as it does alone.

``init_fn(positions, cell, momenta, neighbors, key)`` evaluates the forces and
returns an :class:`~jaxuft.md.state.MDState`; ``apply_fn(state)`` does one step
and returns ``(state, force_output)`` (the extra output carries the minimum pair
distance and model-edge count the engine checks).

* :func:`nve` — velocity Verlet.
* :func:`nvt_langevin` — BAOAB Langevin (Leimkuhler & Matthews 2013).
* :func:`nvt_nose_hoover` — Nosé–Hoover chain (Martyna, Klein, Tuckerman 1992),
  chain updates by :func:`jax_md.simulate.nose_hoover_chain` (Suzuki–Yoshida).
* :func:`npt_nose_hoover` — isotropic MTK barostat with Nosé–Hoover chains on atoms
  and barostat (Martyna, Tobias, Klein 1994; Tuckerman et al. 2006), the scheme of
  :func:`jax_md.simulate.npt_nose_hoover` in cartesian coordinates, any cell shape
  (the cell is scaled uniformly), one force/stress evaluation per step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .state import RUNNING, MDState


def _simulate():
    """jax_md.simulate, imported on first use (importing jax_md takes seconds: keeps ``jaxuft --help`` fast)."""
    from jax_md import simulate

    return simulate


def kinetic_energy(momenta, masses):
    """``sum p^2 / 2m`` (eV) for ``momenta (N, 3)`` and ``masses (N,)``."""
    return 0.5 * jnp.sum(momenta * momenta / masses[:, None])


def temperature(momenta, masses, kb, atom_mask=None):
    """Instantaneous temperature ``2 KE / (3 N k_B)`` (K) with ``kb`` in eV/K (``N``: real atoms)."""
    n = _n_atoms(masses, atom_mask)
    return 2.0 * kinetic_energy(momenta, masses) / (3.0 * n * kb)


def _n_atoms(masses, atom_mask):
    """The number of real atoms (a traced count with a mask)."""
    if atom_mask is None:
        return masses.shape[0]
    return jnp.sum(atom_mask).astype(masses.dtype)


def gaussian_noise(key, shape, dtype, atom_mask=None):
    """Standard normal noise ``(N, 3)`` drawn per atom (``fold_in(key, i)``), so atom ``i``'s noise does
    not depend on the number of atoms; zero on padding atoms."""
    n = shape[0]
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n, dtype=jnp.uint32))
    noise = jax.vmap(lambda k: jax.random.normal(k, shape[1:], dtype))(keys)
    if atom_mask is not None:
        noise = jnp.where(atom_mask[:, None], noise, 0.0)
    return noise


def instantaneous_pressure(momenta, masses, stress, cell):
    """``(2 KE - V tr(stress)) / 3V`` in eV/Å³ (stress with ASE sign, potential part)."""
    volume = jnp.abs(jnp.linalg.det(cell))
    return (2.0 * kinetic_energy(momenta, masses) - volume * jnp.trace(stress)) / (3.0 * volume)


def _init_factory(force_fn, chain_length: int):
    def init_fn(positions, cell, momenta, neighbors, key):
        out, neighbors = force_fn(positions, cell, neighbors)
        dtype = positions.dtype
        zero = jnp.zeros((), dtype)
        chain = jnp.zeros((chain_length,), dtype)
        return MDState(
            positions=positions,
            momenta=momenta.astype(dtype),
            forces=out.forces,
            energy=out.energy,
            stress=out.stress,
            cell=cell,
            reference_cell=cell,
            box_position=zero,
            box_momentum=zero,
            thermostat_position=chain,
            thermostat_momentum=chain,
            barostat_position=chain,
            barostat_momentum=chain,
            key=key,
            step=jnp.zeros((), jnp.int32),
            status=jnp.full((), RUNNING, jnp.int32),
            stop_value=zero,
            neighbors=neighbors,
        )

    return init_fn


def refresh(force_fn, state: MDState):
    """Re-evaluate energy, forces and stress at the state's positions (updating its neighbour
    list); returns ``(state, force_output)``.  Deterministic, so refreshing never changes a trajectory."""
    out, nbrs = force_fn(state.positions, state.cell, state.neighbors)
    return state._replace(forces=out.forces, energy=out.energy, stress=out.stress, neighbors=nbrs), out


def _after_force(state: MDState, positions, momenta, out, neighbors, **changes) -> MDState:
    return state._replace(
        positions=positions,
        momenta=momenta,
        forces=out.forces,
        energy=out.energy,
        stress=out.stress,
        neighbors=neighbors,
        step=state.step + 1,
        **changes,
    )


def nve(force_fn, masses, dt, chain_length: int = 1, atom_mask=None):
    """Velocity Verlet (microcanonical)."""
    m = masses[:, None]

    def apply_fn(state: MDState):
        p = state.momenta + 0.5 * dt * state.forces
        x = state.positions + dt * p / m
        out, nbrs = force_fn(x, state.cell, state.neighbors)
        p = p + 0.5 * dt * out.forces
        return _after_force(state, x, p, out, nbrs), out

    return _init_factory(force_fn, chain_length), apply_fn


def nvt_langevin(force_fn, masses, dt, kT, friction, chain_length: int = 1, atom_mask=None):
    """BAOAB Langevin dynamics: ``friction`` (1/ASE time) couples every atom to a bath at ``kT``."""
    m = masses[:, None]
    c1 = jnp.exp(-friction * dt)
    s2 = 1.0 - c1 * c1
    # sqrt only where positive: the dt = 0 refresh step has c2 = 0 exactly and a finite (zero)
    # derivative with respect to friction and dt (sqrt's infinite slope at 0 gave NaN gradients)
    c2 = jnp.where(s2 > 0, jnp.sqrt(jnp.where(s2 > 0, s2, 1.0)), 0.0)

    def apply_fn(state: MDState):
        key, sub = jax.random.split(state.key)
        p = state.momenta + 0.5 * dt * state.forces
        x = state.positions + 0.5 * dt * p / m
        noise = gaussian_noise(sub, p.shape, p.dtype, atom_mask)
        p = c1 * p + c2 * jnp.sqrt(m * kT) * noise
        x = x + 0.5 * dt * p / m
        out, nbrs = force_fn(x, state.cell, state.neighbors)
        p = p + 0.5 * dt * out.forces
        return _after_force(state, x, p, out, nbrs, key=key), out

    return _init_factory(force_fn, chain_length), apply_fn


class _Count:
    """A traced degree-of-freedom count carried in jax-md's chain, whose ``degrees_of_freedom`` is static
    pytree metadata: compared by identity (the same object flows through the chain's scans) and used only in
    ``DOF * kT`` there."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __mul__(self, other):
        return self.value * other

    __rmul__ = __mul__

    def __copy__(self):  # dataclasses.astuple deep-copies fields: keep the identity
        return self

    def __deepcopy__(self, memo):
        return self


def _chain(position, momentum, kT, tau, ke, dof):
    q = kT * tau * tau * jnp.ones_like(position)
    q = q.at[0].multiply(dof)
    return _simulate().NoseHooverChain(position, momentum, q, tau, ke, dof if isinstance(dof, int) else _Count(dof))


def nvt_nose_hoover(force_fn, masses, dt, kT, tau, chain_length: int = 3, chain_steps: int = 2, sy_steps: int = 3,
                    atom_mask=None):
    """Nosé–Hoover chain thermostat of period ``tau`` (ASE time) around velocity Verlet."""
    if chain_length < 2:
        raise ValueError("the Nosé–Hoover chain needs chain_length >= 2")
    m = masses[:, None]
    dof = 3 * _n_atoms(masses, atom_mask)
    fns = _simulate().nose_hoover_chain(dt, chain_length, chain_steps, sy_steps, tau)

    def apply_fn(state: MDState):
        dtype = state.positions.dtype
        c = _chain(state.thermostat_position, state.thermostat_momentum, kT, tau,
                   kinetic_energy(state.momenta, masses), dof)
        p, c = fns.half_step(state.momenta, c, kT)
        p = p + 0.5 * dt * state.forces
        x = state.positions + dt * p / m
        out, nbrs = force_fn(x, state.cell, state.neighbors)
        p = p + 0.5 * dt * out.forces
        c = c.set(kinetic_energy=kinetic_energy(p, masses))
        p, c = fns.half_step(p, c, kT)
        return _after_force(
            state, x, p.astype(dtype), out, nbrs,
            thermostat_position=c.position.astype(dtype),
            thermostat_momentum=c.momentum.astype(dtype),
        ), out

    return _init_factory(force_fn, chain_length), apply_fn


def _sinhx_x(x):
    """sinh(x)/x by its Taylor series (accurate for the small arguments used here)."""
    x2 = x * x
    return 1 + x2 / 6 + x2 * x2 / 120 + x2**3 / 5040 + x2**4 / 362_880


def npt_nose_hoover(
    force_fn, masses, dt, kT, pressure, tau_t, tau_p,
    chain_length: int = 3, chain_steps: int = 2, sy_steps: int = 3, atom_mask=None,
):
    """Isotropic NPT: MTK barostat (period ``tau_p``) + Nosé–Hoover chains (``tau_t``).

    The box degree of freedom is ``box_position = ln(V/V0)/3``; the cell is
    ``exp(box_position) * reference_cell``, positions and cell move together.
    Needs a fully periodic cell.  ``pressure`` in eV/Å³.
    """
    if chain_length < 2:
        raise ValueError("the Nosé–Hoover chain needs chain_length >= 2")
    m = masses[:, None]
    n = _n_atoms(masses, atom_mask)
    dof = 3 * n
    alpha = 1.0 + 1.0 / n
    thermostat = _simulate().nose_hoover_chain(dt, chain_length, chain_steps, sy_steps, tau_t)
    barostat = _simulate().nose_hoover_chain(dt, chain_length, chain_steps, sy_steps, tau_p)
    box_mass = 3.0 * (n + 1) * kT * tau_p * tau_p

    def box_force(p, cell, stress):
        volume = jnp.abs(jnp.linalg.det(cell))
        ke2 = jnp.sum(p * p / m)
        return alpha * ke2 - volume * jnp.trace(stress) - 3.0 * pressure * volume

    def exp_il2(p, f, v_box):
        x = alpha * v_box * dt * 0.5
        return p * jnp.exp(-x) + 0.5 * dt * f * _sinhx_x(0.5 * x) * jnp.exp(-0.5 * x)

    def exp_il1(r, v, v_box):
        x = v_box * dt
        return r * jnp.exp(x) + dt * v * jnp.exp(0.5 * x) * _sinhx_x(0.5 * x)

    def apply_fn(state: MDState):
        dtype = state.positions.dtype
        p, pb = state.momenta, state.box_momentum
        tc = _chain(state.thermostat_position, state.thermostat_momentum, kT, tau_t,
                    kinetic_energy(p, masses), dof)
        bc = _chain(state.barostat_position, state.barostat_momentum, kT, tau_p,
                    0.5 * pb * pb / box_mass, 1)
        pb, bc = barostat.half_step(pb, bc, kT)
        p, tc = thermostat.half_step(p, tc, kT)

        pb = pb + 0.5 * dt * box_force(p, state.cell, state.stress)
        p = exp_il2(p, state.forces, pb / box_mass)
        eps = state.box_position + pb / box_mass * dt
        cell = jnp.exp(eps) * state.reference_cell
        x = exp_il1(state.positions, p / m, pb / box_mass)
        out, nbrs = force_fn(x, cell, state.neighbors)
        p = exp_il2(p, out.forces, pb / box_mass)
        pb = pb + 0.5 * dt * box_force(p, cell, out.stress)

        tc = tc.set(kinetic_energy=kinetic_energy(p, masses))
        bc = bc.set(kinetic_energy=0.5 * pb * pb / box_mass)
        p, tc = thermostat.half_step(p, tc, kT)
        pb, bc = barostat.half_step(pb, bc, kT)
        return _after_force(
            state, x, p.astype(dtype), out, nbrs,
            cell=cell,
            box_position=eps.astype(dtype),
            box_momentum=pb.astype(dtype),
            thermostat_position=tc.position.astype(dtype),
            thermostat_momentum=tc.momentum.astype(dtype),
            barostat_position=bc.position.astype(dtype),
            barostat_momentum=bc.momentum.astype(dtype),
        ), out

    return _init_factory(force_fn, chain_length), apply_fn
