"""Oracle factories for the labelling tests: EMT that fails, returns NaN, sleeps or kills its own process on tagged frames.

They live in a module of their own so that Dask worker processes and child processes can
import them (``factory="test_labelling_factories:make_flaky"``). A frame's behaviour comes from
``atoms.info["mode"]``: ``"fail"`` raises every time, ``"fail_once"`` raises on the first
attempt only, ``"nan"`` returns a NaN energy, ``"kill_once"`` sends SIGKILL to the process
computing it the first time (a dying Dask worker), ``"slow"`` sleeps five minutes. Markers for "once" live in ``marker_dir``;
every finished calculation appends ``"<tag> <pid>"`` to ``log`` so tests can count them.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ase.calculators.emt import EMT


def _first_time(marker_dir: str, name: str) -> bool:
    """True exactly once per (marker_dir, name), across processes (O_EXCL create)."""
    Path(marker_dir).mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(os.path.join(marker_dir, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


class FlakyEMT(EMT):
    def __init__(self, marker_dir: str, delay: float = 0.0, log: str | None = None, **kw):
        super().__init__(**kw)
        self.marker_dir, self.delay, self.log = marker_dir, delay, log

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        mode = atoms.info.get("mode", "")
        tag = str(atoms.info.get("tag", "?"))
        if self.delay:
            time.sleep(self.delay)
        if mode == "slow":
            time.sleep(300)
        if mode == "fail":
            raise RuntimeError(f"injected failure on frame {tag}")
        if mode == "fail_once" and _first_time(self.marker_dir, f"fail_once-{tag}"):
            raise RuntimeError(f"injected one-off failure on frame {tag}")
        if mode == "kill_once" and _first_time(self.marker_dir, f"kill_once-{tag}"):
            os.kill(os.getpid(), signal.SIGKILL)
        super().calculate(atoms, properties, system_changes)
        if mode == "nan":
            self.results["energy"] = float("nan")
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{tag} {os.getpid()}\n")


def make_flaky(marker_dir: str, delay: float = 0.0, log: str | None = None) -> FlakyEMT:
    return FlakyEMT(marker_dir=marker_dir, delay=delay, log=log)


def make_emt():
    return EMT()


def not_a_calculator():
    return 42
