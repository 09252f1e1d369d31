"""SOAP of the paper's 197-atom frame: jaxuft (JAX) vs dscribe, per frame and batched, in one run.

Settings as in the paper: r_cut 5 Å, n_max 8, l_max 6, sigma 0.375 Å, periodic, the 7
species of chclca (11 172 features), float64.  Per frame: ``chclca/test/independent.xyz[0]``;
batched: the first ``--batch-frames`` frames of ``chclca/train/periodic/FT5.xyz``.  Steady
timings are the minimum and the median of ``--repeats`` warm calls (host neighbour search,
device program and the host result included); the first call (compilation) is reported on
its own.  dscribe runs with ``n_jobs=1``.  Batched, each side has two output forms, timed
interleaved: one array for all frames (dscribe ``create(list)``, jaxuft ``compute(list)``) and
one array per frame (a loop of dscribe ``create(frame)``, jaxuft ``compute_iter``); rows for
each form against its like, and a headline row of each side's faster form.  jaxuft's share
of the time (host neighbour search vs device) and the process CPU time of both (a steadier
figure on a shared machine) are printed too.

    python benchmarks/bench_soap.py [--data ../shared/paper-data] [--repeats 21] [--batch-frames 10]
                                    [--baseline-commit REV] [--cold-frames 50] [--no-append]

``--baseline-commit``: also time ``jaxuft/uq/soap.py`` as it was at that git revision (loaded
from ``git show`` into a temporary module), in the same run with its calls interleaved with the
others': the before/after of a change.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(fn, repeats):
    """(min wall, median wall, min process CPU) over ``repeats`` calls."""
    return timed_many([fn], repeats)[0]


def timed_many(fns, repeats):
    """:func:`timed` of several functions with their calls interleaved, so that a change of load on a
    shared machine hits all of them alike; the order alternates (a, b, c, then c, b, a), so that no
    function always runs right after the same neighbour (e.g. after dscribe has swept the caches)."""
    walls = [[] for _ in fns]
    cpus = [[] for _ in fns]
    for rep in range(repeats):
        ks = range(len(fns)) if rep % 2 == 0 else reversed(range(len(fns)))
        for k in ks:
            c, t = time.process_time(), time.perf_counter()
            fns[k]()
            walls[k].append(time.perf_counter() - t)
            cpus[k].append(time.process_time() - c)
    return [(float(np.min(w)), float(np.median(w)), float(np.min(c))) for w, c in zip(walls, cpus)]


def peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def load_baseline(rev: str):
    """``jaxuft/uq/soap.py`` at git revision ``rev`` as a module (its relative imports made absolute)."""
    import importlib.util
    import subprocess
    import tempfile

    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:jaxuft/uq/soap.py"], check=True,
                         capture_output=True, text=True).stdout
    src = src.replace("from ..", "from jaxuft.")
    path = Path(tempfile.mkdtemp()) / f"soap_{rev}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"soap_{rev}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT / ".." / "shared" / "paper-data"))
    ap.add_argument("--batch-frames", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--baseline-commit", default=None, help="also time jaxuft/uq/soap.py at this git revision")
    ap.add_argument("--cold-frames", type=int, default=50,
                    help="frames of FT5.xyz for the cold row (a fresh SOAP, compilation included; 0 skips it)")
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args(argv)

    data = Path(args.data) / "chclca"
    if not data.exists():
        print(f"paper data not found at {data}; pass --data", file=sys.stderr)
        return 2
    import ase.io
    import jax
    from dscribe.descriptors import SOAP as DSOAP

    from jaxuft import host_memory
    from jaxuft.md.compilation import CompilationCounter
    from jaxuft.uq import SOAP
    from jaxuft.uq import soap as soap_module

    # the glibc allocator settings the jaxuft CLI uses (jaxuft/host_memory.py), for both codes in this process
    tuned = host_memory.tune()

    frame = ase.io.read(data / "test/independent.xyz", 0)
    batch = ase.io.read(data / "train/periodic/FT5.xyz", f":{args.batch_frames}")
    species = sorted(set(frame.get_chemical_symbols()))
    settings = dict(r_cut=5.0, n_max=8, l_max=6, sigma=0.375, periodic=True)
    ds = DSOAP(species=species, **settings)
    js = SOAP(species, **settings)
    js32 = SOAP(species, dtype="float32", **settings)

    with CompilationCounter() as cc:
        t = time.perf_counter()
        x = js.compute(frame)
        t_first = time.perf_counter() - t
    compile_frame = cc.seconds
    with CompilationCounter() as cc:
        t = time.perf_counter()
        js.compute(batch)
        t_first_batch = time.perf_counter() - t
    compile_batch = cc.seconds
    ds.create(frame)
    x32 = js32.compute(frame)
    js32.compute(batch)

    r = args.repeats
    old = old_first = None
    if args.baseline_commit:  # the baseline's calls are interleaved with the others' too
        old = load_baseline(args.baseline_commit).SOAP(species, **settings)
        with CompilationCounter() as cc:
            t = time.perf_counter()
            old.compute(frame)
            old_first = (time.perf_counter() - t, cc.seconds)
        old.compute(batch)
    one = [lambda: ds.create(frame), lambda: js.compute(frame), lambda: js32.compute(frame)]
    many = [lambda: ds.create(batch), lambda: [ds.create(a) for a in batch],
            lambda: js.compute(batch), lambda: list(js.compute_iter(batch)),
            lambda: js32.compute(batch), lambda: list(js32.compute_iter(batch))]
    if old is not None:
        one.append(lambda: old.compute(frame))
        many += [lambda: old.compute(batch), lambda: list(old.compute_iter(batch))]
    with CompilationCounter() as steady:
        ds1, js1, js1_32, *old1 = timed_many(one, r)
        edges1 = timed(lambda: js.edges(frame), r)
        consts = js.constants()
        prepared = next(iter(js._batches([frame])))
        run1 = timed(lambda: js._run(consts, prepared), r)  # slots + device program + host view
        rb = max(2, r // 2)
        # two output forms on each side: one array for all frames, or one array per frame
        ds_list, ds_loop, js_list, js_iter, js32_list, js32_iter, *old_b = timed_many(many, rb)
    base = (old1[0], min(old_b), old_first) if old is not None else None
    dsb = min(ds_list, ds_loop)
    which = "create(list)" if dsb is ds_list else "loop over frames"
    jsb, jsb32 = min(js_list, js_iter), min(js32_list, js32_iter)
    jwhich = "compute(list)" if jsb is js_list else "compute_iter"

    ref = ds.create(frame)
    scale = np.max(np.abs(ref))
    err = float(np.max(np.abs(x - ref)) / scale)
    refb = ds.create(batch).reshape(-1, x.shape[1])
    errb = float(np.max(np.abs(js.compute(batch) - refb)) / np.max(np.abs(refb)))
    err32 = float(np.max(np.abs(x32 - ref)) / scale)

    cold = None
    if args.cold_frames:
        # what a one-off job sees: a fresh SOAP over a trajectory's frames, every compilation included
        # (jit caches cleared first); dscribe has nothing to compile
        frames = ase.io.read(data / "train/periodic/FT5.xyz", f":{args.cold_frames}")
        t = time.perf_counter()
        for a in frames:
            ds.create(a)
        ds_cold = time.perf_counter() - t
        colds = []
        for mod in ([soap_module] + ([load_baseline(args.baseline_commit)] if args.baseline_commit else [])):
            jax.clear_caches()
            mod._compiled_slot_stages.cache_clear()
            if hasattr(mod, "_shared_capacity"):  # the shapes remembered by the warm runs above
                mod._shared_capacity.cache_clear()
            fresh = mod.SOAP(species, **settings)
            with CompilationCounter() as cc:
                t = time.perf_counter()
                for _ in fresh.compute_iter(frames):
                    pass
                colds.append((time.perf_counter() - t, cc.count, cc.seconds))
        cold = (len(frames), ds_cold, colds)

    load = os.getloadavg()[0]
    nb = len(batch)
    rows = [
        ["SOAP, 1 frame (197 atoms, 11172 features)", ds1[0], js1[0], ds1[0] / js1[0], ds1[1] / js1[1], ds1[2] / js1[2]],
        [f"SOAP, {nb} frames batched, each side's faster form (dscribe: {which}; jaxuft: {jwhich})",
         dsb[0], jsb[0], dsb[0] / jsb[0], dsb[1] / jsb[1], dsb[2] / jsb[2]],
        [f"SOAP, {nb} frames, one array: dscribe create(list) vs jaxuft compute(list)",
         ds_list[0], js_list[0], ds_list[0] / js_list[0], ds_list[1] / js_list[1], ds_list[2] / js_list[2]],
        [f"SOAP, {nb} frames, an array per frame: dscribe loop vs jaxuft compute_iter",
         ds_loop[0], js_iter[0], ds_loop[0] / js_iter[0], ds_loop[1] / js_iter[1], ds_loop[2] / js_iter[2]],
        ["SOAP float32, 1 frame", ds1[0], js1_32[0], ds1[0] / js1_32[0], ds1[1] / js1_32[1], ds1[2] / js1_32[2]],
        [f"SOAP float32, {nb} frames batched (faster form)", dsb[0], jsb32[0], dsb[0] / jsb32[0], dsb[1] / jsb32[1], dsb[2] / jsb32[2]],
        ["jaxuft host neighbour search, 1 frame", "", edges1[0], "", "", ""],
        ["jaxuft slots + device program + host view, 1 frame", "", run1[0], "", "", ""],
        ["jaxuft first call, 1 frame (compile s in brackets)", "", f"{t_first:.3g} ({compile_frame:.3g})", "", "", ""],
        [f"jaxuft first call, {nb} frames (compile s in brackets)", "", f"{t_first_batch:.3g} ({compile_batch:.3g})", "", "", ""],
    ]
    if cold is not None:
        nc, ds_cold, colds = cold
        labels = ["jaxuft"] + ([f"jaxuft at {args.baseline_commit}"] if args.baseline_commit else [])
        for label, (t, n, secs) in zip(labels, colds):
            rows.append([f"cold: {label}, a fresh SOAP over {nc} FT5 frames, first call ({n} compilations, {secs:.3g} s)",
                         ds_cold, t, ds_cold / t, "", ""])
    if base is not None:
        b1, bb, bfirst = base
        rev = args.baseline_commit
        rows += [
            [f"jaxuft at {rev}, 1 frame (vs dscribe)", ds1[0], b1[0], ds1[0] / b1[0], ds1[1] / b1[1], ds1[2] / b1[2]],
            [f"jaxuft at {rev}, {nb} frames batched, faster form (vs dscribe's)", dsb[0], bb[0], dsb[0] / bb[0], dsb[1] / bb[1], dsb[2] / bb[2]],
            [f"jaxuft at {rev}, first call, 1 frame (compile s)", "", f"{bfirst[0]:.3g} ({bfirst[1]:.3g})", "", "", ""],
        ]
    notes = (
        f"Paper frame chclca/test/independent.xyz[0] (197 atoms, 7 species), FT5 frames for the batch; r_cut 5, n_max 8, "
        f"l_max 6, sigma 0.375, periodic, float64; dscribe n_jobs=1, jaxuft on {jax.devices()[0].platform} with XLA's "
        f"default threads. Times in s: the minimum of {r} warm calls ({max(2, r // 2)} batched); speedup = dscribe / "
        f"jaxuft by the minimum, the median and the process CPU time. Compilations during the steady timings: "
        f"{steady.count}. 1-min load average at the end {load:.1f} on {os.cpu_count()} cores; peak RSS of the run "
        f"{peak_rss_gb():.2f} GB; jaxuft's allocator settings (host_memory.tune) in effect for both: {tuned}."
        f"\nParity: max |diff| / max |dscribe| = {err:.2e} (1 frame), {errb:.2e} (batch); float32: {err32:.2e} (1 frame). dscribe, jaxuft float64 and float32 calls "
        f"interleaved{f' (and those of jaxuft at {args.baseline_commit})' if args.baseline_commit else ''}."
    )
    header = ["step", "dscribe (s)", "jaxuft (s)", "speedup (min)", "speedup (median)", "speedup (CPU time)"]
    from benchmarks.results import record

    record("SOAP: jaxuft vs dscribe (issue 15 item 3)", header, rows, notes, dry_run=args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
