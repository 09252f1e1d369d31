"""The fine-tuning loop: a typed training state (``flax.struct``), epochs of optax steps, exact resume."""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from . import checkpoint as ckpt
from .data import collate, fingerprint
from .evaluation import run_eval
from .history import write_logs
from .loss import ErrorAccumulator
from .optim import EarlyStopping, LRSchedule
from .outputs import CHECKPOINT, FinetuneResult, _now
from .setup import FinetuneError, _bar, _tree_hash


@struct.dataclass
class TrainState:
    """Everything a run needs to continue bit for bit: device arrays (pytree leaves) and host fields.

    ``trainable``/``ema``/``best``: ``{path: array}`` of the trainable leaves; ``opt_state``: optax's;
    ``rng``: the key the next epoch's shuffle splits from.  Saved in one atomic checkpoint file.
    """

    trainable: Any
    opt_state: Any
    ema: Any
    ema_count: jax.Array
    best: Any
    rng: jax.Array
    epoch: int = struct.field(pytree_node=False, default=0)
    step: int = struct.field(pytree_node=False, default=0)
    status: str = struct.field(pytree_node=False, default="running")
    history: list = struct.field(pytree_node=False, default_factory=list)
    initial: dict = struct.field(pytree_node=False, default_factory=dict)

    ARRAYS = ("trainable", "opt_state", "ema", "best")
    HOST = ("epoch", "step", "status", "history", "initial")

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {}
        for name in self.ARRAYS:
            if getattr(self, name) is not None:
                arrays.update(ckpt.tree_to_arrays(name, getattr(self, name)))
        arrays["ema_count"] = np.asarray(self.ema_count)
        arrays["rng"] = np.asarray(self.rng)
        return arrays

    def host_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.HOST}

    def restore(self, arrays: dict, meta: dict) -> "TrainState":
        """This state (the template) with the checkpoint's arrays and host fields (names/shapes checked)."""
        trees = {n: ckpt.arrays_to_tree(n, getattr(self, n), arrays) for n in self.ARRAYS if getattr(self, n) is not None}
        return self.replace(**trees, ema_count=jnp.asarray(arrays["ema_count"]), rng=jnp.asarray(arrays["rng"]),
                            **{k: meta[k] for k in self.HOST})


class TrainerLoop:
    """Loop half of :class:`~jaxuft.finetune.trainer.Trainer`: state, checkpoints, epochs."""

    # ---- state -------------------------------------------------------------------------
    def _fresh_state(self) -> TrainState:
        cfg = self.config
        tr = self.trainable_init
        return TrainState(
            trainable=tr,
            opt_state=self.optimizer.init(tr),
            ema=tr if cfg.optim.ema_decay is not None else None,
            ema_count=jnp.zeros((), jnp.int32),
            best=tr,
            rng=jax.random.PRNGKey(cfg.seed),
        )

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

    def _save_checkpoint(self, state: TrainState, schedule, stopper) -> None:
        if self.out_dir is None:
            return
        meta = {
            **state.host_dict(),
            "schedule": schedule.state_dict(),
            "stopper": stopper.state_dict(),
            "fingerprint": self.run_fingerprint(),
            "config": self.config.to_dict(),
            "saved": _now(),
        }
        ckpt.save(self.out_dir / CHECKPOINT, state.to_arrays(), meta)

    def _load_checkpoint(self, state: TrainState, schedule, stopper) -> TrainState:
        arrays, meta = ckpt.load(self.out_dir / CHECKPOINT)
        if meta["fingerprint"] != self.run_fingerprint():
            raise ckpt.CheckpointMismatch(
                f"{self.out_dir / CHECKPOINT} belongs to a different run (data, model, trainable leaves or "
                "settings other than epochs/patience differ); use another output directory or resume=False"
            )
        schedule.load_state_dict(meta["schedule"])
        stopper.load_state_dict(meta["stopper"])
        return state.restore(arrays, meta)

    # ---- evaluation --------------------------------------------------------------------
    def _evaluate(self, trainable, batches) -> dict:
        metrics, _, _ = run_eval(self._eval_step, trainable, self._aux_for(batches, self.aux), batches,
                                 self.foundation.atomic_numbers)
        return metrics

    @staticmethod
    def _eval_params(state: TrainState):
        return state.ema if state.ema is not None else state.trainable

    # ---- the loop ----------------------------------------------------------------------
    def _begin(self, resume: bool, state: TrainState, schedule, stopper) -> tuple[TrainState, bool]:
        """Resume from the checkpoint, or refuse another run's; epoch 0 (the starting model) on a fresh start."""
        cfg = self.config
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        resumed = False
        if resume:
            if self.out_dir is None:
                raise FinetuneError("resume=True needs out_dir (where the checkpoint is)")
            if (self.out_dir / CHECKPOINT).exists():
                state = self._load_checkpoint(state, schedule, stopper)
                resumed = True
                self.log(f"resumed from {self.out_dir / CHECKPOINT} at epoch {state.epoch}")
            else:
                self.log(f"no checkpoint in {self.out_dir}; starting from the beginning")
        elif self.out_dir is not None and (self.out_dir / CHECKPOINT).exists():
            raise FinetuneError(
                f"{self.out_dir} already holds a fine-tuning checkpoint; pass resume=True (--resume) to continue "
                "it or choose an empty output directory"
            )
        if state.epoch == 0 and not state.history:
            state = self._initial_metrics(state)
            if "valid" in state.initial:
                self.log(_summary([self._record(0, "valid", state.initial["valid"], None, 0.0)]) + " (starting model)")
                if not cfg.allow_worse:  # the starting model is a candidate for the best model
                    stopper.update(state.initial["valid"]["loss"], 0)
                    state = state.replace(best=state.trainable)
        return state, resumed

    def run(self, resume: bool = False, stop_after: int | None = None, callbacks: Sequence[Callable] = ()) -> FinetuneResult:
        """Train until ``config.epochs`` (or early stop); ``stop_after`` epochs in this call at most."""
        cfg = self.config
        schedule = LRSchedule(cfg.optim, self.steps_per_epoch, cfg.epochs)
        stopper = EarlyStopping(cfg.patience)
        state, resumed = self._begin(resume, self._fresh_state(), schedule, stopper)
        t_train = time.perf_counter()
        frames_done = 0
        epochs_this_call = 0
        if state.status == "running" and stopper.should_stop:
            state = state.replace(status="early_stopped")
        while state.status == "running" and state.epoch < cfg.epochs:
            if stop_after is not None and epochs_this_call >= stop_after:
                break
            state, records, n = self._epoch(state, schedule, stopper)
            frames_done += n
            self._save_checkpoint(state, schedule, stopper)
            if state.status == "diverged":
                break
            if self.out_dir is not None:
                write_logs(self.out_dir, state.history)
            self.log(_summary(records))
            epochs_this_call += 1
            for cb in callbacks:
                cb(state.epoch, records, self)
        if state.status == "running" and state.epoch >= cfg.epochs:
            state = state.replace(status="finished")
            self._save_checkpoint(state, schedule, stopper)
        train_s = time.perf_counter() - t_train
        self.timings["train_s"] = self.timings.get("train_s", 0.0) + train_s
        if frames_done and train_s > 0:
            self.timings["frames_per_s"] = frames_done / train_s
        return self._finish(state, stopper, resumed)

    def _epoch(self, state: TrainState, schedule, stopper) -> tuple[TrainState, list, int]:
        """One epoch of optax steps, then validation, schedule, early stopping and the best params."""
        cfg = self.config
        epoch = state.epoch + 1
        te = time.perf_counter()
        rng, sub = jax.random.split(state.rng)
        state = state.replace(rng=rng)
        chunks = self._epoch_chunks(sub)
        acc = ErrorAccumulator()
        loss_sum, graph_sum, frames, step = 0.0, 0.0, 0, state.step
        tr, opt_state, ema, ema_count = state.trainable, state.opt_state, state.ema, state.ema_count
        bar = _bar(len(chunks), f"epoch {epoch}/{cfg.epochs}", cfg.progress)
        lr = schedule.lr(step, epoch - 1)
        for grp, idx in chunks:
            lr = schedule.lr(step, epoch - 1)
            if len(idx) <= self.plan.batch_size:  # one pass
                batch = collate([self.fit_samples[i] for i in idx], self.plan.capacity(grp), self.dtype)
                tr, opt_state, ema, ema_count, sums, loss, ng = self._train_step(
                    tr, opt_state, ema, ema_count, self.aux,
                    batch, jnp.asarray(self._tags(idx)), jnp.asarray(lr, dtype=self.dtype), self.lr_scales,
                )
                loss_v, ng_v = float(loss), float(ng)
            else:  # micro-batches: weighted gradients add up to the batch's, one optax update
                tr, opt_state, ema, ema_count, sums, loss_v = self._micro_step(tr, opt_state, ema, ema_count, grp,
                                                                              idx, lr)
                ng_v = float(len(idx))
            if not math.isfinite(loss_v):
                msg = (f"epoch {epoch}: the loss became {loss_v}; lower the learning rate (now {lr:.3g}) "
                       "or check the labels and units")
                if cfg.allow_worse or stopper.best_epoch < 0:
                    raise FinetuneError(msg)
                self.log(f"warning: {msg}; training stopped, the best model so far is kept")
                bar.close()
                return state.replace(status="diverged", epoch=epoch), [], frames
            acc.add(sums)
            loss_sum += loss_v * ng_v
            graph_sum += ng_v
            frames += len(idx)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_v:.4g}", lr=f"{lr:.2g}")
        bar.close()
        state = state.replace(trainable=tr, opt_state=opt_state, ema=ema, ema_count=ema_count, step=step)
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
            state = state.replace(best=eval_params)
        status = state.status
        if stopper.should_stop:
            status = "early_stopped"
        elif epoch >= cfg.epochs:
            status = "finished"
        return state.replace(epoch=epoch, history=state.history + records, status=status), records, frames

    def _tags(self, idx) -> np.ndarray:
        tags = np.zeros(self.plan.batch_size + 1, np.int32)
        tags[: len(idx)] = self.tags[idx]
        return tags

    def _micro_step(self, tr, opt_state, ema, ema_count, grp, idx, lr):
        """One optax update from the micro-batches of batch ``idx`` (gradients summed with batch weights)."""
        m = self.plan.batch_size
        parts = [idx[k : k + m] for k in range(0, len(idx), m)]
        n_nodes = float(sum(self.fit_samples[i].n_nodes for i in idx))
        grads = sums = None
        loss = 0.0
        for part in parts:
            batch = collate([self.fit_samples[i] for i in part], self.plan.capacity(grp), self.dtype)
            wg = len(part) / len(idx)
            wn = sum(self.fit_samples[i].n_nodes for i in part) / n_nodes
            g, s, lv = self._grad_step(tr, self.aux, batch, jnp.asarray(self._tags(part)),
                                       jnp.asarray(wg, self.dtype), jnp.asarray(wn, self.dtype))
            grads = g if grads is None else jax.tree_util.tree_map(jnp.add, grads, g)
            sums = s if sums is None else jax.tree_util.tree_map(jnp.add, sums, s)
            loss += float(lv)
        tr, opt_state, ema, ema_count = self._apply_step(tr, opt_state, ema, ema_count, grads,
                                                         jnp.asarray(lr, dtype=self.dtype), self.lr_scales)
        return tr, opt_state, ema, ema_count, sums, loss

    def _initial_metrics(self, state: TrainState) -> TrainState:
        """Epoch-0 records: the starting model on valid and replay hold-out (and the given model, if E0s changed)."""
        init = self._final_metrics(self.trainable_init, self.frozen)
        history = list(state.history)
        for split in ("valid", "replay_holdout"):
            if split in init:
                history.append(self._record(0, split, init[split], None, 0.0))
        if self.e0_refitted and "valid" in init:  # the given model, before the E0 refit
            init["valid_given_model"] = self._final_metrics(self.given_trainable, self.given_frozen)["valid"]
        return state.replace(history=history, initial=init)

    @staticmethod
    def _record(epoch, split, metrics, lr, t) -> dict:
        rec = {"epoch": epoch, "split": split, "lr": lr, "time_s": t}
        rec.update(metrics)
        return rec


def _summary(records) -> str:
    parts = []
    for r in records:
        parts.append(
            f"{r['split']}: loss {r.get('loss', float('nan')):.4g} "
            f"E {r.get('energy_rmse', float('nan')):.2f} meV/at F {r.get('forces_rmse', float('nan')):.1f} meV/Å"
        )
    return f"epoch {records[0]['epoch']}: " + " | ".join(parts)
