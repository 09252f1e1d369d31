"""The stages every protocol is made of: build the system, run an MD segment, label frames, fine-tune.

Each stage reads its inputs from the run directory and writes its outputs there atomically,
so that a stage killed part-way is simply redone (or continued) on ``--resume``.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms

from ..fileio import atomic_open
from ..progress import get_logger
from .config import MDSettings, WorkflowConfig
from .runs import RunDir

log = get_logger("jaxuft.workflows")

__all__ = ["Context", "build_structure", "build_foundation", "read_frames", "write_frames"]


def build_structure(cfg: WorkflowConfig, base_dir: Path) -> Atoms:
    """The starting structure of the config (a file relative to the config's folder, or a bulk crystal)."""
    spec = cfg.structure
    if spec.bulk is not None:
        from ase.build import bulk

        b = spec.bulk
        atoms = bulk(b.symbol, b.crystalstructure, a=b.a, cubic=b.cubic).repeat(tuple(b.repeat))
        if b.rattle > 0:
            atoms.rattle(stdev=b.rattle, seed=cfg.seed)
        return atoms
    from ase.io import read

    if "JAXUFT_PAPER_DATA" not in os.environ:  # the paper data beside the checkout, as in CI
        for cand in (Path.cwd() / "../shared/paper-data", base_dir / "../../shared/paper-data"):
            if cand.is_dir():
                os.environ["JAXUFT_PAPER_DATA"] = str(cand.resolve())
                break
    path = Path(os.path.expandvars(os.path.expanduser(spec.file)))
    if not path.is_absolute():
        path = base_dir / path
    if not path.exists():
        raise FileNotFoundError(f"structure.file {path} does not exist; give a path relative to the config file "
                                "(environment variables such as $JAXUFT_PAPER_DATA are expanded)")
    atoms = read(path, index=spec.index)
    atoms.calc = None
    return atoms


def build_foundation(cfg: WorkflowConfig, numbers):
    """The foundation Potential ('morse': the built-in toy pair model for these elements)."""
    if cfg.foundation.model == "morse":
        from ..md.cli import builtin_morse

        return builtin_morse(numbers, cfg.foundation.dtype)
    from ..api import load

    return load(cfg.foundation.model, dtype=cfg.foundation.dtype)


def read_frames(path: Path) -> list[Atoms]:
    from ase.io import read

    if not path.exists() or path.stat().st_size == 0:
        return []
    return read(path, ":", format="extxyz")


def write_frames(path: Path, frames: Sequence[Atoms]) -> None:
    from ase.io import write

    with atomic_open(path, "w") as f:
        write(f, list(frames), format="extxyz")


def ensemble_of(md: MDSettings):
    from ..md import make

    return make(md.ensemble, md.timestep, temperature=md.temperature, pressure=md.pressure,
                friction=md.friction, tau_t=md.tau_t, tau_p=md.tau_p)


@dataclass
class Context:
    """What every stage of one run needs: config, run directory, start structure, foundation, one Simulation."""

    cfg: WorkflowConfig
    run: RunDir
    start: Atoms
    foundation: object
    sim: object = None
    _params_cache: dict = field(default_factory=dict)
    _client: object = None
    _exit: object = None

    @classmethod
    def create(cls, cfg: WorkflowConfig, run: RunDir, base_dir: Path) -> "Context":
        start = build_structure(cfg, base_dir)
        foundation = build_foundation(cfg, start.get_atomic_numbers())
        from ..md import Safety, Simulation

        md = cfg.md
        limits = {k: v for k, v in (("max_temperature", md.max_temperature), ("min_distance", md.min_distance))
                  if v is not None}
        sim = Simulation(foundation, ensemble_of(md), chunk_steps=md.chunk_steps, safety=Safety(**limits))
        return cls(cfg=cfg, run=run, start=start, foundation=foundation, sim=sim)

    def close(self) -> None:
        """Shut down the run's Dask cluster (if one was started)."""
        if self._exit is not None:
            self._exit.close()
            self._exit = self._client = None

    def scheduler(self):
        """One Dask client for every labelling stage of this process (a LocalCluster starts in seconds, once),
        the user's scheduler address, or None to label in-process (``n_workers: 0``)."""
        lab = self.cfg.labelling
        if lab.scheduler is None and lab.n_workers == 0:
            return None
        if self._client is None:
            import contextlib

            from ..labelling.submit import _dask_client

            self._exit = contextlib.ExitStack()
            self._client, where, _ = self._exit.enter_context(_dask_client(lab.scheduler, lab.n_workers))
            log.info(f"labelling on {where}")
        return self._client

    # -- params -------------------------------------------------------------------------
    def params(self, model: str | None):
        """Params of the foundation (``None``/'foundation') or of a fine-tuned model directory (relative to the run)."""
        if model in (None, "foundation"):
            return self.foundation.params
        if model not in self._params_cache:
            from ..api import load

            pot = load(self.run.path / model, dtype=self.cfg.foundation.dtype)
            self._params_cache[model] = pot.params
        return self._params_cache[model]

    # -- MD -----------------------------------------------------------------------------
    def md_stage(self, name: str, *, model: str | None, steps: int, replicas: int = 1, seed: int = 0,
                 start_state: str | None = None) -> dict:
        """``steps`` of MD with ``model``'s params; from ``start_state`` (a saved state, relative to the run)
        or from the start structure with ``replicas`` and ``seed``.  Writes ``trajectory.npz`` and ``state.npz``."""

        def compute():
            from ..md import load_state

            sim = self.sim
            md = self.cfg.md
            state = sim.init(self.start, replicas=replicas, seed=seed,
                             temperature=md.temperature if md.ensemble != "nve" else None)
            if start_state is not None:
                state, _ = load_state(self.run.path / start_state)
            t0 = time.perf_counter()
            state, traj = sim.run(state, self.params(model), n_steps=steps, record_every=md.record_every)
            wall = time.perf_counter() - t0
            out = self.run.path / name
            out.mkdir(parents=True, exist_ok=True)
            _save_traj(traj, out / "trajectory.npz")
            _save_state(state, out / "state.npz", seed=seed)
            rep = traj.report
            stops = [s for s in rep.get("stops", []) if s.get("status") != "running"]
            self.run.record_timing(name, md_wall_s=wall, compile_s=rep.get("compile_s"),
                                   compilations=rep.get("compilations"), atom_steps_per_s=rep.get("atom_steps_per_s"),
                                   replicas=replicas, steps=steps, atoms=len(self.start))
            return {"trajectory": f"{name}/trajectory.npz", "state": f"{name}/state.npz", "model": model or "foundation",
                    "steps": steps, "replicas": replicas, "stopped_replicas": stops,
                    "frames_per_replica": [int(v) for v in traj.valid.sum(axis=1)]}

        return self.run.stage(name, compute)

    def trajectory_frames(self, path: str) -> list[list[Atoms]]:
        """The valid frames of every replica of a saved trajectory (with the model's energy/forces)."""
        from ..md import Trajectory

        traj = Trajectory.load_npz(self.run.path / path)
        return [traj.atoms(r) for r in range(traj.n_replicas)]

    # -- labelling ----------------------------------------------------------------------
    def label_stage(self, name: str, frames_fn) -> dict:
        """Label the frames ``frames_fn()`` returns (a list, or ``(list, selection_info)``) with the oracle."""

        def compute():
            from ..labelling import label_frames

            got = frames_fn()
            frames, info = got if isinstance(got, tuple) else (got, {})
            lab = self.cfg.labelling
            need = max(1, math.ceil(lab.min_success * len(frames)))
            res = label_frames(frames, lab.oracle, self.run.path / "labels",
                               scheduler=self.scheduler(), n_workers=lab.n_workers, retries=lab.retries,
                               min_success=need)
            out = self.run.path / name / "labels.extxyz"
            write_frames(out, res.frames)
            self.run.record_timing(name, label_wall_s=res.timings.get("total_s"),
                                   n_computed=res.n_computed, n_reused=res.n_reused)
            return {"labels": f"{name}/labels.extxyz", "n_selected": len(frames), "n_labelled": len(res.frames),
                    "failed": [{k: v for k, v in f.items() if k in ("index", "error", "attempts")} for f in res.failed],
                    "selection": info}

        return self.run.stage(name, compute)

    def labelled(self, path: str) -> list[Atoms]:
        return read_frames(self.run.path / path)

    # -- fine-tuning --------------------------------------------------------------------
    def finetune_stage(self, name: str, *, start_model: str | None, train: Sequence[str]) -> dict:
        """Fine-tune from ``start_model``'s params on the union of the label files ``train``."""

        def compute():
            from ..finetune import finetune_potential

            frames = [a for p in train for a in self.labelled(p)]
            if not frames:
                raise RuntimeError(f"{name}: no labelled frames to fine-tune on")
            start = self.foundation.with_params(self.params(start_model))
            out = self.run.path / name
            res = finetune_potential(start, frames, self.cfg.finetune_config(), out_dir=out, resume=True,
                                     log=lambda m: log.info(f"{name}: {m}"))
            if res.status not in ("finished", "early_stopped"):
                raise RuntimeError(f"{name}: fine-tuning ended with status {res.status}")
            man = res.manifest
            self.run.record_timing(name, **{k: v for k, v in man.get("timings", {}).items() if isinstance(v, (int, float))})
            final = man.get("metrics", {}).get("final_full_model", {})
            return {"model": f"{name}/model", "n_train_frames": len(frames), "start_model": start_model or "foundation",
                    "best_epoch": man.get("best_epoch"), "selected": man.get("selected"),
                    "e0s": man.get("e0s"), "final_metrics": final,
                    "kept_start": bool(man.get("kept_starting_model", False)), "outcome": man.get("outcome")}

        return self.run.stage(name, compute)


def _save_traj(traj, path: Path) -> None:
    traj.save_npz(path)  # atomic


def _save_state(state, path: Path, **meta) -> None:
    from ..md import save_state

    save_state(state, path, **meta)  # atomic
