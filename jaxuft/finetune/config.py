"""Fine-tuning settings as pydantic models (``LossConfig``, ``OptimConfig``, ``FinetuneConfig``) and named presets.

    FinetuneConfig()                                # safe defaults for a pretrained model and few frames
    FinetuneConfig(epochs=20, optim={"lr": 3e-4})   # nested dicts work
    FinetuneConfig.preset("mace-torch")             # the previous (mace-torch) defaults
    FinetuneConfig(optim={"lr": "fast"})            # ConfigError: optim.lr: Input should be a valid number ...

Every model refuses unknown fields and names the bad field in a one-line
:class:`~jaxuft.config.ConfigError`.  ``jaxuft finetune`` derives its flags from
these fields (see ``cli.py``).  The default values come from the sweep recorded in
``benchmarks/RESULTS.md`` ("Fine-tuning settings sweep"); ``preset("mace-torch")``
keeps mace-torch's values (AMSGrad lr 0.01, no warm-up, no EMA).
"""

from __future__ import annotations

import os
import threading
from typing import Any, Literal, Optional, Union

from pydantic import ConfigDict, Field, ValidationError, field_validator

from ..config import ConfigError, StrictModel, format_validation_error

LOSS_KINDS = ("mse", "huber")
OPTIMIZERS = ("adam", "amsgrad", "adamw")
SCHEDULERS = ("plateau", "constant", "cosine", "exponential")
#: parameter groups that ``OptimConfig.group_lr`` can scale (see ``params.lr_groups``)
LR_GROUPS = ("readouts", "trunk", "e0")


_depth = threading.local()


class _Config(StrictModel):
    """StrictModel whose constructor raises ConfigError (one line per bad field)."""

    def __init__(self, **data):
        # nested configs re-raise pydantic's error so that the outermost one names the full path
        _depth.n = getattr(_depth, "n", 0) + 1
        try:
            super().__init__(**data)
        except ValidationError as exc:
            if _depth.n > 1:
                raise
            raise ConfigError(format_validation_error(exc, type(self).__name__)) from None
        finally:
            _depth.n -= 1

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


class LossConfig(_Config):
    """Weighted energy/forces/stress loss (mace-torch's "stress" loss by default: weights 1/100/1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)

    energy_weight: float = Field(1.0, ge=0, description="weight of the energy-per-atom term")
    forces_weight: float = Field(100.0, ge=0, description="weight of the forces term")
    stress_weight: float = Field(1.0, ge=0, description="weight of the stress term")
    kind: Literal["mse", "huber"] = Field("mse", description="mse or huber")
    huber_delta: float = Field(0.01, ge=0, description="Huber delta")


class OptimConfig(_Config):
    """Optimiser, schedule, clipping and EMA (the learning rate is a runtime input: changing it compiles nothing)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)

    optimizer: Literal["adam", "amsgrad", "adamw"] = Field("adam", description="adam, amsgrad or adamw")
    amsgrad: bool = Field(True, description="AMSGrad variant of Adam (mace-torch default)")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    beta1: float = Field(0.9, ge=0, lt=1, description="Adam beta1")
    beta2: float = Field(0.999, ge=0, lt=1, description="Adam beta2")
    eps: float = Field(1e-8, gt=0, description="Adam epsilon")
    weight_decay: float = Field(5e-7, ge=0, description="L2 for adam/amsgrad, decoupled for adamw")
    clip_grad: Optional[float] = Field(10.0, description="global gradient-norm clip; none or <= 0 for none")
    scheduler: Literal["plateau", "constant", "cosine", "exponential"] = Field("plateau", description="lr schedule")
    lr_factor: float = Field(0.8, gt=0, le=1, description="plateau decay factor")
    scheduler_patience: int = Field(50, ge=0, description="plateau patience in epochs")
    plateau_threshold: float = Field(1e-4, ge=0, description="plateau relative threshold")
    min_lr: float = Field(0.0, ge=0, description="lowest learning rate of the schedules")
    lr_gamma: float = Field(0.9993, gt=0, description="exponential decay per epoch")
    warmup_epochs: float = Field(1.0, ge=0, description="linear learning-rate warm-up in epochs")
    ema_decay: Optional[float] = Field(0.99, description="EMA decay of the params; none or 0 for no EMA")
    group_lr: dict[str, float] = Field(
        default_factory=dict, description="learning-rate multipliers by parameter group: readouts, trunk, e0"
    )

    @field_validator("clip_grad", mode="before")
    @classmethod
    def _clip(cls, v):
        return None if v is not None and float(v) <= 0 else v

    @field_validator("ema_decay", mode="before")
    @classmethod
    def _ema(cls, v):
        if v is None or float(v) == 0:
            return None
        if not 0.0 < float(v) < 1.0:
            raise ValueError("must be in (0, 1), or none/0 for no EMA")
        return v

    @field_validator("group_lr")
    @classmethod
    def _groups(cls, v):
        for k, x in v.items():
            if k not in LR_GROUPS:
                raise ValueError(f"unknown group {k!r}; use {', '.join(LR_GROUPS)}")
            if x < 0:
                raise ValueError(f"multiplier of {k!r} must be >= 0")
        return v

    def step_key(self) -> tuple:
        """The settings that shape the compiled step (lr, schedule and group_lr are runtime inputs)."""
        return (self.optimizer, self.amsgrad, self.beta1, self.beta2, self.eps, self.weight_decay,
                self.clip_grad, self.ema_decay)


class FinetuneConfig(_Config):
    """Hyperparameters of a fine-tune; ``FinetuneConfig(**d)``, ``to_dict()`` and ``replace(...)`` round-trip."""

    epochs: int = Field(100, ge=0, description="number of epochs")
    batch_size: int = Field(10, ge=1, description="structures per batch")
    micro_batch_atoms: int = Field(
        256, ge=1, description="most atoms per gradient pass: a batch with more is split into micro-batches whose "
                               "gradients add up to the batch's (same update, less memory; a frame is never split)")
    seed: int = Field(123, description="seed of the split, shuffling and replay generation")
    valid_fraction: float = Field(0.1, ge=0, lt=1, description="fraction of the training frames held out for validation")
    small_data_frames: int = Field(
        10, ge=0, description="with fewer training frames (and no validation set) validate on the training frames"
    )
    dtype: Literal["float32", "float64"] = Field("float32", description="float32 or float64")
    freeze: str = Field("none", description="what trains: none | readouts | layers:K | linear-readouts | linear | "
                                            "train:REGEX | freeze:REGEX")
    trunk_cache: bool = Field(False, description="frozen trunk: compute values and Jacobians once")
    cache_chunk: int = Field(16, ge=1, description="Jacobian columns per pass of the frozen-trunk cache")
    cache_batch_size: int = Field(1, ge=1, description="frames per Jacobian pass of the frozen-trunk cache")
    e0s: Union[str, dict[str, float]] = Field(
        "auto", description="per-element reference energies: model (keep) | lstsq (closed-form refit on the "
                             "training frames) | auto (lstsq when possible, else model) | average | JSON file {element: eV}")
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    patience: Optional[int] = Field(None, ge=1, description="early stopping after this many epochs without a better "
                                                           "validation loss")
    keep: Literal["best", "last"] = Field("best", description="best (lowest validation loss) or last")
    allow_worse: bool = Field(False, description="allow a result worse on validation than the starting model")
    multihead: bool = Field(False, description="multihead fine-tuning (as mace-torch): a new 'ft' head trains on the "
                                               "training frames, the foundation head is kept and trains on the replay "
                                               "frames, the trunk is shared; needs replay")
    replay_weight: float = Field(1.0, ge=0, description="config weight of replay frames")
    replay_count: int = Field(40, ge=1, description="generated replay structures")
    replay_holdout: float = Field(0.25, ge=0, lt=1, description="fraction of replay frames held out to measure "
                                                               "forgetting")
    replay_max_force: Optional[float] = Field(
        20.0, gt=0, description="drop pseudo-labelled replay frames with a force component above this (eV/Å); "
                                "None (library) for no limit")
    replay_max_energy: Optional[float] = Field(
        5.0, description="drop pseudo-labelled replay frames whose energy is more than this above the model's E0s "
                         "(eV/atom); None (library) for no limit")
    replay_labels: Literal["pseudo", "file"] = Field("pseudo", description="pseudo (label with the initial model) "
                                                                           "or file")
    energy_key: Optional[str] = Field(None, description="info key of the energy label")
    forces_key: Optional[str] = Field(None, description="arrays key of the forces label")
    stress_key: Optional[str] = Field(None, description="info key of the stress label")
    progress: bool = Field(True, description="progress bars and epoch lines")

    @field_validator("e0s", mode="before")
    @classmethod
    def _e0s(cls, v):
        if isinstance(v, os.PathLike):
            return os.fspath(v)
        if isinstance(v, dict):
            return {str(k): v2 for k, v2 in v.items()}
        return v

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneConfig":
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **changes) -> "FinetuneConfig":
        """A named preset (see :data:`PRESETS`) with ``changes`` on top (``replace`` semantics)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown fine-tuning preset {name!r}; use one of: {', '.join(PRESETS)}")
        return cls(**PRESETS[name]).replace(**changes)

    def replace(self, **changes) -> "FinetuneConfig":
        """A copy with ``changes``; ``loss_X=`` / ``optim_X=`` reach the nested fields (validated)."""
        d = self.model_dump(exclude_unset=True)  # fields left at their defaults stay unset in the copy
        for k in list(changes):
            for group in ("loss", "optim"):
                if k.startswith(group + "_") and k[len(group) + 1:] in type(getattr(self, group)).model_fields:
                    d.setdefault(group, {})[k[len(group) + 1:]] = changes.pop(k)
        for group in ("loss", "optim"):
            if isinstance(changes.get(group), dict):
                d.setdefault(group, {}).update(changes.pop(group))
        d.update(changes)
        return type(self)(**d)


#: named presets: field values (nested dicts for loss/optim) on top of the defaults
PRESETS: dict[str, dict[str, Any]] = {
    # the defaults (measured sweep, benchmarks/RESULTS.md)
    "safe": {},
    # the settings before issue 16: mace-torch's training defaults
    "mace-torch": {"e0s": "model", "batch_size": 10, "valid_fraction": 0.1,
                   "optim": {"optimizer": "adam", "amsgrad": True, "lr": 0.01, "weight_decay": 5e-7, "clip_grad": 10.0,
                             "scheduler": "plateau", "lr_factor": 0.8, "scheduler_patience": 50,
                             "warmup_epochs": 0.0, "ema_decay": None, "group_lr": {}}},
}
