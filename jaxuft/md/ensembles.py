"""User-facing ensemble settings (units fs, K, bar), validated before anything compiles.

>>> NVE(timestep=1.0)
>>> Langevin(timestep=1.0, temperature=300, friction=0.01)      # friction in 1/fs
>>> NoseHoover(timestep=1.0, temperature=300, tau=100)          # tau in fs
>>> NPT(timestep=0.5, temperature=300, pressure=1.0, tau_t=50, tau_p=500)   # pressure in bar

The static parts (kind, chain lengths) select the compiled program; the numbers
(timestep, temperature, pressure, friction, periods) are passed as arrays, so
changing them between segments compiles nothing new.

Per-replica conditions: any of the numbers may be a sequence with one value per replica
(scalars are shared by all), e.g. a temperature ladder for replica exchange::

>>> Langevin(timestep=1.0, temperature=[300, 350, 410, 480], friction=0.01)
>>> NPT(timestep=[0.5, 1.0], temperature=300, pressure=[1.0, 1000.0])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Union

import numpy as np

from . import integrators
from .errors import MDInputError
from .units import BAR, FS, KB

#: accepted ranges (checked before compiling)
MAX_TIMESTEP_FS = 10.0
MAX_TEMPERATURE_K = 100_000.0
MAX_PRESSURE_BAR = 1.0e7  # 1 TPa

KINDS = ("nve", "nvt-langevin", "nvt-nh", "npt")

#: the settings that may differ per replica
PER_REPLICA = ("timestep", "temperature", "pressure", "friction", "tau_t", "tau_p")

Value = Union[float, tuple]


def _values(v) -> tuple:
    """A setting as a tuple of values (one for a scalar, one per replica for a sequence)."""
    return tuple(v) if isinstance(v, tuple) else (v,)


def _normalise(v):
    """Scalars stay floats; sequences (lists, arrays) become tuples of floats; a 1-element sequence stays a tuple."""
    if v is None or isinstance(v, (int, float, np.floating, np.integer)):
        return None if v is None else float(v)
    if isinstance(v, str):
        raise MDInputError(f"expected a number or one number per replica, got {v!r}")
    try:
        vals = tuple(float(x) for x in np.ravel(np.asarray(v, dtype=np.float64)))
    except (TypeError, ValueError):
        raise MDInputError(f"expected a number or one number per replica, got {v!r}") from None
    if not vals:
        raise MDInputError("a per-replica setting needs at least one value")
    return vals


@dataclass(frozen=True)
class Ensemble:
    """Settings of one ensemble.  Use the constructors :func:`NVE`, :func:`Langevin`,
    :func:`NoseHoover`, :func:`NPT` (or :func:`make` by name)."""

    kind: str
    timestep: Value  # fs
    temperature: Value | None = None  # K
    pressure: Value | None = None  # bar
    friction: Value | None = None  # 1/fs
    tau_t: Value | None = None  # fs
    tau_p: Value | None = None  # fs
    chain_length: int = 3
    chain_steps: int = 2
    sy_steps: int = 3

    # ---- validation ----------------------------------------------------------
    def validate(self) -> "Ensemble":
        if self.kind not in KINDS:
            raise MDInputError(f"unknown ensemble {self.kind!r}; choose one of {', '.join(KINDS)}")
        for name in PER_REPLICA:
            object.__setattr__(self, name, _normalise(getattr(self, name)))
        counts = {name: len(getattr(self, name)) for name in PER_REPLICA if isinstance(getattr(self, name), tuple)}
        if len(set(counts.values())) > 1:
            raise MDInputError("per-replica settings must have one value per replica each, got "
                               + ", ".join(f"{k}: {v} values" for k, v in counts.items()))
        dts = _values(self.timestep)
        for dt in dts:
            if not (dt is not None and math.isfinite(dt) and 0 < dt <= MAX_TIMESTEP_FS):
                raise MDInputError(
                    f"timestep must be in (0, {MAX_TIMESTEP_FS}] fs, got {dt!r}; "
                    "typical values are 0.5-2 fs (0.5 fs with hydrogen)"
                )
        if self.kind != "nve":
            for t in _values(self.temperature):
                if t is None or not math.isfinite(t) or not (0 < t <= MAX_TEMPERATURE_K):
                    raise MDInputError(
                        f"{self.kind} needs a temperature in (0, {MAX_TEMPERATURE_K:g}] K, got {t!r}"
                    )
        per = lambda name: np.broadcast_to(np.asarray(_values(getattr(self, name)), dtype=np.float64), (self.replicas or 1,))
        if self.kind == "nvt-langevin":
            if self.friction is None:
                raise MDInputError("Langevin needs a friction (1/fs); typical 0.001-0.02 /fs")
            for g, dt in zip(per("friction"), per("timestep")):
                if not math.isfinite(g) or g <= 0 or g * dt > 1.0:
                    raise MDInputError(
                        f"Langevin friction must be positive with friction*timestep <= 1, got {g!r} /fs "
                        f"at {dt} fs; typical 0.001-0.02 /fs"
                    )
        if self.kind in ("nvt-nh", "npt"):
            for name in ("tau_t",) + (("tau_p",) if self.kind == "npt" else ()):
                if getattr(self, name) is None:
                    raise MDInputError(f"{self.kind} needs {name} (fs), at least two timesteps")
                for tau, dt in zip(per(name), per("timestep")):
                    if not math.isfinite(tau) or tau < 2 * dt:
                        raise MDInputError(f"{name} must be at least two timesteps ({2 * dt} fs), got {tau!r} fs")
            if self.chain_length < 2:
                raise MDInputError("Nosé–Hoover chains need chain_length >= 2")
            if self.sy_steps not in (1, 3, 5, 7) or self.chain_steps < 1:
                raise MDInputError("sy_steps must be 1, 3, 5 or 7 and chain_steps >= 1")
        if self.kind == "npt":
            for p in _values(self.pressure):
                if p is None or not math.isfinite(p) or abs(p) > MAX_PRESSURE_BAR:
                    raise MDInputError(f"npt needs a pressure with |P| <= {MAX_PRESSURE_BAR:g} bar, got {p!r}")
        return self

    @property
    def replicas(self) -> int | None:
        """The number of replicas the per-replica settings are for (None: all settings are shared scalars)."""
        for name in PER_REPLICA:
            v = getattr(self, name)
            if isinstance(v, tuple):
                return len(v)
        return None

    @property
    def per_replica(self) -> bool:
        return self.replicas is not None

    def values(self, name: str, replicas: int) -> np.ndarray:
        """Setting ``name`` for each of ``replicas`` replicas (float64, user units; NaN where unset)."""
        v = getattr(self, name)
        if v is None:
            return np.full(replicas, np.nan)
        self.check_replicas(replicas)
        return np.broadcast_to(np.asarray(_values(v), np.float64), (replicas,)).copy()

    def check_replicas(self, replicas: int) -> None:
        n = self.replicas
        if n is not None and n != replicas:
            raise MDInputError(f"the ensemble has per-replica settings for {n} replicas but the run has {replicas}; "
                               f"give one value per replica (or a single value for all)")

    @property
    def max_temperature(self) -> float | None:
        """The highest temperature of any replica (K), or None (NVE)."""
        return None if self.temperature is None else max(_values(self.temperature))

    # ---- compiled-program interface -------------------------------------------
    @property
    def static_key(self) -> tuple:
        """What selects the compiled program (everything else is a runtime array)."""
        return (self.kind, self.chain_length, self.chain_steps, self.sy_steps)

    @property
    def needs_full_pbc(self) -> bool:
        return self.kind == "npt"

    @property
    def has_temperature(self) -> bool:
        return self.kind != "nve"

    def conditions(self, dtype, replicas: int | None = None) -> dict:
        """Runtime numbers in ASE units (arrays, so changing them does not recompile): scalars, or
        ``(replicas,)`` arrays when ``replicas`` is given (per-replica settings need it)."""
        if replicas is None and self.per_replica:
            replicas = self.replicas
        dt = np.asarray(_values(self.timestep), np.float64)
        get = lambda v, default: np.asarray(_values(v), np.float64) if v is not None else default
        vals = {
            "dt": dt * FS,
            "kT": get(self.temperature, np.zeros(1)) * KB,
            "pressure": get(self.pressure, np.zeros(1)) * BAR,
            "friction": get(self.friction, np.zeros(1)) / FS,
            "tau_t": get(self.tau_t, 100.0 * dt) * FS,
            "tau_p": get(self.tau_p, 1000.0 * dt) * FS,
        }
        if replicas is None:  # numpy: creating it compiles nothing
            return {k: np.asarray(v[0], dtype=dtype) for k, v in vals.items()}
        self.check_replicas(replicas)
        return {k: np.broadcast_to(v, (replicas,)).astype(dtype) for k, v in vals.items()}

    def integrator(self, force_fn, masses, cond: dict):
        """``(init_fn, apply_fn)`` of this ensemble for one replica."""
        return integrator_for(self.static_key, force_fn, masses, cond)

    def with_(self, **changes) -> "Ensemble":
        """A copy with some settings changed (validated)."""
        return replace(self, **changes).validate()

    def describe(self) -> dict:
        """JSON-able settings (per-replica settings as lists)."""
        lst = lambda v: list(v) if isinstance(v, tuple) else v
        return {k: lst(v) for k, v in dict(
            ensemble=self.kind, timestep_fs=self.timestep, temperature_K=self.temperature,
            pressure_bar=self.pressure, friction_per_fs=self.friction, tau_t_fs=self.tau_t,
            tau_p_fs=self.tau_p, chain_length=self.chain_length,
        ).items() if v is not None}


def integrator_for(static_key: tuple, force_fn, masses, cond: dict, atom_mask=None):
    """``(init_fn, apply_fn)`` for an ensemble's ``static_key`` and runtime ``cond`` (ASE units);
    ``atom_mask (N,)``: False marks padding atoms of a mixed batch (see :mod:`jaxuft.md.integrators`)."""
    kind, chain_length, chain_steps, sy_steps = static_key
    kw = dict(chain_length=chain_length)
    if atom_mask is not None:
        kw["atom_mask"] = atom_mask
    nh = dict(chain_steps=chain_steps, sy_steps=sy_steps)
    if kind == "nve":
        return integrators.nve(force_fn, masses, cond["dt"], **kw)
    if kind == "nvt-langevin":
        return integrators.nvt_langevin(force_fn, masses, cond["dt"], cond["kT"], cond["friction"], **kw)
    if kind == "nvt-nh":
        return integrators.nvt_nose_hoover(force_fn, masses, cond["dt"], cond["kT"], cond["tau_t"], **kw, **nh)
    if kind == "npt":
        return integrators.npt_nose_hoover(
            force_fn, masses, cond["dt"], cond["kT"], cond["pressure"], cond["tau_t"], cond["tau_p"], **kw, **nh
        )
    raise MDInputError(f"unknown ensemble {kind!r}")


def _times(v, factor):
    """``factor`` timesteps (per replica when the timestep is)."""
    v = _normalise(v)
    return tuple(factor * x for x in v) if isinstance(v, tuple) else factor * v


def NVE(timestep: Value = 1.0) -> Ensemble:
    """Microcanonical velocity Verlet; ``timestep`` in fs."""
    return Ensemble("nve", timestep).validate()


def Langevin(timestep: Value = 1.0, temperature: Value = 300.0, friction: Value = 0.01) -> Ensemble:
    """BAOAB Langevin; ``temperature`` K, ``friction`` 1/fs (0.01 /fs = 100 fs damping time).
    Each may be one value per replica."""
    return Ensemble("nvt-langevin", timestep, temperature, friction=friction).validate()


def NoseHoover(timestep: Value = 1.0, temperature: Value = 300.0, tau: Value | None = None,
               chain_length: int = 3) -> Ensemble:
    """Nosé–Hoover chain; ``tau`` thermostat period in fs (default 100 timesteps).  Each may be one value per replica."""
    tau = _times(timestep, 100.0) if tau is None else tau
    return Ensemble("nvt-nh", timestep, temperature, tau_t=tau, chain_length=int(chain_length)).validate()


def NPT(timestep: Value = 1.0, temperature: Value = 300.0, pressure: Value = 1.0,
        tau_t: Value | None = None, tau_p: Value | None = None, chain_length: int = 3) -> Ensemble:
    """Isotropic MTK NPT; ``pressure`` bar, periods ``tau_t``/``tau_p`` in fs (defaults 100/1000 timesteps).
    Each may be one value per replica."""
    tau_t = _times(timestep, 100.0) if tau_t is None else tau_t
    tau_p = _times(timestep, 1000.0) if tau_p is None else tau_p
    return Ensemble("npt", timestep, temperature, pressure, tau_t=tau_t, tau_p=tau_p,
                    chain_length=int(chain_length)).validate()


def make(kind: str, timestep: Value, temperature: Value | None = None, pressure: Value | None = None,
         friction: Value | None = None, tau_t: Value | None = None, tau_p: Value | None = None) -> Ensemble:
    """An ensemble by name (``nve``, ``nvt-langevin``, ``nvt-nh``, ``npt``) with defaults filled in."""
    if kind == "nve":
        return NVE(timestep)
    if kind == "nvt-langevin":
        return Langevin(timestep, _need(temperature, kind), 0.01 if friction is None else friction)
    if kind == "nvt-nh":
        return NoseHoover(timestep, _need(temperature, kind), tau_t)
    if kind == "npt":
        return NPT(timestep, _need(temperature, kind), 1.0 if pressure is None else pressure, tau_t, tau_p)
    raise MDInputError(f"unknown ensemble {kind!r}; choose one of {', '.join(KINDS)}")


def _need(t, kind):
    if t is None:
        raise MDInputError(f"{kind} needs a temperature (K)")
    return t
