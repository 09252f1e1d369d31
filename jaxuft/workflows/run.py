"""``run_workflow``: the protocols, the evaluation, the result tables and the report, resumable stage by stage."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from ..config import ConfigError, load_config, validate_config
from ..fileio import atomic_write_json
from ..progress import get_logger
from .config import WorkflowConfig
from .evaluate import run_evaluation
from .naive import run_naive, run_nonperiodic
from .periodic import run_periodic
from .results import collect_results
from .runs import RunDir
from .steps import Context

log = get_logger("jaxuft.workflows")

__all__ = ["run_workflow", "load_workflow_config", "RUNNERS"]

RUNNERS = {"naive": run_naive, "periodic": run_periodic, "nonperiodic": run_nonperiodic}


def load_workflow_config(source) -> tuple[WorkflowConfig, Path]:
    """A validated config and the folder its relative paths are taken from (path, dict, or WorkflowConfig)."""
    if isinstance(source, WorkflowConfig):
        return source, Path.cwd()
    if isinstance(source, dict):
        return validate_config(WorkflowConfig, source, "config"), Path.cwd()
    path = Path(source)
    return load_config(WorkflowConfig, path), path.resolve().parent


def _raise_on_term(signum, frame):  # SIGTERM behaves like Ctrl-C: stages are atomic, the ledger stays consistent
    raise KeyboardInterrupt(f"signal {signum}")


def run_workflow(config=None, run_dir=None, *, resume: bool = False, overwrite: bool = False, report: bool = True) -> dict:
    """Run the configured protocols and evaluation into ``run_dir``; returns the result tables.

    ``resume=True`` with ``config=None`` continues ``run_dir`` with the config saved there.
    """
    run_dir = Path(run_dir)
    base_dir = Path.cwd()
    if config is None:
        if not resume:
            raise ConfigError("give a config (or --resume RUN_DIR to continue a run)")
        saved = run_dir / "config.json"
        if not saved.exists():
            raise ConfigError(f"{run_dir} holds no config.json: it is not a jaxuft run directory")
        cfg = load_config(WorkflowConfig, saved)
        base_dir = Path(_read_json(run_dir / "manifest.json").get("config_dir", base_dir))
    else:
        cfg, base_dir = load_workflow_config(config)
        if resume and (run_dir / "config.json").exists():
            old = load_config(WorkflowConfig, run_dir / "config.json")
            if old.model_dump() != cfg.model_dump():
                raise ConfigError(f"{run_dir} was started with another config; resume it without a config "
                                  "(jaxuft run --resume RUN) or choose a new run directory")
    run = RunDir(run_dir, resume=resume, overwrite=overwrite, kind="workflow run")
    old_term = signal.signal(signal.SIGTERM, _raise_on_term) if _main_thread() else None
    status = "failed"
    ctx = None
    try:
        # only what was given: "not set" keeps its meaning on --resume (e.g. fine-tuning in the model's dtype)
        atomic_write_json(run.path / "config.json", cfg.model_dump(mode="json", exclude_unset=True))
        run.write_manifest(config=cfg.model_dump(mode="json"), config_dir=str(base_dir), seed=cfg.seed)
        ctx = Context.create(cfg, run, base_dir)
        protocols = {name: RUNNERS[name](ctx) for name in cfg.protocols}
        evaluation = None
        if cfg.evaluation is not None:
            models = {}
            for name in cfg.evaluation.models:
                if name == "foundation":
                    models[name] = None
                elif name in protocols:
                    models[name] = protocols[name]["model"]
            evaluation = run_evaluation(ctx, models)
        results = collect_results(ctx, protocols, evaluation)
        if report:
            from .report import write_report

            write_report([run.path], run.path / "report")
        status = "finished"
        return results
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        if ctx is not None:
            ctx.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        run.close(status)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
