"""The ``jaxuft bench`` suite: runs the measurements on whatever device JAX sees, prints each row as it finishes, and keeps a JSON report up to date.

    from jaxuft.bench import BenchConfig, run_suite
    report = run_suite(BenchConfig(quick=True, out="bench.json"))

Items: ``md-replicas`` (atom-steps/s against the number of replicas of one system),
``md-sizes`` (against system size: the system tiled 1x, 2x, ...), ``energy-forces``,
``finetune`` (optimiser steps of :func:`~jaxuft.finetune.finetune_potential`) and
``soap-q`` (SOAP of one frame + its Q-residuals, paper settings).  The JSON file is rewritten
atomically after every item, so a run that is cut off still leaves what it measured.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import os
import platform
import time
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
from pydantic import Field, field_validator

from ..config import StrictModel
from ..errors import JaxuftError
from .record import steady_and_rate

ITEMS = ("md-replicas", "md-sizes", "energy-forces", "finetune", "soap-q")
PAPER_FRAME = Path("chclca") / "test" / "independent.xyz"
SCHEMA = "jaxuft-bench/1"


class BenchError(JaxuftError, ValueError):
    """Bad ``jaxuft bench`` settings (the message says which and how to fix them)."""


class BenchConfig(StrictModel):
    """Settings of one suite run (``jaxuft bench`` flags map one to one)."""

    models: Optional[list[str]] = Field(None, description="model names/paths; default: sevennet-0 and mace-mp0b-small "
                                                          "(mace-tiny with tiny=True)")
    items: list[Literal["md-replicas", "md-sizes", "energy-forces", "finetune", "soap-q"]] = Field(
        default_factory=lambda: list(ITEMS))
    replicas: Optional[list[int]] = Field(None, description="replica counts of md-replicas (default by device)")
    sizes: Optional[list[int]] = Field(None, description="tiling factors of md-sizes (atoms = factor x frame)")
    steps: Optional[int] = Field(None, ge=1, description="timed MD steps per point (default 10, quick 5)")
    dtype: Literal["float32", "float64"] = "float32"
    frame: Optional[str] = Field(None, description="structure file of the base system (default: the paper frame)")
    out: Optional[str] = Field(None, description="JSON report path")
    quick: bool = Field(False, description="a short check: fewer points and steps")
    tiny: bool = Field(False, description="toy model and an 8-atom cell (tests, smoke checks)")
    budget_s: float = Field(600.0, gt=0, description="skip an MD point whose estimated time exceeds this")
    replica_batch: Optional[int] = Field(None, ge=1, description="most replicas per vmapped group (default: all, or "
                                                                 "what half the accelerator's memory holds; quartered "
                                                                 "on out-of-memory)")

    @field_validator("replicas", "sizes")
    @classmethod
    def _positive(cls, v):
        if v is not None and (not v or any(int(x) < 1 for x in v)):
            raise ValueError("give one or more positive integers")
        return None if v is None else sorted(set(int(x) for x in v))


# ----------------------------------------------------------------------------- systems
def find_paper_frame(explicit: str | None = None) -> Path | None:
    """The paper's 197-atom frame: ``$JAXUFT_PAPER_DATA``, then ``../shared/paper-data`` or ``shared/paper-data``
    beside the working directory or the source checkout, then ``.bench-data/independent.xyz``."""
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise BenchError(f"--frame {p}: no such structure file")
        return p
    roots = []
    if os.environ.get("JAXUFT_PAPER_DATA"):
        roots.append(Path(os.environ["JAXUFT_PAPER_DATA"]))
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        roots += [base.parent / "shared" / "paper-data", base / "shared" / "paper-data"]
    for r in roots:
        if (r / PAPER_FRAME).is_file():
            return r / PAPER_FRAME
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (base / ".bench-data" / "independent.xyz").is_file():
            return base / ".bench-data" / "independent.xyz"
    return None


def base_system(cfg: BenchConfig):
    """``(name, atoms)`` of the base system: the paper frame, else rock-salt NaCl (216 atoms); tiny: NaCl, 8 atoms."""
    from ase.build import bulk

    if cfg.tiny and not cfg.frame:
        return "nacl-8", bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    path = find_paper_frame(cfg.frame)
    if path is None:
        print("[bench] paper frame not found ($JAXUFT_PAPER_DATA, ../shared/paper-data): using rock-salt NaCl, 216 atoms",
              flush=True)
        return "nacl-216", bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((3, 3, 3))
    from ase.io import read

    atoms = read(path, index=0)
    name = "paper-197" if path.name == "independent.xyz" and len(atoms) == 197 else f"{path.stem}-{len(atoms)}"
    return name, atoms


def tile_shape(factor: int) -> tuple[int, int, int]:
    """Three integer repeats whose product is ``factor``, as even as possible (8 -> 2x2x2, 4 -> 2x2x1)."""
    best = None
    for a in range(1, factor + 1):
        if factor % a:
            continue
        for b in range(1, factor // a + 1):
            if (factor // a) % b:
                continue
            c = factor // a // b
            t = tuple(sorted((a, b, c), reverse=True))
            if best is None or max(t) / min(t) < max(best) / min(best):
                best = t
    return best


def tiled(atoms, factor: int):
    """``atoms`` repeated ``factor`` times (see :func:`tile_shape`)."""
    return atoms.repeat(tile_shape(factor)) if factor > 1 else atoms.copy()


# ---------------------------------------------------------------------------- defaults
def accelerator() -> bool:
    import jax

    return jax.default_backend() != "cpu"


def resolved(cfg: BenchConfig) -> dict:
    """The settings actually used (defaults filled in by device and mode)."""
    acc = accelerator()
    if cfg.tiny:
        models, replicas, sizes, steps = ["mace-tiny"], [1, 2], [1, 2], 3
    elif cfg.quick:
        models = ["mace-mp0b-small"]
        replicas = [1, 64, 1024] if acc else [1, 4]
        sizes = [1, 8] if acc else [1]
        steps = 5
    else:
        models = ["sevennet-0", "mace-mp0b-small"]
        replicas = [1, 4, 16, 64, 256, 1024] if acc else [1, 4, 16]
        sizes = [1, 2, 4, 8, 16, 27, 64] if acc else [1, 2, 4, 8]
        steps = 10
    return {"models": cfg.models or models, "items": list(cfg.items), "replicas": cfg.replicas or replicas,
            "sizes": cfg.sizes or sizes, "steps": cfg.steps or steps, "dtype": cfg.dtype, "quick": cfg.quick,
            "tiny": cfg.tiny, "budget_s": cfg.budget_s, "replica_batch": cfg.replica_batch}


# ---------------------------------------------------------------------------- report
def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("jaxuft", "jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "e3nn-jax", "optax",
                 "jax-md", "numpy", "ase"):
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:
            pass
    return out


def device_info() -> dict:
    import jax

    devs = jax.devices()
    info = {"backend": jax.default_backend(), "count": len(devs),
            "kind": devs[0].device_kind if devs else None, "platform": devs[0].platform if devs else None}
    from .measure import device_memory

    mem = device_memory()
    if mem and "limit" in mem:
        info["memory_gb"] = round(mem["limit"], 1)
    return info


def host_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = round(int(f.readline().split()[1]) / 1024 ** 2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem, "hostname": platform.node()}


COLUMNS = (("item", 13), ("model", 16), ("system", 10), ("atoms", 6), ("R", 5), ("compile s", 9), ("steady", 15),
           ("rate", 20), ("vs 1st", 6), ("RSS GB", 6), ("dev GB", 6))


def _fmt(v, width: int) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        s = "-"
    elif isinstance(v, float):
        s = f"{v:.3g}" if abs(v) < 1e5 else f"{v:.3e}"
    else:
        s = str(v)
    return s[:width].rjust(width)


def table_header() -> str:
    return " ".join(name.rjust(w) for name, w in COLUMNS)


def table_row(r: dict) -> str:
    """One printed line of a result (an error or skip prints its reason)."""
    if "error" in r or "skipped" in r:
        why = r.get("error") or r.get("skipped")
        return f"{r['item']:>13} {r.get('model', '-')[:16]:>16} {r.get('system', '-')[:10]:>10}  " + \
               ("ERROR: " if "error" in r else "skipped: ") + why
    steady, rate = steady_and_rate(r)
    vals = [r["item"], r.get("model"), r.get("system"), r.get("atoms"), r.get("replicas"), r.get("compile_s"),
            steady, rate, r.get("cost_vs_r1", r.get("cost_vs_1x", r.get("cost_vs_first"))), r.get("peak_rss_gb"),
            r.get("device_peak_gb")]
    return " ".join(_fmt(v, w) for v, (_, w) in zip(vals, COLUMNS))


def default_out() -> Path:
    return Path(f"jaxuft-bench-{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}.json")


# ------------------------------------------------------------------------------- run
def run_suite(cfg: BenchConfig, echo: Callable[[str], None] = lambda s: print(s, flush=True)) -> dict:
    """Run the suite; returns the report (also written to ``cfg.out`` after every item)."""
    import jax

    from ..fileio import atomic_write_json, json_clean
    from . import measure
    from .models import load_model

    settings = resolved(cfg)
    out = Path(cfg.out) if cfg.out else default_out()
    sname, base = base_system(cfg)
    report = {
        "schema": SCHEMA,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_info(),
        "host": host_info(),
        "versions": versions(),
        "settings": {**settings, "system": sname, "system_atoms": len(base)},
        "results": [],
        "complete": False,
    }
    t_start = time.perf_counter()

    def save():
        report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        report["load_average"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        atomic_write_json(out, json_clean(report))

    def add(row: dict):
        report["results"].append(row)
        echo(table_row(row))
        save()

    d = report["device"]
    echo(f"[bench] device: {d['count']} x {d['kind']} ({d['backend']}); jax {report['versions'].get('jax')}; "
         f"system {sname} ({len(base)} atoms); models {', '.join(settings['models'])}; report -> {out}")
    echo(table_header())
    save()
    steps = settings["steps"]
    soap_done = False
    for model_name in settings["models"]:
        try:
            t0 = time.perf_counter()
            pot = load_model(model_name, cfg.dtype, numbers=sorted(set(base.get_atomic_numbers())))
            echo(f"[bench] {model_name}: loaded in {time.perf_counter() - t0:.1f} s")
        except Exception as exc:  # a missing zoo model etc.: report and go on with the others
            add({"item": "load", "model": model_name, "system": sname, "error": f"{type(exc).__name__}: {exc}"})
            continue
        common = {"model": model_name, "system": sname, "dtype": cfg.dtype}
        for item in settings["items"]:
            if item == "soap-q" and soap_done:
                continue  # SOAP + Q does not depend on the model: measured once
            soap_done = soap_done or item == "soap-q"
            if item == "md-replicas":
                points = [(r, 1) for r in settings["replicas"]]
            elif item == "md-sizes":
                points = [(1, f) for f in settings["sizes"]]
            else:
                points = [None]
            base_rate, base_cost = None, None
            for point in points:
                row = {"item": item, **common}
                if item == "soap-q":
                    row["model"] = "-"  # model-independent
                try:
                    if point is None:
                        row.update(_single(item, pot, base, cfg, measure))
                    else:
                        r, f = point
                        atoms = tiled(base, f)
                        row.update({"tile": f, "replicas": r})
                        if base_cost is not None:
                            est = base_cost * r * f * steps * 2 / 1e3
                            if est > cfg.budget_s:
                                row["skipped"] = f"estimated {est:.0f} s > budget {cfg.budget_s:.0f} s (--budget-s)"
                                add(row)
                                continue
                        batch = cfg.replica_batch or auto_replica_batch(len(atoms), r)
                        row.update(measure.md_throughput(pot, atoms, r, steps, replica_batch=batch))
                        if base_rate is None:
                            base_rate, base_cost = row["atom_steps_per_s"], row["ms_per_step"] / (r * f)
                            key = {(True, 1): "cost_vs_r1", (False, 1): "cost_vs_1x"}.get(
                                (item == "md-replicas", r * f), "cost_vs_first")
                        # per-atom-step cost against the series' first point (R = 1, or the untiled system)
                        row[key] = base_rate / row["atom_steps_per_s"]
                except Exception as exc:  # one failed point (e.g. out of memory) must not lose the others
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                add(row)
        del pot
    report["complete"] = True
    save()
    echo(f"[bench] done in {report['elapsed_s']:.0f} s; report: {out}")
    return report


#: device bytes one atom of an MD step may need: host peaks of 2.1 (MACE-MP-0b small) and 3.6 MB
#: (SevenNet-0) per atom were measured on the CPU (benchmarks/RESULTS.md, MD scaling), rounded up
MD_BYTES_PER_ATOM = 4e6


def auto_replica_batch(n_atoms: int, replicas: int) -> int | None:
    """On an accelerator with memory statistics, the most replicas per vmapped group that fit in half its
    memory at :data:`MD_BYTES_PER_ATOM`; None (md.Simulation's default) when all fit or the size is unknown."""
    if not accelerator():
        return None
    from .measure import device_memory

    mem = device_memory()
    if not mem or not mem.get("limit"):
        return None
    fit = max(1, int(0.5 * mem["limit"] * 1024 ** 3 / (MD_BYTES_PER_ATOM * n_atoms)))
    return fit if fit < replicas else None


def _single(item: str, pot, base, cfg: BenchConfig, measure) -> dict:
    if item == "energy-forces":
        return measure.energy_forces(pot, base, repeats=3 if (cfg.quick or cfg.tiny) else 5)
    if item == "finetune":
        return measure.finetune_step(pot, [base], epochs=3)
    if item == "soap-q":
        frames = [base] + [_rattled(base, k) for k in range(1, 3)]
        # in the suite's dtype: a float64 SOAP would switch JAX to x64 for the items after it
        if cfg.tiny:
            return measure.soap_q(frames, r_cut=3.0, n_max=2, l_max=2, sigma=0.5, repeats=2, dtype=cfg.dtype)
        return measure.soap_q(frames, repeats=3, dtype=cfg.dtype)
    raise BenchError(f"unknown item {item!r}; use one of {', '.join(ITEMS)}")


def _rattled(atoms, seed: int):
    a = atoms.copy()
    a.calc = None
    a.rattle(0.05, seed=seed)
    return a
