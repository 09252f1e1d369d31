"""Timed measurements of the suite: MD throughput, energy+forces, one fine-tuning step, SOAP + Q, with peak memory.

Every function separates the first call (compilation included, ``compile_s``) from the steady
state (medians of warm calls) and reports host peak RSS (``peak_rss_gb``, this process since
:func:`reset_peak` where Linux allows the reset) and the device's peak when the backend reports
memory statistics (``device_peak_gb``; GPUs and TPUs do, the CPU does not).
"""

from __future__ import annotations

import resource
import sys
import time

import numpy as np

_GB = 1024.0 ** 3


# ------------------------------------------------------------------------------ memory
def reset_peak() -> bool:
    """Reset this process's peak-RSS counter (Linux ``clear_refs``); False where it cannot be reset."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_gb() -> float:
    """Peak resident memory of this process in GiB (since the last :func:`reset_peak`, if that worked)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / _GB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _GB if sys.platform == "darwin" else peak * 1024 / _GB


def device_memory() -> dict | None:
    """The first device's memory statistics in GiB (``peak``, ``in_use``, ``limit``), or None (CPU)."""
    import jax

    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # backends without statistics raise or return None
        return None
    if not stats:
        return None
    out = {}
    for key, name in (("peak_bytes_in_use", "peak"), ("bytes_in_use", "in_use"), ("bytes_limit", "limit")):
        if key in stats:
            out[name] = stats[key] / _GB
    return out or None


def _memory_fields() -> dict:
    dev = device_memory()
    return {"peak_rss_gb": round(peak_rss_gb(), 3), "device_peak_gb": None if dev is None else round(dev.get("peak", 0.0), 3)}


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


# ---------------------------------------------------------------------------------- MD
def is_out_of_memory(exc: BaseException) -> bool:
    """True for an allocation failure of XLA (any backend) or of the host."""
    text = f"{type(exc).__name__}: {exc}"
    return isinstance(exc, MemoryError) or "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def md_throughput(pot, atoms, replicas: int, steps: int = 10, seed: int = 0, replica_batch: int | None = None,
                  oom_retries: int = 2) -> dict:
    """Langevin MD (300 K, 0.5 fs) of ``replicas`` copies of ``atoms``: a first segment of ``steps`` steps
    (compiles), then the same segment again, timed.  Safety stops are off (a stopped replica would cost
    nothing and inflate the rate); ``stopped`` counts replicas that went non-finite all the same.

    ``replica_batch``: most replicas advanced together (see :class:`~jaxuft.md.Simulation`; None: its
    default).  Out of device memory, the run is retried with a quarter of the batch (``oom_retries`` times);
    the batch used is reported.
    """
    try:
        return _md_once(pot, atoms, replicas, steps, seed, replica_batch)
    except Exception as exc:
        if not is_out_of_memory(exc) or oom_retries <= 0 or (replica_batch or replicas) <= 1:
            raise
        smaller = max(1, (replica_batch or replicas) // 4)
        print(f"[bench] out of memory with {replica_batch or replicas} replicas per group: retrying with {smaller}",
              flush=True)
        import gc

        gc.collect()
        return md_throughput(pot, atoms, replicas, steps, seed, smaller, oom_retries - 1)


def _md_once(pot, atoms, replicas: int, steps: int, seed: int, replica_batch: int | None) -> dict:
    from .. import md

    reset_peak()
    safety = md.Safety(max_temperature=1e9, min_distance=0.0)
    sim = md.Simulation(pot, md.Langevin(0.5, 300.0, friction=0.01), chunk_steps=steps, safety=safety,
                        replica_batch=replica_batch)
    start = sim.init(atoms, replicas=replicas, seed=seed)
    t0 = time.perf_counter()
    _, first = sim.run(start, n_steps=steps, record_every=steps, progress=False)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, traj = sim.run(start, n_steps=steps, record_every=steps, progress=False)
    wall = time.perf_counter() - t0
    n = len(atoms)
    return {
        "atoms": n,
        "replicas": replicas,
        "steps": steps,
        "ms_per_step": 1e3 * wall / steps,
        "atom_steps_per_s": replicas * n * steps / wall,
        "compile_s": float(first.report.get("compile_s", float("nan"))),
        "first_segment_s": first_s,
        "recompilations": int(traj.report.get("compilations", 0)),
        "stopped": int(sum(s["status"] != "running" for s in traj.report.get("stops", []))),
        "replica_batch": replica_batch,
        **_memory_fields(),
    }


# ------------------------------------------------------------------------ energy+forces
def energy_forces(pot, atoms, repeats: int = 5) -> dict:
    """Energy, forces and stress of one structure on a prebuilt padded graph (``pot.compiled("efs")``)."""
    import jax

    reset_peak()
    graph = pot.graph(atoms)
    fn = pot.compiled("efs")
    t0 = time.perf_counter()
    jax.block_until_ready(fn(pot.params, graph))
    first = time.perf_counter() - t0
    ms = 1e3 * _median_time(lambda: jax.block_until_ready(fn(pot.params, graph)), repeats)
    return {"atoms": len(atoms), "compile_s": first - ms / 1e3, "first_call_s": first, "ms": ms,
            "atoms_per_s": len(atoms) / (ms / 1e3), **_memory_fields()}


# ------------------------------------------------------------------------- fine-tuning
def _labelled(pot, frames):
    """Frames with energy and forces: their own labels if they carry them, else the model's, perturbed."""
    from ase.calculators.singlepoint import SinglePointCalculator

    out = []
    for k, a in enumerate(frames):
        try:
            e, f = a.get_potential_energy(), a.get_forces()
        except Exception:  # no calculator / no labels
            res = pot.predict(a)
            e, f = res["energy"] + 0.01 * len(a) * (k + 1), res["forces"] * 1.01
        b = a.copy()
        b.calc = SinglePointCalculator(b, energy=float(e), forces=np.asarray(f))
        out.append(b)
    return out


def finetune_step(pot, frames, epochs: int = 3) -> dict:
    """Optimiser steps of :func:`~jaxuft.finetune.finetune_potential` on ``frames`` (one batch per epoch).

    Epoch 1 includes compilation; the steady step time is the median train time of epochs 2..``epochs``
    (one step each, the host side of the batch included; validation excluded).
    """
    from ..finetune import FinetuneConfig, finetune_potential

    if epochs < 2:
        raise ValueError("finetune_step needs epochs >= 2 (the first compiles)")
    frames = _labelled(pot, list(frames))
    reset_peak()
    cfg = FinetuneConfig(epochs=epochs, batch_size=len(frames), e0s="model", progress=False, allow_worse=True)
    t0 = time.perf_counter()
    res = finetune_potential(pot, frames, cfg, log=lambda msg: None)
    total = time.perf_counter() - t0
    train = [r["time_s"] for r in res.history if r.get("split") == "train"]
    steady = float(np.median(train[1:])) if len(train) > 1 else float("nan")
    n_atoms = sum(len(a) for a in frames)
    return {"frames": len(frames), "atoms": n_atoms, "compile_s": train[0] - steady if train else float("nan"),
            "ms_per_step": 1e3 * steady, "atoms_per_s": n_atoms / steady, "total_s": total, **_memory_fields()}


# --------------------------------------------------------------------------- SOAP + Q
def soap_q(frames, r_cut: float = 5.0, n_max: int = 8, l_max: int = 6, sigma: float = 0.375,
           n_components: int = 5, repeats: int = 3, dtype: str = "float64") -> dict:
    """SOAP of ``frames[0]`` and its Q-residuals under a PCA fitted on all ``frames`` (paper settings by default)."""
    from ..uq import PCA, SOAP

    reset_peak()
    species = sorted({z for a in frames for z in a.get_atomic_numbers()})
    periodic = bool(np.all(frames[0].get_pbc()))
    soap = SOAP(species, r_cut=r_cut, n_max=n_max, l_max=l_max, sigma=sigma, periodic=periodic, dtype=dtype)
    frame = frames[0]
    t0 = time.perf_counter()
    X = soap.compute(frame)
    first = time.perf_counter() - t0
    soap_ms = 1e3 * _median_time(lambda: soap.compute(frame), repeats)
    t0 = time.perf_counter()
    pca = PCA(n_components, dtype=dtype).fit(soap.compute(frames))
    fit_s = time.perf_counter() - t0
    pca.q_residual(X)  # compiles
    q_ms = 1e3 * _median_time(lambda: pca.q_residual(X), repeats)
    return {"atoms": len(frame), "features": int(X.shape[1]), "compile_s": first - soap_ms / 1e3,
            "soap_ms": soap_ms, "q_ms": q_ms, "soap_q_ms": soap_ms + q_ms, "pca_fit_s": fit_s,
            "pca_rows": int(sum(len(a) for a in frames)), **_memory_fields()}
