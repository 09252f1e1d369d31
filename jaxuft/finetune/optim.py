"""Optimisers (optax), learning-rate schedules, EMA and early stopping.

The settings live in :class:`~jaxuft.finetune.config.OptimConfig` (defaults from a
measured sweep; ``FinetuneConfig.preset("mace-torch")`` gives mace-torch's: AMSGrad
lr 0.01, weight decay 5e-7 as L2, clipping at 10, ReduceLROnPlateau(0.8, 50), no EMA).

The learning rate is a *runtime argument* of the compiled step (computed on the
host by :class:`LRSchedule`), so schedules never recompile and their state is
plain JSON in the checkpoint.  Adam/AMSGrad follow torch's update exactly
(AMSGrad keeps the running max of the *uncorrected* second moment).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from .config import OPTIMIZERS, SCHEDULERS, OptimConfig  # noqa: F401  (public here too)


class TorchAdamState(NamedTuple):
    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    nu_max: optax.Updates


def scale_by_torch_adam(b1=0.9, b2=0.999, eps=1e-8, amsgrad=False) -> optax.GradientTransformation:
    """torch.optim.Adam's direction ``m_hat / (sqrt(v[_max]) / sqrt(1 - b2^t) + eps)`` (lr not applied)."""

    def init(params):
        z = lambda: jax.tree_util.tree_map(jnp.zeros_like, params)
        nu_max = z() if amsgrad else None
        return TorchAdamState(jnp.zeros((), jnp.int32), z(), z(), nu_max)

    def update(updates, state, params=None):
        del params
        count = state.count + 1
        mu = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
        t = count.astype(jnp.float32)
        nu_max = jax.tree_util.tree_map(jnp.maximum, state.nu_max, nu) if amsgrad else None
        second = nu_max if amsgrad else nu

        def direction(m, v):
            bc1 = 1 - jnp.asarray(b1, m.dtype) ** t.astype(m.dtype)
            bc2 = 1 - jnp.asarray(b2, m.dtype) ** t.astype(m.dtype)
            return (m / bc1) / (jnp.sqrt(v) / jnp.sqrt(bc2) + eps)

        out = jax.tree_util.tree_map(direction, mu, second)
        return out, TorchAdamState(count, mu, nu, nu_max)

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """The update *direction*; the step is ``params -= lr * direction``."""
    chain = []
    if cfg.clip_grad is not None and cfg.clip_grad > 0:
        chain.append(optax.clip_by_global_norm(cfg.clip_grad))
    amsgrad = cfg.amsgrad or cfg.optimizer == "amsgrad"
    if cfg.optimizer == "adamw":
        chain.append(scale_by_torch_adam(cfg.beta1, cfg.beta2, cfg.eps, amsgrad))
        if cfg.weight_decay:
            chain.append(optax.add_decayed_weights(cfg.weight_decay))
    else:
        if cfg.weight_decay:
            chain.append(optax.add_decayed_weights(cfg.weight_decay))
        chain.append(scale_by_torch_adam(cfg.beta1, cfg.beta2, cfg.eps, amsgrad))
    return optax.chain(*chain)


class LRSchedule:
    """Host-side learning rate: warm-up x (plateau | constant | cosine | exponential).

    ``lr(step, epoch)`` for a step; ``end_epoch(metric)`` feeds the plateau rule
    (torch's ReduceLROnPlateau, mode "min", relative threshold, no cooldown).
    """

    def __init__(self, cfg: OptimConfig, steps_per_epoch: int, total_epochs: int):
        self.cfg = cfg
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.total_steps = self.steps_per_epoch * max(int(total_epochs), 1)
        self.warmup_steps = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        self.plateau_lr = cfg.lr
        self.best = math.inf
        self.bad_epochs = 0

    def lr(self, step: int, epoch: int) -> float:
        c = self.cfg
        if c.scheduler == "plateau":
            base = self.plateau_lr
        elif c.scheduler == "constant":
            base = c.lr
        elif c.scheduler == "exponential":
            base = max(c.lr * c.lr_gamma**epoch, c.min_lr)
        else:  # cosine over the steps after warm-up
            span = max(self.total_steps - self.warmup_steps, 1)
            t = min(max(step - self.warmup_steps, 0), span) / span
            base = c.min_lr + 0.5 * (c.lr - c.min_lr) * (1.0 + math.cos(math.pi * t))
        if self.warmup_steps > 0 and step < self.warmup_steps:
            base *= (step + 1) / self.warmup_steps
        return float(base)

    def end_epoch(self, metric: float) -> None:
        if self.cfg.scheduler != "plateau" or metric is None or not math.isfinite(metric):
            return
        if metric < self.best * (1.0 - self.cfg.plateau_threshold):
            self.best = metric
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.cfg.scheduler_patience:
            self.plateau_lr = max(self.plateau_lr * self.cfg.lr_factor, self.cfg.min_lr)
            self.bad_epochs = 0

    def state_dict(self) -> dict:
        return {"plateau_lr": self.plateau_lr, "best": _f(self.best), "bad_epochs": self.bad_epochs}

    def load_state_dict(self, d: dict) -> None:
        self.plateau_lr = float(d["plateau_lr"])
        self.best = math.inf if d["best"] is None else float(d["best"])
        self.bad_epochs = int(d["bad_epochs"])


class EarlyStopping:
    """Stop after ``patience`` epochs without a new best validation loss (None = never)."""

    def __init__(self, patience: int | None):
        self.patience = patience
        self.best = math.inf
        self.best_epoch = -1
        self.bad_epochs = 0

    def update(self, metric: float, epoch: int) -> bool:
        """Record ``metric``; True when it is a new best."""
        if metric is not None and math.isfinite(metric) and metric < self.best:
            self.best, self.best_epoch, self.bad_epochs = metric, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": _f(self.best), "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, d: dict) -> None:
        self.best = math.inf if d["best"] is None else float(d["best"])
        self.best_epoch = int(d["best_epoch"])
        self.bad_epochs = int(d["bad_epochs"])


def ema_update(ema, params, count, decay: float):
    """torch_ema's update with warm-up: ``d = min(decay, (1 + n) / (10 + n))``."""
    n = count.astype(jnp.float32)
    d = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
    new = jax.tree_util.tree_map(lambda e, p: e - (1.0 - d.astype(e.dtype)) * (e - p), ema, params)
    return new, count + 1


def _f(x: float):
    return None if not math.isfinite(x) else float(x)


def config_dict(cfg: OptimConfig) -> dict:
    return cfg.to_dict()
