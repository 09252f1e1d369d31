"""The jitted optax training step, cached per architecture and compile-relevant settings."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .config import LossConfig, OptimConfig
from .loss import error_sums, loss_terms
from .optim import ema_update, make_optimizer
from .trunk import predict_for

_STEP_CACHE: dict = {}


def train_step_fn(mode: tuple, loss_cfg: LossConfig, optim_cfg: OptimConfig, n_species: int):
    """The jitted training step for a mode key (see :func:`jaxuft.finetune.trunk.predict_for`).

    ``step(trainable, opt_state, ema, ema_count, frozen, batch, tags, lr, scales)`` ->
    ``(trainable, opt_state, ema, ema_count, error sums of tag-0 frames, loss, n_graphs)``;
    ``scales`` holds each trainable leaf's learning-rate multiplier (a runtime input, like ``lr``).
    Cached on the settings that shape the computation, so fine-tunes of the same architecture
    in one process share it whatever their learning rates and schedules.
    """
    key = (mode, loss_cfg, optim_cfg.step_key(), n_species)
    if key not in _STEP_CACHE:
        if len(_STEP_CACHE) >= 64:
            _STEP_CACHE.pop(next(iter(_STEP_CACHE)))
        _STEP_CACHE[key] = _make_train_step(mode, loss_cfg, optim_cfg, n_species)
    return _STEP_CACHE[key]


def grad_step_fn(mode: tuple, loss_cfg: LossConfig, n_species: int):
    """The jitted gradient of one micro-batch, weighted so that micro-batch gradients add up to the batch's.

    ``gstep(trainable, frozen, batch, tags, wg, wn)`` -> ``(grads, error sums of tag-0 frames, weighted loss)``:
    the energy and stress terms (means over structures) are weighted by ``wg`` = this micro-batch's share of
    the batch's structures, the force term (a mean over atoms) by ``wn`` = its share of the atoms, so the sum
    over the micro-batches of a batch is exactly the batch's loss and gradient.
    """
    key = ("grad", mode, loss_cfg, n_species)
    if key not in _STEP_CACHE:
        predict = predict_for(mode)

        def gstep(trainable, frozen, batch, tags, wg, wn):
            def lossf(tp):
                pred = predict(tp, frozen, batch, tags[0]) if mode[0] == "multihead" else predict(tp, frozen, batch)
                t = loss_terms(pred, batch, loss_cfg)
                scaled = (wg * (loss_cfg.energy_weight * t["energy"] + loss_cfg.stress_weight * t["stress"])
                          + wn * loss_cfg.forces_weight * t["forces"])
                return scaled, pred

            (loss, pred), grads = jax.value_and_grad(lossf, has_aux=True)(trainable)
            keep = (tags == 0).astype(batch.energy.dtype)
            sel = batch._replace(energy_mask=batch.energy_mask * keep,
                                 forces_mask=batch.forces_mask * keep[batch.graph.node_graph],
                                 stress_mask=batch.stress_mask * keep)
            return grads, error_sums(pred, sel, n_species), loss

        _STEP_CACHE[key] = jax.jit(gstep)
    return _STEP_CACHE[key]


def apply_step_fn(optim_cfg: OptimConfig):
    """The jitted optax update from accumulated gradients: ``(trainable, opt_state, ema, ema_count, grads, lr, scales)``."""
    key = ("apply", optim_cfg.step_key())
    if key not in _STEP_CACHE:
        opt = make_optimizer(optim_cfg)
        ema_decay = optim_cfg.ema_decay

        def astep(trainable, opt_state, ema, ema_count, grads, lr, scales):
            updates, opt_state = opt.update(grads, opt_state, trainable)
            trainable = jax.tree_util.tree_map(lambda p, u, c: p - (lr * c).astype(p.dtype) * u, trainable, updates,
                                               scales)
            if ema_decay is not None:
                ema, ema_count = ema_update(ema, trainable, ema_count, ema_decay)
            return trainable, opt_state, ema, ema_count

        _STEP_CACHE[key] = jax.jit(astep)
    return _STEP_CACHE[key]


def _make_train_step(mode: tuple, loss_cfg: LossConfig, optim_cfg: OptimConfig, n_species: int):
    predict = predict_for(mode)
    opt = make_optimizer(optim_cfg)
    ema_decay = optim_cfg.ema_decay

    def step(trainable, opt_state, ema, ema_count, frozen, batch, tags, lr, scales):
        def lossf(tp):
            # multihead: every batch holds one head's frames; tag 0 -> "ft", tag 1 -> "foundation"
            pred = predict(tp, frozen, batch, tags[0]) if mode[0] == "multihead" else predict(tp, frozen, batch)
            terms = loss_terms(pred, batch, loss_cfg)
            return terms["loss"], pred

        (loss, pred), grads = jax.value_and_grad(lossf, has_aux=True)(trainable)
        updates, opt_state = opt.update(grads, opt_state, trainable)
        trainable = jax.tree_util.tree_map(lambda p, u, c: p - (lr * c).astype(p.dtype) * u, trainable, updates, scales)
        if ema_decay is not None:
            ema, ema_count = ema_update(ema, trainable, ema_count, ema_decay)
        # running errors of the primary data only (replay frames have tag 1)
        keep = (tags == 0).astype(batch.energy.dtype)
        sel = batch._replace(
            energy_mask=batch.energy_mask * keep,
            forces_mask=batch.forces_mask * keep[batch.graph.node_graph],
            stress_mask=batch.stress_mask * keep,
        )
        sums = error_sums(pred, sel, n_species)
        n_graphs = jnp.sum(batch.graph.graph_mask.astype(loss.dtype))
        return trainable, opt_state, ema, ema_count, sums, loss, n_graphs

    return jax.jit(step)


