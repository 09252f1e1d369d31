"""The fine-tuning loop: data -> E0s -> trainable subset -> (cache) -> optax epochs -> Potential.

    from jaxuft.finetune import finetune, FinetuneConfig
    result = finetune("sevennet-0", "train.xyz", config=FinetuneConfig(epochs=50), out_dir="ft")
    result.potential          # a Potential with the fine-tuned params (same compiled code)

Every epoch: shuffled padded batches (one compiled shape per size group), one
jitted optax step per batch with the learning rate as a runtime argument, EMA,
validation (with the EMA params when EMA is on), replay hold-out, schedule and
early-stopping updates, metrics to CSV/JSON, and an atomic checkpoint with
everything needed to continue bit for bit (``resume=True``).

Output directory::

    checkpoint.safetensors   training state (atomic, every epoch)
    metrics.csv / .json      per-epoch RMSE/MAE on train / valid / replay_holdout
    learning_curve.png
    model/                   the fine-tuned Potential (jaxuft model format)
    manifest.json            data, hyperparameters, E0s, metrics, forgetting, timings

Exactness of ``resume``: the checkpoint holds every array of the state (trainable
params, optimiser state, EMA, best params, RNG key) and the host-side state
(epoch, step, schedule, early stopping, history); batches are drawn from the key
alone.  On CPU a resumed run reproduces an uninterrupted one bit for bit (tested in
float64).  On GPUs XLA's scatter-adds are not deterministic unless
``XLA_FLAGS=--xla_gpu_deterministic_ops=true`` is set.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import JaxuftError
from . import checkpoint as ckpt
from .data import (
    DataError,
    FixedBatches,
    batch_indices,
    collate,
    ShapePlan,
    epoch_batches,
    fingerprint,
    iterate,
    prepare,
    read_frames,
    split_train_valid,
)
from .e0s import E0_MODES, E0Error, describe, find_e0_leaf, lstsq_e0s, model_e0s, normalise_e0s, read_e0s, set_e0s
from .evaluation import eval_step_fn, run_eval
from .history import plot_learning_curve, write_logs
from .config import FinetuneConfig, LossConfig, OptimConfig
from .loss import ErrorAccumulator, error_sums, loss_terms
from .optim import EarlyStopping, LRSchedule, ema_update, make_optimizer
from .params import ParamSplit, lr_scales, n_scalars, param_groups, select_trainable
from .replay import forgetting, generate_structures, pseudo_label, split_holdout
from .trunk import TrunkCache, affine_leaves, predict_for, split_cache

CHECKPOINT = "checkpoint.safetensors"


class FinetuneError(JaxuftError, ValueError):
    """Fine-tuning cannot start or continue (bad settings, mismatched checkpoint...)."""


@dataclass
class FinetuneResult:
    potential: Any
    params: Any
    history: list
    manifest: dict
    out_dir: Path | None
    status: str  # "finished" | "early_stopped" | "interrupted"

    @property
    def metrics(self) -> dict:
        return self.manifest.get("metrics", {})


# ---- helpers ---------------------------------------------------------------------------
def _tree_hash(tree) -> str:
    h = hashlib.sha256()
    paths_leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for p, x in paths_leaves:
        h.update(jax.tree_util.keystr(p).encode())
        h.update(np.ascontiguousarray(np.asarray(x)).tobytes())
    return h.hexdigest()


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for name in ("jax", "jaxlib", "optax", "flax", "numpy", "ase", "jaxuft"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def _source_desc(src) -> Any:
    if src is None:
        return None
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, (list, tuple)) and src and all(isinstance(x, (str, os.PathLike)) for x in src):
        return [str(x) for x in src]
    return f"<{len(src) if hasattr(src, '__len__') else '?'} in-memory structures>"


def save_potential(potential, params, dest, metadata: dict | None = None, overwrite: bool = True) -> Path:
    """Write ``potential``'s architecture with ``params`` in the jaxuft model format."""
    from ..checkpoints.format import save_model

    tree = {"params": jax.tree_util.tree_map(lambda x: np.asarray(x), params)}
    constants = getattr(potential, "constants", None)
    if constants:
        tree["constants"] = constants
    return Path(save_model(dest, potential.config, tree, metadata=metadata, overwrite=overwrite))


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


def _make_train_step(mode: tuple, loss_cfg: LossConfig, optim_cfg: OptimConfig, n_species: int):
    predict = predict_for(mode)
    opt = make_optimizer(optim_cfg)
    ema_decay = optim_cfg.ema_decay

    def step(trainable, opt_state, ema, ema_count, frozen, batch, tags, lr, scales):
        def lossf(tp):
            pred = predict(tp, frozen, batch)
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


# ---- the trainer -----------------------------------------------------------------------
class Trainer:
    """Sets a fine-tune up (data, E0s, trainable leaves, replay, cache, optimiser) and runs it."""

    def __init__(
        self,
        model,
        train,
        valid=None,
        replay=None,
        config: FinetuneConfig | None = None,
        out_dir: str | os.PathLike | None = None,
        log: Callable[[str], None] | None = None,
    ):
        t0 = time.perf_counter()
        self.config = cfg = config or FinetuneConfig()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.log = log or _default_log(cfg.progress)
        self.timings: dict = {}
        self.sources = {"model": _source_desc(model) if not _is_potential(model) else "<Potential>",
                        "train": _source_desc(train), "valid": _source_desc(valid), "replay": _source_desc(replay)}

        # -- model
        self.foundation = self._load_model(model, cfg.dtype)
        pot = self.foundation
        self.n_species = len(pot.atomic_numbers)
        self.dtype = pot.dtype

        # -- data
        keys = dict(energy_key=cfg.energy_key, forces_key=cfg.forces_key, stress_key=cfg.stress_key)
        require = tuple(k for k, w in (("energy", cfg.loss.energy_weight), ("forces", cfg.loss.forces_weight)) if w > 0)
        train_frames = read_frames(train, require=require, name="training data", **keys)
        self.valid_note = None
        if valid is None and cfg.valid_fraction > 0 and len(train_frames) < cfg.small_data_frames:
            # too few frames to hold any out: validate on the training frames themselves
            valid_frames = list(train_frames)
            self.valid_kind = "training frames"
            self.valid_note = (
                f"validation: {len(train_frames)} training frame(s) are fewer than {cfg.small_data_frames}, so none "
                "are held out; the training frames themselves (and the replay hold-out, when there is one) are "
                "evaluated. This catches a fine-tune that diverges or makes the fit worse, but cannot detect "
                "over-fitting: pass a validation set (--valid) for that"
            )
        elif valid is None:
            train_frames, valid_frames = split_train_valid(train_frames, cfg.valid_fraction, cfg.seed)
            self.valid_kind = f"split from train (fraction {cfg.valid_fraction}, seed {cfg.seed})"
        else:
            empty = isinstance(valid, (list, tuple)) and not valid
            valid_frames = [] if empty else read_frames(valid, require=require, name="validation data", **keys)
            self.valid_kind = "given"
        if len(valid_frames) == 1 and self.valid_note is None:
            self.valid_note = ("validation: only 1 frame; the best epoch (and the check against the starting model) "
                               "rests on one structure and is noisy")
        elif not valid_frames:
            self.valid_note = ("validation: no frames, so the starting model cannot be compared with the result "
                               "(the training loss selects the epoch instead)")
        if self.valid_note:
            self.log("warning: " + self.valid_note)
        self.train_frames, self.valid_frames = train_frames, valid_frames
        self.train_samples = prepare(train_frames, pot.species_map, pot.cutoff)
        self.valid_samples = prepare(valid_frames, pot.species_map, pot.cutoff) if valid_frames else []
        if not self.train_samples:
            raise DataError("no training frames left after the validation split")
        # one padded shape for everything (replay frames are added below): the set-up
        # evaluations (E0 check, least squares, affine check, pseudo-labels) reuse it
        self.plan = ShapePlan(cfg.batch_size).add(self.train_samples).add(self.valid_samples)
        self._probe = collate(self.train_samples[: cfg.batch_size], self.plan.capacity(), self.dtype)

        # -- E0s and initial params
        self.groups = param_groups(pot.config, pot.params)
        self.e0_path = find_e0_leaf(pot, pot.params, self._probe.graph, self.groups)
        self.e0_info = self._apply_e0s(cfg.e0s)
        init_pot = pot.with_params(self.params_init)
        self.init_potential = init_pot

        # -- trainable leaves
        spec = cfg.freeze
        trainable_paths = select_trainable(spec, pot.config, self.params_init, self.groups)
        kind = spec.strip().lower()
        if kind == "linear" or (kind.startswith("linear") and self.groups.linear_readouts is None):
            trainable_paths = affine_leaves(pot, self.params_init, self._probe.graph, trainable_paths,
                                            jax.random.PRNGKey(cfg.seed + 17))
            if not trainable_paths:
                raise FinetuneError(
                    f"freeze={spec!r}: no leaf enters the energy linearly; "
                    "choose the leaves with freeze='train:REGEX'"
                )
        self.split = ParamSplit.create(self.params_init, trainable_paths)
        self.trainable_init, self.frozen = self.split.split(self.params_init)
        # the model as given (before any E0 refit): also a candidate unless allow_worse
        self.given_trainable, self.given_frozen = self.split.split(pot.params)
        self.e0_refitted = _tree_hash(pot.params) != _tree_hash(self.params_init)
        self.n_trainable = n_scalars(self.trainable_init)

        # -- replay
        self.replay_train_samples, self.replay_hold_samples = [], []
        self.replay_info = None
        if replay is not None and replay is not False:
            self._setup_replay(replay, keys)

        # -- shapes
        for s in (self.replay_train_samples, self.replay_hold_samples):
            self.plan.add(s)
        self.fit_samples = self.train_samples + self.replay_train_samples
        self.tags = np.array([0] * len(self.train_samples) + [1] * len(self.replay_train_samples))

        # -- predictions: full model or frozen-trunk cache
        self.cache_report = None
        if cfg.trunk_cache:
            tc0 = time.perf_counter()
            self._build_cache()
            self.timings["cache_s"] = time.perf_counter() - tc0
            self.mode = ("cache",)
            self.aux = self.trunk.theta0
        else:
            self.mode = ("full", pot.module, self.split)
            self.aux = self.frozen

        # -- optimiser and compiled steps
        self.optimizer = make_optimizer(cfg.optim)
        self._train_step = train_step_fn(self.mode, cfg.loss, cfg.optim, self.n_species)
        scales = lr_scales(self.split.trainable_paths, self.groups, cfg.optim.group_lr)
        self.lr_scales = {p: jnp.asarray(c, self.dtype) for p, c in scales.items()}
        self._eval_step = eval_step_fn(self.mode, cfg.loss, self.n_species, pot)
        self.valid_batches = FixedBatches(self.valid_samples, self.plan, self.dtype) if self.valid_samples else None
        self.hold_batches = (
            FixedBatches(self.replay_hold_samples, self.plan, self.dtype) if self.replay_hold_samples else None
        )
        self.steps_per_epoch = len(epoch_batches(self.fit_samples, self.plan, jax.random.PRNGKey(0)))
        self.timings["setup_s"] = time.perf_counter() - t0

    # ---- setup pieces ------------------------------------------------------------------
    @staticmethod
    def _load_model(model, dtype):
        if _is_potential(model):
            from ..potential import Potential

            if np.dtype(model.dtype) == np.dtype(dtype):
                return model
            return Potential(model.config, model.params, dtype=dtype, constants=getattr(model, "constants", None))
        from ..api import load

        return load(model, dtype=dtype)

    def _apply_e0s(self, mode) -> dict:
        pot = self.foundation
        info = {"mode": None, "leaf": self.e0_path, "model": describe(model_e0s(pot, pot.params, self.e0_path))}
        self.params_init = pot.params
        if isinstance(mode, str) and mode == "auto":
            # lstsq where it can work (an E0 leaf and energy labels), else the model's own E0s
            has_energy = any(s.has_energy for s in self.train_samples)
            if self.e0_path is not None and has_energy:
                info.update(self._apply_e0s("lstsq"))
                info["mode"] = "auto: lstsq"
                return info
            why = "the model has no per-element energy offset leaf" if self.e0_path is None else "no energy labels"
            info["mode"] = f"auto: model ({why})"
            info["used"] = info["model"]
            return info
        if isinstance(mode, str) and mode == "model":
            info["mode"] = "model"
            info["used"] = info["model"]
            return info
        if self.e0_path is None:
            raise E0Error(
                f"e0s={mode!r}: this model has no per-element energy offset leaf that jaxuft can find "
                "(looked for atomic_energies/e0/shift with one entry per element, checked numerically); "
                "use e0s='model'"
            )
        zs_data = sorted({int(z) for s in self.train_samples for z in s.numbers})
        if isinstance(mode, dict):
            values, info["mode"] = normalise_e0s(mode), "dict"
        elif isinstance(mode, (str, os.PathLike)) and str(mode) not in E0_MODES:
            values, info["mode"] = read_e0s(mode), f"file:{mode}"
        elif mode in ("lstsq", "average"):
            values = self._lstsq_e0s(mode, zs_data)
            info["mode"] = mode
        else:
            raise E0Error(f"unknown e0s mode {mode!r}; use one of {E0_MODES}, a JSON file or a dict")
        missing = [z for z in zs_data if z not in values]
        if missing:
            from ase.data import chemical_symbols

            raise E0Error(
                f"E0s ({info['mode']}) lack element(s) {[chemical_symbols[z] for z in missing]} "
                "present in the training data"
            )
        self.params_init = set_e0s(pot, pot.params, self.e0_path, values)
        info["used"] = describe(model_e0s(pot, self.params_init, self.e0_path))
        return info

    def _lstsq_e0s(self, mode, zs_data) -> dict:
        pot = self.foundation
        samples = [s for s in self.train_samples if s.has_energy]
        if not samples:
            raise E0Error(f"e0s={mode!r} needs energy labels in the training data")
        numbers = [s.numbers for s in samples]
        energies = [s.energy for s in samples]
        if mode == "average":
            return lstsq_e0s(numbers, energies, zs_data)
        batches = FixedBatches(samples, self.plan, self.dtype)
        efs = pot.compiled("efs")
        pred = np.zeros(len(samples))
        for idx, b in batches:
            e = np.asarray(efs(pot.params, b.graph)["energy"], dtype=np.float64)
            pred[idx] = e[: len(idx)]
        base = model_e0s(pot, pot.params, self.e0_path)
        return lstsq_e0s(numbers, energies, zs_data, base=base, predicted=pred)

    def _setup_replay(self, replay, keys) -> None:
        cfg, pot = self.config, self.init_potential
        if isinstance(replay, str) and replay == "generate":
            zs = sorted({int(z) for s in self.train_samples for z in s.numbers})
            structures = generate_structures(zs, n=cfg.replay_count, seed=cfg.seed)
            frames = pseudo_label(pot, self.params_init, structures, batch_size=cfg.batch_size,
                                  weight=cfg.replay_weight, source="generated replay", plan=self.plan)
            kind = "generated"
        else:
            if cfg.replay_labels == "file":
                frames = read_frames(replay, require=("energy",), name="replay data", **keys)
                for f in frames:
                    f.weight = cfg.replay_weight
            else:
                raw = read_frames(replay, require=(), name="replay data", **keys)
                frames = pseudo_label(pot, self.params_init, [f.atoms for f in raw], batch_size=cfg.batch_size,
                                      weight=cfg.replay_weight, source="replay", plan=self.plan)
            kind = "file"
        fit, hold = split_holdout(frames, cfg.replay_holdout, cfg.seed)
        for f in hold:
            f.weight = 1.0
        if cfg.replay_weight > 0:
            self.replay_train_samples = prepare(fit, pot.species_map, pot.cutoff)
        self.replay_hold_samples = prepare(hold, pot.species_map, pot.cutoff)
        self.replay_info = {
            "kind": kind,
            "labels": cfg.replay_labels if kind == "file" else "pseudo",
            "n_frames": len(frames),
            "n_train": len(self.replay_train_samples),
            "n_holdout": len(hold),
            "weight": cfg.replay_weight,
            "fingerprint": fingerprint(frames),
        }

    def _build_cache(self) -> None:
        cfg = self.config
        self.trunk = TrunkCache(self.foundation, self.split, self.trainable_init, self.frozen, chunk=cfg.cache_chunk)
        all_samples = self.train_samples + self.valid_samples + self.replay_train_samples + self.replay_hold_samples
        total = len(all_samples)
        self.log(f"frozen-trunk cache: {self.trunk.n_params} trainable scalars, {total} frames")
        # small batches bound the memory of the Jacobian passes; check exactness on the first
        # batch before filling the rest
        cplan = ShapePlan(max(1, cfg.cache_batch_size)).add(all_samples)
        grp, idx = batch_indices(all_samples, cplan)[0]
        b = collate([all_samples[i] for i in idx], cplan.capacity(grp), self.dtype)
        cache = self.trunk.batch_cache(b.graph)
        rtol = 1e-3 if self.dtype == np.float32 else 1e-6
        self.cache_report = self.trunk.check_affine(b.graph, cache, jax.random.PRNGKey(cfg.seed + 5), rtol)
        split_cache(cache, [all_samples[i] for i in idx])
        bar = _bar(total, "caching trunk", cfg.progress)
        bar.update(len(idx))
        self.trunk.fill(all_samples, cplan, self.dtype, progress=bar.update)
        bar.close()

    # ---- state -------------------------------------------------------------------------
    def _fresh_state(self) -> dict:
        cfg = self.config
        tr = self.trainable_init
        return {
            "trainable": tr,
            "opt_state": self.optimizer.init(tr),
            "ema": tr if cfg.optim.ema_decay is not None else None,
            "ema_count": jnp.zeros((), jnp.int32),
            "best": tr,
            "rng": jax.random.PRNGKey(cfg.seed),
            "epoch": 0,
            "step": 0,
            "history": [],
            "schedule": None,
            "stopper": None,
            "status": "running",
            "initial": {},
        }

    def run_fingerprint(self) -> str:
        cfg = self.config.to_dict()
        for k in ("epochs", "progress", "patience"):
            cfg.pop(k, None)
        if self.config.optim.scheduler == "cosine":
            cfg["epochs"] = self.config.epochs
        doc = {
            "config": cfg,
            "train": fingerprint(self.train_frames),
            "valid": fingerprint(self.valid_frames),
            "replay": (self.replay_info or {}).get("fingerprint"),
            "trainable": list(self.split.trainable_paths),
            "params_init": _tree_hash(self.params_init),
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()

    def _save_checkpoint(self, state, schedule, stopper) -> None:
        if self.out_dir is None:
            return
        arrays = {}
        arrays.update(ckpt.tree_to_arrays("trainable", state["trainable"]))
        arrays.update(ckpt.tree_to_arrays("opt_state", state["opt_state"]))
        if state["ema"] is not None:
            arrays.update(ckpt.tree_to_arrays("ema", state["ema"]))
        arrays.update(ckpt.tree_to_arrays("best", state["best"]))
        arrays["ema_count"] = np.asarray(state["ema_count"])
        arrays["rng"] = np.asarray(state["rng"])
        meta = {
            "epoch": state["epoch"],
            "step": state["step"],
            "status": state["status"],
            "history": state["history"],
            "initial": state["initial"],
            "schedule": schedule.state_dict(),
            "stopper": stopper.state_dict(),
            "fingerprint": self.run_fingerprint(),
            "config": self.config.to_dict(),
            "saved": _now(),
        }
        ckpt.save(self.out_dir / CHECKPOINT, arrays, meta)

    def _load_checkpoint(self, state, schedule, stopper) -> dict:
        arrays, meta = ckpt.load(self.out_dir / CHECKPOINT)
        if meta["fingerprint"] != self.run_fingerprint():
            raise ckpt.CheckpointMismatch(
                f"{self.out_dir / CHECKPOINT} belongs to a different run (data, model, trainable leaves or "
                "settings other than epochs/patience differ); use another output directory or resume=False"
            )
        state["trainable"] = ckpt.arrays_to_tree("trainable", state["trainable"], arrays)
        state["opt_state"] = ckpt.arrays_to_tree("opt_state", state["opt_state"], arrays)
        if state["ema"] is not None:
            state["ema"] = ckpt.arrays_to_tree("ema", state["ema"], arrays)
        state["best"] = ckpt.arrays_to_tree("best", state["best"], arrays)
        state["ema_count"] = jnp.asarray(arrays["ema_count"])
        state["rng"] = jnp.asarray(arrays["rng"])
        for k in ("epoch", "step", "history", "initial", "status"):
            state[k] = meta[k]
        schedule.load_state_dict(meta["schedule"])
        stopper.load_state_dict(meta["stopper"])
        return state

    # ---- evaluation --------------------------------------------------------------------
    def _evaluate(self, trainable, batches) -> dict:
        metrics, _, _ = run_eval(self._eval_step, trainable, self.aux, batches, self.foundation.atomic_numbers)
        return metrics

    def _eval_params(self, state):
        return state["ema"] if state["ema"] is not None else state["trainable"]

    # ---- the loop ----------------------------------------------------------------------
    def run(self, resume: bool = False, stop_after: int | None = None, callbacks: Sequence[Callable] = ()) -> FinetuneResult:
        """Train until ``config.epochs`` (or early stop); ``stop_after`` epochs in this call at most."""
        cfg = self.config
        state = self._fresh_state()
        schedule = LRSchedule(cfg.optim, self.steps_per_epoch, cfg.epochs)
        stopper = EarlyStopping(cfg.patience)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        resumed = False
        if resume:
            if self.out_dir is None:
                raise FinetuneError("resume=True needs out_dir (where the checkpoint is)")
            if (self.out_dir / CHECKPOINT).exists():
                state = self._load_checkpoint(state, schedule, stopper)
                resumed = True
                self.log(f"resumed from {self.out_dir / CHECKPOINT} at epoch {state['epoch']}")
            else:
                self.log(f"no checkpoint in {self.out_dir}; starting from the beginning")
        elif self.out_dir is not None and (self.out_dir / CHECKPOINT).exists():
            raise FinetuneError(
                f"{self.out_dir} already holds a fine-tuning checkpoint; pass resume=True to continue it "
                "or choose an empty output directory"
            )

        if state["epoch"] == 0 and not state["history"]:
            self._initial_metrics(state)
            if "valid" in state["initial"]:
                self.log(_summary([self._record(0, "valid", state["initial"]["valid"], None, 0.0)]) + " (starting model)")
                if not cfg.allow_worse:  # the starting model is a candidate for the best model
                    stopper.update(state["initial"]["valid"]["loss"], 0)
                    state["best"] = state["trainable"]

        t_train = time.perf_counter()
        frames_done = 0
        epochs_this_call = 0
        if state["status"] == "running" and stopper.should_stop:
            state["status"] = "early_stopped"
        while state["status"] == "running" and state["epoch"] < cfg.epochs:
            if stop_after is not None and epochs_this_call >= stop_after:
                break
            epoch = state["epoch"] + 1
            te = time.perf_counter()
            state["rng"], sub = jax.random.split(state["rng"])
            chunks = epoch_batches(self.fit_samples, self.plan, sub)
            acc = ErrorAccumulator()
            loss_sum, graph_sum = 0.0, 0.0
            bar = _bar(len(chunks), f"epoch {epoch}/{cfg.epochs}", cfg.progress)
            for idx, batch in iterate(self.fit_samples, self.plan, chunks, self.dtype):
                lr = schedule.lr(state["step"], epoch - 1)
                tags = np.zeros(batch.weight.shape[0], np.int32)
                tags[: len(idx)] = self.tags[idx]
                out = self._train_step(
                    state["trainable"], state["opt_state"], state["ema"], state["ema_count"], self.aux,
                    batch, jnp.asarray(tags), jnp.asarray(lr, dtype=self.dtype), self.lr_scales,
                )
                (state["trainable"], state["opt_state"], state["ema"], state["ema_count"], sums, loss, ng) = out
                acc.add(sums)
                loss_v, ng_v = float(loss), float(ng)
                if not math.isfinite(loss_v):
                    msg = (f"epoch {epoch}: the loss became {loss_v}; lower the learning rate (now {lr:.3g}) "
                           "or check the labels and units")
                    if cfg.allow_worse or stopper.best_epoch < 0:
                        raise FinetuneError(msg)
                    self.log(f"warning: {msg}; training stopped, the best model so far is kept")
                    state["status"] = "diverged"
                    break
                loss_sum += loss_v * ng_v
                graph_sum += ng_v
                frames_done += len(idx)
                state["step"] += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss_v:.4g}", lr=f"{lr:.2g}")
            bar.close()
            if state["status"] == "diverged":
                state["epoch"] = epoch
                self._save_checkpoint(state, schedule, stopper)
                break
            train_m = acc.metrics()
            train_m["loss"] = loss_sum / max(graph_sum, 1.0)
            records = [self._record(epoch, "train", train_m, lr, time.perf_counter() - te)]
            eval_params = self._eval_params(state)
            monitor = train_m["loss"]
            if self.valid_batches is not None:
                vm = self._evaluate(eval_params, self.valid_batches)
                records.append(self._record(epoch, "valid", vm, lr, time.perf_counter() - te))
                monitor = vm["loss"]
            if self.hold_batches is not None:
                hm = self._evaluate(eval_params, self.hold_batches)
                records.append(self._record(epoch, "replay_holdout", hm, lr, time.perf_counter() - te))
            schedule.end_epoch(monitor)
            if stopper.update(monitor, epoch):
                state["best"] = eval_params
            state["epoch"] = epoch
            state["history"] += records
            if stopper.should_stop:
                state["status"] = "early_stopped"
            elif epoch >= cfg.epochs:
                state["status"] = "finished"
            self._save_checkpoint(state, schedule, stopper)
            if self.out_dir is not None:
                write_logs(self.out_dir, state["history"])
            self.log(_summary(records))
            epochs_this_call += 1
            for cb in callbacks:
                cb(epoch, records, self)
        if state["status"] == "running" and state["epoch"] >= cfg.epochs:
            state["status"] = "finished"
            self._save_checkpoint(state, schedule, stopper)
        train_s = time.perf_counter() - t_train
        self.timings["train_s"] = self.timings.get("train_s", 0.0) + train_s
        if frames_done and train_s > 0:
            self.timings["frames_per_s"] = frames_done / train_s
        return self._finish(state, stopper, resumed)

    def _initial_metrics(self, state) -> None:
        """Epoch-0 records: the initial model on valid and replay hold-out."""
        init = self._final_metrics(self.trainable_init, self.frozen)
        for split in ("valid", "replay_holdout"):
            if split in init:
                state["history"].append(self._record(0, split, init[split], None, 0.0))
        if self.e0_refitted and "valid" in init:  # the given model, before the E0 refit
            init["valid_given_model"] = self._final_metrics(self.given_trainable, self.given_frozen)["valid"]
        state["initial"] = init

    @staticmethod
    def _record(epoch, split, metrics, lr, t) -> dict:
        rec = {"epoch": epoch, "split": split, "lr": lr, "time_s": t}
        rec.update(metrics)
        return rec

    def _finish(self, state, stopper, resumed) -> FinetuneResult:
        cfg = self.config
        status = state["status"]
        if status == "running":  # stopped by stop_after: leave the checkpoint, write no model
            status = "interrupted"
        selected, final_tr, final_frozen = self._select(state, stopper)
        params = self.split.merge(final_tr, final_frozen)
        potential = self.foundation.with_params(params)
        manifest = self._manifest(state, stopper, status, selected, final_tr, final_frozen, resumed)
        if status != "interrupted":
            self.log(manifest["outcome"])
        if self.out_dir is not None:
            if status != "interrupted":
                save_potential(
                    self.foundation, potential.params, self.out_dir / "model",
                    metadata={"finetuned_from": str(self.sources["model"]), "finetune_manifest": "../manifest.json",
                              "best_epoch": manifest["selected_epoch"]},
                )
                manifest["outputs"]["model"] = str(self.out_dir / "model")
            write_logs(self.out_dir, state["history"])
            try:
                if state["history"]:
                    plot_learning_curve(state["history"], self.out_dir / "learning_curve.png")
                    manifest["outputs"]["learning_curve"] = str(self.out_dir / "learning_curve.png")
            except Exception as exc:  # plotting must never lose a run
                self.log(f"learning-curve plot failed: {exc}")
            ckpt.write_json_atomic(self.out_dir / "manifest.json", manifest)
        return FinetuneResult(potential, potential.params, state["history"], manifest, self.out_dir, status)

    def _select(self, state, stopper) -> tuple[str, dict, dict]:
        """Which params the run returns.

        ``"best"`` (lowest validation loss; ``"start"`` when that is epoch 0, the starting model
        with its E0s) or ``"last"`` (EMA when on).  Unless ``allow_worse``, a result worse on
        validation than the start becomes the start, and when the E0s were refitted the model as
        given (``"given"``) wins too if it is better than everything else.
        """
        cfg = self.config
        init = state["initial"]
        if self.valid_batches is None:
            return "last", self._eval_params(state), self.frozen
        if cfg.keep == "best" and stopper.best_epoch >= 0:
            choice, loss = ("start", init.get("valid", {}).get("loss")) if stopper.best_epoch == 0 else ("best", stopper.best)
            tr = self.trainable_init if choice == "start" else state["best"]
        else:
            last = [r["loss"] for r in state["history"] if r["split"] == "valid" and r["epoch"] == state["epoch"]]
            choice, tr, loss = "last", self._eval_params(state), (last[0] if last else None)
            if not cfg.allow_worse and "valid" in init and state["epoch"] > 0 and not (
                    loss is not None and loss <= init["valid"]["loss"]):
                choice, tr, loss = "start", self.trainable_init, init["valid"]["loss"]
        given = init.get("valid_given_model")
        if not cfg.allow_worse and given is not None and (loss is None or given["loss"] < loss):
            return "given", self.given_trainable, self.given_frozen
        return choice, tr, self.frozen

    def _final_metrics(self, final_tr, final_frozen) -> dict:
        """Errors of the final params with the full model (exact even when training used the cache)."""
        out = {}
        pot = self.foundation
        step = eval_step_fn(("full", pot.module, self.split), self.config.loss, self.n_species, pot)
        for name, batches in (("valid", self.valid_batches), ("replay_holdout", self.hold_batches)):
            if batches is not None:
                out[name], _, _ = run_eval(step, final_tr, final_frozen, batches, pot.atomic_numbers)
        return out

    def _manifest(self, state, stopper, status, selected, final_tr, final_frozen, resumed) -> dict:
        cfg = self.config
        final = self._final_metrics(final_tr, final_frozen) if status != "interrupted" else {}
        sel_epoch = {"start": 0, "given": 0, "best": stopper.best_epoch}.get(selected, state["epoch"])
        if selected in ("start", "given"):
            what = "with its E0s refitted " if selected == "start" and self.e0_refitted else ""
            outcome = (f"kept the starting model {what}(validation loss {final['valid']['loss']:.4g}): no epoch of "
                       f"{state['epoch']} beat it on validation; pass allow_worse=True (--allow-worse) to take a "
                       "trained epoch anyway")
        else:
            outcome = f"selected epoch {sel_epoch} of {state['epoch']} ({selected})"
            if "valid" in state["initial"] and "valid" in final:
                outcome += (f"; validation loss {state['initial']['valid']['loss']:.4g} (start) -> "
                            f"{final['valid']['loss']:.4g}")
        last = {}
        for rec in state["history"]:
            if rec["epoch"] == state["epoch"]:
                last[rec["split"]] = {k: v for k, v in rec.items() if k not in ("epoch", "split")}
        forget = None
        if "replay_holdout" in state["initial"] and "replay_holdout" in final:
            forget = forgetting(state["initial"]["replay_holdout"], final["replay_holdout"])
        return {
            "format": "jaxuft-finetune-manifest",
            "version": 1,
            "created": _now(),
            "status": status,
            "resumed": resumed,
            "versions": _versions(),
            "model": {
                "source": self.sources["model"],
                "family": self.foundation.config.get("family"),
                "dtype": self.dtype.name,
                "n_params": n_scalars(self.params_init),
                "n_trainable": self.n_trainable,
                "freeze": cfg.freeze,
                "trainable_leaves": list(self.split.trainable_paths),
                "param_groups_source": self.groups.source,
                "trunk_cache": cfg.trunk_cache,
                "cache_check": self.cache_report,
                "cache_columns": getattr(getattr(self, "trunk", None), "stats", None),
            },
            "data": {
                "train": {"source": self.sources["train"], "n_frames": len(self.train_frames),
                          "fingerprint": fingerprint(self.train_frames)},
                "valid": {"source": self.sources["valid"] or self.valid_kind, "kind": self.valid_kind,
                          "n_frames": len(self.valid_frames), "fingerprint": fingerprint(self.valid_frames)},
                "replay": {"source": self.sources["replay"], **(self.replay_info or {})} if self.replay_info else None,
                "compiled_shapes": [list(s) for s in self.plan.shapes],
            },
            "e0s": self.e0_info,
            "hyperparameters": cfg.to_dict(),
            "seed": cfg.seed,
            "epochs_run": state["epoch"],
            "steps": state["step"],
            "best_epoch": stopper.best_epoch,
            "best_loss": None if not math.isfinite(stopper.best) else stopper.best,
            "selected": selected if selected != "last" else ("ema" if cfg.optim.ema_decay else "last"),
            "selected_epoch": sel_epoch,
            "kept_starting_model": selected in ("start", "given"),
            "outcome": outcome,
            "validation_note": self.valid_note,
            "metrics": {"initial": state["initial"], "last_epoch": last, "final_full_model": final},
            "forgetting": forget,
            "timings": dict(self.timings),
            "outputs": {
                "checkpoint": str(self.out_dir / CHECKPOINT) if self.out_dir else None,
                "metrics_csv": str(self.out_dir / "metrics.csv") if self.out_dir else None,
            },
        }


# ---- entry point -----------------------------------------------------------------------
def finetune(
    model,
    train,
    *,
    valid=None,
    replay=None,
    config: FinetuneConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    callbacks: Sequence[Callable] = (),
    log: Callable[[str], None] | None = None,
    **overrides,
) -> FinetuneResult:
    """Fine-tune ``model`` on ``train`` and return the result (see module docstring).

    model: a Potential or anything :func:`jaxuft.load` accepts.
    train/valid: extxyz path(s), ``Atoms`` list or :class:`Frame` list (valid: split off by seed if None).
    replay: None, ``"generate"`` (rattled bulk crystals of the training elements), or structures
      (path/Atoms) to pseudo-label with the initial model.
    overrides: FinetuneConfig fields (``loss_forces_weight=10`` / ``optim_lr=1e-3`` reach the nested ones).
    stop_after: train at most this many epochs in this call (the checkpoint lets ``resume`` continue).
    """
    cfg = (config or FinetuneConfig()).replace(**overrides) if overrides else (config or FinetuneConfig())
    trainer = Trainer(model, train, valid=valid, replay=replay, config=cfg, out_dir=out_dir, log=log)
    return trainer.run(resume=resume, stop_after=stop_after, callbacks=callbacks)


# ---- small utilities -------------------------------------------------------------------
def _is_potential(x) -> bool:
    from ..potential import Potential

    return isinstance(x, Potential)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _default_log(progress: bool):
    if not progress:
        return lambda msg: None
    from tqdm.auto import tqdm

    return lambda msg: tqdm.write(msg, file=sys.stderr)


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, file=sys.stderr, dynamic_ncols=True)


def _summary(records) -> str:
    parts = []
    for r in records:
        parts.append(
            f"{r['split']}: loss {r.get('loss', float('nan')):.4g} "
            f"E {r.get('energy_rmse', float('nan')):.2f} meV/at F {r.get('forces_rmse', float('nan')):.1f} meV/Å"
        )
    return f"epoch {records[0]['epoch']}: " + " | ".join(parts)
