"""Validated model configs: one pydantic schema per model family, with physical bounds.

A converted model's ``config.json`` is checked on load and on convert, so a
tampered, truncated or nonsensical config (``r_max`` of -1, NaN or 10⁶, ``r_on``
beyond ``r_max``, reversed element lists, ``lmax`` 10³⁰, unparsable irreps, an
unknown family) is refused with one line per bad field instead of hanging or
predicting garbage::

    validate_model_config(config, source="model/config.json")   # -> the config dict, or CheckpointError

Limits are generous for every published uMLIP (MACE-MP/MPA, SevenNet) and stop
the hangs a hostile config could cause (each bound is a module constant).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BeforeValidator, Field, StrictBool, StrictInt, ValidationError, model_validator

from ..config import StrictModel, format_validation_error
from ..errors import CheckpointError

__all__ = ["validate_model_config", "MODEL_SCHEMAS", "MaceConfig", "NequipConfig", "PairConfig",
           "MAX_CUTOFF", "MAX_L", "MAX_MUL", "MAX_WIDTH", "MAX_LAYERS"]

MAX_CUTOFF = 15.0  # Å; published uMLIPs use 4.5-12
MAX_L = 8  # highest spherical-harmonic / irrep order
MAX_MUL = 4096  # multiplicity of one irrep
MAX_WIDTH = 4096  # hidden width of an MLP
MAX_FEATURES = 1 << 17  # total dimension of one irreps
MAX_LAYERS = 16
MAX_BASIS = 64


def _no_bool(v):
    if isinstance(v, bool):
        raise ValueError("must be a number, not true/false")
    return v


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


Real = Annotated[float, BeforeValidator(_no_bool), AfterValidator(_finite)]
Positive = Annotated[Real, Field(gt=0)]
Cutoff = Annotated[Real, Field(gt=0, le=MAX_CUTOFF)]
Width = Annotated[StrictInt, Field(ge=1, le=MAX_WIDTH)]

_IRREP = re.compile(r"^\s*(?:(\d+)\s*x\s*)?(\d+)\s*([eo])\s*$")


def _irreps(v: Any) -> str:
    """An irreps string (``"128x0e+64x1o"``) or list of ``[mul, l, p]``: parsed and bounded."""
    if isinstance(v, str):
        parts = [p for p in v.split("+")] if v.strip() else []
        parsed = []
        for part in parts:
            m = _IRREP.match(part)
            if not m:
                raise ValueError(f"cannot parse irreps {v!r:.80} (part {part!r:.40}); expected e.g. '128x0e+64x1o'")
            parsed.append((int(m.group(1) or 1), int(m.group(2))))
    elif isinstance(v, (list, tuple)) and all(isinstance(x, (list, tuple)) and len(x) == 3 for x in v):
        parsed = []
        for mul, l, p in v:
            if not all(isinstance(n, int) and not isinstance(n, bool) for n in (mul, l, p)) or p not in (1, -1):
                raise ValueError(f"irreps entry {[mul, l, p]!r:.60} must be [mul, l, parity ±1] integers")
            parsed.append((mul, l))
    else:
        raise ValueError("must be an irreps string such as '128x0e+64x1o'")
    dim = 0
    for mul, l in parsed:
        if not 0 <= l <= MAX_L:
            raise ValueError(f"irrep order l={l} is outside 0..{MAX_L}")
        if not 1 <= mul <= MAX_MUL:
            raise ValueError(f"multiplicity {mul} is outside 1..{MAX_MUL}")
        dim += mul * (2 * l + 1)
    if dim > MAX_FEATURES:
        raise ValueError(f"irreps of dimension {dim} exceed {MAX_FEATURES}")
    return v


Irreps = Annotated[Any, AfterValidator(_irreps)]


def _atomic_numbers(v: list[int]) -> list[int]:
    if not v:
        raise ValueError("must list at least one element")
    bad = [z for z in v if not 1 <= z <= 118]
    if bad:
        raise ValueError(f"atomic numbers must be within 1..118, found {bad[:5]}")
    if any(b <= a for a, b in zip(v, v[1:])):
        raise ValueError("must be sorted ascending without repeats (a reordered list would mislabel every element)")
    return v


AtomicNumbers = Annotated[list[StrictInt], AfterValidator(_atomic_numbers)]


class _Base(StrictModel):
    atomic_numbers: AtomicNumbers
    r_max: Cutoff
    descriptors: str | None = None  # informational
    source: dict[str, Any] | None = None  # informational (converter, versions)


# ---------------------------------------------------------------------------------------- MACE
class LinearReadout(StrictModel):
    type: Literal["linear"]


class NonLinearReadout(StrictModel):
    type: Literal["nonlinear"]
    mlp_dim: Width
    act: Literal["silu", "tanh", "sigmoid"]
    act_cst: Real


class MaceLayer(StrictModel):
    interaction: Literal["RealAgnosticInteractionBlock", "RealAgnosticResidualInteractionBlock",
                         "RealAgnosticDensityInteractionBlock", "RealAgnosticDensityResidualInteractionBlock"]
    node_feats_irreps: Irreps
    edge_irreps: Irreps | None = None
    target_irreps: Irreps
    hidden_irreps_out: Irreps
    correlation: Annotated[StrictInt, Field(ge=1, le=6)]
    avg_num_neighbors: Annotated[Real, Field(gt=0, le=1e4)]
    radial_mlp: Annotated[list[Width], Field(max_length=8)]
    radial_act_cst: Real
    readout: Annotated[Union[LinearReadout, NonLinearReadout], Field(discriminator="type")]


class Agnesi(StrictModel):
    type: Literal["Agnesi"] = "Agnesi"
    q: Real
    p: Real
    a: Real


class ZBL(StrictModel):
    p: Annotated[StrictInt, Field(ge=1, le=32)]
    a_exp: Real
    a_prefactor: Real
    c: Annotated[list[Real], Field(min_length=1, max_length=8)]


class MaceConfig(_Base):
    family: Literal["mace"]
    num_bessel: Annotated[StrictInt, Field(ge=1, le=MAX_BASIS)]
    num_polynomial_cutoff: Annotated[StrictInt, Field(ge=1, le=32)]
    max_ell: Annotated[StrictInt, Field(ge=0, le=MAX_L)]
    heads: Annotated[list[str], Field(min_length=1, max_length=64)] = ["Default"]
    head: str | None = None
    distance_transform: Agnesi | None = None
    pair_repulsion: ZBL | None = None
    radial_activation: Literal["silu", "tanh", "sigmoid"] = "silu"
    layers: Annotated[list[MaceLayer], Field(min_length=1, max_length=MAX_LAYERS)]

    @model_validator(mode="after")
    def _heads(self):
        if len(set(self.heads)) != len(self.heads):
            raise ValueError(f"heads must be unique, got {self.heads}")
        if self.head is not None and self.head not in self.heads:
            raise ValueError(f"head {self.head!r} is not one of the heads {self.heads}")
        return self


# ------------------------------------------------------------------------------- NequIP / SevenNet
_NEQUIP_ACTS = Literal["silu", "tanh", "relu", "abs", "sigmoid", "elu", "ssp"]


class CutoffFunction(StrictModel):
    name: Literal["XPLOR", "poly_cut"]
    r_on: Annotated[Real, Field(ge=0)] = 0.0
    p: Annotated[StrictInt, Field(ge=1, le=32)] = 6


class NequipConfig(_Base):
    family: Literal["nequip"]
    node_irreps: Annotated[list[Irreps], Field(min_length=2, max_length=MAX_LAYERS + 1)]
    num_basis: Annotated[StrictInt, Field(ge=1, le=MAX_BASIS)] = 8
    cutoff_function: CutoffFunction = CutoffFunction(name="XPLOR", r_on=4.5)
    lmax_sh: Annotated[StrictInt, Field(ge=0, le=MAX_L)]
    sh_parity: Literal[1, -1] = 1
    normalize_sh: StrictBool = True
    radial_hidden: Annotated[list[Width], Field(max_length=8)] = [64, 64]
    radial_activation: _NEQUIP_ACTS = "silu"
    scalar_activation: dict[Literal["e", "o"], _NEQUIP_ACTS] = {"e": "silu", "o": "tanh"}
    gate_activation: dict[Literal["e", "o"], _NEQUIP_ACTS] = {"e": "silu", "o": "tanh"}
    denominators: list[Annotated[Real, Field(gt=0)]] = []
    readout_hidden: Annotated[StrictInt, Field(ge=0, le=MAX_WIDTH)] = 0

    @model_validator(mode="after")
    def _consistent(self):
        cut = self.cutoff_function
        if cut.name == "XPLOR" and not cut.r_on < self.r_max:
            raise ValueError(f"cutoff_function.r_on ({cut.r_on} Å) must be below r_max ({self.r_max} Å)")
        n_conv = len(self.node_irreps) - 1
        if self.denominators and len(self.denominators) != n_conv:
            raise ValueError(f"denominators has {len(self.denominators)} entries for {n_conv} interaction layers")
        return self


# ------------------------------------------------------------------------------------------ pair
class PairConfig(_Base):
    family: Literal["pair"]


MODEL_SCHEMAS: dict[str, type[_Base]] = {"mace": MaceConfig, "nequip": NequipConfig, "pair": PairConfig}


def validate_model_config(config: Any, source: str = "config") -> dict:
    """Check a model config against its family's schema; returns ``config`` unchanged.

    Raises :class:`CheckpointError` whose message has one line per bad field,
    each starting with ``source`` (e.g. the path of ``config.json``).
    """
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: a model config must be a JSON object, got {type(config).__name__}")
    family = config.get("family")
    schema = MODEL_SCHEMAS.get(family) if isinstance(family, str) else None
    if schema is None:
        raise CheckpointError(f"{source}: family: unknown model family {family!r}; known: {sorted(MODEL_SCHEMAS)}")
    try:
        schema.model_validate(config)
    except ValidationError as exc:
        raise CheckpointError(format_validation_error(exc, source).replace("Value error, ", "")) from None
    return config
