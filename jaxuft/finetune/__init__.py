"""Fine-tuning of jaxuft potentials with optax.

    from jaxuft.finetune import finetune, FinetuneConfig, evaluate

    result = finetune("sevennet-0", "train.xyz", out_dir="ft",
                      config=FinetuneConfig(epochs=50, freeze="readouts", e0s="e0s.json"),
                      replay="generate")
    result.potential                     # fine-tuned Potential (MD reuses compiled code)
    finetune(..., out_dir="ft", resume=True)   # continue an interrupted run exactly
    print(format_report(evaluate(result.potential, "test.xyz")))

    res = finetune_potential(pot, atoms_list)   # the workflows' call: same module and dtype back

Modules: ``config`` (pydantic settings and presets), ``data`` (frames, checks, padded
batches), ``loss`` (weighted MSE/Huber), ``optim`` (optax, schedules, EMA, early
stopping), ``params`` (what trains, parameter groups), ``e0s``, ``trunk`` (frozen-trunk
cache), ``replay`` (forgetting), ``checkpoint``, ``history`` (CSV/JSON/plot),
``evaluation``, ``multihead`` (shared trunk, "ft" and "foundation" heads), ``setup`` / ``step`` / ``loop`` / ``outputs`` (the trainer's parts),
``trainer`` (``Trainer``, ``finetune``), ``api`` (``finetune_potential``), ``cli``.
"""

import importlib

#: public name -> submodule (imported lazily, so ``jaxuft --help`` stays fast)
_EXPORTS = {
    "DataError": "data",
    "Frame": "data",
    "read_frames": "data",
    "E0Error": "e0s",
    "EvalReport": "evaluation",
    "evaluate": "evaluation",
    "format_report": "evaluation",
    "LossConfig": "config",
    "PRESETS": "config",
    "OptimConfig": "config",
    "FreezeError": "params",
    "HeadError": "multihead",
    "load_heads": "multihead",
    "select_trainable": "params",
    "FinetuneConfig": "config",
    "FinetuneError": "trainer",
    "FinetuneResult": "trainer",
    "Trainer": "trainer",
    "TrainState": "loop",
    "finetune": "trainer",
    "finetune_potential": "api",
    "save_potential": "trainer",
    "TrunkCacheError": "trunk",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DataError",
    "E0Error",
    "EvalReport",
    "FinetuneConfig",
    "FinetuneError",
    "FinetuneResult",
    "Frame",
    "FreezeError",
    "HeadError",
    "LossConfig",
    "OptimConfig",
    "PRESETS",
    "Trainer",
    "TrainState",
    "TrunkCacheError",
    "evaluate",
    "finetune",
    "finetune_potential",
    "format_report",
    "load_heads",
    "read_frames",
    "save_potential",
    "select_trainable",
]
