"""MD throughput: atom-steps/s for R = 1, 4, 16, 64 replicas, and mace-torch + ASE Langevin on the same weights.

    python benchmarks/bench_md.py --quick                       # Morse toy, R = 1, 4 (a minute)
    python benchmarks/bench_md.py --quick --ticks-ab            # cost of the in-scan progress ticks
    python benchmarks/bench_md.py --model sevennet-0 --model PATH_TO_CONVERTED_MACE
    python benchmarks/bench_md.py --torch-model .cache/reference/models/mp0b-small-s0-float32-*.model
    python benchmarks/bench_md.py --model sevennet-0 --peer torchsim --replicas 1 4 16

Systems: the 197-atom paper frame (first frame of
``../shared/paper-data/chclca/test/independent.xyz``; skipped with a message if absent)
and a 64-atom cell (fcc Cu 2x2x4).  Ensemble: Langevin 300 K, 0.5 fs (the paper's step).
Each measurement compiles once (first segment, timed separately), then times a second
segment of ``--steps`` steps; ``cost/atom-step vs R=1`` is the per-atom-step wall time
relative to one replica (the issue's goal: <= 0.7 at R = 16).

``--torch-model M.model`` (a mace-torch file) loads the same weights into jaxuft (torch-free
conversion) and runs mace-torch's ``MACECalculator`` with ASE's ``Langevin`` in the mace
reference venv (``.venvs/mace``, see tests/reference/make_venvs.sh) on the same structure,
so the single-trajectory speed-up is measured on identical weights in one run.
``--peer torchsim`` runs TorchSim (``torch-sim-atomistic``, the batched-MD peer a user would pick
instead) in its own venv (``.venvs/torchsim``, ``tests/reference/make_venvs.sh torchsim``) on the
same systems and replica counts: SevenNet-0 from the checkpoint that sevenn ships (the same file
jaxuft's ``sevennet-0`` converts), TorchSim's batched BAOAB Langevin (``nvt_langevin``), float32,
all replicas in one ``SimState``; rows give the jaxuft / TorchSim atom-steps/s ratio at each R.
Both sides use the same thread count (``--torch-threads``, default: all schedulable cores) and the
same glibc allocator settings (jaxuft/host_memory.py's, passed as environment variables).
Rows are appended to benchmarks/RESULTS.md (``--no-append`` to skip).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PAPER_FRAME = REPO.parent / "shared" / "paper-data" / "chclca" / "test" / "independent.xyz"
MACE_PYTHON = REPO / ".venvs" / "mace" / "bin" / "python"
TORCHSIM_PYTHON = REPO / ".venvs" / "torchsim" / "bin" / "python"

TORCH_MD_SCRIPT = r"""
import json, sys, time, warnings, os
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
warnings.filterwarnings("ignore")
import numpy as np, torch
from ase import units
from ase.io import read
from ase.md.langevin import Langevin
from mace.calculators import MACECalculator
model_path, structure, dtype, steps, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
if threads > 0:
    torch.set_num_threads(threads)
atoms = read(structure, index=0)
model = torch.load(model_path, weights_only=False, map_location="cpu")
atoms.calc = MACECalculator(models=model, device="cpu", default_dtype=dtype)
dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs, rng=np.random.default_rng(0))
t0 = time.perf_counter(); dyn.run(2); warm = time.perf_counter() - t0
c0 = time.process_time(); t0 = time.perf_counter(); dyn.run(steps); wall = time.perf_counter() - t0
cpu = time.process_time() - c0
print(json.dumps({"steps": steps, "wall_s": wall, "cpu_s": cpu, "warmup_s": warm, "atoms": len(atoms),
                  "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "temperature": float(atoms.get_temperature())}))
"""


TORCHSIM_MD_SCRIPT = r"""
import json, sys, time, warnings, os
warnings.filterwarnings("ignore")
import numpy as np, torch
from ase import units
from ase.io import read
from importlib.metadata import version
import torch_sim as ts
from torch_sim.models.sevennet import SevenNetModel
from sevenn.util import model_from_checkpoint, pretrained_name_to_path
structure, replicas, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if threads > 0:
    torch.set_num_threads(threads)
atoms = read(structure, index=0)
path = pretrained_name_to_path("7net-0_11Jul2024")
net, _ = model_from_checkpoint(path)
model = SevenNetModel(model=net, modal=None, device=torch.device("cpu"), dtype=torch.float32)
state = ts.io.atoms_to_state([atoms.copy() for _ in range(replicas)], device=torch.device("cpu"), dtype=torch.float32)
f32 = lambda x: torch.tensor(x, dtype=torch.float32)
init_fn, update_fn = ts.integrators.nvt_langevin(model, dt=f32(0.5 * units.fs), kT=f32(300 * units.kB),
                                                 gamma=f32(0.01 / units.fs), seed=0)
t0 = time.perf_counter(); state = init_fn(state)
for _ in range(2):
    state = update_fn(state)
warm = time.perf_counter() - t0
c0 = time.process_time(); t0 = time.perf_counter()
for _ in range(steps):
    state = update_fn(state)
wall = time.perf_counter() - t0
cpu = time.process_time() - c0
ke = 0.5 * float((state.momenta ** 2 / state.masses[:, None]).sum())
print(json.dumps({"steps": steps, "wall_s": wall, "cpu_s": cpu, "warmup_s": warm, "atoms": len(atoms), "replicas": replicas,
                  "torch": torch.__version__, "torch_sim": version("torch-sim-atomistic"),
                  "sevenn": version("sevenn"), "threads": torch.get_num_threads(),
                  "checkpoint": os.path.basename(path),
                  "temperature": 2 * ke / (3 * len(atoms) * replicas * units.kB)}))
"""


def _run_peer(label: str, python: Path, script: str, atoms, args: list[str], first: list[str] = (),
              tuned_malloc: bool = False, timeout: int = 3600) -> dict | None:
    """Run a reference script in its venv on ``atoms`` (written to a temporary file passed after ``first``);
    its last stdout line is JSON.  ``tuned_malloc``: jaxuft's glibc allocator settings as environment variables."""
    from ase.io import write

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "frame.traj"
        write(path, atoms)
        cmd = [str(python), "-c", script, *first, str(path), *args]
        env = dict(os.environ)
        if tuned_malloc:
            from jaxuft import host_memory

            env.update(host_memory.environment())
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if res.returncode != 0:
        print(f"[bench_md] {label} failed:\n{res.stderr[-2000:]}")
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def torchsim_reference(atoms, replicas: int, steps: int, threads: int) -> dict | None:
    """TorchSim + SevenNet-0 batched Langevin in the torchsim venv (same allocator settings as jaxuft)."""
    if not TORCHSIM_PYTHON.exists():
        print(f"[bench_md] no torchsim venv at {TORCHSIM_PYTHON}: run tests/reference/make_venvs.sh torchsim")
        return None
    out = _run_peer("TorchSim reference", TORCHSIM_PYTHON, TORCHSIM_MD_SCRIPT, atoms,
                    [str(replicas), str(steps), str(threads)], tuned_malloc=True, timeout=7200)
    if out is None:
        return None
    out["atom_steps_per_s"] = out["atoms"] * replicas * steps / out["wall_s"]
    return out


def systems(quick: bool):
    from ase.build import bulk
    from ase.io import read

    out = {}
    if PAPER_FRAME.exists():
        out["paper-197"] = read(PAPER_FRAME, index=0)
    else:
        print(f"[bench_md] paper frame {PAPER_FRAME} not found: skipping the 197-atom system")
    out["cu-64"] = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 4))
    return out


def load_model(name: str, dtype: str, atoms_for_morse):
    if name == "morse":
        from jaxuft.md.cli import builtin_morse

        numbers = np.unique(np.concatenate([a.get_atomic_numbers() for a in atoms_for_morse]))
        return builtin_morse(numbers, dtype)
    import jaxuft

    return jaxuft.load(name, dtype=dtype)


def measure(pot, atoms, replicas: int, steps: int, dtype: str) -> dict:
    from jaxuft import md

    # throughput only: no safety stop may freeze a replica (a frozen replica costs nothing)
    safety = md.Safety(max_temperature=1e9, min_distance=0.0)
    # --mace-present-species off: the model compiled for all species
    sim = md.Simulation(pot, md.Langevin(0.5, 300.0, friction=0.01), chunk_steps=steps, safety=safety,
                        specialise_species=not getattr(pot, "bench_all_species", False))
    start = sim.init(atoms, replicas=replicas, seed=0)
    t0 = time.perf_counter()
    state, first = sim.run(start, n_steps=steps, record_every=steps, progress=False)
    first_wall = time.perf_counter() - t0
    c0, t0 = time.process_time(), time.perf_counter()
    state, traj = sim.run(start, n_steps=steps, record_every=steps, progress=False)  # same work, compiled
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = len(atoms)
    return {
        "replicas": replicas,
        "atoms": n,
        "ms_per_step": 1e3 * wall / steps,
        "cpu_ms_per_step": 1e3 * cpu / steps,
        "atom_steps_per_s": replicas * n * steps / wall,
        "compile_s": first.report["compile_s"],
        "first_segment_s": first_wall,
        "recompilations": traj.report["compilations"],
        "stopped": sum(s["status"] != "running" for s in traj.report["stops"]),
        "capacity": sim.spec.capacity,
        "images": sim.spec.images,
    }


def ticks_overhead(pot, atoms, replicas: int, steps: int, reps: int = 5) -> dict:
    """ms/step of the compiled run segment with the in-scan progress ticks (what ``Simulation.run``
    compiles) and without them (the program before the ticks existed), timed interleaved so the
    machine's load hits both alike."""
    import jax

    from jaxuft import md
    from jaxuft.md.segment import executable
    from jaxuft.md.ticker import NEVER

    safety = md.Safety(max_temperature=1e9, min_distance=0.0)
    sim = md.Simulation(pot, md.Langevin(0.5, 300.0, friction=0.01), chunk_steps=steps, safety=safety)
    state = sim.init(atoms, replicas=replicas, seed=0)
    params, extra, limits, cond = sim._params(None), jax.device_put({}), sim.limits(), sim.conditions()
    ticking = {**limits, "tick_every": np.asarray(NEVER, np.int32), "tick_token": np.asarray(0, np.int32)}
    runs = {}
    for ticks, lim in ((False, limits), (True, ticking)):
        args = (params, sim.system, state, cond, lim, extra)
        fn, _ = executable(sim.program(1, steps, sim.spec, ticks=ticks), args)
        jax.block_until_ready(fn(*args))
        runs[ticks] = (fn, args)
    times = {False: [], True: []}
    for _ in range(reps):
        for ticks, (fn, args) in runs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[ticks].append(time.perf_counter() - t0)
    return {k: 1e3 * float(np.median(v)) / steps for k, v in times.items()}


def torch_reference(model_path: str, atoms, steps: int, dtype: str, threads: int, tuned_malloc: bool = False) -> dict | None:
    """mace-torch + ASE Langevin in the mace venv.  ``tuned_malloc``: run it with the same glibc
    allocator settings that the jaxuft CLI and benchmarks apply (jaxuft/host_memory.py), as environment
    variables, so the comparison is like for like."""
    if not MACE_PYTHON.exists():
        print(f"[bench_md] no mace reference venv at {MACE_PYTHON}: skipping mace-torch + ASE")
        return None
    out = _run_peer("mace-torch reference", MACE_PYTHON, TORCH_MD_SCRIPT, atoms,
                    [dtype, str(steps), str(threads)], first=[str(model_path)], tuned_malloc=tuned_malloc, timeout=3600)
    if out is None:
        return None
    out["atom_steps_per_s"] = out["atoms"] * steps / out["wall_s"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=None,
                    help="model name/path (repeatable); 'morse' = built-in toy (default)")
    ap.add_argument("--torch-model", default=None, help="mace-torch .model: also run mace-torch + ASE on the same weights")
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    ap.add_argument("--system", action="append", default=None, help="paper-197 and/or cu-64 (default both)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="skip a replica count when its estimated time exceeds this (from smaller R)")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="torch threads (0: mace-torch: torch default; TorchSim: all schedulable cores)")
    ap.add_argument("--mace-edge-chunk", type=int, nargs="+", default=None,
                    help="MACE only: measure these message-sum chunk sizes (0 = the per-edge scatter used before "
                         "2026-12-01); the model's default keeps the plain label")
    ap.add_argument("--mace-present-species", nargs="+", choices=["off", "on"], default=None,
                    help="MACE only: measure the model compiled for all species (off, the code before 2026-12-01 "
                         "14:00) and for the run's species (on, what jaxuft.md.Simulation compiles)")
    ap.add_argument("--mace-message-vjp", nargs="+", choices=["off", "on"], default=None,
                    help="MACE only: measure the chunked message sum with plain autodiff (off, the code before "
                         "2026-12-01 17:00) and with its hand-written backward (on, the default)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="with --torch-model: after the first pass, this many more alternating (jaxuft, mace-torch+ASE "
                         "tuned malloc) pairs at R=1; the note gives each pair's ratio and their median")
    ap.add_argument("--peer", choices=["torchsim"], default=None,
                    help="also run TorchSim + SevenNet-0 (batched Langevin) at the same systems and replica counts")
    ap.add_argument("--quick", action="store_true", help="Morse only, R = 1 4, 10 steps")
    ap.add_argument("--no-append", action="store_true", help="do not append to benchmarks/RESULTS.md")
    ap.add_argument("--ticks-ab", action="store_true",
                    help="only compare the run program with and without the progress ticks (interleaved)")
    args = ap.parse_args(argv)

    if args.quick:
        args.replicas = [1, 4]
        args.steps = min(args.steps, 10)
    models = args.model or ([] if (args.torch_model or args.peer) else ["morse"])
    if args.peer == "torchsim" and "sevennet-0" not in models:
        models = models + ["sevennet-0"]
    if args.torch_model:
        models = models + [args.torch_model]
    sys_atoms = systems(args.quick)
    if args.system:
        sys_atoms = {k: v for k, v in sys_atoms.items() if k in args.system}

    import jax

    rows, notes = [], []
    if args.ticks_ab:
        for model in models:
            pot = load_model(model, args.dtype, list(sys_atoms.values()))
            label = Path(model).name if os.sep in model else model
            for sname, atoms in sys_atoms.items():
                for r in sorted(args.replicas):
                    t = ticks_overhead(pot, atoms, r, args.steps)
                    rows.append([label, sname, len(atoms), r, args.steps, round(t[False], 3), round(t[True], 3),
                                 round(t[True] / t[False], 3)])
                    print(f"[bench_md] {label} {sname} R={r}: {t[False]:.3f} ms/step without ticks, "
                          f"{t[True]:.3f} with ({t[True] / t[False]:.3f}x)", flush=True)
        load = os.getloadavg()
        note = (f"Compiled run segment with vs without the in-scan progress ticks (bar hidden: the tick branch is "
                f"never taken), medians of 5 interleaved timings; Langevin 0.5 fs, {args.dtype}; "
                f"{len(jax.devices())} x {jax.default_backend()}; load average {load[0]:.1f} / {load[1]:.1f}.")
        header = ["model", "system", "atoms", "replicas", "steps", "ms/step without ticks", "ms/step with ticks",
                  "ratio"]
        if not args.no_append and rows:
            from benchmarks.results import append

            append("MD progress-tick overhead (bench_md.py --ticks-ab)", header, rows, note)
        else:
            print(note)
        return 0
    cpu_ms = {}  # (label, system, replicas) -> CPU ms per step of the jaxuft process
    variants = []
    for model in models:
        pot = load_model(model, args.dtype, list(sys_atoms.values()))
        label = Path(model).name if os.sep in model else model
        if args.mace_edge_chunk and pot.config.get("family") == "mace":
            import copy

            for chunk in args.mace_edge_chunk:
                var = copy.copy(pot)
                var.module = pot.module.clone(edge_chunk=chunk)
                variants.append((var, label if chunk == pot.module.edge_chunk else f"{label} (edge_chunk={chunk})"))
        else:
            variants.append((pot, label))
    def on_off(variants, choices, off_label, apply):
        """Each MACE variant once per choice ("off" labelled ``off_label``); other families keep "on"."""
        import copy

        split = []
        for pot, label in variants:
            for choice in (choices if pot.config.get("family") == "mace" else ["on"]):
                var = copy.copy(pot)
                apply(var, choice == "on")
                split.append((var, f"{label} ({off_label})" if choice == "off" else label))
        return split

    if args.mace_present_species:
        variants = on_off(variants, args.mace_present_species, "all species",
                          lambda var, on: setattr(var, "bench_all_species", not on))
    if args.mace_message_vjp:
        variants = on_off(variants, args.mace_message_vjp, "message backward by autodiff",
                          lambda var, on: setattr(var, "module", var.module.clone(message_vjp=on)))
    for pot, label in variants:
        for sname, atoms in sys_atoms.items():
            base = None
            for r in sorted(args.replicas):
                if base is not None:
                    est = base["ms_per_step"] / 1e3 * args.steps * 2 * r / base["replicas"]
                    if est > args.budget_s:
                        print(f"[bench_md] {label} {sname} R={r}: skipped (estimated {est:.0f} s > budget {args.budget_s:.0f} s)")
                        notes.append(f"{label} {sname} R={r} skipped (estimated {est:.0f} s)")
                        continue
                m = measure(pot, atoms, r, args.steps, args.dtype)
                if base is None:
                    base = m
                ratio = (m["ms_per_step"] / r) / (base["ms_per_step"] / base["replicas"])
                row = [label, sname, m["atoms"], r, round(m["ms_per_step"], 2), round(m["atom_steps_per_s"]),
                       round(ratio, 3), round(m["compile_s"], 1), m["recompilations"]]
                rows.append(row)
                cpu_ms[(label, sname, r)] = m["cpu_ms_per_step"]
                print(f"[bench_md] {label:>24s} {sname:>9s} R={r:3d}: {m['ms_per_step']:9.2f} ms/step "
                      f"{m['atom_steps_per_s']:10.0f} atom-steps/s  cost/atom-step vs R=1 {ratio:.3f}  "
                      f"compile {m['compile_s']:.1f} s  images {m['images']}  CPU {m['cpu_ms_per_step']:.0f} ms/step"
                      + (f"  ({m['stopped']} replicas stopped!)" if m["stopped"] else ""), flush=True)
    if args.torch_model:
        for sname, atoms in sys_atoms.items():
            name = Path(args.torch_model).name
            ours_all = [r for r in rows if r[0].startswith(name) and r[1] == sname and r[3] == 1]
            for tuned in (False, True):
                ref = torch_reference(args.torch_model, atoms, args.steps, args.dtype, args.torch_threads, tuned)
                if ref is None:
                    continue
                ours = next((r for r in ours_all if r[0] == name), None)
                speedup = (ours[5] / ref["atom_steps_per_s"]) if ours else float("nan")
                alloc = "glibc malloc tuned as jaxuft" if tuned else "default glibc malloc"
                rows.append([f"mace-torch {ref['torch']} + ASE Langevin ({ref['threads']} thr, {alloc})", sname,
                             ref["atoms"], 1, round(1e3 * ref["wall_s"] / args.steps, 2), round(ref["atom_steps_per_s"]),
                             "-", "-", "-"])
                ref_cpu = 1e3 * ref["cpu_s"] / args.steps
                our_cpu = cpu_ms.get((name, sname, 1), float("nan"))
                notes.append(f"{sname}: jaxuft single trajectory / mace-torch+ASE ({alloc}) = {speedup:.2f}x (same weights)"
                             + "".join(f"; {r[0][len(name):].strip()}: {r[5] / ref['atom_steps_per_s']:.2f}x"
                                       for r in ours_all if r[0] != name)
                             + f"; CPU time per step {ref_cpu:.0f} ms vs jaxuft {our_cpu:.0f} ms ({ref_cpu / our_cpu:.2f}x).")
                print(f"[bench_md] mace-torch + ASE {sname} ({alloc}): {1e3 * ref['wall_s'] / args.steps:.1f} ms/step; "
                      f"jaxuft/torch speed-up {speedup:.2f}x", flush=True)

    if args.torch_model and args.rounds > 1:
        name = Path(args.torch_model).name
        pot = next(p for p, label in variants if label == name)
        for sname, atoms in sys_atoms.items():
            pairs = []
            for k in range(args.rounds - 1):
                m = measure(pot, atoms, 1, args.steps, args.dtype)
                ref = torch_reference(args.torch_model, atoms, args.steps, args.dtype, args.torch_threads, True)
                if ref is None:
                    break
                pairs.append((m["atom_steps_per_s"] / ref["atom_steps_per_s"],
                              ref["cpu_s"] * 1e3 / args.steps / m["cpu_ms_per_step"]))
                print(f"[bench_md] round {k + 2}: jaxuft {m['ms_per_step']:.1f} ms/step, mace-torch+ASE (tuned malloc) "
                      f"{1e3 * ref['wall_s'] / args.steps:.1f} ms/step: {pairs[-1][0]:.2f}x wall, {pairs[-1][1]:.2f}x CPU",
                      flush=True)
            if pairs:
                notes.append(f"{sname}: {len(pairs)} more alternating pairs (jaxuft, then mace-torch+ASE with tuned malloc, "
                             f"R=1): wall ratios {', '.join(f'{w:.2f}x' for w, _ in pairs)} (median "
                             f"{float(np.median([w for w, _ in pairs])):.2f}x); CPU-time ratios "
                             f"{', '.join(f'{c:.2f}x' for _, c in pairs)} (median {float(np.median([c for _, c in pairs])):.2f}x).")

    if args.peer == "torchsim":
        threads = args.torch_threads or len(os.sched_getaffinity(0))
        for sname, atoms in sys_atoms.items():
            for r in sorted(args.replicas):
                ours = next((row for row in rows if row[0] == "sevennet-0" and row[1] == sname and row[3] == r), None)
                if ours is None:
                    continue  # skipped on our side (budget): no pair to compare
                ref = torchsim_reference(atoms, r, args.steps, threads)
                if ref is None:
                    continue
                ratio = ours[5] / ref["atom_steps_per_s"]
                rows.append([f"TorchSim {ref['torch_sim']} + sevenn {ref['sevenn']} SevenNet-0, nvt_langevin "
                             f"(torch {ref['torch']}, {ref['threads']} thr)", sname, ref["atoms"], r,
                             round(1e3 * ref["wall_s"] / args.steps, 2), round(ref["atom_steps_per_s"]),
                             f"jaxuft/TorchSim {ratio:.2f}x", "-", "-"])
                ref_cpu = 1e3 * ref["cpu_s"] / args.steps
                our_cpu = cpu_ms.get(("sevennet-0", sname, r), float("nan"))
                notes.append(f"{sname} R={r}: jaxuft / TorchSim = {ratio:.2f}x (CPU time per step {ref_cpu:.0f} ms vs "
                             f"jaxuft {our_cpu:.0f} ms: {ref_cpu / our_cpu:.2f}x).")
                print(f"[bench_md] TorchSim {sname} R={r}: {1e3 * ref['wall_s'] / args.steps:.1f} ms/step, "
                      f"{ref['atom_steps_per_s']:.0f} atom-steps/s; jaxuft/TorchSim {ratio:.2f}x "
                      f"(T at the end {ref['temperature']:.0f} K)", flush=True)

    header = ["model", "system", "atoms", "replicas", "ms/step", "atom-steps/s", "cost/atom-step vs R=1",
              "compile s", "recompiles"]
    from jaxuft import host_memory

    load = os.getloadavg()
    note = (f"Langevin 300 K, 0.5 fs, {args.dtype}, {args.steps} timed steps after a compiled warm-up segment; "
            f"devices: {len(jax.devices())} x {jax.default_backend()}; jaxuft host allocator tuning "
            f"{'on' if host_memory.applied() else 'off'}; load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}. "
            + " ".join(notes))
    if not args.no_append and rows:
        from benchmarks.results import append

        append("MD throughput (bench_md.py)", header, rows, note)
    else:
        print(note)
    return 0


if __name__ == "__main__":
    from jaxuft import host_memory

    host_memory.tune()  # jaxuft side runs with the allocator the CLI uses (jaxuft/host_memory.py)
    sys.exit(main())
