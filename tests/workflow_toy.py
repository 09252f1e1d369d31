"""Shared pieces of the workflow tests: a tiny toy config (Morse foundation, EMT oracle, Cu) and oracle factories.

Also a script entry point, ``python tests/workflow_toy.py CONFIG.json RUN [--resume] [KILL]``, that runs the
workflow in a subprocess and SIGKILLs itself at a chosen point (KILL):
  --kill-in STAGE --after S   S seconds after STAGE starts (MD: during compilation or the steps)
  --kill-label N              when the N-th label of the process is about to be computed
  --kill-epoch STAGE E        after epoch E of the fine-tune in STAGE (its checkpoint is on disk)
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
import threading
from pathlib import Path

TOY = {
    "name": "toy-test",
    "seed": 3,
    "structure": {"bulk": {"symbol": "Cu", "a": 3.6, "cubic": True, "repeat": [2, 2, 2], "rattle": 0.05}},
    "foundation": {"model": "morse", "dtype": "float64"},
    "md": {"ensemble": "nvt-langevin", "timestep": 2.0, "temperature": 600, "friction": 0.02, "record_every": 10},
    "labelling": {"oracle": {"name": "emt"}, "n_workers": 0},
    "finetune": {"epochs": 4, "e0s": "lstsq", "progress": False},
    "protocols": ["naive", "periodic"],
    "naive": {"replicas": 2, "steps": 60, "n_labels": 4},
    "periodic": {"rounds": 3, "steps": 60, "labels_per_round": 2},
    "evaluation": {"steps": 60, "snapshots": 2, "models": ["foundation", "naive", "periodic"]},
}


def toy(**changes) -> dict:
    cfg = copy.deepcopy(TOY)
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    return cfg


def flaky_emt(fail_every: int = 3):
    """An EMT calculator that raises on frames whose rounded first x coordinate hits ``fail_every`` (always the same frames)."""
    from ase.calculators.emt import EMT

    class Flaky(EMT):
        def calculate(self, atoms=None, properties=("energy",), system_changes=()):
            if atoms is not None and int(abs(atoms.positions[1, 0]) * 1000) % fail_every == 0:
                raise RuntimeError("simulated oracle crash (SCF did not converge)")
            super().calculate(atoms, properties, system_changes)

    return Flaky()


def _die(where: str):
    sys.stderr.write(f"[test] SIGKILL {where}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _arg(argv, flag, n=1):
    i = argv.index(flag)
    return argv[i + 1: i + 1 + n]


def _main(argv):
    cfg_path, run = argv[0], argv[1]
    resume = "--resume" in argv
    from jaxuft.workflows import runs as runs_mod
    from jaxuft.workflows import run_workflow

    if "--kill-in" in argv:
        kill_in, after = _arg(argv, "--kill-in")[0], float(_arg(argv, "--after")[0])
        original = runs_mod.RunDir.stage

        def stage(self, name, compute):
            if name == kill_in and not self.done(name):
                threading.Timer(after, _die, args=(f"{after} s into {name}",)).start()
            return original(self, name, compute)

        runs_mod.RunDir.stage = stage
    if "--kill-label" in argv:
        n_kill = int(_arg(argv, "--kill-label")[0])
        from jaxuft.labelling import submit

        original_label = submit.compute_label
        calls = [0]

        def compute_label(*a, **k):
            calls[0] += 1
            if calls[0] == n_kill:
                _die(f"at label {n_kill}")
            return original_label(*a, **k)

        submit.compute_label = compute_label
    if "--kill-epoch" in argv:
        stage_name, epoch = _arg(argv, "--kill-epoch", 2)
        from jaxuft.finetune.trainer import Trainer

        original_run = Trainer.run

        def run_with_kill(self, resume=False, stop_after=None, callbacks=()):
            def cb(e, records, trainer):
                if e == int(epoch) and str(trainer.out_dir).endswith(stage_name):
                    _die(f"after epoch {e} of {stage_name}")

            return original_run(self, resume=resume, stop_after=stop_after, callbacks=tuple(callbacks) + (cb,))

        Trainer.run = run_with_kill
    config = None if resume else json.loads(Path(cfg_path).read_text())
    run_workflow(config, run, resume=resume, report=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(_main(sys.argv[1:]))
