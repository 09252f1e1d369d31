"""``MDConfig``: the settings of one MD run as a pydantic model (unknown fields refused), from which the ``jaxuft md`` flags are derived.

    cfg = MDConfig(ensemble="npt", timestep=0.5, temperature=300, pressure=1, steps=2000)
    sim = cfg.simulation(potential)                 # Simulation with this ensemble and safety
    state = sim.init(atoms, replicas=cfg.replicas, seed=cfg.seed, temperature=cfg.initial_temperature)
    state, traj = sim.run(state, n_steps=cfg.steps, record_every=cfg.record_every)

It is self-contained (workflow configs nest it) and the physical checks of the ensemble
live in one place, :meth:`jaxuft.md.Ensemble.validate`, which the model calls.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import List, Literal, Optional

from pydantic import Field, model_validator

from ..config import StrictModel
from .ensembles import KINDS, MAX_PRESSURE_BAR, MAX_TEMPERATURE_K, MAX_TIMESTEP_FS, Ensemble, make
from .errors import MDInputError

__all__ = ["MDConfig", "add_config_arguments", "given_arguments"]

_F = dict(allow_inf_nan=False)


class MDConfig(StrictModel):
    """Settings of an MD run (units: fs, K, bar, Å)."""

    ensemble: Literal[KINDS] = Field("nvt-langevin", description="ensemble")  # type: ignore[valid-type]
    timestep: float = Field(1.0, gt=0, le=MAX_TIMESTEP_FS, description="fs", **_F)
    temperature: float = Field(300.0, gt=0, le=MAX_TEMPERATURE_K,
                               description="K (thermostat target and initial velocities)", **_F)
    pressure: float = Field(1.0, ge=-MAX_PRESSURE_BAR, le=MAX_PRESSURE_BAR, description="bar (npt)", **_F)
    temperatures: Optional[List[float]] = Field(
        None, min_length=2, description="K, one per replica (a temperature ladder; overrides --temperature)")
    replica_exchange: Optional[int] = Field(
        None, ge=1, description="steps between replica-exchange attempts over --temperatures (default off)")
    friction: float = Field(0.01, gt=0, description="1/fs (nvt-langevin)", **_F)
    tau_t: Optional[float] = Field(None, gt=0, description="thermostat period, fs (nvt-nh, npt; default 100 steps)",
                                   **_F)
    tau_p: Optional[float] = Field(None, gt=0, description="barostat period, fs (npt; default 1000 steps)", **_F)
    steps: int = Field(1000, ge=1, description="steps to run")
    record_every: int = Field(10, ge=1, description="steps between recorded frames")
    replicas: int = Field(1, ge=1, description="independent replicas (several frames: one per frame)")
    seed: int = Field(0, ge=0, description="random seed (initial velocities, Langevin noise)")
    dtype: Literal["float32", "float64"] = Field("float32", description="floating-point precision")
    init_temperature: Optional[float] = Field(
        None, ge=0, le=MAX_TEMPERATURE_K,
        description="K for the initial velocities (default: --temperature; 0 with nve unless the file has momenta)",
        **_F)
    max_temperature: Optional[float] = Field(None, gt=0, description="K; a hotter replica stops (default 10x target)",
                                             **_F)
    min_distance: float = Field(0.5, ge=0, description="Å; closer atoms stop a replica", **_F)
    skin: float = Field(0.5, gt=0, le=5.0, description="neighbour-list skin, Å", **_F)
    chunk_steps: int = Field(1000, ge=1, description="most steps per compiled chunk (outputs are written per chunk)")

    @model_validator(mode="after")
    def _consistent(self) -> "MDConfig":
        if self.steps % self.record_every:
            raise ValueError(f"steps ({self.steps}) must be a multiple of record_every ({self.record_every})")
        if self.temperatures is not None and self.replicas not in (1, len(self.temperatures)):
            raise ValueError(f"{len(self.temperatures)} temperatures given for {self.replicas} replicas; "
                             "give one temperature per replica")
        if self.replica_exchange is not None:
            if self.temperatures is None:
                raise ValueError("replica_exchange needs a temperature ladder: set temperatures (one per replica)")
            if self.replica_exchange % self.record_every or self.steps % self.replica_exchange:
                raise ValueError(f"replica_exchange ({self.replica_exchange}) must be a multiple of record_every "
                                 f"({self.record_every}) and divide steps ({self.steps})")
        try:
            self.ensemble_settings()
        except MDInputError as exc:
            raise ValueError(str(exc)) from None
        return self

    # ---- what the engine needs --------------------------------------------------
    def ensemble_settings(self) -> Ensemble:
        """The validated :class:`~jaxuft.md.Ensemble`."""
        temperature = self.temperature if self.temperatures is None else self.temperatures
        return make(self.ensemble, self.timestep, temperature=temperature, pressure=self.pressure,
                    friction=self.friction, tau_t=self.tau_t, tau_p=self.tau_p)

    @property
    def n_replicas(self) -> int:
        """Replicas of the run: ``replicas``, or one per ladder temperature."""
        return len(self.temperatures) if self.temperatures is not None else self.replicas

    def safety(self):
        from .simulation import Safety

        return Safety(max_temperature=self.max_temperature, min_distance=self.min_distance)

    @property
    def initial_temperature(self):
        """K for the initial velocities (None: the structure's momenta, else zero for NVE)."""
        if self.init_temperature is not None:
            return self.init_temperature
        if self.ensemble == "nve":
            return None
        return self.temperature if self.temperatures is None else self.temperatures

    def chunk_records(self) -> int:
        """Records per compiled chunk for a run of ``steps`` (the largest divisor of the record count
        that fits in ``chunk_steps``); a resumed run keeps it, so it runs the very same chunks."""
        n = self.steps // self.record_every
        cap = max(1, min(n, self.chunk_steps // self.record_every))
        return next(d for d in range(cap, 0, -1) if n % d == 0)

    def simulation(self, potential, **kw):
        """A :class:`~jaxuft.md.Simulation` of ``potential`` with these settings (``kw``: other
        constructor arguments, e.g. ``observables=``)."""
        from .simulation import Simulation

        kw.setdefault("chunk_steps", self.chunk_records() * self.record_every)
        kw.setdefault("replica_exchange", self.replica_exchange)
        return Simulation(potential, self.ensemble_settings(), skin=self.skin, safety=self.safety(), **kw)


# ---- command-line flags derived from the model ---------------------------------------
def _flag_type(annotation):
    """``(python type, choices)`` of a field annotation (Optional and Literal unwrapped)."""
    origin = typing.get_origin(annotation)
    if origin is list:
        return typing.get_args(annotation)[0], None
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _flag_type(args[0])
    if origin is Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]), list(choices)
    return annotation, None


def add_config_arguments(parser: argparse.ArgumentParser, model=MDConfig, exclude=()) -> None:
    """One ``--field-name`` flag per field of ``model`` (type, choices and help from the field).

    Flags not given are absent from the parsed namespace (``argparse.SUPPRESS``), so
    :func:`given_arguments` tells which settings the user chose."""
    for name, field in model.model_fields.items():
        if name in exclude:
            continue
        typ, choices = _flag_type(field.annotation)
        default = "" if field.default is None else f" (default {field.default})"
        many = {"nargs": "+"} if "List[" in str(field.annotation) or "list[" in str(field.annotation) else {}
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, choices=choices,
                            default=argparse.SUPPRESS, help=f"{field.description or name}{default}", **many)


def given_arguments(args: argparse.Namespace, model=MDConfig) -> dict:
    """The fields of ``model`` given on the command line."""
    return {name: getattr(args, name) for name in model.model_fields if hasattr(args, name)}
