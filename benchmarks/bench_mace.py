"""MACE energy+forces throughput: jaxuft vs mace-torch on the same weights, one run.

For every preset a random-weight mace-torch ``.model`` is built in float64 by
``tests/reference/mace_reference.build_model`` (seed 0, cached) and converted with
``jaxuft.convert``.  Both codes then run the SAME file:

* float64: jaxuft ``load(dtype="float64")``; mace-torch ``MACECalculator(default_dtype="float64")``;
* float32: jaxuft ``load(dtype="float32")`` casts the params; ``MACECalculator(default_dtype=
  "float32")`` casts the module with ``model.float()`` -- the same rounding of the same weights.

Structures: frame 0 of the paper's ``chclca/test/independent.xyz`` (197 atoms, 7 species;
skipped with a message when the paper data is absent) and a rattled 2x2x2 conventional
NaCl cell (64 atoms).

Timings (wall clock, medians of ``--repeats`` warm calls):

* jaxuft compile    first call of ``pot.compiled("efs")`` on the padded graph (trace + XLA compile);
* jaxuft E+F        jitted ``value_and_grad`` of ``pot.energy`` w.r.t. positions (energy + forces,
                    no stress) on the prebuilt device graph, ``jax.block_until_ready``;
* jaxuft E+F+S      ``pot.compiled("efs")(pot.params, graph)`` (what ``predict`` runs);
* jaxuft predict    ``pot.predict(atoms)``: host neighbour list + padding + transfer + E+F+S + fetch;
* mace first call   first E+F model call (lazy init / TorchScript profiling);
* mace E+F          the model call as ``MACECalculator.calculate`` makes it, ``compute_stress=False``,
                    on the prebuilt graph (batch clone + dtype cast included, neighbour list excluded);
* mace calculate    full ``calc.calculate(atoms)`` (neighbour list + graph + E+F+S).

speed-up E+F = mace E+F / jaxuft E+F;  speed-up end-to-end = mace calculate / jaxuft predict.
The torch side runs in the mace reference venv (``tests/reference/make_venvs.sh mace``) through
``benchmarks/_mace_torch_timing.py``, never concurrently with the JAX timings.

    python benchmarks/bench_mace.py [--presets mp0b-small mp0-medium] [--dtypes float32 float64]
        [--repeats 10] [--threads N] [--quick] [--no-record]

``--quick``: 3 repeats, 1 warm-up, first preset only unless ``--presets`` is given (smoke test).
``--threads N``: torch intra-op threads = N, and the whole process (hence XLA's CPU thread
pool and the torch subprocess) is pinned to N cores; default: all schedulable cores.
Appends a table to benchmarks/RESULTS.md unless ``--no-record``.  JAX runs on whatever
device it finds (set ``JAX_PLATFORMS=cpu`` to force the CPU); mace-torch always runs on the CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "reference"))

TORCH_SCRIPT = Path(__file__).resolve().with_name("_mace_torch_timing.py")
DEFAULT_PRESETS = ["mp0b-small", "mp0-medium"]
DEFAULT_PAPER = ROOT / ".." / "shared" / "paper-data" / "chclca" / "test" / "independent.xyz"


# ---------------------------------------------------------------------------- helpers
def _median_time(fn, repeats):
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(statistics.median(times))


def _load_avg() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def structures(paper: Path):
    """[(label, Atoms)]: the paper frame (when present) and a rattled 64-atom NaCl cell."""
    import ase.io
    from ase.build import bulk

    out = []
    if paper.is_file():
        frame = ase.io.read(paper, 0)
        frame.calc = None
        print(f"paper frame {paper.name}[0]: {frame.get_chemical_formula()}, {len(frame)} atoms", flush=True)
        out.append(("chclca independent.xyz[0]", frame))
    else:
        print(
            f"NOTE: paper frame not found at {paper} -- skipping the 197-atom structure "
            "(pass --paper PATH to chclca/test/independent.xyz)",
            file=sys.stderr,
        )
    nacl = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 2, 2))
    nacl.rattle(stdev=0.05, seed=0)
    out.append(("NaCl 2x2x2 conv., rattled", nacl))
    return out


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def converted(model: Path) -> Path:
    """``jaxuft.convert`` of ``model``, cached under <repo>/.cache/bench (keyed by the file hash)."""
    import jaxuft
    from jaxuft.checkpoints.format import is_converted_model

    sha = _file_sha(model)
    dest = ROOT / ".cache" / "bench" / f"{model.stem}-{sha[:12]}-jaxuft"
    if not is_converted_model(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        jaxuft.convert(model, dest, overwrite=True)
        print(f"  converted {model.name} -> {dest} in {time.perf_counter() - t:.1f} s", flush=True)
    return dest


def torch_timings(py: str, model: Path, frames, dtype: str, repeats: int, warmup: int, threads: int) -> dict:
    """Run _mace_torch_timing.py in the mace venv; returns its JSON report."""
    from ase.io import write

    env = dict(os.environ)
    env.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(var, None)
    with tempfile.TemporaryDirectory(prefix="bench_mace_") as tmp:
        traj = Path(tmp) / "frames.traj"
        write(str(traj), list(frames), format="traj")
        cmd = [py, str(TORCH_SCRIPT), str(model), str(traj), "--dtype", dtype,
               "--repeats", str(repeats), "--warmup", str(warmup), "--threads", str(threads)]
        proc = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"mace-torch timing failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def jaxuft_timings(pot, atoms, repeats: int, warmup: int) -> dict:
    import jax
    import jax.numpy as jnp

    graph = pot.graph(atoms)
    efs = pot.compiled("efs")

    t = time.perf_counter()
    jax.block_until_ready(efs(pot.params, graph))
    compile_s = time.perf_counter() - t

    def _ef(params, g):
        def e_total(pos):
            e = pot.energy(params, g._replace(positions=pos))
            return jnp.sum(e), e

        (_, e), grad = jax.value_and_grad(e_total, has_aux=True)(g.positions)
        return e, -grad

    ef = jax.jit(_ef)
    t = time.perf_counter()
    energy, forces = jax.block_until_ready(ef(pot.params, graph))
    compile_ef_s = time.perf_counter() - t

    for _ in range(warmup):
        jax.block_until_ready(ef(pot.params, graph))
        jax.block_until_ready(efs(pot.params, graph))
    ef_s = _median_time(lambda: jax.block_until_ready(ef(pot.params, graph)), repeats)
    efs_s = _median_time(lambda: jax.block_until_ready(efs(pot.params, graph)), repeats)

    pot.predict(atoms)  # warm-up (compiles again if predict pads to another bucket)
    predict_s = _median_time(lambda: pot.predict(atoms), repeats)
    res = pot.predict(atoms)
    n = len(atoms)
    return {
        "compile_s": compile_s,
        "compile_ef_s": compile_ef_s,
        "ef_s": ef_s,
        "efs_s": efs_s,
        "predict_s": predict_s,
        "energy": float(energy[0]),
        "forces": np.asarray(forces[:n], dtype=np.float64),
        "predict_energy": res["energy"],
        "n_nodes_padded": int(graph.n_nodes),
        "n_edges_padded": int(graph.n_edges),
    }


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=None,
                    help=f"mace_build presets (default {' '.join(DEFAULT_PRESETS)}; --quick: the first)")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 10, --quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up calls after the first (default 2, --quick 1)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for both codes (0: all schedulable cores)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    ap.add_argument("--paper", default=str(DEFAULT_PAPER), help="path of chclca/test/independent.xyz")
    ap.add_argument("--quick", action="store_true", help="smoke test: 3 repeats, 1 warm-up, one preset")
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args(argv)

    presets = args.presets or (DEFAULT_PRESETS[:1] if args.quick else DEFAULT_PRESETS)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    # float32 first: loading a float64 potential switches JAX to x64 for the rest of the process
    dtypes = sorted(set(args.dtypes), key=["float32", "float64"].index)

    # threads: pin before JAX starts its thread pool (the torch subprocess inherits the mask)
    avail = sorted(os.sched_getaffinity(0))
    threads = args.threads if args.threads > 0 else len(avail)
    if threads < len(avail):
        os.sched_setaffinity(0, set(avail[:threads]))
    pinned = threads < len(avail)

    from mace_reference import build_model, mace_python, model_info

    py = mace_python()
    if py is None:
        print("mace reference venv missing: run tests/reference/make_venvs.sh mace "
              "(or set JAXUFT_MACE_PYTHON)", file=sys.stderr)
        return 2

    import jax

    import jaxuft

    load_start = _load_avg()
    structs = structures(Path(args.paper))

    # build + convert every model up front (cached)
    models = {}
    for preset in presets:
        t = time.perf_counter()
        model = build_model(preset, seed=args.seed, dtype="float64")
        zs = set(model_info(model).get("atomic_numbers", []))
        print(f"[{preset}] model {model.name} ({time.perf_counter() - t:.1f} s)", flush=True)
        models[preset] = (model, converted(model), zs)

    rows, details, versions, torch_threads = [], [], {}, None
    for dtype in dtypes:
        for preset in presets:
            model, conv, zs = models[preset]
            todo = []
            for label, atoms in structs:
                missing = sorted(set(atoms.numbers.tolist()) - zs) if zs else []
                if missing:
                    print(f"[{preset}] skipping {label}: elements {missing} not in the model", file=sys.stderr)
                else:
                    todo.append((label, atoms))
            if not todo:
                continue
            print(f"[{preset} {dtype}] mace-torch ...", flush=True)
            tt = torch_timings(py, model, [a for _, a in todo], dtype, repeats, warmup, threads)
            versions = tt["versions"]
            torch_threads = (tt["torch_threads"], tt["torch_interop_threads"])
            print(f"[{preset} {dtype}] jaxuft ...", flush=True)
            pot = jaxuft.load(conv, dtype=dtype)
            for (label, atoms), tr in zip(todo, tt["frames"]):
                jr = jaxuft_timings(pot, atoms, repeats, warmup)
                n = len(atoms)
                de = abs(jr["energy"] - tr["energy"]) / n * 1e3
                df = float(np.max(np.abs(jr["forces"] - np.asarray(tr["forces"]))))
                rows.append([
                    preset, dtype, label, n, tr["n_edges"],
                    jr["compile_s"],
                    jr["ef_s"] * 1e3, jr["efs_s"] * 1e3, jr["predict_s"] * 1e3,
                    tr["first_s"],
                    tr["ef_s"] * 1e3, tr["calc_s"] * 1e3,
                    tr["ef_s"] / jr["ef_s"], tr["calc_s"] / jr["predict_s"],
                    f"{de:.2e}", f"{df:.2e}",
                ])
                details.append(
                    f"{preset} {dtype} {label}: padded graph {jr['n_nodes_padded']} nodes / "
                    f"{jr['n_edges_padded']} edges; jaxuft E+F-only compile {jr['compile_ef_s']:.2f} s; "
                    f"mace setup {tt['setup_s']:.2f} s"
                )
                print("  " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in rows[-1]), flush=True)
            del pot

    if not rows:
        print("nothing to run", file=sys.stderr)
        return 1

    dev = jax.devices()[0]
    load_end = _load_avg()
    tthreads = f"{torch_threads[0]} intra-op / {torch_threads[1]} inter-op" if torch_threads else "n/a"
    notes = (
        f"Same weights: random mace-torch ScaleShiftMACE presets (tests/reference/mace_build.py, seed {args.seed}) "
        f"built in float64; float32 = the float64 file cast (jaxuft params cast / MACECalculator model.float()). "
        f"Medians of {repeats} warm calls ({warmup} extra warm-up call(s) after the first). "
        f"E+F = energy+forces on a prebuilt graph (jaxuft: jitted grad of pot.energy, padded graph; "
        f"mace-torch: model call as MACECalculator makes it, compute_stress=False); E+F+S = pot.compiled('efs'); "
        f"predict / calculate = full ASE-atoms-to-results path incl. neighbour list and stress. "
        f"speed-up E+F = mace E+F / jaxuft E+F; speed-up end-to-end = mace calculate / jaxuft predict. "
        f"jaxuft compile = first pot.compiled('efs') call. "
        f"Threads: {threads} of {len(avail)} cores{' (process pinned)' if pinned else ''}; "
        f"torch {tthreads} threads; JAX/XLA on {dev.platform}:{getattr(dev, 'device_kind', '')} with its default "
        f"thread pool over the schedulable cores. mace-torch runs on the CPU. "
        f"Versions: torch {versions.get('torch')}, mace {versions.get('mace')}, e3nn {versions.get('e3nn')}. "
        f"Load average (1/5/15 min) at start {load_start}, at end {load_end}. "
        f"ΔE = abs(E_jaxuft - E_mace) per atom and max ΔF = max abs(F_jaxuft - F_mace) on the same frame (parity check)."
    )
    header = [
        "preset", "dtype", "structure", "atoms", "edges", "jaxuft compile (s)",
        "jaxuft E+F (ms)", "jaxuft E+F+S (ms)", "jaxuft predict (ms)",
        "mace first call (s)", "mace E+F (ms)", "mace calculate (ms)",
        "speed-up E+F", "speed-up end-to-end", "ΔE (meV/atom)", "max ΔF (eV/Å)",
    ]
    if args.no_record:
        print()
        print(notes)
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for r in rows:
            print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r) + " |")
    else:
        from benchmarks.results import append

        append("MACE energy+forces: jaxuft vs mace-torch, same weights", header, rows, notes)
    print("\n" + "\n".join(details))
    return 0


if __name__ == "__main__":
    from jaxuft import host_memory

    host_memory.tune()  # jaxuft side runs with the allocator the CLI uses (jaxuft/host_memory.py)
    sys.exit(main())
