"""The run directory: manifest (config, versions, seeds, device, timings), a ledger of finished stages, resume.

    RUN/
      config.json        the validated config (what `--resume` reruns)
      manifest.json      versions, seeds, device, timings, status
      ledger.json        stages finished so far, each with its outputs' summary
      <protocol>/...     trajectories, labels, fine-tuning runs, models per round
      results.json       the result tables (deterministic for a config and seed)
      timings.json       wall times, compilations, throughput (not deterministic)

A stage is skipped on resume only when the ledger lists it; a stage killed part-way is redone
from its inputs on disk (MD from the saved state, labelling reuses every finished label,
fine-tuning continues from its checkpoint), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from ..fileio import atomic_write_json
from ..outdir import OutputDir, claim_output_dir
from ..progress import get_logger

__all__ = ["RunDir", "versions", "device_info"]

log = get_logger("jaxuft.workflows")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict:
    """Installed versions of jaxuft and what it runs on (distribution metadata: no imports)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("jaxuft", "jax", "jaxlib", "flax", "optax", "jax-md", "e3nn-jax", "ase", "numpy", "distributed", "tblite"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # optional packages
            continue
    return out


def device_info() -> dict:
    import jax

    devs = jax.devices()
    return {"backend": jax.default_backend(), "devices": [str(d) for d in devs], "n_devices": len(devs),
            "host": platform.node(), "cpus": os.cpu_count()}


class RunDir:
    """A claimed run directory with its manifest and ledger (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, *, resume: bool = False, overwrite: bool = False, kind: str = "run"):
        self.claim: OutputDir = claim_output_dir(path, kind=kind, resume=resume, overwrite=overwrite)
        self.path = self.claim.path
        self.resumed = self.claim.resumed
        ledger = self._read("ledger.json") if self.resumed else None
        self.ledger: dict = ledger or {"stages": {}}
        manifest = self._read("manifest.json") if self.resumed else None
        self.manifest: dict = manifest or {"format": "jaxuft-run", "version": 1, "created": _now(), "sessions": []}
        self.timings: dict = (self._read("timings.json") if self.resumed else None) or {}
        self.manifest["sessions"].append({"started": _now(), "pid": os.getpid(), "resumed": self.resumed,
                                          "versions": versions(), "device": device_info()})
        self.manifest["status"] = "running"

    def _read(self, name: str):
        import json

        p = self.path / name
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text())
        except ValueError as exc:
            raise ValueError(f"{p} is not valid JSON ({exc}); it was not written by jaxuft or was edited") from None

    # -- ledger ---------------------------------------------------------------------------
    def done(self, stage: str) -> bool:
        return stage in self.ledger["stages"]

    def outputs(self, stage: str) -> dict:
        return self.ledger["stages"][stage]["outputs"]

    def finish(self, stage: str, outputs: dict | None = None) -> None:
        self.ledger["stages"][stage] = {"finished": _now(), "outputs": outputs or {}}
        atomic_write_json(self.path / "ledger.json", self.ledger)

    @contextmanager
    def timed(self, stage: str):
        t0 = time.perf_counter()
        yield
        self.timings.setdefault(stage, {})["wall_s"] = time.perf_counter() - t0
        self.write_timings()

    def record_timing(self, stage: str, **values) -> None:
        self.timings.setdefault(stage, {}).update(values)
        self.write_timings()

    def write_timings(self) -> None:
        atomic_write_json(self.path / "timings.json", self.timings)

    def stage(self, name: str, compute: Callable[[], dict]) -> dict:
        """Run ``compute()`` unless the ledger lists ``name``; record its outputs and wall time."""
        if self.done(name):
            log.info(f"{name}: done earlier, reusing its outputs")
            return self.outputs(name)
        log.info(f"{name}: starting")
        with self.timed(name):
            outputs = compute()
        self.finish(name, outputs)
        return outputs

    # -- manifest -------------------------------------------------------------------------
    def write_manifest(self, **updates: Any) -> None:
        self.manifest.update(updates)
        self.manifest["updated"] = _now()
        atomic_write_json(self.path / "manifest.json", self.manifest)

    def close(self, status: str = "finished") -> None:
        self.manifest["sessions"][-1]["ended"] = _now()
        self.write_manifest(status=status)
        self.claim.release()
