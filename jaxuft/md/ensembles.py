"""User-facing ensemble settings (units fs, K, bar), validated before anything compiles.

>>> NVE(timestep=1.0)
>>> Langevin(timestep=1.0, temperature=300, friction=0.01)      # friction in 1/fs
>>> NoseHoover(timestep=1.0, temperature=300, tau=100)          # tau in fs
>>> NPT(timestep=0.5, temperature=300, pressure=1.0, tau_t=50, tau_p=500)   # pressure in bar

The static parts (kind, chain lengths) select the compiled program; the numbers
(timestep, temperature, pressure, friction, periods) are passed as arrays, so
changing them between segments compiles nothing new.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from . import integrators
from .errors import MDInputError
from .units import BAR, FS, KB

#: accepted ranges (checked before compiling)
MAX_TIMESTEP_FS = 10.0
MAX_TEMPERATURE_K = 100_000.0
MAX_PRESSURE_BAR = 1.0e7  # 1 TPa

KINDS = ("nve", "nvt-langevin", "nvt-nh", "npt")


@dataclass(frozen=True)
class Ensemble:
    """Settings of one ensemble.  Use the constructors :func:`NVE`, :func:`Langevin`,
    :func:`NoseHoover`, :func:`NPT` (or :func:`make` by name)."""

    kind: str
    timestep: float  # fs
    temperature: float | None = None  # K
    pressure: float | None = None  # bar
    friction: float | None = None  # 1/fs
    tau_t: float | None = None  # fs
    tau_p: float | None = None  # fs
    chain_length: int = 3
    chain_steps: int = 2
    sy_steps: int = 3

    # ---- validation ----------------------------------------------------------
    def validate(self) -> "Ensemble":
        if self.kind not in KINDS:
            raise MDInputError(f"unknown ensemble {self.kind!r}; choose one of {', '.join(KINDS)}")
        dt = self.timestep
        if not (isinstance(dt, (int, float)) and math.isfinite(dt) and 0 < dt <= MAX_TIMESTEP_FS):
            raise MDInputError(
                f"timestep must be in (0, {MAX_TIMESTEP_FS}] fs, got {dt!r}; "
                "typical values are 0.5-2 fs (0.5 fs with hydrogen)"
            )
        if self.kind != "nve":
            t = self.temperature
            if t is None or not math.isfinite(t) or not (0 < t <= MAX_TEMPERATURE_K):
                raise MDInputError(
                    f"{self.kind} needs a temperature in (0, {MAX_TEMPERATURE_K:g}] K, got {t!r}"
                )
        if self.kind == "nvt-langevin":
            g = self.friction
            if g is None or not math.isfinite(g) or g <= 0 or g * dt > 1.0:
                raise MDInputError(
                    f"Langevin friction must be positive with friction*timestep <= 1, got {g!r} /fs "
                    f"at {dt} fs; typical 0.001-0.02 /fs"
                )
        if self.kind in ("nvt-nh", "npt"):
            for name in ("tau_t",) + (("tau_p",) if self.kind == "npt" else ()):
                tau = getattr(self, name)
                if tau is None or not math.isfinite(tau) or tau < 2 * dt:
                    raise MDInputError(f"{name} must be at least two timesteps ({2 * dt} fs), got {tau!r} fs")
            if self.chain_length < 2:
                raise MDInputError("Nosé–Hoover chains need chain_length >= 2")
            if self.sy_steps not in (1, 3, 5, 7) or self.chain_steps < 1:
                raise MDInputError("sy_steps must be 1, 3, 5 or 7 and chain_steps >= 1")
        if self.kind == "npt":
            p = self.pressure
            if p is None or not math.isfinite(p) or abs(p) > MAX_PRESSURE_BAR:
                raise MDInputError(f"npt needs a pressure with |P| <= {MAX_PRESSURE_BAR:g} bar, got {p!r}")
        return self

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

    def conditions(self, dtype) -> dict:
        """Runtime scalars in ASE units (arrays, so changing them does not recompile)."""
        t = 0.0 if self.temperature is None else self.temperature
        arr = lambda v: np.asarray(v, dtype=dtype)  # numpy: creating it compiles nothing
        return {
            "dt": arr(self.timestep * FS),
            "kT": arr(t * KB),
            "pressure": arr((self.pressure or 0.0) * BAR),
            "friction": arr((self.friction or 0.0) / FS),
            "tau_t": arr((self.tau_t or 100.0 * self.timestep) * FS),
            "tau_p": arr((self.tau_p or 1000.0 * self.timestep) * FS),
        }

    def integrator(self, force_fn, masses, cond: dict):
        """``(init_fn, apply_fn)`` of this ensemble for one replica."""
        return integrator_for(self.static_key, force_fn, masses, cond)

    def with_(self, **changes) -> "Ensemble":
        """A copy with some settings changed (validated)."""
        return replace(self, **changes).validate()

    def describe(self) -> dict:
        return {
            k: v for k, v in dict(
                ensemble=self.kind, timestep_fs=self.timestep, temperature_K=self.temperature,
                pressure_bar=self.pressure, friction_per_fs=self.friction, tau_t_fs=self.tau_t,
                tau_p_fs=self.tau_p, chain_length=self.chain_length,
            ).items() if v is not None
        }


def integrator_for(static_key: tuple, force_fn, masses, cond: dict):
    """``(init_fn, apply_fn)`` for an ensemble's ``static_key`` and runtime ``cond`` (ASE units)."""
    kind, chain_length, chain_steps, sy_steps = static_key
    kw = dict(chain_length=chain_length)
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


def NVE(timestep: float = 1.0) -> Ensemble:
    """Microcanonical velocity Verlet; ``timestep`` in fs."""
    return Ensemble("nve", float(timestep)).validate()


def Langevin(timestep: float = 1.0, temperature: float = 300.0, friction: float = 0.01) -> Ensemble:
    """BAOAB Langevin; ``temperature`` K, ``friction`` 1/fs (0.01 /fs = 100 fs damping time)."""
    return Ensemble("nvt-langevin", float(timestep), float(temperature), friction=float(friction)).validate()


def NoseHoover(timestep: float = 1.0, temperature: float = 300.0, tau: float | None = None,
               chain_length: int = 3) -> Ensemble:
    """Nosé–Hoover chain; ``tau`` thermostat period in fs (default 100 timesteps)."""
    tau = 100.0 * timestep if tau is None else tau
    return Ensemble("nvt-nh", float(timestep), float(temperature), tau_t=float(tau),
                    chain_length=int(chain_length)).validate()


def NPT(timestep: float = 1.0, temperature: float = 300.0, pressure: float = 1.0,
        tau_t: float | None = None, tau_p: float | None = None, chain_length: int = 3) -> Ensemble:
    """Isotropic MTK NPT; ``pressure`` bar, periods ``tau_t``/``tau_p`` in fs (defaults 100/1000 timesteps)."""
    tau_t = 100.0 * timestep if tau_t is None else tau_t
    tau_p = 1000.0 * timestep if tau_p is None else tau_p
    return Ensemble("npt", float(timestep), float(temperature), float(pressure),
                    tau_t=float(tau_t), tau_p=float(tau_p), chain_length=int(chain_length)).validate()


def make(kind: str, timestep: float, temperature: float | None = None, pressure: float | None = None,
         friction: float | None = None, tau_t: float | None = None, tau_p: float | None = None) -> Ensemble:
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
