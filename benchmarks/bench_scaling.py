"""MD scaling: step time and peak memory against system size and replica count, SevenNet-0 and a MACE-MP-0b-small-shaped MACE.

    python benchmarks/bench_scaling.py                      # the full sweep (CPU: ~30-40 min on 2 busy cores)
    python benchmarks/bench_scaling.py --quick              # toy sweep (mace-tiny, seconds per point)
    python benchmarks/bench_scaling.py --plot-only          # redraw benchmarks/scaling.png from scaling.json

Sweeps (Langevin 300 K, 0.5 fs, float32; every point in a fresh process, so its peak RSS is
what that run needs: model, compiled programs and buffers):
  * size:     the paper's 197-atom frame tiled 1x, 2x, 4x, 8x (... ``--sizes``), one trajectory;
  * replicas: R = 1, 16, 64, 256 copies of an 8-atom rock-salt NaCl cell (the smallest periodic
              cell, where batching replicas matters most); ``--paper-replicas`` adds replicas of
              the paper frame (none by default: R copies cost what the frame tiled R times costs).
The MACE model has MACE-MP-0b small's architecture with random weights
(:func:`jaxuft.bench.models.random_mace`): its cost is the real model's, its energies are not.
Fits: the exponent b of ``step time ~ atoms^b`` (b = 1: cost per atom-step flat with size) and
peak RSS = a + c * atoms, from which the largest system one run holds in ``--memory-gb`` is
extrapolated.  A point is skipped when its estimated time or memory exceeds ``--budget-s`` /
``--max-rss-gb`` or the memory available now.  Writes benchmarks/scaling.json,
benchmarks/scaling.png and a RESULTS.md section (``--no-append`` to skip).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT_JSON = REPO / "benchmarks" / "scaling.json"
OUT_PNG = REPO / "benchmarks" / "scaling.png"


def _system(name: str):
    from ase.build import bulk

    from jaxuft.bench.suite import find_paper_frame

    if name == "nacl-8":
        return bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    if name == "paper-197":
        from ase.io import read

        path = find_paper_frame()
        if path is None:
            raise SystemExit("paper frame not found: set JAXUFT_PAPER_DATA or put paper-data in ../shared")
        return read(path, index=0)
    raise SystemExit(f"unknown system {name}")


def point(spec: dict) -> dict:
    """One measurement in this process (called with --point)."""
    from jaxuft import host_memory

    host_memory.tune()
    from jaxuft.bench import measure
    from jaxuft.bench.models import load_model
    from jaxuft.bench.suite import tiled

    atoms = tiled(_system(spec["system"]), spec["tile"])
    pot = load_model(spec["model"], spec["dtype"], numbers=sorted(set(atoms.get_atomic_numbers())))
    return measure.md_throughput(pot, atoms, spec["replicas"], spec["steps"])


def run_point(spec: dict, timeout: float) -> dict:
    """Run one point in a child process (its peak RSS: the child's VmHWM over the MD measurement, which
    starts after the model is built and so includes it, the compilation and the run)."""
    cmd = [sys.executable, __file__, "--point", json.dumps(spec)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {**spec, "error": (err.strip().splitlines() or ["?"])[-1][:300], "wall_s": wall}
    res = json.loads(out.strip().splitlines()[-1])
    return {**spec, **res, "wall_s": wall}


def mem_available_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024 ** 2
    return float("inf")


def fit_power(x, y) -> tuple[float, float]:
    """Least-squares ``log y = log a + b log x``: returns (a, b)."""
    b, la = np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)
    return float(np.exp(la)), float(b)


def fit_linear(x, y) -> tuple[float, float]:
    c, a = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return float(a), float(c)


def sweep(args) -> list[dict]:
    plan = []
    for model in args.models:
        for f in args.sizes:
            plan.append({"sweep": "size", "model": model, "system": "paper-197", "tile": f, "replicas": 1})
        for r in args.paper_replicas:
            if r == 1 and 1 in args.sizes:
                continue  # the size sweep's 1x point is the R = 1 reference
            plan.append({"sweep": "replicas", "model": model, "system": "paper-197", "tile": 1, "replicas": r})
        for r in args.replicas:
            plan.append({"sweep": "replicas", "model": model, "system": "nacl-8", "tile": 1, "replicas": r})
    done, results = set(), []
    if args.resume and OUT_JSON.exists():
        results = json.loads(OUT_JSON.read_text())["points"]
        results = [p for p in results if "skipped" not in p]  # skipped points are tried again
        done = {(p["sweep"], p["model"], p["system"], p["tile"], p["replicas"]) for p in results}
    for spec in plan:
        key = (spec["sweep"], spec["model"], spec["system"], spec["tile"], spec["replicas"])
        if key in done:
            continue
        spec = {**spec, "dtype": args.dtype, "steps": args.steps}
        n_total = {"paper-197": 197, "nacl-8": 8}[spec["system"]] * spec["tile"] * spec["replicas"]
        same = [p for p in results if p["model"] == spec["model"] and "ms_per_step" in p]
        if len(same) >= 1:
            # time per atom-step from the same system's points when there are any (a tiny cell's differs)
            near = [p for p in same if p["system"] == spec["system"]] or same
            per = np.median([p["ms_per_step"] / (p["atoms"] * p["replicas"]) for p in near])
            est_s = per * n_total * spec["steps"] * 2 / 1e3 + max(p["compile_s"] for p in same)
            mem = near if len({p["atoms"] * p["replicas"] for p in near}) > 1 else same
            xs = [p["atoms"] * p["replicas"] for p in mem]
            ys = [p["peak_rss_gb"] for p in mem]
            est_gb = fit_linear(xs, ys)[0] + fit_linear(xs, ys)[1] * n_total if len(set(xs)) > 1 else ys[0] * n_total / xs[0]
            why = None
            if est_s > args.budget_s:
                why = f"estimated {est_s:.0f} s > --budget-s {args.budget_s:.0f}"
            elif est_gb > args.max_rss_gb:
                why = f"estimated {est_gb:.1f} GB RSS > --max-rss-gb {args.max_rss_gb}"
            elif est_gb > mem_available_gb() - 3.0:
                why = f"estimated {est_gb:.1f} GB RSS > available {mem_available_gb():.1f} GB - 3 GB"
            if why:
                print(f"[scaling] skip {key}: {why}", flush=True)
                results.append({**spec, "atoms": n_total // spec["replicas"], "skipped": why})
                continue
        load = os.getloadavg()[0]
        res = run_point(spec, timeout=args.budget_s * 3)
        res["load_1min"] = load
        results.append(res)
        if "error" in res:
            print(f"[scaling] {key}: ERROR {res['error']}", flush=True)
        else:
            print(f"[scaling] {spec['model']:>16s} {spec['system']:>9s} x{spec['tile']:<2d} R={spec['replicas']:<4d} "
                  f"{res['atoms'] * res['replicas']:6d} atoms: {res['ms_per_step']:9.1f} ms/step "
                  f"{1e3 * res['ms_per_step'] / (res['atoms'] * res['replicas']):8.1f} us/atom-step "
                  f"peak RSS {res['peak_rss_gb']:.2f} GB  compile {res['compile_s']:.0f} s  load {load:.1f}", flush=True)
        save(results, args)
    return results


def save(results, args):
    from jaxuft.bench.suite import host_info, versions
    from jaxuft.fileio import atomic_write_json

    atomic_write_json(OUT_JSON, {"points": results,
                                 "settings": {"steps": args.steps, "dtype": args.dtype, "code_rev": args.code_rev},
                                 "host": host_info(), "versions": versions(),
                                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})


def analyse(results: list[dict], memory_gb: float) -> dict:
    out = {}
    for model in sorted({p["model"] for p in results}):
        ok = [p for p in results if p["model"] == model and "ms_per_step" in p]
        size = sorted((p for p in ok if p["sweep"] == "size"), key=lambda p: p["atoms"])
        a = {}
        if len(size) >= 2:
            a["size_exponent"] = fit_power([p["atoms"] for p in size], [p["ms_per_step"] for p in size])[1]
            a["size_us_per_atom_step"] = {p["atoms"]: 1e3 * p["ms_per_step"] / p["atoms"] for p in size}
        # the largest single system: fit the size sweep (one structure, denser than a replicated small cell)
        xs = [p["atoms"] for p in size]
        ys = [p["peak_rss_gb"] for p in size]
        if len(set(xs)) >= 2:
            base, slope = fit_linear(xs, ys)
            a["rss_base_gb"], a["rss_mb_per_atom"] = base, 1e3 * slope
            a["max_atoms_in_memory"] = int((memory_gb - base) / slope) if slope > 0 else None
            a["largest_measured_atoms"] = max(xs)
            a["largest_measured_rss_gb"] = max(ys)
        for system in ("nacl-8", "paper-197"):
            rep = sorted((p for p in ok if p["system"] == system and p["tile"] == 1 and
                          (p["sweep"] == "replicas" or p["replicas"] == 1)), key=lambda p: p["replicas"])
            if len(rep) > 1 and rep[0]["replicas"] == 1:
                r1 = rep[0]["atom_steps_per_s"]
                a[f"replica_cost_vs_r1_{system}"] = {p["replicas"]: r1 / p["atom_steps_per_s"] for p in rep}
        out[model] = a
    return out


def plot(results: list[dict], analysis: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    colors = {"sevennet-0": "tab:blue", "mace-mp0b-small": "tab:orange", "mace-tiny": "tab:green"}
    for model in sorted({p["model"] for p in results}):
        ok = [p for p in results if p["model"] == model and "ms_per_step" in p]
        c = colors.get(model, None)
        size = sorted((p for p in ok if p["sweep"] == "size"), key=lambda p: p["atoms"])
        if size:
            b = analysis.get(model, {}).get("size_exponent")
            axes[0].plot([p["atoms"] for p in size], [1e3 * p["ms_per_step"] / p["atoms"] for p in size], "o-", color=c,
                         label=f"{model}" + (f" (t ~ N^{b:.2f})" if b is not None else ""))
        for system, style in (("nacl-8", "s-"), ("paper-197", "o--")):
            rep = sorted((p for p in ok if p["system"] == system and p["tile"] == 1 and
                          (p["sweep"] == "replicas" or p["replicas"] == 1)), key=lambda p: p["replicas"])
            if len(rep) > 1:
                axes[1].plot([p["replicas"] for p in rep], [1e3 * p["ms_per_step"] / (p["atoms"] * p["replicas"]) for p in rep],
                             style, color=c, label=f"{model}, {system}")
        pts = sorted(ok, key=lambda p: p["atoms"] * p["replicas"])
        axes[2].plot([p["atoms"] * p["replicas"] for p in pts], [p["peak_rss_gb"] for p in pts], "o", color=c, label=model)
        a = analysis.get(model, {})
        if "rss_mb_per_atom" in a:
            x = np.geomspace(min(p["atoms"] * p["replicas"] for p in pts), max(p["atoms"] * p["replicas"] for p in pts), 50)
            axes[2].plot(x, a["rss_base_gb"] + a["rss_mb_per_atom"] / 1e3 * x, "-", color=c, alpha=0.5,
                         label=f"size sweep fit: {a['rss_mb_per_atom']:.2f} MB/atom")
    axes[0].set(xscale="log", yscale="log", xlabel="atoms (paper frame tiled), 1 trajectory", ylabel="µs per atom-step",
                title="cost per atom-step vs size")
    axes[1].set(xscale="log", yscale="log", xlabel="replicas", ylabel="µs per atom-step",
                title="cost per atom-step vs replicas")
    axes[2].set(xscale="log", xlabel="atoms in the run (all replicas)", ylabel="peak RSS (GB)",
                title="peak host memory (one process)")
    sizes = sorted({p["atoms"] for p in results if p.get("sweep") == "size" and "ms_per_step" in p})
    if sizes:
        axes[0].set_xticks(sizes, [str(n) for n in sizes])
        axes[0].xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    loads = [p["load_1min"] for p in results if "load_1min" in p]
    busy = f"; 1-min load average {min(loads):.0f}-{max(loads):.0f} during the run" if loads else ""
    fig.suptitle(f"jaxuft MD on {os.cpu_count()} CPU cores (Langevin, float32){busy}; "
                 "MACE = MP-0b-small shape, random weights", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def record(results, analysis, args):
    from benchmarks.results import append

    rows = []
    order = {"size": 0, "replicas": 1}
    for p in sorted(results, key=lambda p: (p["model"], order.get(p["sweep"], 2), p["system"],
                                             p["tile"] * p["replicas"])):
        if "ms_per_step" in p:
            n = p["atoms"] * p["replicas"]
            rows.append([p["model"], p["sweep"], p["system"], p["tile"], p["replicas"], n, p["steps"], round(p["ms_per_step"], 1),
                         round(1e3 * p["ms_per_step"] / n, 1), round(p["atom_steps_per_s"]), round(p["peak_rss_gb"], 2),
                         round(p["compile_s"], 1), round(p.get("load_1min", float("nan")), 1)])
        else:
            rows.append([p["model"], p["sweep"], p["system"], p["tile"], p["replicas"], "-", "-", "-", "-", "-", "-", "-",
                         p.get("skipped") or p.get("error")])
    rev = f" Code: {args.code_rev}." if args.code_rev else ""
    notes = [f"benchmarks/bench_scaling.py:{rev} Langevin 300 K, 0.5 fs, {args.dtype}, the timed steps (column) after a "
             "compiled first segment of the same length; every point in a fresh process (peak RSS = that process's "
             "VmHWM, counted from the loaded model on: model, compilation, run); MACE = MACE-MP-0b-small architecture with random weights "
             "(jaxuft.bench.models, torch-free; its U tensors equal mace-torch's). Shared 2-core machine: the 1-min "
             "load average at each point's start is in the last column; compare within a column, not across runs."]
    for model, a in analysis.items():
        bits = [f"**{model}**:"]
        if "size_exponent" in a:
            bits.append(f"step time ~ atoms^{a['size_exponent']:.2f} over the size sweep "
                        f"({min(a['size_us_per_atom_step'])}-{max(a['size_us_per_atom_step'])} atoms);")
        if "rss_mb_per_atom" in a:
            bits.append(f"peak RSS of one trajectory {a['rss_base_gb']:.2f} GB + {a['rss_mb_per_atom']:.2f} MB/atom "
                        f"(size sweep), so one CPU run holds a system of about {a['max_atoms_in_memory']:,} atoms in "
                        f"{args.memory_gb:g} GiB (extrapolated; largest measured {a['largest_measured_atoms']:,} atoms, "
                        f"{a['largest_measured_rss_gb']:.1f} GB);")
        for system in ("nacl-8", "paper-197"):
            k = f"replica_cost_vs_r1_{system}"
            if k in a:
                bits.append(f"cost/atom-step vs R=1 on {system}: " +
                            ", ".join(f"R={r} {v:.2f}" for r, v in a[k].items()) + ";")
        notes.append(" ".join(bits))
    header = ["model", "sweep", "system", "tile", "replicas", "atoms in run", "timed steps", "ms/step", "µs/atom-step",
              "atom-steps/s", "peak RSS GB", "compile s", "load (1 min)"]
    append("MD scaling: size and replicas (bench_scaling.py)", header, rows, "\n\n".join(notes))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--point", help=argparse.SUPPRESS)
    ap.add_argument("--models", nargs="+", default=["mace-mp0b-small", "sevennet-0"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--replicas", nargs="+", type=int, default=[1, 16, 64, 256], help="replicas of the 8-atom cell")
    ap.add_argument("--paper-replicas", nargs="*", type=int, default=[], help="replicas of the paper frame")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--budget-s", type=float, default=600.0, help="skip a point estimated to take longer")
    ap.add_argument("--max-rss-gb", type=float, default=8.0, help="skip a point estimated to need more host memory")
    ap.add_argument("--memory-gb", type=float, default=20.0, help="memory for the 'largest system' extrapolation")
    ap.add_argument("--quick", action="store_true", help="mace-tiny, small sweeps (a smoke test)")
    ap.add_argument("--resume", action="store_true", help="keep the points already in scaling.json")
    ap.add_argument("--code-rev", default=None, help="commit the measured code is at (noted in RESULTS.md)")
    ap.add_argument("--plot-only", action="store_true", help="redraw from scaling.json")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--record", action="store_true", help="append the RESULTS.md section (also with --plot-only)")
    args = ap.parse_args(argv)
    if args.point:
        print(json.dumps(point(json.loads(args.point))))
        return 0
    global OUT_JSON, OUT_PNG
    if args.quick:
        args.models, args.sizes, args.replicas, args.paper_replicas, args.steps = ["mace-tiny"], [1, 2], [1, 4], [1], 2
        OUT_JSON, OUT_PNG = Path("/tmp/scaling-quick.json"), Path("/tmp/scaling-quick.png")
    if args.plot_only:
        saved = json.loads(OUT_JSON.read_text())
        results = saved["points"]
        args.steps, args.dtype = saved["settings"]["steps"], saved["settings"]["dtype"]
        args.code_rev = args.code_rev or saved["settings"].get("code_rev")
    else:
        results = sweep(args)
    analysis = analyse(results, args.memory_gb)
    print(json.dumps(analysis, indent=1))
    plot(results, analysis, OUT_PNG)
    print(f"[scaling] plot: {OUT_PNG}")
    if args.record or not (args.no_append or args.quick or args.plot_only):
        record(results, analysis, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
