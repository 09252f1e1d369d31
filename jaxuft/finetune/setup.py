"""Fine-tuning set-up: model, data and validation split, E0s, trainable leaves, replay, trunk cache, compiled steps."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import JaxuftError
from .config import FinetuneConfig
from .data import (
    DataError,
    FixedBatches,
    ShapePlan,
    batch_indices,
    collate,
    epoch_batches,
    fingerprint,
    prepare,
    read_frames,
    split_train_valid,
)
from .e0s import E0_MODES, E0Error, describe, find_e0_leaf, lstsq_e0s, model_e0s, normalise_e0s, read_e0s, set_e0s
from .evaluation import eval_step_fn
from .optim import make_optimizer
from .params import ParamSplit, lr_scales, n_scalars, param_groups, select_trainable
from .multihead import SEP, MultiheadSplit, epoch_batches_by_head, head_leaves
from .replay import generate_replay, pseudo_label, screen, split_holdout
from .step import apply_step_fn, grad_step_fn, train_step_fn
from .trunk import TrunkCache, affine_leaves, split_cache


class FinetuneError(JaxuftError, ValueError):
    """Fine-tuning cannot start or continue (bad settings, mismatched checkpoint...)."""



def _tree_hash(tree) -> str:
    h = hashlib.sha256()
    paths_leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for p, x in paths_leaves:
        h.update(jax.tree_util.keystr(p).encode())
        h.update(np.ascontiguousarray(np.asarray(x)).tobytes())
    return h.hexdigest()



def _source_desc(src) -> Any:
    if src is None:
        return None
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, (list, tuple)) and src and all(isinstance(x, (str, os.PathLike)) for x in src):
        return [str(x) for x in src]
    return f"<{len(src) if hasattr(src, '__len__') else '?'} in-memory structures>"



class TrainerSetup:
    """Set-up half of :class:`~jaxuft.finetune.trainer.Trainer`: data, E0s, trainable leaves, replay, cache, steps."""

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
        if cfg.multihead and cfg.trunk_cache:
            raise FinetuneError("multihead=True cannot use the frozen-trunk cache (trunk_cache); turn one off")
        if cfg.multihead and (replay is None or replay is False):
            raise FinetuneError("multihead=True needs replay frames for the foundation head: replay='generate' "
                                "(--replay generate) or a file of structures")
        self.log = log or _default_log(cfg.progress)
        self.timings: dict = {}
        self.sources = {"model": _source_desc(model) if not _is_potential(model) else "<Potential>",
                        "train": _source_desc(train), "valid": _source_desc(valid), "replay": _source_desc(replay)}

        # -- model (a set-up bar with rate and ETA over the stages; their times go to the manifest)
        self._setup_bar = _bar(6, "set-up", cfg.progress, unit="stage")
        self._stage_t = time.perf_counter()
        self.timings["setup_stages_s"] = {}
        self._stage("model")
        self.foundation = self._load_model(model, cfg.dtype)
        pot = self.foundation
        self.n_species = len(pot.atomic_numbers)
        self.dtype = pot.dtype

        # -- data
        self._stage("data: read frames, neighbour lists")
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
        # micro-batches: at most micro_batch_atoms atoms per gradient pass (whole frames); the padded
        # shape of every compiled pass (and evaluation) holds `micro` frames, batches of batch_size
        # frames are split and their gradients added (the same update)
        largest = max(s.n_nodes for s in self.train_samples + self.valid_samples)
        self.micro = max(1, min(cfg.batch_size, cfg.micro_batch_atoms // largest))
        self.chunk_plan = ShapePlan(cfg.batch_size)  # which frames form a batch
        self.plan = ShapePlan(self.micro).add(self.train_samples).add(self.valid_samples)
        self._probe = collate(self.train_samples[: self.micro], self.plan.capacity(), self.dtype)

        # -- E0s and initial params
        self._stage(f"E0s ({cfg.e0s if isinstance(cfg.e0s, str) else 'given'})")
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
        self.multihead = bool(cfg.multihead)
        if self.multihead:
            self.head_paths = head_leaves(self.groups, self.params_init)
            self.split = MultiheadSplit.create(self.params_init, trainable_paths, self.head_paths)
            # "ft" head with the refitted E0s; "foundation" head as given (it reproduces the replay labels)
            self.trainable_init, self.frozen = self.split.split(self.split.expand(self.params_init, pot.params))
            self.given_trainable, self.given_frozen = self.split.split(self.split.expand(pot.params, pot.params))
        else:
            self.split = ParamSplit.create(self.params_init, trainable_paths)
            self.trainable_init, self.frozen = self.split.split(self.params_init)
            # the model as given (before any E0 refit): also a candidate unless allow_worse
            self.given_trainable, self.given_frozen = self.split.split(pot.params)
        self.e0_refitted = _tree_hash(pot.params) != _tree_hash(self.params_init)
        self.n_trainable = n_scalars(self.trainable_init)

        # -- replay
        self._stage("replay" if replay is not None and replay is not False else "no replay")
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
        self._stage("frozen-trunk cache" if cfg.trunk_cache else "full model")
        self.cache_report = None
        if cfg.trunk_cache:
            tc0 = time.perf_counter()
            self._build_cache()
            self.timings["cache_s"] = time.perf_counter() - tc0
            self.mode = ("cache",)
            self.aux = self.trunk.theta0
        elif self.multihead:
            self.mode = ("multihead", pot.module, self.split)
            self.aux = self.frozen
        else:
            self.mode = ("full", pot.module, self.split)
            self.aux = self.frozen

        # -- optimiser and compiled steps
        self._stage("optimiser and batches")
        self.optimizer = make_optimizer(cfg.optim)
        self._train_step = train_step_fn(self.mode, cfg.loss, cfg.optim, self.n_species)
        if self.micro < cfg.batch_size:
            self._grad_step = grad_step_fn(self.mode, cfg.loss, self.n_species)
            self._apply_step = apply_step_fn(cfg.optim)
        base = {k: k.partition(SEP)[2] if SEP in k else k for k in self.split.trainable_paths}
        scales = lr_scales(sorted(set(base.values())), self.groups, cfg.optim.group_lr)
        self.lr_scales = {k: jnp.asarray(scales[b], self.dtype) for k, b in base.items()}
        self._eval_step = eval_step_fn(self.mode, cfg.loss, self.n_species, pot)
        self.valid_batches = FixedBatches(self.valid_samples, self.plan, self.dtype) if self.valid_samples else None
        self.hold_batches = (
            FixedBatches(self.replay_hold_samples, self.plan, self.dtype) if self.replay_hold_samples else None
        )
        self.steps_per_epoch = len(self._epoch_chunks(jax.random.PRNGKey(0)))
        self._stage(None)
        self.timings["setup_s"] = time.perf_counter() - t0

    # ---- heads ---------------------------------------------------------------------------
    def _epoch_chunks(self, key):
        """The shuffled batches of one epoch (multihead: each batch of one head's frames)."""
        if self.multihead:
            return epoch_batches_by_head(self.fit_samples, self.tags, self.chunk_plan, key)
        return epoch_batches(self.fit_samples, self.chunk_plan, key)

    def _aux_for(self, batches, frozen):
        """The eval step's aux for ``batches``: frozen leaves (multihead: with the head of those frames)."""
        if not self.multihead:
            return frozen
        return frozen, (1 if batches is self.hold_batches else 0)

    def _merge(self, trainable, frozen):
        """The model's params tree (multihead: with the "ft" head)."""
        return self.split.merge(trainable, frozen, "ft") if self.multihead else self.split.merge(trainable, frozen)

    # ---- setup pieces ------------------------------------------------------------------
    def _stage(self, name: str | None) -> None:
        """Close the running set-up stage (its time to ``timings``) and start ``name`` (None: done)."""
        now = time.perf_counter()
        prev = getattr(self, "_stage_name", None)
        if prev is not None:
            self.timings["setup_stages_s"][prev] = now - self._stage_t
            self._setup_bar.update(1)
        self._stage_name, self._stage_t = name, now
        if name is None:
            self._setup_bar.close()
        else:
            self._setup_bar.set_postfix_str(name)

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
        labeller = self.params_init
        if cfg.multihead:  # the foundation head keeps the model's own E0s: label with the model as given
            pot, labeller = self.foundation, self.foundation.params
        e0s = model_e0s(pot, labeller, self.e0_path)
        limits = dict(max_force=cfg.replay_max_force, max_energy=cfg.replay_max_energy, e0s=e0s)
        dropped: list = []
        if isinstance(replay, str) and replay == "generate":
            zs = sorted({int(z) for s in self.train_samples for z in s.numbers})
            try:
                frames, dropped = generate_replay(pot, labeller, zs, cfg.replay_count, cfg.seed,
                                                  batch_size=self.plan.batch_size, weight=cfg.replay_weight,
                                                  plan=self.plan, **limits)
            except RuntimeError as exc:
                raise FinetuneError(str(exc)) from None
            kind = "generated"
        else:
            if cfg.replay_labels == "file":
                frames = read_frames(replay, require=("energy",), name="replay data", **keys)
                for f in frames:
                    f.weight = cfg.replay_weight
            else:
                raw = read_frames(replay, require=(), name="replay data", **keys)
                frames = pseudo_label(pot, labeller, [f.atoms for f in raw], batch_size=self.plan.batch_size,
                                      weight=cfg.replay_weight, source="replay", plan=self.plan)
                frames, dropped = screen(frames, **limits)
                if not frames:
                    raise FinetuneError(
                        f"replay: all {len(raw)} structures have pseudo-labels beyond the limits (replay_max_force "
                        f"{cfg.replay_max_force}, replay_max_energy {cfg.replay_max_energy}): {dropped[0]['reason']}")
            kind = "file"
        if dropped:
            self.log(f"replay: dropped {len(dropped)} structure(s) whose pseudo-labels are beyond the limits "
                     f"(e.g. {dropped[0]['formula']}: {dropped[0]['reason']})")
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
            "dropped": len(dropped),
            "dropped_examples": dropped[:5],
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

def _is_potential(x) -> bool:
    from ..potential import Potential

    return isinstance(x, Potential)



def _default_log(progress: bool):
    if not progress:
        return lambda msg: None
    from tqdm.auto import tqdm

    return lambda msg: tqdm.write(msg, file=sys.stderr)



def _bar(total: int, desc: str, enabled: bool, unit: str = "batch"):
    """A progress bar with rate and ETA (``jaxuft.progress``); off when ``enabled`` is False."""
    from ..progress import progress

    return progress(total=total, desc=desc, unit=unit, enabled=None if enabled else False, leave=False)


