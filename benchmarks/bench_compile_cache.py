"""What JAX's persistent compilation cache (jaxuft/compile_cache.py) saves a one-off job, in fresh processes.

Two jobs, each run three times in a new process: with the cache off (``JAXUFT_COMPILE_CACHE=0``),
with an empty cache (it fills it: the first run on a machine) and again (it loads what the
first compiled: every later run).

* **SOAP**: a fresh ``SOAP`` (the paper's settings, float64) over the first ``--soap-frames``
  frames of FT5.xyz, the time from constructing it to the last frame (dscribe, in the same
  process as the "off" run, for scale);
* **MD**: ``jaxuft md --model M`` on the paper frame, ``--md-steps`` Langevin steps in chunks of
  10, the process's wall time and the compile time it reports (``summary.json``: tracing,
  lowering and compiling, or loading).

The runs must agree: SOAP features to the last bit, MD trajectories exactly.

    python benchmarks/bench_compile_cache.py [--data ../shared/paper-data] [--model M] [--soap-frames 50]
                                             [--md-steps 20] [--no-append]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOAP_JOB = textwrap.dedent("""
    import sys, time
    from jaxuft import compile_cache, host_memory
    host_memory.tune()
    compile_cache.enable()
    import ase.io
    import numpy as np
    from jaxuft.uq import SOAP
    frames = ase.io.read(sys.argv[1], ":" + sys.argv[2])
    species = sorted({s for a in frames for s in a.get_chemical_symbols()})
    settings = dict(r_cut=5.0, n_max=8, l_max=6, sigma=0.375, periodic=True)
    t = time.perf_counter()
    soap = SOAP(species, **settings)
    out = [np.array(x) for x in soap.compute_iter(frames)]
    seconds = time.perf_counter() - t
    np.save(sys.argv[3], np.concatenate(out))
    print(seconds)
""")


def run(cmd, env) -> tuple[float, str]:
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd[:4]))} ... failed:\n{res.stderr[-3000:]}")
    return wall, res.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT / ".." / "shared" / "paper-data"))
    default_model = ROOT / ".cache" / "bench" / "mp0b-small-s0-float32-jaxuft"
    ap.add_argument("--model", default=str(default_model) if default_model.exists() else "sevennet-0",
                    help="model for the MD job (default: the converted MACE-MP-0b small of bench_md.py if present, "
                         "else sevennet-0)")
    ap.add_argument("--soap-frames", type=int, default=50)
    ap.add_argument("--md-steps", type=int, default=20)
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args(argv)
    data = Path(args.data) / "chclca"
    if not data.exists():
        print(f"paper data not found at {data}; pass --data", file=sys.stderr)
        return 2
    ds_seconds = float("nan")
    try:  # for scale: dscribe on the same frames, here (it compiles nothing)
        import ase.io
        from dscribe.descriptors import SOAP as DSOAP

        frames = ase.io.read(data / "train/periodic/FT5.xyz", f":{args.soap_frames}")
        t = time.perf_counter()
        d = DSOAP(species=sorted({s for a in frames for s in a.get_chemical_symbols()}), r_cut=5.0, n_max=8,
                  l_max=6, sigma=0.375, periodic=True)
        for a in frames:
            d.create(a)
        ds_seconds = time.perf_counter() - t
    except ImportError:
        pass

    work = Path(tempfile.mkdtemp(prefix="jaxuft-cc-bench-"))
    modes = [("off", "0"), ("empty cache (first run)", str(work / "cache")), ("warm cache (later runs)", str(work / "cache"))]
    base_env = {**os.environ, "JAXUFT_PROGRESS": "0"}
    base_env.pop("JAX_COMPILATION_CACHE_DIR", None)
    rows, soap_out, md_out = [], [], []
    for k, (label, setting) in enumerate(modes):
        env = {**base_env, "JAXUFT_COMPILE_CACHE": setting}
        feats = work / f"soap{k}.npy"
        wall, out = run([sys.executable, "-c", SOAP_JOB, str(data / "train/periodic/FT5.xyz"), str(args.soap_frames),
                         str(feats)], env)
        seconds = float(out.split()[-1])
        soap_out.append(np.load(feats))
        rows.append([f"SOAP over {args.soap_frames} FT5 frames, a fresh SOAP", label, seconds, wall, ""])
        md_dir = work / f"md{k}"
        wall, _ = run([sys.executable, "-m", "jaxuft.cli", "md", "--model", args.model, "--structure",
                       str(data / "test/independent.xyz"), "--ensemble", "nvt-langevin", "--steps", str(args.md_steps),
                       "--chunk-steps", "10", "-o", str(md_dir), "-q"], env)
        summary = json.loads((md_dir / "summary.json").read_text())
        md_out.append(np.load(md_dir / "trajectory.npz")["positions"])
        rows.append([f"jaxuft md, {Path(args.model).name}, paper frame, {args.md_steps} steps", label,
                     summary.get("compile_s", float("nan")), wall, ""])
    for r in rows:  # each mode against the cache-off run of the same job
        off = next(x for x in rows if x[0] == r[0])
        r[4] = off[3] / r[3] if r is not off else 1.0
    rows.sort(key=lambda r: r[0].startswith("jaxuft md"))  # by job (stable: off, empty, warm within each)
    same_soap = all(np.array_equal(soap_out[0], x) for x in soap_out[1:])
    same_md = all(np.array_equal(md_out[0], x) for x in md_out[1:])
    files = list((work / "cache").rglob("*-cache"))
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    header = ["job", "compilation cache", "SOAP s / MD compile s", "process wall s", "wall speedup vs off"]
    notes = (
        f"Each row a new process (imports included in the wall time), 2-core machine, load average "
        f"{os.getloadavg()[0]:.1f} at the end. SOAP column: from constructing the SOAP to the last frame "
        f"(dscribe in the benchmark's own process: {ds_seconds:.3g} s for the same frames); MD column: summary.json's "
        f"compile_s (tracing, lowering and compiling, or loading from the cache). Results equal across the three "
        f"runs: SOAP {same_soap}, MD positions {same_md}. The cache held {len(files)} programs, {size_mb:.1f} MB."
    )
    from benchmarks.results import record

    record("Persistent compilation cache: one-off jobs in fresh processes (bench_compile_cache.py)", header, rows,
           notes, dry_run=args.no_append)
    return 0 if (same_soap and same_md) else 1


if __name__ == "__main__":
    sys.exit(main())
