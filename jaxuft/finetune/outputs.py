"""Fine-tuning outputs: which params a run returns (the starting model is a candidate), manifest, model/ and logs."""

from __future__ import annotations

import datetime as _dt
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from . import checkpoint as ckpt
from .data import fingerprint
from .evaluation import eval_step_fn, run_eval
from .history import plot_learning_curve, write_logs
from .params import n_scalars
from .replay import forgetting

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class FinetuneResult:
    potential: Any
    params: Any
    history: list
    manifest: dict
    out_dir: Path | None
    status: str  # "finished" | "early_stopped" | "diverged" | "interrupted"
    heads: dict | None = None  # multihead: {head: {leaf path: array}} ("ft" is merged into ``potential``)

    def head_potential(self, head: str):
        """``potential`` with the leaves of ``head`` ("ft" or "foundation") of a multihead fine-tune."""
        from .multihead import HeadError, with_head

        if self.heads is None:
            raise HeadError("this fine-tune has one head; multihead=True (--multihead) trains two")
        return with_head(self.potential, self.heads, head)

    @property
    def metrics(self) -> dict:
        return self.manifest.get("metrics", {})

    @property
    def kept_starting_model(self) -> bool:
        """True when no trained epoch beat the starting model on validation (it was returned)."""
        return bool(self.manifest.get("kept_starting_model"))

    @property
    def e0s(self) -> dict | None:
        """The per-element reference energies the result uses, ``{symbol: eV}``."""
        return (self.manifest.get("e0s") or {}).get("used")



def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for name in ("jax", "jaxlib", "optax", "flax", "numpy", "ase", "jaxuft"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out



def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")



def save_potential(potential, params, dest, metadata: dict | None = None, overwrite: bool = True) -> Path:
    """Write ``potential``'s architecture with ``params`` in the jaxuft model format."""
    from ..checkpoints.format import save_model

    tree = {"params": jax.tree_util.tree_map(lambda x: np.asarray(x), params)}
    constants = getattr(potential, "constants", None)
    if constants:
        tree["constants"] = constants
    return Path(save_model(dest, potential.config, tree, metadata=metadata, overwrite=overwrite))




class TrainerOutputs:
    """Outputs half of :class:`~jaxuft.finetune.trainer.Trainer` (selection, manifest, files)."""

    def _finish(self, state, stopper, resumed) -> FinetuneResult:
        status = state.status
        if status == "running":  # stopped by stop_after: leave the checkpoint, write no model
            status = "interrupted"
        selected, final_tr, final_frozen = self._select(state, stopper)
        params = self._merge(final_tr, final_frozen)
        potential = self.foundation.with_params(params)
        heads = self.split.heads(final_tr, final_frozen) if self.multihead else None
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
                if heads is not None:
                    from .multihead import HEADS_FILE, save_heads

                    save_heads(self.out_dir / "model" / HEADS_FILE, heads, {"merged": "ft"})
                    manifest["outputs"]["heads"] = str(self.out_dir / "model" / HEADS_FILE)
            write_logs(self.out_dir, state.history)
            try:
                if state.history:
                    plot_learning_curve(state.history, self.out_dir / "learning_curve.png")
                    manifest["outputs"]["learning_curve"] = str(self.out_dir / "learning_curve.png")
            except Exception as exc:  # plotting must never lose a run
                self.log(f"learning-curve plot failed: {exc}")
            ckpt.write_json_atomic(self.out_dir / "manifest.json", manifest)
        return FinetuneResult(potential, potential.params, state.history, manifest, self.out_dir, status, heads)

    def _select(self, state, stopper) -> tuple[str, dict, dict]:
        """Which params the run returns.

        ``"best"`` (lowest validation loss; ``"start"`` when that is epoch 0, the starting model
        with its E0s) or ``"last"`` (EMA when on).  Unless ``allow_worse``, a result worse on
        validation than the start becomes the start, and when the E0s were refitted the model as
        given (``"given"``) wins too if it is better than everything else.
        """
        cfg = self.config
        init = state.initial
        if self.valid_batches is None:
            return "last", self._eval_params(state), self.frozen
        if cfg.keep == "best" and stopper.best_epoch >= 0:
            choice, loss = ("start", init.get("valid", {}).get("loss")) if stopper.best_epoch == 0 else ("best", stopper.best)
            tr = self.trainable_init if choice == "start" else state.best
        else:
            last = [r["loss"] for r in state.history if r["split"] == "valid" and r["epoch"] == state.epoch]
            choice, tr, loss = "last", self._eval_params(state), (last[0] if last else None)
            if not cfg.allow_worse and "valid" in init and state.epoch > 0 and not (
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
        mode = ("multihead" if self.multihead else "full", pot.module, self.split)
        step = eval_step_fn(mode, self.config.loss, self.n_species, pot)
        for name, batches in (("valid", self.valid_batches), ("replay_holdout", self.hold_batches)):
            if batches is not None:
                out[name], _, _ = run_eval(step, final_tr, self._aux_for(batches, final_frozen), batches,
                                           pot.atomic_numbers)
        return out

    def _manifest(self, state, stopper, status, selected, final_tr, final_frozen, resumed) -> dict:
        cfg = self.config
        final = self._final_metrics(final_tr, final_frozen) if status != "interrupted" else {}
        sel_epoch = {"start": 0, "given": 0, "best": stopper.best_epoch}.get(selected, state.epoch)
        if selected in ("start", "given"):
            what = "with its E0s refitted " if selected == "start" and self.e0_refitted else ""
            outcome = (f"kept the starting model {what}(validation loss {final['valid']['loss']:.4g}): no epoch of "
                       f"{state.epoch} beat it on validation; pass allow_worse=True (--allow-worse) to take a "
                       "trained epoch anyway")
        else:
            outcome = f"selected epoch {sel_epoch} of {state.epoch} ({selected})"
            if "valid" in state.initial and "valid" in final:
                outcome += (f"; validation loss {state.initial['valid']['loss']:.4g} (start) -> "
                            f"{final['valid']['loss']:.4g}")
        last = {}
        for rec in state.history:
            if rec["epoch"] == state.epoch:
                last[rec["split"]] = {k: v for k, v in rec.items() if k not in ("epoch", "split")}
        forget = None
        if "replay_holdout" in state.initial and "replay_holdout" in final:
            forget = forgetting(state.initial["replay_holdout"], final["replay_holdout"])
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
                "multihead": {"heads": ["ft", "foundation"], "head_leaves": list(self.head_paths),
                              "merged_into_model": "ft", "foundation_head_trains_on": "replay frames"}
                if self.multihead else None,
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
                "micro_batch_frames": self.micro,
            },
            "e0s": {**self.e0_info, "used": self.e0_info["model"], "note": "the given model (its own E0s) was kept"}
            if selected == "given" else self.e0_info,
            "hyperparameters": cfg.to_dict(),
            "seed": cfg.seed,
            "epochs_run": state.epoch,
            "steps": state.step,
            "best_epoch": stopper.best_epoch,
            "best_loss": None if not math.isfinite(stopper.best) else stopper.best,
            "selected": selected if selected != "last" else ("ema" if cfg.optim.ema_decay else "last"),
            "selected_epoch": sel_epoch,
            "kept_starting_model": selected in ("start", "given"),
            "outcome": outcome,
            "validation_note": self.valid_note,
            "metrics": {"initial": state.initial, "last_epoch": last, "final_full_model": final},
            "forgetting": forget,
            "timings": dict(self.timings),
            "outputs": {
                "checkpoint": str(self.out_dir / CHECKPOINT) if self.out_dir else None,
                "metrics_csv": str(self.out_dir / "metrics.csv") if self.out_dir else None,
            },
        }


